"""How refusals look, in a real Envoy: `answers: "minimal"` against the default `full`, the
top-level and per-rule `denyWith` (status, headers, body template, browser login redirect), and
`invalidToken: "ignore"` on a public rule. Whatever the client is told, the audit line and the
metrics keep the exact reason.

What Envoy 1.40 makes of a local reply without a body (minimal answers, the login redirect):
`content-length: 0` and no `content-type`. A request sent without `x-request-id` gets one from
Envoy's connection manager (a UUID) before the filter runs: that is the id the filter sees, in
`{request_id}` and in the audit line."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import uuid

import jwt
import pytest

from checks import refused_start
from observe import counters_changed, start_together, stats, wait_for_audit
from tokens import generate_key

ISS = "https://orders.idp.test"
PROVIDER = "orders-idp"
LABEL = "orders_idp"  # PROVIDER as a metric segment
ISS_KEYLESS = "https://keyless.idp.test"
ISS_UNKNOWN = "https://unknown.idp.test"
AUDIENCE = "api"
REALM = "shop"
IDENTITY_HEADER = "x-user"
SUBJECT = "alice"

SCOPE_RULE = {"name": "orders", "match": {"paths": ["/orders/*"]}, "requires": {"scopes": ["orders:write"]}}

# Literal braces are doubled; the three variables are the only ones there are.
TOP_BODY = '{{"error":"{error}","status":{status},"request_id":"{request_id}"}}'
TOP_DENY_WITH = {
    "status": 404,
    "headers": {"x-refused-by": "mesh-oauth", "cache-control": "no-store"},
    "body": TOP_BODY,
    "contentType": "application/json",
}
RULE_DENY_WITH = {"headers": {"x-rule": "special"}, "body": "special {error} {status} [{request_id}]"}

LOGIN_URL = "https://login.example.com/start"
RULE_LOGIN_PATH = "/sso"
RULE_LOGIN_URL = f"{RULE_LOGIN_PATH}?client=shop"
LOGIN_HEADER = "x-login"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
API_KEY = "sk_live_51HxAbCdEfGhIjKlMnOpQrStUv"

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def claims(issuer=ISS, lifetime=600, **extra):
    now = int(time.time())
    # A jti per token: equal tokens would meet the token cache.
    return {"iss": issuer, "sub": SUBJECT, "aud": AUDIENCE, "iat": now, "exp": now + lifetime,
            "jti": uuid.uuid4().hex, **extra}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def request_id(what):
    return f"{what}-{uuid.uuid4().hex[:8]}"


def configs(keys, keyless):
    providers = [
        {"issuer": ISS, "name": PROVIDER, "audiences": [AUDIENCE], "jwks": keys.jwks_string(["RS256"]),
         "outputClaimToHeaders": [{"header": IDENTITY_HEADER, "claim": "sub"}]},
        # Its key server answers 500: every token of this issuer is 503 keys_unavailable.
        {"issuer": ISS_KEYLESS, "name": "keyless", "jwksUri": keyless.jwks_uri, "timeout": "500ms"},
    ]
    base = {"providers": providers, "realm": REALM}
    return {
        "minimal": {**base, "rules": [SCOPE_RULE], "answers": "minimal"},
        "deny": {**base, "denyWith": TOP_DENY_WITH, "rules": [
            SCOPE_RULE,
            {"name": "special", "match": {"paths": ["/special/*"]}, "requires": {"scopes": ["special"]},
             "denyWith": RULE_DENY_WITH},
        ]},
        "login": {**base, "denyWith": {"headers": {LOGIN_HEADER: "mesh-oauth"}, "login": {"url": LOGIN_URL}},
                  "rules": [
                      SCOPE_RULE,
                      {"name": "custom", "match": {"paths": ["/custom/*"]}, "requires": {},
                       "denyWith": {"login": {"url": RULE_LOGIN_URL, "parameter": "next"}}},
                  ]},
        # The default answers, and invalidToken on public rules.
        "full": {**base, "audit": {"allowedSampleRate": 1}, "rules": [
            SCOPE_RULE,
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True, "invalidToken": "ignore"},
            {"name": "open", "match": {"paths": ["/open/*"]}, "allowAnonymous": True},
            {"name": "private", "match": {"paths": ["/private/*"]}, "requires": {}},
        ]},
    }


@pytest.fixture(scope="module")
def started(module_envoys, module_idps, keys):
    """One single-worker Envoy per configuration, started two at a time (more at once on a
    busy two-core machine can miss the harness's start-up deadline)."""
    keyless = module_idps()
    keyless.set_jwks(keys.jwks(["RS256"]), status=500)
    built = {name: module_envoys.build(config, idps=[keyless]) for name, config in configs(keys, keyless).items()}
    envoys = list(built.values())
    for at in range(0, len(envoys), 2):
        start_together(envoys[at:at + 2])
    return built


@pytest.fixture(scope="module")
def bad_tokens(keys):
    """Tokens that do not verify, fresh on each call: (token, audit/metric reason, provider name,
    metric label). The forger's key has the trusted key's kid: a bad signature, known issuer."""
    forger = generate_key("RS256", kid=keys["RS256"].kid)

    def make():
        return {
            "api-key": (API_KEY, "malformed", None, "none"),
            "expired": (keys.mint("RS256", claims(lifetime=-600)), "expired", PROVIDER, LABEL),
            "signature": (jwt.encode(claims(), forger.private, algorithm="RS256", headers={"kid": forger.kid}),
                          "signature", PROVIDER, LABEL),
            "unknown-issuer": (keys.mint("RS256", claims(ISS_UNKNOWN)), "issuer", None, "none"),
        }
    return make


def valid(keys, **extra):
    return keys.mint("RS256", claims(**extra))


def expired(keys):
    return keys.mint("RS256", claims(lifetime=-600))


def keyless_token(keys):
    return keys.mint("RS256", claims(ISS_KEYLESS))


def challenges(resp):
    return resp.headers_named("www-authenticate")


def assert_no_body(resp):
    assert resp.body == b"", resp
    assert resp.header("content-type") is None, resp
    assert resp.headers_named("content-length") == ["0"], resp


def assert_json_body(resp, expected):
    assert resp.headers_named("content-type") == ["application/json"], resp
    assert resp.headers_named("content-length") == [str(len(resp.body))], resp
    assert resp.json() == expected, resp


def assert_retry_after(resp):
    values = resp.headers_named("retry-after")
    assert len(values) == 1 and values[0].isdigit() and int(values[0]) >= 1, resp


def request_counters(before, after):
    """The per-request counters that moved: the keyless provider's background key fetches
    (failure counts, retried on their own schedule) are no request's doing."""
    return {name: delta for name, delta in counters_changed(before, after).items() if ".key_fetch." not in name}


def audited(envoy, rid):
    fields = wait_for_audit(envoy, rid).fields
    return {k: fields[k] for k in ("decision", "reason", "rule", "provider")}


# --------------------------------------------------------------------------- answers: minimal


@pytest.mark.parametrize("answers", ["full", "minimal"])
def test_an_expired_token(started, keys, answers):
    envoy = started[answers]
    rid = request_id(f"expired-{answers}")
    before = stats(envoy)
    resp = envoy.request("/items", headers={**bearer(expired(keys)), "x-request-id": rid})
    assert resp.status == 401, resp
    if answers == "full":
        assert challenges(resp) == [
            f'Bearer realm="{REALM}", error="invalid_token", error_description="token is expired"'], resp
        assert_json_body(resp, {"error": "invalid_token", "error_description": "token is expired"})
    else:
        assert challenges(resp) == [f'Bearer realm="{REALM}", error="invalid_token"'], resp
        assert_no_body(resp)
    # What the operator sees does not depend on what the client was told.
    assert audited(envoy, rid) == {"decision": "deny", "reason": "expired", "rule": None, "provider": PROVIDER}
    assert wait_for_audit(envoy, rid).fields["status"] == 401
    assert request_counters(before, stats(envoy)) == {f"mesh_oauth.{LABEL}.denied.expired": 1}


@pytest.mark.parametrize("answers", ["full", "minimal"])
def test_missing_scopes_still_name_the_scope(started, keys, answers):
    envoy = started[answers]
    rid = request_id(f"scope-{answers}")
    before = stats(envoy)
    resp = envoy.request("/orders/7", headers={**bearer(valid(keys, scope="orders:read")), "x-request-id": rid})
    assert resp.status == 403, resp
    assert challenges(resp) == [f'Bearer realm="{REALM}", error="insufficient_scope", scope="orders:write"'], resp
    if answers == "full":
        body = resp.json()
        assert resp.headers_named("content-type") == ["application/json"], resp
        assert set(body) == {"error", "error_description"} and body["error"] == "insufficient_scope", resp
        assert isinstance(body["error_description"], str) and body["error_description"], resp
    else:
        assert_no_body(resp)
    assert audited(envoy, rid) == {"decision": "deny", "reason": "scope", "rule": "orders", "provider": PROVIDER}
    assert request_counters(before, stats(envoy)) == {f"mesh_oauth.{LABEL}.denied.scope": 1}


@pytest.mark.parametrize("answers", ["full", "minimal"])
def test_no_token(started, answers):
    envoy = started[answers]
    rid = request_id(f"missing-{answers}")
    resp = envoy.request("/items", headers={"x-request-id": rid})
    assert resp.status == 401, resp
    assert challenges(resp) == [f'Bearer realm="{REALM}"'], resp
    if answers == "full":
        assert resp.json()["error"] == "missing_token", resp
    else:
        assert_no_body(resp)
    assert audited(envoy, rid)["reason"] == "missing"


@pytest.mark.parametrize("answers", ["full", "minimal"])
def test_keys_unavailable_keeps_retry_after(started, keys, answers):
    resp = started[answers].request("/items", headers=bearer(keyless_token(keys)))
    assert resp.status == 503, resp
    assert challenges(resp) == [], resp
    assert_retry_after(resp)
    if answers == "full":
        assert resp.json()["error"] == "temporarily_unavailable", resp
    else:
        assert_no_body(resp)


# --------------------------------------------------------------------------- denyWith


def top_body(error, status, rid):
    return f'{{"error":"{error}","status":{status},"request_id":"{rid}"}}'.encode()


def assert_top_deny_with(resp, status, error, rid):
    assert resp.status == status, resp
    assert resp.headers_named("x-refused-by") == ["mesh-oauth"], resp
    assert resp.headers_named("cache-control") == ["no-store"], resp
    assert resp.headers_named("content-type") == ["application/json"], resp
    assert resp.body == top_body(error, status, rid), resp
    assert json.loads(resp.body) == {"error": error, "status": status, "request_id": rid}
    assert resp.header("x-rule") is None, resp


@pytest.mark.parametrize("case, path, token, error, reason", [
    ("missing", "/items", None, "missing_token", "missing"),
    ("expired", "/items", "expired", "invalid_token", "expired"),
    ("scope", "/orders/7", "read-only", "insufficient_scope", "scope"),
])
def test_status_404_replaces_a_401_or_403_without_a_challenge(started, keys, case, path, token, error, reason):
    envoy = started["deny"]
    rid = request_id(f"deny-{case}")
    tokens = {None: None, "expired": expired(keys), "read-only": valid(keys, scope="orders:read")}
    headers = {"x-request-id": rid, **(bearer(tokens[token]) if token else {})}
    resp = envoy.request(path, headers=headers)
    assert_top_deny_with(resp, 404, error, rid)
    assert challenges(resp) == [], resp
    assert resp.header("retry-after") is None, resp
    assert audited(envoy, rid)["reason"] == reason


def test_status_404_never_lowers_a_503_which_keeps_retry_after(started, keys):
    rid = request_id("deny-keys")
    resp = started["deny"].request("/items", headers={**bearer(keyless_token(keys)), "x-request-id": rid})
    assert_top_deny_with(resp, 503, "temporarily_unavailable", rid)
    assert_retry_after(resp)
    assert challenges(resp) == [], resp


def test_more_than_one_token_on_a_rules_path_uses_the_rules_deny_with(started, keys):
    """configuration.md, `rules[i].denyWith`: it covers every refusal once its `match` matched,
    more than one token included."""
    rid = request_id("deny-two-tokens")
    resp = started["deny"].request("/special/x", headers=[
        ("Authorization", f"Bearer {valid(keys)}"), ("Authorization", f"Bearer {valid(keys)}"),
        ("x-request-id", rid)])
    assert resp.status == 400, resp
    assert resp.headers_named("x-rule") == ["special"], resp
    assert resp.body == f"special invalid_request 400 [{rid}]".encode(), resp
    assert audited(started["deny"], rid)["rule"] == "special"


def test_a_path_refused_before_any_rule_uses_the_top_level_deny_with(started):
    rid = request_id("deny-encoded-slash")
    resp = started["deny"].request("/special%2Fx", headers={"x-request-id": rid})
    assert_top_deny_with(resp, 404, "invalid_request", rid)
    assert audited(started["deny"], rid) == {"decision": "deny", "reason": "invalid_request", "rule": None,
                                             "provider": None}


def test_request_id_is_the_one_envoy_generated_when_the_client_sent_none(started):
    envoy = started["deny"]
    resp = envoy.request("/items")
    assert resp.status == 404, resp
    seen = json.loads(resp.body)["request_id"]
    assert UUID.match(seen), f"expected Envoy's generated UUID, got {seen!r}"
    assert resp.body == top_body("missing_token", 404, seen)
    # The same id the audit line names: the filter saw Envoy's x-request-id.
    assert audited(envoy, seen)["reason"] == "missing"


@pytest.mark.parametrize("sent, shown", [
    ('"><script>', ""),
    ("a" * 129, ""),
    ("id with space", ""),
    ("a" * 128, "a" * 128),
    ("Az09-_.:x", "Az09-_.:x"),
], ids=["markup", "129-chars", "space", "128-chars", "every-safe-character"])
def test_only_a_safe_request_id_enters_the_body(started, sent, shown):
    envoy = started["deny"]
    resp = envoy.request("/items", headers={"x-request-id": sent})
    assert_top_deny_with(resp, 404, "missing_token", shown)
    # The filter did see it (the audit line has it as sent): the body leaves it out.
    assert audited(envoy, sent)["reason"] == "missing"


def test_a_rules_deny_with_replaces_the_top_level_one_whole(started, keys):
    envoy = started["deny"]
    rid = request_id("rule-missing")
    resp = envoy.request("/special/x", headers={"x-request-id": rid})
    # Not merged: no status 404, no top-level headers, body and content type of the rule's own.
    assert resp.status == 401, resp
    assert challenges(resp) == [f'Bearer realm="{REALM}"'], resp
    assert resp.headers_named("x-rule") == ["special"], resp
    assert resp.header("x-refused-by") is None and resp.header("cache-control") is None, resp
    assert resp.headers_named("content-type") == ["text/plain; charset=utf-8"], resp
    assert resp.body == f"special missing_token 401 [{rid}]".encode(), resp

    rid = request_id("rule-scope")
    resp = envoy.request("/special/x", headers={**bearer(valid(keys, scope="orders:write")), "x-request-id": rid})
    assert resp.status == 403, resp
    assert challenges(resp) == [f'Bearer realm="{REALM}", error="insufficient_scope", scope="special"'], resp
    assert resp.headers_named("x-rule") == ["special"], resp
    assert resp.body == f"special insufficient_scope 403 [{rid}]".encode(), resp
    assert audited(envoy, rid) == {"decision": "deny", "reason": "scope", "rule": "special", "provider": PROVIDER}


def test_a_request_the_filter_allows_is_untouched_by_deny_with(started, keys):
    resp = started["deny"].request("/orders/7", headers=bearer(valid(keys, scope="orders:write")))
    assert resp.status == 200, resp
    assert resp.header("x-refused-by") is None, resp
    assert resp.upstream["headers"][IDENTITY_HEADER] == SUBJECT


# --------------------------------------------------------------------------- denyWith.login


def redirect_target(resp):
    """(the Location before its query, the query's parameters in order)."""
    assert resp.status == 302, resp
    locations = resp.headers_named("location")
    assert len(locations) == 1, resp
    base, _, query = locations[0].partition("?")
    return base, urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)


