"""The outbound workload of `make bench` (issue 29): a token attached to every request a workload
sends, by Envoy's native `credential_injector` and by mesh-oauth, against a real authorization
server. bench.py runs the arms in its rounds (fresh Envoy per run, one worker pinned, wrk
pinned); this module holds what is outbound-specific: the server, the filters, Envoy's extra
resources, the per-run check, and the token-endpoint calls per token lifetime with 4 workers.

Arms of workload `outbound` (each request carries the same user token, `Authorization: Bearer`,
as an app would send it; every arm that attaches a token replaces it):
  A none            no filter
  D empty wasm      bench/empty-filter: the floor of any Wasm filter (reads and removes the header)
  P wasm O's calls  bench/empty-filter making arm O's host calls on a cached request and nothing
                    else (the whole-map read, the clock, a 684-byte token put in place of the
                    user's, a warn line every 100th request): O − P is mesh-oauth's own work (issue 30)
  N credential_injector  Envoy's `envoy.filters.http.credential_injector` with its `oauth2`
                    client-credentials credential (client secret from a static SDS secret, token
                    endpoint through a cluster), `overwrite: true`
  O mesh-oauth clientCredentials   the workload's own token, cached (the warm-up fetches it)
  X mesh-oauth tokenExchange       the user's token exchanged (RFC 8693), cached: the same
                    subject token on every request, so the warm-up's one exchange serves them all

The authorization server is the outbound tests' own, npm `oidc-provider`
(tests/integration/outbound/as.mjs): client credentials as oidc-provider implements them, token
exchange registered on it, the user token minted by it with npm `jose`.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness import LOOPBACK, Envoy, istio_cluster_name, static_cluster, wasm_filter
from node_tools import read_line

REPO = Path(__file__).resolve().parents[1]
AS_SCRIPT = REPO / "tests" / "integration" / "outbound" / "as.mjs"
WORKLOAD_KEY = "outbound"
# (key, label, verifies) for bench.Arm; (key, label, alg, mode, arms) for bench.Workload. The
# "alg" names the token file bench's wrk script repeats (`outbound.repeat`: the user token).
ARMS = [("N", "credential_injector", True), ("O", "mesh-oauth clientCredentials", True),
        ("X", "mesh-oauth tokenExchange", True)]
ARM_KEYS = {key for key, _, _ in ARMS}
WORKLOAD = (WORKLOAD_KEY, "outbound: a token attached to every request (cached)", WORKLOAD_KEY, "repeat", "ADPNOX")
# Targets (issue 29): throughput ratio to the native injector, per round, median; and, reported
# beside them, where the empty Wasm filter stands: no Wasm filter can do better than D ÷ N.
RATIO_TARGETS: list[tuple[str, float | None, str]] = [
    ("O", 0.9, "outbound: cached clientCredentials (O) vs credential_injector (N)"),
    ("X", 0.8, "outbound: cached tokenExchange (X) vs credential_injector (N)"),
    ("D", None, "outbound: empty Wasm filter (D) vs credential_injector (N), the ceiling of any Wasm filter"),
    ("P", None, "outbound: empty Wasm filter with O's host calls (P) vs credential_injector (N)"),
]
CALLS_GOAL = 1.1
# With --baseline-wasm, arm F of this workload is arm O's configuration with the baseline module
# (right after O in every round): O ÷ F is the before/after of a cached client-credentials request.
BASELINE_OF = "O"


def arm_key(arm: str, workload: str) -> str:
    """The outbound arm whose server, counters and checks arm `arm` of `workload` uses: arm F of
    this workload is arm O's configuration (with the baseline module); other arms are themselves."""
    return BASELINE_OF if arm == "F" and workload == WORKLOAD_KEY else arm

