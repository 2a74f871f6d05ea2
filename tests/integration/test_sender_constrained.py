"""Sender-constrained tokens through real Envoy: DPoP (RFC 9449) and certificate-bound tokens
(RFC 8705), with tokens from a real authorization server and proofs from a real DPoP client.

- `sender/as.mjs`: npm `oidc-provider` issuing JWT access tokens (client credentials, resource
  indicators) bound to a DPoP key (`cnf.jkt`) or to the client certificate of its mTLS token
  endpoint (`cnf["x5t#S256"]`, tls_client_auth); the filter fetches its JWKS through the cluster
  Istio would name for it.
- `sender/client.mjs`: npm `dpop` makes the key pair and every proof of the happy path; it
  exports its key so that the failure matrix here signs proofs (cryptography, via tokens.py)
  with the very key the AS bound the token to, each proof wrong in exactly one way.

Four Envoys: `required` (DPoP required, four workers: replay across workers), `allowed` (DPoP
allowed, an `origins` list as behind a gateway), `mtls` (a TLS listener as mtls.py sets up a
sidecar's, `certificateBound: required`) and `small` (a replay memory of one slot).

Measured on the 2-core machine: about 6 s for the file (Envoys start in parallel; the AS and the
client are one Node.js process each)."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from conftest import REPO
import node_tools
from harness import LOOPBACK, READY_TIMEOUT_S, REQUEST_TIMEOUT_S, Envoy, EnvoyFactory, Response, istio_cluster_name
from mtls import TestCA, https_request, sidecar_inbound, spiffe_id
from observe import counters_changed, requests_on_one_connection, start_together, stats, wait_for_audit
from tokens import SigningKey, b64url, b64url_decode, generate_key, payload_of

SENDER = Path(__file__).resolve().parent / "sender"
NODE_TIMEOUT_S = 30.0
REALM = "orders"
AUDIENCE = "api"
RESOURCE = "https://api.mesh-oauth.test"
# What the filter accepts when a provider lists no DPoP algorithms (docs/configuration.md).
DEFAULT_DPOP_ALGS = {"ES256", "ES384", "EdDSA", "PS256", "RS256"}
# Defaults of `dpop.maxAgeSeconds` and `clockSkewSeconds`.
MAX_AGE_S = 60
SKEW_S = 60
# The origin clients of the `allowed` Envoy address (a gateway's name, not the sidecar's).
GATEWAY_ORIGIN = "https://api.example.com"
PATH = "/orders/42"
# The `required` Envoy's provider (`as-dpop`) as a metric segment.
REQUIRED_METRIC = "as_dpop"
# `limits.maxDpopProofs` of the `small` Envoy: one slot of 16 entries (src/sender/replay.rs).
SMALL_MEMORY = 16

CLIENT_IDENTITY = spiffe_id("shop", "checkout")
OTHER_IDENTITY = spiffe_id("shop", "intruder")

# The filter's fixed descriptions (src/sender/dpop.rs ProofError::describe, src/sender/mod.rs).
BOUND_AS_BEARER = "token is DPoP-bound (cnf.jkt): send it with the DPoP scheme and a proof"
DPOP_REQUIRED = "a DPoP-bound token is required"
UNBOUND_AS_DPOP = "token is not DPoP-bound (no cnf.jkt) but was sent with the DPoP scheme"
PROOF_MISSING = "DPoP proof header is missing"
REPLAYED = "DPoP proof was already used"
CERT_UNBOUND = "token is not bound to a client certificate (no cnf x5t#S256)"
CERT_MISSING = "token is bound to a client certificate and the connection presented none"
CERT_MISMATCH = "token is bound to another client certificate"


# --------------------------------------------------------------------------- node processes


def node_binary() -> str:
    return node_tools.node_binary("the sender-constrained tests run a Node.js authorization server", ("oidc-provider", "dpop"))


@dataclass
class AuthorizationServer:
    """sender/as.mjs running: its ready line."""

    proc: subprocess.Popen[bytes]
    issuer: str
    port: int
    tls_port: int
    token_endpoint: str
    mtls_token_endpoint: str
    jwks_uri: str
    log_path: Path

    @property
    def cluster(self) -> str:
        return istio_cluster_name(self.port)

    def stop(self) -> None:
        node_tools.stop(self.proc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("sender-pki"))


@pytest.fixture(scope="module")
def authorization_server(pki: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthorizationServer]:
    """oidc-provider on loopback: plain HTTP for discovery, JWKS and the DPoP client; TLS with
    client certificates verified against the test CA for the mTLS client."""
    log_path = tmp_path_factory.mktemp("sender-as") / "as.log"
    proc, ready = node_tools.start_server(
        node_binary(), SENDER / "as.mjs",
        ["--port", "0", "--audience", AUDIENCE, "--resource", RESOURCE,
         "--tls-port", "0", "--tls-cert", str(pki.server_cert_path), "--tls-key", str(pki.server_key_path),
         "--client-ca", str(pki.ca_path), "--mtls-san-uri", CLIENT_IDENTITY],
        log_path, READY_TIMEOUT_S)
    server = AuthorizationServer(proc, ready["issuer"], ready["port"], ready["tls_port"], ready["token_endpoint"],
                                 ready["mtls_token_endpoint"], ready["jwks_uri"], log_path)
    yield server
    server.stop()


# --------------------------------------------------------------------------- Envoys


def provider(server: AuthorizationServer, name: str, **options: Any) -> dict[str, Any]:
    return {"issuer": server.issuer, "name": name, "audiences": [AUDIENCE], "jwksUri": server.jwks_uri, **options}


def plugin_config(*providers: dict[str, Any]) -> dict[str, Any]:
    # Every decision audited, so that each refusal's reason and worker can be read back.
    return {"realm": REALM, "providers": list(providers), "audit": {"allowedSampleRate": 1}}


@pytest.fixture(scope="module")
def envoys(module_envoys: EnvoyFactory, authorization_server: AuthorizationServer, pki: TestCA) -> dict[str, Envoy]:
    server = authorization_server
    clusters = {server.cluster: server.port}
    required = module_envoys.build(
        plugin_config(provider(server, "as-dpop", dpop={"mode": "required"})),
        extra_clusters=clusters, concurrency=4)
    allowed = module_envoys.build(
        plugin_config(provider(server, "as-allowed", dpop={"mode": "allowed", "origins": [GATEWAY_ORIGIN]})),
        extra_clusters=clusters)
    mtls = module_envoys.build(plugin_config(provider(server, "as-mtls", certificateBound="required")),
                               extra_clusters=clusters)
    mtls.config = sidecar_inbound(mtls.config, pki)
    small = module_envoys.build(
        {**plugin_config(provider(server, "as-small", dpop={"mode": "required"})),
         "limits": {"maxDpopProofs": SMALL_MEMORY}},
        extra_clusters=clusters)
    start_together([required, allowed, mtls, small])
    return {"required": required, "allowed": allowed, "mtls": mtls, "small": small}


# --------------------------------------------------------------------------- the real client


@dataclass
class Holder:
    """A DPoP-bound token from the AS and the key pair it is bound to, as the client made it."""

    token: str
    key: SigningKey
    public_jwk: dict[str, Any]


_JWK_LOADERS = {"EC": ECAlgorithm, "OKP": OKPAlgorithm, "RSA": RSAAlgorithm}
_JWS_ALG = {"ES256": "ES256", "Ed25519": "EdDSA", "PS256": "PS256"}


@dataclass
class ClientRun:
    """What sender/client.mjs printed: per alg, the token, its key and the three calls."""

    results: dict[str, dict[str, Any]]
    plain_token: str

    def holder(self, alg: str) -> Holder:
        result = self.results[alg]
        private = result["private_jwk"]
        key = _JWK_LOADERS[private["kty"]].from_jwk(json.dumps(private))
        public = {name: result["public_jwk"][name] for name in ("kty", "crv", "x", "y", "e", "n")
                  if name in result["public_jwk"]}
        return Holder(result["access_token"], SigningKey(_JWS_ALG[alg], "dpop", key), public)


# `dpop` 2.x names its algorithms as RFC 9864 does: Ed25519 is the fully-specified name of
# EdDSA with the Ed25519 curve.
CLIENT_ALGS = ["ES256", "Ed25519", "PS256"]


@pytest.fixture(scope="module")
def client_run(authorization_server: AuthorizationServer, envoys: dict[str, Envoy]) -> ClientRun:
    """One run of the real client against the `required` Envoy, for every alg."""
    command = [node_binary(), str(SENDER / "client.mjs"),
               "--token-endpoint", authorization_server.token_endpoint,
               "--client-id", "dpop-client", "--client-secret", "dpop-client-secret", "--resource", RESOURCE,
               "--target", f"http://{LOOPBACK}:{envoys['required'].port}{PATH}?expand=items",
               "--export-key", "--bearer-token"]
    for alg in CLIENT_ALGS:
        command += ["--alg", alg]
    done = subprocess.run(command, capture_output=True, timeout=NODE_TIMEOUT_S, cwd=REPO, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"client.mjs failed ({done.returncode}):\n{done.stderr.decode(errors='replace')}"
    output = json.loads(done.stdout)
    return ClientRun({r["alg"]: r for r in output["results"]}, output["plain_token"]["access_token"])


@pytest.fixture(scope="module")
def holder(client_run: ClientRun) -> Holder:
    """The ES256 token and key of the real client, for the hand-made proofs."""
    return client_run.holder("ES256")


# --------------------------------------------------------------------------- proofs and answers


def ath(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest())


def jws(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = b64url(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def make_proof(holder: Holder, htu: str, *, htm: str = "GET", header: dict[str, Any] | None = None,
               claims: dict[str, Any] | None = None, key: SigningKey | None = None,
               jwk: dict[str, Any] | None = None, sign: Callable[[bytes], bytes] | None = None,
               unsigned: bool = False) -> str:
    """A proof as RFC 9449 §4.2 describes it, for `holder.token`, signed with the holder's key;
    `header`/`claims` override members (None removes one), `key`/`jwk` sign with another key."""
    key = key or holder.key
    head = {"typ": "dpop+jwt", "alg": key.alg, "jwk": jwk if jwk is not None else holder.public_jwk}
    body = {"jti": uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": int(time.time()), "ath": ath(holder.token)}
    for target, overrides in ((head, header), (body, claims)):
        for name, value in (overrides or {}).items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
    return jws(head, body, None if unsigned else (sign or key.sign))


def own_url(envoy: Envoy, path: str = PATH) -> str:
    return f"http://{LOOPBACK}:{envoy.port}{path}"


def dpop_headers(token: str, *proofs: str, request_id: str | None = None) -> list[tuple[str, str]]:
    headers = [("Authorization", f"DPoP {token}"), *(("DPoP", proof) for proof in proofs)]
    if request_id:
        headers.append(("x-request-id", request_id))
    return headers


_AUTH_PARAM = re.compile(r'([A-Za-z_]+)="((?:[^"\\]|\\.)*)"')


def challenges(values: list[str]) -> dict[str, dict[str, str]]:
    """Scheme → params of each `WWW-Authenticate` field (each field holds one challenge here)."""
    result = {}
    for value in values:
        scheme, _, rest = value.partition(" ")
        assert scheme not in result, f"two {scheme} challenges: {values}"
        result[scheme] = dict(_AUTH_PARAM.findall(rest))
    return result


def assert_dpop_refusal(resp: Response, error: str, description: str, *, bearer: bool = False) -> dict[str, str]:
    """401 with a DPoP challenge naming `error` and exactly `description` (and, when the
    configuration accepts bearer tokens too, a Bearer challenge); the JSON body agrees."""
    assert resp.status == 401, resp
    found = challenges(resp.headers_named("www-authenticate"))
    assert set(found) == ({"Bearer", "DPoP"} if bearer else {"DPoP"}), resp
    dpop = found["DPoP"]
    assert dpop.get("realm") == REALM, resp
    assert set(dpop.get("algs", "").split()) == DEFAULT_DPOP_ALGS, resp
    assert dpop.get("error") == error, resp
    assert dpop.get("error_description") == description, resp
    body = resp.json()
    assert body == {"error": error, "error_description": description}, resp
    return dpop


def reason_of(envoy: Envoy, request_id: str) -> str:
    line = wait_for_audit(envoy, request_id)
    assert line.fields["decision"] == "deny", line.raw
    return line.fields["reason"]


_REQUEST_IDS = iter(range(1, 1_000_000))


def request_id(what: str) -> str:
    return f"sender-{what}-{next(_REQUEST_IDS)}"


# --------------------------------------------------------------------------- 1. the real client


@pytest.mark.parametrize("alg", ["ES256", "PS256"])
def test_real_client_dpop_token_and_proof_are_accepted(client_run: ClientRun, alg: str) -> None:
    """The AS binds the token to the client's key (cnf.jkt = its RFC 7638 thumbprint) and the
    filter takes it with the client's proof for this request; the request's query is not part
    of `htu`, as the client leaves it out."""
    result = client_run.results[alg]
    assert result["token_type"] == "DPoP" and result["proof_alg"] == alg, result
    assert payload_of(result["access_token"])["cnf"] == {"jkt": result["jkt"]}
    call = result["calls"]["dpop"]
    assert call["status"] == 200, call
    upstream = json.loads(call["body"])
    assert upstream["path"] == f"{PATH}?expand=items", upstream
    # Neither the token nor the proof made for it travel on.
    assert "authorization" not in upstream["headers"] and "dpop" not in upstream["headers"], upstream


def test_real_client_ed25519_proof_is_accepted(client_run: ClientRun) -> None:
    """What today's real client sends for an Ed25519 key: `alg: Ed25519` (RFC 9864's
    fully-specified name), which proofs may use for EdDSA."""
    result = client_run.results["Ed25519"]
    assert result["proof_alg"] == "Ed25519", result
    assert result["calls"]["dpop"]["status"] == 200, result["calls"]["dpop"]


def test_real_client_ed25519_key_with_an_eddsa_proof_is_accepted(envoys: dict[str, Envoy], client_run: ClientRun) -> None:
    """The same Ed25519-bound token from the AS, with a proof signed by the client's key under
    the name the filter accepts (`EdDSA`, RFC 8037): the key and the binding are fine."""
    envoy = envoys["required"]
    holder = client_run.holder("Ed25519")
    assert holder.key.alg == "EdDSA"
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy))))
    assert resp.status == 200, resp


def client_response(call: dict[str, Any]) -> Response:
    """One of the client's calls as the harness's Response (each challenge a field of its own)."""
    headers = [("www-authenticate", value) for value in call["www_authenticate"]]
    headers.append(("content-type", call["headers"].get("content-type", "")))
    return Response(call["status"], headers, call["body"].encode())


@pytest.mark.parametrize("alg", CLIENT_ALGS)
def test_real_client_token_as_bearer_is_a_downgrade(client_run: ClientRun, alg: str) -> None:
    """RFC 9449 §7.1: a DPoP-bound token presented as a bearer token is refused, whatever the
    token's key; with DPoP required the only challenge is DPoP's."""
    resp = client_response(client_run.results[alg]["calls"]["bearer"])
    assert_dpop_refusal(resp, "invalid_token", BOUND_AS_BEARER)


@pytest.mark.parametrize("alg", CLIENT_ALGS)
def test_real_client_token_without_proof_is_refused(client_run: ClientRun, alg: str) -> None:
    """`Authorization: DPoP` with no `DPoP` header: the token alone is not enough."""
    resp = client_response(client_run.results[alg]["calls"]["no_proof"])
    assert_dpop_refusal(resp, "invalid_dpop_proof", PROOF_MISSING)


def test_bearer_token_where_dpop_is_required(envoys: dict[str, Envoy], client_run: ClientRun) -> None:
    """A plain bearer token from the same AS (no proof on the token request, no cnf)."""
    envoy = envoys["required"]
    assert "cnf" not in payload_of(client_run.plain_token)
    rid = request_id("required")
    resp = envoy.request(PATH, headers={"Authorization": f"Bearer {client_run.plain_token}", "x-request-id": rid})
    assert_dpop_refusal(resp, "invalid_token", DPOP_REQUIRED)
    assert reason_of(envoy, rid) == "dpop_required"


def test_unbound_token_with_the_dpop_scheme(envoys: dict[str, Envoy], client_run: ClientRun, holder: Holder) -> None:
    """The DPoP scheme with a token that names no key: a valid proof binds nothing to it."""
    envoy = envoys["required"]
    unbound = Holder(client_run.plain_token, holder.key, holder.public_jwk)
    rid = request_id("unbound")
    resp = envoy.request(PATH, headers=dpop_headers(unbound.token, make_proof(unbound, own_url(envoy)), request_id=rid))
    assert_dpop_refusal(resp, "invalid_token", UNBOUND_AS_DPOP)
    assert reason_of(envoy, rid) == "dpop_unbound"


# --------------------------------------------------------------------------- 2. every proof check


@dataclass
class ProofCase:
    """A request whose proof fails one check of RFC 9449 §4.3, and what the filter must say."""

    name: str
    description: str
    reason: str
    # (holder, envoy) → (method, path, DPoP header values)
    build: Callable[[Holder, Envoy], tuple[str, str, list[str]]]


def _one(**kwargs: Any) -> Callable[[Holder, Envoy], tuple[str, str, list[str]]]:
    """A GET of PATH with one proof for it, `make_proof` changed as `kwargs` say (`htu` may be
    a function of the Envoy)."""
    def build(holder: Holder, envoy: Envoy) -> tuple[str, str, list[str]]:
        options = dict(kwargs)
        htu = options.pop("htu", own_url)
        htu = htu(envoy) if callable(htu) else htu
        return "GET", PATH, [make_proof(holder, htu, **options)]
    return build


def _now() -> int:
    return int(time.time())


def _hs256(signing_input: bytes) -> bytes:
    return hmac.new(b"a shared secret the filter must never accept", signing_input, hashlib.sha256).digest()


def _private_jwk(holder: Holder, envoy: Envoy) -> tuple[str, str, list[str]]:
    private = json.loads(ECAlgorithm.to_jwk(holder.key.private))
    return "GET", PATH, [make_proof(holder, own_url(envoy), jwk={**holder.public_jwk, "d": private["d"]})]


def _bad_signature(holder: Holder, envoy: Envoy) -> tuple[str, str, list[str]]:
    header, payload, signature = make_proof(holder, own_url(envoy)).split(".")
    raw = bytearray(b64url_decode(signature))
    raw[5] ^= 0x01  # one bit of r
    return "GET", PATH, [f"{header}.{payload}.{b64url(bytes(raw))}"]


def _other_key(holder: Holder, envoy: Envoy) -> tuple[str, str, list[str]]:
    other = generate_key("ES256")
    jwk = {k: v for k, v in json.loads(ECAlgorithm.to_jwk(other.private.public_key())).items()
           if k in ("kty", "crv", "x", "y")}
    return "GET", PATH, [make_proof(holder, own_url(envoy), key=other, jwk=jwk)]


def _two_headers(holder: Holder, envoy: Envoy) -> tuple[str, str, list[str]]:
    return "GET", PATH, [make_proof(holder, own_url(envoy)), make_proof(holder, own_url(envoy))]


PROOF_CASES = [
    ProofCase("wrong typ", "DPoP proof typ is not dpop+jwt", "dpop_typ", _one(header={"typ": "JWT"})),
    ProofCase("alg none", "DPoP proof algorithm is not accepted", "dpop_algorithm",
              _one(header={"alg": "none"}, unsigned=True)),
    ProofCase("HS256", "DPoP proof algorithm is not accepted", "dpop_algorithm",
              _one(header={"alg": "HS256"}, sign=_hs256)),
    ProofCase("private jwk", "DPoP proof jwk holds private key material", "dpop_jwk", _private_jwk),
    ProofCase("no jwk", "DPoP proof header has no jwk", "dpop_jwk", _one(header={"jwk": None})),
    ProofCase("bad signature", "DPoP proof signature is invalid", "dpop_signature", _bad_signature),
    ProofCase("no jti", "DPoP proof has no jti", "dpop_jti", _one(claims={"jti": None})),
    ProofCase("wrong htm", "DPoP proof htm does not match the request method", "dpop_htm", _one(htm="POST")),
    ProofCase("htm lower case", "DPoP proof htm does not match the request method", "dpop_htm", _one(htm="get")),
    ProofCase("htu another origin", "DPoP proof htu names another origin", "dpop_htu",
              _one(htu=lambda envoy: f"http://other.example.test:{envoy.port}{PATH}")),
    ProofCase("htu another port", "DPoP proof htu names another origin", "dpop_htu",
              _one(htu=lambda envoy: f"http://{LOOPBACK}:{envoy.port + 1}{PATH}")),
    ProofCase("htu https for http", "DPoP proof htu names another origin", "dpop_htu",
              _one(htu=lambda envoy: f"https://{LOOPBACK}:{envoy.port}{PATH}")),
    ProofCase("htu another path", "DPoP proof htu names another path", "dpop_htu",
              _one(htu=lambda envoy: own_url(envoy, "/orders/43"))),
    ProofCase("htu with a query", "DPoP proof htu is not an absolute http(s) URI without query or fragment",
              "dpop_htu", _one(htu=lambda envoy: own_url(envoy, f"{PATH}?expand=items"))),
    ProofCase("htu with a fragment", "DPoP proof htu is not an absolute http(s) URI without query or fragment",
              "dpop_htu", _one(htu=lambda envoy: own_url(envoy, f"{PATH}#items"))),
    ProofCase("no iat", "DPoP proof has no numeric iat", "dpop_iat", _one(claims={"iat": None})),
    ProofCase("stale iat", "DPoP proof is too old", "dpop_iat",
              lambda holder, envoy: _one(claims={"iat": _now() - MAX_AGE_S - SKEW_S - 30})(holder, envoy)),
    ProofCase("future iat", "DPoP proof is issued in the future", "dpop_iat",
              lambda holder, envoy: _one(claims={"iat": _now() + SKEW_S + 30})(holder, envoy)),
    ProofCase("no ath", "DPoP proof ath does not match the access token", "dpop_ath", _one(claims={"ath": None})),
    ProofCase("wrong ath", "DPoP proof ath does not match the access token", "dpop_ath",
              _one(claims={"ath": ath("another.access.token")})),
    ProofCase("thumbprint mismatch", "DPoP proof key is not the key the token is bound to (cnf.jkt)",
              "dpop_binding", _other_key),
    ProofCase("two DPoP headers", "more than one DPoP proof", "dpop_malformed", _two_headers),
    ProofCase("two proofs in one header", "more than one DPoP proof", "dpop_malformed",
              lambda holder, envoy: ("GET", PATH, [f"{make_proof(holder, own_url(envoy))}, "
                                                   f"{make_proof(holder, own_url(envoy))}"])),
    ProofCase("not a JWS", "DPoP proof is not a well-formed JWS", "dpop_malformed",
              lambda holder, envoy: ("GET", PATH, ["not-a-proof"])),
]


def send_case(envoy: Envoy, holder: Holder, case: ProofCase) -> tuple[Response, str]:
    method, path, proofs = case.build(holder, envoy)
    rid = request_id(case.name.replace(" ", "-"))
    resp = envoy.request(path, method=method, headers=dpop_headers(holder.token, *proofs, request_id=rid),
                         body=b"" if method != "GET" else None)
    return resp, rid


def test_two_dpop_tokens_are_an_invalid_request(envoys: dict[str, Envoy], holder: Holder) -> None:
    """RFC 6750 §2 (one method, one token), for the DPoP scheme: two `Authorization: DPoP`
    fields (which Envoy folds into one value) are 400 invalid_request."""
    envoy = envoys["required"]
    resp = envoy.request(PATH, headers=[("Authorization", f"DPoP {holder.token}"),
                                        ("Authorization", f"DPoP {holder.token}"),
                                        ("DPoP", make_proof(holder, own_url(envoy)))])
    assert resp.status == 400, resp
    assert resp.json()["error"] == "invalid_request", resp


@pytest.mark.parametrize("name", ["required", "allowed"])
def test_a_dpop_and_a_bearer_token_are_an_invalid_request(envoys: dict[str, Envoy], holder: Holder,
                                                          client_run: ClientRun, name: str) -> None:
    """The same rule across schemes: a DPoP token and a bearer token in one request are two
    tokens (400), not one malformed token."""
    envoy = envoys[name]
    htu = own_url(envoy) if name == "required" else GATEWAY_ORIGIN + PATH
    resp = envoy.request(PATH, headers=[("Authorization", f"DPoP {holder.token}"),
                                        ("Authorization", f"Bearer {client_run.plain_token}"),
                                        ("DPoP", make_proof(holder, htu))])
    assert resp.status == 400, resp
    assert resp.json()["error"] == "invalid_request", resp


def test_hand_made_proof_passes(envoys: dict[str, Envoy], holder: Holder) -> None:
    """The control: a proof made as the cases below make theirs, unchanged, passes; so each of
    them is refused for its one defect."""
    envoy = envoys["required"]
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy))))
    assert resp.status == 200, resp
    # `forwardOriginalToken` is false: the DPoP-scheme token is kept from the upstream too.
    assert "authorization" not in resp.upstream["headers"], resp.upstream


@pytest.mark.parametrize("case", PROOF_CASES, ids=[case.name for case in PROOF_CASES])
def test_each_proof_defect_is_refused_on_its_own(envoys: dict[str, Envoy], holder: Holder, case: ProofCase) -> None:
    """RFC 9449 §4.3: each check refuses with 401 invalid_dpop_proof, its own description in the
    DPoP challenge, and its own reason in the audit line."""
    envoy = envoys["required"]
    resp, rid = send_case(envoy, holder, case)
    assert_dpop_refusal(resp, "invalid_dpop_proof", case.description)
    assert reason_of(envoy, rid) == case.reason


def test_refusals_are_counted_by_reason(envoys: dict[str, Envoy], holder: Holder) -> None:
    """The provider's `denied.<reason>` counters move by exactly the refusals sent, and a good
    proof moves `allowed`: what an operator's dashboard shows of an attack."""
    envoy = envoys["required"]
    picked = {case.name: case for case in PROOF_CASES}
    sent = ["wrong htm", "wrong htm", "htu another path", "stale iat", "thumbprint mismatch", "alg none"]
    before = stats(envoy)
    for name in sent:
        resp, _ = send_case(envoy, holder, picked[name])
        assert resp.status == 401, resp
    assert envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy)))).status == 200
    expected: dict[str, int] = {f"mesh_oauth.{REQUIRED_METRIC}.allowed": 1}
    for name in sent:
        counter = f"mesh_oauth.{REQUIRED_METRIC}.denied.{picked[name].reason}"
        expected[counter] = expected.get(counter, 0) + 1
    assert counters_changed(before, stats(envoy)) == expected


