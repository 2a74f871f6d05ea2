"""What an operator observes of the plugin: its metrics through Envoy's admin endpoint and its
audit lines in Envoy's log. Shared by the metrics, audit-log and report-mode modules."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable

from harness import LOOPBACK, REQUEST_TIMEOUT_S, Envoy, Response

# The namespace Envoy gives a Wasm module's own metrics in `/stats`; Prometheus output drops it.
CUSTOM_NAMESPACE = "wasmcustom."
GAUGE_SUFFIXES = ("held_requests", "keys_loaded", "host_signatures", "keys_age_seconds", "cached_tokens")
# Per-request counters are added up in the VM and handed to Envoy on the plugin's next tick
# (every 100 ms): a reader waits for two ticks first.
COUNTER_FLUSH_S = 0.25

# `[time][thread][level][wasm] [source] wasm log <plugin> <root> <vm>: {json}`
_AUDIT_LINE = re.compile(r"^\[[^\]]*\]\[(\d+)\]\[(\w+)\]\[wasm\] .*? wasm log [^:{]*: (\{.*\})$")


# --------------------------------------------------------------------------- Envoy start


def start_together(envoys: Iterable[Envoy]) -> list[Envoy]:
    """Starts Envoys (built, not started) and waits for them in parallel: a module with several
    configurations then waits for one start-up, not one per configuration. The processes are
    spawned from this thread: an Envoy spawned from a helper thread was seen to get SIGTERM as
    soon as that thread ended (a parent-death signal)."""
    envoys = list(envoys)
    for envoy in envoys:
        envoy._wait_ready = lambda: None  # type: ignore[method-assign]  # waited for below
        try:
            envoy.start()
        finally:
            del envoy._wait_ready
    errors: list[BaseException] = []

    def wait(envoy: Envoy) -> None:
        try:
            envoy._wait_ready()
        except BaseException as error:  # noqa: BLE001 - re-raised below on the test's thread
            errors.append(error)

    threads = [threading.Thread(target=wait, args=(envoy,)) for envoy in envoys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        for envoy in envoys:
            envoy.stop()
        raise errors[0]
    return envoys


# --------------------------------------------------------------------------- metrics


# The policy identity: `mesh_oauth.config_hash.<plugin>` (a gauge, set at each configuration).
_CONFIG_HASH = re.compile(r"mesh_oauth[._]config_hash[._]")


def is_gauge(name: str) -> bool:
    return name.endswith(GAUGE_SUFFIXES) or _CONFIG_HASH.match(name) is not None


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= 2 ** 53:
            return int(value)
        # Python writes exponents otherwise than serde_json (1e-07, 1e-7): not needed here.
        assert "e" not in repr(value), f"{value!r}: no exponent in test configurations"
        return value
    if isinstance(value, dict):
        return {name: _canonical(member) for name, member in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def config_sha256(config: Any) -> str:
    """The policy identity of a plugin configuration (a mapping, or JSON text) as the contract
    (docs/configuration.md, "Policy identity") defines it, computed here with Python's own JSON:
    members sorted, no whitespace, escapes resolved, integral numbers as integers."""
    value = json.loads(config) if isinstance(config, str) else config
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def config_hash_gauge(config: Any) -> int:
    """What `mesh_oauth.config_hash.<plugin>` reports: the first 12 hex digits as an integer."""
    return int(config_sha256(config)[:12], 16)


def stats(envoy: Envoy) -> dict[str, int]:
    """The plugin's metrics from `/stats`, keyed by the name the plugin defined (the
    `wasmcustom.` namespace Envoy adds is checked, then stripped)."""
    time.sleep(COUNTER_FLUSH_S)
    resp = envoy.admin(r"/stats?filter=^wasmcustom\.mesh_oauth\.")
    assert resp.status == 200, resp
    result = {}
    for line in resp.body.decode().splitlines():
        name, _, value = line.partition(": ")
        assert name.startswith(CUSTOM_NAMESPACE), line
        result[name[len(CUSTOM_NAMESPACE):]] = int(value)
    return result


def counters_changed(before: dict[str, int], after: dict[str, int], ignore: str = "mesh_oauth.cache.") -> dict[str, int]:
    """Counters that moved between two `stats` snapshots (cache counters left out unless asked)."""
    return {
        name: value - before.get(name, 0)
        for name, value in after.items()
        if not is_gauge(name) and not name.startswith(ignore) and value != before.get(name, 0)
    }


@dataclass(frozen=True)
class PrometheusSample:
    type: str
    labels: str
    value: int


_PROM_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def prometheus(envoy: Envoy, prefix: str = "mesh_oauth_") -> dict[str, PrometheusSample]:
    """Samples from `/stats/prometheus` whose name starts with `prefix`, with their `# TYPE`."""
    time.sleep(COUNTER_FLUSH_S)
    resp = envoy.admin("/stats/prometheus")
    assert resp.status == 200, resp
    types: dict[str, str] = {}
    samples = {}
    for line in resp.body.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        match = _PROM_SAMPLE.match(line)
        if match and match.group(1).startswith(prefix):
            name = match.group(1)
            samples[name] = PrometheusSample(types.get(name, ""), match.group(2) or "", int(float(match.group(3))))
    return samples


def prometheus_name(name: str) -> str:
    """What Envoy's Prometheus output makes of a plugin metric name."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