# as.mjs's client_secret_basic client (the native injector's default BASIC_AUTH) and what both
# arms ask for: the same resource and scope, so both get the same kind of token.
CLIENT_ID, CLIENT_SECRET = "svc-basic", "svc-basic-secret"
SECRET_ENV = "BENCH_CLIENT_SECRET"
SDS_SECRET = "bench-client-secret"
RESOURCE = "https://payments.mesh-oauth.test"
SCOPES = ["pay:read"]
ENTRY = "bench"
# The user token lasts longer than any bench run: the exchanged token is capped at its `exp`.
SUBJECT_TTL_S = 6 * 3600
THROUGHPUT_TTL_S = 600
READY_TIMEOUT_S = 20.0


# --------------------------------------------------------------------------- the authorization server


@dataclass
class AuthorizationServer:
    proc: subprocess.Popen[bytes]
    issuer: str
    port: int

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.issuer}{path}", timeout=5) as answer:
            return json.loads(answer.read())

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.issuer}/test/reset", data=b"", method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(workdir: Path, token_ttl_s: int) -> AuthorizationServer:
    node = shutil.which("node")
    for package in ("oidc-provider", "jose"):
        if node is None or not (REPO / "node_modules" / package / "package.json").is_file():
            raise RuntimeError(f"the outbound workload needs node and npm {package}: run `make node-deps`")
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f"as-{token_ttl_s}s.log", "wb") as log:
        proc = subprocess.Popen([str(node), str(AS_SCRIPT), "--port", "0", "--token-ttl", str(token_ttl_s)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO)
    try:
        ready = json.loads(read_line(proc, READY_TIMEOUT_S))
    except BaseException:
        proc.kill()
        raise
    return AuthorizationServer(proc, ready["issuer"], ready["port"])


# The throughput runs' server (600 s tokens: none expires within a run), set by `start`.
SERVER: AuthorizationServer | None = None


def user_token(server: AuthorizationServer, path: Path) -> Path:
    """A user token the server minted (its own key, npm `jose`), written to `path`: the bearer
    token every request carries, the subject of arm X's exchange."""
    path.write_text(server.get(f"/test/mint?sub=alice&ttl={SUBJECT_TTL_S}&scope=pay:read+tools:call")["token"] + "\n")
    return path


def start(workdir: Path) -> dict[str, Path]:
    """Starts the throughput runs' server and writes the user token the requests carry; returns
    bench's token-file entry for it (`outbound.repeat`)."""
    global SERVER
    SERVER = start_server(workdir, THROUGHPUT_TTL_S)
    return {f"{WORKLOAD_KEY}.repeat": user_token(SERVER, workdir / "outbound.repeat")}


def stop() -> None:
    global SERVER
    if SERVER is not None:
        SERVER.stop()
        SERVER = None


# --------------------------------------------------------------------------- Envoy


def native_injector(server: AuthorizationServer) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.credential_injector",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            # Like mesh-oauth: the token replaces what the app sent.
            "overwrite": True,
            "credential": {
                "name": "envoy.http.injected_credentials.oauth2",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2",
                    "token_endpoint": {"cluster": istio_cluster_name(server.port), "uri": f"{server.issuer}/token",
                                       "timeout": "3s"},
                    "client_credentials": {"client_id": CLIENT_ID, "client_secret": {"name": SDS_SECRET},
                                           "auth_type": "BASIC_AUTH"},
                    "scopes": SCOPES,
                    "endpoint_params": [{"name": "resource", "value": RESOURCE}],
                },
            },
        },
    }


def mesh_config(server: AuthorizationServer, arm: str) -> dict[str, Any]:
    client = {"provider": "as", "clientId": CLIENT_ID, "clientSecretEnv": SECRET_ENV}
    grant = ({"clientCredentials": {**client, "resource": RESOURCE, "scopes": SCOPES}} if arm == "O"
             else {"tokenExchange": {**client, "audience": "tools", "scopes": ["tools:call"]}})
    return {"providers": [{"name": "as", "issuer": server.issuer}],
            "outbound": [{"name": ENTRY, "match": {"hosts": ["*"]}, **grant}]}


# The stand-in authorization server of the V8 hot path (bench/hotpath.mjs answers the calls).
HOTPATH_ISSUER = "https://as.bench.local"


