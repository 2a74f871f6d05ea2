"""What upstream sees after a token passed: claim headers, the payload header, the token only
when forwarded; client-supplied copies of the output headers never get through."""

import json

from plugin_configs import CLAIM_HEADER, ISS_EC, ISS_FORWARD, ISS_RSA, PAYLOAD_HEADER
from tokens import b64url_decode, claims


def test_claim_and_payload_headers(standard_envoy, keys):
    sent = claims(ISS_RSA, sub="alice", scope="orders:read", nested={"roles": ["a", "b"]})
    token = keys.mint("RS256", sent)
    seen = standard_envoy.request("/", headers={"Authorization": f"Bearer {token}"}).upstream["headers"]
    assert seen[CLAIM_HEADER] == "alice"
    encoded = seen[PAYLOAD_HEADER]
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded, "not unpadded base64url"
    assert json.loads(b64url_decode(encoded)) == sent


def test_client_supplied_output_headers_are_replaced(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_RSA, sub="alice"))
    resp = standard_envoy.request("/", headers=[
        ("Authorization", f"Bearer {token}"),
        (CLAIM_HEADER, "forged"),
        (PAYLOAD_HEADER, "eyJzdWIiOiJmb3JnZWQifQ"),
    ])
    seen = resp.upstream["headers"]
    assert seen[CLAIM_HEADER] == "alice"
    assert json.loads(b64url_decode(seen[PAYLOAD_HEADER]))["sub"] == "alice"


def test_client_supplied_output_header_is_removed_when_the_token_lacks_the_claim(standard_envoy, keys):
    payload = claims(ISS_RSA)
    del payload["sub"]
    token = keys.mint("RS256", payload)
    resp = standard_envoy.request("/", headers=[("Authorization", f"Bearer {token}"), (CLAIM_HEADER, "forged")])
    assert CLAIM_HEADER not in resp.upstream["headers"]


def test_forward_original_token_keeps_authorization(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_FORWARD))
    seen = standard_envoy.request("/", headers={"Authorization": f"Bearer {token}"}).upstream["headers"]
    assert seen["authorization"] == f"Bearer {token}"


def test_output_headers_are_removed_even_for_a_provider_that_sets_none(standard_envoy, keys):
    token = keys.mint("ES256", claims(ISS_EC))
    resp = standard_envoy.request("/", headers=[
        ("Authorization", f"Bearer {token}"),
        (CLAIM_HEADER, "forged"),
        (PAYLOAD_HEADER, "eyJzdWIiOiJmb3JnZWQifQ"),
    ])
    seen = resp.upstream["headers"]
    assert CLAIM_HEADER not in seen and PAYLOAD_HEADER not in seen


def test_a_header_value_that_is_not_utf8_does_not_stop_a_valid_token(standard_envoy, keys):
    # http.client sends str header values as Latin-1: "é" goes out as the single byte 0xE9,
    # which is no UTF-8. The module reads such a value as a lossy copy; the rest of the
    # request is decided as usual.
    token = keys.mint("RS256", claims(ISS_RSA, sub="alice"))
    resp = standard_envoy.request("/", headers=[("Authorization", f"Bearer {token}"), ("x-note", "café")])
    assert resp.status == 200, resp
    assert resp.upstream["headers"][CLAIM_HEADER] == "alice"
    assert "authorization" not in resp.upstream["headers"]