@pytest.mark.parametrize("htu, host, path", [
    ("{own}/orders/42", None, "/orders/42?expand=items"),
    ("http://API.LOCAL:80/orders/42", "api.local", PATH),
    ("HTTP://api.local/orders/42", "api.local:80", PATH),
    ("{own}/orders/%34%32", None, PATH),
    ("{own}/orders/x/../42", None, PATH),
], ids=["query only on the request", "host case and default port", "scheme case, port on the request",
        "encoded unreserved", "dot segment"])
def test_htu_is_compared_after_normalisation(envoys: dict[str, Envoy], holder: Holder, htu: str,
                                             host: str | None, path: str) -> None:
    """RFC 9449 §4.3 check 9 compares `htu` after RFC 3986 §6.2.2/§6.2.3 normalisation, and
    without the request's query: spellings of the same URI pass."""
    envoy = envoys["required"]
    headers = dpop_headers(holder.token, make_proof(holder, htu.format(own=f"http://{LOOPBACK}:{envoy.port}")))
    if host:
        headers.append(("Host", host))
    resp = envoy.request(path, headers=headers)
    assert resp.status == 200, resp


def test_configured_origins_replace_the_requests_own(envoys: dict[str, Envoy], holder: Holder) -> None:
    """With `origins`, a proof names the origin the client addressed (a gateway's), not the
    sidecar's; the sidecar's own origin is then not accepted. On the `allowed` Envoy, whose
    401s carry both challenges."""
    envoy = envoys["allowed"]
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, GATEWAY_ORIGIN + PATH)))
    assert resp.status == 200, resp
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy))))
    assert_dpop_refusal(resp, "invalid_dpop_proof", "DPoP proof htu names another origin", bearer=True)


