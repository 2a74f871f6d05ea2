"""The attack catalogue: hostile tokens and requests, each with the answer mesh-oauth must give.

Every token is made here with PyJWT's key serialisers and `cryptography` directly (hand-built
JSON where the defect is in the encoding), never by the project. A case is data: an id, a group,
how to build the request from an `AttackKit`, the expected status, and the keyword the
`error_description` must contain (400/401) — `None` with 401 means "no token found" (a bare
`Bearer realm` challenge, no error code)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from tokens import SigningKey, b64url, b64url_decode, generate_key

AUDIENCE = "api"
REALM = "attack"
ISS_MAIN = "https://main.idp.test"
ISS_LOCATIONS = "https://locations.idp.test"
ISS_INLINE = "https://inline.idp.test"
ISS_ONLY_WEAK = "https://only-weak-key.idp.test"
LOCATION_PARAM = "access_token"
UNLISTED_PARAM = "token"
UNLISTED_COOKIE = "jwt"

# Group order of the curves (SEC 2): a scalar r or s equal to it is out of range.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
# Ed25519 group order L (RFC 8032 §5.1): S must be below it.
ED25519_ORDER = 2**252 + 27742317777372353535851937790883648493

# Descriptions of the plugin's refusals (src/token.rs, verify.rs, claims.rs, authorize.rs).
NONE = "algorithm none"
UNSUPPORTED_ALG = "algorithm is not supported"
ALG_NOT_ALLOWED = "algorithm is not allowed"
NOT_FIT = "does not fit its signing algorithm"
NO_KEY_FITS = "no key fits"
UNKNOWN_KID = "key id is unknown"
BAD_SIGNATURE = "signature is invalid"
MALFORMED_SIGNATURE = "signature is malformed"
MALFORMED_HEADER = "header is malformed"
MALFORMED_PAYLOAD = "payload is malformed"
NOT_COMPACT = "not a JWS in compact form"
ENCRYPTED = "encrypted tokens"
CRITICAL = "critical extensions"
TOO_LARGE = "too large"
EXP_TYPE = "expiry (exp) is not a number"
NBF_TYPE = "not-before (nbf) is not a number"
IAT_TYPE = "issue time (iat) is not a number"
NO_EXP = "has no expiry"
EXPIRED = "is expired"
NBF_FUTURE = "not yet valid (nbf)"
IAT_FUTURE = "iat in the future"
AUDIENCE_REFUSED = "audience is not accepted"
SUB_TYPE = "subject (sub) is not a string"
ISSUER_UNTRUSTED = "issuer is not trusted"
NO_ISSUER = "has no issuer"
WRONG_LOCATION = "location its issuer is not configured for"
MORE_THAN_ONE = "more than one token"

DROP = object()  # a claim override that removes the claim


@dataclass
class Req:
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]] | None = None


def bearer(token: str, scheme: str = "Bearer ") -> Req:
    return Req([("Authorization", f"{scheme}{token}")])


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    build: Callable[["AttackKit"], Req]
    status: int
    # 400/401: a phrase the error_description must contain; 401 with None: no token was found.
    reason: str | None = None
    note: str = ""


def compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def public_jwk(key: SigningKey, **extra: Any) -> dict[str, Any]:
    """The key's public JWK without `alg` (many IdPs omit it; the key type alone must then
    keep algorithms apart)."""
    jwk = {k: v for k, v in key.public_jwk.items() if k != "alg"}
    return {**jwk, **extra}


def pkcs1_v15_sha256_encoding(message: bytes, modulus_bytes: int) -> bytes:
    """EMSA-PKCS1-v1_5 (RFC 8017 §9.2) of SHA-256(message): with e = 1 this *is* the signature."""
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (modulus_bytes - len(digest_info) - 3) + b"\x00" + digest_info


class AttackKit:
    """Keys (the provider's and an attacker's) and token builders; `now` fixed at creation."""

    def __init__(self, attacker_url: str) -> None:
        self.now = int(time.time())
        self.attacker_url = attacker_url
        self.rsa = generate_key("RS256", "main-rsa")
        self.p256 = generate_key("ES256", "main-p256")
        self.p384 = generate_key("ES384", "main-p384")
        self.ed = generate_key("EdDSA", "main-ed25519")
        self.attacker_rsa = generate_key("RS256", "attacker-rsa")
        self.attacker_ed = generate_key("EdDSA", "attacker-ed25519")
        self.rsa_public = self.rsa.private.public_key()
        self.key_sets = KeyProviders()

    # ---------------------------------------------------------------- JWKS documents

    def main_jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k) for k in (self.rsa, self.p256, self.p384, self.ed)]}

    # ---------------------------------------------------------------- token builders

    def claims(self, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"iss": ISS_MAIN, "aud": AUDIENCE, "sub": "user-1", "iat": self.now,
                                "exp": self.now + 600}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not DROP}

    def header(self, key: SigningKey, **overrides: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not DROP}

    def jws(self, key: SigningKey, header: dict[str, Any] | bytes | None = None,
            payload: dict[str, Any] | bytes | None = None, signature: bytes | None = None) -> str:
        """`key` signs (its own scheme, whatever the header says) unless `signature` is given."""
        header_bytes = header if isinstance(header, bytes) else compact(header if header is not None else self.header(key))
        payload_bytes = payload if isinstance(payload, bytes) else compact(payload if payload is not None else self.claims())
        signing_input = f"{b64url(header_bytes)}.{b64url(payload_bytes)}"
        if signature is None:
            signature = key.sign(signing_input.encode())
        return f"{signing_input}.{b64url(signature)}"

    def good(self, key: SigningKey | None = None, **claims: Any) -> str:
        key = key or self.rsa
        return self.jws(key, self.header(key), self.claims(**claims))

    def payload_with_literal(self, name: str, literal: str) -> bytes:
        """Valid claims with `name` set to a raw JSON literal (e.g. `1e400`), as bytes."""
        members = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in self.claims().items() if k != name]
        members.append(f"{json.dumps(name)}:{literal}")
        return ("{" + ",".join(members) + "}").encode()

    def es256_parts(self) -> tuple[str, int, int]:
        """(signing input, r, s) of a valid ES256 token."""
        head, payload, signature = self.good(self.p256).split(".")
        raw = b64url_decode(signature)
        return f"{head}.{payload}", int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")

    def with_signature(self, token: str, signature: bytes) -> str:
        head, payload, _ = token.split(".")
        return f"{head}.{payload}.{b64url(signature)}"

    def hs256_with_secret(self, secret: bytes, issuer: str, kid: Any = DROP) -> str:
        """HS256 over a valid payload, keyed with `secret`: the classic RS→HS confusion."""
        key = SigningKey("HS256", "unused", secret)
        return self.jws(key, self.header(key, kid=kid), self.claims(iss=issuer))

    def attacker_cert_der(self) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "main.idp.test")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.attacker_rsa.private.public_key()).serial_number(1)
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .sign(self.attacker_rsa.private, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.DER)


class KeyProviders:
    """One provider per key defect, each with its own JWKS: the bad key beside a good one."""

    def __init__(self) -> None:
        self.good = generate_key("RS256", "good-rsa")
        weak = SigningKey("RS256", "weak-1024", rsa.generate_private_key(public_exponent=65537, key_size=1024))
        self.weak = weak
        e1_modulus = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_numbers().n
        self.e1_modulus = e1_modulus
        self.enc = generate_key("RS256", "enc-rsa")
        self.ops = generate_key("RS256", "ops-encrypt-rsa")
        self.oct_secret = os.urandom(64)
        self.secp256k1 = SigningKey("ES256", "k1", ec.generate_private_key(ec.SECP256K1()))
        self.x25519_public = x25519.X25519PrivateKey.generate().public_key()
        self.ed_for_x25519 = SigningKey("EdDSA", "x25519", ed25519.Ed25519PrivateKey.generate())
        self.dup_wrong = generate_key("RS256", "dup")
        self.dup_right = generate_key("RS256", "dup")
        self.leaked = generate_key("RS256", "leaked-private")

    def documents(self) -> dict[str, dict[str, Any]]:
        """Key-defect name → JWKS. The provider for `name` has issuer `issuer(name)`."""
        good = public_jwk(self.good)
        k1_numbers = self.secp256k1.private.public_key().public_numbers()
        x25519_raw = self.x25519_public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        leaked = {**public_jwk(self.leaked), **{k: v for k, v in RSAAlgorithm.to_jwk(self.leaked.private, as_dict=True).items()
                                                 if k in ("d", "p", "q", "dp", "dq", "qi")}}
        bad = {
            "rsa-1024": public_jwk(self.weak),
            "rsa-e-1": {"kty": "RSA", "kid": "e-1", "use": "sig",
                        "n": b64url(self.e1_modulus.to_bytes(256, "big")), "e": b64url(b"\x01")},
            "use-enc": public_jwk(self.enc, use="enc"),
            "key-ops-encrypt": {**{k: v for k, v in public_jwk(self.ops).items() if k != "use"},
                                "key_ops": ["encrypt", "wrapKey"]},
            "oct-fetched": {"kty": "oct", "kid": "oct", "k": b64url(self.oct_secret)},
            "okp-x25519": {"kty": "OKP", "crv": "X25519", "kid": "x25519", "x": b64url(x25519_raw)},
            "ec-secp256k1": {"kty": "EC", "crv": "secp256k1", "kid": "k1",
                             "x": b64url(k1_numbers.x.to_bytes(32, "big")), "y": b64url(k1_numbers.y.to_bytes(32, "big"))},
            "private-members": leaked,
        }
        docs = {name: {"keys": [jwk, good]} for name, jwk in bad.items()}
        docs["duplicate-kid"] = {"keys": [public_jwk(self.dup_wrong), public_jwk(self.dup_right)]}
        return docs

    @staticmethod
    def issuer(name: str) -> str:
        return f"https://{name}.keys.idp.test"


# --------------------------------------------------------------------------- cases


def _header_cases() -> list[Case]:
    g = "header"
    cases: list[Case] = []
    for spelling in ("none", "None", "NONE", "nOnE"):
        cases.append(Case(f"alg-{spelling}-unsigned", g, lambda k, s=spelling: bearer(
            k.jws(k.rsa, k.header(k.rsa, alg=s), signature=b"")), 401, NONE))
        cases.append(Case(f"alg-{spelling}-with-signature", g, lambda k, s=spelling: bearer(
            k.jws(k.rsa, k.header(k.rsa, alg=s))), 401, NONE))

    def pem(k: AttackKit) -> bytes:
        return k.rsa_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def der(k: AttackKit) -> bytes:
        return k.rsa_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwk_n(k: AttackKit) -> bytes:
        return RSAAlgorithm.to_jwk(k.rsa_public, as_dict=True)["n"].encode()

    # Fetched keys: HMAC is not even among the provider's algorithms. Inline keys (HMAC allowed
    # by default): the RSA key must still not serve as an HMAC secret.
    for form, secret in (("pem", pem), ("der", der), ("jwk-n", jwk_n)):
        for where, iss, with_kid, without_kid in (("fetched", ISS_MAIN, ALG_NOT_ALLOWED, ALG_NOT_ALLOWED),
                                                  ("inline", ISS_INLINE, NOT_FIT, NO_KEY_FITS)):
            cases.append(Case(f"hs256-keyed-with-rsa-public-{form}-kid-of-rsa-key-{where}-keys", g,
                              lambda k, f=secret, i=iss: bearer(k.hs256_with_secret(f(k), i, kid="main-rsa")),
                              401, with_kid))
            cases.append(Case(f"hs256-keyed-with-rsa-public-{form}-no-kid-{where}-keys", g,
                              lambda k, f=secret, i=iss: bearer(k.hs256_with_secret(f(k), i)), 401, without_kid))
    cases += [
        Case("hs256-with-embedded-oct-jwk", g, lambda k: bearer(k.jws(
            SigningKey("HS256", "x", b"s" * 32),
            k.header(k.rsa, alg="HS256", kid=DROP, jwk={"kty": "oct", "k": b64url(b"s" * 32)}),
            k.claims(iss=ISS_INLINE))), 401, NO_KEY_FITS),
        Case("rs256-header-ec-key-kid", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, kid="main-p256"))), 401, NOT_FIT),
        Case("es256-header-rsa-key-kid", g, lambda k: bearer(k.jws(k.p256, k.header(k.p256, kid="main-rsa"))), 401, NOT_FIT),
        Case("eddsa-header-rsa-key-kid", g, lambda k: bearer(k.jws(k.ed, k.header(k.ed, kid="main-rsa"))), 401, NOT_FIT),
        Case("es256-header-p384-key", g, lambda k: bearer(k.jws(k.p384, k.header(k.p384, alg="ES256"))), 401, NOT_FIT),
        Case("es384-header-p256-key", g, lambda k: bearer(k.jws(k.p256, k.header(k.p256, alg="ES384"))), 401, NOT_FIT),
        Case("alg-rs256-changed-to-rs384-after-signing", g, lambda k: bearer(_realg(k, "RS384")), 401, BAD_SIGNATURE),
        Case("alg-rs256-changed-to-ps256-after-signing", g, lambda k: bearer(_realg(k, "PS256")), 401, BAD_SIGNATURE),
        Case("alg-ps256-header-over-pkcs1-signature", g, lambda k: bearer(
            k.jws(k.rsa, k.header(k.rsa, alg="PS256"))), 401, BAD_SIGNATURE),
        Case("alg-lower-case-rs256", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, alg="rs256"))), 401, UNSUPPORTED_ALG),
        Case("alg-es256k", g, lambda k: bearer(k.jws(k.p256, k.header(k.p256, alg="ES256K"))), 401, UNSUPPORTED_ALG),
        Case("alg-missing", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, alg=DROP))), 401, MALFORMED_HEADER),
        Case("alg-as-list", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, alg=["RS256"]))), 401, MALFORMED_HEADER),
        Case("crit-unknown-extension", g, lambda k: bearer(k.jws(k.rsa, k.header(
            k.rsa, crit=["urn:example:policy"], **{"urn:example:policy": "x"}))), 401, CRITICAL),
        Case("b64-false-with-crit", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, b64=False, crit=["b64"]))), 401, CRITICAL),
        Case("b64-false-without-crit", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, b64=False))), 401, CRITICAL),
        Case("enc-member-jwe-header", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, enc="A256GCM"))), 401, ENCRYPTED),
        Case("embedded-jwk-attacker-key-no-kid", g, lambda k: bearer(k.jws(k.attacker_rsa, k.header(
            k.attacker_rsa, kid=DROP, jwk=public_jwk(k.attacker_rsa)))), 401, BAD_SIGNATURE),
        Case("embedded-jwk-attacker-key-with-kid-of-real-key", g, lambda k: bearer(k.jws(k.attacker_rsa, k.header(
            k.attacker_rsa, kid="main-rsa", jwk=public_jwk(k.attacker_rsa, kid="main-rsa")))), 401, BAD_SIGNATURE),
        Case("embedded-jwk-eddsa-attacker-key", g, lambda k: bearer(k.jws(k.attacker_ed, k.header(
            k.attacker_ed, kid=DROP, jwk=public_jwk(k.attacker_ed)))), 401, BAD_SIGNATURE),
        Case("jku-attacker-url-attacker-kid", g, lambda k: bearer(k.jws(k.attacker_rsa, k.header(
            k.attacker_rsa, jku=k.attacker_url + "/jwks.json"))), 401, UNKNOWN_KID),
        Case("jku-attacker-url-kid-of-real-key", g, lambda k: bearer(k.jws(k.attacker_rsa, k.header(
            k.attacker_rsa, kid="main-rsa", jku=k.attacker_url + "/jwks.json"))), 401, BAD_SIGNATURE),
        Case("x5u-attacker-url", g, lambda k: bearer(k.jws(k.attacker_rsa, k.header(
            k.attacker_rsa, kid=DROP, x5u=k.attacker_url + "/cert.pem"))), 401, BAD_SIGNATURE),
        Case("x5c-attacker-self-signed-cert", g, lambda k: bearer(k.jws(k.attacker_rsa, k.header(
            k.attacker_rsa, kid=DROP, x5c=[base64.b64encode(k.attacker_cert_der()).decode()]))),
            401, BAD_SIGNATURE),
    ]
    for name, kid in (("path-traversal", "../../../../etc/passwd"), ("sql-injection", "' OR 1=1 --"),
                      ("very-long", "k" * 8000), ("nul-byte", "main-rsa\u0000"), ("newline", "main-rsa\nx"),
                      ("header-injection", "a\r\nX-Injected: 1"), ("empty", "")):
        cases.append(Case(f"kid-{name}", g, lambda k, kid=kid: bearer(k.jws(k.rsa, k.header(k.rsa, kid=kid))),
                          401, UNKNOWN_KID))
    cases.append(Case("kid-as-number", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, kid=1))), 401, MALFORMED_HEADER))
    return cases


def _realg(k: AttackKit, new_alg: str) -> str:
    """A valid RS256 token whose header `alg` is then rewritten, signature kept."""
    _, payload, signature = k.good().split(".")
    return f"{b64url(compact(k.header(k.rsa, alg=new_alg)))}.{payload}.{signature}"


def _signature_cases() -> list[Case]:
    g = "signature"

    def es256(k: AttackKit, r: int | None = None, s: int | None = None, raw: bytes | None = None) -> Req:
        signing_input, r0, s0 = k.es256_parts()
        if raw is None:
            raw = (r0 if r is None else r).to_bytes(32, "big") + (s0 if s is None else s).to_bytes(32, "big")
        return bearer(f"{signing_input}.{b64url(raw)}")

    def es256_der(k: AttackKit) -> Req:
        head, payload, _ = k.good(k.p256).split(".")
        der = k.p256.private.sign(f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        return bearer(f"{head}.{payload}.{b64url(der)}")

    def es256_high_s(k: AttackKit) -> Req:
        signing_input, r, s = k.es256_parts()
        return es256(k, raw=r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big"))

    def altered(key_attr: str, change: Callable[[bytes], bytes]) -> Callable[[AttackKit], Req]:
        def build(k: AttackKit) -> Req:
            token = k.good(getattr(k, key_attr))
            return bearer(k.with_signature(token, change(b64url_decode(token.split(".")[2]))))
        return build

    def ed_s_plus_order(k: AttackKit) -> Req:
        token = k.good(k.ed)
        raw = b64url_decode(token.split(".")[2])
        s = int.from_bytes(raw[32:], "little") + ED25519_ORDER
        return bearer(k.with_signature(token, raw[:32] + s.to_bytes(32, "little")))

    def rsa_modulus(k: AttackKit) -> Req:
        return bearer(k.with_signature(k.good(), k.rsa_public.public_numbers().n.to_bytes(256, "big")))

    def borrowed(k: AttackKit) -> Req:
        other = k.good(sub="someone-else")
        return bearer(k.with_signature(k.good(sub="admin"), b64url_decode(other.split(".")[2])))

    return [
        Case("es256-psychic-r-s-zero", g, lambda k: es256(k, raw=bytes(64)), 401, BAD_SIGNATURE,
             "CVE-2022-21449: r = s = 0 verifies in a broken ECDSA check"),
        Case("es384-psychic-r-s-zero", g, lambda k: bearer(k.with_signature(k.good(k.p384), bytes(96))), 401, BAD_SIGNATURE),
        Case("es256-r-equals-order", g, lambda k: es256(k, r=P256_ORDER), 401, BAD_SIGNATURE),
        Case("es256-s-equals-order", g, lambda k: es256(k, s=P256_ORDER), 401, BAD_SIGNATURE),
        Case("es256-r-s-equal-order", g, lambda k: es256(k, r=P256_ORDER, s=P256_ORDER), 401, BAD_SIGNATURE),
        Case("es256-der-encoded", g, es256_der, 401, BAD_SIGNATURE),
        Case("es256-truncated", g, altered("p256", lambda b: b[:-1]), 401, BAD_SIGNATURE),
        Case("es256-extra-byte", g, altered("p256", lambda b: b + b"\x00"), 401, BAD_SIGNATURE),
        Case("es256-only-r", g, altered("p256", lambda b: b[:32]), 401, BAD_SIGNATURE),
        Case("es256-empty", g, altered("p256", lambda b: b""), 401, MALFORMED_SIGNATURE),
        Case("es256-high-s", g, es256_high_s, 200, None,
             "(r, n - s) is as valid as (r, s): ECDSA is malleable, JOSE does not require low-S, ring accepts it"),
        Case("rs256-truncated", g, altered("rsa", lambda b: b[:-1]), 401, BAD_SIGNATURE),
        Case("rs256-extra-byte", g, altered("rsa", lambda b: b + b"\x00"), 401, BAD_SIGNATURE),
        Case("rs256-leading-zero-byte", g, altered("rsa", lambda b: b"\x00" + b), 401, BAD_SIGNATURE),
        Case("rs256-all-zero", g, altered("rsa", lambda b: bytes(len(b))), 401, BAD_SIGNATURE),
        Case("rs256-signature-equals-modulus", g, rsa_modulus, 401, BAD_SIGNATURE),
        Case("rs256-signature-of-another-payload", g, borrowed, 401, BAD_SIGNATURE),
        Case("rs256-empty", g, altered("rsa", lambda b: b""), 401, MALFORMED_SIGNATURE),
        Case("eddsa-all-zero", g, altered("ed", lambda b: bytes(64)), 401, BAD_SIGNATURE),
        Case("eddsa-s-plus-group-order", g, ed_s_plus_order, 401, BAD_SIGNATURE,
             "RFC 8032 §5.1.7: S must be below L, or one signature has many encodings"),
        Case("eddsa-truncated", g, altered("ed", lambda b: b[:-1]), 401, BAD_SIGNATURE),
        Case("eddsa-extra-byte", g, altered("ed", lambda b: b + b"\x00"), 401, BAD_SIGNATURE),
    ]


def _standard_alphabet(k: AttackKit) -> Req:
    """A valid token whose base64url `-`/`_` are written as standard base64 `+`/`/`."""
    for i in range(200):
        head, payload, signature = k.good(jti=f"n{i}").split(".")
        if "-" in signature or "_" in signature:
            return bearer(f"{head}.{payload}.{signature.replace('-', '+').replace('_', '/')}")
    raise AssertionError("no signature with - or _ in 200 tries")


def _padded(k: AttackKit, segment: int) -> Req:
    for i in range(8):
        parts = k.good(jti="p" * i).split(".")
        if len(parts[segment]) % 4:
            parts[segment] += "=" * (-len(parts[segment]) % 4)
            return bearer(".".join(parts))
    raise AssertionError("no segment needing padding")


def _non_canonical_last_char(k: AttackKit) -> Req:
    """RS256 signature (256 bytes: 342 chars, 4 spare bits): set a spare bit in the last char."""
    head, payload, signature = k.good().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    return bearer(f"{head}.{payload}.{signature[:-1]}{alphabet[last | 1]}")


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _encoding_cases() -> list[Case]:
    g = "encoding"

    def segments(k: AttackKit, count: int) -> Req:
        parts = k.good().split(".")
        return bearer(".".join((parts * 2)[:count]))

    def insert(segment: int, text: str) -> Callable[[AttackKit], Req]:
        def build(k: AttackKit) -> Req:
            parts = k.good().split(".")
            middle = len(parts[segment]) // 2
            parts[segment] = parts[segment][:middle] + text + parts[segment][middle:]
            return bearer(".".join(parts))
        return build

    def raw_header(data: bytes) -> Callable[[AttackKit], Req]:
        return lambda k: bearer(k.jws(k.rsa, data))

    def raw_payload(build_bytes: Callable[[AttackKit], bytes]) -> Callable[[AttackKit], Req]:
        return lambda k: bearer(k.jws(k.rsa, None, build_bytes(k)))

    def dup_payload(k: AttackKit, name: str, first: Any) -> bytes:
        """Valid claims preceded by another value for `name`: a last-wins parser sees the valid one."""
        return b"{" + f"{json.dumps(name)}:{json.dumps(first)},".encode() + compact(k.claims())[1:]

    # depth 1 is the payload object itself: a list nested n deep inside it reaches 1 + n.
    cases = [
        Case("padding-in-header", g, lambda k: _padded(k, 0), 401, MALFORMED_HEADER),
        Case("padding-in-payload", g, lambda k: _padded(k, 1), 401, MALFORMED_PAYLOAD),
        Case("padding-in-signature", g, lambda k: _padded(k, 2), 401, MALFORMED_SIGNATURE),
        Case("standard-base64-alphabet", g, _standard_alphabet, 401, MALFORMED_SIGNATURE),
        Case("non-canonical-base64-last-char", g, _non_canonical_last_char, 401, MALFORMED_SIGNATURE,
             "RFC 4648 §3.5: spare bits must be zero, else one token has several spellings"),
        Case("invalid-character-in-payload", g, insert(1, "*"), 401, MALFORMED_PAYLOAD),
        Case("invalid-character-in-header", g, insert(0, "$"), 401, MALFORMED_HEADER),
        Case("whitespace-in-payload", g, insert(1, " "), 401, MALFORMED_PAYLOAD),
        Case("one-segment", g, lambda k: segments(k, 1), 401, NOT_COMPACT),
        Case("two-segments", g, lambda k: segments(k, 2), 401, NOT_COMPACT),
        Case("four-segments", g, lambda k: segments(k, 4), 401, NOT_COMPACT),
        Case("five-segments-jwe-shape", g, lambda k: segments(k, 5), 401, ENCRYPTED),
        Case("empty-header-segment", g, lambda k: bearer("." + ".".join(k.good().split(".")[1:])), 401, NOT_COMPACT),
        Case("empty-payload-segment", g, lambda k: bearer(k.good().split(".")[0] + ".." + k.good().split(".")[2]), 401, NOT_COMPACT),
    ]
    for kind, literal in (("array", b'["RS256"]'), ("string", b'"RS256"'), ("number", b"1"), ("null", b"null")):
        cases.append(Case(f"header-json-{kind}", g, raw_header(literal), 401, MALFORMED_HEADER))
        cases.append(Case(f"payload-json-{kind}", g, raw_payload(lambda k, lit=literal: lit), 401, MALFORMED_PAYLOAD))
    cases += [
        Case("header-duplicate-alg-none-then-rs256", g, lambda k: bearer(k.jws(
            k.rsa, b'{"alg":"none","alg":"RS256","kid":"main-rsa"}')), 401, MALFORMED_HEADER,
             "RFC 7515 §4: header parameter names must be unique"),
        Case("header-duplicate-kid", g, lambda k: bearer(k.jws(
            k.rsa, b'{"alg":"RS256","kid":"unknown","kid":"main-rsa"}')), 401, MALFORMED_HEADER),
        Case("payload-duplicate-sub", g, raw_payload(lambda k: dup_payload(k, "sub", "admin")), 401, MALFORMED_PAYLOAD),
        Case("payload-duplicate-iss", g, raw_payload(lambda k: dup_payload(k, "iss", "https://evil.test")), 401, MALFORMED_PAYLOAD),
        Case("payload-duplicate-exp", g, raw_payload(lambda k: dup_payload(k, "exp", 1)), 401, MALFORMED_PAYLOAD),
        Case("payload-duplicate-nested-member", g, raw_payload(lambda k: k.payload_with_literal(
            "ctx", '{"role":"user","role":"admin"}')), 401, MALFORMED_PAYLOAD),
        Case("payload-depth-16-at-limit", g, lambda k: bearer(k.good(nest=_nested(15))), 200, None,
             "limits.maxJsonDepth default 16 counts the payload object as depth 1"),
        Case("payload-depth-17-beyond-limit", g, lambda k: bearer(k.good(nest=_nested(16))), 401, MALFORMED_PAYLOAD),
        Case("payload-depth-5000", g, raw_payload(lambda k: k.payload_with_literal(
            "nest", "[" * 5000 + "]" * 5000)), 401, MALFORMED_PAYLOAD),
        Case("header-depth-17", g, lambda k: bearer(k.jws(k.rsa, k.header(k.rsa, x=_nested(16)))), 401, MALFORMED_HEADER),
        Case("token-over-16-kib", g, lambda k: bearer(k.good(filler="x" * 16 * 1024)), 401, TOO_LARGE),
        Case("payload-invalid-utf8", g, raw_payload(lambda k: k.payload_with_literal("name", '"x"').replace(
            b'"x"', b'"\xff\xfe"')), 401, MALFORMED_PAYLOAD),
        Case("header-invalid-utf8", g, lambda k: bearer(k.jws(
            k.rsa, b'{"alg":"RS256","kid":"main-rsa","x":"\xc3\x28"}')), 401, MALFORMED_HEADER),
        Case("payload-lone-surrogate-escape", g, raw_payload(lambda k: k.payload_with_literal(
            "name", '"\\ud800"')), 401, MALFORMED_PAYLOAD),
        Case("payload-utf8-bom", g, raw_payload(lambda k: b"\xef\xbb\xbf" + compact(k.claims())), 401, MALFORMED_PAYLOAD),
        Case("payload-trailing-garbage", g, raw_payload(lambda k: compact(k.claims()) + b"x"), 401, MALFORMED_PAYLOAD),
        Case("payload-two-objects", g, raw_payload(lambda k: compact(k.claims()) + compact(k.claims())), 401, MALFORMED_PAYLOAD),
        Case("payload-nan", g, raw_payload(lambda k: k.payload_with_literal("exp", "NaN")), 401, MALFORMED_PAYLOAD),
    ]
    return cases


def _claim_cases() -> list[Case]:
    g = "claims"

    def token(**claims: Any) -> Callable[[AttackKit], Req]:
        return lambda k: bearer(k.good(**claims))

    def literal(name: str, text: str) -> Callable[[AttackKit], Req]:
        return lambda k: bearer(k.jws(k.rsa, None, k.payload_with_literal(name, text)))

    def relative(name: str, offset: float, **more: float) -> Callable[[AttackKit], Req]:
        return lambda k: bearer(k.good(**{name: k.now + offset, **{n: k.now + o for n, o in more.items()}}))

    cases: list[Case] = []
    for name, reason in (("exp", EXP_TYPE), ("nbf", NBF_TYPE), ("iat", IAT_TYPE)):
        for kind, value in (("string", "1900000000"), ("boolean", True), ("null", None), ("array", [1900000000]),
                            ("object", {"t": 1}), ("negative", -1)):
            cases.append(Case(f"{name}-{kind}", g, token(**{name: value}), 401, reason,
                              "RFC 7519 §2: a NumericDate is a JSON number of seconds since the epoch"))
    cases += [
        Case("exp-1e400-not-a-json-number", g, literal("exp", "1e400"), 401, MALFORMED_PAYLOAD,
             "out of the range of a double: the parser refuses the document"),
        Case("exp-1e300", g, literal("exp", "1e300"), 401, "expiry (exp) is beyond year 9999",
             "RFC 8725 §3.10: a token no clock can expire is no security boundary: malformed"),
        Case("exp-10-pow-30", g, literal("exp", str(10**30)), 401, "expiry (exp) is beyond year 9999"),
        Case("exp-2-pow-64", g, literal("exp", str(2**64)), 401, "expiry (exp) is beyond year 9999",
             "beyond a signed 64-bit count of seconds"),
        Case("nbf-1e300-far-future", g, literal("nbf", "1e300"), 401, "not-before (nbf) is beyond year 9999"),
        Case("iat-2-pow-64-future", g, literal("iat", str(2**64)), 401, "issue time (iat) is beyond year 9999"),
        Case("exp-fraction-half-second-ahead", g, relative("exp", 0.5), 200, None, "fractional NumericDate (RFC 7519 §2)"),
        Case("exp-fraction-within-skew", g, relative("exp", -30.5, iat=-600), 200, None,
             "clockSkewSeconds 60 (30 s of margin for the time the suite takes)"),
        Case("exp-fraction-beyond-skew", g, relative("exp", -61.5, iat=-600), 401, EXPIRED),
        Case("exp-missing", g, token(exp=DROP), 401, NO_EXP, "RFC 9068 §2.2: exp is required in an access token"),
        Case("exp-past", g, relative("exp", -3600, iat=-7200), 401, EXPIRED),
        Case("nbf-future-beyond-skew", g, relative("nbf", 120), 401, NBF_FUTURE),
        Case("nbf-future-within-skew", g, relative("nbf", 30), 200, None),
        Case("iat-future-beyond-skew", g, relative("iat", 120), 401, IAT_FUTURE),
        Case("aud-string", g, token(aud=AUDIENCE), 200),
        Case("aud-list", g, token(aud=["other", AUDIENCE]), 200),
        Case("aud-list-with-non-strings", g, token(aud=[1, {"a": 1}, None, AUDIENCE]), 401, AUDIENCE_REFUSED,
             "RFC 7519 §4.1.3: a list of strings; a malformed list is refused even if it names us"),
        Case("aud-list-only-non-strings", g, token(aud=[1, True, None]), 401, AUDIENCE_REFUSED),
        Case("aud-empty-list", g, token(aud=[]), 401, AUDIENCE_REFUSED),
        Case("aud-nested-list", g, token(aud=[[AUDIENCE]]), 401, AUDIENCE_REFUSED),
        Case("aud-object", g, token(aud={AUDIENCE: True}), 401, AUDIENCE_REFUSED),
        Case("aud-number", g, token(aud=1), 401, AUDIENCE_REFUSED),
        Case("aud-upper-case", g, token(aud=AUDIENCE.upper()), 401, AUDIENCE_REFUSED),
        Case("aud-missing", g, token(aud=DROP), 401, AUDIENCE_REFUSED),
        Case("sub-number", g, token(sub=1234), 401, SUB_TYPE,
             "RFC 7519 §4.1.2: a string; a number would slip past revoked.subjects"),
        Case("sub-object", g, token(sub={"id": "user-1"}), 401, SUB_TYPE),
        Case("sub-null-is-absent", g, token(sub=None), 200, None, "a null claim counts as absent"),
        Case("iss-trailing-slash", g, token(iss=ISS_MAIN + "/"), 401, ISSUER_UNTRUSTED),
        Case("iss-upper-case-host", g, token(iss=ISS_MAIN.upper()), 401, ISSUER_UNTRUSTED),
        Case("iss-leading-space", g, token(iss=" " + ISS_MAIN), 401, ISSUER_UNTRUSTED),
        Case("iss-trailing-space", g, token(iss=ISS_MAIN + " "), 401, ISSUER_UNTRUSTED),
        Case("iss-trailing-newline", g, token(iss=ISS_MAIN + "\n"), 401, ISSUER_UNTRUSTED),
        Case("iss-unicode-lookalike", g, token(iss=ISS_MAIN.replace("a", "\u0430")), 401, ISSUER_UNTRUSTED,
             "Cyrillic a (U+0430) in place of Latin a"),
        Case("iss-fullwidth-lookalike", g, token(iss=ISS_MAIN.replace("main", "\uff4dain")), 401, ISSUER_UNTRUSTED),
        Case("iss-missing", g, token(iss=DROP), 401, NO_ISSUER),
        Case("iss-number", g, token(iss=1), 401, NO_ISSUER),
        Case("iss-list", g, token(iss=[ISS_MAIN]), 401, NO_ISSUER),
    ]
    return cases


def _key_cases() -> list[Case]:
    g = "keys"
    iss = KeyProviders.issuer

    def signed(name: str, signer: Callable[[KeyProviders], SigningKey], kid: str | None = None) -> Callable[[AttackKit], Req]:
        def build(k: AttackKit) -> Req:
            key = signer(k.key_sets)
            return bearer(k.jws(key, k.header(key, kid=kid or key.kid), k.claims(iss=iss(name))))
        return build

    def e1_forgery(k: AttackKit) -> Req:
        header = k.header(k.rsa, kid="e-1")
        signing_input = f"{b64url(compact(header))}.{b64url(compact(k.claims(iss=iss('rsa-e-1'))))}"
        forged = pkcs1_v15_sha256_encoding(signing_input.encode(), 256)
        return bearer(f"{signing_input}.{b64url(forged)}")

    def oct_fetched(k: AttackKit) -> Req:
        key = SigningKey("HS256", "oct", k.key_sets.oct_secret)
        return bearer(k.jws(key, k.header(key), k.claims(iss=iss("oct-fetched"))))

    bad = [
        Case("rsa-1024-bit-key", g, signed("rsa-1024", lambda s: s.weak), 401, UNKNOWN_KID,
             "RSA keys under 2048 bits are skipped (NIST SP 800-131A; RFC 7518 §3.3)"),
        Case("rsa-exponent-1-forgery", g, e1_forgery, 401, UNKNOWN_KID,
             "with e = 1 the PKCS#1 encoding of the hash is a valid signature: anyone could sign"),
        Case("key-use-enc", g, signed("use-enc", lambda s: s.enc), 401, UNKNOWN_KID, "RFC 7517 §4.2"),
        Case("key-ops-without-verify", g, signed("key-ops-encrypt", lambda s: s.ops), 401, UNKNOWN_KID, "RFC 7517 §4.3"),
        Case("oct-key-in-fetched-jwks", g, oct_fetched, 401, ALG_NOT_ALLOWED,
             "whoever serves the document would choose the HMAC secret: a provider with fetched keys "
             "allows no HS algorithm, and the key parser skips oct keys in fetched documents too"),
        Case("okp-x25519-key", g, signed("okp-x25519", lambda s: s.ed_for_x25519), 401, UNKNOWN_KID,
             "X25519 is a key-agreement curve (RFC 8037 §3.2)"),
        Case("ec-secp256k1-key", g, signed("ec-secp256k1", lambda s: s.secp256k1), 401, UNKNOWN_KID,
             "secp256k1 is not a JOSE ES256 curve (RFC 8812 ES256K is not supported)"),
        Case("jwk-with-private-members", g, signed("private-members", lambda s: s.leaked), 401, UNKNOWN_KID,
             "a key set that leaks a private key is not trusted for it"),
        Case("duplicate-kid-first-wrong-second-right", g, signed("duplicate-kid", lambda s: s.dup_right), 200, None,
             "every key with the kid that fits the alg is tried (at most 4): rotations reuse kids"),
        Case("duplicate-kid-signed-by-neither", g, lambda k: bearer(k.jws(
            k.attacker_rsa, k.header(k.attacker_rsa, kid="dup"), k.claims(iss=iss("duplicate-kid")))), 401, BAD_SIGNATURE),
        Case("only-unusable-keys-fail-closed", g, lambda k: bearer(k.jws(
            k.key_sets.weak, k.header(k.key_sets.weak), k.claims(iss=ISS_ONLY_WEAK))), 503, None,
             "a document with no usable key is no keys at all: 503 with Retry-After"),
    ]
    controls = [
        Case(f"{name}-good-key-still-works", g, signed(name, lambda s: s.good), 200, None,
             "the bad key beside it is skipped, not fatal")
        for name in ("rsa-1024", "rsa-e-1", "use-enc", "key-ops-encrypt", "oct-fetched", "okp-x25519",
                     "ec-secp256k1", "private-members")
    ]
    return bad + controls


def _extraction_cases() -> list[Case]:
    g = "extraction"

    def loc_token(k: AttackKit) -> str:
        return k.good(iss=ISS_LOCATIONS)

    return [
        Case("header-and-query-token", g, lambda k: Req([("Authorization", f"Bearer {loc_token(k)}")],
                                                        [(LOCATION_PARAM, loc_token(k))]), 400, MORE_THAN_ONE),
        Case("two-authorization-headers", g, lambda k: Req([("Authorization", f"Bearer {k.good()}"),
                                                            ("Authorization", f"Bearer {k.good(sub='admin')}")]),
             400, MORE_THAN_ONE),
        Case("two-tokens-in-one-authorization-header", g, lambda k: Req(
            [("Authorization", f"Bearer {k.good()}, Bearer {k.good(sub='admin')}")]), 400, MORE_THAN_ONE),
        Case("two-query-tokens", g, lambda k: Req([], [(LOCATION_PARAM, loc_token(k)),
                                                      (LOCATION_PARAM, k.good(iss=ISS_LOCATIONS, sub="admin"))]),
             400, MORE_THAN_ONE),
        Case("same-query-token-twice", g, lambda k: Req([], [(LOCATION_PARAM, loc_token(k)), (LOCATION_PARAM, loc_token(k))]),
             200, None, "one token, repeated in one location: nothing for two readers to disagree on"),
        Case("lower-case-scheme", g, lambda k: bearer(k.good(), "bearer "), 200, None,
             "RFC 9110 §11.1: the scheme is case-insensitive (jwt_authn treats it as no token)"),
        Case("upper-case-scheme", g, lambda k: bearer(k.good(), "BEARER "), 200),
        Case("two-spaces-after-scheme", g, lambda k: bearer(k.good(), "Bearer  "), 401, MALFORMED_HEADER,
             "RFC 6750 §2.1: exactly one space; the rest is taken as the token and is malformed"),
        Case("tab-after-scheme", g, lambda k: bearer(k.good(), "Bearer\t"), 401, None, "no `Bearer ` prefix: no token"),
        Case("basic-scheme", g, lambda k: bearer(b64url(b"user:pass"), "Basic "), 401, None),
        Case("query-param-no-provider-lists", g, lambda k: Req([], [(UNLISTED_PARAM, k.good())]), 401, None,
             "a location no provider lists is never read: the token is missing"),
        Case("cookie-no-provider-lists", g, lambda k: Req([("Cookie", f"{UNLISTED_COOKIE}={k.good()}")]), 401, None),
        Case("query-param-listed-by-another-issuer", g, lambda k: Req([], [(LOCATION_PARAM, k.good())]), 401,
             WRONG_LOCATION, "the token's issuer reads tokens only from the Authorization header"),
        Case("query-param-listed-by-its-issuer", g, lambda k: Req([], [(LOCATION_PARAM, loc_token(k))]), 200),
    ]


def catalogue() -> list[Case]:
    cases = (_header_cases() + _signature_cases() + _encoding_cases() + _claim_cases() + _key_cases()
             + _extraction_cases())
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    assert not duplicates, f"duplicate case ids: {duplicates}"
    return cases


def plugin_config(main_jwks: dict[str, Any], main_jwks_uri: str, key_docs: dict[str, str],
                  only_weak_uri: str) -> dict[str, Any]:
    """Providers for the catalogue: the main issuer, the same keys inline, a locations issuer,
    one issuer per key defect. A long `jwksMinRefetchSeconds` keeps unknown-kid refusals immediate."""
    common = {"audiences": [AUDIENCE], "jwksMinRefetchSeconds": 3600}
    providers = [
        {"issuer": ISS_MAIN, "jwksUri": main_jwks_uri, **common},
        {"issuer": ISS_INLINE, "jwks": json.dumps(main_jwks), "audiences": [AUDIENCE]},
        {"issuer": ISS_LOCATIONS, "jwksUri": main_jwks_uri, "fromParams": [LOCATION_PARAM], **common},
        {"issuer": ISS_ONLY_WEAK, "jwksUri": only_weak_uri, "timeout": "300ms", **common},
    ]
    providers += [{"issuer": KeyProviders.issuer(name), "jwksUri": uri, **common} for name, uri in key_docs.items()]
    return {"providers": providers, "realm": REALM}
