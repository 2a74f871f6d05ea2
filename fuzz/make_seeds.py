"""Writes the fuzz targets' fixed key set, config and seed corpora (fuzz/fixtures, fuzz/seeds).

Run by hand when the seeds need to change (`.venv/bin/python fuzz/make_seeds.py`, after
`make venv`); the output is committed. `make_seeds.py wire` (or `ed25519`) writes only that
target's seeds, which depend on no generated key, and leaves the rest as it is. Tokens are signed
with `cryptography` directly, never by the project. Each run makes new keys, so fixtures and
seeds are always regenerated together. Private keys are not kept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import struct
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

FUZZ = Path(__file__).resolve().parent
ISSUER = "https://idp.fuzz.test"
AUDIENCE = "api"
# The targets check tokens at this time (2023-11-14); seeds expire in 2100.
NOW = 1_700_000_000
EXP = 4_102_444_800


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
P256_KEY = ec.generate_private_key(ec.SECP256R1())
P384_KEY = ec.generate_private_key(ec.SECP384R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
HMAC_SECRET = os.urandom(64)


def public_jwks() -> dict:
    rsa_numbers = RSA_KEY.public_key().public_numbers()

    def ec_jwk(key, crv, size, kid):
        numbers = key.public_key().public_numbers()
        return {"kty": "EC", "crv": crv, "kid": kid, "use": "sig",
                "x": b64(numbers.x.to_bytes(size, "big")), "y": b64(numbers.y.to_bytes(size, "big"))}

    ed_raw = ED_KEY.public_key().public_bytes_raw()
    return {"keys": [
        {"kty": "RSA", "kid": "rsa", "use": "sig", "n": b64(uint(rsa_numbers.n)), "e": b64(uint(rsa_numbers.e))},
        ec_jwk(P256_KEY, "P-256", 32, "p256"),
        ec_jwk(P384_KEY, "P-384", 48, "p384"),
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed_raw)},
        {"kty": "oct", "kid": "hmac", "k": b64(HMAC_SECRET)},
    ]}


KID = {"RS": "rsa", "PS": "rsa", "ES256": "p256", "ES384": "p384", "EdDSA": "ed", "HS": "hmac"}
ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        "HS256", "HS384", "HS512"]


def kid_for(alg: str) -> str:
    return KID.get(alg) or KID[alg[:2]]


def sign(alg: str, signing_input: bytes) -> bytes:
    digest = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}.get(alg[-3:])
    if alg.startswith("HS"):
        return hmac.new(HMAC_SECRET, signing_input, getattr(hashlib, f"sha{alg[-3:]}")).digest()
    if alg.startswith("RS"):
        return RSA_KEY.sign(signing_input, padding.PKCS1v15(), digest())
    if alg.startswith("PS"):
        return RSA_KEY.sign(signing_input, padding.PSS(padding.MGF1(digest()), digest.digest_size), digest())
    if alg.startswith("ES"):
        key, size = (P256_KEY, 32) if alg == "ES256" else (P384_KEY, 48)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(digest())))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return ED_KEY.sign(signing_input)


def token(alg: str, claims: dict | None = None, header: dict | None = None, sign_as: str | None = None) -> str:
    header = header if header is not None else {"alg": alg, "typ": "JWT", "kid": kid_for(alg)}
    claims = claims if claims is not None else {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": EXP, "iat": NOW - 10,
        "scope": "orders:read orders:write", "roles": ["admin"]}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(sign_as or alg, signing_input.encode()))}"


def valid_tokens() -> list[str]:
    return [token(alg) for alg in ALGS]


def invalid_tokens() -> list[str]:
    good = token("ES256")
    head, payload, sig = good.split(".")
    none_header = b64(json.dumps({"alg": "none"}).encode())
    return [
        f"{none_header}.{payload}.",
        f"{b64(json.dumps({'alg': 'nOnE'}).encode())}.{payload}.",
        token("HS256", header={"alg": "HS256", "kid": "rsa"}),
        token("ES256", header={"alg": "ES256", "kid": "p256", "crit": ["exp"]}),
        token("ES256", header={"alg": "ES256", "kid": "p256", "b64": False}),
        token("ES256", header={"alg": "ES256", "kid": "p256", "jku": "https://evil.test/jwks"}),
        token("ES256", header={"alg": "ES256", "kid": "../../etc/passwd"}),
        token("ES256", header={"alg": "ES384", "kid": "p256"}, sign_as="ES256"),
        token("ES256", claims={"iss": ISSUER, "aud": AUDIENCE, "exp": 1}),
        token("ES256", claims={"iss": ISSUER + "/", "aud": AUDIENCE, "exp": EXP}),
        token("ES256", claims={"iss": ISSUER, "aud": [AUDIENCE, "x"], "exp": EXP, "nbf": EXP}),
        token("ES256", claims={"iss": ISSUER, "aud": AUDIENCE, "exp": 1.5e300}),
        f"{head}.{payload}.{sig[:-4]}",
        f"{head}.{payload}",
        f"{head}.{payload}.{sig}.x.y",
        f"{head}={payload}.{sig}",
        good[:-1] + ("A" if good[-1] != "A" else "E"),
    ]


def write(target: str, seeds: dict[str, str | bytes]) -> None:
    directory = FUZZ / "seeds" / target
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for name, content in seeds.items():
        data = content.encode() if isinstance(content, str) else content
        (directory / name).write_bytes(data)


def header_buffer(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """The host's header map: a u32 count, (name length, value length) u32 pairs, then each
    name and value followed by a NUL."""
    out = struct.pack("<I", len(pairs))
    for name, value in pairs:
        out += struct.pack("<II", len(name), len(value))
    for name, value in pairs:
        out += name + b"\0" + value + b"\0"
    return out


def wire_seeds() -> dict[str, bytes]:
    """The wire target: first byte 0 the host's VerifySignatureResult, 1 a raw ECDSA
    signature, 2 a header map buffer; the rest is that parser's input."""
    p256 = bytes.fromhex("98268f92589f07e6f361aec71706e16a74c205e65440cf95dccd2d4315dfb2dc"
                         "296be3436e048b5e3a6c00c66b08a64756762ea0aac5e385516fee3dba74f6ea")
    return {
        "result-true": b"\0\x08\x01",
        "result-error": b"\0\x12\x05error",
        "result-unknown": b"\0\x08\x01\x18\x96\x01\x21" + bytes(range(8)) + b"\x2a\x02\x09\x09\x35\x01\x02\x03\x04",
        "result-truncated": b"\0\x12\x05err",
        "result-long-varint": b"\0\x18" + b"\xff" * 10 + b"\x01",
        "ecdsa-p256": b"\1" + p256,
        "ecdsa-p256-zero-r": b"\1" + bytes(32) + p256[32:],
        "ecdsa-p384-max": b"\1" + b"\xff" * 96,
        "ecdsa-p384-small": b"\1" + bytes(47) + b"\x01" + bytes(46) + b"\x7f\x80",
        "ecdsa-short": b"\1" + p256[:63],
        "headers": b"\2" + header_buffer([(b":path", b"/a?b=c"), (b"authorization", b"Bearer x"), (b"x-empty", b"")]),
        "headers-none": b"\2" + header_buffer([]),
        "headers-truncated": b"\2" + header_buffer([(b"a", b"1"), (b"b", b"2")])[:-1],
        "headers-huge-count": b"\2" + b"\xff\xff\xff\xff" + header_buffer([(b"a", b"1")])[4:],
        "headers-missing-nul": b"\2" + header_buffer([(b"host", b"x")]).replace(b"host\0", b"hostx"),
    }


