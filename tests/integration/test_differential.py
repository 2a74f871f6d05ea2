"""Differential test: the same tokens through Envoy's native `jwt_authn` and through mesh-oauth,
configured alike (one issuer, one audience, keys fetched from the same JWKS server, 60 s of clock
skew), compared allow/deny. Every disagreement must be listed in `DELIBERATE` with the RFC that
makes mesh-oauth stricter (or different); the test fails on any other disagreement, and on a
listed one that no longer disagrees, so the list (mirrored in docs/security.md) stays true."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import serialization

from harness import Envoy, bootstrap
from tokens import SigningKey, b64url, b64url_decode, generate_key

ISSUER = "https://diff.idp.test"
AUDIENCE = "api"
SKEW = 60
ALGS = ("RS256", "ES256", "EdDSA")
# The other algorithm name of the same key family: a header rewritten to it must fail.
SAME_FAMILY_OTHER = {"RS256": "RS384", "ES256": "ES384", "EdDSA": "Ed25519"}
OTHER_FAMILY = {"RS256": "ES256", "ES256": "EdDSA", "EdDSA": "RS256"}

# Deliberate differences: mutation id (every alg) or "ALG/mutation id" → (mesh-oauth's verdict,
# why). Mirrored in docs/security.md. jwt_authn runs with its defaults (no `require_expiration`).
DELIBERATE: dict[str, tuple[str, str]] = {
    "kid-empty": ("deny", "RFC 7515 §4.1.4: an empty kid is a key id that names no key; jwt_authn "
                          "treats it as absent and tries every key"),
    "typ-number": ("deny", "RFC 7515 §4.1.9: typ is a string; jwt_authn ignores typ"),
    "header-crit-unknown": ("deny", "RFC 7515 §4.1.11: a recipient MUST reject a JWS whose crit lists "
                                    "an extension it does not understand; jwt_authn ignores crit"),
    "header-b64-false": ("deny", "RFC 7797 §3, §6 with RFC 7515 §4.1.11: b64=false changes the signing "
                                 "input; unsupported, so refused; jwt_authn ignores it"),
    "exp-missing": ("deny", "RFC 9068 §2.2: exp is REQUIRED in a JWT access token (jwt_authn: only "
                            "with require_expiration: true)"),
    "iat-future": ("deny", "RFC 7519 §4.1.6 with the contract: a token issued after now + skew is not "
                           "valid yet; jwt_authn checks only exp and nbf"),
    "ES256/sig-extended": ("deny", "RFC 7518 §3.4: an ES256 signature is exactly 64 bytes (R || S); "
                                   "jwt_authn accepts a trailing byte, a second spelling of one signature"),
    "sig-base64-padded": ("deny", "RFC 7515 §2, §7.1: base64url without padding; jwt_authn accepts '='"),
    "sig-base64-non-canonical-last-char": ("deny", "RFC 4648 §3.5, RFC 7515 §2: spare bits must be zero, "
                                                   "else one token has several spellings; jwt_authn ignores them"),
    "scheme-lower-case": ("allow", "RFC 9110 §11.1, RFC 6750 §2.1: the auth scheme is case-insensitive; "
                                   "jwt_authn matches 'Bearer ' exactly and sees no token"),
    "scheme-upper-case": ("allow", "as scheme-lower-case"),
}

Verdict = str  # "allow" | "deny"


class TokenLab:
    """Valid tokens for RS256/ES256/EdDSA and their systematic mutations, made with cryptography."""

    def __init__(self) -> None:
        self.now = int(time.time())
        self.keys = {alg: generate_key(alg, f"diff-{alg.lower()}") for alg in ALGS}
        self.attacker = {alg: generate_key(alg, f"attacker-{alg.lower()}") for alg in ALGS}

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk for key in self.keys.values()]}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": self.now - 10,
                                "exp": self.now + 600}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not _DROP}

    def header(self, key_alg: str, **overrides: Any) -> dict[str, Any]:
        """The header for the key of `key_alg`; `overrides` may change any member, `alg` too."""
        base: dict[str, Any] = {"alg": key_alg, "kid": self.keys[key_alg].kid, "typ": "JWT"}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not _DROP}

    def sign(self, key: SigningKey, header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes) -> str:
        h = header if isinstance(header, bytes) else json.dumps(header).encode()
        p = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        signing_input = f"{b64url(h)}.{b64url(p)}"
        return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"

    def token(self, alg: str, header: dict[str, Any] | bytes | None = None,
              payload: dict[str, Any] | bytes | None = None) -> str:
        return self.sign(self.keys[alg], self.header(alg) if header is None else header,
                         self.claims() if payload is None else payload)


_DROP = object()


def _resign(header_change: Callable[[TokenLab, str], dict[str, Any]]) -> Callable[[TokenLab, str], str]:
    return lambda lab, alg: lab.token(alg, header=header_change(lab, alg))


def _claims(**overrides: Any) -> Callable[[TokenLab, str], str]:
    return lambda lab, alg: lab.token(alg, payload=lab.claims(**overrides))


def _relative(**offsets: float) -> Callable[[TokenLab, str], str]:
    return lambda lab, alg: lab.token(alg, payload=lab.claims(**{n: lab.now + o for n, o in offsets.items()}))


def _keep_signature(header_change: Callable[[TokenLab, str], dict[str, Any]]) -> Callable[[TokenLab, str], str]:
    def build(lab: TokenLab, alg: str) -> str:
        _, payload, signature = lab.token(alg).split(".")
        return f"{b64url(json.dumps(header_change(lab, alg)).encode())}.{payload}.{signature}"
    return build


def _signature(change: Callable[[bytes], bytes]) -> Callable[[TokenLab, str], str]:
    def build(lab: TokenLab, alg: str) -> str:
        head, payload, signature = lab.token(alg).split(".")
        return f"{head}.{payload}.{b64url(change(b64url_decode(signature)))}"
    return build


def _flip(index: Callable[[int], int]) -> Callable[[bytes], bytes]:
    def change(raw: bytes) -> bytes:
        data = bytearray(raw)
        data[index(len(data))] ^= 0x01
        return bytes(data)
    return change


def _hs256_with_public_key(lab: TokenLab, alg: str) -> str:
    public = lab.keys[alg].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return lab.sign(SigningKey("HS256", "x", public), lab.header(alg, alg="HS256"), lab.claims())


def _attacker_jwk(lab: TokenLab, alg: str) -> str:
    attacker = lab.attacker[alg]
    jwk = attacker.public_jwk
    return lab.sign(attacker, lab.header(alg, kid=_DROP, jwk=jwk), lab.claims())


def _segment_text(change: Callable[[str], str], segment: int = 2) -> Callable[[TokenLab, str], str]:
    def build(lab: TokenLab, alg: str) -> str:
        for i in range(200):
            parts = lab.token(alg, payload=lab.claims(jti=f"j{i}")).split(".")
            changed = change(parts[segment])
            if changed != parts[segment]:
                parts[segment] = changed
                return ".".join(parts)
        raise AssertionError("mutation never applied")
    return build


def _pad(text: str) -> str:
    return text + "=" * (-len(text) % 4)


def _non_canonical_last(text: str) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare_bits = (6 * len(text)) % 8  # bits of the last character that encode nothing
    if not spare_bits:
        return text
    return text[:-1] + alphabet[alphabet.index(text[-1]) | 1]


def _duplicate_payload(name: str, first: Any) -> Callable[[TokenLab, str], str]:
    def build(lab: TokenLab, alg: str) -> str:
        payload = b"{" + f"{json.dumps(name)}:{json.dumps(first)},".encode() + json.dumps(lab.claims()).encode()[1:]
        return lab.token(alg, payload=payload)
    return build


def _duplicate_header(lab: TokenLab, alg: str) -> str:
    header = f'{{"alg":"none","alg":{json.dumps(alg)},"kid":{json.dumps(lab.keys[alg].kid)}}}'.encode()
    return lab.token(alg, header=header)


# mutation id → builder(lab, alg) → token. `scheme-*` ids change the Authorization scheme instead.
MUTATIONS: dict[str, Callable[[TokenLab, str], str]] = {
    "valid": lambda lab, alg: lab.token(alg),
    # header: alg
    "alg-none-unsigned": lambda lab, alg: _keep_signature(lambda lab, alg: lab.header(alg, alg="none"))(
        lab, alg).rsplit(".", 1)[0] + ".",
    "alg-none-keeping-signature": _keep_signature(lambda lab, alg: lab.header(alg, alg="none")),
    "alg-None-keeping-signature": _keep_signature(lambda lab, alg: lab.header(alg, alg="None")),
    "alg-hs256-keyed-with-public-key": _hs256_with_public_key,
    "alg-other-family": _keep_signature(lambda lab, alg: lab.header(alg, alg=OTHER_FAMILY[alg])),
    "alg-same-family-other": _keep_signature(lambda lab, alg: lab.header(alg, alg=SAME_FAMILY_OTHER[alg])),
    "alg-lower-case": _resign(lambda lab, alg: lab.header(alg, alg=alg.lower())),
    "alg-missing": _resign(lambda lab, alg: lab.header(alg, alg=_DROP)),
    "alg-number": _resign(lambda lab, alg: lab.header(alg, alg=256)),
    # header: kid
    "kid-missing": _resign(lambda lab, alg: lab.header(alg, kid=_DROP)),
    "kid-unknown": _resign(lambda lab, alg: lab.header(alg, kid="no-such-key")),
    "kid-empty": _resign(lambda lab, alg: lab.header(alg, kid="")),
    "kid-number": _resign(lambda lab, alg: lab.header(alg, kid=7)),
    "kid-of-another-key": _resign(lambda lab, alg: lab.header(alg, kid=lab.keys[OTHER_FAMILY[alg]].kid)),
    # header: typ and extra members
    "typ-missing": _resign(lambda lab, alg: lab.header(alg, typ=_DROP)),
    "typ-at+jwt": _resign(lambda lab, alg: lab.header(alg, typ="at+jwt")),
    "typ-lower-case": _resign(lambda lab, alg: lab.header(alg, typ="jwt")),
    "typ-number": _resign(lambda lab, alg: lab.header(alg, typ=1)),
    "header-extra-member": _resign(lambda lab, alg: lab.header(alg, foo="bar")),
    "header-jku": _resign(lambda lab, alg: lab.header(alg, jku="https://attacker.test/jwks.json")),
    "header-x5u": _resign(lambda lab, alg: lab.header(alg, x5u="https://attacker.test/cert.pem")),
    "header-embedded-attacker-jwk": _attacker_jwk,
    "header-crit-unknown": _resign(lambda lab, alg: lab.header(alg, crit=["urn:x"], **{"urn:x": 1})),
    "header-b64-false": _resign(lambda lab, alg: lab.header(alg, b64=False, crit=["b64"])),
    "header-duplicate-alg": _duplicate_header,
    # claims: iss
    "iss-missing": _claims(iss=_DROP),
    "iss-other": _claims(iss="https://other.idp.test"),
    "iss-trailing-slash": _claims(iss=ISSUER + "/"),
    "iss-number": _claims(iss=1),
    # claims: aud
    "aud-missing": _claims(aud=_DROP),
    "aud-other": _claims(aud="other"),
    "aud-list-with": _claims(aud=["other", AUDIENCE]),
    "aud-list-without": _claims(aud=["other"]),
    "aud-empty-list": _claims(aud=[]),
    "aud-number": _claims(aud=1),
    "aud-list-with-non-string": _claims(aud=[1, AUDIENCE]),
    # claims: exp, nbf, iat
    "exp-missing": _claims(exp=_DROP),
    "exp-past": _relative(exp=-3600, iat=-7200),
    "exp-past-within-skew": _relative(exp=-30),
    "exp-string": _claims(exp=str(int(time.time()) + 600)),
    "exp-fraction": _relative(exp=600.5),
    "exp-negative": _claims(exp=-1),
    "exp-1e300": _claims(exp=1e300),
    "exp-boolean": _claims(exp=True),
    "exp-null": _claims(exp=None),
    "nbf-future": _relative(nbf=600),
    "nbf-future-within-skew": _relative(nbf=30),
    "nbf-past": _relative(nbf=-60),
    "nbf-string": _claims(nbf="0"),
    "iat-future": _relative(iat=600),
    "iat-future-within-skew": _relative(iat=30),
    "iat-string": _claims(iat="0"),
    "iat-missing": _claims(iat=_DROP),
    # claims: sub, duplicates
    "sub-number": _claims(sub=1),
    "sub-missing": _claims(sub=_DROP),
    "sub-object": _claims(sub={"id": 1}),
    "payload-duplicate-sub": _duplicate_payload("sub", "admin"),
    "payload-duplicate-exp": _duplicate_payload("exp", 1),
    # signature byte classes
    "sig-first-byte-flipped": _signature(_flip(lambda n: 0)),
    "sig-middle-byte-flipped": _signature(_flip(lambda n: n // 2)),
    "sig-last-byte-flipped": _signature(_flip(lambda n: n - 1)),
    "sig-truncated": _signature(lambda raw: raw[:-1]),
    "sig-extended": _signature(lambda raw: raw + b"\x00"),
    "sig-empty": _signature(lambda raw: b""),
    "sig-all-zero": _signature(lambda raw: bytes(len(raw))),
    # encoding
    "sig-base64-padded": _segment_text(_pad),
    "sig-base64-non-canonical-last-char": _segment_text(_non_canonical_last),
    "sig-standard-alphabet": _segment_text(lambda s: s.replace("-", "+").replace("_", "/")),
    "payload-base64-padded": _segment_text(_pad, segment=1),
    # extraction
    "scheme-lower-case": lambda lab, alg: lab.token(alg),
    "scheme-upper-case": lambda lab, alg: lab.token(alg),
}
SCHEMES = {"scheme-lower-case": "bearer ", "scheme-upper-case": "BEARER "}


def jwt_authn_filter(jwks_uri: str, cluster: str) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {
                "diff": {
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "remote_jwks": {
                        "http_uri": {"uri": jwks_uri, "cluster": cluster, "timeout": "5s"},
                        "cache_duration": "600s",
                        "async_fetch": {},
                    },
                    "forward": False,
                    "clock_skew_seconds": SKEW,
                }
            },
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "diff"}}],
        },
    }


@pytest.fixture(scope="module")
def lab() -> TokenLab:
    return TokenLab()


@pytest.fixture(scope="module")
def envoys(module_envoys, module_idps, envoy_bin, echo, lab, tmp_path_factory) -> tuple[Envoy, Envoy]:
    idp = module_idps()
    idp.set_jwks(lab.jwks())
    mesh = module_envoys.start({"providers": [{
        "issuer": ISSUER, "audiences": [AUDIENCE], "jwksUri": idp.jwks_uri, "clockSkewSeconds": SKEW}]},
        idps=[idp])
    config = bootstrap([jwt_authn_filter(idp.jwks_uri, idp.cluster)], {"upstream": echo.port, idp.cluster: idp.port})
    native = Envoy(envoy_bin, tmp_path_factory.mktemp("jwt_authn"), config).start()
    yield mesh, native
    native.stop()


def verdict(envoy: Envoy, token: str, scheme: str) -> Verdict:
    resp = envoy.request("/diff", headers={"Authorization": f"{scheme}{token}"})
    assert resp.status in (200, 400, 401, 403), resp
    return "allow" if resp.status == 200 else "deny"


def test_differential_against_jwt_authn(envoys, lab):
    mesh, native = envoys
    results: dict[str, dict[str, tuple[Verdict, Verdict]]] = {}
    for mutation, build in MUTATIONS.items():
        scheme = SCHEMES.get(mutation, "Bearer ")
        for alg in ALGS:
            token = build(lab, alg)
            results.setdefault(mutation, {})[alg] = (verdict(mesh, token, scheme), verdict(native, token, scheme))

    for alg in ALGS:
        assert results["valid"][alg] == ("allow", "allow"), f"a valid {alg} token must pass both: {results['valid']}"
    problems = []
    for mutation, per_alg in results.items():
        for alg, (ours, theirs) in per_alg.items():
            listed = DELIBERATE.get(f"{alg}/{mutation}") or DELIBERATE.get(mutation)
            if listed is None and ours != theirs:
                problems.append(f"{alg}/{mutation}: unexplained disagreement: mesh-oauth {ours}s, jwt_authn {theirs}s")
            elif listed is not None and (ours == theirs or ours != listed[0]):
                problems.append(f"{alg}/{mutation}: listed as mesh-oauth {listed[0]} vs jwt_authn, "
                                f"but mesh-oauth {ours}s and jwt_authn {theirs}s")
    table = "\n".join(f"  {m:40} " + " ".join(f"{a}={p[0][0]}/{p[1][0]}" for a, p in r.items())
                      for m, r in results.items())
    assert not problems, "\n".join(problems) + "\n(mesh-oauth/jwt_authn per alg):\n" + table
    unknown = {key for key in DELIBERATE if key.split("/")[-1] not in MUTATIONS}
    assert not unknown, f"DELIBERATE names mutations that do not exist: {unknown}"