def hotpath_fixture(arm: str, user_token: str) -> dict[str, Any]:
    """bench/hotpath.mjs's fixture for a cached request of arm O or X: the arm's configuration
    against a stand-in server whose discovery and token answers the harness serves from memory
    (the first request waits for the token; the timed ones find it cached), `user_token` on every
    request (the subject of X's exchange)."""
    issuer = HOTPATH_ISSUER
    access = {"access_token": "b" * 40 + "." + "c" * 300 + "." + "d" * 342, "token_type": "Bearer",
              "expires_in": THROUGHPUT_TTL_S, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}
    discovery = {"issuer": issuer, "jwks_uri": f"{issuer}/jwks", "token_endpoint": f"{issuer}/token"}
    config = mesh_config(AuthorizationServer(None, issuer, 443), arm)  # type: ignore[arg-type]
    return {"config": json.dumps(config), "token": user_token, "env": {SECRET_ENV: CLIENT_SECRET},
            "answers": {"/.well-known/openid-configuration": {"status": 200, "body": json.dumps(discovery)},
                        "/token": {"status": 200, "body": json.dumps(access)}}}


def filters(arm: str, module: Path, server: AuthorizationServer | None = None) -> list[dict[str, Any]]:
    server = server or SERVER
    assert server is not None, "outbound arm without the authorization server (outbound_arms.start)"
    if arm == "N":
        return [native_injector(server)]
    return [wasm_filter(module, json.dumps(mesh_config(server, arm)), env={SECRET_ENV: CLIENT_SECRET})]


def resources(arm: str, server: AuthorizationServer | None = None) -> dict[str, Any]:
    """What an outbound arm adds to Envoy's static resources: the server's cluster (Istio's name
    for it, which mesh-oauth derives from the issuer) and, for the native injector, its client
    secret as a static SDS secret."""
    server = server or SERVER
    if arm not in ARM_KEYS or server is None:
        return {}
    extra: dict[str, Any] = {"clusters": [static_cluster(istio_cluster_name(server.port), server.port)]}
    if arm == "N":
        extra["secrets"] = [{"name": SDS_SECRET, "generic_secret": {"secret": {"inline_string": CLIENT_SECRET}}}]
    return extra


def counters(envoy: Envoy, arm: str) -> dict[str, int]:
    """The injector's and mesh-oauth's outbound counters, summed over workers by Envoy ({} for
    another workload's arm)."""
    if arm not in ARM_KEYS:
        return {}
    time.sleep(0.3)  # mesh-oauth hands its counters to Envoy on its next tick (100 ms)
    body = envoy.admin(r"/stats?filter=credential_injector\.|mesh_oauth\.outbound\.").body.decode()
    found: dict[str, int] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            found[name.removeprefix("wasmcustom.")] = int(value)
    return found


def check(envoy: Envoy, arm: str, requests: int, before: dict[str, int]) -> list[str]:
    """A run counts only if its token was attached to every request of the timed window (the
    counters since `before`, taken after the warm-up, whose first requests may find no token
    yet): a 200 alone could be an entry that matched nothing (direct_response answers anyway)."""
    if arm not in ARM_KEYS:
        return []
    found = {name: value - before.get(name, 0) for name, value in counters(envoy, arm).items()}
    if arm == "N":
        injected = sum(v for k, v in found.items() if k.endswith("credential_injector.injected"))
        failed = sum(v for k, v in found.items() if k.endswith("credential_injector.failed"))
        return ([f"credential_injector injected {injected} < {requests} requests"] if injected < requests else []) \
            + ([f"credential_injector failed {failed}"] if failed else [])
    prefix = f"mesh_oauth.outbound.{ENTRY}."
    attached = found.get(prefix + "attached", 0)
    refused = {k[len(prefix):]: v for k, v in found.items() if k.startswith(prefix + "refused") and v}
    return ([f"mesh-oauth attached {attached} < {requests} requests"] if attached < requests else []) \
        + ([f"mesh-oauth refused {refused}"] if refused else [])