def ed25519_seeds() -> dict[str, bytes]:
    """The ed25519 target (see its header): even first byte, a seed signs a message of half that
    length and (position, value) pairs edit the signature; odd, a raw public key, signature and
    message. An identity key with R = B and S = 1 verifies for any message (as with ring)."""
    seed, message = bytes([7]) * 32, b"message!"
    signed = bytes([2 * len(message)]) + seed + message
    base = bytes([0x58]) + bytes([0x66]) * 31
    one = bytes([1]) + bytes(31)
    identity = bytes([1]) + bytes(31)
    raw = lambda key, signature: b"\1" + key + signature + b"m"
    return {
        "signed": signed,
        "signed-r-bit": signed + b"\x00\x01",
        "signed-s-top": signed + b"\x3f\x10",
        "signed-s-plus-order": signed + b"\x80\x00",
        "signed-truncated": signed + b"\x81\x3f",
        "signed-longer": signed + b"\x82\x00",
        "identity-key": raw(identity, base + one),
        "identity-key-sign-bit": raw(identity[:31] + b"\x80", base + one),
        "identity-key-non-canonical": raw(b"\xee" + b"\xff" * 30 + b"\x7f", base + one),
        "order-8-key": raw(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), base + one),
        "off-curve-key": raw(bytes([2]) + bytes(31), base + one),
    }


