"""Rules and `unmatched`: deny by default, anonymous paths."""

import pytest

from checks import assert_invalid_token, assert_missing_token, error_body, www_authenticate
from plugin_configs import CLAIM_HEADER, ISS_RSA, serve_family_jwks
from tokens import claims


def rsa_provider(idp, keys):
    return {"issuer": ISS_RSA, "jwksUri": serve_family_jwks(idp, keys)[ISS_RSA],
            "outputClaimToHeaders": [{"header": CLAIM_HEADER, "claim": "sub"}]}


@pytest.fixture(scope="module")
def deny_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    return module_envoys.start({"providers": [rsa_provider(idp, keys)], "unmatched": "deny"}, idps=[idp])


@pytest.fixture(scope="module")
def anonymous_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    config = {
        "providers": [rsa_provider(idp, keys)],
        "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
             "requires": {"scopes": ["orders:write"]}},
        ],
    }
    return module_envoys.start(config, idps=[idp])


def bearer(keys, **extra):
    return {"Authorization": f"Bearer {keys.mint('RS256', claims(ISS_RSA, audience=None, **extra))}"}


def test_unmatched_deny_refuses_without_a_token(deny_envoy):
    resp = deny_envoy.request("/orders")
    assert resp.status == 403, resp
    assert resp.header("www-authenticate") is None, resp


def test_unmatched_deny_refuses_a_valid_token(deny_envoy, keys):
    resp = deny_envoy.request("/orders", headers=bearer(keys))
    assert resp.status == 403, resp


def test_anonymous_path_passes_without_a_token(anonymous_envoy):
    resp = anonymous_envoy.request("/public/index.html")
    assert resp.status == 200, resp
    assert resp.upstream["path"] == "/public/index.html"


def test_anonymous_path_still_refuses_an_invalid_token(anonymous_envoy, keys):
    resp = anonymous_envoy.request("/public/index.html", headers=bearer(keys, iss="https://unknown.idp.test"))
    assert_invalid_token(resp, "issuer")


def test_anonymous_path_removes_forged_output_headers(anonymous_envoy):
    resp = anonymous_envoy.request("/public/index.html", headers={CLAIM_HEADER: "forged"})
    assert CLAIM_HEADER not in resp.upstream["headers"]


def test_anonymous_path_with_a_valid_token_sets_its_claims(anonymous_envoy, keys):
    resp = anonymous_envoy.request("/public/index.html", headers=bearer(keys, sub="alice"))
    assert resp.upstream["headers"][CLAIM_HEADER] == "alice"


def test_other_paths_still_need_a_token(anonymous_envoy):
    resp = anonymous_envoy.request("/private", headers={"Host": "api.example.com"})
    assert_missing_token(resp, "api.example.com")


def test_anonymous_prefix_does_not_match_a_sibling_path(anonymous_envoy):
    resp = anonymous_envoy.request("/publicity", headers={"Host": "api.example.com"})
    assert_missing_token(resp, "api.example.com")


def test_missing_scope_is_403_insufficient_scope_naming_it(anonymous_envoy, keys):
    resp = anonymous_envoy.request("/orders/7", method="POST", body=b"{}", headers=bearer(keys, scope="orders:read"))
    assert resp.status == 403, resp
    scheme, params = www_authenticate(resp)
    assert scheme == "Bearer" and params.get("error") == "insufficient_scope", resp
    assert params.get("scope") == "orders:write", resp
    assert error_body(resp)["error"] == "insufficient_scope"


def test_required_scope_present_passes(anonymous_envoy, keys):
    resp = anonymous_envoy.request("/orders/7", method="POST", body=b"{}",
                                   headers=bearer(keys, scope="orders:read orders:write"))
    assert resp.status == 200, resp
    assert resp.upstream["method"] == "POST"


def test_rule_methods_limit_the_rule(anonymous_envoy, keys):
    """GET /orders/7 matches no rule: unmatched (authenticated) needs only a valid token."""
    resp = anonymous_envoy.request("/orders/7", headers=bearer(keys, scope="orders:read"))
    assert resp.status == 200, resp


@pytest.fixture(scope="module")
def report_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    return module_envoys.start({"providers": [rsa_provider(idp, keys)], "mode": "report"}, idps=[idp])


def test_report_mode_refuses_nothing(report_envoy, keys):
    assert report_envoy.request("/orders").status == 200
    resp = report_envoy.request("/orders", headers=bearer(keys, iss="https://unknown.idp.test"))
    assert resp.status == 200, resp
