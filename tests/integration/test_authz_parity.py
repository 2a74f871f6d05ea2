"""Parity with Istio: for each RequestAuthentication + AuthorizationPolicy pair of
`authz_policies.PAIRS`, the same requests go to

(A) real Envoy configured as istiod configures a sidecar's inbound HTTP listener for the pair
    (`istio_authz`: jwt_authn + RBAC DENY + RBAC ALLOW, on `mtls.sidecar_inbound`), and
(B) real Envoy with the mesh-oauth module and the `pluginConfig` that `mesh-oauth convert`
    makes of the same YAML, on the same listener,

and allow/deny must agree on every request. (A) is itself checked against the verdict Istio's
documented semantics give (the `expect` column), so the reference is what Istio does, not what
this file's translation happens to do. Every deliberate difference of mesh-oauth is listed in
`DELIBERATE` with its reason (mirrored in docs/security.md); the test fails on any other difference, and on a listed one that
no longer differs, so the list stays true.

(B) runs the CLI at `$MESH_OAUTH_CLI` (default target/debug/mesh-oauth, which `make cli` builds);
(A) needs no Wasm module."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

import istio_authz
from authz_policies import LABELS, NAMESPACE, PAIRS, TOKENS, Pair, Request, Token, request_ids
from conftest import REPO, wasm_module_path
from harness import LOOPBACK, EchoServer, Envoy, IdpServer, bootstrap, wasm_filter
from mtls import NO_URI_SAN, TLS_REFUSALS, TestCA, free_ports, https_request, sidecar_inbound, spiffe_id
from tokens import KeySet, b64url, b64url_decode

CLI = Path(os.environ.get("MESH_OAUTH_CLI") or REPO / "target" / "debug" / "mesh-oauth")
CONVERT_TIMEOUT_S = 30

# Deliberate differences: "pair/request" → (mesh-oauth's verdict, why). Empty until the converter
# exists and the first comparison shows what differs; each entry must say why mesh-oauth is
# right (or why Istio's behaviour cannot be had in a Wasm filter).
DELIBERATE: dict[str, tuple[Literal["allow", "deny"], str]] = {
    "require-jwt/scheme-lower-case": ("allow", "RFC 9110 §11.1, RFC 6750 §2.1: the auth scheme is "
                                               "case-insensitive; jwt_authn matches 'Bearer ' exactly, "
                                               "sees no token, and RBAC refuses the request"),
    "jwt-per-path/double-slash-alice": ("allow", "mesh-oauth merges repeated slashes before matching "
                                                 "(//headers is /headers); Istio's default normalisation "
                                                 "keeps them, so its rule for /headers misses"),
    "require-mtls-principal-wildcards/no-uri-san-public": (
        "deny", "a certificate without a SPIFFE URI SAN names no principal in mesh-oauth; Envoy's RBAC "
                "falls back to the DNS SAN. A real sidecar refuses such a certificate at the handshake"),
    "ip-allow-list/listed-with-xff": (
        "deny", "with x-forwarded-for present Envoy gives a Wasm filter the XFF address, not the direct "
                "peer: ipBlocks fail closed (an ALLOW does not match)"),
    "remote-ip/xff-chain-last-allowed": (
        "deny", "the DENY on source.ip cannot see the direct peer behind x-forwarded-for and fails "
                "closed (a DENY matches)"),
    "remote-ip/xff-allowed": ("deny", "as remote-ip/xff-chain-last-allowed"),
    "hosts/service-host-with-port": (
        "allow", "mesh-oauth matches the host whatever the port in :authority; Istio compares the whole "
                 "string, so `httpbin.foo` misses `httpbin.foo:8000` (Istio advises listing `host:*` too)"),
    "hosts/subdomain-with-port": ("allow", "as hosts/service-host-with-port"),
}

# Pairs `mesh-oauth convert` refuses by design: pair name → why. Their conversion must fail (with
# an error, never a configuration that decides differently); one that converts after all fails
# the test until it is taken off the list.
CONVERT_REFUSES: dict[str, str] = {}

Observed = Literal["allow", 400, 401, 403, "refused"]


def allow_or_deny(observed: Observed) -> Literal["allow", "deny"]:
    return "allow" if observed == "allow" else "deny"


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    """What every pair shares: the CA, the IdP with the signing key, the minted tokens, and the
    verdicts of (A) once taken (for (B), which may run without (A) having run first)."""

    envoy_bin: Path
    echo: EchoServer
    idp: IdpServer
    ca: TestCA
    workdir: Path
    tokens: dict[str, str]
    istio: dict[str, "IstioRun"] = field(default_factory=dict)

    @property
    def clusters(self) -> dict[str, int]:
        """The upstream, and the IdP under the cluster name Istio (and mesh-oauth) derive from
        its jwksUri."""
        return {"upstream": self.echo.port, self.idp.cluster: self.idp.port}


@dataclass
class IstioRun:
    yaml_path: Path
    ports: tuple[int, int]
    observed: dict[str, Observed]


def mint(keys: KeySet, token: Token) -> str:
    """A token for `token`, signed RS256 with the key the IdP publishes, then broken as asked."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": token.iss, "iat": now - 10, "exp": now + 600}
    if token.sub is not None:
        claims["sub"] = token.sub
    if token.aud is not None:
        claims["aud"] = token.aud
    claims.update(token.extra)
    if token.flaw == "expired":
        claims.update(iat=now - 7200, exp=now - 3600)
    minted = keys.mint("RS256", claims)
    if token.flaw == "signature":
        head, payload, signature = minted.split(".")
        raw = bytearray(b64url_decode(signature))
        raw[len(raw) // 2] ^= 0x01
        minted = f"{head}.{payload}.{b64url(bytes(raw))}"
    return minted


@pytest.fixture(scope="module")
def world(envoy_bin: Path, echo: EchoServer, module_idps, tmp_path_factory: pytest.TempPathFactory) -> World:
    keys = KeySet(["RS256"])
    idp = module_idps()
    idp.set_jwks(keys.jwks(["RS256"]))
    workdir = tmp_path_factory.mktemp("authz-parity")
    tokens = {name: mint(keys, token) for name, token in TOKENS.items()}
    return World(envoy_bin, echo, idp, TestCA(workdir / "pki"), workdir, tokens)


# --------------------------------------------------------------------------- requests


def send(world: World, ports: tuple[int, int], request: Request) -> tuple[Observed, str]:
    """The request as its row says; the verdict and a short note of the answer (for tables)."""
    headers: list[tuple[str, str]] = [("Host", request.host), *request.headers]
    query = None
    if request.token is not None:
        token = world.tokens[request.token]
        if request.token_in == "bearer":
            headers.append(("Authorization", f"Bearer {token}"))
        elif request.token_in == "bearer-lower-case":
            headers.append(("Authorization", f"bearer {token}"))
        elif request.token_in == "query":
            query = [("access_token", token)]
        else:
            headers.append((request.token_in, token))
    port = ports[0] if request.port == "main" else ports[1]
    try:
        resp = https_request(port, request.path, ca=world.ca, identity=request.peer,
                             source_address=None if request.source == LOOPBACK else request.source,
                             sni=request.sni, method=request.method, headers=headers, query=query)
    except TLS_REFUSALS as exc:
        return "refused", type(exc).__name__
    if resp.status == 200:
        if request.method != "HEAD":
            assert "headers" in resp.json(), f"a 200 not from the echo upstream: {resp}"
        return "allow", "200"
    if resp.status in (400, 401, 403):
        return resp.status, f"{resp.status} {resp.body[:120]!r}"
    raise AssertionError(f"{request.id}: unexpected answer {resp}")


def run_matrix(world: World, pair: Pair, ports: tuple[int, int]) -> dict[str, tuple[Observed, str]]:
    """Every request of the pair, one connection each (the peer and source differ per row)."""
    return {request.id: send(world, ports, request) for request in pair.requests}


def start(world: World, name: str, filters: list[dict[str, Any]], ports: tuple[int, int]) -> Envoy:
    config = sidecar_inbound(bootstrap(filters, world.clusters), world.ca, ports[0], [ports[1]])
    return Envoy(world.envoy_bin, world.workdir / name, config).start()


def istio_side(world: World, pair: Pair) -> IstioRun:
    """(A) for `pair`, once per run: the YAML as applied, the ports it names, and what the
    sidecar-configured Envoy answered."""
    cached = world.istio.get(pair.name)
    if cached is not None:
        return cached
    first, second = free_ports(2)
    ports = (first, second)
    text = pair.render(world.idp.jwks_uri, first, second)
    yaml_path = world.workdir / f"{pair.name}.yaml"
    yaml_path.write_text(text)
    filters = istio_authz.sidecar_http_filters(istio_authz.load_documents(text), NAMESPACE, LABELS)
    (world.workdir / f"{pair.name}.istio-filters.json").write_text(istio_authz.dump(filters))
    envoy = start(world, f"istio-{pair.name}", filters, ports)
    try:
        observed = {rid: verdict for rid, (verdict, _) in run_matrix(world, pair, ports).items()}
    finally:
        envoy.stop()
    run = world.istio[pair.name] = IstioRun(yaml_path, ports, observed)
    return run


def _ids(pair: Pair) -> str:
    return pair.name


# --------------------------------------------------------------------------- (A)


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_istio_side_matches_istio_semantics(world: World, pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """The sidecar-configured Envoy decides each request as Istio's documentation says it must
    (DENY before ALLOW, an ALLOW policy refusing the unmatched, 401 for bad tokens, 403 for a
    missing one where a principal is needed, …), so (A) is a trustworthy reference."""
    run = istio_side(world, pair)
    wrong = [f"  {r.id:36} expected {r.expect!s:6} got {run.observed[r.id]!s:8} {r.why}"
             for r in pair.requests if run.observed[r.id] != r.expect]
    with capsys.disabled():
        print(f"\n[istio] {pair.name}: {len(pair.requests)} requests, "
              f"{len(pair.requests) - len(wrong)} as Istio's semantics say")
    assert not wrong, (f"{pair.name}: the Istio-configured Envoy differs from Istio's semantics "
                       f"(filters in {world.workdir / (pair.name + '.istio-filters.json')}):\n" + "\n".join(wrong))


# --------------------------------------------------------------------------- (B)


def convert(yaml_path: Path) -> dict[str, Any] | str:
    """`mesh-oauth convert FILE`: its one WasmPlugin's `spec.pluginConfig`, or the error it
    printed when it refused. A missing CLI fails (`make integration` builds it): a skip would
    let the comparison silently stop."""
    assert CLI.is_file() and os.access(CLI, os.X_OK), f"mesh-oauth CLI not found at {CLI} (set MESH_OAUTH_CLI; `make cli`)"
    proc = subprocess.run([str(CLI), "convert", str(yaml_path)], capture_output=True, text=True,
                          timeout=CONVERT_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        return proc.stderr or f"exit status {proc.returncode}"
    # Besides the WasmPlugin, convert may write a ServiceEntry and DestinationRule per https key
    # host; the comparison needs the plugin only (the bootstrap has the key server's cluster).
    plugins = [doc for doc in yaml.safe_load_all(proc.stdout) if doc and doc.get("kind") == "WasmPlugin"]
    assert len(plugins) == 1, f"convert made {len(plugins)} WasmPlugins for one workload, expected one:\n{proc.stdout}"
    plugin = plugins[0]
    assert plugin.get("apiVersion") == "extensions.istio.io/v1alpha1", plugin
    config = plugin["spec"]["pluginConfig"]
    assert isinstance(config, dict), f"pluginConfig is not a mapping: {config!r}"
    json.dumps(config)  # JSON-compatible, as Istio hands it to the filter
    return config


@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_mesh_oauth_decides_as_istio(world: World, pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """mesh-oauth with the converted configuration allows and denies exactly what the Istio
    sidecar does, apart from the listed deliberate differences."""
    run = istio_side(world, pair)
    config = convert(run.yaml_path)
    refused_by_design = CONVERT_REFUSES.get(pair.name)
    if isinstance(config, str):
        assert refused_by_design is not None, f"mesh-oauth convert {run.yaml_path} failed:\n{config}"
        return
    assert refused_by_design is None, f"{pair.name}: listed in CONVERT_REFUSES ({refused_by_design}) but converts"
    (world.workdir / f"{pair.name}.plugin-config.json").write_text(json.dumps(config, indent=2))
    envoy = start(world, f"mesh-oauth-{pair.name}", [wasm_filter(wasm_module_path(), json.dumps(config))], run.ports)
    try:
        ours = run_matrix(world, pair, run.ports)
        crashes = envoy.crash_lines()
    finally:
        envoy.stop()
    assert not crashes, f"{pair.name}: the module crashed:\n" + "\n".join(crashes)

    problems, agreed = [], 0
    table = []
    for request in pair.requests:
        key = f"{pair.name}/{request.id}"
        theirs = allow_or_deny(run.observed[request.id])
        mine = allow_or_deny(ours[request.id][0])
        listed = DELIBERATE.get(key)
        table.append(f"  {request.id:36} istio={run.observed[request.id]!s:8} mesh-oauth={ours[request.id][1]}")
        if mine == theirs:
            agreed += 1
            if listed is not None:
                problems.append(f"{key}: listed as mesh-oauth {listed[0]}, but both {mine}")
        elif listed is None:
            problems.append(f"{key}: unexplained difference: mesh-oauth {mine}, Istio {theirs}")
        elif listed[0] != mine:
            problems.append(f"{key}: listed as mesh-oauth {listed[0]}, but mesh-oauth {mine} (Istio {theirs})")
    with capsys.disabled():
        print(f"\n[parity] {pair.name}: {len(pair.requests)} requests, {agreed} agree with Istio, "
              f"{len(pair.requests) - agreed} differ ({sum(1 for r in pair.requests if f'{pair.name}/{r.id}' in DELIBERATE)} listed)")
    assert not problems, "\n".join(problems) + "\n(per request):\n" + "\n".join(table)


def test_deliberate_names_real_requests() -> None:
    """An entry for a request or pair that no longer exists would hide nothing and mislead."""
    unknown = set(DELIBERATE) - request_ids()
    assert not unknown, f"DELIBERATE names requests that do not exist: {sorted(unknown)}"
    unknown_pairs = set(CONVERT_REFUSES) - {pair.name for pair in PAIRS}
    assert not unknown_pairs, f"CONVERT_REFUSES names pairs that do not exist: {sorted(unknown_pairs)}"
    bad = {key: verdict for key, (verdict, _) in DELIBERATE.items() if verdict not in ("allow", "deny")}
    assert not bad, f"DELIBERATE verdicts must be allow or deny: {bad}"


# --------------------------------------------------------------------------- the listener itself


def test_sidecar_listener_addresses_and_identity(world: World) -> None:
    """What the policies' address and identity attributes read on this listener, measured: the
    client's bound source address arrives as the peer address; with `use_remote_address: false`
    and no trusted hops, the right-most `x-forwarded-for` entry becomes the remote address, which
    RBAC's `remote_ip` (Istio `remote.ip`) and the CEL/Wasm attribute `source.address` both read,
    while `direct_remote_ip` (Istio `source.ip`) stays the peer; the peer certificate's URI SAN
    is its principal; a certificate without one has only its DNS SAN."""
    ports = free_ports(2)
    config = sidecar_inbound(bootstrap([], world.clusters), world.ca, ports[0], [ports[1]])
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["request_headers_to_add"] = [
        {"header": {"key": f"x-seen-{name}", "value": value}} for name, value in {
            "direct": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%",
            "remote": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            "cel-source": "%CEL(source.address)%",
            "cel-destination": "%CEL(destination.address)%",
            "uri-san": "%CEL(connection.uri_san_peer_certificate)%",
            "dns-san": "%CEL(connection.dns_san_peer_certificate)%",
            "sni": "%CEL(connection.requested_server_name)%",
        }.items()
    ]
    envoy = Envoy(world.envoy_bin, world.workdir / "listener-check", config).start()
    try:
        def seen(port: int = ports[0], **kwargs: Any) -> dict[str, str]:
            headers = https_request(port, "/", ca=world.ca, **kwargs).json()["headers"]
            return {k[len("x-seen-"):]: v for k, v in headers.items() if k.startswith("x-seen-")}

        plain = seen(source_address="127.0.0.2")
        assert (plain["direct"], plain["remote"], plain["cel-source"].rsplit(":", 1)[0]) == \
            ("127.0.0.2", "127.0.0.2", "127.0.0.2"), plain
        assert plain["cel-destination"] == f"{LOOPBACK}:{ports[0]}", plain
        assert seen(ports[1])["cel-destination"] == f"{LOOPBACK}:{ports[1]}"

        forwarded = seen(source_address="127.0.0.3", headers={"X-Forwarded-For": "203.0.113.7, 192.0.2.1"})
        assert forwarded["direct"] == "127.0.0.3", forwarded
        assert forwarded["remote"] == "192.0.2.1", forwarded
        assert forwarded["cel-source"] == "192.0.2.1:0", (
            "the attribute a Wasm filter reads as source.address follows x-forwarded-for", forwarded)

        peer = seen(identity=spiffe_id("foo", "sleep"), sni="outbound_.8000_._.httpbin.foo.svc.cluster.local")
        assert peer["uri-san"] == spiffe_id("foo", "sleep"), peer
        assert peer["sni"] == "outbound_.8000_._.httpbin.foo.svc.cluster.local", peer
        legacy = seen(identity=NO_URI_SAN)
        assert legacy.get("uri-san", "") in ("", "-") and legacy["dns-san"] != "", legacy
        assert seen().get("uri-san", "") in ("", "-"), "no client certificate: no peer identity"
    finally:
        envoy.stop()
