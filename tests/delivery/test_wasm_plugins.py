"""The repository's Istio files (wasm-plugin.yaml, deploy/istio/*.yaml, examples/*.yaml) are what
users apply: every object validates against its CRD schema (npm @kubernetes-models/istio, and
@kubernetes-models/gateway-api for Gateway and HTTPRoute, run with Node), every WasmPlugin's
pluginConfig is accepted by the plugin itself (the real module in Envoy), every WasmPlugin is
attached so that Istio really runs it where it is meant to run, and every host the plugin fetches
keys from has, on that proxy, the ServiceEntry, DestinationRule (and at a waypoint the
EnvoyFilter) it needs.

Istio's own rules that the schema package does not carry (the CRD's CEL rules, istiod's
validation and attachment logic) are mirrored here from Istio's code: pilot/pkg/model/
policyattachment.go (targetRefs), extensions.go (`match` modes per listener class),
pkg/config/validation (allowed targetRef kinds), networking/core/cluster.go and waypoint.go (which
outbound clusters a waypoint gets)."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from conftest import REPO
from harness import EnvoyFactory, EnvoyStartError, istio_cluster_name

VALIDATOR = Path(__file__).with_name("validate_istio.mjs")
DEPLOY_FILES = sorted((REPO / "deploy" / "istio").glob("*.yaml"))
FILES = [REPO / "wasm-plugin.yaml", *DEPLOY_FILES, *sorted((REPO / "examples").glob("*.yaml"))]
FILE_IDS = [str(path.relative_to(REPO)) for path in FILES]
DEPLOY_IDS = [str(path.relative_to(REPO)) for path in DEPLOY_FILES]
# Istio policies the examples were converted from: Istio objects too, without a WasmPlugin.
POLICY_FILES = sorted((REPO / "examples" / "migration").glob("*.yaml"))
SCHEMA_FILES = [*FILES, *POLICY_FILES]
SCHEMA_IDS = [str(path.relative_to(REPO)) for path in SCHEMA_FILES]

GATEWAY_API = "gateway.networking.k8s.io"
WAYPOINT_CLASS = "istio-waypoint"
REFERENCED_SERVICES = "envoyfilter.istio.io/referenced-services"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def of_kind(objects: Path | list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    objects = documents(objects) if isinstance(objects, Path) else objects
    return [doc for doc in objects if doc.get("kind") == kind]


def validate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CRD schema's verdict for each object, in order."""
    for package in ("istio", "gateway-api"):
        if not (REPO / "node_modules" / "@kubernetes-models" / package).is_dir():
            pytest.fail(f"@kubernetes-models/{package} not installed: `make node-deps`", pytrace=False)
    result = subprocess.run(["node", str(VALIDATOR)], input=json.dumps(objects), capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert len(verdicts) == len(objects)
    return verdicts


def root_wasm_plugin() -> dict[str, Any]:
    (plugin,) = of_kind(REPO / "wasm-plugin.yaml", "WasmPlugin")
    return plugin


def deploy_objects(name: str) -> list[dict[str, Any]]:
    return documents(REPO / "deploy" / "istio" / name)


def deploy_plugin(name: str) -> dict[str, Any]:
    (plugin,) = of_kind(deploy_objects(name), "WasmPlugin")
    return plugin


def test_the_files_are_there() -> None:
    """Guards the parametrised tests below against silently testing nothing."""
    names = {path.name for path in FILES}
    assert {"wasm-plugin.yaml", "keycloak.yaml", "auth0.yaml", "okta.yaml", "google.yaml",
            "entra-id.yaml", "entra-multi-tenant.yaml", "migration.yaml"} <= names
    assert {path.name for path in DEPLOY_FILES} >= {"ingress-gateway.yaml", "waypoint.yaml",
                                                     "service-waypoint.yaml", "mesh-baseline.yaml",
                                                     "outbound.yaml", "login-gateway.yaml"}
    assert {"login-keycloak.yaml", "login-entra-id.yaml", "login-okta.yaml", "login-google.yaml"} <= names
    for path in FILES:
        assert of_kind(path, "WasmPlugin"), f"{path.name} has no WasmPlugin"
    # The deploy/ manifests are the targetRefs ones; wasm-plugin.yaml keeps the sidecar selector,
    # as does the outbound plugin (a workload's own outbound calls: only a sidecar has them).
    # The mesh baseline has neither: in the root namespace, that is every sidecar.
    for path in DEPLOY_FILES:
        if path.name == "mesh-baseline.yaml":
            continue
        assert all("targetRefs" in p["spec"] or is_outbound(p) for p in of_kind(path, "WasmPlugin")), path.name
    assert "selector" in root_wasm_plugin()["spec"]


# --------------------------------------------------------------------------- the CRD schemas


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=SCHEMA_IDS)
def test_every_object_is_valid_for_istio(path: Path) -> None:
    objects = documents(path)
    problems = [f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {verdict['error']}"
                for obj, verdict in zip(objects, validate(objects)) if not verdict["ok"]]
    assert problems == []


@pytest.mark.parametrize("field, value, named", [
    ("phase", "AUTHENTICATION", "phase"),
    ("failStrategy", "FAIL_SAFE", "failStrategy"),
    # The digest as registries print it: Istio wants the bare hex.
    ("sha256", "sha256:" + "a" * 64, "sha256"),
    ("imagePullPolicy", "IfNotPresentOrLatest", "imagePullPolicy"),
], ids=["phase", "failStrategy", "sha256-with-prefix", "imagePullPolicy"])
def test_schema_refuses_a_wrong_value(field: str, value: str, named: str) -> None:
    plugin = root_wasm_plugin()
    plugin["spec"][field] = value
    (verdict,) = validate([plugin])
    assert not verdict["ok"] and named in verdict["error"]