# --------------------------------------------------------------------------- replay


def test_replay_on_the_same_connection(envoys: dict[str, Envoy], holder: Holder) -> None:
    """A proof is single use: sent twice on one keep-alive connection (one worker), the second
    is refused."""
    envoy = envoys["required"]
    headers = dict(dpop_headers(holder.token, make_proof(holder, own_url(envoy))))
    first, second = requests_on_one_connection(envoy, PATH, headers, 2)
    assert first.status == 200, first
    assert_dpop_refusal(second, "invalid_dpop_proof", REPLAYED)


REPLAYS = 12


def test_replay_across_connections_and_workers(envoys: dict[str, Envoy], holder: Holder) -> None:
    """The replay memory is the sidecar's, not a worker's: a proof replayed on new connections
    is refused every time, and the audit lines show the replays handled by other workers than
    the one that accepted it (four workers, each connection placed by the kernel)."""
    envoy = envoys["required"]
    assert envoy.concurrency >= 2
    proof = make_proof(holder, own_url(envoy))
    first_id = request_id("replay-first")
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, proof, request_id=first_id))
    assert resp.status == 200, resp
    first_worker = wait_for_audit(envoy, first_id).thread
    before = stats(envoy)
    workers = []
    for _ in range(REPLAYS):
        rid = request_id("replay")
        resp = envoy.request(PATH, headers=dpop_headers(holder.token, proof, request_id=rid))  # a new connection
        assert_dpop_refusal(resp, "invalid_dpop_proof", REPLAYED)
        line = wait_for_audit(envoy, rid)
        assert line.fields["reason"] == "dpop_replay", line.raw
        workers.append(line.thread)
    assert set(workers) - {first_worker}, (
        f"every replay met the accepting worker {first_worker}: {workers}; no cross-worker evidence")
    assert counters_changed(before, stats(envoy)) == {f"mesh_oauth.{REQUIRED_METRIC}.denied.dpop_replay": REPLAYS}