def assert_login_redirect(resp, base, params):
    assert redirect_target(resp) == (base, params), resp
    assert resp.headers_named("cache-control") == ["no-store"], resp
    assert challenges(resp) == [], resp
    assert_no_body(resp)


def browser(**extra):
    return {"Accept": BROWSER_ACCEPT, **extra}


def test_a_browser_without_a_token_is_sent_to_log_in_with_the_path_only(started):
    resp = started["login"].request("/app/page", headers=browser(),
                                    query={"access_token": "secret-in-query", "page": "2"})
    assert_login_redirect(resp, LOGIN_URL, [("return_to", "/app/page")])
    assert resp.headers_named(LOGIN_HEADER) == ["mesh-oauth"], "the configured headers come along"
    location = resp.header("location")
    for leaked in ("secret-in-query", "access_token", "page=2"):
        assert leaked not in location, location


def test_the_path_is_url_encoded_into_one_parameter(started):
    resp = started["login"].request("/app/a&b=c+d%20e;f", headers=browser())
    assert_login_redirect(resp, LOGIN_URL, [("return_to", "/app/a&b=c+d%20e;f")])


@pytest.mark.parametrize("accept", ["text/html", "application/json;q=0.5, TEXT/HTML;q=0.9"])
def test_head_and_any_accept_listing_text_html_are_a_browser(started, accept):
    resp = started["login"].request("/app/page", method="HEAD", headers={"Accept": accept})
    assert redirect_target(resp) == (LOGIN_URL, [("return_to", "/app/page")]), resp


