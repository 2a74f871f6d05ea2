"""Authorization rules in a real Envoy: rule order, Istio path/method/host matching, path
normalisation against bypasses, scopes, claim conditions, providers, requiresAny, and the
403/400 answers of the contract.

`unmatched` is `anonymous` here, so a request that slips past its rule reaches upstream (200):
every normalisation test would pass the request if the plugin matched the raw path.

What Envoy 1.40's HTTP connection manager (defaults: no `normalize_path`, no `merge_slashes`,
escaped slashes kept) does to the odd paths: it hands `/public/../admin`, `//admin`, `/%61dmin`,
`/admin%2Fx`, `/admin%5Cx`, `/admin\\x`, `/admin/./x` and `/admin?x=/public/` to the filter and to
upstream unchanged; a path with a `#` fragment it refuses itself (400, empty body) before any
filter runs."""

import pytest

from checks import assert_invalid_request, assert_invalid_token, assert_missing_token, assert_retry_after, error_body
from rule_checks import assert_forbidden, assert_insufficient_scope
from tokens import claims

ISS_MAIN = "https://main.idp.test"
ISS_PARTNER = "https://partner.idp.test"
ISS_PERMISSIONS = "https://permissions.idp.test"
ISS_UNLISTED = "https://unlisted.idp.test"
ISS_KEYLESS = "https://keyless.idp.test"
HOST = "api.example.com"

RULES = [
    {"name": "admin-x", "match": {"paths": ["/admin/x"]}, "deny": True},
    {"name": "admin", "match": {"paths": ["/admin", "/admin/*"]}, "requires": {"scopes": ["admin"]}},
    {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
    {"name": "docs-internal", "match": {"paths": ["/docs/internal/*"]}, "requires": {"scopes": ["docs:internal"]}},
    {"name": "docs", "match": {"paths": ["/docs/*"]}, "allowAnonymous": True},
    {"name": "files", "match": {"paths": ["/files/*"]}, "allowAnonymous": True},
    {"name": "files-private", "match": {"paths": ["/files/private/*"]}, "deny": True},  # never reached
    {"name": "key-files", "match": {"paths": ["*.key"]}, "deny": True},
    {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST", "PUT", "DELETE"]},
     "requires": {"scopes": ["orders:write"]}},
    {"name": "orders-read", "match": {"paths": ["/orders/*"]}, "requires": {"scopes": ["orders:read"]}},
    {"name": "reports", "match": {"paths": ["/reports/*"]}, "requires": {"scopes": ["reports:read", "reports:export"]}},
    {"name": "billing", "match": {"paths": ["/billing/*"]}, "requires": {"scopes": ["billing:read"]}},
    {"name": "ops", "match": {"paths": ["/ops"], "hosts": ["ops.example.com", "*.internal.example.com"]}, "deny": True},
    {"name": "partner", "match": {"paths": ["/partner/*"]}, "requires": {"providers": ["partner"]}},
    {"name": "tier", "match": {"paths": ["/claims/tier"]},
     "requires": {"claims": [{"claim": "org.tier", "anyOf": ["gold", "platinum"]}]}},
    {"name": "team", "match": {"paths": ["/claims/team"]},
     "requires": {"claims": [{"claim": ["https://example.com/team"], "anyOf": ["payments"]}]}},
    {"name": "groups-all", "match": {"paths": ["/claims/groups-all"]},
     "requires": {"claims": [{"claim": "groups", "allOf": ["eng", "oncall"]}]}},
    {"name": "groups-any", "match": {"paths": ["/claims/groups-any"]},
     "requires": {"claims": [{"claim": "groups", "anyOf": ["sre", "oncall"]}]}},
    {"name": "email", "match": {"paths": ["/claims/email"]},
     "requires": {"claims": [{"claim": "email", "present": True}]}},
    {"name": "verified", "match": {"paths": ["/claims/verified"]},
     "requires": {"claims": [{"claim": "email_verified", "anyOf": [True]}]}},
    {"name": "level", "match": {"paths": ["/claims/level"]},
     "requires": {"claims": [{"claim": "level", "anyOf": [3]}]}},
    {"name": "scope-and-claims", "match": {"paths": ["/claims/both"]},
     "requires": {"scopes": ["claims:read"], "claims": [{"claim": "email", "present": True},
                                                       {"claim": "org.tier", "anyOf": ["gold"]}]}},
    {"name": "support", "match": {"paths": ["/support/*"]}, "requiresAny": [
        {"scopes": ["support:admin"]},
        {"providers": ["partner"]},
        {"claims": [{"claim": "groups", "anyOf": ["support"]}]},
    ]},
    {"name": "no-deletes", "match": {"paths": ["*"], "methods": ["DELETE"]}, "deny": True},
]


@pytest.fixture(scope="module")
def envoy(module_envoys, module_idps, keys):
    keyless = module_idps()
    keyless.set_jwks(keys.jwks(["RS256"]), status=500)
    config = {
        "providers": [
            {"name": "main", "issuer": ISS_MAIN, "jwks": keys.jwks_string(["RS256"])},
            {"name": "partner", "issuer": ISS_PARTNER, "jwks": keys.jwks_string(["ES256"])},
            {"name": "permissions", "issuer": ISS_PERMISSIONS, "jwks": keys.jwks_string(["RS256"]),
             "scopeClaims": ["permissions"]},
            {"name": "keyless", "issuer": ISS_KEYLESS, "jwksUri": keyless.jwks_uri},
        ],
        "rules": RULES,
        "unmatched": "anonymous",
    }
    return module_envoys.start(config, idps=[keyless])


def token(keys, issuer=ISS_MAIN, **extra):
    alg = "ES256" if issuer == ISS_PARTNER else "RS256"
    return keys.mint(alg, claims(issuer, audience=None, **extra))


def bearer(keys, issuer=ISS_MAIN, **extra):
    return {"Host": HOST, "Authorization": f"Bearer {token(keys, issuer, **extra)}"}


def anonymous():
    return {"Host": HOST}


# --------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize("raw", [
    "/public/../admin",
    "/public/x/../../admin",
    "/public/%2e%2e/admin",
    "//admin",
    "/%61dmin",
    "/admin?x=/public/",
    "/admin/",
])
def test_odd_spellings_of_admin_still_need_the_admin_rule(envoy, raw):
    assert_missing_token(envoy.request(raw, headers=anonymous()), HOST)