def test_schema_needs_a_url() -> None:
    plugin = root_wasm_plugin()
    del plugin["spec"]["url"]
    (verdict,) = validate([plugin])
    assert not verdict["ok"] and "url" in verdict["error"]


def test_schema_knows_fail_reload() -> None:
    """FAIL_RELOAD is in the CRD from Istio 1.27 on (the schema package follows it); the FAIL_SAFE
    case above shows the same field does refuse an unknown value."""
    plugin = root_wasm_plugin()
    plugin["spec"]["failStrategy"] = "FAIL_RELOAD"
    (verdict,) = validate([plugin])
    assert verdict["ok"], verdict


def many_refs(spec: dict[str, Any], count: int) -> None:
    spec["targetRefs"] = [{"group": "", "kind": "Service", "name": f"s{i}"} for i in range(count)]


# What Istio's CRD schema says of a targetRef: these prove the schema really checks targetRefs
# (a schema without the field would accept any of them).
@pytest.mark.parametrize("mutate, named", [
    (lambda s: s["targetRefs"][0].pop("kind"), "targetRefs/0 must have required property kind"),
    (lambda s: s["targetRefs"][0].pop("name"), "targetRefs/0 must have required property name"),
    (lambda s: s["targetRefs"][0].update(kind="Gate way"), "targetRefs/0/kind must match pattern"),
    (lambda s: s["targetRefs"][0].update(group="Gateway.Networking"), "targetRefs/0/group must match pattern"),
    (lambda s: many_refs(s, 17), "targetRefs must NOT have more than 16 items"),
    (lambda s: s.update(targetRefs={"kind": "Gateway", "name": "waypoint"}), "targetRefs must be array"),
], ids=["no-kind", "no-name", "kind-pattern", "group-pattern", "17-refs", "not-a-list"])
def test_schema_refuses_a_wrong_target_ref(mutate: Any, named: str) -> None:
    plugin = deploy_plugin("waypoint.yaml")
    mutate(plugin["spec"])
    (verdict,) = validate([plugin])
    assert not verdict["ok"] and named in verdict["error"], verdict


def test_schema_takes_sixteen_target_refs() -> None:
    """The other side of the 17-refs case: the limit is 16, not something lower."""
    plugin = deploy_plugin("waypoint.yaml")
    many_refs(plugin["spec"], 16)
    (verdict,) = validate([plugin])
    assert verdict["ok"], verdict


def test_gateway_api_schema_is_applied() -> None:
    """The Gateway objects are checked against the Gateway API's schema, not waved through."""
    (gateway,) = of_kind(deploy_objects("waypoint.yaml"), "Gateway")
    del gateway["spec"]["gatewayClassName"]
    (verdict,) = validate([gateway])
    assert not verdict["ok"] and "gatewayClassName" in verdict["error"], verdict


# --------------------------------------------------------------------------- istiod's own rules

# istiod's validation (pkg/config/validation: allowedTargetRefs) accepts these (group, kind).
ALLOWED_TARGET_KINDS = {("", "Service"), ("networking.istio.io", "ServiceEntry"),
                        (GATEWAY_API, "Gateway"), (GATEWAY_API, "GatewayClass")}
# The fields of Istio's PolicyTargetReference; the API server refuses or silently drops others.
TARGET_REF_FIELDS = {"group", "kind", "name", "namespace"}


def istiod_refusals(plugin: dict[str, Any]) -> list[str]:
    """What the CRD's CEL rules and istiod's validating webhook refuse, or the API server refuses
    or drops, in a WasmPlugin's attachment; the schema package checks none of it."""
    spec = plugin["spec"]
    problems = []
    if sum(field in spec for field in ("selector", "targetRef", "targetRefs")) > 1:
        problems.append("only one of targetRefs or selector can be set")
    for i, ref in enumerate(spec.get("targetRefs", [])):
        for field in sorted(set(ref) - TARGET_REF_FIELDS):
            problems.append(f"targetRefs[{i}].{field}: not a field of a targetRef")
        if ref.get("namespace"):
            problems.append(f"targetRefs[{i}].namespace: cross namespace referencing is not supported")
        group = "" if ref.get("group", "") == "core" else ref.get("group", "")
        if (group, ref.get("kind")) not in ALLOWED_TARGET_KINDS:
            problems.append(f"targetRefs[{i}]: {group}/{ref.get('kind')} cannot be targeted")
    return problems


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_istiod_accepts_the_attachment(path: Path) -> None:
    problems = [f"{p['metadata']['name']}: {problem}" for p in of_kind(path, "WasmPlugin")
                for problem in istiod_refusals(p)]
    assert problems == []


WRONG_ATTACHMENTS = [
    pytest.param(lambda s: s.update(selector={"matchLabels": {"app": "orders"}}),
                 "only one of targetRefs or selector", id="selector-and-targetRefs"),
    pytest.param(lambda s: s["targetRefs"][0].update(namespace="istio-ingress"),
                 "cross namespace", id="namespace"),
    # sectionName exists in the Gateway API's own policy references, not in Istio's.
    pytest.param(lambda s: s["targetRefs"][0].update(sectionName="mesh"),
                 "targetRefs[0].sectionName: not a field", id="unknown-field"),
    pytest.param(lambda s: s["targetRefs"][0].update(group="apps", kind="Deployment"),
                 "apps/Deployment cannot be targeted", id="deployment"),
]


@pytest.mark.parametrize("mutate, named", WRONG_ATTACHMENTS)
def test_istiod_refuses_a_wrong_attachment(mutate: Any, named: str) -> None:
    plugin = deploy_plugin("waypoint.yaml")
    mutate(plugin["spec"])
    assert any(named in problem for problem in istiod_refusals(plugin)), istiod_refusals(plugin)


