"""Wycheproof through the host signature path, in real Envoy (issue #6 asks for both ways; the
native run, ring alone, is tests/wycheproof.rs).

The probe module (tests/host-probe) runs each vector through the filter's own code, the key
parsed by `keys::parse_jwks` and the signature checked by `verify::verify_with` with Envoy's
`verify_signature` as the host after its known-answer test, and answers with what it decided
and who decided it. Every RSA PKCS#1 v1.5 vector (2048 to 8192 bits, SHA-256/384/512) and
every ECDSA P1363 vector (P-256/SHA-256, P-384/SHA-384) must give Wycheproof's result and the
native run's. So must every Ed25519 vector, which the host never sees: the module decides them
with its own Ed25519 code (src/ed25519.rs) compiled to Wasm, here in Envoy's V8, and the native
run (the same code natively) must agree. Deliberate differences, pinned per file below:
- `acceptable` vectors (RSA "MissingNull": a DigestInfo without its NULL) are refused, as
  natively.
- ECDSA signatures that cannot be a JOSE signature (wrong length, `r` or `s` zero) are refused
  without asking the host ("refused before the host"); every other vector is answered by the
  host, none by ring.
- RSA-PSS (every group JOSE can express: MGF1 over the message hash, salt as long as the hash)
  is verified in the module by its own RSA (`src/rsa.rs`), the host never asked (path
  `module`): the same arithmetic natively and in Envoy's V8.

`make host-probe` builds the probe and writes the vectors (from the `wycheproof` crate, with
the native results); MESH_OAUTH_HOST_PROBE and MESH_OAUTH_HOST_VECTORS point elsewhere."""

from __future__ import annotations

import base64
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    "Ed25519": (151, 0, 0),
}
# Decided in the module: the host offers no Ed25519.
MODULE_FILES = {"Ed25519"}

# RSA-PSS file: vectors of its JOSE groups, all verified in the module (misc: one group per
# hash, SHA-256/384/512, of one vector each).
MISC_JOSE = 3
PINNED_MODULE = {
    "RsaPss2048Sha256Mgf1SaltLen32": 108,
    "RsaPss2048Sha256Mgf1SaltLen32WithParams": 108,
    "RsaPss2048Sha384Mgf1SaltLen48": 141,
    "RsaPss3072Sha256Mgf1SaltLen32": 108,
    "RsaPss3072Sha256Mgf1SaltLen32WithParams": 108,
    "RsaPss4096Sha256Mgf1SaltLen32": 108,
    "RsaPss4096Sha384Mgf1SaltLen48": 141,
    "RsaPss4096Sha512Mgf1SaltLen64": 179,
    "RsaPss4096Sha512Mgf1SaltLen64WithParams": 179,
    "RsaPssmisc": MISC_JOSE,
    "RsaPssmiscWithParams": MISC_JOSE,
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


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def rsa_key_with_exponent(largest: int) -> rsa.RSAPrivateKey:
    """An RSA-2048 key whose exponent is the largest odd number up to `largest` that suits it."""
    numbers = rsa.generate_private_key(65537, 2048).private_numbers()
    p, q = numbers.p, numbers.q
    phi = (p - 1) * (q - 1)
    e = largest
    while math.gcd(e, phi) != 1:
        e -= 2
    d = pow(e, -1, phi)
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), rsa.rsa_crt_iqmp(p, q), public).private_key()


@pytest.fixture(scope="module")
def edge_groups() -> list[dict[str, Any]]:
    """RSA keys at the ends of the module's exponent rule (3, and near 2^33 − 1), signed here with
    `cryptography`: BoringSSL must take every key the module's rules let through, or it would
    answer "invalid" for tokens ring would accept. Each: one valid signature, one altered."""
    groups = []
    for name, key, alg, digest in (
        ("e=3", rsa.generate_private_key(3, 2048), "RS256", hashes.SHA256()),
        ("e=2^33-1", rsa_key_with_exponent((1 << 33) - 1), "RS512", hashes.SHA512()),
    ):
        public = key.public_key().public_numbers()
        assert name == "e=3" or public.e > 1 << 32
        message = f"edge {name}".encode()
        signature = key.sign(message, padding.PKCS1v15(), digest)
        altered = signature[:-1] + bytes([signature[-1] ^ 1])
        groups.append({
            "file": "edge", "alg": alg,
            "jwk": {"kty": "RSA", "n": b64url(uint(public.n)), "e": b64url(uint(public.e))},
            "tests": [{"id": f"edge/{name}/valid", "msg": b64url(message), "sig": b64url(signature)},
                      {"id": f"edge/{name}/altered", "msg": b64url(message), "sig": b64url(altered)}],
        })
    return groups


