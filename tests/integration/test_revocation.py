"""Revocation in real Envoy: identities refused although their tokens verify, from the provider's
`revoked` (each form) and from a list fetched at `revocationUri` that takes effect without a
configuration push, on tokens the plugin has already cached. The list is fetched once per sidecar
per refresh, its last good version survives a failing server, and a provider whose list cannot be
had refuses to decide (503 + Retry-After), never to allow."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable

import pytest

from checks import assert_invalid_token, assert_retry_after
from harness import Envoy, IdpServer, Response
from observe import stats
from tokens import KeySet, claims

ALG = "ES256"
AUDIENCE = "api"
REVOKED = "token revoked"
# Slack for a loaded 2-core machine: Envoy ticks every 100 ms, the IdP is a Python thread.
SLACK_S = 1.0


def token(keys: KeySet, issuer: str, sub: str, **extra: Any) -> str:
    """A valid token; `iat=None` leaves `iat` out. A fresh `jti` unless one is given."""
    body = claims(issuer, AUDIENCE, sub=sub, jti=uuid.uuid4().hex)
    body.update(extra)
    if body.get("iat") is None:
        del body["iat"]
    return keys.mint(ALG, body)


def send(envoy: Envoy, bearer: str) -> Response:
    return envoy.request("/", headers={"Authorization": f"Bearer {bearer}"})


def assert_revoked(resp: Response) -> None:
    assert assert_invalid_token(resp, REVOKED) == REVOKED, resp


def wait_for(condition: Callable[[], bool], within_s: float, what: str) -> float:
    """Seconds until `condition` held; fails after `within_s`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within_s:
            pytest.fail(f"not within {within_s}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def provider(name: str, issuer: str, keys: KeySet, **options: Any) -> dict[str, Any]:
    """Inline keys: only the revocation list is ever fetched."""
    return {"name": name, "issuer": issuer, "audiences": [AUDIENCE], "jwks": keys.jwks_string([ALG]), **options}


# --------------------------------------------------------------------------- in the configuration

ISS_STATIC = "https://static.idp.test"
ISS_OTHER = "https://other.idp.test"
REVOKED_JTI = "jti-of-a-stolen-token"
NUMERIC_JTI = 12345
NOW = int(time.time())
# alice changed her password at CUTOFF: her tokens issued before it must go.
CUTOFF = NOW - 1000


@pytest.fixture(scope="module")
def static_envoy(module_envoys, keys) -> Envoy:
    revoked = {
        "jtis": [REVOKED_JTI, str(NUMERIC_JTI)],
        "subjects": ["mallory"],
        "subjectsIssuedBefore": {"alice": CUTOFF},
    }
    return module_envoys.start({"providers": [
        provider("static", ISS_STATIC, keys, revoked=revoked),
        # The same identities at another issuer: revocation is per provider.
        provider("other", ISS_OTHER, keys),
    ]})


@pytest.mark.parametrize("sub, extra, refused", [
    ("bob", {"jti": REVOKED_JTI}, True),
    ("bob", {}, False),
    ("mallory", {}, True),
    ("alice", {"iat": CUTOFF - 10}, True),
    ("alice", {"iat": None}, True),  # cannot show it was issued after the cut-off
    ("alice", {"iat": CUTOFF}, False),  # issued at the cut-off is not before it
    ("alice", {"iat": CUTOFF + 10}, False),
    ("carol", {"iat": CUTOFF - 10}, False),  # the cut-off is alice's alone
], ids=["revoked jti", "other jti", "revoked subject", "issued before cut-off", "no iat",
        "issued at cut-off", "issued after cut-off", "other subject before cut-off"])
def test_configured_revocation(static_envoy, keys, sub, extra, refused):
    bearer = token(keys, ISS_STATIC, sub, **extra)
    for _ in range(2):  # the second use may come from the verified-token cache
        resp = send(static_envoy, bearer)
        if refused:
            assert_revoked(resp)
        else:
            assert resp.status == 200, resp


@pytest.mark.parametrize("sub, extra", [("bob", {"jti": REVOKED_JTI}), ("mallory", {}), ("alice", {"iat": None})])
def test_revocation_is_per_provider(static_envoy, keys, sub, extra):
    assert send(static_envoy, token(keys, ISS_OTHER, sub, **extra)).status == 200


def test_a_numeric_jti_cannot_escape_revocation(static_envoy, keys):
    """RFC 7519 §4.1.7: jti is a string; a number is refused rather than compared as no jti."""
    assert_invalid_token(send(static_envoy, token(keys, ISS_STATIC, "bob", jti=NUMERIC_JTI)), "jti")


def test_refusals_are_counted_as_revoked(static_envoy, keys):
    before = stats(static_envoy).get("mesh_oauth.static.denied.revoked", 0)
    send(static_envoy, token(keys, ISS_STATIC, "mallory"))
    send(static_envoy, token(keys, ISS_STATIC, "bob", jti=REVOKED_JTI))
    assert stats(static_envoy)["mesh_oauth.static.denied.revoked"] == before + 2


# --------------------------------------------------------------------------- fetched from revocationUri

REFRESH_S = 1
# Jittered refresh (80-100 % of the interval), the next tick, the fetch, the other workers' tick.
APPLIED_WITHIN_S = REFRESH_S + 0.1 + SLACK_S + 0.5
ISS_FLOW = "https://flow.idp.test"
ISS_KEEPS = "https://keeps.idp.test"
ISS_COUNT = "https://count.idp.test"
ISS_BIG = "https://big.idp.test"
WORKERS = 2
COUNT_WINDOW_FETCHES = 5


class Remote:
    def __init__(self, envoy: Envoy, lists: IdpServer, started: float) -> None:
        self.envoy = envoy
        self.lists = lists
        self.started = started


def list_path(name: str) -> str:
    return f"/{name}/revoked.json"


@pytest.fixture(scope="module")
def remote(module_envoys, module_idps, keys) -> Remote:
    """Two workers; each provider has its own list on one list server."""
    lists = module_idps()
    initial = {"flow": {}, "keeps": {"subjects": ["alice"]}, "count": {}, "big": {}}
    issuers = {"flow": ISS_FLOW, "keeps": ISS_KEEPS, "count": ISS_COUNT, "big": ISS_BIG}
    for name, document in initial.items():
        lists.set_json(list_path(name), document)
    started = time.monotonic()
    envoy = module_envoys.start({"providers": [
        provider(name, issuers[name], keys, revocationUri=lists.url + list_path(name),
                 revocationRefreshSeconds=REFRESH_S)
        for name in initial
    ]}, idps=[lists], concurrency=WORKERS)
    for name, issuer in issuers.items():
        # Held until its list is in, then decided: "bob" is on no list.
        assert send(envoy, token(keys, issuer, "bob")).status == 200, name
    return Remote(envoy, lists, started)


def all_refused(envoy: Envoy, bearer: str, times: int = 6) -> list[int]:
    """Statuses of `times` requests on new connections (spread over the workers)."""
    return [send(envoy, bearer).status for _ in range(times)]


def test_a_listed_identity_is_refused_without_a_push_and_passes_once_removed(remote, keys):
    envoy, lists = remote.envoy, remote.lists
    alice = token(keys, ISS_FLOW, "alice")
    bob = token(keys, ISS_FLOW, "bob")
    bob_stolen_jti = uuid.uuid4().hex
    bob_stolen = token(keys, ISS_FLOW, "bob", jti=bob_stolen_jti)
    carol_old = token(keys, ISS_FLOW, "carol", iat=NOW - 200)
    carol_new = token(keys, ISS_FLOW, "carol")
    hits = stats(envoy).get("mesh_oauth.cache.hit", 0)
    for bearer in (alice, bob, bob_stolen, carol_old, carol_new) * 3:
        assert send(envoy, bearer).status == 200
    assert stats(envoy)["mesh_oauth.cache.hit"] > hits, "the tokens were cached before the revocation"

    lists.set_json(list_path("flow"), {"subjects": ["alice"]})
    revoked_after = wait_for(lambda: send(envoy, alice).status == 401, APPLIED_WITHIN_S, "alice refused")
    time.sleep(0.2)  # every worker's next tick adopts the list the first one fetched
    assert_revoked(send(envoy, alice))
    assert all_refused(envoy, alice) == [401] * 6
    assert send(envoy, bob).status == 200

    # Each form, and alice no longer listed.
    lists.set_json(list_path("flow"), {"jtis": [bob_stolen_jti], "subjectsIssuedBefore": {"carol": NOW - 100}})
    restored_after = wait_for(lambda: send(envoy, alice).status == 200, APPLIED_WITHIN_S, "alice passes again")
    time.sleep(0.2)
    assert all_refused(envoy, alice) == [200] * 6
    assert_revoked(send(envoy, bob_stolen))
    assert_revoked(send(envoy, carol_old))
    assert send(envoy, bob).status == 200
    assert send(envoy, carol_new).status == 200
    print(f"\nrevocation list: refused {revoked_after * 1000:.0f} ms after the list changed, "
          f"passed again {restored_after * 1000:.0f} ms after removal (refresh {REFRESH_S} s)")


def test_a_failing_list_server_leaves_the_last_good_list_in_force(remote, keys):
    envoy, lists = remote.envoy, remote.lists
    path = list_path("keeps")
    alice = token(keys, ISS_KEEPS, "alice")
    assert_revoked(send(envoy, alice))
    failures = stats(envoy).get("mesh_oauth.keeps.revocation_fetch.failure", 0)
    # Not a revocation list (unknown member), then a server error: neither replaces the good list.
    for reply in ({"subject": []}, {"error": "unavailable"}):
        fetched = lists.count(path)
        lists.set_json(path, reply, status=200 if "subject" in reply else 500)
        wait_for(lambda: lists.count(path) > fetched, APPLIED_WITHIN_S, "the list refreshed")
    time.sleep(0.2)
    assert all_refused(envoy, alice) == [401] * 6
    assert send(envoy, token(keys, ISS_KEEPS, "bob")).status == 200
    assert stats(envoy)["mesh_oauth.keeps.revocation_fetch.failure"] >= failures + 2


def test_a_list_larger_than_a_key_set_may_be_applies(remote, keys):
    """Up to `limits.maxRevocationBytes` (1 MiB) is a valid list, beyond `maxJwksBytes` (256 KiB)."""
    envoy = remote.envoy
    document = {"subjects": [f"user-{i:07d}" for i in range(24_000)] + ["alice"]}
    size = len(json.dumps(document))
    assert 256 * 1024 < size < 1024 * 1024, size
    remote.lists.set_json(list_path("big"), document)
    wait_for(lambda: send(envoy, token(keys, ISS_BIG, "alice")).status == 401, APPLIED_WITHIN_S,
             f"alice refused by a list of {size} bytes")
    assert send(envoy, token(keys, ISS_BIG, "bob")).status == 200


def test_the_list_is_fetched_once_per_refresh_for_the_whole_sidecar(remote):
    """Every VM (two workers, the main thread) syncs each tick; the shared lease lets one fetch."""
    lists = remote.lists

    def arrivals() -> list[float]:
        return [at for at, target in lists.requests() if target == list_path("count")]

    wait_for(lambda: len(arrivals()) >= COUNT_WINDOW_FETCHES, COUNT_WINDOW_FETCHES * (REFRESH_S + SLACK_S),
             f"{COUNT_WINDOW_FETCHES} fetches")
    seen = arrivals()
    gaps = [later - earlier for earlier, later in zip(seen, seen[1:])]
    window = seen[-1] - seen[0]
    periods = window / REFRESH_S
    print(f"\n{len(seen)} list fetches over {window:.2f} s with {WORKERS} workers; "
          f"gaps {min(gaps):.2f}-{max(gaps):.2f} s")
    # One fetch per jittered period (>= 80 % of the interval); a fetch per worker would be
    # at least twice that.
    assert len(seen) <= periods / 0.8 + 1, seen
    assert min(gaps) >= 0.8 * REFRESH_S - 0.1, gaps
    assert max(gaps) <= REFRESH_S + SLACK_S, gaps


# --------------------------------------------------------------------------- a list that is not there yet

ISS_SLOW = "https://slow-list.idp.test"
ISS_NEVER = "https://never-list.idp.test"
SLOW_LIST_S = 2.0
NEVER_TIMEOUT_S = 1


def test_requests_wait_for_the_list_and_fail_closed_without_it(envoys, idps, keys):
    lists = idps()
    lists.set_json(list_path("slow"), {"subjects": ["alice"]}, delay_s=SLOW_LIST_S)
    lists.set_json(list_path("never"), {"subjects": []}, status=500)
    envoy = envoys.start({"providers": [
        provider("slow", ISS_SLOW, keys, revocationUri=lists.url + list_path("slow"), timeout="5s"),
        provider("never", ISS_NEVER, keys, revocationUri=lists.url + list_path("never"),
                 timeout=f"{NEVER_TIMEOUT_S}s"),
    ]}, idps=[lists])

    sent = time.monotonic()
    resp = send(envoy, token(keys, ISS_SLOW, "bob"))
    answered = time.monotonic()
    first_fetch = next(at for at, target in lists.requests() if target == list_path("slow"))
    list_in = first_fetch + SLOW_LIST_S
    assert sent < list_in, "Envoy started too slowly to observe a request held for the list"
    assert resp.status == 200, resp
    assert answered >= list_in - 0.05, "answered before the list was in"
    assert_revoked(send(envoy, token(keys, ISS_SLOW, "alice")))

    # The keys are inline and the token valid: only the missing list stops it.
    started = time.monotonic()
    resp = send(envoy, token(keys, ISS_NEVER, "bob"))
    assert_retry_after(resp)
    assert time.monotonic() - started < NEVER_TIMEOUT_S + SLACK_S
    assert lists.count(list_path("never")) >= 2, "retried"