def test_control_the_public_path_itself_passes_anonymously(envoy):
    """Shows that the 401s above come from the admin rule, not from a token needed everywhere."""
    assert envoy.request("/public/index.html", headers=anonymous()).status == 200


def test_single_dot_segment_is_removed_before_matching(envoy):
    """`/admin/./x` is `/admin/x`, which a deny rule refuses; matched raw it would fall under
    `/admin/*` and answer 401 instead."""
    assert_forbidden(envoy.request("/admin/./x", headers=anonymous()))


def test_a_query_cannot_make_a_path_public(envoy):
    assert_missing_token(envoy.request("/admin?next=/public/x", headers=anonymous()), HOST)
    assert envoy.request("/public/x?next=/admin", headers=anonymous()).status == 200


@pytest.mark.parametrize("raw", ["/admin%2Fx", "/admin%2fx", "/admin%5Cx", "/admin%5cx", "/admin\\x",
                                 "/public/a%2Fb"])
def test_encoded_slash_or_backslash_is_a_bad_request(envoy, keys, raw):
    for headers in (anonymous(), bearer(keys, scope="admin")):
        resp = envoy.request(raw, headers=headers)
        assert_invalid_request(resp)
        assert resp.header("www-authenticate") is None, resp


def test_a_fragment_is_refused_by_envoy_before_the_plugin(envoy):
    resp = envoy.request("/admin#x", headers=anonymous())
    assert resp.status == 400, resp
    assert resp.body == b"", "Envoy's HTTP/1 codec answers this, not the plugin"


def test_the_plugin_matches_a_normalised_copy_and_forwards_the_path_as_sent(envoy, keys):
    resp = envoy.request("/public/../admin?q=1", headers=bearer(keys, scope="admin"))
    assert resp.upstream["path"] == "/public/../admin?q=1"


def test_paths_are_case_sensitive(envoy):
    """`/Admin` is another path (as in Istio): no rule matches it, `unmatched: anonymous` applies."""
    assert envoy.request("/Admin", headers=anonymous()).status == 200


# --------------------------------------------------------------------------- path syntax and order


