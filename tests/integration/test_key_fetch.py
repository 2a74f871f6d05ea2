"""Fetching signing keys through Envoy clusters: discovery, caching, and 503 + Retry-After when
the keys cannot be had."""

import socket
import time

import pytest

from checks import assert_retry_after
from harness import LOOPBACK, Reply, istio_cluster_name
from tokens import RSA_ALGS, claims

ALG = "RS256"
ISS_CACHED = "https://cached.idp.test"
ISS_ANSWERS_500 = "https://answers-500.idp.test"
ISS_GARBAGE = "https://garbage.idp.test"
ISS_SLOW = "https://slow.idp.test"
ISS_UNREACHABLE = "https://unreachable.idp.test"
SLOW_TIMEOUT_S = 0.5


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fetch(module_envoys, module_idps, keys):
    """One Envoy, one IdP per provider so that each behaves its own way."""
    jwks = keys.jwks(RSA_ALGS)
    healthy, discovery, answers_500, garbage, slow = (module_idps() for _ in range(5))
    for idp in (healthy, discovery):
        idp.set_jwks(jwks)
    answers_500.set_jwks(jwks, status=500)
    garbage.respond("/jwks.json", Reply(body=b"<html>not a key set</html>", content_type="text/html"))
    slow.set_jwks(jwks, delay_s=5.0)
    unreachable = closed_port()
    config = {
        "providers": [
            {"issuer": ISS_CACHED, "jwksUri": healthy.jwks_uri},
            {"issuer": discovery.url},  # neither jwksUri nor jwks: OpenID Connect discovery
            {"issuer": ISS_ANSWERS_500, "jwksUri": answers_500.jwks_uri},
            {"issuer": ISS_GARBAGE, "jwksUri": garbage.jwks_uri},
            {"issuer": ISS_SLOW, "jwksUri": slow.jwks_uri, "timeout": f"{int(SLOW_TIMEOUT_S * 1000)}ms"},
            {"issuer": ISS_UNREACHABLE, "jwksUri": f"http://{LOOPBACK}:{unreachable}/jwks.json"},
        ]
    }
    envoy = module_envoys.start(
        config,
        idps=[healthy, discovery, answers_500, garbage, slow],
        extra_clusters={istio_cluster_name(unreachable): unreachable},
    )
    return {"envoy": envoy, "healthy": healthy, "discovery": discovery}


def send(envoy, keys, issuer):
    return envoy.request("/", headers={"Authorization": f"Bearer {keys.mint(ALG, claims(issuer, audience=None))}"})


# Envoy runs one Wasm VM per worker plus one on the main thread; until keys are shared
# between VMs (key-management issue) each VM fetches once.
VMS_WITH_ONE_WORKER = 2


def send_until_keys_loaded(envoy, keys, issuer, deadline_s=5.0):
    """Before its keys exist a provider answers 503 (+ Retry-After); wait that out, bounded."""
    end = time.monotonic() + deadline_s
    while True:
        resp = send(envoy, keys, issuer)
        if resp.status != 503 or time.monotonic() > end:
            return resp
        time.sleep(0.05)


def test_keys_are_fetched_once_per_vm_and_reused(fetch, keys):
    assert send_until_keys_loaded(fetch["envoy"], keys, ISS_CACHED).status == 200
    fetched = fetch["healthy"].count("/jwks.json")
    assert 1 <= fetched <= VMS_WITH_ONE_WORKER
    for _ in range(5):
        assert send(fetch["envoy"], keys, ISS_CACHED).status == 200
    assert fetch["healthy"].count("/jwks.json") == fetched


def test_openid_connect_discovery(fetch, keys):
    idp = fetch["discovery"]
    resp = send_until_keys_loaded(fetch["envoy"], keys, idp.url)
    assert resp.status == 200, resp
    assert 1 <= idp.count(idp.DISCOVERY_PATH) <= VMS_WITH_ONE_WORKER
    assert 1 <= idp.count("/jwks.json") <= VMS_WITH_ONE_WORKER


@pytest.mark.parametrize("issuer", [ISS_ANSWERS_500, ISS_GARBAGE, ISS_UNREACHABLE])
def test_keys_unavailable_is_503_with_retry_after(fetch, keys, issuer):
    assert_retry_after(send(fetch["envoy"], keys, issuer))


def test_key_server_slower_than_the_timeout_is_503_in_time(fetch, keys):
    started = time.monotonic()
    resp = send(fetch["envoy"], keys, ISS_SLOW)
    elapsed = time.monotonic() - started
    assert_retry_after(resp)
    assert elapsed < SLOW_TIMEOUT_S + 2.0, f"answered after {elapsed:.1f}s"


def test_failing_providers_do_not_affect_a_healthy_one(fetch, keys):
    for issuer in (ISS_ANSWERS_500, ISS_UNREACHABLE):
        send(fetch["envoy"], keys, issuer)
    assert send(fetch["envoy"], keys, ISS_CACHED).status == 200
