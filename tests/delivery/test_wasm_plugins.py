"""The repository's Istio files (wasm-plugin.yaml, examples/*.yaml) are what users apply: every
object validates against Istio's CRD schema (npm @kubernetes-models/istio, run with Node), every
WasmPlugin's pluginConfig is accepted by the plugin itself (the real module in Envoy), and every
host the plugin fetches keys from has the ServiceEntry and DestinationRule it needs."""

from __future__ import annotations

import copy
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO
from harness import EnvoyFactory, EnvoyStartError, istio_cluster_name

VALIDATOR = Path(__file__).with_name("validate_istio.mjs")
FILES = [REPO / "wasm-plugin.yaml", *sorted((REPO / "examples").glob("*.yaml"))]
FILE_IDS = [str(path.relative_to(REPO)) for path in FILES]
# Istio policies the examples were converted from: Istio objects too, without a WasmPlugin.
POLICY_FILES = sorted((REPO / "examples" / "migration").glob("*.yaml"))
SCHEMA_FILES = [*FILES, *POLICY_FILES]
SCHEMA_IDS = [str(path.relative_to(REPO)) for path in SCHEMA_FILES]


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def of_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents(path) if doc.get("kind") == kind]


def validate(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Istio's schema verdict for each object, in order."""
    if not (REPO / "node_modules" / "@kubernetes-models" / "istio").is_dir():
        pytest.fail("@kubernetes-models/istio not installed: `make node-deps`", pytrace=False)
    result = subprocess.run(["node", str(VALIDATOR)], input=json.dumps(objects), capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    verdicts = json.loads(result.stdout)
    assert len(verdicts) == len(objects)
    return verdicts


def root_wasm_plugin() -> dict[str, Any]:
    (plugin,) = of_kind(REPO / "wasm-plugin.yaml", "WasmPlugin")
    return plugin


def test_the_files_are_there() -> None:
    """Guards the parametrised tests below against silently testing nothing."""
    names = {path.name for path in FILES}
    assert {"wasm-plugin.yaml", "keycloak.yaml", "auth0.yaml", "okta.yaml", "google.yaml",
            "entra-id.yaml", "migration.yaml"} <= names
    for path in FILES:
        assert of_kind(path, "WasmPlugin"), f"{path.name} has no WasmPlugin"


# --------------------------------------------------------------------------- Istio's schema


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


# --------------------------------------------------------------------------- the plugin's own validation


PLUGIN_CONFIGS = [
    pytest.param(plugin["spec"]["pluginConfig"], id=f"{path.relative_to(REPO)}:{plugin['metadata']['name']}")
    for path in FILES for plugin in of_kind(path, "WasmPlugin")
]


@pytest.mark.parametrize("plugin_config", PLUGIN_CONFIGS)
def test_plugin_accepts_the_plugin_config(envoys: EnvoyFactory, plugin_config: dict[str, Any]) -> None:
    """Envoy starts only if the plugin's on_configure accepted the configuration; a request
    without a token is then answered by the plugin (401, or 403 where nothing is anonymous)."""
    envoy = envoys.start(plugin_config)
    response = envoy.request("/no-such-path")
    assert response.status in (401, 403), response


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


def key_hosts(plugin_config: dict[str, Any]) -> set[tuple[str, int]]:
    """(host, port) of every URL the plugin fetches keys from through Istio's derived cluster."""
    hosts = set()
    for provider in plugin_config["providers"]:
        if "jwks" in provider or "jwksCluster" in provider:
            continue
        url = urllib.parse.urlsplit(provider.get("jwksUri") or provider["issuer"])
        assert url.hostname is not None
        hosts.add((url.hostname, url.port or (443 if url.scheme == "https" else 80)))
    return hosts


@pytest.mark.parametrize("path", FILES, ids=FILE_IDS)
def test_key_hosts_have_service_entry_and_tls_origination(path: Path) -> None:
    """The cluster outbound|<port>||<host> exists only with a ServiceEntry for that host and port;
    an https key URL needs the sidecar to originate TLS (DestinationRule tls.mode SIMPLE)."""
    entries = of_kind(path, "ServiceEntry")
    rules = of_kind(path, "DestinationRule")
    for plugin in of_kind(path, "WasmPlugin"):
        for host, port in key_hosts(plugin["spec"]["pluginConfig"]):
            cluster = istio_cluster_name(port, host)
            assert any(host in entry["spec"]["hosts"] and port in [p["number"] for p in entry["spec"]["ports"]]
                       for entry in entries), f"no ServiceEntry gives {cluster}"
            if port == 443:
                assert any(rule["spec"]["host"] == host
                           and rule["spec"].get("trafficPolicy", {}).get("tls", {}).get("mode") == "SIMPLE"
                           for rule in rules), f"no DestinationRule with tls.mode SIMPLE for {host}"
