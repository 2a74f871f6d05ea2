"""The attack suite: every case of `attacks.catalogue()` through one real Envoy, each answered
with its expected status and the cause named in `error_description`. An attacker's server is
reachable through Envoy the whole time; nothing a token says may make the plugin contact it."""

from __future__ import annotations

import pytest

from attacks import REALM, AttackKit, Case, Req, catalogue, plugin_config, public_jwk
from checks import assert_invalid_request, assert_invalid_token, assert_missing_token, assert_retry_after, error_body
from harness import Envoy, IdpServer

CASES = catalogue()
MAIN_JWKS_PATH = "/main/jwks.json"
ONLY_WEAK_PATH = "/only-weak/jwks.json"
# Everything the tokens point the attacker's server at (jku, x5u), and what a fetcher might try.
ATTACKER_PATHS = ("/jwks.json", "/cert.pem", "/", IdpServer.DISCOVERY_PATH)


@pytest.fixture(scope="module")
def attacker(module_idps) -> IdpServer:
    server = module_idps()
    server.set_jwks({"keys": []})
    return server


@pytest.fixture(scope="module")
def kit(attacker) -> AttackKit:
    return AttackKit(attacker.url)


@pytest.fixture(scope="module")
def requests(kit) -> dict[str, Req]:
    """Every case's request, minted once before the first is sent."""
    return {case.id: case.build(kit) for case in CASES}


@pytest.fixture(scope="module")
def attack_envoy(module_envoys, module_idps, attacker, kit, requests) -> Envoy:
    idp = module_idps()
    idp.set_json(MAIN_JWKS_PATH, kit.main_jwks())
    key_uris = {}
    for name, document in kit.key_sets.documents().items():
        idp.set_json(f"/keys/{name}.json", document)
        key_uris[name] = f"{idp.url}/keys/{name}.json"
    idp.set_json(ONLY_WEAK_PATH, {"keys": [public_jwk(kit.key_sets.weak)]})
    config = plugin_config(kit.main_jwks(), idp.url + MAIN_JWKS_PATH, key_uris, idp.url + ONLY_WEAK_PATH)
    # The attacker's host has a cluster, as it would if it were a real IdP in the mesh: a fetch
    # could reach it, so the zero-hits check below means something.
    return module_envoys.start(config, idps=[idp], extra_clusters={attacker.cluster: attacker.port})


def check(case: Case, resp) -> None:
    if case.status == 200:
        assert resp.status == 200, resp
    elif case.status == 401 and case.reason is None:
        assert_missing_token(resp, REALM)
    elif case.status == 401:
        assert_invalid_token(resp, case.reason)
    elif case.status == 400:
        assert_invalid_request(resp)
        assert case.reason in error_body(resp)["error_description"], resp
    elif case.status == 503:
        assert_retry_after(resp)
    else:
        raise AssertionError(f"no check for status {case.status}")


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}/{c.id}" for c in CASES])
def test_attack(attack_envoy, requests, case):
    req = requests[case.id]
    resp = attack_envoy.request("/orders", headers=req.headers, query=req.query)
    check(case, resp)


def test_the_attackers_server_was_never_contacted(attack_envoy, attacker, requests):
    """jku, x5u and x5c are never followed (runs after the cases: pytest keeps file order)."""
    hits = {path: attacker.count(path) for path in ATTACKER_PATHS}
    assert not any(hits.values()), hits


def test_no_crash_and_a_valid_token_still_passes(attack_envoy, kit):
    resp = attack_envoy.request("/orders", headers={"Authorization": f"Bearer {kit.good()}"})
    assert resp.status == 200, resp
    log = attack_envoy.log()
    for sign in ("panicked", "Wasm VM failed", "wasm log mesh-oauth: panic"):
        assert sign not in log, f"{sign!r} in the Envoy log"