def test_a_refused_proof_is_not_remembered(envoys: dict[str, Envoy], holder: Holder) -> None:
    """Only a proof that passed every check is recorded: the same jti in a proof refused for
    its htm, then in a correct one, passes (a refusal cannot be used to burn a client's jti)."""
    envoy = envoys["required"]
    jti = uuid.uuid4().hex
    bad = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy), htm="PUT",
                                                                             claims={"jti": jti})))
    assert bad.status == 401, bad
    good = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy),
                                                                              claims={"jti": jti})))
    assert good.status == 200, good


def test_a_full_replay_memory_refuses_rather_than_forgets(envoys: dict[str, Envoy], holder: Holder) -> None:
    """`limits.maxDpopProofs`: once every remembered proof is still in its window, a new proof
    gets 503 with `Retry-After: 1` (single use could not be promised), and the proofs already
    remembered are still refused as replays: none was dropped to make room."""
    envoy = envoys["small"]
    admitted = []
    for _ in range(SMALL_MEMORY):
        proof = make_proof(holder, own_url(envoy))
        resp = envoy.request(PATH, headers=dpop_headers(holder.token, proof))
        assert resp.status == 200, resp
        admitted.append(proof)
    rid = request_id("full")
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, own_url(envoy)), request_id=rid))
    assert resp.status == 503, resp
    assert resp.header("retry-after") == "1", resp
    assert resp.json()["error"] == "temporarily_unavailable", resp
    assert reason_of(envoy, rid) == "dpop_replay_unavailable"
    for proof in (admitted[0], admitted[-1]):
        resp = envoy.request(PATH, headers=dpop_headers(holder.token, proof))
        assert_dpop_refusal(resp, "invalid_dpop_proof", REPLAYED)


