"""`make image` / `make push`: the OCI image goes through a real registry (Debian's
docker-registry) and comes back the way Istio's agent fetches it (manifest -> last layer ->
tar.gz -> plugin.wasm), byte-identical, and the pulled module serves requests in Envoy."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO
from harness import EnvoyFactory, IdpServer
from tokens import KeySet, claims

SCRIPT = REPO / "scripts" / "oci_image.py"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
# What go-containerregistry (Istio's fetcher) asks a registry for.
MANIFEST_ACCEPT = ", ".join([
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
REPOSITORY = "platform/mesh-oauth"
TAG = "test"
ISSUER = "https://idp.delivery.test"


def run_script(*args: str) -> str:
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, f"oci_image.py {args[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def build(module: Path, layout: Path) -> str:
    """The manifest digest `oci_image.py build` reports for `module`."""
    for line in run_script("build", str(module), str(layout)).splitlines():
        if line.startswith("image manifest digest:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("build printed no manifest digest")


def layout_files(layout: Path) -> dict[str, bytes]:
    return {str(p.relative_to(layout)): p.read_bytes() for p in sorted(layout.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- determinism


def test_same_module_gives_the_same_image(module_path: Path, tmp_path: Path) -> None:
    """Reproducible: another copy of the module (other path, other mtime) gives a byte-identical
    layout, so the digest in a WasmPlugin stays valid for a rebuild of the same module."""
    copy = tmp_path / "copy" / "mesh_oauth.wasm"
    copy.parent.mkdir()
    shutil.copyfile(module_path, copy)
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    first = build(module_path, tmp_path / "a")
    second = build(copy, tmp_path / "b")
    assert first == second
    assert layout_files(tmp_path / "a") == layout_files(tmp_path / "b")


def test_another_module_gives_another_digest(module_path: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed.wasm"
    changed.write_bytes(module_path.read_bytes() + b"\0")  # a trailing byte: still starts with \0asm
    assert build(module_path, tmp_path / "a") != build(changed, tmp_path / "b")


def test_a_file_that_is_not_wasm_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "plugin.wasm"
    text.write_text("not a module")
    result = subprocess.run([sys.executable, str(SCRIPT), "build", str(text), str(tmp_path / "l")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "not a Wasm module" in result.stderr


# --------------------------------------------------------------------------- registry


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": accept} if accept else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Debian's docker-registry on a free loopback port with throw-away storage; yields the port."""
    if shutil.which("docker-registry") is None:
        pytest.fail("docker-registry not installed: `make registry-tools`", pytrace=False)
    root = tmp_path_factory.mktemp("registry")
    port = free_loopback_port()
    config = root / "config.yml"
    # JSON is YAML.
    config.write_text(json.dumps({
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }))
    with open(root / "registry.log", "wb") as log:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"registry exited: {(root / 'registry.log').read_text()}"
            try:
                if http_get(port, "/v2/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "registry not ready within 15 s"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Pushed:
    image: str
    local_digest: str
    push_output: str


@pytest.fixture(scope="module")
def pushed(registry: int, module_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """The module built into an image and pushed by the same commands `make push` runs."""
    layout = tmp_path_factory.mktemp("image") / "oci"
    local_digest = build(module_path, layout)
    image = f"127.0.0.1:{registry}/{REPOSITORY}:{TAG}"
    return Pushed(image, local_digest, run_script("push", str(layout), image))


@dataclass
class Pulled:
    manifest_digest: str
    manifest: dict
    layer: bytes
    module: bytes


def extract_plugin_wasm(layer: bytes) -> bytes:
    """As Istio's extractWasmPluginBinary: the first tar entry whose base name is plugin.wasm."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r:") as tar:
        for member in tar:
            if os.path.basename(member.name) == "plugin.wasm":
                data = tar.extractfile(member)
                assert data is not None, "plugin.wasm is not a regular file"
                return data.read()
    raise AssertionError("plugin.wasm not found in the last layer")


@pytest.fixture(scope="module")
def pulled(registry: int, pushed: Pushed) -> Pulled:
    """Pulled with plain registry API GETs, the steps of Istio's agent."""
    status, headers, body = http_get(registry, f"/v2/{REPOSITORY}/manifests/{TAG}", MANIFEST_ACCEPT)
    assert status == 200, body
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    assert headers.get("docker-content-digest") == digest
    manifest = json.loads(body)
    last = manifest["layers"][-1]
    status, _, layer = http_get(registry, f"/v2/{REPOSITORY}/blobs/{last['digest']}")
    assert status == 200
    assert "sha256:" + hashlib.sha256(layer).hexdigest() == last["digest"]
    return Pulled(digest, manifest, layer, extract_plugin_wasm(layer))


def test_push_prints_the_digest_it_built(pushed: Pushed) -> None:
    assert f"{pushed.image}@{pushed.local_digest}" in pushed.push_output
    assert f"sha256: {pushed.local_digest.removeprefix('sha256:')}" in pushed.push_output


def test_registry_serves_an_oci_image_istio_accepts(pulled: Pulled, pushed: Pushed) -> None:
    """The manifest digest is the one printed for wasm-plugin.yaml (Istio compares `sha256` with
    it); an OCI manifest (not Docker: Istio tries the OCI variants then) whose last layer is
    OCI tar+gzip."""
    assert pulled.manifest_digest == pushed.local_digest
    assert pulled.manifest["mediaType"] == OCI_MANIFEST
    assert [layer["mediaType"] for layer in pulled.manifest["layers"]] == [OCI_LAYER]


def test_pulled_module_is_byte_identical(pulled: Pulled, module_path: Path) -> None:
    assert pulled.module == module_path.read_bytes()


def test_image_config_describes_the_layer(registry: int, pulled: Pulled) -> None:
    """Image tools check rootfs.diff_ids against the uncompressed layer."""
    descriptor = pulled.manifest["config"]
    status, _, config = http_get(registry, f"/v2/{REPOSITORY}/blobs/{descriptor['digest']}")
    assert status == 200
    assert "sha256:" + hashlib.sha256(config).hexdigest() == descriptor["digest"]
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(pulled.layer)).hexdigest()
    assert json.loads(config)["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}


def test_skopeo_reads_the_same_image(pushed: Pushed) -> None:
    """An independent client agrees on the digest and the single layer."""
    result = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{pushed.image}"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    inspected = json.loads(result.stdout)
    assert inspected["Digest"] == pushed.local_digest
    assert len(inspected["Layers"]) == 1


def test_pulled_module_serves_requests_in_envoy(pulled: Pulled, envoy_bin: Path, echo, keys: KeySet,
                                                idp: IdpServer, tmp_path: Path) -> None:
    module = tmp_path / "pulled" / "plugin.wasm"
    module.parent.mkdir()
    module.write_bytes(pulled.module)
    factory = EnvoyFactory(envoy_bin, module, echo, tmp_path / "envoy")
    try:
        idp.set_jwks(keys.jwks(["RS256"]))
        envoy = factory.start({"providers": [{"issuer": ISSUER, "audiences": ["orders"], "jwksUri": idp.jwks_uri}]},
                              idps=[idp])
        valid = keys.mint("RS256", claims(ISSUER, "orders"))
        # Until its first key fetch returns, the plugin answers 503 (with Retry-After).
        deadline = time.monotonic() + 5
        while (passed := envoy.request("/orders", headers={"Authorization": f"Bearer {valid}"})).status == 503:
            assert time.monotonic() < deadline, "keys never loaded"
            time.sleep(0.02)
        assert passed.status == 200 and passed.upstream["path"] == "/orders"
        wrong_audience = keys.mint("RS256", claims(ISSUER, "billing"))
        refused = envoy.request("/orders", headers={"Authorization": f"Bearer {wrong_audience}"})
        assert refused.status == 401 and "invalid_token" in (refused.header("WWW-Authenticate") or "")
        assert envoy.request("/orders").status == 401
    finally:
        factory.stop_all()
