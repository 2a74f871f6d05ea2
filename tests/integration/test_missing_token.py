"""No token where one is needed: 401 with a `Bearer realm` challenge and nothing else."""

import pytest

from checks import assert_missing_token, error_body
from plugin_configs import ISS_RSA, serve_family_jwks


def test_realm_defaults_to_the_requests_host(standard_envoy):
    resp = standard_envoy.request("/orders", headers={"Host": "orders.example.com"})
    assert_missing_token(resp, "orders.example.com")
    assert error_body(resp)["error"]


def test_an_authorization_header_of_another_scheme_is_no_token(standard_envoy):
    resp = standard_envoy.request("/orders", headers={"Host": "orders.example.com", "Authorization": "Basic dXNlcjpwdw=="})
    assert_missing_token(resp, "orders.example.com")


def test_cors_preflight_needs_no_token(standard_envoy):
    resp = standard_envoy.request("/orders", method="OPTIONS", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert resp.status == 200, resp
    assert resp.upstream["method"] == "OPTIONS"


def test_options_that_is_not_a_preflight_needs_a_token(standard_envoy):
    resp = standard_envoy.request("/orders", method="OPTIONS", headers={"Host": "orders.example.com"})
    assert_missing_token(resp, "orders.example.com")


@pytest.fixture(scope="module")
def realm_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    uris = serve_family_jwks(idp, keys)
    config = {"realm": "orders", "providers": [{"issuer": ISS_RSA, "jwksUri": uris[ISS_RSA]}]}
    return module_envoys.start(config, idps=[idp])


def test_configured_realm_is_used_whatever_the_host(realm_envoy):
    resp = realm_envoy.request("/orders", headers={"Host": "orders.example.com"})
    assert_missing_token(resp, "orders")


def test_configured_realm_appears_in_invalid_token_challenges(realm_envoy):
    resp = realm_envoy.request("/orders", headers={"Authorization": "Bearer not.a.jwt"})
    assert resp.status == 401, resp
    assert (resp.header("www-authenticate") or "").startswith('Bearer realm="orders", error="invalid_token"'), resp