def test_prefix_pattern_does_not_match_the_bare_directory(envoy):
    """`/orders/*` is Envoy's `prefix: /orders/`, as in Istio: `/orders` is not under it."""
    assert envoy.request("/orders", headers=anonymous()).status == 200
    assert_missing_token(envoy.request("/orders/", headers=anonymous()), HOST)


def test_exact_pattern_matches_only_that_path(envoy):
    assert_missing_token(envoy.request("/admin", headers=anonymous()), HOST)
    assert envoy.request("/administrator", headers=anonymous()).status == 200


@pytest.mark.parametrize("path, refused", [
    ("/downloads/server.key", True),
    ("/server.key?download=1", True),
    ("/downloads/server.keys", False),
    ("/downloads/key", False),
])
def test_suffix_pattern(envoy, path, refused):
    resp = envoy.request(path, headers=anonymous())
    if refused:
        assert_forbidden(resp)
    else:
        assert resp.status == 200, resp


def test_any_path_pattern_with_a_method(envoy, keys):
    assert_forbidden(envoy.request("/anything/at/all", method="DELETE", headers=bearer(keys)))
    assert envoy.request("/anything/at/all", headers=anonymous()).status == 200


def test_first_matching_rule_decides_over_a_later_broader_one(envoy, keys):
    assert_missing_token(envoy.request("/docs/internal/plan", headers=anonymous()), HOST)
    assert envoy.request("/docs/internal/plan", headers=bearer(keys, scope="docs:internal")).status == 200
    assert envoy.request("/docs/guide", headers=anonymous()).status == 200


def test_first_matching_rule_decides_over_a_later_narrower_one(envoy):
    assert envoy.request("/files/private/secret", headers=anonymous()).status == 200


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_methods_select_the_write_rule(envoy, keys, method):
    resp = envoy.request("/orders/7", method=method, headers=bearer(keys, scope="orders:read"))
    assert_insufficient_scope(resp, HOST, "orders:write")
    assert envoy.request("/orders/7", method=method, headers=bearer(keys, scope="orders:write")).status == 200


def test_other_methods_fall_to_the_read_rule(envoy, keys):
    resp = envoy.request("/orders/7", headers=bearer(keys, scope="orders:write"))
    assert_insufficient_scope(resp, HOST, "orders:read")


@pytest.mark.parametrize("host, refused", [
    ("ops.example.com", True),
    ("ops.example.com:8443", True),
    ("OPS.Example.COM", True),
    ("a.internal.example.com", True),
    ("a.b.internal.example.com:80", True),
    ("internal.example.com", False),
    ("notops.example.com", False),
    ("ops.example.com.evil.test", False),
])
def test_hosts_ignore_port_and_case_and_allow_a_wildcard(envoy, host, refused):
    resp = envoy.request("/ops", headers={"Host": host})
    if refused:
        assert_forbidden(resp)
    else:
        assert resp.status == 200, resp


# --------------------------------------------------------------------------- scopes


@pytest.mark.parametrize("granted, missing", [
    ({}, "reports:read reports:export"),
    ({"scope": "openid reports:read"}, "reports:export"),
    ({"scope": "reports:reader reports:export"}, "reports:read"),
    ({"scp": ["reports:read:all", "reports:export"]}, "reports:read"),
    ({"scope": "reports:export", "scp": "reports"}, "reports:read"),
])
def test_missing_scopes_are_named(envoy, keys, granted, missing):
    resp = envoy.request("/reports/q3", headers=bearer(keys, **granted))
    assert_insufficient_scope(resp, HOST, missing)


@pytest.mark.parametrize("granted", [
    {"scope": "reports:read reports:export"},
    {"scope": ["reports:export", "reports:read"]},
    {"scp": "reports:read reports:export"},
    {"scp": ["reports:read", "reports:export"]},
    {"scope": "reports:read", "scp": ["reports:export"]},
    {"scope": ["reports:export"], "scp": "reports:read"},
])
def test_scopes_from_scope_and_scp_as_string_or_list_are_merged(envoy, keys, granted):
    assert envoy.request("/reports/q3", headers=bearer(keys, **granted)).status == 200


def test_the_realm_of_a_403_is_the_requests_host(envoy, keys):
    headers = {**bearer(keys), "Host": "reports.example.com:8443"}
    assert_insufficient_scope(envoy.request("/reports/q3", headers=headers), "reports.example.com:8443",
                              "reports:read reports:export")


