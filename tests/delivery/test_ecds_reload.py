"""Live reconfiguration as Istio does it: Envoy gets the mesh-oauth filter through ECDS (here from
a watched file instead of istiod), the test publishes new plugin configurations, and requests see
the new behaviour within seconds, without an Envoy restart, while a background client keeps
sending requests that must all be answered (no 5xx, no connection error)."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from harness import EchoServer, Envoy, IdpServer, Response, bootstrap, wasm_filter
from tokens import KeySet, claims

FILTER_NAME = "mesh-oauth"
WASM_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
STATS_PREFIX = f"extension_config_discovery.http_filter.{FILTER_NAME}."
SWITCH_DEADLINE_S = 5.0
DWELL_S = 0.3  # background probes keep running this long on each new configuration
ISS_STABLE = "https://stable.idp.test"
ISS_ORDERS = "https://orders.idp.test"
ISS_ORDERS_NEW = "https://orders-2026.idp.test"


class EcdsFile:
    """The file Envoy watches. Envoy's watch fires on a move into the directory, so each version
    is written beside it and renamed over it (atomic: Envoy never reads half a file)."""

    def __init__(self, directory: Path, module: Path) -> None:
        self.directory = directory
        self.path = directory / "mesh-oauth.ecds.json"
        self.module = module
        self.version = 0
        directory.mkdir(parents=True, exist_ok=True)

    def publish(self, plugin_config: dict[str, Any]) -> None:
        self.version += 1
        document = {
            "version_info": str(self.version),
            "resources": [{
                "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                "name": FILTER_NAME,
                "typed_config": wasm_filter(self.module, json.dumps(plugin_config))["typed_config"],
            }],
        }
        staging = self.directory / f".staging-{self.version}"
        staging.write_text(json.dumps(document))
        os.replace(staging, self.path)

    def discovered_filter(self) -> dict[str, Any]:
        """The HTTP filter entry: no inline config, only where to discover it."""
        return {
            "name": FILTER_NAME,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {
                        "path": str(self.path),
                        "watched_directory": {"path": str(self.directory)},
                    },
                },
                "type_urls": [WASM_TYPE_URL],
            },
        }


def ecds_stat(envoy: Envoy, name: str) -> int:
    for line in envoy.admin("/stats").body.decode().splitlines():
        key, _, value = line.partition(": ")
        if key == STATS_PREFIX + name:
            return int(value)
    raise AssertionError(f"no stat {STATS_PREFIX}{name}")


@dataclass
class Probe:
    name: str
    send: Callable[[], Response]
    allowed: frozenset[int]


@dataclass
class Prober:
    """Sends the probes round-robin from a background thread until stopped (bounded by
    `max_seconds`); records every answer that is not an allowed status, and every exception."""

    probes: list[Probe]
    max_seconds: float = 60.0
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            probe = self.probes[self.sent % len(self.probes)]
            self.sent += 1
            try:
                response = probe.send()
                if response.status not in probe.allowed:
                    self.failures.append(f"{probe.name}: {response.status} {response.body[:200]!r}")
            except Exception as error:  # noqa: BLE001 - every failure is the finding
                self.failures.append(f"{probe.name}: {type(error).__name__}: {error}")

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


KEYS_INLINE = "inline"
KEYS_FETCHED = "fetched"
# A real IdP answers in tens to hundreds of milliseconds, not the loopback's one.
IDP_LATENCY_S = 0.2
# The plugin starts every new configuration with an empty key cache and answers 503 until its
# first fetch returns, so each push of a WasmPlugin change causes a burst of 503s.
@dataclass
class Setup:
    envoy: Envoy
    ecds: EcdsFile
    idp: IdpServer
    keys: KeySet
    new_keys: KeySet
    key_delivery: str

    def provider(self, name: str, issuer: str, keys: KeySet, alg: str) -> dict[str, Any]:
        """A provider whose keys are inline, or fetched from the IdP, as the test is parametrised."""
        provider: dict[str, Any] = {"name": name, "issuer": issuer, "audiences": ["api"]}
        if self.key_delivery == KEYS_INLINE:
            provider["jwks"] = keys.jwks_string([alg])
        else:
            path = f"/{name}-{keys[alg].kid}.json"
            self.idp.set_json(path, keys.jwks([alg]), delay_s=IDP_LATENCY_S)
            provider["jwksUri"] = self.idp.url + path
        return provider

    def providers(self, rotated: bool = False) -> list[dict[str, Any]]:
        orders = (self.provider("orders", ISS_ORDERS_NEW, self.new_keys, "RS256") if rotated
                  else self.provider("orders", ISS_ORDERS, self.keys, "RS256"))
        return [self.provider("stable", ISS_STABLE, self.keys, "ES256"), orders]

    def stable_token(self) -> str:
        return self.keys.mint("ES256", claims(ISS_STABLE, "api"))

    def request(self, path: str, token: str | None = None, **kwargs: Any) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.envoy.request(path, headers=headers, **kwargs)


def orders_rules(write_scope: str) -> list[dict[str, Any]]:
    return [
        {"name": "status", "match": {"paths": ["/status"]}, "requires": {"providers": ["stable"]}},
        {"name": "orders-read", "match": {"paths": ["/orders/*"], "methods": ["GET"]},
         "requires": {"providers": ["orders"], "scopes": ["orders:read"]}},
        {"name": "orders-write", "match": {"paths": ["/orders/*"], "methods": ["POST"]},
         "requires": {"providers": ["orders"], "scopes": [write_scope]}},
    ]


INITIAL_RULES = orders_rules("orders:write")


@pytest.fixture
def setup(request: pytest.FixtureRequest, envoy_bin: Path, module_path: Path, echo: EchoServer, idp: IdpServer,
          keys: KeySet, tmp_path: Path) -> Iterator[Setup]:
    ecds = EcdsFile(tmp_path / "xds", module_path)
    config = bootstrap([ecds.discovered_filter()], {"upstream": echo.port, idp.cluster: idp.port})
    config["node"] = {"id": "delivery-test", "cluster": "delivery-test"}  # xDS subscriptions need one
    envoy = Envoy(envoy_bin, tmp_path / "envoy", config, concurrency=2)
    setup = Setup(envoy, ecds, idp, keys, KeySet(["RS256"]), request.param)
    ecds.publish({"providers": setup.providers(), "rules": INITIAL_RULES})
    envoy.start()
    try:
        # Fetched keys arrive shortly after start-up; begin once they are there.
        deadline = time.monotonic() + SWITCH_DEADLINE_S
        while setup.request("/status", setup.stable_token()).status != 200:
            assert time.monotonic() < deadline, "the initial configuration never let a valid token through"
            time.sleep(0.02)
        yield setup
    finally:
        envoy.stop()


def publish_and_wait(setup: Setup, plugin_config: dict[str, Any], request: Callable[[], Response],
                     new_status: int) -> float:
    """Publishes `plugin_config` and returns how long until `request` answers `new_status`."""
    accepted = ecds_stat(setup.envoy, "update_success")
    started = time.monotonic()
    setup.ecds.publish(plugin_config)
    while True:
        status = request().status
        elapsed = time.monotonic() - started
        if status == new_status:
            break
        assert elapsed < SWITCH_DEADLINE_S, f"still {status} {elapsed:.1f}s after publishing"
        time.sleep(0.02)
    assert ecds_stat(setup.envoy, "update_success") == accepted + 1, "the change did not come through ECDS"
    return elapsed


@pytest.mark.parametrize("setup", [
    KEYS_INLINE,
    # Keys fetched from the IdP: a new configuration's filter adopts the keys the sidecar
    # already holds in shared data, and holds requests until it has them.
    KEYS_FETCHED,
], indirect=True)
def test_published_changes_apply_live_without_failed_requests(setup: Setup) -> None:
    scopes = "orders:read orders:write"
    old = setup.keys.mint("RS256", claims(ISS_ORDERS, "api", scope=scopes))
    new = setup.new_keys.mint("RS256", claims(ISS_ORDERS_NEW, "api", scope=scopes))

    def admin() -> Response:
        return setup.request("/admin/users", old)

    def write() -> Response:
        return setup.request("/orders/7", old, method="POST", body=b"{}")

    def read_old() -> Response:
        return setup.request("/orders/7", old)

    def read_new() -> Response:
        return setup.request("/orders/7", new)

    # Before: unmatched /admin needs any valid token; orders:write suffices; only the old issuer.
    assert [admin().status, write().status, read_old().status, read_new().status] == [200, 200, 200, 401]

    stable = setup.stable_token()
    changing = frozenset({200, 401, 403})
    probes = [Probe("stable /status", lambda: setup.request("/status", stable), frozenset({200}))]
    probes += [Probe(name, send, changing) for name, send in
               (("admin", admin), ("write", write), ("read old issuer", read_old), ("read new issuer", read_new))]
    deny_admin = {"name": "admin", "match": {"paths": ["/admin/*"]}, "deny": True}
    revoked = [deny_admin, *orders_rules("orders:admin")]
    switch_ms = {}
    with Prober(probes) as prober:
        switch_ms["add a rule"] = publish_and_wait(
            setup, {"providers": setup.providers(), "rules": [deny_admin, *INITIAL_RULES]}, admin, 403)
        time.sleep(DWELL_S)
        # Revoke a scope: orders:write no longer lets anyone write.
        switch_ms["revoke a scope"] = publish_and_wait(
            setup, {"providers": setup.providers(), "rules": revoked}, write, 403)
        time.sleep(DWELL_S)
        assert 'scope="orders:admin"' in (write().header("WWW-Authenticate") or "")
        # Rotate the provider: new issuer and signing key; tokens of the old one stop working.
        switch_ms["rotate the provider"] = publish_and_wait(
            setup, {"providers": setup.providers(rotated=True), "rules": revoked}, read_new, 200)
        assert read_old().status == 401
        time.sleep(DWELL_S)
    assert prober.failures == [], f"failed during the switches ({prober.sent} sent): {prober.failures[:5]}"
    assert prober.sent >= 3 * len(probes), f"the background client hardly ran: {prober.sent}"
    assert setup.envoy.proc is not None and setup.envoy.proc.poll() is None, "Envoy must not restart"
    print(f"\nECDS ({setup.key_delivery} keys) switch times: "
          f"{ {k: f'{v * 1000:.0f} ms' for k, v in switch_ms.items()} }, {prober.sent} background requests")


@pytest.mark.parametrize("setup", [KEYS_FETCHED], indirect=True)
def test_rejected_configuration_keeps_the_previous_one(setup: Setup) -> None:
    """A configuration the plugin refuses is rejected by Envoy (counted in update_rejected) and
    the running one stays: a typo in a push neither opens nor closes the gate."""
    envoy = setup.envoy
    token = setup.keys.mint("RS256", claims(ISS_ORDERS, "api", scope="orders:read"))
    rejected = ecds_stat(envoy, "update_rejected")
    bad = setup.providers()
    bad[1]["audience"] = "api"  # a typo of `audiences`
    setup.ecds.publish({"providers": bad, "rules": INITIAL_RULES})
    deadline = time.monotonic() + SWITCH_DEADLINE_S
    while ecds_stat(envoy, "update_rejected") == rejected:
        assert time.monotonic() < deadline, "the bad configuration was neither applied nor rejected"
        time.sleep(0.02)
    assert "providers[1].audience: unknown field" in envoy.log()
    assert {setup.request("/orders/1", token).status for _ in range(20)} == {200}
    assert setup.request("/orders/1").status == 401
