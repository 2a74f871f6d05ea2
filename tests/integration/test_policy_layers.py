"""One policy everywhere (issue 31), in real Envoy: a mesh-wide baseline plugin and a namespace
plugin chained as Istio chains two WasmPlugins (by `priority`: the baseline first), and the
policy identity each plugin reports.

- A request must satisfy both: each refusal comes from the plugin whose rule it breaks (its
  audit line, under its plugin name in Envoy's log), and the namespace plugin cannot undo the
  baseline (a looser lifetime, an `allowAnonymous` over a baseline `deny`, another issuer).
- The baseline forwards the token (`forwardOriginalToken`), the last plugin strips it.
- The two plugins run in separate VMs, as Istio gives each WasmPlugin its own (each one's
  resource version is in its VM's environment), with the same `vm_id` (Istio leaves it empty):
  Envoy's shared data is per `vm_id`, so each issuer's keys are fetched once for both. With
  different `vm_id`s each plugin fetches its own.
- `mesh_oauth.config_hash.<plugin>` is what `mesh-oauth check-config` prints for the same
  configuration (and what Python's own JSON computes), changes on a push, and stays the same for
  a push that only reorders members and changes whitespace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness import wasm_filter, write_discovery_response
from observe import config_hash_gauge, config_sha256, counters_changed, prometheus, stats
from tokens import KeySet, bearer, claims

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MESH_OAUTH_CLI") or REPO / "target" / "debug" / "mesh-oauth")

ALG = "ES256"
ISS_CORP = "https://corp.idp.test"
ISS_PARTNER = "https://partner.idp.test"
# Plugin names as Istio writes them: `<namespace>.<WasmPlugin name>`.
BASELINE = "istio-system.mesh-baseline"
NAMESPACE = "shop.orders"
BASELINE_LABEL = "istio_system_mesh_baseline"
NAMESPACE_LABEL = "shop_orders"
AUDIT = {"level": "info", "allowedSampleRate": 1}


def baseline_config(idp) -> dict[str, Any]:
    """Trusted issuers, a one-hour lifetime cap, a deny rule every workload must have; the
    token is handed on to the namespace plugin. What needs a token is the namespace's call."""
    return {
        "providers": [{"issuer": ISS_CORP, "name": "mesh-corp", "jwksUri": idp.url + "/corp/jwks.json",
                       "maxLifetimeSeconds": 3600, "forwardOriginalToken": True}],
        "rules": [{"name": "no-debug", "match": {"paths": ["/debug/*"]}, "deny": True}],
        "unmatched": "anonymous",
        "audit": AUDIT,
    }


def namespace_config(idp) -> dict[str, Any]:
    """The workload's own rules, and three attempts to undo the baseline: a longer lifetime, a
    partner issuer the baseline does not trust, and `/debug/*` open to anyone."""
    return {
        "providers": [
            {"issuer": ISS_CORP, "name": "orders-corp", "audiences": ["orders"], "jwksUri": idp.url + "/corp/jwks.json",
             "maxLifetimeSeconds": 86400},
            {"issuer": ISS_PARTNER, "name": "orders-partner", "audiences": ["orders"],
             "jwksUri": idp.url + "/partner/jwks.json"},
        ],
        "rules": [
            {"name": "debug-open", "match": {"paths": ["/debug/*"]}, "allowAnonymous": True},
            {"name": "write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
             "requires": {"scopes": ["orders:write"]}},
        ],
        "unmatched": "authenticated",
        "audit": AUDIT,
    }


# Istio's shape: one VM per WasmPlugin (the environment differs), one `vm_id` for all.
BASELINE_FILTER = {"plugin_name": BASELINE, "env": {"PLUGIN_RESOURCE_VERSION": "1"}}


def namespace_filter(idp, **args: Any) -> dict[str, Any]:
    return {"plugin_config": namespace_config(idp), "plugin_name": NAMESPACE,
            "env": {"PLUGIN_RESOURCE_VERSION": "2"}, **args}


