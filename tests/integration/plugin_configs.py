"""Plugin configurations (the JSON of /work/shared/spec/plugin-config.md) shared by test modules."""

from __future__ import annotations

from typing import Any

from harness import IdpServer
from tokens import EC_ALGS, HMAC_ALGS, OKP_ALGS, RSA_ALGS, KeySet

AUDIENCE = "api"

# One issuer per key family, plus issuers whose provider exercises one option.
ISS_RSA = "https://rsa.idp.test"
ISS_EC = "https://ec.idp.test"
ISS_OKP = "https://okp.idp.test"
ISS_HMAC = "https://hmac.idp.test"
ISS_RS256_ONLY = "https://rs256-only.idp.test"
ISS_FORWARD = "https://forward.idp.test"
ISS_LIFETIME = "https://lifetime.idp.test"
ISS_LOCATIONS = "https://locations.idp.test"

FAMILY_ISSUER = {
    **{alg: ISS_RSA for alg in RSA_ALGS},
    **{alg: ISS_EC for alg in EC_ALGS},
    **{alg: ISS_OKP for alg in OKP_ALGS},
    **{alg: ISS_HMAC for alg in HMAC_ALGS},
}

CLAIM_HEADER = "x-sub"
PAYLOAD_HEADER = "x-jwt-payload"
LOCATION_HEADER = "x-token"
LOCATION_PARAM = "access_token"
LOCATION_COOKIE = "session"
MAX_LIFETIME = 3600


def serve_family_jwks(idp: IdpServer, keys: KeySet) -> dict[str, str]:
    """Publishes one JWKS per asymmetric family; returns issuer → jwksUri."""
    uris = {}
    for issuer, algs, path in ((ISS_RSA, RSA_ALGS, "/rsa/jwks.json"),
                               (ISS_EC, EC_ALGS, "/ec/jwks.json"),
                               (ISS_OKP, OKP_ALGS, "/okp/jwks.json")):
        idp.set_json(path, keys.jwks(algs))
        uris[issuer] = idp.url + path
    return uris


def standard_config(idp: IdpServer, keys: KeySet) -> dict[str, Any]:
    """The configuration most modules share: a provider per key family (RS/PS/ES/EdDSA keys
    fetched from `idp`, HS keys inline) and providers for single options, all RSA-keyed."""
    uris = serve_family_jwks(idp, keys)
    rsa_uri = uris[ISS_RSA]
    outputs = {
        "outputClaimToHeaders": [{"header": CLAIM_HEADER, "claim": "sub"}],
        "outputPayloadToHeader": PAYLOAD_HEADER,
    }
    return {
        "providers": [
            {"issuer": ISS_RSA, "audiences": [AUDIENCE], "jwksUri": rsa_uri, **outputs},
            {"issuer": ISS_EC, "audiences": [AUDIENCE], "jwksUri": uris[ISS_EC]},
            {"issuer": ISS_OKP, "audiences": [AUDIENCE], "jwksUri": uris[ISS_OKP]},
            {"issuer": ISS_HMAC, "audiences": [AUDIENCE], "jwks": keys.jwks_string(HMAC_ALGS)},
            {"issuer": ISS_RS256_ONLY, "audiences": [AUDIENCE], "jwksUri": rsa_uri, "algorithms": ["RS256"]},
            {"issuer": ISS_FORWARD, "audiences": [AUDIENCE], "jwksUri": rsa_uri, "forwardOriginalToken": True},
            {"issuer": ISS_LIFETIME, "audiences": [AUDIENCE], "jwksUri": rsa_uri, "maxLifetimeSeconds": MAX_LIFETIME},
            {
                "issuer": ISS_LOCATIONS,
                "audiences": [AUDIENCE],
                "jwksUri": rsa_uri,
                "fromHeaders": [{"name": LOCATION_HEADER, "prefix": "Bearer "}],
                "fromParams": [LOCATION_PARAM],
                "fromCookies": [LOCATION_COOKIE],
            },
        ],
    }