@pytest.fixture(scope="module")
def report(envoy_bin, echo, tmp_path_factory, vectors, edge_groups) -> dict[str, Any]:
    document = json.loads(VECTORS.read_text())
    document["groups"] += edge_groups
    factory = EnvoyFactory(envoy_bin, PROBE, echo, tmp_path_factory.mktemp("host-probe"))
    try:
        envoy = factory.start(json.dumps(document))
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


def test_a_key_envoy_cannot_import_is_refused(report):
    # Envoy 1.40 answers "invalid" (result false, "Failed to initialize digest verify."), not
    # BadArgument, for a key BoringSSL will not import, and the module takes that answer as
    # final. It can only refuse: the module's key rules admit no key BoringSSL would not import
    # but ring would verify with (every Wycheproof key above goes through the host). An EC point
    # off its curve passes the module's key rules (ring checks the point at each verify), fails
    # BoringSSL's import, and is refused by the host's answer.
    assert report["interface"] == {"junkKey": "Invalid", "offCurveKey": [False, "host"]}


def test_keys_at_the_ends_of_the_exponent_rule_are_verified_by_the_host(results):
    edge = {vid: result for vid, result in results.items() if vid.startswith("edge/")}
    assert edge == {
        "edge/e=3/valid": (True, "host"),
        "edge/e=3/altered": (False, "host"),
        "edge/e=2^33-1/valid": (True, "host"),
        "edge/e=2^33-1/altered": (False, "host"),
    }


def test_every_vector_was_run(vectors, results):
    assert {vid for vid in results if not vid.startswith("edge/")} == vectors.keys()
    per_file = Counter(v["file"] for v in vectors.values())
    assert per_file == {**{file: pinned[0] for file, pinned in PINNED.items()}, **PINNED_MODULE}


def test_every_vector_gives_wycheproofs_result_and_the_native_one(vectors, results):
    expected = {"valid": True, "invalid": False, "acceptable": False}
    wrong = [f"{vid} ({v['result']}): host path {'accepted' if results[vid][0] else 'refused'}"
             for vid, v in vectors.items() if results[vid][0] != expected[v["result"]]]
    assert not wrong, wrong
    differs = [vid for vid, v in vectors.items() if results[vid][0] != v["native"]]
    assert not differs, f"host and native runs differ: {differs}"
    acceptable = Counter(v["file"] for v in vectors.values() if v["result"] == "acceptable")
    assert acceptable == {file: p[1] for file, p in PINNED.items() if p[1]}


def test_every_pss_vector_was_verified_in_the_module(vectors, results):
    paths = Counter(results[vid][1] for vid, v in vectors.items() if v["file"] in PINNED_MODULE)
    assert paths == {"module": sum(PINNED_MODULE.values())}, paths


def test_ed25519_vectors_were_decided_in_the_module(vectors, results):
    paths = Counter(path for vid, (_, path) in results.items()
                    if vid in vectors and vectors[vid]["file"] in MODULE_FILES)
    assert paths == {"module": PINNED["Ed25519"][0]}
    accepted = sum(results[vid][0] for vid, v in vectors.items() if v["file"] == "Ed25519")
    assert accepted == sum(v["result"] == "valid" for v in vectors.values() if v["file"] == "Ed25519") > 0


def test_every_vector_went_through_the_host(vectors, results):
    vectors = {vid: v for vid, v in vectors.items() if v["file"] in PINNED and v["file"] not in MODULE_FILES}
    paths = Counter(path for vid, (_, path) in results.items() if vid in vectors)
    assert paths.keys() <= {"host", "none"}, paths
    refused_first = Counter(vectors[vid]["file"] for vid, (_, path) in results.items()
                            if vid in vectors and path == "none")
    assert refused_first == {file: p[2] for file, p in PINNED.items() if p[2]}
    # Only signatures that are no JOSE ECDSA signature at all are refused without a call.
    for vid, (accepted, path) in results.items():
        if vid in vectors and path == "none":
            assert not accepted and vectors[vid]["result"] == "invalid", vid