@pytest.mark.parametrize("mutate, named", WRONG_ATTACHMENTS)
def test_schema_alone_would_not_catch_a_wrong_attachment(mutate: Any, named: str) -> None:
    """Why the check above exists: the schema package has no CEL rules and keeps unknown fields.
    Should it learn them, this fails and the mirror above can go."""
    plugin = deploy_plugin("waypoint.yaml")
    mutate(plugin["spec"])
    (verdict,) = validate([plugin])
    assert verdict["ok"], verdict


# --------------------------------------------------------------------------- where Istio runs it


class Placement(NamedTuple):
    proxy: str  # "sidecar", "gateway" or "waypoint"
    namespace: str  # the proxy's namespace, where it looks up ServiceEntries and EnvoyFilters
    gateway: str | None  # the Gateway object of a gateway or waypoint


# The traffic direction istiod gives each proxy's HTTP listeners (workloadModeForListenerClass):
# a gateway's are CLIENT, a waypoint's are built as sidecar inbound, SERVER.
LISTENER_MODE = {"sidecar": "SERVER", "gateway": "CLIENT", "waypoint": "SERVER"}


def placements(objects: list[dict[str, Any]], plugin: dict[str, Any]) -> list[Placement]:
    """The proxies a WasmPlugin attaches to, as istiod decides (policyattachment.go). A targetRef
    must name a Gateway in the same file, so that the file says what kind of proxy it is."""
    namespace = plugin["metadata"]["namespace"]
    refs = plugin["spec"].get("targetRefs")
    if not refs:
        return [Placement("sidecar", namespace, None)]
    gateways = {g["metadata"]["name"]: g for g in of_kind(objects, "Gateway")
                if g["metadata"]["namespace"] == namespace}
    waypoints = [name for name, g in gateways.items() if g["spec"]["gatewayClassName"] == WAYPOINT_CLASS]
    found = []
    for ref in refs:
        if (ref.get("group"), ref["kind"]) == (GATEWAY_API, "Gateway"):
            assert ref["name"] in gateways, f"no Gateway {namespace}/{ref['name']} in the file"
            waypoint = gateways[ref["name"]]["spec"]["gatewayClassName"] == WAYPOINT_CLASS
            found.append(Placement("waypoint" if waypoint else "gateway", namespace, ref["name"]))
        elif ref.get("group", "") in ("", "core") and ref["kind"] == "Service":
            # Only a waypoint honours a Service targetRef; it must be in the Service's namespace
            # for the waypoint to load the plugin (before Istio 1.30.3).
            assert len(waypoints) == 1, f"a Service targetRef needs one waypoint in {namespace}"
            found.append(Placement("waypoint", namespace, waypoints[0]))
        else:
            pytest.fail(f"no placement known for targetRef {ref}")
    return found


def applies(match: list[dict[str, Any]] | None, mode: str) -> bool:
    """istiod's matchTrafficSelectors for a listener of this mode (any port)."""
    return not match or any(m.get("mode", "UNDEFINED") in ("UNDEFINED", "CLIENT_AND_SERVER", mode)
                            for m in match)


PEER_FIELDS = {"principals", "notPrincipals", "namespaces", "notNamespaces"}
PEER_KEYS = {"source.principal", "source.namespace"}


def certificate_reads(config: dict[str, Any]) -> list[str]:
    """The parts of a configuration that read the connection's peer certificate."""
    reads = [f"providers[{i}].certificateBound" for i, provider in enumerate(config["providers"])
             if provider.get("certificateBound", "off") != "off"]
    for i, rule in enumerate(config.get("rules", [])):
        match = rule.get("match", {})
        reads += [f"rules[{i}].match.{field}" for field in sorted(PEER_FIELDS & match.keys())]
        reads += [f"rules[{i}].match.when[{j}]" for j, condition in enumerate(match.get("when", []))
                  if condition["key"] in PEER_KEYS]
    return reads


def is_outbound(plugin: dict[str, Any]) -> bool:
    """A plugin that attaches tokens to a workload's outbound calls (`outbound` entries)."""
    return bool(plugin["spec"].get("pluginConfig", {}).get("outbound"))


def attachment_problems(objects: list[dict[str, Any]]) -> list[str]:
    problems = []
    for plugin in of_kind(objects, "WasmPlugin"):
        name, match = plugin["metadata"]["name"], plugin["spec"].get("match")
        if is_outbound(plugin):
            # Only the sidecar's outbound (CLIENT) listeners: its inbound side is not its business.
            for place in placements(objects, plugin):
                if place.proxy != "sidecar":
                    problems.append(f"{name}: outbound entries belong on a sidecar, not a {place.proxy}")
                if not applies(match, "CLIENT"):
                    problems.append(f"{name}: `match` leaves the sidecar's outbound calls without the filter")
                if applies(match, "SERVER"):
                    problems.append(f"{name}: also runs on the sidecar's inbound requests (match mode CLIENT)")
            continue
        for place in placements(objects, plugin):
            if not applies(match, LISTENER_MODE[place.proxy]):
                problems.append(f"{name}: `match` leaves the {place.proxy} without the filter "
                                f"(its traffic is {LISTENER_MODE[place.proxy]})")
            if place.proxy == "sidecar" and applies(match, "CLIENT"):
                problems.append(f"{name}: also runs on the sidecar's outbound calls (match mode SERVER)")
            if place.proxy == "waypoint":
                # A waypoint's HTTP filters get the caller's identity in filter state, not as
                # the connection's certificate: these never see a principal there.
                problems += [f"{name}: {read} reads the peer certificate, which a waypoint's "
                             "filters do not have" for read in certificate_reads(plugin["spec"]["pluginConfig"])]
    return problems


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_istio_runs_the_plugin_where_it_is_attached(path: Path) -> None:
    assert attachment_problems(documents(path)) == []