def test_scope_claims_of_a_provider_replace_the_default(envoy, keys):
    """This provider reads scopes from `permissions` only: its `scope` claim grants nothing."""
    ok = bearer(keys, ISS_PERMISSIONS, permissions=["billing:read"])
    assert envoy.request("/billing/invoices", headers=ok).status == 200
    ignored = bearer(keys, ISS_PERMISSIONS, scope="billing:read")
    assert_insufficient_scope(envoy.request("/billing/invoices", headers=ignored), HOST, "billing:read")


# --------------------------------------------------------------------------- providers


def test_rule_providers_accept_their_issuer(envoy, keys):
    assert envoy.request("/partner/feed", headers=bearer(keys, ISS_PARTNER)).status == 200


def test_a_token_of_another_configured_provider_is_refused_as_invalid(envoy, keys):
    assert_invalid_token(envoy.request("/partner/feed", headers=bearer(keys, ISS_MAIN)), "issuer")


def test_a_token_of_an_unlisted_issuer_is_refused_as_invalid(envoy, keys):
    """Signed by a key the plugin trusts, but its issuer is in no provider."""
    resp = envoy.request("/partner/feed", headers=bearer(keys, ISS_UNLISTED))
    assert_invalid_token(resp, "issuer")


def test_a_provider_restricted_rule_still_needs_a_token(envoy):
    assert_missing_token(envoy.request("/partner/feed", headers=anonymous()), HOST)


# --------------------------------------------------------------------------- claims


@pytest.mark.parametrize("path, payload", [
    ("/claims/tier", {"org": {"tier": "gold"}}),
    ("/claims/tier", {"org": {"tier": "platinum", "id": 7}}),
    ("/claims/team", {"https://example.com/team": "payments"}),
    ("/claims/groups-all", {"groups": ["oncall", "eng", "web"]}),
    ("/claims/groups-any", {"groups": ["web", "oncall"]}),
    ("/claims/groups-any", {"groups": "sre"}),
    ("/claims/email", {"email": "a@example.com"}),
    ("/claims/verified", {"email_verified": True}),
    ("/claims/level", {"level": 3}),
    ("/claims/level", {"level": [1, 3]}),
], ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v.values())))
def test_claim_condition_holds(envoy, keys, path, payload):
    assert envoy.request(path, headers=bearer(keys, **payload)).status == 200


@pytest.mark.parametrize("path, payload", [
    ("/claims/tier", {"org": {"tier": "silver"}}),
    ("/claims/tier", {"org": "gold"}),
    ("/claims/tier", {"tier": "gold"}),
    ("/claims/tier", {"org.tier": "gold"}),
    ("/claims/team", {"team": "payments"}),
    ("/claims/team", {"https://example.com/team": "Payments"}),
    ("/claims/groups-all", {"groups": ["eng"]}),
    ("/claims/groups-all", {"groups": "eng oncall"}),
    ("/claims/groups-any", {"groups": ["web"]}),
    ("/claims/groups-any", {}),
    ("/claims/email", {}),
    ("/claims/email", {"email": None}),
    ("/claims/verified", {"email_verified": "true"}),
    ("/claims/verified", {"email_verified": 1}),
    ("/claims/level", {"level": "3"}),
    ("/claims/level", {"level": ["3"]}),
], ids=lambda v: v if isinstance(v, str) else repr(v))
def test_failed_claim_condition_is_insufficient_scope_without_scopes(envoy, keys, path, payload):
    assert_insufficient_scope(envoy.request(path, headers=bearer(keys, **payload)), HOST, None)


def test_every_claim_condition_must_hold(envoy, keys):
    full = {"scope": "claims:read", "email": "a@example.com", "org": {"tier": "gold"}}
    assert envoy.request("/claims/both", headers=bearer(keys, **full)).status == 200
    no_tier = {**full, "org": {"tier": "silver"}}
    assert_insufficient_scope(envoy.request("/claims/both", headers=bearer(keys, **no_tier)), HOST, None)


def test_a_missing_scope_is_named_even_when_a_claim_also_fails(envoy, keys):
    resp = envoy.request("/claims/both", headers=bearer(keys, email="a@example.com"))
    assert_insufficient_scope(resp, HOST, "claims:read")


# --------------------------------------------------------------------------- requiresAny


