"""Configuration pushes in real Envoy, delivered through ECDS as istiod delivers a WasmPlugin:
Envoy gives the new configuration a new root context in the same VM, which takes over keys,
held requests and fetches in flight. A held request of a removed provider is answered at once
and says why; a new refresh interval applies to the next refresh, not one refresh late."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from checks import assert_invalid_token
from harness import Reply, Response
from observe import wait_for_audit
from tokens import KeySet, claims

ALG = "ES256"
WORKERS = 4
ISS_KEPT = "https://kept.idp.test"
ISS_REMOVED = "https://removed.idp.test"
SLOW_KEYS_S = 2.0
SLACK_S = 1.5


def provider(issuer: str, uri: str, **extra: Any) -> dict[str, Any]:
    return {"issuer": issuer, "jwksUri": uri, **extra}


def send(envoy, key: KeySet, issuer: str, request_id: str | None = None) -> Response:
    headers = {"Authorization": f"Bearer {key.mint(ALG, claims(issuer, audience=None))}"}
    if request_id:
        headers["x-request-id"] = request_id
    return envoy.request("/", headers=headers, timeout=10)


def timed_send(envoy, key: KeySet, issuer: str, request_id: str) -> tuple[Response, float]:
    resp = send(envoy, key, issuer, request_id)
    return resp, time.monotonic()


def test_requests_held_across_a_push_are_decided_by_the_new_configuration(envoys, idps):
    idp = idps()
    key = KeySet([ALG])
    slow = Reply(body=json.dumps({"keys": [key[ALG].public_jwk]}).encode(), delay_s=SLOW_KEYS_S)
    idp.respond("/kept.json", slow)
    idp.respond("/removed.json", slow)
    audit = {"audit": {"level": "info", "allowedSampleRate": 1.0}}
    envoy = envoys.build({**audit, "providers": [
        provider(ISS_KEPT, idp.url + "/kept.json"),
        provider(ISS_REMOVED, idp.url + "/removed.json"),
    ]}, idps=[idp], concurrency=WORKERS, pushable=True).start()
    kept_id, removed_id = str(uuid.uuid4()), str(uuid.uuid4())
    with ThreadPoolExecutor(2) as pool:
        kept = pool.submit(timed_send, envoy, key, ISS_KEPT, kept_id)
        removed = pool.submit(timed_send, envoy, key, ISS_REMOVED, removed_id)
        time.sleep(0.5)  # both held: their keys are on the way
        assert not kept.done() and not removed.done()
        envoy.push({**audit, "providers": [provider(ISS_KEPT, idp.url + "/kept.json")]})
        pushed = time.monotonic()
        (kept_resp, kept_at), (removed_resp, removed_at) = kept.result(), removed.result()

    assert_invalid_token(removed_resp, "issuer")
    assert removed_at - pushed < 1.0, f"answered {removed_at - pushed:.2f}s after the push"
    assert wait_for_audit(envoy, removed_id).fields["reason"] == "provider_removed"

    # The fetch started before the push serves the new configuration: no 503 at the timeout.
    assert kept_resp.status == 200, kept_resp
    assert kept_at - pushed < SLOW_KEYS_S + SLACK_S
    assert wait_for_audit(envoy, kept_id).fields["decision"] == "allow"
    # Envoy drops the old root context with the answer of the fetch it made: the new one
    # fetches again at once (its lease freed), not after the fetch timeout, and not per worker.
    assert 2 <= idp.count("/kept.json") <= 3, idp.requests()
    print(f"\nheld across a push: removed provider answered {1000 * (removed_at - pushed):.0f} ms "
          f"after it, kept provider {1000 * (kept_at - pushed):.0f} ms after it")


SHORT_S = 2
LONG_S = 600


def wait_for_fetch(idp, path: str, after: int, within_s: float) -> float:
    """Seconds until `path` was fetched more than `after` times."""
    started = time.monotonic()
    while idp.count(path) <= after:
        assert time.monotonic() - started < within_s, f"{path} not fetched again within {within_s}s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_pushed_refresh_interval_applies_to_the_next_refresh(envoys, idps):
    idp = idps()
    key = KeySet([ALG])
    idp.set_json("/keys.json", {"keys": [key[ALG].public_jwk]})
    idp.set_json("/revoked.json", {})

    def config(seconds: int) -> dict[str, Any]:
        return {"providers": [provider(
            ISS_KEPT, idp.url + "/keys.json", jwksCacheSeconds=seconds,
            revocationUri=idp.url + "/revoked.json", revocationRefreshSeconds=seconds)]}

    envoy = envoys.build(config(LONG_S), idps=[idp], concurrency=WORKERS, pushable=True).start()
    deadline = time.monotonic() + 5
    while send(envoy, key, ISS_KEPT).status != 200:
        assert time.monotonic() < deadline, "keys never loaded"
        time.sleep(0.1)
    keys, lists = idp.count("/keys.json"), idp.count("/revoked.json")
    assert (keys, lists) == (1, 1)

    envoy.push(config(SHORT_S))
    keys_after = wait_for_fetch(idp, "/keys.json", keys, SHORT_S + SLACK_S)
    list_after = wait_for_fetch(idp, "/revoked.json", lists, SHORT_S + SLACK_S)
    print(f"\n{LONG_S}s -> {SHORT_S}s pushed: keys refreshed {keys_after:.2f}s, "
          f"revocation list {list_after:.2f}s after the push")

    envoy.push(config(LONG_S))
    keys, lists = idp.count("/keys.json"), idp.count("/revoked.json")
    time.sleep(3 * SHORT_S)
    assert (idp.count("/keys.json"), idp.count("/revoked.json")) == (keys, lists), \
        "a longer interval applies at once too"
    assert send(envoy, key, ISS_KEPT).status == 200
    assert envoy.crash_lines() == []