def test_a_browser_with_an_invalid_token_is_sent_to_log_in(started, keys):
    resp = started["login"].request("/app/page", headers=browser(**bearer(expired(keys))))
    assert_login_redirect(resp, LOGIN_URL, [("return_to", "/app/page")])


@pytest.mark.parametrize("path", ["//evil.example/x", "//evil.example/x?y=1"])
def test_a_path_that_names_another_origin_returns_to_the_root(started, path):
    resp = started["login"].request(path, headers=browser())
    assert_login_redirect(resp, LOGIN_URL, [("return_to", "/")])
    assert "evil" not in resp.header("location"), resp


@pytest.mark.parametrize("method, headers", [
    ("GET", {"Accept": "application/json"}),
    ("GET", {}),
    ("POST", browser()),
], ids=["json-client", "no-accept", "post-from-a-browser"])
def test_an_api_client_or_a_post_gets_the_401_itself(started, method, headers):
    resp = started["login"].request("/app/page", method=method, headers=headers,
                                    body=b"" if method == "POST" else None)
    assert resp.status == 401, resp
    assert resp.header("location") is None, resp
    assert challenges(resp) == [f'Bearer realm="{REALM}"'], resp
    assert resp.headers_named(LOGIN_HEADER) == ["mesh-oauth"], resp
    assert resp.json()["error"] == "missing_token", resp


