"""A crashed VM is reloaded (`failure_policy: FAIL_RELOAD`, Istio's `failStrategy: FAIL_RELOAD`)
and carries on correctly: the request that crashed it is not let through, the next ones are
decided by a new VM with the keys other VMs left in shared data (no new fetch), and the restart
shows in `mesh_oauth.vm_starts.<plugin>`.

The module is the test-only build of `make crash-test-module` (`$MESH_OAUTH_CRASH_TEST_WASM`,
feature `crash-test`): it traps on a request carrying `x-mesh-oauth-crash-test`. The module that
ships has no such path."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from checks import assert_invalid_token, assert_missing_token
from harness import EnvoyFactory
from observe import stats
from tokens import claims

ISSUER = "https://reload.idp.test"
ALG = "RS256"
CRASH = {"x-mesh-oauth-crash-test": "1"}
VM_STARTS = "mesh_oauth.vm_starts.mesh_oauth"


@pytest.fixture
def crash_module() -> Path:
    path = Path(os.environ.get("MESH_OAUTH_CRASH_TEST_WASM", ""))
    if not path.is_file():
        pytest.fail("the crash-test module is missing: `make crash-test-module` and set "
                    "MESH_OAUTH_CRASH_TEST_WASM", pytrace=False)
    return path


@pytest.fixture
def reloading(crash_module, envoy_bin, echo, tmp_path, idps, keys):
    idp = idps()
    idp.set_jwks(keys.jwks([ALG]))
    factory = EnvoyFactory(envoy_bin, crash_module, echo, tmp_path)
    config = {"realm": "reload", "providers": [{"issuer": ISSUER, "jwksUri": idp.jwks_uri,
                             "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]}]}
    envoy = factory.start(config, idps=[idp], concurrency=1)
    yield envoy, idp
    factory.stop_all()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_crashed_vm_is_replaced_and_decides_with_the_shared_keys(reloading, keys):
    envoy, idp = reloading
    valid = bearer(keys.mint(ALG, claims(ISSUER, audience=None)))
    assert envoy.request("/before", headers=valid).status == 200
    assert idp.count("/jwks.json") == 1
    starts_before = stats(envoy)[VM_STARTS]

    crashed = envoy.request("/crash", headers={**valid, **CRASH})
    assert crashed.status == 503, f"the crashing request must not pass: {crashed}"
    assert b'"path"' not in crashed.body, "the echo upstream answered it"
    assert any("proxy_on_request_headers failed" in line for line in envoy.crash_lines()), envoy.crash_lines()

    # The next requests are decided as before, by a new VM (Envoy may back off briefly).
    deadline = time.monotonic() + 10
    while (resp := envoy.request("/after", headers=valid)).status != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resp.status == 200, resp
    assert resp.upstream["headers"]["x-sub"] == claims(ISSUER)["sub"]
    assert_missing_token(envoy.request("/after"), "reload")
    forged = keys.mint(ALG, claims("https://other.idp.test", audience=None))
    assert_invalid_token(envoy.request("/after", headers=bearer(forged)), "token issuer is not trusted")

    assert idp.count("/jwks.json") == 1, "the new VM took the keys from shared data"
    assert stats(envoy)[VM_STARTS] == starts_before + 1, "the one reloaded VM is counted"
