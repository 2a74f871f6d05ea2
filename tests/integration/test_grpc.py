"""gRPC calls through Envoy with the module: a real grpcio client and server. A refusal reaches
the client as a gRPC status (401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 503 UNAVAILABLE) with
the description as its message and the `WWW-Authenticate` challenge as metadata; plain HTTP on
the same listener keeps its RFC 6750 answers."""

from __future__ import annotations

import time
from typing import Iterator

import grpc
import pytest

from checks import assert_missing_token, error_body
from grpc_echo import EchoClient, EchoGrpcServer, method_path
from plugin_configs import AUDIENCE, CLAIM_HEADER, ISS_RSA, serve_family_jwks
from tokens import claims

ALG = "RS256"
ISS_SILENT = "https://silent.idp.test"
SCOPE = "echo:say"
SILENT_TIMEOUT_S = 0.5
REQUEST = b"\x00hello over grpc\xff"


def config(rsa_uri: str, silent_uri: str, **top: object) -> dict[str, object]:
    return {
        "providers": [
            {"issuer": ISS_RSA, "audiences": [AUDIENCE], "jwksUri": rsa_uri,
             "outputClaimToHeaders": [{"header": CLAIM_HEADER, "claim": "sub"}]},
            # Its key server never answers in time.
            {"issuer": ISS_SILENT, "jwksUri": silent_uri, "timeout": f"{int(SILENT_TIMEOUT_S * 1000)}ms"},
        ],
        "rules": [
            {"name": "admin", "match": {"paths": [method_path("Admin")]}, "deny": True},
            {"name": "say", "match": {"paths": [method_path("Say")]}, "requires": {"scopes": [SCOPE]}},
        ],
        **top,
    }


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[EchoGrpcServer]:
    server = EchoGrpcServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def world(module_envoys, module_idps, keys, grpc_server):
    idp, silent = module_idps(), module_idps()
    rsa_uri = serve_family_jwks(idp, keys)[ISS_RSA]
    silent.set_jwks(keys.jwks([ALG]), delay_s=5.0)
    idps = [idp, silent]
    full = module_envoys.start(config(rsa_uri, silent.jwks_uri), idps=idps, grpc_upstream=grpc_server.port)
    minimal = module_envoys.start(config(rsa_uri, silent.jwks_uri, answers="minimal"), idps=idps,
                                  grpc_upstream=grpc_server.port)
    return {"full": full, "minimal": minimal}


@pytest.fixture(scope="module")
def client(world) -> Iterator[EchoClient]:
    c = EchoClient(world["full"].port)
    yield c
    c.close()


@pytest.fixture(scope="module")
def minimal_client(world) -> Iterator[EchoClient]:
    c = EchoClient(world["minimal"].port)
    yield c
    c.close()


def token(keys, issuer: str = ISS_RSA, **overrides) -> str:
    return keys.mint(ALG, {**claims(issuer), "scope": SCOPE, **overrides})


