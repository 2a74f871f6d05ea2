"""The harness itself, with Envoy but without the module: when these fail, the other failures
say nothing about mesh-oauth."""

import http.client
import time

import pytest

from harness import IdpServer, Reply, http_request


def test_envoy_without_the_filter_passes_requests_and_headers_to_the_echo_upstream(plain_envoys, idps):
    envoy = plain_envoys.start(None, idps=[idps()])
    resp = envoy.request("/some/path", query={"a": "1"},
                         headers=[("Authorization", "Bearer one"), ("X-Custom", "v"), ("Host", "api.example.com")])
    seen = resp.upstream
    assert seen["method"] == "GET"
    assert seen["path"] == "/some/path?a=1"
    assert seen["headers"]["authorization"] == "Bearer one"
    assert seen["headers"]["x-custom"] == "v"
    assert seen["headers"]["host"] == "api.example.com"


def test_envoy_is_stopped_at_teardown(plain_envoys):
    envoy = plain_envoys.start(None)
    plain_envoys.stop_all()
    assert envoy.proc is not None and envoy.proc.returncode is not None
    with pytest.raises(OSError):
        http_request(envoy.port, "/", timeout=1)


def test_idp_serves_counts_and_misbehaves_on_demand(idps):
    idp: IdpServer = idps()
    idp.set_jwks({"keys": [{"kty": "oct", "k": "AA"}]})
    assert http_request(idp.port, "/jwks.json").json() == {"keys": [{"kty": "oct", "k": "AA"}]}
    discovery = http_request(idp.port, "/.well-known/openid-configuration").json()
    assert discovery["jwks_uri"] == idp.jwks_uri

    idp.respond("/jwks.json", Reply(status=500, body=b"boom"))
    assert http_request(idp.port, "/jwks.json").status == 500
    idp.respond("/jwks.json", Reply(body=b"\x00not json"))
    assert http_request(idp.port, "/jwks.json").body == b"\x00not json"
    idp.respond("/jwks.json", Reply(delay_s=2.0))
    started = time.monotonic()
    with pytest.raises((TimeoutError, http.client.HTTPException, OSError)):
        http_request(idp.port, "/jwks.json", timeout=0.3)
    assert time.monotonic() - started < 1.5

    assert idp.count("/jwks.json") == 4
    assert idp.count("/.well-known/openid-configuration") == 1
    assert idp.cluster == f"outbound|{idp.port}||127.0.0.1"