# --------------------------------------------------------------------------- 3. challenges


def test_missing_token_where_dpop_is_allowed_gets_both_challenges(envoys: dict[str, Envoy]) -> None:
    """RFC 9449 §7.1 and RFC 6750 §3: one challenge per accepted scheme, neither with an error
    code (no token was sent)."""
    resp = envoys["allowed"].request(PATH)
    assert resp.status == 401, resp
    found = challenges(resp.headers_named("www-authenticate"))
    assert found == {"Bearer": {"realm": REALM}, "DPoP": {"realm": REALM, "algs": found["DPoP"].get("algs", "")}}, resp
    assert set(found["DPoP"]["algs"].split()) == DEFAULT_DPOP_ALGS, resp


def test_missing_token_where_dpop_is_required_gets_only_dpop(envoys: dict[str, Envoy]) -> None:
    """When every provider requires DPoP a Bearer challenge would invite a bearer token that
    can only be refused: the DPoP challenge alone, with the algorithms a proof may use."""
    resp = envoys["required"].request(PATH)
    assert resp.status == 401, resp
    values = resp.headers_named("www-authenticate")
    assert len(values) == 1 and values[0].startswith("DPoP "), resp
    params = challenges(values)["DPoP"]
    assert params.keys() == {"realm", "algs"} and params["realm"] == REALM, resp
    assert set(params["algs"].split()) == DEFAULT_DPOP_ALGS, resp