def serve_keys(idp, keys: KeySet) -> None:
    idp.set_json("/corp/jwks.json", keys.jwks([ALG]))
    idp.set_json("/partner/jwks.json", keys.jwks([ALG]))


def token(keys: KeySet, issuer: str = ISS_CORP, **extra: Any) -> dict[str, str]:
    return bearer(keys.mint(ALG, claims(issuer, audience=extra.pop("aud", "orders"), jti=uuid.uuid4().hex, **extra)))


# `[…][wasm] [source] wasm log <plugin> <root> <vm>: {json}`
_PLUGIN_AUDIT = re.compile(r"\[wasm\] .*? wasm log (\S+) \S+ \S*: (\{.*\})$")


def decisions(envoy, request_id: str) -> dict[str, str]:
    """Each plugin's decision on one request (a plugin the request never reached: absent)."""
    found = {}
    for line in envoy.log().splitlines():
        match = _PLUGIN_AUDIT.search(line)
        if match:
            fields = json.loads(match.group(2))
            if fields.get("request_id") == request_id:
                assert match.group(1) not in found, f"two audit lines of {match.group(1)} for {request_id}"
                found[match.group(1)] = f"{fields['decision']} {fields['reason']}"
    return found


def check_config_hash(tmp_path: Path, config_text: str) -> str:
    """The hash `mesh-oauth check-config` prints for a configuration file."""
    assert CLI.is_file() and os.access(CLI, os.X_OK), f"mesh-oauth CLI not found at {CLI} (set MESH_OAUTH_CLI)"
    path = tmp_path / f"config-{uuid.uuid4().hex}.json"
    path.write_text(config_text)
    done = subprocess.run([str(CLI), "check-config", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(r"config sha256: ([0-9a-f]{64})\n", done.stderr)
    assert match, done.stderr
    return match.group(1)


# (what is sent, method, path, headers, status, {plugin: its audit decision})
def request_mix(keys: KeySet) -> list[tuple[str, str, str, dict[str, str], int, dict[str, str]]]:
    return [
        ("valid for both", "GET", "/items", token(keys), 200,
         {BASELINE: "allow valid", NAMESPACE: "allow valid"}),
        ("no token: the baseline lets the namespace decide", "GET", "/items", {}, 401,
         {BASELINE: "allow anonymous", NAMESPACE: "deny missing"}),
        ("two hours: over the baseline's cap, within the namespace's", "GET", "/items",
         token(keys, lifetime=7200), 401, {BASELINE: "deny lifetime"}),
        ("a partner token: the namespace trusts it, the baseline does not", "GET", "/items",
         token(keys, ISS_PARTNER), 401, {BASELINE: "deny issuer"}),
        ("the baseline's deny rule under the namespace's allowAnonymous", "GET", "/debug/vars", token(keys), 403,
         {BASELINE: "deny deny_rule"}),
        ("the namespace's scope rule", "POST", "/orders/7", token(keys, scope="orders:read"), 403,
         {BASELINE: "allow valid", NAMESPACE: "deny scope"}),
        ("the namespace's audience", "GET", "/items", token(keys, aud="billing"), 401,
         {BASELINE: "allow valid", NAMESPACE: "deny audience"}),
    ]


# The counters the mix moves, per plugin: each plugin names its provider (`mesh-corp`,
# `orders-corp`), so request counters are per plugin; `none` (no provider) is shared.
MIX_COUNTERS = {
    "mesh_oauth.mesh_corp.allowed": 3,
    "mesh_oauth.mesh_corp.denied.lifetime": 1,
    "mesh_oauth.none.anonymous": 1,
    "mesh_oauth.none.denied.issuer": 1,
    "mesh_oauth.none.denied.deny_rule": 1,
    "mesh_oauth.orders_corp.allowed": 1,
    "mesh_oauth.orders_corp.denied.scope": 1,
    "mesh_oauth.orders_corp.denied.audience": 1,
    "mesh_oauth.none.denied.missing": 1,
}


@pytest.fixture(scope="module")
def layered(module_envoys, module_idps, keys):
    idp = module_idps()
    key = KeySet([ALG])
    serve_keys(idp, key)
    envoy = module_envoys.build(baseline_config(idp), idps=[idp], concurrency=2, filter_args=BASELINE_FILTER,
                                chain=[namespace_filter(idp)]).start()
    return envoy, idp, key


def test_a_request_must_satisfy_both_plugins_and_each_refusal_comes_from_its_plugin(layered):
    envoy, idp, keys = layered
    # Keys in and every VM configured before counting.
    assert envoy.request("/items", headers=token(keys), timeout=10).status == 200
    before = stats(envoy)
    for what, method, path, headers, status, expected in request_mix(keys):
        request_id = str(uuid.uuid4())
        resp = envoy.request(path, method=method, headers={**headers, "x-request-id": request_id},
                             body=b"" if method == "POST" else None)
        assert resp.status == status, f"{what}: {resp}"
        assert decisions(envoy, request_id) == expected, what
    assert counters_changed(before, stats(envoy)) == MIX_COUNTERS


def test_the_baseline_hands_the_token_on_and_the_last_plugin_strips_it(layered):
    envoy, _, keys = layered
    request_id = str(uuid.uuid4())
    resp = envoy.request("/items", headers={**token(keys), "x-request-id": request_id})
    assert resp.status == 200, resp
    # The namespace plugin verified the token itself: the baseline left it on the request.
    assert decisions(envoy, request_id) == {BASELINE: "allow valid", NAMESPACE: "allow valid"}
    assert "authorization" not in resp.upstream["headers"], resp.upstream


def test_both_plugins_share_one_key_fetch_per_issuer(layered):
    envoy, idp, keys = layered
    assert envoy.request("/items", headers=token(keys)).status == 200
    # Each plugin has VMs of its own (at least one per worker and the main thread's); plugins
    # that share VMs would show half as many (measured: 4 with one environment, 8 with two).
    active = envoy.admin("/stats?filter=^wasm.envoy.wasm.runtime.v8.active$").body.decode()
    assert int(active.rsplit(":", 1)[1]) >= 2 * (envoy.concurrency + 1), active
    # Yet one fetch per key set for both plugins.
    assert idp.count("/corp/jwks.json") == 1, idp.requests()
    assert idp.count("/partner/jwks.json") == 1, idp.requests()
    seen = stats(envoy)
    starts = {name: value for name, value in seen.items() if name.startswith("mesh_oauth.vm_starts.")}
    assert set(starts) == {f"mesh_oauth.vm_starts.{BASELINE_LABEL}", f"mesh_oauth.vm_starts.{NAMESPACE_LABEL}"}
    # The fetching VM counts the fetch under its own plugin's provider: one success in all.
    fetched = {name: value for name, value in seen.items() if ".key_fetch." in name and "corp" in name}
    assert sum(fetched.values()) == 1 and set(fetched) <= {"mesh_oauth.mesh_corp.key_fetch.success",
                                                           "mesh_oauth.orders_corp.key_fetch.success"}, fetched
    # Both plugins' providers use those keys (their age is reported by every VM).
    assert 0 <= seen["mesh_oauth.mesh_corp.keys_age_seconds"] < 30
    assert 0 <= seen["mesh_oauth.orders_corp.keys_age_seconds"] < 30


def test_each_plugin_reports_the_hash_check_config_prints(layered, tmp_path):
    envoy, idp, _ = layered
    seen = stats(envoy)
    for label, config in ((BASELINE_LABEL, baseline_config(idp)), (NAMESPACE_LABEL, namespace_config(idp))):
        printed = check_config_hash(tmp_path, json.dumps(config, indent=2))
        assert printed == config_sha256(config)
        assert seen[f"mesh_oauth.config_hash.{label}"] == int(printed[:12], 16) == config_hash_gauge(config)
        assert f'configured plugin "{BASELINE if label == BASELINE_LABEL else NAMESPACE}": config sha256 {printed}' \
            in envoy.log()
    samples = prometheus(envoy)
    assert samples[f"mesh_oauth_config_hash_{BASELINE_LABEL}"].type == "gauge"
    assert samples[f"mesh_oauth_config_hash_{BASELINE_LABEL}"].value == config_hash_gauge(baseline_config(idp))


def test_plugins_with_different_vm_ids_fetch_keys_each(envoys, idps, keys):
    idp = idps()
    key = KeySet([ALG])
    serve_keys(idp, key)
    envoy = envoys.build(baseline_config(idp), idps=[idp], filter_args=BASELINE_FILTER,
                         chain=[namespace_filter(idp, vm_id="shop-orders")]).start()
    assert envoy.request("/items", headers=token(key), timeout=10).status == 200
    assert idp.count("/corp/jwks.json") == 2, idp.requests()


def reordered(value: Any) -> Any:
    """The same JSON value with every object's members in reverse order."""
    if isinstance(value, dict):
        return {name: reordered(value[name]) for name in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def ecds_failures(envoy) -> int:
    body = envoy.admin("/stats?filter=extension_config_discovery.*config_fail$").body.decode()
    return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if ":" in line)


def refuse_push(envoy, plugin_config: dict[str, Any]) -> None:
    """A push the plugin refuses (on_configure fails): Envoy counts an ECDS failure."""
    before = ecds_failures(envoy)
    write_discovery_response(envoy.discovery_path,
                             wasm_filter(envoy.module, json.dumps(plugin_config), **envoy.filter_args))
    deadline = time.monotonic() + 10
    while ecds_failures(envoy) == before:
        assert time.monotonic() < deadline, "the push was not refused"
        time.sleep(0.05)


def config_lines(envoy, plugin: str) -> list[str]:
    return re.findall(rf'configured plugin "{re.escape(plugin)}": config sha256 ([0-9a-f]{{64}})', envoy.log())


def test_the_hash_follows_pushes_and_ignores_member_order_and_whitespace(envoys, idps, tmp_path):
    idp = idps()
    key = KeySet([ALG])
    serve_keys(idp, key)
    config = baseline_config(idp)
    envoy = envoys.build(config, idps=[idp], pushable=True, filter_args=BASELINE_FILTER,
                         chain=[namespace_filter(idp)]).start()
    baseline_gauge = f"mesh_oauth.config_hash.{BASELINE_LABEL}"
    namespace_gauge = f"mesh_oauth.config_hash.{NAMESPACE_LABEL}"
    first = stats(envoy)
    assert first[baseline_gauge] == config_hash_gauge(config)
    assert first[namespace_gauge] == config_hash_gauge(namespace_config(idp))

    # The same policy written otherwise: Envoy takes it as a new configuration (the plugin
    # logs its hash again), the hash stays.
    configured = len(config_lines(envoy, BASELINE))
    respelled = json.dumps(reordered(config), indent="\t", separators=(" ,", " :  "))
    assert respelled != json.dumps(config) and json.loads(respelled) == config
    envoy.push(respelled)
    assert len(config_lines(envoy, BASELINE)) > configured
    assert set(config_lines(envoy, BASELINE)) == {config_sha256(config)}
    assert stats(envoy)[baseline_gauge] == first[baseline_gauge]

    # Another policy: another hash, the one check-config prints for it; the namespace
    # plugin's stays.
    tighter = {**config, "providers": [{**config["providers"][0], "maxLifetimeSeconds": 1800}]}
    envoy.push(tighter)
    printed = check_config_hash(tmp_path, json.dumps(tighter))
    after = stats(envoy)
    assert after[baseline_gauge] == int(printed[:12], 16) != first[baseline_gauge]
    assert after[namespace_gauge] == first[namespace_gauge]
    assert envoy.request("/items", headers=token(key, lifetime=2700), timeout=10).status == 401

    # A push the sidecar refuses leaves the policy it enforces, and the hash it reports.
    refuse_push(envoy, {**tighter, "unmatched": "sometimes"})
    assert stats(envoy)[baseline_gauge] == after[baseline_gauge]
    assert envoy.request("/items", headers=token(key, lifetime=2700), timeout=10).status == 401