# --------------------------------------------------------------------------- audit log


@dataclass(frozen=True)
class AuditLine:
    thread: str
    level: str
    raw: str
    fields: dict[str, Any]


def audit_lines(envoy: Envoy) -> list[AuditLine]:
    """Every audit line (a JSON object with a `decision`) the plugin wrote to Envoy's log."""
    lines = []
    for line in envoy.log().splitlines():
        match = _AUDIT_LINE.match(line)
        if not match:
            continue
        fields = json.loads(match.group(3))
        if "decision" in fields:
            lines.append(AuditLine(match.group(1), match.group(2), match.group(3), fields))
    return lines


def wait_for_audit(envoy: Envoy, request_id: str, timeout_s: float = 3.0) -> AuditLine:
    """The audit line of the request sent with `x-request-id: request_id`, once logged."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [line for line in audit_lines(envoy) if line.fields.get("request_id") == request_id]
        if found:
            assert len(found) == 1, f"more than one audit line for request {request_id}: {found}"
            return found[0]
        assert time.monotonic() < deadline, f"no audit line for request {request_id} in {envoy.log_path}"
        time.sleep(0.05)


class AuditWindow:
    """The audit lines written between `start` and `close`. With one worker, Envoy's log holds
    them in request order, so once a refusal sent last (always logged) appears, every line of
    the requests before it is there too: a window closed this way holds them all, and only them."""

    _closers = 0

    def __init__(self, envoy: Envoy) -> None:
        self.envoy = envoy
        assert envoy.concurrency == 1, "request order equals log order only with one worker"
        self.seen = len(audit_lines(envoy))

    def close(self, closing_path: str = "/audit-window-closed") -> list[AuditLine]:
        """Sends a request without a token to `closing_path` (a refusal, or in report mode a
        would-be refusal: logged either way) and returns the lines before its own."""
        AuditWindow._closers += 1
        request_id = f"window-closer-{AuditWindow._closers}"
        self.envoy.request(closing_path, headers={"x-request-id": request_id})
        wait_for_audit(self.envoy, request_id)
        lines = audit_lines(self.envoy)[self.seen:]
        assert lines[-1].fields["request_id"] == request_id, lines[-1]
        return lines[:-1]


# --------------------------------------------------------------------------- requests


def requests_on_one_connection(envoy: Envoy, path: str, headers: dict[str, str], count: int) -> list[Response]:
    """`count` requests over one keep-alive connection: Envoy hands a connection to one worker,
    so they all meet the same per-worker token cache."""
    assert envoy.port is not None
    conn = http.client.HTTPConnection(LOOPBACK, envoy.port, timeout=REQUEST_TIMEOUT_S)
    try:
        responses = []
        for _ in range(count):
            conn.request("GET", path, headers=headers)
            raw = conn.getresponse()
            responses.append(Response(raw.status, raw.getheaders(), raw.read()))
        return responses
    finally:
        conn.close()