def test_a_403_is_not_redirected(started, keys):
    resp = started["login"].request("/orders/7", headers=browser(**bearer(valid(keys, scope="orders:read"))))
    assert resp.status == 403, resp
    assert resp.header("location") is None, resp
    assert challenges(resp) == [f'Bearer realm="{REALM}", error="insufficient_scope", scope="orders:write"'], resp


def test_a_rules_login_with_its_own_parameter_and_a_url_with_a_query(started):
    resp = started["login"].request("/custom/page", headers=browser(), query={"code": "abc"})
    assert_login_redirect(resp, RULE_LOGIN_PATH, [("client", "shop"), ("next", "/custom/page")])
    assert resp.header(LOGIN_HEADER) is None, "the rule's denyWith replaces the top-level one whole"


# --------------------------------------------------------------------------- invalidToken: ignore


@pytest.mark.parametrize("kind", ["api-key", "expired", "signature", "unknown-issuer"])
def test_a_public_rule_that_ignores_invalid_tokens_serves_them_as_anonymous(started, bad_tokens, kind):
    envoy = started["full"]
    token, reason, provider, label = bad_tokens()[kind]
    rid = request_id(f"ignored-{kind}")
    before = stats(envoy)
    resp = envoy.request("/public/page", headers={**bearer(token), IDENTITY_HEADER: "mallory", "x-request-id": rid})
    assert resp.status == 200, resp
    seen = resp.upstream["headers"]
    assert IDENTITY_HEADER not in seen, f"a forged or token-derived identity reached upstream: {seen}"
    assert seen["authorization"] == f"Bearer {token}", "the ignored token itself stays in the request"
    line = wait_for_audit(envoy, rid)
    assert {k: line.fields.get(k) for k in ("decision", "status", "reason", "ignored", "rule", "provider", "path")} == {
        "decision": "allow", "status": 200, "reason": "token_ignored", "ignored": reason, "rule": "public",
        "provider": provider, "path": "/public/page"}
    if "." in token:
        assert token.split(".")[-1] not in line.raw
    assert request_counters(before, stats(envoy)) == {f"mesh_oauth.{label}.anonymous": 1}