# --------------------------------------------------------------------------- calls per token lifetime


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--outbound-ttl", type=int, default=None,
                        help="token lifetime (expires_in, s) for the calls-per-lifetime runs (default 12; "
                             "10 with --quick)")
    parser.add_argument("--outbound-lifetimes", type=int, default=None,
                        help="token lifetimes of wrk load per calls-per-lifetime run (default 5; 3 with --quick)")
    parser.add_argument("--outbound-workers", type=int, default=4, help="Envoy --concurrency for those runs")
    parser.add_argument("--skip-lifetimes", action="store_true",
                        help="outbound workload: skip the token-endpoint calls per lifetime runs")


def settle_arguments(args: argparse.Namespace) -> None:
    if args.outbound_ttl is None:
        args.outbound_ttl = 10 if args.quick else 12
    if args.outbound_lifetimes is None:
        args.outbound_lifetimes = 3 if args.quick else 5


def lifetime_seconds(args: argparse.Namespace) -> float:
    """About how long the calls-per-lifetime runs take (for bench's estimate)."""
    return 0 if args.skip_lifetimes else len(ARMS) * (args.outbound_ttl * args.outbound_lifetimes + 6)


# Calls closer together than this are one renewal (workers racing for it), not two.
SAME_RENEWAL_S = 1.0


def renewals(call_ms: list[int]) -> int:
    """Groups of calls, each within SAME_RENEWAL_S of the one before: the renewals the calls made."""
    groups, last = 0, None
    for when in sorted(call_ms):
        if last is None or when - last > SAME_RENEWAL_S * 1000:
            groups += 1
        last = when
    return groups