def test_allowed_mode_takes_bearer_tokens_but_not_a_bound_one(envoys: dict[str, Envoy], client_run: ClientRun,
                                                             holder: Holder) -> None:
    """`allowed`: an unbound token may be a bearer token; a bound one still needs its proof
    (RFC 9449 §7.1 holds in every mode), and that refusal carries both challenges."""
    envoy = envoys["allowed"]
    resp = envoy.request(PATH, headers={"Authorization": f"Bearer {client_run.plain_token}"})
    assert resp.status == 200, resp
    resp = envoy.request(PATH, headers={"Authorization": f"Bearer {holder.token}"})
    found = challenges(resp.headers_named("www-authenticate"))
    assert resp.status == 401, resp
    assert found["Bearer"] == {"realm": REALM, "error": "invalid_token", "error_description": BOUND_AS_BEARER}, resp
    assert found["DPoP"]["error_description"] == BOUND_AS_BEARER, resp


def test_proof_error_leaves_the_bearer_challenge_plain(envoys: dict[str, Envoy], holder: Holder) -> None:
    """A proof error concerns the DPoP scheme: the Bearer challenge carries no error."""
    envoy = envoys["allowed"]
    resp = envoy.request(PATH, headers=dpop_headers(holder.token, make_proof(holder, GATEWAY_ORIGIN + PATH,
                                                                              htm="DELETE")))
    assert_dpop_refusal(resp, "invalid_dpop_proof", "DPoP proof htm does not match the request method", bearer=True)
    assert challenges(resp.headers_named("www-authenticate"))["Bearer"] == {"realm": REALM}, resp


