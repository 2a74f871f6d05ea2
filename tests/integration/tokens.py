"""Keys and tokens made by independent libraries (PyJWT, cryptography), never by the project."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

RSA_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
EC_ALGS = ["ES256", "ES384"]
OKP_ALGS = ["EdDSA"]
ASYMMETRIC_ALGS = RSA_ALGS + EC_ALGS + OKP_ALGS
HMAC_ALGS = ["HS256", "HS384", "HS512"]
ALL_ALGS = ASYMMETRIC_ALGS + HMAC_ALGS

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_EC_CURVES = {"ES256": (ec.SECP256R1, 32), "ES384": (ec.SECP384R1, 48)}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class SigningKey:
    alg: str
    kid: str
    private: Any  # a cryptography private key, or the HMAC secret bytes

    @property
    def public_jwk(self) -> dict[str, Any]:
        """The JWK a verifier needs (for HMAC: the secret itself, `kty: oct`)."""
        if self.alg in HMAC_ALGS:
            jwk = HMACAlgorithm.to_jwk(self.private, as_dict=True)
        elif self.alg in RSA_ALGS:
            jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif self.alg in EC_ALGS:
            jwk = ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            jwk = OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def sign(self, signing_input: bytes) -> bytes:
        """The JWS signature over `signing_input`, computed with cryptography directly."""
        digest = _HASHES.get(self.alg[-3:])
        if self.alg in HMAC_ALGS:
            return hmac.new(self.private, signing_input, getattr(hashlib, f"sha{self.alg[-3:]}")).digest()
        if self.alg.startswith("RS"):
            return self.private.sign(signing_input, padding.PKCS1v15(), digest())
        if self.alg.startswith("PS"):
            pss = padding.PSS(mgf=padding.MGF1(digest()), salt_length=digest.digest_size)
            return self.private.sign(signing_input, pss, digest())
        if self.alg in EC_ALGS:
            _, size = _EC_CURVES[self.alg]
            r, s = decode_dss_signature(self.private.sign(signing_input, ec.ECDSA(digest())))
            return r.to_bytes(size, "big") + s.to_bytes(size, "big")
        return self.private.sign(signing_input)


def generate_key(alg: str, kid: str | None = None) -> SigningKey:
    kid = kid or f"{alg.lower()}-{os.urandom(4).hex()}"
    if alg in HMAC_ALGS:
        return SigningKey(alg, kid, os.urandom(64))
    if alg in RSA_ALGS:
        return SigningKey(alg, kid, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    if alg in EC_ALGS:
        curve, _ = _EC_CURVES[alg]
        return SigningKey(alg, kid, ec.generate_private_key(curve()))
    if alg == "EdDSA":
        return SigningKey(alg, kid, ed25519.Ed25519PrivateKey.generate())
    raise ValueError(f"unsupported alg {alg}")


class KeySet:
    """One signing key per algorithm, `kid` = a per-run name derived from the alg."""

    def __init__(self, algs: list[str] = ALL_ALGS) -> None:
        self.keys = {alg: generate_key(alg) for alg in algs}

    def __getitem__(self, alg: str) -> SigningKey:
        return self.keys[alg]

    def jwks(self, algs: list[str]) -> dict[str, Any]:
        return {"keys": [self.keys[alg].public_jwk for alg in algs]}

    def jwks_string(self, algs: list[str]) -> str:
        return json.dumps(self.jwks(algs))

    def mint(self, alg: str, claims: dict[str, Any], kid: str | None = None,
             headers: dict[str, Any] | None = None) -> str:
        """A token signed by PyJWT with the key for `alg`; `kid` overrides the key's id."""
        key = self.keys[alg]
        return jwt.encode(claims, key.private, algorithm=alg,
                          headers={"kid": kid or key.kid, **(headers or {})})

    def sign_raw(self, alg: str, header_json: bytes, payload_json: bytes) -> str:
        """A token from exact JSON bytes (e.g. a duplicate member), validly signed."""
        signing_input = f"{b64url(header_json)}.{b64url(payload_json)}".encode()
        return f"{signing_input.decode()}.{b64url(self.keys[alg].sign(signing_input))}"


def claims(issuer: str, audience: str | list[str] | None = "api", lifetime: int = 600,
           now: int | None = None, **extra: Any) -> dict[str, Any]:
    """Ordinary valid claims: `iat` now, `exp` in `lifetime` seconds."""
    now = int(time.time()) if now is None else now
    result: dict[str, Any] = {"iss": issuer, "sub": "user-1234", "iat": now, "exp": now + lifetime}
    if audience is not None:
        result["aud"] = audience
    result.update(extra)
    return result


def unique_claims(issuer: str, lifetime: int = 600, **extra: Any) -> dict[str, Any]:
    """Valid claims for `sub` user-1 with a fresh `jti`: equal tokens would meet the token cache."""
    return claims(issuer, sub="user-1", lifetime=lifetime, jti=uuid.uuid4().hex, **extra)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def segments(token: str) -> list[str]:
    return token.split(".")


def payload_of(token: str) -> dict[str, Any]:
    return json.loads(b64url_decode(segments(token)[1]))
