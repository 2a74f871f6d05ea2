"""Rules and `unmatched`: deny by default, anonymous paths."""

import time

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


@pytest.fixture(scope="module")
def step_up_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    config = {
        "providers": [rsa_provider(idp, keys)],
        "rules": [
            {"name": "payments", "match": {"paths": ["/payments/*"]},
             "requires": {"acrValues": ["urn:mfa"], "maxAuthAgeSeconds": 300, "scopes": ["pay"]}},
        ],
    }
    return module_envoys.start(config, idps=[idp])


def test_step_up_asks_for_a_stronger_and_recent_login(step_up_envoy, keys):
    """RFC 9470: a password-only login, or one too long ago, is sent back to authenticate with the
    challenge naming what is needed; a fresh MFA login with the scope passes."""
    now = int(time.time())
    expected = ('Bearer realm="localhost", error="insufficient_user_authentication", '
                'error_description="a stronger or more recent user authentication is required", '
                'acr_values="urn:mfa", max_age=300')
    for extra in ({"acr": "pwd", "auth_time": now}, {"acr": "urn:mfa", "auth_time": now - 900}, {"scope": "pay"}):
        resp = step_up_envoy.request("/payments/1", headers={**bearer(keys, **{"scope": "pay", **extra}),
                                                             "Host": "localhost"})
        assert resp.status == 401, (extra, resp)
        assert resp.headers_named("www-authenticate") == [expected], (extra, resp)
        assert error_body(resp)["error"] == "insufficient_user_authentication"
    ok = step_up_envoy.request("/payments/1", headers={**bearer(keys, scope="pay", acr="urn:mfa", auth_time=now - 10),
                                                       "Host": "localhost"})
    assert ok.status == 200, ok
    # The login is good; the scope is missing: 403, as before.
    no_scope = step_up_envoy.request("/payments/1", headers={**bearer(keys, acr="urn:mfa", auth_time=now),
                                                             "Host": "localhost"})
    assert no_scope.status == 403, no_scope


@pytest.fixture(scope="module")
def delegation_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    config = {
        "providers": [rsa_provider(idp, keys)],
        "rules": [
            {"name": "payouts", "match": {"paths": ["/payouts"]},
             "requires": {"delegation": "forbidden"}},
            {"name": "agents", "match": {"paths": ["/orders"]},
             "requires": {"clients": ["shop-agent"], "actor": ["agent-7"], "maxDelegationDepth": 1}},
        ],
    }
    return module_envoys.start(config, idps=[idp])


@pytest.mark.parametrize("path,extra,status,why", [
    ("/orders", {"client_id": "shop-agent", "act": {"sub": "agent-7"}}, 200, "the agent acting for the user"),
    ("/orders", {"azp": "shop-agent", "act": {"sub": "agent-7"}}, 200, "azp names the client where client_id is absent"),
    ("/orders", {"client_id": "other-app", "act": {"sub": "agent-7"}}, 403, "the token's client is not accepted here"),
    ("/orders", {"client_id": "shop-agent", "act": {"sub": "agent-9"}}, 403, "the token's actor is not accepted here"),
    ("/orders", {"client_id": "shop-agent"}, 403, "the token's actor is not accepted here"),
    ("/orders", {"client_id": "shop-agent", "act": {"sub": "agent-7", "act": {"sub": "planner"}}}, 403,
     "the token's delegation chain is too deep"),
    ("/payouts", {"act": {"sub": "agent-7"}}, 403, "delegated tokens (act) are not accepted here"),
    ("/payouts", {}, 200, "the user in person"),
])
def test_delegation_rules_say_which_agent_may_act_for_whom(delegation_envoy, keys, path, extra, status, why):
    resp = delegation_envoy.request(path, headers=bearer(keys, **extra))
    assert resp.status == status, (why, resp)
    if status == 403:
        assert error_body(resp)["error_description"] == why, resp
        assert f'error_description="{why}"' in resp.header("www-authenticate"), resp


@pytest.fixture(scope="module")
def audiences_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    config = {
        "providers": [rsa_provider(idp, keys)],
        "rules": [
            {"name": "orders", "match": {"paths": ["/orders/*"]}, "requires": {"audiences": ["orders"]}},
            {"name": "billing", "match": {"paths": ["/billing/*"]}, "requires": {"audiences": ["billing"]}},
        ],
    }
    return module_envoys.start(config, idps=[idp])


def test_audiences_per_rule_keep_tokens_from_crossing_services(audiences_envoy, keys):
    """One issuer, two services: a token for orders is refused at billing, as an invalid token."""
    for_orders = {"Authorization": f"Bearer {keys.mint('RS256', claims(ISS_RSA, audience=['orders', 'web']))}"}
    assert audiences_envoy.request("/orders/1", headers=for_orders).status == 200
    crossed = audiences_envoy.request("/billing/1", headers=for_orders)
    assert_invalid_token(crossed, "token audience is not accepted for this resource")
