"""Metrics as an operator scrapes them: after a known mix of requests against a fresh Envoy with
two workers, every `mesh_oauth` counter and gauge in `/stats` and `/stats/prometheus` is exactly
what the mix implies, and nothing else is there. Plus the stats matcher Istio needs to keep them."""

import time

import jwt
import pytest

from observe import (audit_lines, config_hash_gauge, is_gauge, prometheus, prometheus_name, requests_on_one_connection,
                     start_together, stats)
from tokens import generate_key, bearer, unique_claims

ISS_ORDERS = "https://orders.idp.test"
ORDERS = "orders_idp"  # `name: orders-idp` as a metric segment
ORDERS_ALGS = ["RS256", "ES256", "EdDSA"]
ISS_PARTNER = "https://partner.idp.test"
PARTNER = "https___partner_idp_test"  # no `name`: the issuer, every non-alphanumeric turned into `_`
PARTNER_ALGS = ["PS256", "ES384"]
AUDIENCE = "api"




def metrics_config(idp, keys):
    idp.set_json("/orders/jwks.json", keys.jwks(ORDERS_ALGS))
    idp.set_json("/partner/jwks.json", keys.jwks(PARTNER_ALGS))
    return {
        "providers": [
            {"issuer": ISS_ORDERS, "name": "orders-idp", "audiences": [AUDIENCE], "jwksUri": idp.url + "/orders/jwks.json"},
            {"issuer": ISS_PARTNER, "audiences": [AUDIENCE], "jwksUri": idp.url + "/partner/jwks.json"},
        ],
        "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"name": "admin", "match": {"paths": ["/admin/*"]}, "deny": True},
            {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
             "requires": {"scopes": ["orders:write"]}},
        ],
        "audit": {"allowedSampleRate": 1},
    }


# (what is sent, the status it gets, the counter it moves)
def request_mix(keys):
    forger = generate_key("RS256", kid=keys["RS256"].kid)
    now_plus_hour = unique_claims(ISS_ORDERS)["iat"] + 3600
    return [
        ("valid RS256", "/items", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS))), 200, f"{ORDERS}.allowed"),
        ("valid ES256", "/items", bearer(keys.mint("ES256", unique_claims(ISS_ORDERS))), 200, f"{ORDERS}.allowed"),
        ("valid EdDSA", "/items", bearer(keys.mint("EdDSA", unique_claims(ISS_ORDERS))), 200, f"{ORDERS}.allowed"),
        ("second provider", "/items", bearer(keys.mint("PS256", unique_claims(ISS_PARTNER))), 200, f"{PARTNER}.allowed"),
        ("no token", "/items", {}, 401, "none.denied.missing"),
        ("anonymous route", "/public/page", {}, 200, "none.anonymous"),
        ("anonymous route, valid token", "/public/page", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS))), 200,
         f"{ORDERS}.allowed"),
        ("expired", "/items", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS, lifetime=-600))), 401,
         f"{ORDERS}.denied.expired"),
        ("expired, second provider", "/items", bearer(keys.mint("ES384", unique_claims(ISS_PARTNER, lifetime=-600))), 401,
         f"{PARTNER}.denied.expired"),
        ("not yet valid", "/items", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS, nbf=now_plus_hour))), 401,
         f"{ORDERS}.denied.not_yet_valid"),
        ("bad signature", "/items",
         bearer(jwt.encode(unique_claims(ISS_ORDERS), forger.private, algorithm="RS256", headers={"kid": forger.kid})), 401,
         f"{ORDERS}.denied.signature"),
        ("unknown issuer", "/items", bearer(keys.mint("RS256", unique_claims("https://unknown.idp.test"))), 401,
         "none.denied.issuer"),
        ("wrong audience", "/items", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS, aud="other"))), 401,
         f"{ORDERS}.denied.audience"),
        ("missing scope", "/orders/7", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS, scope="orders:read"))), 403,
         f"{ORDERS}.denied.scope"),
        # A deny rule decides before any token is looked at: no provider.
        ("deny rule", "/admin/users", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS))), 403, "none.denied.deny_rule"),
        ("malformed", "/items", bearer("not-a-jwt"), 401, "none.denied.malformed"),
        ("two tokens", "/items",
         [("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer d.e.f")], 400, "none.denied.invalid_request"),
    ]


# Requests above whose token was parsed (so the token cache was asked): all but the ones
# without a token, the deny rule (decided first), the malformed token and the two tokens.
PARSED_TOKENS = 12
# More valid tokens, each on its own connection, so that both workers surely get some.
SPREAD = 8
REPEATS = 3


@pytest.fixture(scope="module")
def observed(module_envoys, module_idps, keys):
    """Runs the mix once on a fresh two-worker Envoy; the tests check what it left."""
    idp = module_idps()
    config = metrics_config(idp, keys)
    envoy = module_envoys.start(config, idps=[idp], concurrency=2)
    expected: dict[str, int] = {}
    for what, path, headers, status, counter in request_mix(keys):
        method = "POST" if path.startswith("/orders/") else "GET"
        resp = envoy.request(path, method=method, headers=headers, body=b"" if method == "POST" else None)
        assert resp.status == status, f"{what}: {resp}"
        expected[counter] = expected.get(counter, 0) + 1
    for i in range(SPREAD):
        issuer, alg, label = (ISS_ORDERS, "RS256", ORDERS) if i % 2 else (ISS_PARTNER, "ES384", PARTNER)
        resp = envoy.request("/items", headers=bearer(keys.mint(alg, unique_claims(issuer))))
        assert resp.status == 200, resp
        expected[f"{label}.allowed"] += 1
    # One token again and again on one connection: one worker, one cache.
    repeated = bearer(keys.mint("RS256", unique_claims(ISS_ORDERS)))
    for resp in requests_on_one_connection(envoy, "/items", repeated, REPEATS):
        assert resp.status == 200, resp
    expected[f"{ORDERS}.allowed"] += REPEATS
    expected.update({
        "cache.miss": PARSED_TOKENS + SPREAD + 1,
        "cache.hit": REPEATS - 1,
        f"{ORDERS}.key_fetch.success": 1,
        f"{PARTNER}.key_fetch.success": 1,
        f"{ORDERS}.keys_loaded": len(ORDERS_ALGS),
        f"{PARTNER}.keys_loaded": len(PARTNER_ALGS),
        # Envoy 1.40 verifies RS*/ES* signatures for the module (test_host_signatures.py).
        "host_signatures": 1,
        # The policy identity of the plugin `mesh-oauth` (test_policy_layers.py).
        "config_hash.mesh_oauth": config_hash_gauge(config),
    })
    return {
        "envoy": envoy,
        "idp": idp,
        "expected": {f"mesh_oauth.{name}": value for name, value in expected.items()},
        "stats": stats(envoy),
        "prometheus": prometheus(envoy),
    }