def main() -> None:
    if sys.argv[1:] == ["wire"]:
        write("wire", wire_seeds())
        return
    if sys.argv[1:] == ["ed25519"]:
        write("ed25519", ed25519_seeds())
        return
    jwks = public_jwks()
    config = {
        "providers": [{
            "issuer": ISSUER, "audiences": [AUDIENCE], "jwks": json.dumps(jwks),
            "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}, {"name": "x-jwt", "prefix": ""}],
            "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}],
            "outputPayloadToHeader": "x-jwt-payload",
        }],
        "rules": [
            {"match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"match": {"paths": ["/admin/*"]}, "requires": {
                "scopes": ["orders:write"], "claims": [{"claim": "roles", "anyOf": ["admin"]}]}},
            {"match": {"paths": ["*.png"], "methods": ["GET"]}, "deny": True},
            {"match": {"hosts": ["*.example.com"]}, "requiresAny": [
                {"scopes": ["x"]}, {"claims": [{"claim": "sub", "present": True}]}]},
        ],
        "unmatched": "authenticated",
    }
    fixtures = FUZZ / "fixtures"
    fixtures.mkdir(exist_ok=True)
    (fixtures / "jwks.json").write_text(json.dumps(jwks, indent=1) + "\n")
    (fixtures / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    tokens = valid_tokens() + invalid_tokens()
    write("token_verify", {f"token-{i:02}": t for i, t in enumerate(tokens)})

    # token_answer: the first byte picks status and grant (0: 200, client credentials;
    # 8: 200, exchange for an access token; 12: 200, exchange for a transaction token; 2: 4xx).
    ok = {"access_token": tokens[0], "token_type": "Bearer", "expires_in": 300}
    exchanged = {**ok, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}
    txn = {**ok, "token_type": "N_A", "issued_token_type": "urn:ietf:params:oauth:token-type:txn_token"}
    write("token_answer", {
        "cc": b"\x00" + json.dumps(ok).encode(),
        "exchange": b"\x08" + json.dumps(exchanged).encode(),
        "txn": b"\x0c" + json.dumps(txn).encode(),
        "error": b"\x02" + json.dumps({"error": "invalid_grant", "error_description": "x"}).encode(),
        "string-expiry": b"\x00" + json.dumps({**ok, "expires_in": "60"}).encode(),
        "html": b"\x00<html><body>502 Bad Gateway</body></html>",
    })

    rsa_1024 = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    rsa_good = jwks["keys"][0]
    write("jwks", {
        "full": json.dumps(jwks),
        "rsa-1024": json.dumps({"keys": [{"kty": "RSA", "n": b64(uint(rsa_1024.n)), "e": "AQAB"}]}),
        "rsa-e1": json.dumps({"keys": [{**rsa_good, "e": "AQ"}]}),
        "use-enc": json.dumps({"keys": [{**rsa_good, "use": "enc"}, {**rsa_good, "key_ops": ["encrypt"]}]}),
        "private": json.dumps({"keys": [{**rsa_good, "d": "AQAB"}]}),
        "mixed": json.dumps({"keys": [{"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
                                      {"kty": "oct", "k": "c2hvcnQ"}, jwks["keys"][3]]}),
        "alg-mismatch": json.dumps({"keys": [{**jwks["keys"][1], "alg": "ES384"}]}),
        "not-jwks": "[1,2,3]",
    })

    write("config", {
        "full": json.dumps(config),
        "minimal": json.dumps({"providers": [{"issuer": ISSUER, "jwksUri": "https://idp.fuzz.test/jwks"}]}),
        "discovery": json.dumps({"providers": [{"issuer": ISSUER, "timeout": "500ms", "clockSkewSeconds": 5,
                                                "algorithms": ["RS256", "ES256"], "fromParams": ["access_token"],
                                                "fromCookies": ["session"]}],
                                 "mode": "report", "realm": "orders", "bypassCorsPreflight": False,
                                 "limits": {"maxTokenBytes": 4096, "maxJwksKeys": 8}}),
        "unknown-field": json.dumps({"providers": [{"issuer": ISSUER, "jwks": "{}"}], "extra": 1}),
        "duplicate": '{"providers": [], "providers": []}',
    })

    paths = ["/", "/a/b/c", "/a//b/./c/../d", "/%2e%2e/admin", "/public/%2E%2E/admin/x", "/a%2Fb",
             "/a%5cb", "/a\\b", "/x?y=1#z", "/%41%7e%20%zz", "relative", "/a/%00", "//admin",
             "/admin/", "/public/../../admin/users?x=/public/", "/img/a.png", "/%E2%82%AC"]
    write("path", {f"path-{i:02}": p for i, p in enumerate(paths)})

    requests = []
    for i, tok in enumerate(tokens):
        path = ["/orders", "/admin/users", "/public/x", "/img/a.png"][i % 4]
        requests.append(f"GET\n{path}\napi.example.com\nauthorization: Bearer {tok}\nx-sub: forged\n")
    requests += [
        f"POST\n/orders\norders.test:8443\nx-jwt: {tokens[0]}\n",
        f"GET\n/orders\norders.test\nauthorization: Bearer {tokens[1]}\nx-jwt: {tokens[2]}\n",
        "OPTIONS\n/orders\norders.test\norigin: https://a.test\naccess-control-request-method: POST\n",
        "GET\n/public/../admin/x\norders.test\n",
        "GET\n/a%2fb\norders.test\n",
        f"GET\n/orders\norders.test\nauthorization: bearer  {tokens[3]}\n",
    ]
    write("authorize", {f"request-{i:02}": r for i, r in enumerate(requests)})
    # The policy target reads structured input; a few byte strings give libFuzzer a start.
    write("policy", {f"bytes-{i}": os.urandom(64 * (i + 1)) for i in range(3)})
    write("wire", wire_seeds())
    write("ed25519", ed25519_seeds())


if __name__ == "__main__":
    main()
