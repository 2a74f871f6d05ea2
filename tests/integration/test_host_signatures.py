"""The host verifies RS*/ES* signatures: Envoy 1.40's `verify_signature` (BoringSSL) passes the
module's known-answer test at start, and operators can see that in the log and a gauge. That
tokens of every algorithm still pass and fail exactly as before is test_algorithms.py's and
test_attacks.py's; the Wycheproof vectors through the host are test_host_wycheproof.py's."""

from observe import prometheus, stats
from plugin_configs import FAMILY_ISSUER
from tokens import claims

HOST_LINE = "mesh-oauth: signatures: RS*/ES* verified by the host (BoringSSL), others in the module (ring)"


def test_start_log_says_the_host_verifies(standard_envoy):
    log = standard_envoy.log()
    assert HOST_LINE in log
    assert "verified in the module (ring):" not in log
    # Once per VM Envoy starts (three with one worker here), not per request.
    assert log.count(HOST_LINE) <= 3


def test_gauge_says_the_host_verifies(standard_envoy, keys):
    token = keys.mint("ES256", claims(FAMILY_ISSUER["ES256"]))
    resp = standard_envoy.request("/orders", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, resp
    assert stats(standard_envoy)["mesh_oauth.host_signatures"] == 1
    sample = prometheus(standard_envoy)["mesh_oauth_host_signatures"]
    assert (sample.type, sample.value) == ("gauge", 1)
