"""private_key_jwt in real Envoy against a real authorization server, npm `oidc-provider`
(outbound/as.mjs for outbound credentials, login/op.mjs with a real browser for login):

- naming its key (`clientKeyId`): the agent client is registered with two public keys and the
  server picks the one the assertion's `kid` names, as Okta and Keycloak do when a client has
  several. The certificate thumbprints of `clientCertEnv` (`x5t`, `x5t#S256`) are checked natively
  against `openssl x509 -fingerprint` (src/client_auth_tests.rs): oidc-provider ignores them.
- its `aud` (`assertionAudience`): oidc-provider accepts both the issuer and the token endpoint URL,
  so a 200 alone proves nothing. The servers record the `aud` of every assertion whose signature
  checked out, and with `--assertion-aud` accept only that one, as Okta and Entra ID accept only
  the token endpoint URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import Envoy, EnvoyFactory, istio_cluster_name
from test_login import (CHROMIUM, COOKIE_KEYS, COOKIE_KEYS_ENV, LOGIN, REPO, free_port, login_config, node_binary,
                        start_op, wait_for_login)
from test_outbound import PAYMENTS, AuthorizationServer, start_as
from tokens import b64url

OURS, RETIRED = "agent-2026", "agent-2025"


def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    return {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "ES256",
            "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {OURS: p256(), RETIRED: p256()}


@pytest.fixture(scope="module")
def server(keys: dict[str, ec.EllipticCurvePrivateKey],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    tmp = tmp_path_factory.mktemp("as-kid")
    jwks = tmp / "agent-jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(key, kid) for kid, key in keys.items()]}))
    started = start_as(tmp, "--agent-jwks", str(jwks))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def endpoint_only_server(keys: dict[str, ec.EllipticCurvePrivateKey],
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    """A server that, like Okta and Entra ID, accepts only its token endpoint URL as `aud`."""
    tmp = tmp_path_factory.mktemp("as-endpoint-aud")
    jwks = tmp / "agent-jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk(keys[OURS], OURS)]}))
    started = start_as(tmp, "--agent-jwks", str(jwks), "--assertion-aud", "token_endpoint")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def envoy(module_envoys: EnvoyFactory, server: AuthorizationServer, endpoint_only_server: AuthorizationServer,
          keys: dict[str, ec.EllipticCurvePrivateKey]) -> Envoy:
    pem = keys[OURS].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()

    def entry(name: str, kid: str, provider: str = "as", **client: str) -> dict[str, Any]:
        return {"name": name, "match": {"hosts": [f"{name}.mesh.test"]},
                "clientCredentials": {"provider": provider, "clientId": "agent-jwt", "clientAuth": "private_key_jwt",
                                      "clientKeyEnv": "AGENT_KEY", "clientKeyId": kid, "resource": PAYMENTS,
                                      **client}}

    config = {"providers": [{"name": "as", "issuer": server.issuer, "timeout": "2s"},
                            {"name": "endpoint-only", "issuer": endpoint_only_server.issuer, "timeout": "2s"}],
              "outbound": [entry("named", OURS), entry("misnamed", RETIRED),
                           entry("issuer-aud", OURS),
                           entry("endpoint-aud", OURS, assertionAudience="tokenEndpoint"),
                           entry("strict-issuer-aud", OURS, provider="endpoint-only"),
                           entry("strict-endpoint-aud", OURS, provider="endpoint-only",
                                 assertionAudience="tokenEndpoint")]}
    return module_envoys.start(config, extra_clusters={server.cluster: server.port,
                                                       endpoint_only_server.cluster: endpoint_only_server.port},
                               filter_args={"env": {"AGENT_KEY": pem}})


def call(envoy: Envoy, host: str) -> Any:
    return envoy.request("/pay", method="POST", headers={"host": host}, body=b"{}")


def test_the_key_the_assertion_names_is_the_one_the_server_checks(envoy: Envoy,
                                                                   server: AuthorizationServer) -> None:
    response = call(envoy, "named.mesh.test")
    assert response.status == 200, response
    token = response.upstream["headers"]["authorization"].removeprefix("Bearer ")
    claims = server.verify(token, audience=PAYMENTS)
    assert claims["client_id"] == "agent-jwt"


def test_an_assertion_naming_another_registered_key_is_refused_by_the_server(envoy: Envoy) -> None:
    # Signed with our key but naming the retired one: the server checks it against the retired
    # key, refuses the client, and the request gets no token (503, fail closed).
    response = call(envoy, "misnamed.mesh.test")
    assert response.status == 503, response
    assert response.json() == {"error": "outbound_credentials", "reason": "token_endpoint_status"}


def token_endpoint(issuer: str) -> str:
    """The token endpoint of the server's discovery document, which the module calls."""
    with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=5) as answer:
        return json.loads(answer.read())["token_endpoint"]