def test_every_kind_of_proxy_is_covered() -> None:
    """deploy/istio/ and wasm-plugin.yaml together attach to a sidecar, an ingress gateway, a
    whole waypoint and a Service through its waypoint."""
    kinds = set()
    for path in [REPO / "wasm-plugin.yaml", *DEPLOY_FILES]:
        objects = documents(path)
        for plugin in of_kind(objects, "WasmPlugin"):
            refs = {ref["kind"] for ref in plugin["spec"].get("targetRefs", [])}
            kinds |= {(place.proxy, "Service" in refs) for place in placements(objects, plugin)}
    assert kinds >= {("sidecar", False), ("gateway", False), ("waypoint", False), ("waypoint", True)}


@pytest.mark.parametrize("name, mutate, named", [
    # The sidecar's `match` copied to a gateway: the gateway would run without the filter.
    ("ingress-gateway.yaml", lambda s: s.update(match=[{"mode": "SERVER"}]), "leaves the gateway"),
    ("waypoint.yaml", lambda s: s.update(match=[{"mode": "CLIENT"}]), "leaves the waypoint"),
    ("service-waypoint.yaml", lambda s: s["pluginConfig"]["rules"][0]["match"].update(
        principals=["cluster.local/ns/shop/sa/checkout"]), "rules[0].match.principals reads the peer"),
    ("waypoint.yaml", lambda s: s["pluginConfig"]["providers"][0].update(certificateBound="required"),
     "providers[0].certificateBound reads the peer"),
    # The inbound sidecar's `match` copied to the outbound plugin, or none at all.
    ("outbound.yaml", lambda s: s.update(match=[{"mode": "SERVER"}]), "leaves the sidecar's outbound calls"),
    ("outbound.yaml", lambda s: s.pop("match"), "also runs on the sidecar's inbound requests"),
], ids=["gateway-server-only", "waypoint-client-only", "waypoint-principals", "waypoint-certificate",
        "outbound-server-only", "outbound-without-match"])
def test_a_plugin_istio_would_not_run_is_found(name: str, mutate: Any, named: str) -> None:
    objects = deploy_objects(name)
    (plugin,) = of_kind(objects, "WasmPlugin")
    mutate(plugin["spec"])
    assert any(named in problem for problem in attachment_problems(objects)), attachment_problems(objects)


def test_a_sidecar_plugin_without_match_is_found() -> None:
    objects = documents(REPO / "wasm-plugin.yaml")
    (plugin,) = of_kind(objects, "WasmPlugin")
    del plugin["spec"]["match"]
    assert any("outbound calls" in problem for problem in attachment_problems(objects))


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_no_plugin_fails_open(path: Path) -> None:
    """FAIL_OPEN lets every request through unauthenticated when the module fails; an absent
    failStrategy is Istio's FAIL_CLOSE."""
    strategies = {p["metadata"]["name"]: p["spec"].get("failStrategy", "FAIL_CLOSE")
                  for p in of_kind(path, "WasmPlugin")}
    assert set(strategies.values()) <= {"FAIL_CLOSE", "FAIL_RELOAD"}, strategies


# --------------------------------------------------------------------------- the plugin's own validation


PLUGIN_CONFIGS = [
    pytest.param(plugin["spec"]["pluginConfig"], id=f"{path.relative_to(REPO)}:{plugin['metadata']['name']}")
    for path in FILES for plugin in of_kind(path, "WasmPlugin")
]


