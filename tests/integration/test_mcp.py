"""The MCP authorization flow end to end: an unmodified MCP TypeScript SDK client authorizes
itself and calls a tool on an SDK MCP server that knows nothing about OAuth, through real Envoy
with the mesh-oauth filter in front of it.

- `mcp/as.mjs`: npm `oidc-provider`, the client credentials grant, resource indicators (RFC 8707)
  issuing JWT access tokens whose `aud` is the resource asked for.
- `mcp/server.mjs`: the SDK's `McpServer` (one tool, `add`) over the stateless Streamable HTTP
  transport: Envoy's upstream. It records every request it receives, which is how the test
  tells what the filter answered itself.
- `mcp/client.mjs`: the SDK's `Client` with its `ClientCredentialsProvider`; its fetch is wrapped
  only to record the HTTP exchanges the SDK made.

The filter is configured as an MCP server's resource server would be (`protectedResource`, a
rule requiring `tools:call`): the SDK must find everything it needs in the filter's 401 and
metadata document (MCP authorization spec, RFC 9728), so this is the test that the filter's
answers are what a real MCP client acts on, not just what the specs say.

`resource` must name Envoy's own port, so the listener port is chosen before Envoy starts."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import REPO
import node_tools
from harness import LOOPBACK, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, Envoy, EnvoyFactory, Response, istio_cluster_name
from mtls import free_ports
from tokens import payload_of

MCP = Path(__file__).resolve().parent / "mcp"
NODE_TIMEOUT_S = 30.0
CLIENT_ID = "mcp-client"
CLIENT_SECRET = "mcp-client-secret"
SCOPE = "tools:call"
# A scope the AS grants for the resource that the rule does not accept.
OTHER_SCOPE = "tools:read"
# A second resource the AS issues tokens for (as.mjs --other-resource): valid tokens, wrong `aud`.
OTHER_RESOURCE = "https://other.mesh-oauth.test/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"
# The header the filter gives the upstream from a verified token's `client_id`.
CLIENT_HEADER = "x-token-client-id"
NODE_PACKAGES = ("oidc-provider", "@modelcontextprotocol/sdk")
# A JSON-RPC request as an MCP client opens a session with, for the hand-made requests.
INITIALIZE = json.dumps({
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "mesh-oauth-test", "version": "1"}},
}).encode()
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def node_binary() -> str:
    return node_tools.node_binary("the MCP test runs the MCP TypeScript SDK and oidc-provider", NODE_PACKAGES)


@dataclass
class NodeProcess:
    """A Node.js helper that printed its ready line."""

    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    log_path: Path

    def stop(self) -> None:
        node_tools.stop(self.proc)


def start_node(script: Path, args: list[str], log_path: Path) -> NodeProcess:
    proc, ready = node_tools.start_server(node_binary(), script, args, log_path, READY_TIMEOUT_S)
    return NodeProcess(proc, ready, log_path)


@dataclass
class Setup:
    """Everything running: the resource URI is Envoy's own /mcp."""

    resource: str
    envoy: Envoy
    authorization_server: NodeProcess
    mcp_server: NodeProcess
    record_path: Path

    @property
    def issuer(self) -> str:
        return str(self.authorization_server.ready["issuer"])

    def upstream_requests(self) -> list[dict[str, Any]]:
        """What reached server.mjs, in order."""
        if not self.record_path.exists():
            return []
        return [json.loads(line) for line in self.record_path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def setup(module_envoys: EnvoyFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("mcp")
    (envoy_port,) = free_ports(1)
    resource = f"http://{LOOPBACK}:{envoy_port}/mcp"
    started: list[NodeProcess] = []
    try:
        server = start_node(MCP / "as.mjs", ["--port", "0", "--resource", resource, "--other-resource", OTHER_RESOURCE],
                            workdir / "as.log")
        started.append(server)
        record_path = workdir / "upstream.jsonl"
        mcp_server = start_node(MCP / "server.mjs", ["--port", "0", "--record", str(record_path)],
                                workdir / "server.log")
        started.append(mcp_server)
        as_port = int(server.ready["port"])
        config = {
            # No `audiences`: `protectedResource` makes the resource the one accepted `aud`. The
            # claim header shows the MCP server which requests the filter let through verified.
            "providers": [{"issuer": server.ready["issuer"], "jwksUri": server.ready["jwks_uri"],
                           "outputClaimToHeaders": [{"header": CLIENT_HEADER, "claim": "client_id"}]}],
            "rules": [{"match": {"paths": ["/mcp"]}, "requires": {"scopes": [SCOPE]}}],
            "unmatched": "deny",
            "protectedResource": {"resource": resource},
        }
        # The MCP server replaces the echo upstream; the AS gets the cluster Istio would name.
        envoy = module_envoys.build(config, extra_clusters={"upstream": int(mcp_server.ready["port"]),
                                                            istio_cluster_name(as_port): as_port})
        envoy.config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = envoy_port
        envoy.start()
        assert envoy.port == envoy_port
        yield Setup(resource, envoy, server, mcp_server, record_path)
    finally:
        for process in reversed(started):
            process.stop()


@dataclass
class ClientRun:
    """What client.mjs printed, and what reached the upstream while it ran."""

    output: dict[str, Any]
    upstream: list[dict[str, Any]]

    @property
    def requests(self) -> list[dict[str, Any]]:
        return list(self.output["requests"])


def run_client(setup: Setup, *extra: str) -> tuple[int, ClientRun]:
    command = [node_binary(), str(MCP / "client.mjs"), "--url", setup.resource,
               "--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET, "--issuer", setup.issuer, *extra]
    before = len(setup.upstream_requests())
    done = subprocess.run(command, capture_output=True, timeout=NODE_TIMEOUT_S, cwd=REPO, stdin=subprocess.DEVNULL)
    stdout = done.stdout.decode(errors="replace")
    try:
        output = json.loads(stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"client.mjs printed no JSON ({done.returncode}):\n{stdout}\n"
                             f"{done.stderr.decode(errors='replace')}") from None
    return done.returncode, ClientRun(output, setup.upstream_requests()[before:])


@pytest.fixture(scope="module")
def client_run(setup: Setup) -> ClientRun:
    """One run of the SDK client: the whole flow, from the first unauthenticated request on.
    The client is configured with its scope: SDK 1.x sends a client_credentials token request
    only the provider's `scope` option, not the challenge's (see mcp/client.mjs)."""
    returncode, run = run_client(setup, "--scope", SCOPE)
    assert returncode == 0, (f"client.mjs failed ({returncode}):\n{json.dumps(run.output, indent=1)}\n"
                             f"--- envoy ---\n{setup.envoy.log()[-4000:]}")
    return run


def token(setup: Setup, resource: str, scope: str) -> str:
    """A token straight from the AS, as the SDK would ask for one (client_secret_basic)."""
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    body = urllib.parse.urlencode({"grant_type": "client_credentials", "resource": resource, "scope": scope}).encode()
    request = urllib.request.Request(str(setup.authorization_server.ready["token_endpoint"]), data=body,
                                     headers={"Authorization": f"Basic {basic}",
                                              "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as resp:
            return str(json.load(resp)["access_token"])
    except urllib.error.HTTPError as error:
        raise AssertionError(f"token request refused: {error.code} {error.read()!r}") from error


def call_mcp(setup: Setup, access_token: str | None) -> Response:
    headers = dict(MCP_HEADERS)
    if access_token is not None:
        headers["Authorization"] = f"Bearer {access_token}"
    return setup.envoy.request("/mcp", method="POST", headers=headers, body=INITIALIZE)


def challenge_params(value: str) -> dict[str, str]:
    """`Bearer a="1", b="2"` → {"a": "1", "b": "2"} (the filter's values hold no quotes or commas)."""
    scheme, _, rest = value.partition(" ")
    assert scheme == "Bearer", value
    params = {}
    for part in rest.split(", "):
        name, _, quoted = part.partition("=")
        params[name.strip()] = quoted.strip('"')
    return params


# --------------------------------------------------------------------------- the SDK's flow


def test_sdk_client_lists_and_calls_the_tool(client_run: ClientRun) -> None:
    """The claim itself: an unmodified SDK client gets through the filter to the tool."""
    assert "error" not in client_run.output, client_run.output
    assert client_run.output["tools"] == ["add"]
    assert client_run.output["result"]["content"] == [{"type": "text", "text": "5"}], client_run.output["result"]


def test_sdk_followed_the_filters_401_to_the_metadata(setup: Setup, client_run: ClientRun) -> None:
    """The SDK found the metadata through the challenge (`resource_metadata`), not by guessing,
    and the document it got names this resource and this AS."""
    requests = client_run.requests
    first = requests[0]
    assert (first["method"], first["url"], first["status"]) == ("POST", setup.resource, 401), first
    params = challenge_params(first["www_authenticate"])
    metadata_url = f"http://{LOOPBACK}:{setup.envoy.port}{METADATA_PATH}"
    assert params["resource_metadata"] == metadata_url, params
    assert params["scope"] == SCOPE, params
    fetched = requests[1]
    assert (fetched["method"], fetched["url"], fetched["status"]) == ("GET", metadata_url, 200), fetched
    assert fetched["json"]["resource"] == setup.resource, fetched
    assert fetched["json"]["authorization_servers"] == [setup.issuer], fetched
    assert fetched["json"]["scopes_supported"] == [SCOPE], fetched


def test_metadata_was_answered_by_the_filter(client_run: ClientRun) -> None:
    """Nothing under /.well-known reached the MCP server; what did reach it is exactly the SDK's
    requests that carried a token, each verified (the claim header) and without the token
    itself (`forwardOriginalToken` is off: the MCP server never holds it)."""
    assert client_run.upstream, "nothing reached the MCP server"
    assert [r for r in client_run.upstream if r["path"] != "/mcp"] == [], client_run.upstream
    assert all(r["client"] == CLIENT_ID and not r["authorization"] for r in client_run.upstream), client_run.upstream
    with_token = [r for r in client_run.requests if r["url"].endswith("/mcp") and r["authorization"] == "Bearer"]
    assert len(client_run.upstream) == len(with_token), (client_run.upstream, client_run.requests)


def test_sdk_asked_the_as_for_a_token_for_the_resource(setup: Setup, client_run: ClientRun) -> None:
    """RFC 8707 and the challenge's scope: the token request names the resource and `tools:call`,
    and the token the SDK used is one for this resource."""
    token_requests = [r for r in client_run.requests if r["url"] == setup.authorization_server.ready["token_endpoint"]]
    assert len(token_requests) == 1, client_run.requests
    form = token_requests[0]["body"]
    assert form["grant_type"] == "client_credentials", form
    assert form["resource"] == setup.resource, form
    assert SCOPE in form["scope"].split(), form
    assert token_requests[0]["status"] == 200, token_requests[0]
    claims = client_run.output["token_claims"]
    assert claims["iss"] == setup.issuer and claims["aud"] == setup.resource, claims
    assert SCOPE in claims["scope"].split(), claims
    authorized = [r for r in client_run.requests if r["url"] == setup.resource and r["authorization"] == "Bearer"]
    assert authorized and all(r["status"] in (200, 202, 405) for r in authorized), client_run.requests


# --------------------------------------------------------------------------- what is refused


def test_direct_call_without_a_token_gets_the_challenge(setup: Setup) -> None:
    resp = call_mcp(setup, None)
    assert resp.status == 401, resp
    params = challenge_params(resp.header("www-authenticate") or "")
    assert params["resource_metadata"] == f"http://{LOOPBACK}:{setup.envoy.port}{METADATA_PATH}", params
    assert params["scope"] == SCOPE and "realm" in params, params


def test_a_token_from_the_as_passes_by_hand(setup: Setup) -> None:
    """The control for the two refusals below: the same request with the right token passes."""
    resp = call_mcp(setup, token(setup, setup.resource, SCOPE))
    assert resp.status == 200, resp


def test_token_for_another_resource_is_refused(setup: Setup) -> None:
    """The AS's valid token for another MCP server (another `aud`) is not good here."""
    other = token(setup, OTHER_RESOURCE, SCOPE)
    assert payload_of(other)["aud"] == OTHER_RESOURCE
    resp = call_mcp(setup, other)
    assert resp.status == 401, resp
    assert challenge_params(resp.header("www-authenticate") or "").get("error") == "invalid_token", resp


def test_token_without_the_scope_is_refused(setup: Setup) -> None:
    """A token for this resource that lacks `tools:call` gets 403 insufficient_scope naming it."""
    narrow = token(setup, setup.resource, OTHER_SCOPE)
    assert payload_of(narrow)["scope"] == OTHER_SCOPE
    resp = call_mcp(setup, narrow)
    assert resp.status == 403, resp
    params = challenge_params(resp.header("www-authenticate") or "")
    assert params.get("error") == "insufficient_scope" and params.get("scope") == SCOPE, params
    # The MCP scope challenge points to the metadata too, so a client can ask again.
    assert params.get("resource_metadata", "").endswith("/.well-known/oauth-protected-resource/mcp"), params


def test_sdk_without_a_configured_scope_gets_the_filters_403(setup: Setup) -> None:
    """SDK 1.x's client_credentials token request carries only the provider's `scope` option, so
    a client configured without one gets a token without `tools:call`: the filter answers 403
    insufficient_scope naming the scope (the SDK then re-runs its flow, gets the same token and
    gives up). Nothing without the scope reaches the MCP server. Written so that an SDK that
    learns to ask for the challenge's scope passes too."""
    _, run = run_client(setup)
    mcp_requests = [r for r in run.requests if r["url"] == setup.resource]
    refused = [r for r in mcp_requests if r["status"] == 403]
    for r in refused:
        params = challenge_params(r["www_authenticate"] or "")
        assert params.get("error") == "insufficient_scope" and params.get("scope") == SCOPE, r
    if "error" in run.output:
        assert refused, run.output
    passed = [r for r in mcp_requests if r["status"] not in (401, 403)]
    assert len(run.upstream) == len(passed), (run.upstream, run.requests)