def audiences_of_one_call(envoy: Envoy, server: AuthorizationServer, host: str) -> tuple[Any, list[Any]]:
    """The response to one request that fetches a token, and the `aud` of each assertion the server
    verified meanwhile."""
    server.post("/test/reset")
    response = call(envoy, host)
    return response, server.get("/test/stats")["assertion_aud"]


def test_the_assertion_names_the_issuer_by_default(envoy: Envoy, server: AuthorizationServer) -> None:
    response, audiences = audiences_of_one_call(envoy, server, "issuer-aud.mesh.test")
    assert response.status == 200, response
    assert audiences == [server.issuer]


def test_assertion_audience_token_endpoint_names_the_discovered_token_endpoint(
        envoy: Envoy, server: AuthorizationServer) -> None:
    endpoint = token_endpoint(server.issuer)
    assert endpoint != server.issuer
    response, audiences = audiences_of_one_call(envoy, server, "endpoint-aud.mesh.test")
    assert response.status == 200, response
    assert audiences == [endpoint]
    token = response.upstream["headers"]["authorization"].removeprefix("Bearer ")
    assert server.verify(token, audience=PAYMENTS)["client_id"] == "agent-jwt"


def test_a_server_that_takes_only_its_token_endpoint_refuses_the_issuer_and_serves_token_endpoint(
        envoy: Envoy, endpoint_only_server: AuthorizationServer) -> None:
    # As with Okta or Entra ID: the default assertion is refused (invalid_client, so 503, fail
    # closed); with assertionAudience tokenEndpoint the same client gets its token.
    refused, audiences = audiences_of_one_call(envoy, endpoint_only_server, "strict-issuer-aud.mesh.test")
    assert refused.status == 503, refused
    assert refused.json() == {"error": "outbound_credentials", "reason": "token_endpoint_status"}
    assert audiences == [endpoint_only_server.issuer]
    served, audiences = audiences_of_one_call(envoy, endpoint_only_server, "strict-endpoint-aud.mesh.test")
    assert served.status == 200, served
    assert audiences == [token_endpoint(endpoint_only_server.issuer)]
    token = served.upstream["headers"]["authorization"].removeprefix("Bearer ")
    assert endpoint_only_server.verify(token, audience=PAYMENTS)["client_id"] == "agent-jwt"


# --------------------------------------------------------------------------- browser login


@pytest.mark.parametrize("assertion_audience", ["issuer", "tokenEndpoint"])
def test_login_redeems_the_code_with_an_assertion_for_the_audience_configured(
        module_envoys: EnvoyFactory, tmp_path_factory: pytest.TempPathFactory, assertion_audience: str) -> None:
    """A real browser logs in; the OP accepts only the `aud` the configuration asks for, and
    records what it verified. The default (no `assertionAudience`) is the issuer."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (make test does)", pytrace=False)
    key = p256()
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
           "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    required = {"issuer": "issuer", "tokenEndpoint": "token_endpoint"}[assertion_audience]
    port = free_port()
    op = start_op(port, tmp_path_factory.mktemp("op-aud") / "op.log", "--client-jwk", json.dumps(jwk),
                  "--assertion-aud", required)
    try:
        chosen = {} if assertion_audience == "issuer" else {"assertionAudience": assertion_audience}
        config = login_config(op.issuer, f"http://localhost:{port}", clientAuth="private_key_jwt",
                              clientKeyEnv="LOGIN_CLIENT_KEY", **chosen)
        del config["login"]["clientSecretEnv"]
        envoy = module_envoys.start(config, extra_clusters={istio_cluster_name(op.port): op.port},
                                    filter_args={"env": {"LOGIN_CLIENT_KEY": pem, COOKIE_KEYS_ENV: COOKIE_KEYS}},
                                    port=port)
        wait_for_login(envoy, f"localhost:{port}")
        run = subprocess.run([node_binary(), str(LOGIN / "browser.mjs"), "--app", f"http://localhost:{port}",
                              "--op", op.issuer, "--login-only"], capture_output=True, cwd=REPO, timeout=180)
        steps = json.loads(run.stdout.decode().strip().splitlines()[-1])
        assert steps.get("ok"), steps.get("error") or run.stderr.decode()[-2000:]
        assert steps["landed"]["url"] == f"http://localhost:{port}/orders?page=2"
        assert steps["landed"]["upstream"]["headers"]["authorization"].startswith("Bearer ")
        with urllib.request.urlopen(f"{op.issuer}/test/assertion-audiences", timeout=5) as answer:
            audiences = json.loads(answer.read())
        expected = op.issuer if assertion_audience == "issuer" else token_endpoint(op.issuer)
        assert audiences == [expected]
    finally:
        op.stop()