def test_every_counter_and_gauge_in_stats_is_exactly_what_the_mix_implies(observed):
    seen = dict(observed["stats"])
    # Defined once a request was held for keys; back to 0 once they came.
    assert seen.pop("mesh_oauth.held_requests", 0) == 0
    # The keys were fetched moments ago, when the mix began.
    for label in (ORDERS, PARTNER):
        assert 0 <= seen.pop(f"mesh_oauth.{label}.keys_age_seconds") < 30
    # One VM per worker, and the main thread's (Envoy also configures one it only validates
    # with): a count that climbs after start-up is a VM Envoy reloaded.
    assert 3 <= seen.pop("mesh_oauth.vm_starts.mesh_oauth") <= 4
    # Every token that verified, on whichever worker: the spread and the repeated one at least.
    assert SPREAD + 1 <= seen.pop("mesh_oauth.cached_tokens") <= PARSED_TOKENS + SPREAD + 1
    assert seen == observed["expected"]


def test_prometheus_shows_the_same_values_without_the_wasmcustom_namespace(observed):
    expected = {prometheus_name(name): value for name, value in observed["expected"].items()}
    seen = dict(observed["prometheus"])
    held = seen.pop("mesh_oauth_held_requests", None)
    assert held is None or held.value == 0
    assert seen.pop("mesh_oauth_vm_starts_mesh_oauth").value >= 3
    assert seen.pop("mesh_oauth_cached_tokens").type == "gauge"
    for label in (ORDERS, PARTNER):
        assert seen.pop(f"mesh_oauth_{label}_keys_age_seconds").type == "gauge"
    assert {name: sample.value for name, sample in seen.items()} == expected
    assert "mesh_oauth_orders_idp_denied_not_yet_valid" in seen, "dots become underscores"
    for name, sample in seen.items():
        assert sample.type == ("gauge" if is_gauge(name) else "counter"), (name, sample)
        assert sample.labels == "{}", f"Envoy's tag extraction must leave {name} whole: {sample}"


