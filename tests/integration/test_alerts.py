"""The alert rules (deploy/prometheus/mesh-oauth-rules.yaml) and the dashboard
(deploy/grafana/mesh-oauth-dashboard.json) name only metrics the filter exports: after a request
mix that moves every kind of metric in a real Envoy, each metric selector of theirs matches a
name in `/stats/prometheus`, and each `label_replace` that takes the provider (reason, result,
plugin) out of a name takes the right one. A typo in a rule would otherwise make an alert that can
never fire. promtool (syntax, unit tests on synthetic series) runs in `make alerts-test`."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import jwt
import pytest
import yaml

from harness import LOOPBACK, istio_cluster_name
from observe import prometheus, requests_on_one_connection
from tokens import generate_key, bearer, unique_claims

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "mesh-oauth-rules.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "mesh-oauth-dashboard.json"
MAKEFILE = REPO / "Makefile"

ISS_ORDERS = "https://orders.idp.test"
ISS_DOWN = "https://down.idp.test"  # no `name`: the issuer as label, many `_`
AUDIENCE = "api"
# Metric segments of the providers in the mix; `none`: no provider selected.
PROVIDERS = ("orders_idp", "https___down_idp_test", "none")

# --------------------------------------------------------------------------- PromQL selectors

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# A number or duration (`0.05`, `5m`, `1d`) is one token, so `1h` never leaves an `h`.
_TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][A-Za-z0-9_:]*")
_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
    "bool", "inf", "nan", "sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk",
    "bottomk", "quantile", "count_values",
}
# label_replace(v, "dst", "replacement", "__name__", "regex")
_NAME_LABEL_REPLACE = re.compile(r'"(\w+)",\s*"([^"]*)",\s*"__name__",\s*"([^"]*)"\s*\)')


def selectors_of(expr: str) -> set[tuple[str, str]]:
    """("regex" | "name", text) of every metric selector in a PromQL expression of the forms the
    rules and the dashboard use: `{__name__=~"…"}`, `{__name__="…"}` and bare metric names
    (with or without `{…}`, `[…]`, `offset`). Function and aggregation names are not metrics."""
    found = {("regex" if op == "=~" else "name", text) for op, text in _NAME_MATCHER.findall(expr)}
    rest = _STRING.sub('""', expr)
    rest = re.sub(r"\{[^{}]*\}", "{}", rest)
    rest = re.sub(r"\[[^\[\]]*\]", "[]", rest)
    rest = _LABEL_LIST.sub(r"\1", rest)
    for match in _TOKEN.finditer(rest):
        token = match.group()
        if token[0].isdigit() or token in _NOT_METRICS or rest[match.end():].lstrip().startswith("("):
            continue
        found.add(("name", token))
    return found


def rule_file() -> dict:
    return yaml.safe_load(RULES.read_text())


def rules_exprs() -> list[str]:
    return [rule["expr"] for group in rule_file()["groups"] for rule in group["rules"]]


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_file()["groups"] for rule in group["rules"] if "record" in rule}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        values = re.fullmatch(r"label_values\((.*),\s*\w+\)", query) if isinstance(query, str) else None
        if values:  # the selector only: its second argument is a label name
            exprs.append(values.group(1))
    return exprs


def selectors(exprs: list[str]) -> set[tuple[str, str]]:
    return set().union(*(selectors_of(expr) for expr in exprs))


SOURCES = {"rules": rules_exprs, "dashboard": dashboard_exprs}
# Recorded by the rules themselves (`level:metric:operations`): checked against `record:`, not Envoy.
FILTER_SELECTORS = sorted(
    (source, kind, text)
    for source, exprs in SOURCES.items()
    for kind, text in selectors(exprs())
    if not (kind == "name" and ":" in text)
)
NAME_LABEL_REPLACES = sorted({
    (source, dst, replacement, regex)
    for source, exprs in SOURCES.items()
    for expr in exprs()
    for dst, replacement, regex in _NAME_LABEL_REPLACE.findall(expr)
})


def matches(kind: str, text: str, exported: set[str]) -> list[str]:
    """Exported names the selector selects (Prometheus anchors `=~` at both ends)."""
    if kind == "name":
        return [text] if text in exported else []
    return sorted(name for name in exported if re.fullmatch(text, name))


def name_parts(name: str) -> dict[str, str]:
    """What a correct label_replace takes out of an exported name, known here independently:
    the providers of the mix are known, so the split needs no guessing."""
    for per_plugin in ("mesh_oauth_vm_starts_", "mesh_oauth_config_hash_"):
        if name.startswith(per_plugin):
            return {"plugin": name[len(per_plugin):]}
    for provider in sorted(PROVIDERS, key=len, reverse=True):
        prefix = f"mesh_oauth_{provider}_"
        if name.startswith(prefix):
            rest = name[len(prefix):]
            parts = {"provider": provider}
            for kind, label in (("denied_", "reason"), ("would_deny_", "reason"), ("key_fetch_", "result")):
                if rest.startswith(kind):
                    parts[label] = rest[len(kind):]
            return parts
    return {}  # a global metric (cache, held requests, host signatures): no provider in it


# --------------------------------------------------------------------------- the mix




def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def exported(module_envoys, module_idps, keys) -> set[str]:
    """The mesh_oauth names in `/stats/prometheus` after a mix that moves every kind of metric:
    allowed, anonymous, refusals (signature, unknown_key, expired, missing), 503 keys_unavailable
    after a held request and a failed key fetch, a would-be refusal in report mode, cache hits."""
    idp = module_idps()
    idp.set_jwks(keys.jwks(["RS256"]))
    down = closed_port()
    config = {
        "providers": [
            {"issuer": ISS_ORDERS, "name": "orders-idp", "audiences": [AUDIENCE], "jwksUri": idp.jwks_uri},
            {"issuer": ISS_DOWN, "audiences": [AUDIENCE], "jwksUri": f"http://{LOOPBACK}:{down}/jwks.json",
             "timeout": "500ms"},
        ],
        "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True},
            {"name": "trial", "mode": "report", "match": {"paths": ["/trial/*"]},
             "requires": {"scopes": ["trial:read"]}},
        ],
    }
    envoy = module_envoys.start(config, idps=[idp], extra_clusters={istio_cluster_name(down): down})
    forger = generate_key("RS256", kid=keys["RS256"].kid)
    rotated = generate_key("RS256", kid="rotated-not-published")
    mix = [
        # First: held until the keys came (defines held_requests), then allowed.
        ("valid", "/items", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS))), 200),
        ("no token", "/items", {}, 401),
        ("anonymous route", "/public/page", {}, 200),
        ("forged signature", "/items",
         bearer(jwt.encode(unique_claims(ISS_ORDERS), forger.private, algorithm="RS256", headers={"kid": forger.kid})), 401),
        ("kid not in the key set", "/items",
         bearer(jwt.encode(unique_claims(ISS_ORDERS), rotated.private, algorithm="RS256", headers={"kid": rotated.kid})), 401),
        ("expired", "/items", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS, lifetime=-600))), 401),
        ("key server down", "/items", bearer(keys.mint("RS256", unique_claims(ISS_DOWN))), 503),
        ("report mode, scope missing", "/trial/page", bearer(keys.mint("RS256", unique_claims(ISS_ORDERS))), 200),
    ]
    for what, path, headers, status in mix:
        resp = envoy.request(path, headers=headers)
        assert resp.status == status, f"{what}: {resp}"
    repeated = bearer(keys.mint("RS256", unique_claims(ISS_ORDERS)))
    for resp in requests_on_one_connection(envoy, "/items", repeated, 2):
        assert resp.status == 200, resp
    names = set(prometheus(envoy))
    # The mix did what it says (else "every selector matches" would prove little).
    for name in ("mesh_oauth_orders_idp_allowed", "mesh_oauth_none_anonymous", "mesh_oauth_none_denied_missing",
                 "mesh_oauth_orders_idp_denied_signature", "mesh_oauth_orders_idp_denied_unknown_key",
                 "mesh_oauth_https___down_idp_test_denied_keys_unavailable",
                 "mesh_oauth_https___down_idp_test_key_fetch_failure", "mesh_oauth_orders_idp_key_fetch_success",
                 "mesh_oauth_orders_idp_would_deny_scope", "mesh_oauth_held_requests", "mesh_oauth_cache_hit"):
        assert name in names, f"{name} not exported after the mix: {sorted(names)}"
    return names


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize("source,kind,text", FILTER_SELECTORS, ids=[f"{s}:{t}" for s, _, t in FILTER_SELECTORS])
def test_selector_matches_a_metric_the_filter_exports(exported, source, kind, text):
    assert matches(kind, text, exported), f"{source} selects {text!r}: nothing exported matches; {sorted(exported)}"


@pytest.mark.parametrize("source,dst,replacement,regex", NAME_LABEL_REPLACES,
                         ids=[f"{s}:{d}:{r}" for s, d, _, r in NAME_LABEL_REPLACES])
def test_label_replace_takes_the_right_part_of_each_name(exported, source, dst, replacement, regex):
    taken = [name for name in exported if re.fullmatch(regex, name)]
    assert taken, f"{source}: {regex!r} matches no exported name"
    template = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", replacement)
    for name in taken:
        got = re.fullmatch(regex, name).expand(template)
        assert got == name_parts(name).get(dst), f"{source}: {regex!r} makes {dst}={got!r} of {name}"


def test_names_with_colons_are_recorded_by_the_rules():
    recorded = recorded_names()
    used = {text for kind, text in selectors(rules_exprs() + dashboard_exprs()) if kind == "name" and ":" in text}
    assert used, "the rules aggregate through recorded series"
    assert used <= recorded, f"used but never recorded: {used - recorded}"


def test_a_name_the_filter_does_not_export_is_reported(exported):
    wrong = [("regex", "mesh_oauth_.+_denied_signatur"), ("regex", "mesh_oauth_.+_allowed_total"),
             ("regex", "mesh_oauth_.+_keys_lodaed"), ("name", "mesh_oauth_held_request"),
             ("name", "mesh_oauth_orders_idp_denied")]
    assert [selector for selector in wrong if matches(*selector, exported)] == []
    # ...while the right spellings match, so the check itself can tell the difference.
    assert matches("regex", "mesh_oauth_.+_denied_signature", exported) == ["mesh_oauth_orders_idp_denied_signature"]
    assert matches("name", "mesh_oauth_held_requests", exported)


def test_the_selector_parser_sees_names_regexes_and_skips_functions():
    expr = ('sum by (provider) (rate(mesh_oauth:x{a="b"}[5m] offset 1h)) / on (namespace) group_left () '
            'foo_bar > 3 * avg_over_time({__name__=~"z_(.+)", c="d"}[1d]) or label_replace(q, "p", "$1", "__name__", "q_(.+)")')
    assert selectors_of(expr) == {("name", "mesh_oauth:x"), ("name", "foo_bar"), ("regex", "z_(.+)"), ("name", "q")}
    assert _NAME_LABEL_REPLACE.findall(expr) == [("p", "$1", "q_(.+)")]


# One name per family the issue asks the files to cover; a selector must select each.
RULE_FAMILIES = ["mesh_oauth_p_allowed", "mesh_oauth_p_denied_signature", "mesh_oauth_p_denied_unknown_key",
                 "mesh_oauth_p_denied_keys_unavailable", "mesh_oauth_p_would_deny_scope",
                 "mesh_oauth_p_key_fetch_success", "mesh_oauth_p_key_fetch_failure", "mesh_oauth_p_keys_loaded",
                 "mesh_oauth_p_keys_age_seconds", "mesh_oauth_held_requests", "mesh_oauth_vm_starts_x",
                 "mesh_oauth_config_hash_x"]
DASHBOARD_FAMILIES = RULE_FAMILIES + ["mesh_oauth_p_anonymous", "mesh_oauth_cache_hit", "mesh_oauth_cache_miss"]


@pytest.mark.parametrize("source,families", [("rules", RULE_FAMILIES), ("dashboard", DASHBOARD_FAMILIES)])
def test_every_metric_family_is_covered(source, families):
    found = selectors(SOURCES[source]())
    uncovered = [name for name in families if not any(matches(kind, text, {name}) for kind, text in found)]
    assert uncovered == [], f"{source} has no selector for {uncovered}"


def test_the_alerts_the_issue_asks_for_are_there_with_severity_and_guidance():
    alerts = {rule["alert"]: rule for group in rule_file()["groups"] for rule in group["rules"] if "alert" in rule}
    assert set(alerts) == {
        "MeshOAuthKeysNotRefreshed", "MeshOAuthKeysStale", "MeshOAuthKeyFetchFailing", "MeshOAuthKeysUnavailable",
        "MeshOAuthRequestsHeld", "MeshOAuthKeyRefusalsRising", "MeshOAuthWouldDeny", "MeshOAuthVmRestarting",
        "MeshOAuthPolicyDrift"}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"] and "kubectl logs" in rule["annotations"]["description"], name


def test_dashboard_uses_its_datasource_variable():
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert [v["query"] for v in board["templating"]["list"] if v["type"] == "datasource"] == ["prometheus"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]


def test_make_test_runs_promtool_on_the_rules():
    makefile = MAKEFILE.read_text()
    assert re.search(r"^test:.*\balerts-test\b", makefile, re.M), "`make test` must run alerts-test"
    recipe = re.search(r"^alerts-test:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no alerts-test target"
    assert "promtool check rules deploy/prometheus/mesh-oauth-rules.yaml" in recipe.group(1)
    assert "promtool test rules deploy/prometheus/mesh-oauth-rules.test.yaml" in recipe.group(1)
