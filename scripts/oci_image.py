#!/usr/bin/env python3
"""Package dist/mesh_oauth.wasm as an OCI image Istio can pull, and push it with skopeo.

    oci_image.py build MODULE LAYOUT_DIR   writes an OCI image layout (the image format on disk)
    oci_image.py push LAYOUT_DIR IMAGE     copies it to a registry with skopeo, prints the digest

Format: an ordinary OCI image whose single layer, `application/vnd.oci.image.layer.v1.tar+gzip`,
holds `plugin.wasm` (the "compat" variant of the Wasm image spec). Istio's agent accepts it since
1.12 (manifest -> last layer -> tar.gz -> `plugin.wasm`), and, unlike the two-layer artifact with
the custom `application/vnd.module.wasm.content.layer.v1+wasm` type, every registry and image tool
handles it as a plain image: nothing in it is a media type a registry might refuse.

The image is reproducible: fixed tar metadata (mtime 0, root owner, mode 0644), gzip without name
or timestamp, canonical JSON. The same module always yields the same manifest digest, which is
what Istio checks a WasmPlugin's `sha256` against for an `oci://` URL.

Only the Python standard library is used; the registry protocol is skopeo's.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import ipaddress
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PLUGIN_FILE = "plugin.wasm"  # the name Istio's fetcher looks for in the layer
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
WASM_MAGIC = b"\0asm"


def canonical_json(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def layer_tar(module: bytes) -> bytes:
    """A tar with only `plugin.wasm`, its metadata fixed so the bytes depend on the module alone."""
    info = tarfile.TarInfo(PLUGIN_FILE)
    info.size = len(module)
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(module))
    return out.getvalue()


def gzip_fixed(data: bytes) -> bytes:
    out = io.BytesIO()
    # filename "" and mtime 0 keep the gzip header free of anything but the data.
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": f"sha256:{sha256_hex(blob)}", "size": len(blob)}


def build_layout(module: bytes, layout: Path) -> str:
    """Writes the OCI image layout for `module` into `layout` (replacing its contents) and
    returns the manifest digest (`sha256:…`)."""
    if not module.startswith(WASM_MAGIC):
        raise SystemExit("not a Wasm module (no \\0asm header)")
    tar = layer_tar(module)
    layer = gzip_fixed(tar)
    # A valid image config (rootfs.diff_ids = digest of the uncompressed layer) so image tools
    # accept the image; os/architecture as Go names the platform the module targets.
    config = canonical_json({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha256_hex(tar)}"]},
    })
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, layer)],
    })
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [descriptor(MANIFEST_MEDIA_TYPE, manifest)],
    })
    blobs = layout / "blobs" / "sha256"
    if blobs.is_dir():
        for stale in blobs.iterdir():  # a previous module's blobs
            stale.unlink()
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (layer, config, manifest):
        (blobs / sha256_hex(blob)).write_bytes(blob)
    (layout / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_bytes(index)
    return f"sha256:{sha256_hex(manifest)}"


def registry_host(image: str) -> str:
    """The registry part of `host[:port]/repo[:tag]` (an image without one is Docker Hub's)."""
    first, _, rest = image.partition("/")
    if not rest or not ("." in first or ":" in first or first == "localhost"):
        return "docker.io"
    return first


def is_loopback(registry: str) -> bool:
    """`host`, `host:port`, `[v6]` or `[v6]:port` names this machine."""
    name = registry[1:].split("]", 1)[0] if registry.startswith("[") else registry.split(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def push(layout: Path, image: str, insecure: bool) -> str:
    """Copies the layout's image to `docker://image` with skopeo and returns the pushed digest.

    Credentials are skopeo's: `--dest-creds` from $REGISTRY_CREDS (user:password) if set,
    otherwise the auth file ($REGISTRY_AUTH_FILE, `skopeo login`'s, or ~/.docker/config.json).
    TLS is required except for a loopback registry or INSECURE=1."""
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "digest"
        command = [
            "skopeo", "copy", "--quiet",
            # Fail rather than let skopeo re-encode anything: the digest is the one built here.
            "--preserve-digests",
            "--digestfile", str(digest_file),
        ]
        if insecure or is_loopback(registry_host(image)):
            command.append("--dest-tls-verify=false")
        creds = os.environ.get("REGISTRY_CREDS")
        if creds:
            command += ["--dest-creds", creds]
        command += [f"oci:{layout}", f"docker://{image}"]
        result = subprocess.run(command, stdin=subprocess.DEVNULL, check=False)
        if result.returncode != 0:
            raise SystemExit(f"skopeo copy to {image} failed (exit {result.returncode})")
        return digest_file.read_text().strip()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="write the OCI image layout of a module")
    build.add_argument("module", type=Path)
    build.add_argument("layout", type=Path)
    push_cmd = commands.add_parser("push", help="push an image layout with skopeo")
    push_cmd.add_argument("layout", type=Path)
    push_cmd.add_argument("image", help="registry/repository:tag")
    push_cmd.add_argument("--insecure", action="store_true", help="allow plain HTTP / unverified TLS")
    args = parser.parse_args(argv)

    if args.command == "build":
        module = args.module.read_bytes()
        digest = build_layout(module, args.layout)
        module_sha = sha256_hex(module)
        manifest_sha = digest.removeprefix("sha256:")
        print(f"image: {args.layout} (OCI image layout; one tar+gzip layer holding {PLUGIN_FILE})")
        print(f"module sha256:         {module_sha}")
        print(f"image manifest digest: {digest}")
        print("wasm-plugin.yaml `sha256`, by the kind of `url` (Istio checks different things):")
        print(f"  oci://…              {manifest_sha}  (the image manifest)")
        print(f"  https://…, file://…  {module_sha}  (the module file)")
    else:
        if not (args.layout / "index.json").is_file():
            raise SystemExit(f"no OCI layout at {args.layout}: run `make image` first")
        digest = push(args.layout, args.image, args.insecure)
        print(f"pushed: {args.image}@{digest}")
        print(f"wasm-plugin.yaml: url: oci://{args.image}  sha256: {digest.removeprefix('sha256:')}")


if __name__ == "__main__":
    main(sys.argv[1:])