def test_two_workers_fetch_each_key_set_once(observed):
    idp = observed["idp"]
    assert idp.count("/orders/jwks.json") == 1
    assert idp.count("/partner/jwks.json") == 1
    assert observed["stats"]["mesh_oauth.orders_idp.key_fetch.success"] == 1
    # Both workers checked tokens against the keys of that one fetch (the log names the thread).
    threads = {line.thread for line in audit_lines(observed["envoy"]) if line.fields["provider"] is not None}
    assert len(threads) == 2, f"tokens were checked on threads {threads} only: the mix never reached both workers"


def test_a_repeated_token_is_one_miss_then_hits(observed):
    assert observed["stats"]["mesh_oauth.cache.hit"] == REPEATS - 1


# --------------------------------------------------------------------------- Istio's stats matcher

# Istio's sidecar bootstrap keeps only the stats its `stats_matcher.inclusion_list` names; the
# required prefixes (pkg/bootstrap/config.go) end with `wasm`, and `proxyStatsMatcher` adds to
# them. Envoy matches the canonical name (`wasmcustom.mesh_oauth...`), not the Prometheus one.
ISTIO_REQUIRED_PREFIXES = ["cluster_manager", "listener_manager", "server", "cluster.xds-grpc"]
MATCHERS = {
    "istio-default": (ISTIO_REQUIRED_PREFIXES + ["wasm"], True),
    "proxyStatsMatcher-prefix": (ISTIO_REQUIRED_PREFIXES + ["wasmcustom.mesh_oauth"], True),
    "prometheus-name-as-prefix": (ISTIO_REQUIRED_PREFIXES + ["mesh_oauth"], False),
}


@pytest.fixture(scope="module")
def matcher_envoys(module_envoys, keys):
    config = {"providers": [{"issuer": ISS_ORDERS, "jwks": keys.jwks_string(["RS256"])}]}
    built = {}
    for case, (prefixes, _) in MATCHERS.items():
        envoy = module_envoys.build(config)
        envoy.config["stats_config"] = {
            "stats_matcher": {"inclusion_list": {"patterns": [{"prefix": p} for p in prefixes]}}}
        built[case] = envoy
    start_together(built.values())
    return built


@pytest.mark.parametrize("case", MATCHERS)
def test_istio_stats_matcher_keeps_the_metrics_only_by_their_wasmcustom_name(matcher_envoys, keys, case):
    envoy = matcher_envoys[case]
    _, kept = MATCHERS[case]
    assert envoy.request("/", headers=bearer(keys.mint("RS256", unique_claims(ISS_ORDERS)))).status == 200
    assert envoy.request("/").status == 401
    scraped = {name: sample.value for name, sample in prometheus(envoy).items()}
    assert envoy.admin("/stats?filter=downstream_rq_total").body == b"", "the matcher drops Envoy's own stats"
    if kept:
        assert scraped["mesh_oauth_https___orders_idp_test_allowed"] == 1, scraped
        assert scraped["mesh_oauth_none_denied_missing"] == 1, scraped
    else:
        assert scraped == {}, "Envoy matches the canonical name: this prefix keeps nothing"

