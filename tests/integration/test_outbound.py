"""Outbound credentials (issue 29) in real Envoy: the module on an outbound listener gets tokens
from a real authorization server and attaches them; the upstream receives them.

- `outbound/as.mjs`: npm `oidc-provider` — client credentials with client_secret_basic,
  client_secret_post and private_key_jwt as it implements them, and RFC 8693 token exchange
  registered on it (`registerGrantType`), issuing narrowed tokens with `act`, or transaction
  tokens. Its test controls count token endpoint calls and make it fail on demand.
- The upstream is the echo server; what it received is verified here with pyjwt against the
  authorization server's published keys (audience, scope, `act`, expiry).
- Secrets and the client key reach the VM as Envoy `vm_config.environment_variables`.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import node_tools
from harness import Envoy, EnvoyFactory, Response, istio_cluster_name
from observe import stats

REPO = Path(__file__).resolve().parents[2]
AS_SCRIPT = REPO / "tests" / "integration" / "outbound" / "as.mjs"
READY_TIMEOUT_S = 20.0
PAYMENTS = "https://payments.mesh-oauth.test"
SHORT_TTL_S = 10
# as.mjs failure mode → the reason the 503 names. Envoy answers a call whose connection was
# reset, or that ran past its timeout, with a status of its own (503, 504).
DOWN_MODES = {"status500": "token_endpoint_status", "garbage": "token_endpoint_answer",
              "reset": "token_endpoint_status", "slow": "token_endpoint_status"}
# Longer than the short provider's 1 s timeout: a slow server is a failed call.
SLOW_MS = 3000
ENV = {"SVC_BASIC_SECRET": "svc-basic-secret", "SVC_POST_SECRET": "svc-post-secret"}


def node_binary() -> str:
    return node_tools.node_binary("the outbound tests run an oidc-provider authorization server", ("oidc-provider", "jose"))


@dataclass
class AuthorizationServer:
    proc: subprocess.Popen[bytes]
    issuer: str
    port: int
    log_path: Path

    @property
    def cluster(self) -> str:
        return istio_cluster_name(self.port)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.issuer}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def post(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.issuer}{path}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=5) as answer:
            return json.loads(answer.read())

    def user_token(self, sub: str = "alice", ttl: int = 600, may_act: str | None = None,
                   scope: str | None = None) -> str:
        query = {"sub": sub, "ttl": str(ttl)}
        if may_act:
            query["may_act"] = may_act
        if scope:
            query["scope"] = scope
        return self.get(f"/test/mint?{urllib.parse.urlencode(query)}")["token"]

    def token_requests(self) -> int:
        return self.get("/test/stats")["token_requests"]

    def mode(self, mode: str, delay_ms: int = 0) -> None:
        self.post(f"/test/mode?mode={mode}&delay_ms={delay_ms}")

    def verify(self, token: str, audience: str | None = None, typ: str | None = None) -> dict[str, Any]:
        """The token checked with the server's published keys, as a resource server would."""
        key = jwt.PyJWKClient(f"{self.issuer}/jwks").get_signing_key_from_jwt(token)
        if typ is not None:
            assert jwt.get_unverified_header(token)["typ"] == typ
        return jwt.decode(token, key.key, algorithms=["ES256"], issuer=self.issuer, audience=audience,
                          options={"verify_aud": audience is not None})

    def stop(self) -> None:
        node_tools.stop(self.proc)


def start_as(tmp: Path, *args: str) -> AuthorizationServer:
    log_path = tmp / "as.log"
    proc, ready = node_tools.start_server(node_binary(), AS_SCRIPT, ["--port", "0", *args], log_path,
                                          READY_TIMEOUT_S)
    return AuthorizationServer(proc, ready["issuer"], ready["port"], log_path)


