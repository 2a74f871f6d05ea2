"""The service as an OAuth protected resource (RFC 9728): the filter answers the metadata
requests itself, names the metadata in every 401, and binds tokens to the resource (RFC 8707)."""

from __future__ import annotations

import pytest

from plugin_configs import ISS_RSA, serve_family_jwks
from tokens import claims

RESOURCE = "https://tools.example.com/mcp"
METADATA = "/.well-known/oauth-protected-resource/mcp"


@pytest.fixture(scope="module")
def resource_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    config = {
        "providers": [{"issuer": ISS_RSA, "jwksUri": serve_family_jwks(idp, keys)[ISS_RSA]}],
        "rules": [{"match": {"paths": ["/mcp"]}, "requires": {"scopes": ["tools:call"]}}],
        "unmatched": "deny",
        "protectedResource": {"resource": RESOURCE, "resourceName": "Tools"},
    }
    return module_envoys.start(config, idps=[idp])


def test_metadata_is_answered_by_the_filter(resource_envoy):
    for path in (METADATA, "/.well-known/oauth-protected-resource"):
        resp = resource_envoy.request(path)
        assert resp.status == 200, resp
        assert resp.header("content-type") == "application/json"
        assert resp.header("access-control-allow-origin") == "*"
        assert resp.header("cache-control") == "public, max-age=3600"
        assert resp.json() == {
            "resource": RESOURCE,
            "authorization_servers": [ISS_RSA],
            "scopes_supported": ["tools:call"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Tools",
            "tls_client_certificate_bound_access_tokens": False,
        }, resp
        assert "path" not in resp.json(), "the upstream echo must not have answered"
    head = resource_envoy.request(METADATA, method="HEAD")
    assert head.status == 200 and head.body == b"", head
    preflight = resource_envoy.request(METADATA, method="OPTIONS",
                                       headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert preflight.status == 204, preflight
    post = resource_envoy.request(METADATA, method="POST", body=b"{}")
    assert post.status == 405 and post.header("allow") == "GET, HEAD, OPTIONS", post


def test_every_401_names_the_metadata(resource_envoy, keys):
    url = f'resource_metadata="https://tools.example.com{METADATA}"'
    missing = resource_envoy.request("/mcp")
    assert missing.status == 401 and url in missing.header("www-authenticate"), missing
    # The rule's scopes, so an MCP client knows what to ask for.
    assert 'scope="tools:call"' in missing.header("www-authenticate"), missing
    expired = keys.mint("RS256", claims(ISS_RSA, audience=RESOURCE, lifetime=-3600, scope="tools:call"))
    invalid = resource_envoy.request("/mcp", headers={"Authorization": f"Bearer {expired}"})
    assert invalid.status == 401 and url in invalid.header("www-authenticate"), invalid


def test_tokens_must_name_the_resource(resource_envoy, keys):
    """RFC 8707: a token the AS issued for another resource does not pass here."""
    ours = keys.mint("RS256", claims(ISS_RSA, audience=RESOURCE, scope="tools:call"))
    assert resource_envoy.request("/mcp", headers={"Authorization": f"Bearer {ours}"}).status == 200
    theirs = keys.mint("RS256", claims(ISS_RSA, audience="https://other.example.com/mcp", scope="tools:call"))
    resp = resource_envoy.request("/mcp", headers={"Authorization": f"Bearer {theirs}"})
    assert resp.status == 401 and 'error="invalid_token"' in resp.header("www-authenticate"), resp


@pytest.fixture(scope="module")
def gateway_envoy(module_envoys, module_idps, keys):
    idp = module_idps()
    config = {
        "providers": [{"issuer": ISS_RSA, "jwksUri": serve_family_jwks(idp, keys)[ISS_RSA]}],
        "protectedResource": [
            {"hosts": ["tools.example.com"], "resource": RESOURCE},
            {"resource": "https://api.example.com"},
        ],
        "unmatched": "authenticated",
    }
    return module_envoys.start(config, idps=[idp])


def test_a_gateway_serves_each_host_its_own_resource(gateway_envoy, keys):
    """One plugin at an ingress gateway, two resources: each host gets its own metadata, and a
    token issued for one resource does not pass at the other's host."""
    tools = gateway_envoy.request(METADATA, headers={"Host": "tools.example.com"})
    assert tools.status == 200 and tools.json()["resource"] == RESOURCE, tools
    api = gateway_envoy.request("/.well-known/oauth-protected-resource", headers={"Host": "api.example.com"})
    assert api.status == 200 and api.json()["resource"] == "https://api.example.com", api
    for_tools = keys.mint("RS256", claims(ISS_RSA, audience=RESOURCE))
    auth = {"Authorization": f"Bearer {for_tools}"}
    assert gateway_envoy.request("/mcp", headers={**auth, "Host": "tools.example.com"}).status == 200
    crossed = gateway_envoy.request("/orders", headers={**auth, "Host": "api.example.com"})
    assert crossed.status == 401, crossed
    assert 'error_description="token audience is not this resource"' in crossed.header("www-authenticate"), crossed
    assert 'resource_metadata="https://api.example.com/.well-known/oauth-protected-resource"' in crossed.header(
        "www-authenticate"), crossed
