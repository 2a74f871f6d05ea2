"""Wycheproof through the host signature path, in real Envoy (issue #6 asks for both ways; the
native run, ring alone, is tests/wycheproof.rs).

The probe module (tests/host-probe) runs each vector through the filter's own code, the key
parsed by `keys::parse_jwks` and the signature checked by `verify::verify_with` with Envoy's
`verify_signature` as the host after its known-answer test, and answers with what it decided
and who decided it. Every RSA PKCS#1 v1.5 vector (2048 to 8192 bits, SHA-256/384/512) and
every ECDSA P1363 vector (P-256/SHA-256, P-384/SHA-384) must give Wycheproof's result and the
native run's; deliberate differences, pinned per file below:
- `acceptable` vectors (RSA "MissingNull": a DigestInfo without its NULL) are refused, as
  natively.
- ECDSA signatures that cannot be a JOSE signature (wrong length, `r` or `s` zero) are refused
  without asking the host ("refused before the host"); every other vector is answered by the
  host, none by ring.

`make host-probe` builds the probe and writes the vectors (from the `wycheproof` crate, with
the native results); MESH_OAUTH_HOST_PROBE and MESH_OAUTH_HOST_VECTORS point elsewhere."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO
from harness import EnvoyFactory

PROBE = Path(os.environ.get("MESH_OAUTH_HOST_PROBE")
             or REPO / "target/host-probe/wasm32-wasip1/release/mesh_oauth_host_probe.wasm")
VECTORS = Path(os.environ.get("MESH_OAUTH_HOST_VECTORS") or REPO / "target/host-probe/vectors.json")

# file: (vectors, acceptable, refused before the host)
PINNED = {
    "Rsa2048Sha256": (259, 1, 0),
    "Rsa2048Sha384": (258, 1, 0),
    "Rsa2048Sha512": (259, 1, 0),
    "Rsa3072Sha256": (259, 1, 0),
    "Rsa3072Sha384": (259, 1, 0),
    "Rsa3072Sha512": (260, 1, 0),
    "Rsa4096Sha256": (258, 1, 0),
    "Rsa4096Sha384": (259, 1, 0),
    "Rsa4096Sha512": (259, 1, 0),
    "Rsa8192Sha256": (258, 1, 0),
    "Rsa8192Sha384": (259, 1, 0),
    "Rsa8192Sha512": (259, 1, 0),
    "EcdsaSecp256r1Sha256P1363": (262, 0, 35),
    "EcdsaSecp384r1Sha384P1363": (280, 0, 33),
}


@pytest.fixture(scope="module")
def vectors() -> dict[str, dict[str, Any]]:
    """Every vector by id, with its file and its group's algorithm."""
    if not PROBE.is_file() or not VECTORS.is_file():
        pytest.fail(f"host probe or its vectors missing ({PROBE}, {VECTORS}): run `make host-probe`",
                    pytrace=False)
    document = json.loads(VECTORS.read_text())
    return {test["id"]: {**test, "file": group["file"], "alg": group["alg"]}
            for group in document["groups"] for test in group["tests"]}


@pytest.fixture(scope="module")
def report(envoy_bin, echo, tmp_path_factory, vectors) -> dict[str, Any]:
    factory = EnvoyFactory(envoy_bin, PROBE, echo, tmp_path_factory.mktemp("host-probe"))
    try:
        envoy = factory.start(VECTORS.read_text())
        resp = envoy.request("/", timeout=60)
        assert resp.status == 200, resp
        assert not envoy.crash_lines(), envoy.crash_lines()
        return resp.json()
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def results(report) -> dict[str, tuple[bool, str]]:
    ids = [row[0] for row in report["results"]]
    assert len(ids) == len(set(ids)), "a vector reported twice"
    return {row[0]: (row[1], row[2]) for row in report["results"]}


def test_the_host_passed_its_known_answer_test(report):
    assert report["selfTest"] is None


def test_every_vector_was_run(vectors, results):
    assert results.keys() == vectors.keys()
    per_file = Counter(v["file"] for v in vectors.values())
    assert per_file == {file: pinned[0] for file, pinned in PINNED.items()}


def test_every_vector_gives_wycheproofs_result_and_the_native_one(vectors, results):
    expected = {"valid": True, "invalid": False, "acceptable": False}
    wrong = [f"{vid} ({v['result']}): host path {'accepted' if results[vid][0] else 'refused'}"
             for vid, v in vectors.items() if results[vid][0] != expected[v["result"]]]
    assert not wrong, wrong
    differs = [vid for vid, v in vectors.items() if results[vid][0] != v["native"]]
    assert not differs, f"host and native runs differ: {differs}"
    acceptable = Counter(v["file"] for v in vectors.values() if v["result"] == "acceptable")
    assert acceptable == {file: p[1] for file, p in PINNED.items() if p[1]}


def test_every_vector_went_through_the_host(vectors, results):
    paths = Counter(path for _, path in results.values())
    assert paths.keys() <= {"host", "none"}, paths
    refused_first = Counter(vectors[vid]["file"] for vid, (_, path) in results.items() if path == "none")
    assert refused_first == {file: p[2] for file, p in PINNED.items() if p[2]}
    # Only signatures that are no JOSE ECDSA signature at all are refused without a call.
    for vid, (accepted, path) in results.items():
        if path == "none":
            assert not accepted and vectors[vid]["result"] == "invalid", vid