def lifetimes(binary: Path, workdir: Path, args: argparse.Namespace,
              start_envoy: Callable[..., Envoy], wrk: Callable[..., dict[str, Any]],
              module: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per arm: Envoy with `--outbound-workers` workers (not pinned: they run in parallel) and a
    server issuing tokens for `--outbound-ttl` s; a warm-up fetches the first token, then wrk
    (pinned, keep-alive) loads it for `--outbound-lifetimes` lifetimes while the server counts
    and timestamps every token-endpoint call. Calls ÷ lifetimes is the target's figure; calls ÷
    renewals (calls less than SAME_RENEWAL_S apart counting as one renewal) shows whether the
    workers made a renewal once (1.0) or each their own."""
    if args.skip_lifetimes:
        return []
    ttl, count = args.outbound_ttl, args.outbound_lifetimes
    window = ttl * count
    results = []
    server = start_server(workdir, ttl)
    try:
        lua = ["repeat", str(user_token(server, workdir / f"outbound-{ttl}s.repeat"))]
        for arm in (key for key, _, _ in ARMS):
            envoy = start_envoy(binary, workdir / f"lifetime-{arm}", filters(arm, module, server),
                                args.outbound_workers, False, resources=resources(arm, server))
            try:
                assert envoy.port is not None
                wrk(envoy.port, 1, args.connections * 2, lua, args.pin)
                before = counters(envoy, arm)
                server.reset()
                result = wrk(envoy.port, window, args.connections * 2, lua, args.pin)
                stats = server.get("/test/stats")
                problems = check(envoy, arm, result["requests"], before)
                if result["non_2xx"]:
                    problems.append(f"{result['non_2xx']}/{result['requests']} answered non-2xx")
            finally:
                envoy.stop()
            calls = stats["token_request_ms"]
            made = renewals(calls)
            log(f"outbound {arm}: {len(calls)} token-endpoint calls, {made} renewals in {window} s "
                f"({count} lifetimes of {ttl} s, {args.outbound_workers} workers, {result['requests']:,} requests)"
                + (f"  PROBLEM: {'; '.join(problems)}" if problems else ""))
            results.append({"arm": arm, "workers": args.outbound_workers, "ttl_s": ttl, "window_s": window,
                            "requests": result["requests"], "calls": len(calls), "renewals": made,
                            "calls_per_lifetime": len(calls) / count,
                            "calls_per_renewal": len(calls) / made if made else math.nan,
                            "problems": problems})
    finally:
        server.stop()
    return results


def lifetime_targets(found: list[dict[str, Any]]) -> list[tuple[str, float, str, bool | None]]:
    """(name, value, goal, met) for bench.Target: mesh-oauth's arms against the goal, the native
    injector for comparison (report only)."""
    rows = []
    labels = {key: label for key, label, _ in ARMS}
    for r in found:
        what = f"{labels[r['arm']]} ({r['arm']}), {r['workers']} workers, expires_in {r['ttl_s']} s"
        for figure, name in (("calls_per_lifetime", "calls per lifetime (expires_in)"),
                             ("calls_per_renewal", "calls per renewal (> 1: workers raced)")):
            value = math.nan if r["problems"] else r[figure]
            goal, met = ("report", None) if r["arm"] == "N" else (f"≤ {CALLS_GOAL}", value <= CALLS_GOAL)
            rows.append((f"outbound: token-endpoint {name}, {what}", value, goal, None if value != value else met))
    return rows


def report_lines(found: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## Outbound credentials (issue 29)", "",
             "Workload `outbound`: every request carries the same user token (`Authorization: Bearer`, minted "
             "by the authorization server with npm `jose`); arm D, the empty Wasm filter, is the floor of any "
             "Wasm filter; arm N is Envoy's `credential_injector` with its "
             "`oauth2` client-credentials credential (secret from a static SDS secret, `overwrite: true`), "
             "O mesh-oauth `clientCredentials`, X mesh-oauth `tokenExchange` of that user token (the same "
             "subject on every request, so one exchange serves the run); both O and N ask for the same "
             f"resource and scope (`{RESOURCE}`, `{' '.join(SCOPES)}`) as client `{CLIENT_ID}` "
             "(client_secret_basic). The authorization server is npm `oidc-provider` "
             "(`tests/integration/outbound/as.mjs`, tokens of 600 s: none expires in a run); the warm-up "
             "fetches the token, so the timed window measures cached tokens. A run counts only if the "
             "injector's `injected` or mesh-oauth's `attached` counter covers every request."]
    if not found:
        return lines
    lines += ["", "Token-endpoint calls per token lifetime: Envoy with several workers (not pinned), wrk "
              "pinned, a server issuing short-lived tokens, load over several lifetimes after a warm-up; the "
              "server counts and timestamps every call. Calls per renewal: calls less than "
              f"{SAME_RENEWAL_S:g} s apart count as one renewal (1.0: the workers never raced for a token). "
              "mesh-oauth renews from 80–90 % of a token's life less a tenth (so about 1.3 calls per "
              "`expires_in` by design, whatever the workers); the injector renews at half of `expires_in` "
              "(about 2).", "",
              "| arm | workers | expires_in s | window s | requests | calls | renewals | calls per lifetime "
              "| calls per renewal | problems |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    labels = {key: label for key, label, _ in ARMS}
    for r in found:
        lines.append(f"| {r['arm']} {labels[r['arm']]} | {r['workers']} | {r['ttl_s']} | {r['window_s']} "
                     f"| {r['requests']:,} | {r['calls']} | {r['renewals']} | {r['calls_per_lifetime']:.2f} "
                     f"| {r['calls_per_renewal']:.2f} | {'; '.join(r['problems']) or '–'} |")
    return lines


def summary(found: list[dict[str, Any]]) -> None:
    for r in found:
        print(f"  outbound {r['arm']}: {r['calls']} token-endpoint calls in {r['window_s']} s "
              f"({r['window_s'] // r['ttl_s']} lifetimes of {r['ttl_s']} s, {r['workers']} workers): "
              f"{r['calls_per_lifetime']:.2f} per lifetime, {r['calls_per_renewal']:.2f} per renewal"
              + (f"  PROBLEM: {'; '.join(r['problems'])}" if r["problems"] else ""))

