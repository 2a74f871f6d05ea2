"""The audit log in Envoy's log: one JSON line per decision, with what an operator needs to
understand it (decision, status, reason, rule, provider, iss, sub, kid, alg, request id, method,
path) and nothing secret (no token, no signature, no query string). Refusals are always logged,
allowed requests as sampled; `level: off` logs nothing."""

import time
import uuid

import jwt
import pytest

from observe import AuditWindow, audit_lines, start_together, wait_for_audit
from rule_checks import wait_for_log
from tokens import generate_key

ISS_ORDERS = "https://orders.idp.test"
ISS_QUERY = "https://query.idp.test"
AUDIENCE = "api"
PARAM = "access_token"
UNSAFE_HEADER = "x-note"


def claims(issuer, lifetime=600, **extra):
    now = int(time.time())
    return {"iss": issuer, "sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + lifetime,
            "jti": uuid.uuid4().hex, **extra}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def audit_config(keys, audit):
    return {
        "providers": [
            {"issuer": ISS_ORDERS, "name": "orders-idp", "audiences": [AUDIENCE], "jwks": keys.jwks_string(["RS256"]),
             "outputClaimToHeaders": [{"header": UNSAFE_HEADER, "claim": "note"}]},
            {"issuer": ISS_QUERY, "name": "query-idp", "audiences": [AUDIENCE], "jwks": keys.jwks_string(["ES256"]),
             "fromParams": [PARAM]},
        ],
        "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"name": "admin", "match": {"paths": ["/admin/*"]}, "deny": True},
            {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
             "requires": {"scopes": ["orders:write"]}},
        ],
        "audit": audit,
    }


@pytest.fixture(scope="module")
def envoys(module_envoys, keys):
    """One worker each, so that log order is request order (see `AuditWindow`)."""
    built = {
        "all": module_envoys.build(audit_config(keys, {"allowedSampleRate": 1})),
        "refusals": module_envoys.build(audit_config(keys, {"level": "warn", "allowedSampleRate": 0})),
        "off": module_envoys.build(audit_config(keys, {"level": "off", "allowedSampleRate": 1})),
    }
    start_together(built.values())
    return built


@pytest.fixture
def envoy(envoys):
    return envoys["all"]


def only_line(envoy, send):
    """The audit lines of what `send()` sends: there must be exactly one."""
    window = AuditWindow(envoy)
    send()
    lines = window.close()
    assert len(lines) == 1, f"expected one audit line, got {[line.raw for line in lines]}"
    return lines[0]


def test_an_allowed_request_is_one_line_naming_who_and_what(envoy, keys):
    token = keys.mint("RS256", claims(ISS_ORDERS))

    def send():
        resp = envoy.request("/items/7?page=2&sort=asc", headers={**bearer(token), "x-request-id": "req-allow-1"})
        assert resp.status == 200, resp

    line = only_line(envoy, send)
    assert line.level == "warning", "the default level: visible in an Istio sidecar"
    assert line.fields == {
        "decision": "allow", "status": 200, "reason": "valid", "rule": None, "provider": "orders-idp",
        "iss": ISS_ORDERS, "tenant": None, "sub": "alice", "client_id": None, "actors": None, "kid": keys["RS256"].kid, "alg": "RS256", "cached": False,
        "request_id": "req-allow-1", "method": "GET", "path": "/items/7",
    }


def test_a_refused_scope_names_the_rule_and_the_method(envoy, keys):
    # An agent acting for alice (RFC 8693): the line says who acts for whom.
    token = keys.mint("RS256", claims(ISS_ORDERS, scope="orders:read", client_id="agent-app",
                                      act={"sub": "agent-7", "act": {"sub": "planner"}}))

    def send():
        resp = envoy.request("/orders/7", method="POST", body=b"{}", headers={**bearer(token), "x-request-id": "req-scope"})
        assert resp.status == 403, resp

    assert only_line(envoy, send).fields == {
        "decision": "deny", "status": 403, "reason": "scope", "rule": "orders-write", "provider": "orders-idp",
        "iss": ISS_ORDERS, "tenant": None, "sub": "alice", "client_id": "agent-app", "actors": ["agent-7", "planner"], "kid": keys["RS256"].kid, "alg": "RS256", "cached": False,
        "request_id": "req-scope", "method": "POST", "path": "/orders/7",
    }


def test_a_deny_rule_refuses_before_looking_at_the_token(envoy, keys):
    def send():
        resp = envoy.request("/admin/users", headers={**bearer(keys.mint("RS256", claims(ISS_ORDERS))),
                                                      "x-request-id": "req-admin"})
        assert resp.status == 403, resp

    assert only_line(envoy, send).fields == {
        "decision": "deny", "status": 403, "reason": "deny_rule", "rule": "admin", "provider": None,
        "iss": None, "tenant": None, "sub": None, "client_id": None, "actors": None, "kid": None, "alg": None, "cached": False,
        "request_id": "req-admin", "method": "GET", "path": "/admin/users",
    }


def test_an_anonymous_pass_is_logged_as_anonymous(envoy):
    def send():
        resp = envoy.request("/public/page", headers={"x-request-id": "req-anon"})
        assert resp.status == 200, resp

    assert only_line(envoy, send).fields == {
        "decision": "allow", "status": 200, "reason": "anonymous", "rule": "public", "provider": None,
        "iss": None, "tenant": None, "sub": None, "client_id": None, "actors": None, "kid": None, "alg": None, "cached": False,
        "request_id": "req-anon", "method": "GET", "path": "/public/page",
    }


def refused_tokens(keys):
    forger = generate_key("RS256", kid=keys["RS256"].kid)
    return {
        "missing": (None, None, None),
        "expired": (keys.mint("RS256", claims(ISS_ORDERS, lifetime=-600)), "orders-idp", ISS_ORDERS),
        "signature": (jwt.encode(claims(ISS_ORDERS), forger.private, algorithm="RS256", headers={"kid": forger.kid}),
                      "orders-idp", ISS_ORDERS),
        "audience": (keys.mint("RS256", claims(ISS_ORDERS, aud="other")), "orders-idp", ISS_ORDERS),
        # An issuer no provider has selects no provider; the line still says what the token claimed.
        "issuer": (keys.mint("RS256", claims("https://unknown.idp.test")), None, "https://unknown.idp.test"),
        "malformed": ("not-a-jwt", None, None),
    }


@pytest.mark.parametrize("reason", ["missing", "expired", "signature", "audience", "issuer", "malformed"])
def test_each_invalid_token_is_one_401_line_with_its_reason(envoy, keys, reason):
    token, provider, iss = refused_tokens(keys)[reason]
    request_id = f"req-{reason}"
    headers = {"x-request-id": request_id, **(bearer(token) if token else {})}

    def send():
        assert envoy.request("/items", headers=headers).status == 401

    line = only_line(envoy, send)
    assert {k: line.fields[k] for k in ("decision", "status", "reason", "provider", "iss", "request_id")} == {
        "decision": "deny", "status": 401, "reason": reason, "provider": provider, "iss": iss,
        "request_id": request_id}
    if token:
        assert token.split(".")[-1] not in line.raw


def test_a_token_answered_from_the_cache_says_so(envoy, keys):
    token = keys.mint("RS256", claims(ISS_ORDERS))
    window = AuditWindow(envoy)
    for _ in range(2):
        assert envoy.request("/items", headers=bearer(token)).status == 200
    assert [line.fields["cached"] for line in window.close()] == [False, True]


def test_without_x_request_id_the_line_has_the_id_envoy_gave_the_request(envoy, keys):
    resp = envoy.request("/items", headers=bearer(keys.mint("RS256", claims(ISS_ORDERS))))
    request_id = resp.upstream["headers"]["x-request-id"]
    assert wait_for_audit(envoy, request_id).fields["reason"] == "valid"


def test_a_request_id_with_quotes_and_backslashes_stays_one_json_line(envoy):
    request_id = 'evil" , "decision": "allow\\'
    envoy.request("/items", headers={"x-request-id": request_id})
    line = wait_for_audit(envoy, request_id)
    assert line.fields["decision"] == "deny"


def test_a_token_in_the_query_string_is_not_logged(envoy, keys):
    token = keys.mint("ES256", claims(ISS_QUERY))

    def send():
        resp = envoy.request("/items", query={"page": "secret-page", PARAM: token}, headers={"x-request-id": "req-query"})
        assert resp.status == 200, resp
        assert token not in resp.upstream["path"]

    line = only_line(envoy, send)
    assert line.fields["provider"] == "query-idp" and line.fields["reason"] == "valid"
    assert line.fields["path"] == "/items"
    for secret in (token, token.split(".")[-1], PARAM, "secret-page"):
        assert secret not in line.raw


def test_a_refused_token_in_the_query_string_is_not_logged(envoy, keys):
    token = keys.mint("ES256", claims(ISS_QUERY, lifetime=-600))

    def send():
        resp = envoy.request("/items", query={PARAM: token}, headers={"x-request-id": "req-query-expired"})
        assert resp.status == 401, resp

    line = only_line(envoy, send)
    assert (line.fields["reason"], line.fields["path"]) == ("expired", "/items")
    for secret in (token, token.split(".")[-1], PARAM):
        assert secret not in line.raw


def test_nothing_from_the_token_but_the_named_claims(envoy, keys):
    token = keys.mint("RS256", claims(ISS_ORDERS, email="alice@example.com", scope="orders:read"))

    def send():
        assert envoy.request("/items", headers=bearer(token)).status == 200

    raw = only_line(envoy, send).raw
    for secret in (token, token.split(".")[1], token.split(".")[2], "alice@example.com", "orders:read"):
        assert secret not in raw


# --------------------------------------------------------------------------- sampling and level


def test_sample_rate_0_logs_refusals_but_no_allowed_request(envoys, keys):
    envoy = envoys["refusals"]
    window = AuditWindow(envoy)
    assert envoy.request("/items", headers=bearer(keys.mint("RS256", claims(ISS_ORDERS)))).status == 200
    assert envoy.request("/public/page").status == 200
    assert envoy.request("/items", headers={"x-request-id": "refused-1"}).status == 401
    lines = window.close()
    assert [line.fields["request_id"] for line in lines] == ["refused-1"]
    assert lines[0].level == "warning", "audit.level warn"


def test_level_off_logs_nothing(envoys, keys):
    envoy = envoys["off"]
    assert envoy.request("/items", headers=bearer(keys.mint("RS256", claims(ISS_ORDERS)))).status == 200
    assert envoy.request("/items").status == 401
    # One worker logs in order: once this request's warning is there, the lines above would be too.
    resp = envoy.request("/items", headers=bearer(keys.mint("RS256", claims(ISS_ORDERS, note="line\nbreak"))))
    assert resp.status == 200, resp
    wait_for_log(envoy, "mesh-oauth", UNSAFE_HEADER)
    assert audit_lines(envoy) == []
