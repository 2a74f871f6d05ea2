"""Every supported JWS algorithm, end to end: RS/PS/ES/EdDSA keys fetched from the IdP through
the Istio-named cluster, HS keys given inline."""

import pytest

from checks import assert_invalid_token
from plugin_configs import FAMILY_ISSUER
from tokens import ALL_ALGS, b64url, b64url_decode, claims, segments


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_valid_token_passes_and_the_token_is_not_forwarded(standard_envoy, keys, alg):
    token = keys.mint(alg, claims(FAMILY_ISSUER[alg]))
    resp = standard_envoy.request("/orders", headers=bearer(token))
    assert resp.status == 200, resp
    assert "authorization" not in resp.upstream["headers"]


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_token_with_a_flipped_signature_byte_is_refused(standard_envoy, keys, alg):
    header, payload, signature = segments(keys.mint(alg, claims(FAMILY_ISSUER[alg])))
    raw = bytearray(b64url_decode(signature))
    raw[len(raw) // 2] ^= 0x01
    resp = standard_envoy.request("/orders", headers=bearer(f"{header}.{payload}.{b64url(bytes(raw))}"))
    assert_invalid_token(resp, "signature")


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_token_signed_for_one_family_is_refused_by_another_familys_issuer(standard_envoy, keys, alg):
    """The issuer decides the keys: a correct signature by a key the issuer does not publish fails."""
    other_issuer = next(iss for a, iss in FAMILY_ISSUER.items() if iss != FAMILY_ISSUER[alg])
    resp = standard_envoy.request("/orders", headers=bearer(keys.mint(alg, claims(other_issuer))))
    assert_invalid_token(resp, "key", "signature", "algorithm")