def logins(plugin_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The `login` entries: one object, or a list of them."""
    login = plugin_config.get("login", [])
    return login if isinstance(login, list) else [login]


def stand_in_env(plugin_config: dict[str, Any]) -> dict[str, str]:
    """A value for each environment variable an outbound or login entry names: a secret, for
    `clientKeyEnv` a fresh P-256 key, for `cookieKeysEnv` a fresh 32-byte key (the plugin checks
    that each is one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    clients = [entry.get("clientCredentials") or entry.get("tokenExchange") or {}
               for entry in plugin_config.get("outbound", [])]
    env = {}
    for client in [*clients, *logins(plugin_config)]:
        if "clientSecretEnv" in client:
            env[client["clientSecretEnv"]] = "stand-in-secret"
        if "clientKeyEnv" in client:
            key = ec.generate_private_key(ec.SECP256R1())
            env[client["clientKeyEnv"]] = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        if "cookieKeysEnv" in client:
            env[client["cookieKeysEnv"]] = base64.b64encode(os.urandom(32)).decode()
    return env


@pytest.mark.parametrize("plugin_config", PLUGIN_CONFIGS)
def test_plugin_accepts_the_plugin_config(envoys: EnvoyFactory, plugin_config: dict[str, Any]) -> None:
    """Envoy starts only if the plugin's on_configure accepted the configuration; a request
    without a token is then answered by the plugin (401, or 403 where nothing is anonymous).
    An outbound configuration lets a request no entry matches through untouched."""
    envoy = envoys.start(plugin_config, filter_args={"env": stand_in_env(plugin_config)})
    response = envoy.request("/no-such-path")
    expected = (200,) if plugin_config.get("outbound") else (401, 403)
    assert response.status in expected, response


# What each deploy/istio manifest's rules decide for a request without a token, with the
# `:authority` a client sends to that proxy: the public host at the gateway, the Service's names
# (with the port) at a waypoint.
AUTHORITY_CASES = {
    "ingress-gateway.yaml": [("orders.example.com", "/orders/42", 401),
                             ("ORDERS.example.com", "/orders", 401),
                             ("api.example.com", "/orders/42", 403),
                             ("orders.example.com", "/admin/users", 403)],
    "waypoint.yaml": [("orders.shop.svc.cluster.local:8080", "/orders/42", 401),
                      ("orders:8080", "/orders/42", 401),
                      ("orders.shop", "/admin/users", 401),
                      ("payments.shop.svc.cluster.local:8080", "/orders/42", 403)],
    "service-waypoint.yaml": [("orders.shop:8080", "/orders/42", 401),
                              ("orders", "/healthz", 403)],
    # Every sidecar: whatever the Service, a token is needed, probes pass, debug endpoints never.
    "mesh-baseline.yaml": [("orders.shop.svc.cluster.local:8080", "/orders/42", 401),
                           ("payments:8080", "/", 401),
                           ("payments:8080", "/healthz", 200),
                           ("orders.shop:8080", "/actuator/env", 403),
                           ("orders.shop:8080", "/debug/pprof", 403)],
    # The agent's outbound calls: a tool call without the user's token is refused, a call to a
    # host no entry names goes on untouched.
    # The login gateway: the public pages pass, an API call without a session keeps its 401 (a
    # navigation is sent to log in instead: tests/integration), other hosts are refused. The
    # login's own paths are answered by the login before the `app` rule could ask for a token:
    # a callback without this browser's transaction cookie is a 400, a logout must be a POST.
    "login-gateway.yaml": [("app.example.com", "/signed-out", 200),
                           ("app.example.com", "/orders", 401),
                           ("app.example.com", "/admin/users", 401),
                           ("api.example.com", "/", 403),
                           ("app.example.com", "/oauth2/callback?code=c&state=s", 400),
                           ("app.example.com", "/oauth2/logout", 405)],
    "outbound.yaml": [("tools.tools.svc.cluster.local:8080", "/mcp", 403),
                      ("tools.tools", "/mcp", 403),
                      ("orders.shop.svc.cluster.local:8080", "/orders/42", 200)],
}


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=DEPLOY_IDS)
def test_rules_read_the_authority_the_proxy_sees(envoys: EnvoyFactory, path: Path) -> None:
    assert path.name in AUTHORITY_CASES, f"add {path.name}'s requests to AUTHORITY_CASES"
    (plugin,) = of_kind(path, "WasmPlugin")
    config = plugin["spec"]["pluginConfig"]
    envoy = envoys.start(config, filter_args={"env": stand_in_env(config)})
    for authority, request_path, status in AUTHORITY_CASES[path.name]:
        response = envoy.request(request_path, headers={"Host": authority})
        assert response.status == status, (authority, request_path, str(response))
        if status == 401:
            assert (response.header("www-authenticate") or "").startswith("Bearer "), str(response)


# --------------------------------------------------------------------------- the mesh baseline and a namespace layer

LAYER = REPO / "examples" / "namespace-layer.yaml"


def test_the_baseline_runs_on_every_sidecar_before_every_other_plugin() -> None:
    """Root namespace, no selector: every sidecar (mesh-wide). Every other AUTHN plugin of the
    repository has a lower priority or none (which Istio runs after every plugin with one)."""
    baseline = deploy_plugin("mesh-baseline.yaml")
    spec = baseline["spec"]
    assert baseline["metadata"]["namespace"] == "istio-system"
    assert not {"selector", "targetRef", "targetRefs"} & spec.keys()
    assert spec["phase"] == "AUTHN" and isinstance(spec["priority"], int)
    later = [(path.name, p["metadata"]["name"], p["spec"].get("priority")) for path in FILES
             for p in of_kind(path, "WasmPlugin") if path.name != "mesh-baseline.yaml"]
    assert later and all(priority is None or priority < spec["priority"] for _, _, priority in later), later
    # It hands the token on to the plugins after it.
    assert all(p.get("forwardOriginalToken") is True for p in spec["pluginConfig"]["providers"])


def test_the_namespace_layer_builds_on_the_baseline() -> None:
    baseline = deploy_plugin("mesh-baseline.yaml")["spec"]["pluginConfig"]
    (layer,) = of_kind(LAYER, "WasmPlugin")
    config = layer["spec"]["pluginConfig"]
    trusted = {p["issuer"]: p for p in baseline["providers"]}
    for provider in config["providers"]:
        # An issuer the baseline does not trust would be refused before this plugin sees it.
        assert provider["issuer"] in trusted, provider["issuer"]
        # Same keys URL: one fetch for both plugins (shared data of Istio's common vm_id).
        assert provider["jwksUri"] == trusted[provider["issuer"]]["jwksUri"]
        # The last plugin removes the token.
        assert provider.get("forwardOriginalToken", False) is False
    # Provider names of its own: the request counters tell the plugins apart.
    assert not {p.get("name") for p in config["providers"]} & {p.get("name") for p in baseline["providers"]}


# (path, status) without a token, through the baseline and then the namespace layer.
LAYERED_CASES = [("/healthz", 200), ("/orders/42", 401), ("/actuator/env", 403), ("/debug/vars", 403)]


def test_the_baseline_and_the_layer_load_and_run_together(envoys: EnvoyFactory) -> None:
    """Both files' configurations as two chained instances of the module, in Istio's order."""
    baseline = deploy_plugin("mesh-baseline.yaml")
    (layer,) = of_kind(LAYER, "WasmPlugin")
    envoy = envoys.build(baseline["spec"]["pluginConfig"], filter_args={"plugin_name": "istio-system.mesh-baseline"},
                         chain=[{"plugin_config": layer["spec"]["pluginConfig"], "plugin_name": "shop.mesh-oauth"}]).start()
    for path, status in LAYERED_CASES:
        response = envoy.request(path, headers={"Host": "orders.shop:8080"})
        assert response.status == status, (path, str(response))


def test_plugin_refuses_an_unknown_field(envoys: EnvoyFactory) -> None:
    config = copy.deepcopy(root_wasm_plugin()["spec"]["pluginConfig"])
    config["providers"][0]["audience"] = ["orders-api"]  # a typo of `audiences`
    envoy = envoys.build(config)
    with pytest.raises(EnvoyStartError) as refused:
        envoy.start()
    assert "providers[0].audience: unknown field" in refused.value.log


def test_schema_alone_would_not_catch_an_unknown_field() -> None:
    """pluginConfig is free-form for Istio: the plugin's own check above is the one that counts."""
    plugin = root_wasm_plugin()
    plugin["spec"]["pluginConfig"]["providers"][0]["audience"] = ["orders-api"]
    (verdict,) = validate([plugin])
    assert verdict["ok"]


# --------------------------------------------------------------------------- egress for key fetches


# Issuers whose discovery documents send the plugin to other hosts: their keys (`jwks_uri`) and
# token endpoint (a login's, an outbound entry's) are fetched there too.
DISCOVERED_HOSTS = {
    "https://accounts.google.com": {("www.googleapis.com", 443), ("oauth2.googleapis.com", 443)},
}


def key_hosts(plugin_config: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) of every URL the plugin fetches keys from, or calls a token endpoint at,
    through Istio's derived cluster."""
    hosts = set()
    for provider in plugin_config["providers"]:
        if "jwks" in provider or "jwksCluster" in provider:
            continue
        url = urllib.parse.urlsplit(provider.get("jwksUri") or provider["issuer"])
        assert url.hostname is not None
        hosts.add((url.hostname, url.port or (443 if url.scheme == "https" else 80)))
        if "jwksUri" not in provider:
            hosts |= DISCOVERED_HOSTS.get(provider["issuer"], set())
    return hosts


def visible(obj: dict[str, Any], namespace: str) -> bool:
    """Whether a ServiceEntry or DestinationRule is exported to a proxy in `namespace`."""
    export = obj["spec"].get("exportTo", ["*"])
    return "*" in export or namespace in export or ("." in export and obj["metadata"]["namespace"] == namespace)


def egress_problems(objects: list[dict[str, Any]]) -> list[str]:
    """The cluster outbound|<port>||<host> exists on a proxy only with a ServiceEntry for that
    host and port exported to the proxy's namespace; an https key URL needs the proxy to
    originate TLS (DestinationRule tls.mode SIMPLE). A waypoint builds outbound clusters only for
    hosts its routes use or an EnvoyFilter attached to it names in the referenced-services
    annotation (Istio 1.26+); and the IdP must not be bound to the waypoint, whose filter would
    then also run on the workloads' own calls to it."""
    problems = []
    for plugin in of_kind(objects, "WasmPlugin"):
        for place in placements(objects, plugin):
            for host, port in key_hosts(plugin["spec"]["pluginConfig"]):
                cluster = istio_cluster_name(port, host)
                entries = [e for e in of_kind(objects, "ServiceEntry") if visible(e, place.namespace)
                           and host in e["spec"]["hosts"] and port in [p["number"] for p in e["spec"]["ports"]]]
                if not entries:
                    problems.append(f"no ServiceEntry exported to {place.namespace} gives {cluster}")
                if port == 443 and not any(
                        rule["spec"]["host"] == host and visible(rule, place.namespace)
                        and rule["spec"].get("trafficPolicy", {}).get("tls", {}).get("mode") == "SIMPLE"
                        for rule in of_kind(objects, "DestinationRule")):
                    problems.append(f"no DestinationRule with tls.mode SIMPLE for {host} in {place.namespace}")
                if place.proxy != "waypoint":
                    continue
                names = {host} | {f"{e['metadata']['namespace']}/{host}" for e in entries}
                if not any(references(f, place, names) for f in of_kind(objects, "EnvoyFilter")):
                    problems.append(f"no EnvoyFilter on waypoint {place.gateway} names {host} "
                                    f"in {REFERENCED_SERVICES}")
                if any(e["metadata"].get("labels", {}).get("istio.io/use-waypoint") != "none" for e in entries):
                    problems.append(f"the ServiceEntry for {host} may be bound to the waypoint "
                                    "(istio.io/use-waypoint: none)")
    return problems


def references(envoy_filter: dict[str, Any], place: Placement, names: set[str]) -> bool:
    """Whether an EnvoyFilter is attached to this waypoint and names one of `names` (`host` or
    `namespace/host`) in its referenced-services annotation (a comma-separated list)."""
    annotation = envoy_filter["metadata"].get("annotations", {}).get(REFERENCED_SERVICES, "")
    target = {"group": GATEWAY_API, "kind": "Gateway", "name": place.gateway}
    return (envoy_filter["metadata"]["namespace"] == place.namespace
            and bool(names & set(annotation.split(",")))
            and target in envoy_filter["spec"].get("targetRefs", []))


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_key_hosts_have_service_entry_and_tls_origination(path: Path) -> None:
    assert egress_problems(documents(path)) == []


def set_export(kind: str, export: list[str]) -> Any:
    def mutate(objects: list[dict[str, Any]]) -> None:
        for obj in of_kind(objects, kind):
            obj["spec"]["exportTo"] = export
    return mutate


def move(kind: str, namespace: str) -> Any:
    def mutate(objects: list[dict[str, Any]]) -> None:
        for obj in of_kind(objects, kind):
            obj["metadata"]["namespace"] = namespace
    return mutate


def drop(kind: str) -> Any:
    def mutate(objects: list[dict[str, Any]]) -> None:
        objects[:] = [obj for obj in objects if obj.get("kind") != kind]
    return mutate


def unlabel(objects: list[dict[str, Any]]) -> None:
    for entry in of_kind(objects, "ServiceEntry"):
        entry["metadata"].pop("labels", None)


def drop_host(host: str) -> Any:
    def mutate(objects: list[dict[str, Any]]) -> None:
        for entry in of_kind(objects, "ServiceEntry"):
            entry["spec"]["hosts"].remove(host)
    return mutate


@pytest.mark.parametrize("name, mutate, named", [
    # Google's token endpoint is on a host of its own, named only in the discovery document.
    ("login-google.yaml", drop_host("oauth2.googleapis.com"), "gives outbound|443||oauth2.googleapis.com"),
    ("waypoint.yaml", drop("EnvoyFilter"), "no EnvoyFilter on waypoint waypoint names login.example.com"),
    ("service-waypoint.yaml", drop("EnvoyFilter"), "no EnvoyFilter on waypoint waypoint"),
    ("waypoint.yaml", set_export("ServiceEntry", ["payments"]), "no ServiceEntry exported to shop"),
    # The IdP's egress kept in the workloads' namespace is invisible to the gateway's.
    ("ingress-gateway.yaml", move("ServiceEntry", "shop"), "no ServiceEntry exported to istio-ingress"),
    ("ingress-gateway.yaml", move("DestinationRule", "shop"), "no DestinationRule with tls.mode SIMPLE"),
    ("waypoint.yaml", unlabel, "may be bound to the waypoint"),
], ids=["google-token-host", "waypoint-no-envoyfilter", "service-no-envoyfilter", "waypoint-not-exported",
        "gateway-entry-elsewhere", "gateway-rule-elsewhere", "waypoint-entry-bound"])
def test_missing_egress_is_found(name: str, mutate: Any, named: str) -> None:
    objects = documents(next(path for path in FILES if path.name == name))
    mutate(objects)
    problems = egress_problems(objects)
    assert any(named in problem for problem in problems), problems


# --------------------------------------------------------------------------- secrets from the pod

PROXY = "istio-proxy"


def host_variables(plugin: dict[str, Any]) -> list[str]:
    """The variables `vmConfig.env` has the VM read from the proxy container (`valueFrom: HOST`)."""
    return [var["name"] for var in plugin["spec"].get("vmConfig", {}).get("env", [])
            if var.get("valueFrom") == "HOST"]


def named(objects: list[dict[str, Any]], kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    found = [obj for obj in of_kind(objects, kind)
             if (obj["metadata"].get("namespace"), obj["metadata"]["name"]) == (namespace, name)]
    return found[0] if found else None


def deployment_patch(objects: list[dict[str, Any]], place: Placement) -> dict[str, Any] | str:
    """The patch Istio merges into the Deployment it generates for a Gateway: the `deployment` key
    of the ConfigMap the Gateway's `infrastructure.parametersRef` names; or why there is none."""
    gateway = named(objects, "Gateway", place.namespace, place.gateway or "")
    ref = (gateway or {}).get("spec", {}).get("infrastructure", {}).get("parametersRef")
    if not ref or (ref.get("group", ""), ref.get("kind")) != ("", "ConfigMap"):
        return f"Gateway {place.namespace}/{place.gateway} has no infrastructure.parametersRef to a ConfigMap"
    config_map = named(objects, "ConfigMap", place.namespace, ref["name"])
    if config_map is None or "deployment" not in config_map.get("data", {}):
        return f"no ConfigMap {place.namespace}/{ref['name']} with a `deployment` patch in the file"
    return yaml.safe_load(config_map["data"]["deployment"])


def proxy_container(patch: dict[str, Any]) -> dict[str, Any]:
    containers = patch.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
    return next((c for c in containers if c.get("name") == PROXY), {})


def wiring_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Every variable a gateway's plugin reads from its proxy container reaches that container
    from a key of a Secret in the file (a sidecar's Deployment is the user's own: the files
    show its `istio-proxy` entry in their comments)."""
    problems = []
    for plugin in of_kind(objects, "WasmPlugin"):
        variables = host_variables(plugin)
        for place in placements(objects, plugin):
            if not variables or place.proxy != "gateway":
                continue
            patch = deployment_patch(objects, place)
            if isinstance(patch, str):
                problems.append(patch)
                continue
            if "name" in patch.get("metadata", {}):
                problems.append("the deployment patch renames the Deployment (Istio refuses it)")
            env = {var["name"]: var for var in proxy_container(patch).get("env", [])}
            for variable in variables:
                ref = env.get(variable, {}).get("valueFrom", {}).get("secretKeyRef")
                if variable not in env:
                    problems.append(f"{variable}: not in the {PROXY} container's env")
                elif not ref:
                    problems.append(f"{variable}: not from a Secret (valueFrom.secretKeyRef)")
                elif (secret := named(objects, "Secret", place.namespace, ref["name"])) is None:
                    problems.append(f"{variable}: no Secret {place.namespace}/{ref['name']} in the file")
                elif ref["key"] not in {**secret.get("data", {}), **secret.get("stringData", {})}:
                    problems.append(f"{variable}: Secret {ref['name']} has no key {ref['key']}")
    return problems


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=DEPLOY_IDS)
def test_gateway_secrets_reach_the_proxy_container(path: Path) -> None:
    assert wiring_problems(documents(path)) == []


def drop_patch_env(objects: list[dict[str, Any]]) -> None:
    (config_map,) = of_kind(objects, "ConfigMap")
    patch = yaml.safe_load(config_map["data"]["deployment"])
    proxy_container(patch)["env"].pop()
    config_map["data"]["deployment"] = yaml.safe_dump(patch)


def rename_secret_key(objects: list[dict[str, Any]]) -> None:
    (secret,) = of_kind(objects, "Secret")
    secret["stringData"]["cookie_keys"] = secret["stringData"].pop("cookie-keys")


def unreference(objects: list[dict[str, Any]]) -> None:
    for gateway in of_kind(objects, "Gateway"):
        gateway["spec"].pop("infrastructure")


@pytest.mark.parametrize("mutate, named_problem", [
    (drop_patch_env, "WEB_LOGIN_COOKIE_KEYS: not in the istio-proxy container's env"),
    (rename_secret_key, "WEB_LOGIN_COOKIE_KEYS: Secret web-login has no key cookie-keys"),
    (drop("Secret"), "no Secret istio-ingress/web-login in the file"),
    (unreference, "has no infrastructure.parametersRef to a ConfigMap"),
], ids=["variable-not-given", "secret-key-renamed", "no-secret", "gateway-without-parametersRef"])
def test_missing_secret_wiring_is_found(mutate: Any, named_problem: str) -> None:
    objects = deploy_objects("login-gateway.yaml")
    mutate(objects)
    problems = wiring_problems(objects)
    assert any(named_problem in problem for problem in problems), problems


def strategic_merge(base: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge for what a deployment patch holds: maps merge, lists of
    named items (containers, env) merge by name, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        return {**base, **{k: strategic_merge(base.get(k), v) for k, v in patch.items()}}
    if isinstance(base, list) and isinstance(patch, list) and all("name" in item for item in base + patch):
        merged = {item["name"]: item for item in base}
        for item in patch:
            merged[item["name"]] = strategic_merge(merged.get(item["name"]), item)
        return list(merged.values())
    return patch


def test_the_patched_gateway_deployment_is_valid() -> None:
    """The Deployment Istio generates for the login Gateway (its shape: one istio-proxy container
    with env of its own), with the ConfigMap's patch merged in, passes Kubernetes' schema and
    keeps Istio's own variables."""
    objects = deploy_objects("login-gateway.yaml")
    (gateway,) = of_kind(objects, "Gateway")
    name, namespace = gateway["metadata"]["name"], gateway["metadata"]["namespace"]
    labels = {"gateway.networking.k8s.io/gateway-name": name}
    generated = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{name}-istio", "namespace": namespace, "labels": labels},
        "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"serviceAccountName": f"{name}-istio", "containers": [{
                "name": PROXY, "image": "auto", "args": ["proxy", "router"],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]}]}}},
    }
    patch = deployment_patch(objects, Placement("gateway", namespace, name))
    assert isinstance(patch, dict), patch
    deployment = strategic_merge(generated, patch)
    (verdict,) = validate([deployment])
    assert verdict["ok"], verdict
    env = [var["name"] for var in proxy_container(deployment)["env"]]
    assert env[0] == "POD_NAME" and set(host_variables(deploy_plugin("login-gateway.yaml"))) <= set(env), env