def bearer(value: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {value}")]


def refused(client: EchoClient, method: str, metadata: list[tuple[str, str]]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        client.call(method, REQUEST, metadata)
    return info.value


def metadata_values(error: grpc.RpcError, name: str) -> list[str]:
    """Values of `name` in the call's metadata: a trailers-only answer puts its headers in the
    trailing metadata; initial metadata is looked at too."""
    pairs = [*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())]
    return [v if isinstance(v, str) else v.decode() for k, v in pairs if k == name]


def describe(error: grpc.RpcError) -> str:
    return (f"{error.code()} {error.details()!r} initial={error.initial_metadata()} "
            f"trailing={error.trailing_metadata()}")


def test_a_call_with_a_valid_token_reaches_the_server(client, grpc_server, keys):
    before = len(grpc_server.calls())
    reply, call = client.call("Say", REQUEST, bearer(token(keys)))
    assert reply == REQUEST
    assert call.code() == grpc.StatusCode.OK
    seen = grpc_server.calls()[before:]
    assert [c.method for c in seen] == ["Say"]
    assert seen[0].values(CLAIM_HEADER) == ["user-1234"], seen[0].metadata
    # forwardOriginalToken defaults to false: the token stops at the sidecar.
    assert seen[0].values("authorization") == [], seen[0].metadata


def test_no_token_is_unauthenticated_with_a_bearer_challenge(client):
    error = refused(client, "Say", [])
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, describe(error)
    assert error.details() == "a bearer token is required", describe(error)
    challenges = metadata_values(error, "www-authenticate")
    assert len(challenges) == 1 and challenges[0].startswith('Bearer realm="'), describe(error)


def test_an_expired_token_is_unauthenticated_naming_the_cause(client, keys):
    now = int(time.time())
    error = refused(client, "Say", bearer(token(keys, iat=now - 3600, exp=now - 600)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, describe(error)
    assert error.details() == "token is expired", describe(error)
    [challenge] = metadata_values(error, "www-authenticate")
    assert 'error="invalid_token"' in challenge and 'error_description="token is expired"' in challenge, challenge


def test_a_bad_signature_is_unauthenticated_naming_the_cause(client, keys):
    header, payload, signature = token(keys).split(".")
    forged = f"{header}.{payload}.{signature[:-6]}{'A' if signature[-6] != 'A' else 'B'}{signature[-5:]}"
    error = refused(client, "Say", bearer(forged))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, describe(error)
    assert "signature" in error.details(), describe(error)


def test_a_token_without_the_required_scope_is_permission_denied(client, keys):
    error = refused(client, "Say", bearer(token(keys, scope="echo:other")))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, describe(error)
    assert error.details() == "token lacks a required scope", describe(error)
    [challenge] = metadata_values(error, "www-authenticate")
    assert 'error="insufficient_scope"' in challenge and f'scope="{SCOPE}"' in challenge, challenge


def test_a_deny_rule_is_permission_denied(client, grpc_server, keys):
    before = len(grpc_server.calls())
    error = refused(client, "Admin", bearer(token(keys)))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, describe(error)
    assert error.details() == "access to this resource is denied", describe(error)
    assert len(grpc_server.calls()) == before


def test_keys_unavailable_is_unavailable_in_time(client, keys):
    started = time.monotonic()
    error = refused(client, "Say", bearer(token(keys, issuer=ISS_SILENT)))
    elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.UNAVAILABLE, describe(error)
    assert error.details() == "signing keys for the token issuer are not available", describe(error)
    assert metadata_values(error, "retry-after"), describe(error)
    assert elapsed < SILENT_TIMEOUT_S + 2.0, f"answered after {elapsed:.1f}s"


def test_minimal_answers_give_the_error_code_only(minimal_client, keys):
    now = int(time.time())
    error = refused(minimal_client, "Say", bearer(token(keys, iat=now - 3600, exp=now - 600)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, describe(error)
    assert error.details() == "invalid_token", describe(error)
    [challenge] = metadata_values(error, "www-authenticate")
    assert 'error="invalid_token"' in challenge and "error_description" not in challenge, challenge


def test_minimal_answers_still_let_a_valid_call_through(minimal_client, keys):
    reply, _ = minimal_client.call("Say", REQUEST, bearer(token(keys)))
    assert reply == REQUEST


def test_plain_http_on_the_same_listener_keeps_http_answers(world, keys):
    envoy = world["full"]
    resp = envoy.request("/orders", headers={"Host": "orders.example.com"})
    assert_missing_token(resp, "orders.example.com")
    assert error_body(resp)["error_description"] == "a bearer token is required"
    assert not resp.headers_named("grpc-status"), resp
    # An allowed plain request still goes to the HTTP upstream, not the gRPC server.
    resp = envoy.request("/orders", headers={"Authorization": f"Bearer {token(keys)}"})
    assert resp.upstream["path"] == "/orders"