def test_a_valid_token_on_the_ignoring_rule_still_brings_its_identity(started, keys):
    envoy = started["full"]
    rid = request_id("ignore-valid")
    before = stats(envoy)
    resp = envoy.request("/public/page", headers={**bearer(valid(keys)), IDENTITY_HEADER: "mallory", "x-request-id": rid})
    seen = resp.upstream["headers"]
    assert seen[IDENTITY_HEADER] == SUBJECT, seen
    assert "authorization" not in seen, "forwardOriginalToken defaults to false"
    line = wait_for_audit(envoy, rid)
    assert (line.fields["reason"], line.fields["provider"], "ignored" in line.fields) == ("valid", PROVIDER, False)
    assert request_counters(before, stats(envoy)) == {f"mesh_oauth.{LABEL}.allowed": 1}


def test_no_token_on_the_ignoring_rule_is_plain_anonymous(started):
    envoy = started["full"]
    rid = request_id("ignore-none")
    resp = envoy.request("/public/page", headers={IDENTITY_HEADER: "mallory", "x-request-id": rid})
    assert IDENTITY_HEADER not in resp.upstream["headers"]
    line = wait_for_audit(envoy, rid)
    assert (line.fields["reason"], "ignored" in line.fields) == ("anonymous", False)


@pytest.mark.parametrize("path, rule", [("/open/page", "open"), ("/private/x", "private")])
@pytest.mark.parametrize("kind", ["api-key", "expired", "signature", "unknown-issuer"])
def test_without_ignore_the_same_tokens_are_refused(started, bad_tokens, kind, path, rule):
    envoy = started["full"]
    token, reason, provider, label = bad_tokens()[kind]
    rid = request_id(f"strict-{kind}")
    before = stats(envoy)
    resp = envoy.request(path, headers={**bearer(token), "x-request-id": rid})
    assert resp.status == 401, resp
    scheme_params = challenges(resp)
    assert len(scheme_params) == 1 and scheme_params[0].startswith(
        f'Bearer realm="{REALM}", error="invalid_token", error_description="'), resp
    assert resp.json()["error"] == "invalid_token", resp
    assert audited(envoy, rid) == {"decision": "deny", "reason": reason, "rule": rule, "provider": provider}
    assert request_counters(before, stats(envoy)) == {f"mesh_oauth.{label}.denied.{reason}": 1}