def test_the_secrets_placeholders_are_refused(envoys: EnvoyFactory) -> None:
    """Applied as it is, with the Secret's placeholders in the proxy's environment, the plugin
    refuses its configuration (so the gateway refuses every request): a published example key
    never seals a session."""
    objects = deploy_objects("login-gateway.yaml")
    plugin = deploy_plugin("login-gateway.yaml")
    (secret,) = of_kind(objects, "Secret")
    (place,) = placements(objects, plugin)
    patch = deployment_patch(objects, place)
    assert isinstance(patch, dict), patch
    env = {var["name"]: secret["stringData"][var["valueFrom"]["secretKeyRef"]["key"]]
           for var in proxy_container(patch)["env"]}
    envoy = envoys.build(plugin["spec"]["pluginConfig"], filter_args={"env": env})
    with pytest.raises(EnvoyStartError) as refused:
        envoy.start()
    assert "login.cookieKeysEnv: environment variable WEB_LOGIN_COOKIE_KEYS" in refused.value.log


def test_egress_shared_by_deploy_files_is_the_same() -> None:
    """Two files may carry the same IdP egress (the ServiceEntry and DestinationRule of
    login.example.com at the ingress gateway): applying one after the other must not change it.
    (The waypoint files' plugins are alternatives of one another, named alike on purpose.)"""
    seen: dict[tuple[str, str, str], tuple[str, dict[str, Any]]] = {}
    for path in DEPLOY_FILES:
        for obj in [*of_kind(path, "ServiceEntry"), *of_kind(path, "DestinationRule")]:
            key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if key in seen:
                other, earlier = seen[key]
                assert obj == earlier, f"{key} differs between {other} and {path.name}"
            seen[key] = (path.name, obj)


