"""private_key_jwt naming its key (`clientKeyId`) in real Envoy against a real authorization
server: npm `oidc-provider` (outbound/as.mjs) registers the agent client with two public keys and
picks the one the assertion's `kid` names, as Okta and Keycloak do when a client has several. The
certificate thumbprints of `clientCertEnv` (`x5t`, `x5t#S256`) are checked natively against
`openssl x509 -fingerprint` (src/config/client_tests.rs): oidc-provider ignores them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness import Envoy, EnvoyFactory
from test_outbound import PAYMENTS, AuthorizationServer, start_as

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
def envoy(module_envoys: EnvoyFactory, server: AuthorizationServer,
          keys: dict[str, ec.EllipticCurvePrivateKey]) -> Envoy:
    pem = keys[OURS].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()).decode()

    def entry(name: str, kid: str) -> dict[str, Any]:
        return {"name": name, "match": {"hosts": [f"{name}.mesh.test"]},
                "clientCredentials": {"provider": "as", "clientId": "agent-jwt", "clientAuth": "private_key_jwt",
                                      "clientKeyEnv": "AGENT_KEY", "clientKeyId": kid, "resource": PAYMENTS}}

    config = {"providers": [{"name": "as", "issuer": server.issuer, "timeout": "2s"}],
              "outbound": [entry("named", OURS), entry("misnamed", RETIRED)]}
    return module_envoys.start(config, extra_clusters={server.cluster: server.port},
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