@pytest.mark.parametrize("issuer, payload", [
    (ISS_MAIN, {"scope": "support:admin"}),
    (ISS_PARTNER, {}),
    (ISS_MAIN, {"groups": ["web", "support"]}),
], ids=["scope", "provider", "claim"])
def test_requires_any_passes_when_one_requirement_holds(envoy, keys, issuer, payload):
    assert envoy.request("/support/tickets", headers=bearer(keys, issuer, **payload)).status == 200


def test_requires_any_with_none_holding_names_the_missing_scope(envoy, keys):
    resp = envoy.request("/support/tickets", headers=bearer(keys, scope="support:read", groups=["web"]))
    assert_insufficient_scope(resp, HOST, "support:admin")


def test_requires_any_refuses_an_unlisted_issuer_as_invalid(envoy, keys):
    resp = envoy.request("/support/tickets", headers=bearer(keys, ISS_UNLISTED, scope="support:admin"))
    assert_invalid_token(resp, "issuer")


# --------------------------------------------------------------------------- the Responses table
# (each row once, whole: status, challenge, JSON body; the rows' causes are tested above and in
# test_locations, test_rejections, test_key_fetch)


def test_row_more_than_one_token_is_400_without_a_challenge(envoy, keys):
    resp = envoy.request("/public/x", headers=[("Host", HOST), ("Authorization", f"Bearer {token(keys)}"),
                                               ("Authorization", f"Bearer {token(keys)}")])
    assert_invalid_request(resp)
    assert resp.header("www-authenticate") is None, resp


def test_row_no_token_is_401_with_only_the_realm(envoy):
    resp = envoy.request("/admin", headers=anonymous())
    assert_missing_token(resp, HOST)
    assert error_body(resp)


def test_row_invalid_token_is_401_invalid_token(envoy, keys):
    resp = envoy.request("/public/x", headers={"Host": HOST, "Authorization": "Bearer e30.e30.sig"})
    assert_invalid_token(resp, "malformed", "algorithm", "header")
    assert resp.header("www-authenticate").startswith(f'Bearer realm="{HOST}", error="invalid_token", error_description="')


def test_row_requirement_not_met_is_403_insufficient_scope(envoy, keys):
    resp = envoy.request("/admin", headers=bearer(keys, scope="orders:read"))
    assert_insufficient_scope(resp, HOST, "admin")
    assert resp.header("www-authenticate") == f'Bearer realm="{HOST}", error="insufficient_scope", scope="admin"'


def test_row_no_signing_keys_is_503_with_retry_after_and_no_challenge(envoy, keys):
    resp = envoy.request("/public/x", headers=bearer(keys, ISS_KEYLESS))
    assert_retry_after(resp)
    assert resp.header("www-authenticate") is None, resp
    assert error_body(resp)


# --------------------------------------------------------------------------- deny and CORS


def test_deny_rule_refuses_a_token_that_has_everything(envoy, keys):
    assert_forbidden(envoy.request("/admin/x", headers=bearer(keys, scope="admin")))


def test_cors_preflight_passes_a_rule_that_needs_scopes(envoy):
    resp = envoy.request("/reports/q3", method="OPTIONS", headers={
        "Host": HOST, "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
    assert resp.upstream["method"] == "OPTIONS"


def test_cors_preflight_is_spared_the_token_but_not_a_deny_rule_or_the_path_check(envoy):
    preflight = {"Host": HOST, "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}
    assert_forbidden(envoy.request("/admin/x", method="OPTIONS", headers=preflight))
    resp = envoy.request("/reports%2Fq3", method="OPTIONS", headers=preflight)
    assert resp.status == 400, resp


@pytest.fixture(scope="module")
def no_preflight_envoy(module_envoys, keys):
    config = {"bypassCorsPreflight": False,
              "providers": [{"issuer": ISS_MAIN, "jwks": keys.jwks_string(["RS256"])}]}
    return module_envoys.start(config)


PREFLIGHT = {"Host": HOST, "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}


def test_preflight_bypass_switched_off_needs_a_token(no_preflight_envoy, keys):
    assert_missing_token(no_preflight_envoy.request("/orders", method="OPTIONS", headers=PREFLIGHT), HOST)
    with_token = {**PREFLIGHT, "Authorization": f"Bearer {token(keys)}"}
    resp = no_preflight_envoy.request("/orders", method="OPTIONS", headers=with_token)
    assert resp.upstream["method"] == "OPTIONS"