# --------------------------------------------------------------------------- 4. certificate-bound


def certificate_thumbprint(pem_path: Path) -> str:
    """RFC 8705 §3.1: base64url SHA-256 of the certificate's DER, computed here independently."""
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return b64url(hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest())


@pytest.fixture(scope="module")
def mtls_token(authorization_server: AuthorizationServer, pki: TestCA) -> str:
    """A token from the AS's mTLS token endpoint, the client authenticated by its certificate
    (tls_client_auth) and the token bound to it."""
    conn = http.client.HTTPSConnection(LOOPBACK, authorization_server.tls_port,
                                       context=pki.client_context(CLIENT_IDENTITY), timeout=REQUEST_TIMEOUT_S)
    try:
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "mtls-client",
                                       "resource": RESOURCE})
        conn.request("POST", "/token", body=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        answer = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, answer
    grant = json.loads(answer)
    assert grant["token_type"] == "Bearer", grant
    return grant["access_token"]


def test_as_binds_the_token_to_the_client_certificate(mtls_token: str, pki: TestCA) -> None:
    """What the AS put in the token is the certificate's thumbprint as computed here: the
    tests below rest on a real binding."""
    expected = certificate_thumbprint(pki.client(CLIENT_IDENTITY).cert_path)
    assert payload_of(mtls_token)["cnf"] == {"x5t#S256": expected}


@pytest.mark.parametrize("identity, status, description, reason", [
    (CLIENT_IDENTITY, 200, None, None),
    (OTHER_IDENTITY, 401, CERT_MISMATCH, "cert_mismatch"),
    (None, 401, CERT_MISSING, "cert_missing"),
], ids=["the bound certificate", "another certificate of the same CA", "no certificate"])
def test_certificate_bound_token(envoys: dict[str, Envoy], pki: TestCA, mtls_token: str, identity: str | None,
                                 status: int, description: str | None, reason: str | None) -> None:
    """RFC 8705 §3: the token passes only on a connection with the certificate it is bound to."""
    envoy = envoys["mtls"]
    assert envoy.port is not None
    rid = request_id("mtls")
    resp = https_request(envoy.port, PATH, ca=pki, identity=identity,
                         headers={"Authorization": f"Bearer {mtls_token}", "x-request-id": rid})
    assert resp.status == status, resp
    if description is None:
        assert resp.upstream["path"] == PATH
        return
    # No provider accepts DPoP here: the Bearer challenge alone.
    assert challenges(resp.headers_named("www-authenticate")) == {"Bearer": {
        "realm": REALM, "error": "invalid_token", "error_description": description}}, resp
    assert reason_of(envoy, rid) == reason


def test_unbound_token_where_certificate_binding_is_required(envoys: dict[str, Envoy], pki: TestCA,
                                                            client_run: ClientRun) -> None:
    """`certificateBound: required`: a valid token from the same AS without `cnf` is refused
    even on a connection with a good client certificate."""
    envoy = envoys["mtls"]
    assert envoy.port is not None
    rid = request_id("mtls-unbound")
    resp = https_request(envoy.port, PATH, ca=pki, identity=CLIENT_IDENTITY,
                         headers={"Authorization": f"Bearer {client_run.plain_token}", "x-request-id": rid})
    assert resp.status == 401, resp
    assert challenges(resp.headers_named("www-authenticate")) == {"Bearer": {
        "realm": REALM, "error": "invalid_token", "error_description": CERT_UNBOUND}}, resp
    assert reason_of(envoy, rid) == "cert_unbound"
