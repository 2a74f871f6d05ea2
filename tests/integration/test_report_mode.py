"""Report mode (dry run): with top-level `mode: "report"` nothing is refused, yet every would-be
refusal is counted (`would_deny.<reason>`) and audited (`decision: would_deny`); identity headers
are still never taken from the client. A rule with `mode: "report"` is tried beside enforced ones."""

import time
import uuid

import jwt
import pytest

from observe import AuditWindow, counters_changed, start_together, stats, wait_for_audit
from rule_checks import log_lines, wait_for_log
from tokens import generate_key

ISS = "https://orders.idp.test"
PROVIDER = "orders_idp"
AUDIENCE = "api"
IDENTITY_HEADER = "x-user"


def claims(issuer=ISS, lifetime=600, **extra):
    now = int(time.time())
    return {"iss": issuer, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + lifetime,
            "jti": uuid.uuid4().hex, **extra}


def provider(keys):
    return {"issuer": ISS, "name": "orders-idp", "audiences": [AUDIENCE], "jwks": keys.jwks_string(["RS256"]),
            "outputClaimToHeaders": [{"header": IDENTITY_HEADER, "claim": "sub"}]}


@pytest.fixture(scope="module")
def envoys(module_envoys, keys):
    report = {
        "mode": "report",
        "providers": [provider(keys)],
        "rules": [
            {"name": "admin", "match": {"paths": ["/admin/*"]}, "deny": True},
            {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
             "requires": {"scopes": ["orders:write"]}},
        ],
        "audit": {"allowedSampleRate": 1},
    }
    trial = {
        "providers": [provider(keys)],
        "rules": [
            {"name": "trial", "mode": "report", "match": {"paths": ["/new/*"]}, "requires": {"scopes": ["new:read"]}},
            {"name": "orders", "match": {"paths": ["/orders/*"]}, "requires": {"scopes": ["orders:read"]}},
        ],
        "audit": {"allowedSampleRate": 1},
    }
    built = {"report": module_envoys.build(report), "trial": module_envoys.build(trial)}
    start_together(built.values())
    return built


def would_be_refusals(keys):
    """(token or None, path, method, reason, provider label) of requests enforcement refuses."""
    forger = generate_key("RS256", kid=keys["RS256"].kid)
    return {
        "missing": (None, "/items", "GET", "none"),
        "expired": (keys.mint("RS256", claims(lifetime=-600)), "/items", "GET", PROVIDER),
        "signature": (jwt.encode(claims(), forger.private, algorithm="RS256", headers={"kid": forger.kid}),
                      "/items", "GET", PROVIDER),
        "audience": (keys.mint("RS256", claims(aud="other")), "/items", "GET", PROVIDER),
        "issuer": (keys.mint("RS256", claims("https://unknown.idp.test")), "/items", "GET", "none"),
        "malformed": ("not-a-jwt", "/items", "GET", "none"),
        "scope": (keys.mint("RS256", claims(scope="orders:read")), "/orders/7", "POST", PROVIDER),
        "deny_rule": (keys.mint("RS256", claims()), "/admin/users", "GET", "none"),
    }


@pytest.mark.parametrize("reason", ["missing", "expired", "signature", "audience", "issuer", "malformed", "scope",
                                    "deny_rule"])
