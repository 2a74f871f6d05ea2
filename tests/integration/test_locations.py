"""Where tokens are found: headers (prefix matched case-insensitively), query parameters,
cookies; more than one token is a bad request."""

from checks import assert_invalid_request, assert_missing_token
from plugin_configs import ISS_LOCATIONS, ISS_RSA, LOCATION_COOKIE, LOCATION_HEADER, LOCATION_PARAM
from tokens import claims


def test_default_authorization_prefix_is_case_insensitive(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_RSA))
    for scheme in ("Bearer", "bearer", "BEARER"):
        resp = standard_envoy.request("/", headers={"Authorization": f"{scheme} {token}"})
        assert resp.status == 200, (scheme, resp)


def test_custom_header_with_a_lower_case_prefix(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_LOCATIONS))
    resp = standard_envoy.request("/", headers={LOCATION_HEADER: f"bearer {token}"})
    assert resp.status == 200, resp
    assert LOCATION_HEADER not in resp.upstream["headers"]


def test_custom_header_without_its_prefix_is_no_token(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_LOCATIONS))
    resp = standard_envoy.request("/", headers={LOCATION_HEADER: token, "Host": "api.example.com"})
    assert_missing_token(resp, "api.example.com")


def test_query_parameter(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_LOCATIONS))
    resp = standard_envoy.request("/items", query={LOCATION_PARAM: token, "page": "2"})
    assert resp.status == 200, resp
    assert token not in resp.upstream["path"]  # forwardOriginalToken false: removed from the query too
    assert "page=2" in resp.upstream["path"]


def test_cookie(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_LOCATIONS))
    resp = standard_envoy.request("/", headers={"Cookie": f"theme=dark; {LOCATION_COOKIE}={token}"})
    assert resp.status == 200, resp
    cookies = resp.upstream["headers"].get("cookie", "")
    assert token not in cookies  # forwardOriginalToken false: the token cookie is removed
    assert "theme=dark" in cookies


def test_tokens_in_two_locations_are_a_bad_request(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_LOCATIONS))
    resp = standard_envoy.request("/", headers={"Authorization": f"Bearer {token}", LOCATION_HEADER: f"Bearer {token}"})
    assert_invalid_request(resp)


def test_a_header_token_and_a_query_token_are_a_bad_request(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_LOCATIONS))
    resp = standard_envoy.request("/", headers={LOCATION_HEADER: f"Bearer {token}"}, query={LOCATION_PARAM: token})
    assert_invalid_request(resp)


def test_two_authorization_headers_are_a_bad_request(standard_envoy, keys):
    token = keys.mint("RS256", claims(ISS_RSA))
    resp = standard_envoy.request("/", headers=[("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    assert_invalid_request(resp)
