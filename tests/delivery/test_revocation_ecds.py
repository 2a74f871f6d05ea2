"""Revoking an identity by a configuration push, as Istio delivers it (ECDS): the pushed
`revoked` applies within seconds to a token the running filter had already accepted and cached,
without an Envoy restart, while every other identity keeps passing throughout the switch."""

from __future__ import annotations

import time

import pytest

from checks import assert_invalid_token
from test_ecds_reload import (  # noqa: F401 - `setup` is the fixture this module's tests use
    DWELL_S,
    INITIAL_RULES,
    ISS_ORDERS,
    KEYS_FETCHED,
    KEYS_INLINE,
    Probe,
    Prober,
    Setup,
    publish_and_wait,
    setup,
)
from tokens import claims

SCOPE = "orders:read"


@pytest.mark.parametrize("setup", [KEYS_INLINE, KEYS_FETCHED], indirect=True)
def test_a_pushed_revocation_refuses_a_cached_token_and_no_one_else(setup: Setup) -> None:
    alice = setup.keys.mint("RS256", claims(ISS_ORDERS, "api", sub="alice", scope=SCOPE))
    bob = setup.keys.mint("RS256", claims(ISS_ORDERS, "api", sub="bob", scope=SCOPE))
    stable = setup.stable_token()

    def read(token: str):
        return setup.request("/orders/7", token)

    # Accepted, and so cached by the running configuration's filter (several times: two workers).
    assert [read(alice).status for _ in range(4)] == [200] * 4

    providers = setup.providers()
    assert providers[1]["issuer"] == ISS_ORDERS
    providers[1]["revoked"] = {"subjects": ["alice"]}
    pid = setup.envoy.proc.pid if setup.envoy.proc else None
    probes = [
        Probe("stable /status", lambda: setup.request("/status", stable), frozenset({200})),
        Probe("bob /orders", lambda: read(bob), frozenset({200})),
    ]
    with Prober(probes) as prober:
        switch_s = publish_and_wait(setup, {"providers": providers, "rules": INITIAL_RULES}, lambda: read(alice), 401)
        time.sleep(DWELL_S)
        # Every worker runs the new configuration by now.
        statuses = [read(alice).status for _ in range(6)]
    assert statuses == [401] * 6, statuses
    assert assert_invalid_token(read(alice), "token revoked") == "token revoked"
    assert prober.failures == [], f"failed during the switch ({prober.sent} sent): {prober.failures[:5]}"
    assert prober.sent >= 3 * len(probes), f"the background client hardly ran: {prober.sent}"
    assert setup.envoy.proc is not None and setup.envoy.proc.pid == pid and setup.envoy.proc.poll() is None, \
        "Envoy must not restart"
    print(f"\nECDS ({setup.key_delivery} keys): alice refused {switch_s * 1000:.0f} ms after the push, "
          f"{prober.sent} background requests")