def test_ignore_still_refuses_two_tokens_and_still_waits_for_keys(started, keys):
    envoy = started["full"]
    resp = envoy.request("/public/page", headers=[("Authorization", f"Bearer {API_KEY}"),
                                                  ("Authorization", f"Bearer {valid(keys)}")])
    assert resp.status == 400, resp
    assert resp.json()["error"] == "invalid_request", resp
    resp = envoy.request("/public/page", headers=bearer(keyless_token(keys)))
    assert resp.status == 503, resp
    assert_retry_after(resp)


@pytest.mark.parametrize("rule", [
    {"match": {"paths": ["/x/*"]}, "requires": {}, "invalidToken": "ignore"},
    {"match": {"paths": ["/x/*"]}, "deny": True, "invalidToken": "ignore"},
], ids=["requires", "deny"])
def test_ignore_on_a_rule_that_is_not_public_is_refused(envoys, keys, rule):
    config = {"providers": [{"issuer": ISS, "jwks": keys.jwks_string(["RS256"])}], "rules": [rule]}
    log = refused_start(envoys, config)
    assert "Unable to create Wasm plugin mesh-oauth" in log
    plugin_lines = [line for line in log.splitlines() if "wasm log" in line]
    assert any("rules[0].invalidToken" in line and "allowAnonymous" in line for line in plugin_lines), plugin_lines


def test_refuse_on_a_requires_rule_is_accepted(envoys, keys):
    """The counterpart: the same rule with the default spelled out loads."""
    config = {"providers": [{"issuer": ISS, "jwks": keys.jwks_string(["RS256"])}],
              "rules": [{"match": {"paths": ["/x/*"]}, "requires": {}, "invalidToken": "refuse"}]}
    assert envoys.start(config).request("/x/1").status == 401