# --------------------------------------------------------------------------- browser login


def login_plugins() -> list[Any]:
    return [pytest.param(plugin, id=f"{path.relative_to(REPO)}") for path in FILES
            for plugin in of_kind(path, "WasmPlugin") if plugin["spec"]["pluginConfig"].get("login")]


def login_problems(plugin: dict[str, Any]) -> list[str]:
    """What makes a login that the plugin accepts fail its users: the token a session forwards
    must pass its provider's `audiences` (the ID token's aud is the client id), and a secret the
    VM is not given is missing in the pod."""
    config = plugin["spec"]["pluginConfig"]
    providers = {p["name"]: p for p in config["providers"]}
    given = set(host_variables(plugin))
    problems = []
    for login in logins(config):
        audiences = providers[login["provider"]].get("audiences", [])
        if login.get("forward") == "id_token" and audiences and login["clientId"] not in audiences:
            problems.append(f"forward id_token: the provider's audiences lack the client id {login['clientId']}")
        problems += [f"{field} {login[field]}: not given by vmConfig.env (valueFrom: HOST)"
                     for field in ("clientSecretEnv", "clientKeyEnv", "cookieKeysEnv")
                     if field in login and login[field] not in given]
    return problems


@pytest.mark.parametrize("plugin", login_plugins())
def test_a_login_can_serve_its_users(plugin: dict[str, Any]) -> None:
    assert login_problems(plugin) == []


def test_the_logins_are_there() -> None:
    """Guards the test above: the gateway and the four IdP examples have a login."""
    assert len(login_plugins()) >= 5


def test_a_login_its_tokens_cannot_pass_is_found() -> None:
    (plugin,) = of_kind(REPO / "examples" / "login-google.yaml", "WasmPlugin")
    plugin["spec"]["pluginConfig"]["providers"][0]["audiences"] = ["https://reports.example.com"]
    plugin["spec"]["vmConfig"]["env"].pop()
    assert login_problems(plugin) == [
        "forward id_token: the provider's audiences lack the client id "
        "123456789012-abcdefghijklmnopqrstuvwxyz012345.apps.googleusercontent.com",
        "cookieKeysEnv REPORTS_COOKIE_KEYS: not given by vmConfig.env (valueFrom: HOST)"]