def test_report_mode_lets_a_would_be_refusal_through_counted_and_logged(envoys, keys, reason):
    envoy = envoys["report"]
    token, path, method, label = would_be_refusals(keys)[reason]
    request_id = f"report-{reason}"
    headers = {"x-request-id": request_id, IDENTITY_HEADER: "forged-admin"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    before = stats(envoy)

    resp = envoy.request(path, method=method, headers=headers, body=b"{}" if method == "POST" else None)

    seen = resp.upstream["headers"]  # asserts 200
    assert IDENTITY_HEADER not in seen, "a client's identity header never reaches upstream"
    if token:
        assert seen.get("authorization") == f"Bearer {token}", "report mode leaves the token for upstream"
    assert counters_changed(before, stats(envoy)) == {f"mesh_oauth.{label}.would_deny.{reason}": 1}
    line = wait_for_audit(envoy, request_id)
    assert (line.fields["decision"], line.fields["reason"], line.fields["status"]) == ("would_deny", reason, 200)


def test_report_mode_treats_a_valid_token_as_enforcement_would(envoys, keys):
    envoy = envoys["report"]
    token = keys.mint("RS256", claims(sub="bob"))
    before = stats(envoy)
    resp = envoy.request("/items", headers={"Authorization": f"Bearer {token}", IDENTITY_HEADER: "forged-admin",
                                             "x-request-id": "report-valid"})
    assert resp.upstream["headers"][IDENTITY_HEADER] == "bob"
    assert counters_changed(before, stats(envoy)) == {f"mesh_oauth.{PROVIDER}.allowed": 1}
    assert wait_for_audit(envoy, "report-valid").fields["decision"] == "allow"


def test_report_mode_leaves_a_valid_token_for_upstream_too(envoys, keys):
    token = keys.mint("RS256", claims())
    resp = envoys["report"].request("/items", headers={"Authorization": f"Bearer {token}"})
    assert resp.upstream["headers"].get("authorization") == f"Bearer {token}"


def test_report_mode_still_names_the_would_be_answer_in_the_log(envoys, keys):
    """The audit line says what was answered (200); the plugin's own line says what would have been."""
    envoy = envoys["report"]
    message = "report mode: would refuse with 403 (deny_rule)"
    logged_before = len(log_lines(envoy, message))
    window = AuditWindow(envoy)
    envoy.request("/admin/users", headers={"x-request-id": "report-log"})
    assert [line.fields["decision"] for line in window.close()] == ["would_deny"]
    wait_for_log(envoy, message, seen=logged_before)


# --------------------------------------------------------------------------- one rule in report mode


def test_a_rule_in_report_mode_lets_its_refusal_through(envoys, keys):
    envoy = envoys["trial"]
    token = keys.mint("RS256", claims(scope="orders:read"))
    before = stats(envoy)
    resp = envoy.request("/new/feature", headers={"Authorization": f"Bearer {token}", "x-request-id": "trial-scope"})
    assert resp.status == 200, resp
    assert counters_changed(before, stats(envoy)) == {f"mesh_oauth.{PROVIDER}.would_deny.scope": 1}
    line = wait_for_audit(envoy, "trial-scope")
    assert (line.fields["decision"], line.fields["rule"], line.fields["reason"]) == ("would_deny", "trial", "scope")


def test_a_rule_in_report_mode_lets_a_missing_token_through(envoys):
    envoy = envoys["trial"]
    before = stats(envoy)
    assert envoy.request("/new/feature", headers={IDENTITY_HEADER: "forged"}).upstream["headers"].get(IDENTITY_HEADER) is None
    assert counters_changed(before, stats(envoy)) == {"mesh_oauth.none.would_deny.missing": 1}


def test_the_enforced_rule_beside_it_still_refuses(envoys, keys):
    envoy = envoys["trial"]
    token = keys.mint("RS256", claims(scope="new:read"))
    before = stats(envoy)
    resp = envoy.request("/orders/7", headers={"Authorization": f"Bearer {token}", "x-request-id": "trial-enforced"})
    assert resp.status == 403, resp
    assert counters_changed(before, stats(envoy)) == {f"mesh_oauth.{PROVIDER}.denied.scope": 1}
    line = wait_for_audit(envoy, "trial-enforced")
    assert (line.fields["decision"], line.fields["rule"], line.fields["status"]) == ("deny", "orders", 403)


def test_requests_matching_no_rule_are_still_enforced(envoys):
    envoy = envoys["trial"]
    before = stats(envoy)
    assert envoy.request("/elsewhere").status == 401
    assert counters_changed(before, stats(envoy)) == {"mesh_oauth.none.denied.missing": 1}