@pytest.fixture(scope="module")
def agent_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """The agent's P-256 key: PKCS#8 PEM for the VM's environment, the public JWKS for the AS."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    path = tmp_path_factory.mktemp("agent") / "agent-jwks.json"
    path.write_text(json.dumps({"keys": [{**public, "alg": "ES256", "use": "sig"}]}))
    return pem, path


@pytest.fixture(scope="module")
def auth_server(agent_key: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    server = start_as(tmp_path_factory.mktemp("as"), "--agent-jwks", str(agent_key[1]))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    """A second server whose tokens live SHORT_TTL_S seconds: expiry within a test."""
    server = start_as(tmp_path_factory.mktemp("as-short"), "--token-ttl", str(SHORT_TTL_S))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    """A third short-lived server that a test stops: its port then refuses connections."""
    server = start_as(tmp_path_factory.mktemp("as-gone"), "--token-ttl", str(SHORT_TTL_S))
    yield server
    server.stop()


def cc(provider: str, client: str, **extra: Any) -> dict[str, Any]:
    auth = {"svc-basic": {"clientSecretEnv": "SVC_BASIC_SECRET"},
            "svc-post": {"clientAuth": "client_secret_post", "clientSecretEnv": "SVC_POST_SECRET"},
            "agent-jwt": {"clientAuth": "private_key_jwt", "clientKeyEnv": "AGENT_KEY"}}[client]
    return {"provider": provider, "clientId": client, **auth, **extra}


def outbound_config(server: AuthorizationServer, short: AuthorizationServer, gone: AuthorizationServer,
                    audit: str = "warn") -> dict[str, Any]:
    entry = lambda name, host, **rest: {"name": name, "match": {"hosts": [host]}, **rest}  # noqa: E731
    return {
        "providers": [{"name": "as", "issuer": server.issuer},
                      {"name": "short", "issuer": short.issuer, "timeout": "1s"},
                      {"name": "gone", "issuer": gone.issuer, "timeout": "1s"}],
        "audit": {"level": audit, "allowedSampleRate": 1},
        "outbound": [
            entry("basic", "basic.mesh.test", clientCredentials=cc("as", "svc-basic", resource=PAYMENTS, scopes=["pay:read"])),
            entry("post", "post.mesh.test", clientCredentials=cc("as", "svc-post", resource=PAYMENTS)),
            entry("jwt", "jwt.mesh.test", clientCredentials=cc("as", "agent-jwt", resource=PAYMENTS)),
            entry("burst", "burst.mesh.test", clientCredentials=cc("as", "svc-basic", resource=PAYMENTS, scopes=["pay:write"])),
            entry("tools", "tools.mesh.test", tokenExchange=cc("as", "svc-basic", audience="tools", scopes=["tools:call"],
                                                                actor="clientCredentials")),
            entry("txn", "txn.mesh.test", header="txn-token", tokenExchange=cc("as", "svc-basic", audience="txn")),
            # One per way the server fails, each with a token cached before it does.
            *[entry(f"fragile_{mode}", f"fragile-{mode}.mesh.test",
                    clientCredentials=cc("short", "svc-basic", resource=f"https://fragile-{mode}.mesh-oauth.test"))
              for mode in DOWN_MODES],
            entry("renewed", "renewed.mesh.test", clientCredentials=cc("short", "svc-basic", resource=PAYMENTS,
                                                                      scopes=["pay:read"])),
            entry("lenient", "lenient.mesh.test", onFailure="passThrough",
                  clientCredentials=cc("short", "svc-post", resource=PAYMENTS)),
            # One per way the server fails, each with no token yet.
            *[entry(f"down-{mode}", f"down-{mode}.mesh.test",
                    clientCredentials=cc("short", "svc-post", resource=f"https://{mode}.mesh-oauth.test"))
              for mode in DOWN_MODES],
            # The server that is stopped: a cached token, and one entry that passes through.
            entry("gone", "gone.mesh.test", clientCredentials=cc("gone", "svc-basic", resource=PAYMENTS)),
            entry("gone-lenient", "gone-lenient.mesh.test", onFailure="passThrough",
                  clientCredentials=cc("gone", "svc-post", resource=PAYMENTS)),
        ],
    }


@pytest.fixture(scope="module")
def envoy(module_envoys: EnvoyFactory, auth_server: AuthorizationServer, short_server: AuthorizationServer,
          gone_server: AuthorizationServer, agent_key: tuple[str, Path]) -> Envoy:
    clusters = {auth_server.cluster: auth_server.port, short_server.cluster: short_server.port,
                gone_server.cluster: gone_server.port}
    return module_envoys.start(outbound_config(auth_server, short_server, gone_server), extra_clusters=clusters,
                               concurrency=4,
                               pushable=True, filter_args={"env": {**ENV, "AGENT_KEY": agent_key[0]}})


def call(envoy: Envoy, host: str, headers: dict[str, str] | None = None) -> Response:
    return envoy.request("/pay", method="POST", headers={"host": host, **(headers or {})}, body=b"{}")


def attached(response: Response, header: str = "authorization") -> str:
    received = response.upstream["headers"]
    assert header in received, received
    value = received[header]
    return value.removeprefix("Bearer ") if header == "authorization" else value


def eventually(check: Any, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("host, client", [("basic.mesh.test", "svc-basic"), ("post.mesh.test", "svc-post"),
                                          ("jwt.mesh.test", "agent-jwt")])
def test_each_client_authentication_method_gets_a_token(envoy: Envoy, auth_server: AuthorizationServer,
                                                        host: str, client: str) -> None:
    response = call(envoy, host, {"authorization": "Bearer what-the-app-sent"})
    assert response.status == 200, response
    claims = auth_server.verify(attached(response), audience=PAYMENTS)
    assert claims["client_id"] == client
    assert claims["exp"] > time.time()
    # The second request reuses it.
    assert attached(call(envoy, host)) == attached(response)


def test_one_token_request_for_concurrent_requests_over_four_workers(envoy: Envoy,
                                                                     auth_server: AuthorizationServer) -> None:
    auth_server.post("/test/reset")
    with ThreadPoolExecutor(max_workers=40) as pool:
        responses = list(pool.map(lambda _: call(envoy, "burst.mesh.test"), range(40)))
    assert all(r.status == 200 for r in responses), [str(r) for r in responses if r.status != 200][:3]
    tokens = {attached(r) for r in responses}
    assert len(tokens) == 1
    assert auth_server.token_requests() == 1
    claims = auth_server.verify(tokens.pop(), audience=PAYMENTS)
    assert claims["scope"] == "pay:write"
    # The counters, summed over the workers by Envoy: 40 attached, one call.
    counted = eventually(lambda: _burst_counters(envoy))
    assert counted["token_requests"] == 1 and counted["attached"] == 40, counted
    # The requests were spread over the workers (each audit line names its thread).
    workers = set(re.findall(r"\]\[(\d+)\]\[\w+\]\[wasm\].*\"outbound\":\"burst\"", envoy.log()))
    assert len(workers) >= 2, workers


def _burst_counters(envoy: Envoy) -> dict[str, int]:
    prefix = "mesh_oauth.outbound.burst."
    counted = {name.removeprefix(prefix): value for name, value in stats(envoy).items() if name.startswith(prefix)}
    assert counted.get("attached") == 40, counted
    return counted


def test_tokens_are_renewed_before_they_expire_and_none_arrives_expired(
        envoy: Envoy, short_server: AuthorizationServer) -> None:
    """Requests for longer than a token lives: each token the upstream gets is still valid, and a
    new one replaced the first before it expired."""
    short_server.mode("ok")
    seen: list[tuple[str, float, int]] = []  # token, when first seen, its exp
    deadline = time.monotonic() + SHORT_TTL_S * 1.5
    while time.monotonic() < deadline:
        response = call(envoy, "renewed.mesh.test")
        assert response.status == 200, response
        token = attached(response)
        claims = short_server.verify(token, audience=PAYMENTS)
        now = time.time()
        assert claims["exp"] > now, "an expired token was attached"
        if not seen or seen[-1][0] != token:
            seen.append((token, now, claims["exp"]))
        time.sleep(0.2)
    assert len(seen) >= 2, "renewed at least once"
    assert seen[1][1] < seen[0][2], "the new token came before the first one expired"


def test_token_exchange_narrows_the_users_token_and_names_the_actor(envoy: Envoy,
                                                                    auth_server: AuthorizationServer) -> None:
    user = auth_server.user_token("alice", ttl=300, may_act="svc-basic")
    response = call(envoy, "tools.mesh.test", {"authorization": f"Bearer {user}"})
    assert response.status == 200, response
    token = attached(response)
    assert token != user
    claims = auth_server.verify(token, audience="tools")
    assert claims["sub"] == "alice"
    assert claims["scope"] == "tools:call"
    assert claims["act"] == {"sub": "svc-basic"}
    assert claims["exp"] <= jwt.decode(user, options={"verify_signature": False})["exp"]
    auth_server.post("/test/reset")
    assert attached(call(envoy, "tools.mesh.test", {"authorization": f"Bearer {user}"})) == token
    assert auth_server.token_requests() == 0, "the exchange is cached"


def test_a_subject_that_is_missing_expired_or_for_another_actor_is_refused_before_any_call(
        envoy: Envoy, auth_server: AuthorizationServer) -> None:
    auth_server.post("/test/reset")
    cases = [
        ({}, "missing_subject"),
        ({"authorization": f"Bearer {auth_server.user_token('bob', ttl=-10)}"}, "subject_expired"),
        ({"authorization": f"Bearer {auth_server.user_token('carol', may_act='other-agent')}"}, "may_act"),
    ]
    for headers, reason in cases:
        response = call(envoy, "tools.mesh.test", headers)
        assert response.status == 403, response
        assert response.json()["reason"] == reason
    assert auth_server.token_requests() == 0


def test_a_transaction_token_travels_in_its_own_header(envoy: Envoy, auth_server: AuthorizationServer) -> None:
    user = auth_server.user_token("dave")
    response = call(envoy, "txn.mesh.test", {"authorization": f"Bearer {user}"})
    assert response.status == 200, response
    received = response.upstream["headers"]
    assert "authorization" not in received, "the subject token does not travel on"
    claims = auth_server.verify(received["txn-token"], audience="txn", typ="txntoken+jwt")
    assert claims["sub"] == "dave" and "txn" in claims


@pytest.mark.parametrize("mode", sorted(DOWN_MODES))
def test_a_down_server_keeps_the_valid_token_then_503_once_it_expired(
        envoy: Envoy, short_server: AuthorizationServer, mode: str) -> None:
    """500, garbage, a reset connection, an answer slower than the timeout: the renewal fails,
    the still-valid token goes on, the failure shows in /stats; once expired, 503."""
    host, name = f"fragile-{mode}.mesh.test", f"fragile_{mode}"
    short_server.mode("ok")
    first = call(envoy, host)
    assert first.status == 200, first
    issued = time.time()
    token = attached(first)
    short_server.mode(mode, delay_ms=SLOW_MS)
    short_server.post("/test/reset")
    try:
        _keeps_then_refuses(envoy, host, name, token, issued, {DOWN_MODES[mode]}, tried=short_server.token_requests)
    finally:
        short_server.mode("ok")
    fresh = eventually(lambda: _attached_ok(call(envoy, host)), timeout_s=40)
    assert fresh != token


def test_a_server_refusing_connections_keeps_the_valid_token_then_503_or_passes_through(
        envoy: Envoy, gone_server: AuthorizationServer) -> None:
    """The authorization server's process is gone: nothing listens on its port, every call is
    refused at connect."""
    first = call(envoy, "gone.mesh.test")
    assert first.status == 200, first
    issued = time.time()
    token = attached(first)
    gone_server.stop()
    assert gone_server.proc.poll() is not None
    with pytest.raises(OSError):
        gone_server.get("/test/stats")
    # Envoy answers a refused connection with a 503 of its own.
    _keeps_then_refuses(envoy, "gone.mesh.test", "gone", token, issued,
                        {"token_endpoint_status", "token_endpoint_unreachable"}, tried=None)
    # With no token at hand, `passThrough` sends the request on as the app sent it.
    lenient = call(envoy, "gone-lenient.mesh.test", {"authorization": "Bearer the-apps-own"})
    assert lenient.status == 200, lenient
    assert lenient.upstream["headers"]["authorization"] == "Bearer the-apps-own"
    assert eventually(lambda: _counted(envoy, "gone-lenient", "passed_through")) >= 1


def _keeps_then_refuses(envoy: Envoy, host: str, name: str, token: str, issued: float,
                        reasons: set[str], tried: Any) -> None:
    # Usable life 9 s (a tenth off); renewal from 7.2-8.1 s. Past it, the renewal fails and the
    # still-valid token goes on.
    time.sleep(max(0.0, issued + 8.3 - time.time()))
    for _ in range(3):
        response = call(envoy, host)
        assert response.status == 200 and attached(response) == token, response
        time.sleep(0.1)
    if tried is not None:
        assert tried() >= 1, "a renewal was tried"
    # The failed renewal is counted, and logged with its reason (no token in the line).
    assert eventually(lambda: _counted(envoy, name, "renewal_failed"), timeout_s=5) >= 1
    logged = [line for line in envoy.log().splitlines() if f'outbound "{name}": renewal failed: ' in line]
    assert logged and all(token not in line and "eyJ" not in line for line in logged), logged
    assert any(line.split("renewal failed: ")[1].split(";")[0] in reasons for line in logged), logged
    # Expired: never attached; 503 with Retry-After, naming why.
    time.sleep(max(0.0, issued + SHORT_TTL_S * 0.9 + 0.2 - time.time()))
    refused = call(envoy, host)
    assert refused.status == 503, refused
    assert refused.header("retry-after") is not None
    assert refused.json()["error"] == "outbound_credentials"
    # The call that fails now, or the backoff after the renewal's failure.
    assert refused.json()["reason"] in reasons | {"token_endpoint_failing"}, refused


def _counted(envoy: Envoy, entry: str, what: str) -> int:
    value = stats(envoy).get(f"mesh_oauth.outbound.{entry.replace('-', '_')}.{what}", 0)
    assert value >= 1, (entry, what)
    return value


@pytest.mark.parametrize("mode", sorted(DOWN_MODES))
def test_a_server_that_fails_without_a_token_at_hand_is_a_503_naming_why(
        envoy: Envoy, short_server: AuthorizationServer, mode: str) -> None:
    short_server.mode(mode, delay_ms=3000)
    try:
        response = call(envoy, f"down-{mode}.mesh.test", {"authorization": "Bearer the-apps-own"})
    finally:
        short_server.mode("ok")
    assert response.status == 503, response
    assert response.header("retry-after") is not None
    assert response.json() == {"error": "outbound_credentials", "reason": DOWN_MODES[mode]}


def _attached_ok(response: Response) -> str:
    assert response.status == 200, response
    return attached(response)


def test_pass_through_sends_the_request_on_as_the_app_sent_it(envoy: Envoy,
                                                               short_server: AuthorizationServer) -> None:
    short_server.mode("status500")
    try:
        response = call(envoy, "lenient.mesh.test", {"authorization": "Bearer the-apps-own"})
        assert response.status == 200, response
        assert response.upstream["headers"]["authorization"] == "Bearer the-apps-own"
    finally:
        short_server.mode("ok")


def test_requests_no_entry_matches_go_on_untouched(envoy: Envoy) -> None:
    response = call(envoy, "elsewhere.mesh.test", {"authorization": "Bearer mine"})
    assert response.status == 200, response
    assert response.upstream["headers"]["authorization"] == "Bearer mine"


def test_no_token_or_secret_in_the_log(envoy: Envoy) -> None:
    call(envoy, "basic.mesh.test")
    log = envoy.log()
    assert "\"decision\":\"outbound\"" in log
    for secret in ENV.values():
        assert secret not in log
    assert "eyJ" not in log, "no JWT in the log"


def test_a_configuration_push_keeps_the_cached_tokens(envoy: Envoy, auth_server: AuthorizationServer,
                                                      short_server: AuthorizationServer,
                                                      gone_server: AuthorizationServer) -> None:
    before = attached(call(envoy, "basic.mesh.test"))
    auth_server.post("/test/reset")
    envoy.push(outbound_config(auth_server, short_server, gone_server, audit="info"))
    after = eventually(lambda: _attached_ok(call(envoy, "basic.mesh.test")))
    assert after == before
    assert auth_server.token_requests() == 0


# --------------------------------------------------------------------------- the agent chain


@pytest.fixture(scope="module")
def agent_chain(module_envoys: EnvoyFactory, auth_server: AuthorizationServer) -> dict[str, Envoy]:
    """Two sidecars: the agent's outbound plugin exchanges the user's token for the tool, and the
    tool's inbound plugin requires that token, with the agent as actor, before the tool (the echo
    server) sees the request. Two agents share the outbound sidecar: `svc-basic`, the tool's
    agent, and `svc-post`, another one."""
    tool = module_envoys.start(
        {"providers": [{"name": "as", "issuer": auth_server.issuer, "audiences": ["tools"],
                        "jwksUri": f"{auth_server.issuer}/jwks",
                        # The tool sees the token too, so the test can read what arrived.
                        "forwardOriginalToken": True}],
         "rules": [{"name": "tools", "match": {"paths": ["/*"]},
                    "requires": {"scopes": ["tools:call"], "actor": ["svc-basic"], "maxDelegationDepth": 1}}],
         "unmatched": "deny"},
        extra_clusters={auth_server.cluster: auth_server.port})
    exchange = lambda client: cc("as", client, audience="tools", scopes=["tools:call"],  # noqa: E731
                                 actor="clientCredentials")
    agent = module_envoys.start(
        {"providers": [{"name": "as", "issuer": auth_server.issuer}],
         "outbound": [{"name": "agent", "match": {"hosts": ["tools.mesh.test"]}, "tokenExchange": exchange("svc-basic")},
                      {"name": "rogue", "match": {"hosts": ["rogue.mesh.test"]}, "tokenExchange": exchange("svc-post")}]},
        # The agent's upstream is the tool's sidecar.
        extra_clusters={auth_server.cluster: auth_server.port, "upstream": tool.port},
        filter_args={"env": ENV})
    return {"agent": agent, "tool": tool}


def test_the_tool_receives_a_narrowed_actor_bound_token_through_both_sidecars(
        agent_chain: dict[str, Envoy], auth_server: AuthorizationServer) -> None:
    user = auth_server.user_token("erin", scope="tools:call pay:write")
    response = call(agent_chain["agent"], "tools.mesh.test", {"authorization": f"Bearer {user}"})
    assert response.status == 200, response
    claims = auth_server.verify(attached(response), audience="tools")
    assert claims["sub"] == "erin"
    assert claims["scope"] == "tools:call", "narrowed: pay:write stayed behind"
    assert claims["act"] == {"sub": "svc-basic"}


def test_the_tool_refuses_a_token_whose_actor_is_another_agent(
        agent_chain: dict[str, Envoy], auth_server: AuthorizationServer) -> None:
    user = auth_server.user_token("erin", scope="tools:call")
    response = call(agent_chain["agent"], "rogue.mesh.test", {"authorization": f"Bearer {user}"})
    # The exchange succeeds (the server lets svc-post act), the tool's sidecar refuses the actor.
    assert response.status == 403, response
    assert b"outbound_credentials" not in response.body, "refused by the tool, not the agent's sidecar"
    refused = [json.loads(line[line.index("{"):]) for line in agent_chain["tool"].log().splitlines()
               if '"decision":"deny"' in line]
    assert refused, "the tool's sidecar logged no refusal"
    assert refused[-1]["sub"] == "erin" and "svc-post" in json.dumps(refused[-1]["actors"]), refused[-1]
