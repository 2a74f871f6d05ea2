"""The browser-session workload of `make bench` (issue 28): what a request of a logged-in browser
costs, with the cookies a real login against a real OpenID Provider set.

Arms (each run a fresh Envoy like every other arm of bench.py):
  E mesh-oauth        its `login` configuration; requests carry its sealed session cookie
  G oauth2            Envoy's native `envoy.filters.http.oauth2`; requests carry its cookie set
                      (the filter checks the HMAC and the expiry and forwards the bearer token)
  H oauth2+jwt_authn  the same, followed by `jwt_authn` verifying the forwarded token: what a
                      user must run natively to get a login and a verified token
  I oauth2+jwt_authn+cache  H with jwt_authn's token cache (reported, no target)
  J mesh-oauth bearer E's configuration, the session's access token sent as `Authorization:
                      Bearer` without cookies (an API call: the session is never looked at), so
                      E − J is what the session itself costs (reported, no target)

The OP is npm `oidc-provider` (`tests/integration/login/op.mjs`, as `test_login.py` and
`make demo-login` run it): RS256 JWT access tokens for `web-api`, ID tokens, refresh tokens.
Before the rounds, one login per configuration (mesh-oauth's, and the native filter's for G and
H) through the OP's own login and consent forms, by a scripted HTTP client; the cookies the
callback sets are what wrk sends. Every request carries `Host: localhost:8480` (the origin the
logins serve; the cookies are bound to it), whatever port the run's Envoy listens on.

After the rounds: callback and refresh latency over real flows against a second OP whose
access tokens live a few seconds (so each session needs a refresh at once): per configuration,
`--login-flows` logins (the callback request timed: code redemption at the OP, and for
mesh-oauth the ID token's checks), then one request per session that refreshes it (timed), then
one that does not (timed, the floor)."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
import shutil
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import node_tools  # tests/integration (bench.py puts it on sys.path)
from harness import (EchoServer, Envoy, EnvoyStartError, Response, http_request, istio_cluster_name, static_cluster,
                     wasm_filter)

REPO = Path(__file__).resolve().parents[1]
OP_SCRIPT = REPO / "tests" / "integration" / "login" / "op.mjs"
# The origin the logins serve: registered at the OP (redirect URI), in mesh-oauth's `hosts` and
# the native filter's `redirect_uri`; every request says it in `Host`. Nothing listens there.
APP_HOST = "localhost:8480"
APP = f"http://{APP_HOST}"
CALLBACK_PATH = "/oauth2/callback"
AUDIENCE = "web-api"  # op.mjs's JWT access tokens are for this audience
CLIENT_SECRET_ENV = "BENCH_LOGIN_CLIENT_SECRET"
COOKIE_KEYS_ENV = "BENCH_LOGIN_COOKIE_KEYS"
OP_CLUSTER = "op"
# The throughput OP's access tokens outlive any bench; mesh-oauth's `sessionRecheckSeconds` too,
# so that no timed request refreshes (each refresh would be a call to the OP).
THROUGHPUT_TOKEN_TTL_S = 7200
SESSION_RECHECK_S = 86_400
# The latency OP's access tokens: within mesh-oauth's refresh margin (10 s) from the start, so
# its first request refreshes; the native filter refreshes once they expired (waited for).
LATENCY_TOKEN_TTL_S = 4
UNLOADED_REQUESTS = 50
NAVIGATE = [("sec-fetch-mode", "navigate"), ("accept", "text/html")]
USER = "alice"

SESSION_ARMS = "GHIEJ"
MODE = "session"


# --------------------------------------------------------------------------- the OP


@dataclass
class Provider:
    """One `op.mjs` process and what its discovery document and key set say."""

    proc: subprocess.Popen[bytes]
    issuer: str
    port: int
    client_id: str
    client_secret: str
    discovery: dict[str, Any]
    jwks: str

    @classmethod
    def start(cls, token_ttl_s: int, log: Path) -> "Provider":
        node = shutil.which("node")
        if node is None or not (REPO / "node_modules" / "oidc-provider" / "package.json").is_file():
            raise RuntimeError("the session workload needs node and npm oidc-provider: make node-deps")
        log.parent.mkdir(parents=True, exist_ok=True)
        proc, ready = node_tools.start_server(
            node, OP_SCRIPT,
            ["--port", "0", "--app-origin", APP, "--access-token-ttl", str(token_ttl_s), "--audience", AUDIENCE],
            log, 30)
        try:
            port = ready["port"]
            discovery = http_request(port, "/.well-known/openid-configuration").json()
            jwks_path = urllib.parse.urlsplit(discovery["jwks_uri"]).path
            jwks = http_request(port, jwks_path).body.decode()
        except BaseException:
            node_tools.stop(proc)
            raise
        return cls(proc, ready["issuer"], port, ready["client_id"], ready["client_secret"], discovery, jwks)

    def stop(self) -> None:
        node_tools.stop(self.proc)


# --------------------------------------------------------------------------- Envoy configurations


def mesh_filter(module: Path, op: Provider, cookie_keys: str) -> dict[str, Any]:
    plugin = {
        # The token reaches the upstream, as the native arms forward it.
        "providers": [{"name": "op", "issuer": op.issuer, "audiences": [AUDIENCE], "forwardOriginalToken": True}],
        "login": {"provider": "op", "clientId": op.client_id, "clientSecretEnv": CLIENT_SECRET_ENV,
                  "cookieKeysEnv": COOKIE_KEYS_ENV, "hosts": [APP], "sessionRecheckSeconds": SESSION_RECHECK_S},
    }
    return wasm_filter(module, json.dumps(plugin),
                       env={CLIENT_SECRET_ENV: op.client_secret, COOKIE_KEYS_ENV: cookie_keys})


def oauth2_filter(op: Provider) -> dict[str, Any]:
    """Envoy's native filter as its documentation sets it up for an OIDC provider: code flow
    (it adds PKCE itself), client_secret_basic, the bearer token forwarded, refresh tokens used."""
    token_uri = op.discovery["token_endpoint"]
    return {
        "name": "envoy.filters.http.oauth2",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.oauth2.v3.OAuth2",
            "config": {
                "token_endpoint": {"cluster": OP_CLUSTER, "uri": token_uri, "timeout": "5s"},
                "authorization_endpoint": op.discovery["authorization_endpoint"],
                "credentials": {"client_id": op.client_id, "token_secret": {"name": "token"},
                                "hmac_secret": {"name": "hmac"}},
                "redirect_uri": f"{APP}{CALLBACK_PATH}",
                "redirect_path_matcher": {"path": {"exact": CALLBACK_PATH}},
                "signout_path": {"path": {"exact": "/oauth2/logout"}},
                "forward_bearer_token": True,
                "auth_scopes": ["openid"],
                "auth_type": "BASIC_AUTH",
                "use_refresh_token": True,
            },
        },
    }


def jwt_authn_filter(op: Provider, cache: bool) -> dict[str, Any]:
    """bench.py's arms B and C provider for this OP (inline keys), the token left in place for
    the upstream like the other arms."""
    provider: dict[str, Any] = {"issuer": op.issuer, "audiences": [AUDIENCE],
                                "local_jwks": {"inline_string": op.jwks}, "forward": True,
                                "payload_in_metadata": op.issuer}
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 1024}
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"op": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "op"}}],
        },
    }


def session_bootstrap(base: dict[str, Any], op: Provider, hmac_secret: str) -> dict[str, Any]:
    """bench.py's bootstrap (direct_response, kernel-chosen ports) plus the OP's clusters
    (the native filter's by name, mesh-oauth's by Istio's naming) and the native filter's secrets."""
    resources = base["static_resources"]
    resources["clusters"] = [static_cluster(OP_CLUSTER, op.port), static_cluster(istio_cluster_name(op.port), op.port)]
    resources["secrets"] = [{"name": "token", "generic_secret": {"secret": {"inline_string": op.client_secret}}},
                            {"name": "hmac", "generic_secret": {"secret": {"inline_string": hmac_secret}}}]
    return base


# --------------------------------------------------------------------------- a scripted browser


def _set_cookies(jar: dict[str, str], headers: list[str]) -> None:
    """Applies `Set-Cookie` values to a name → value jar (paths and flags aside: one host, one
    flow); a cookie set to expire is removed."""
    for header in headers:
        pair, _, attributes = header.partition(";")
        name, _, value = pair.strip().partition("=")
        attrs = attributes.lower()
        expired = re.search(r"max-age=(-?\d+)", attrs)
        if (expired and int(expired.group(1)) <= 0) or "expires=thu, 01 jan 1970" in attrs:
            jar.pop(name, None)
        else:
            jar[name] = value


def cookie_header(jar: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in jar.items())


@dataclass
class Login:
    """A session's cookies and what its login took."""

    cookies: dict[str, str]
    callback_ms: float
    landed: str  # where the callback sent the browser


class LoginError(RuntimeError):
    pass


def log_in(envoy_port: int, op: Provider, path: str = "/orders?page=2") -> Login:
    """One login the way a browser makes it: a navigation to the app, the OP's login and consent
    forms (any login name signs in), the callback; only the callback is timed."""
    app: dict[str, str] = {}
    at_op: dict[str, str] = {}

    def to_app(target: str, headers: list[tuple[str, str]] | None = None) -> Response:
        resp = http_request(envoy_port, target, headers=[("host", APP_HOST), *NAVIGATE, *(headers or []),
                                                         *([("cookie", cookie_header(app))] if app else [])])
        _set_cookies(app, resp.headers_named("set-cookie"))
        return resp

    def to_op(url: str, form: dict[str, str] | None = None) -> Response:
        parts = urllib.parse.urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = [("host", parts.netloc)] + ([("cookie", cookie_header(at_op))] if at_op else [])
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form).encode()
            headers.append(("content-type", "application/x-www-form-urlencoded"))
        resp = http_request(op.port, target, method="GET" if form is None else "POST", headers=headers, body=body)
        _set_cookies(at_op, resp.headers_named("set-cookie"))
        return resp

    start = to_app(path)
    location = start.header("location") or ""
    if start.status != 302 or not location.startswith(op.issuer):
        raise LoginError(f"the app did not send the browser to the OP: {start}")
    for _ in range(12):
        resp = to_op(location) if location.startswith(op.issuer) else None
        if resp is None:
            break
        if resp.status in (302, 303):
            location = urllib.parse.urljoin(location, resp.header("location") or "")
            continue
        page = resp.body.decode("utf-8", "replace")
        action = re.search(r'<form[^>]*action="([^"]+)"', page)
        prompt = re.search(r'name="prompt" value="([^"]+)"', page)
        if resp.status != 200 or not action or not prompt:
            raise LoginError(f"unexpected page at the OP: {resp.status} {page[:300]!r}")
        form = {"prompt": prompt.group(1)}
        if form["prompt"] == "login":
            form |= {"login": USER, "password": "any"}
        posted = to_op(urllib.parse.urljoin(location, html.unescape(action.group(1))), form)
        if posted.status not in (302, 303):
            raise LoginError(f"the OP refused the {form['prompt']} form: {posted}")
        location = urllib.parse.urljoin(location, posted.header("location") or "")
    if not location.startswith(f"{APP}{CALLBACK_PATH}?"):
        raise LoginError(f"the OP did not send the browser back to the callback: {location[:200]}")
    parts = urllib.parse.urlsplit(location)
    began = time.perf_counter()
    back = to_app(f"{parts.path}?{parts.query}")
    callback_ms = (time.perf_counter() - began) * 1000
    landed = back.header("location") or ""
    if back.status != 302 or not landed.endswith(path):
        raise LoginError(f"the callback did not send the browser to {path}: {back.status} {landed[:100]} "
                         f"{back.body[:300]!r}")
    return Login(dict(app), callback_ms, landed)


def log_in_when_ready(envoy_port: int, op: Provider, attempts: int = 5) -> Login:
    """`log_in`, again after a second when it fails: the login redirect needs only the OP's
    discovery document, the callback its keys too, which a loaded machine may not have fetched yet
    (the callback then answers 503)."""
    for attempt in range(1, attempts + 1):
        try:
            return log_in(envoy_port, op)
        except LoginError:
            if attempt == attempts:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def session_request(envoy_port: int, cookies: dict[str, str]) -> tuple[Response, float]:
    """An API call of a logged-in browser (no navigation headers), timed in ms."""
    began = time.perf_counter()
    resp = http_request(envoy_port, "/", headers=[("host", APP_HOST), ("cookie", cookie_header(cookies))])
    return resp, (time.perf_counter() - began) * 1000


def wait_for_session(envoy: Envoy, cookies: dict[str, str], timeout_s: float = 20) -> None:
    """mesh-oauth fetches discovery and keys at its first tick; until then a session waits or
    is refused. Returns once the session passes."""
    assert envoy.port is not None
    deadline = time.monotonic() + timeout_s
    while True:
        resp, _ = session_request(envoy.port, cookies)
        if resp.status == 200:
            return
        if time.monotonic() > deadline:
            raise LoginError(f"a session request did not pass: {resp}")
        time.sleep(0.1)


def wait_for_login(envoy: Envoy, op: Provider, timeout_s: float = 20) -> None:
    assert envoy.port is not None
    deadline = time.monotonic() + timeout_s
    while True:
        resp = http_request(envoy.port, "/", headers=[("host", APP_HOST), *NAVIGATE])
        if resp.status == 302 and (resp.header("location") or "").startswith(op.issuer):
            return
        if time.monotonic() > deadline:
            raise LoginError(f"no login redirect: {resp}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- measurements


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


@dataclass
class Latency:
    config: str  # "mesh-oauth" or "oauth2"
    callback_ms: list[float] = field(default_factory=list)
    refresh_ms: list[float] = field(default_factory=list)
    plain_ms: list[float] = field(default_factory=list)  # a session request without a refresh
    refreshes_seen: int = 0  # refresh requests answered 200 with a new session cookie
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"config": self.config, "refreshes_seen": self.refreshes_seen,
                               "failures": self.failures}
        for name in ("callback_ms", "refresh_ms", "plain_ms"):
            values = getattr(self, name)
            out[name] = {"n": len(values), "p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}
        return out


@dataclass
class CookieSet:
    config: str
    cookies: dict[str, str]
    access_token: str  # the bearer token the upstream got (the echo, at the login check)
    upstream_cookie_bytes: int  # the `Cookie` header the upstream got

    @property
    def header_bytes(self) -> int:
        return len(cookie_header(self.cookies))


# --------------------------------------------------------------------------- the V8 hot path

# The stand-in OP of bench/hotpath.mjs's session case (the harness answers discovery and keys).
SESSION_COOKIE = "__Host-mesh-session"


def seal_session(session: dict[str, Any], key: bytes, host: str, expires_at: int) -> str:
    """A session cookie value as mesh-oauth seals it (src/login/seal.rs: AES-256-GCM by
    `cryptography`, the key id, host and cookie name bound as associated data, the expiry
    inside), so that the V8 stand-in needs no login."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key_id = b64(hashlib.sha256(b"mesh-oauth cookie key id\0" + key).digest()[:6])
    aad = b"mesh-oauth login v1"
    for part in (key_id, host.lower(), SESSION_COOKIE):
        aad += len(part.encode()).to_bytes(4, "big") + part.encode()
    nonce = secrets.token_bytes(12)
    plaintext = expires_at.to_bytes(8, "big") + json.dumps(session, separators=(",", ":")).encode()
    return f"{key_id}.{b64(nonce + AESGCM(key).encrypt(nonce, plaintext, aad))}"


def hotpath_fixture(token: str, issuer: str, audience: str, jwks: str, session: bool) -> dict[str, Any]:
    """bench/hotpath.mjs's fixture for arm E's configuration against a stand-in OP (its
    discovery and keys answered from memory): with `session` a request of a logged-in browser
    (the sealed session cookie holding `token`, as arm E sends), else `token` as a bearer (arm
    J), so that the difference is what the session costs the module."""
    key = secrets.token_bytes(32)
    now = int(time.time())
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    sealed = seal_session({"t": token, "r": secrets.token_urlsafe(32), "s": claims.get("sub", USER),
                           "i": secrets.token_urlsafe(16), "e": int(claims["exp"]), "a": now, "f": now},
                          key, APP_HOST, now + 86_400)
    discovery = {"issuer": issuer, "jwks_uri": f"{issuer}/jwks", "authorization_endpoint": f"{issuer}/auth",
                 "token_endpoint": f"{issuer}/token"}
    plugin = {
        "providers": [{"name": "op", "issuer": issuer, "audiences": [audience], "forwardOriginalToken": True}],
        "login": {"provider": "op", "clientId": "bench", "clientSecretEnv": CLIENT_SECRET_ENV,
                  "cookieKeysEnv": COOKIE_KEYS_ENV, "hosts": [APP], "sessionRecheckSeconds": SESSION_RECHECK_S},
    }
    fixture: dict[str, Any] = {
        "config": json.dumps(plugin), "token": token, "authority": APP_HOST,
        "env": {CLIENT_SECRET_ENV: "bench-secret", COOKIE_KEYS_ENV: base64.b64encode(key).decode()},
        "answers": {"/.well-known/openid-configuration": {"status": 200, "body": json.dumps(discovery)},
                    "/jwks": {"status": 200, "body": jwks}},
    }
    if session:
        fixture["cookie"] = f"{SESSION_COOKIE}.0={sealed}"
    return fixture


# --------------------------------------------------------------------------- the extension


def configuration(arm: str) -> str:
    """Which login's cookies an arm's requests carry: mesh-oauth's (E, and F its baseline; J
    runs that configuration too) or the native filter's (G, H, I share one filter
    configuration, so one cookie set)."""
    return "mesh-oauth" if arm in "EFJ" else "oauth2"


def echo_route(config: dict[str, Any], port: int) -> dict[str, Any]:
    """The bootstrap with its route sent to an echo upstream instead of direct_response, so the
    login check sees what reaches the upstream."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["virtual_hosts"][0]["routes"] = [{"match": {"prefix": "/"},
                                                          "route": {"cluster": "echo", "timeout": "10s"}}]
    config["static_resources"]["clusters"].append(static_cluster("echo", port))
    return config


class SessionWorkload:
    """Registers the session workload and arms G, H, I in bench.py (`bench` is that module)
    and serves what its run loop asks of them."""

    def __init__(self, bench: ModuleType) -> None:
        self.bench = bench
        self.arms = [bench.Arm("G", "oauth2", False), bench.Arm("H", "oauth2+jwt_authn", True),
                     bench.Arm("I", "oauth2+jwt_authn+cache", True), bench.Arm("J", "mesh-oauth bearer", True)]
        workload = bench.Workload(MODE, "browser session cookie (a real login's cookies)", "RS256", MODE,
                                  arms=SESSION_ARMS)
        bench.ARM.update({arm.key: arm for arm in self.arms})
        bench.WORKLOADS.append(workload)
        bench.WORKLOAD[workload.key] = workload
        self.op: Provider | None = None
        self.cookie_keys = base64.b64encode(secrets.token_bytes(32)).decode()
        self.hmac_secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.header_files: dict[str, Path] = {}
        self.cookie_sets: dict[str, CookieSet] = {}
        self.unloaded: dict[str, Latency] = {}
        self.latency: list[Latency] = []
        self.baseline_note = ""

    # ---- set-up and tear-down

    @staticmethod
    def seconds(flows: int) -> float:
        """About how long the logins and the latency measurement take (for the bench's estimate)."""
        return 20 + (0 if flows <= 0 else 15 + 2 * flows * 0.3)

    @staticmethod
    def selected(workloads: list[Any]) -> bool:
        return any(w.mode == MODE for w in workloads)

    def prepare(self, binary: Path, workdir: Path, pin: bool, workloads: list[Any]) -> list[Any]:
        """Shows arms G, H, I, J in the summary, starts the OP and logs in once per configuration;
        checks that each session passes and what reaches the upstream (the echo). Returns
        `workloads`, without arm F in this one when the baseline module cannot run its login."""
        self.bench.ARMS.extend(arm for arm in self.arms if arm not in self.bench.ARMS)
        self.bench.log("session workload: starting the OpenID Provider (npm oidc-provider) and logging in")
        self.op = Provider.start(THROUGHPUT_TOKEN_TTL_S, workdir / "op.log")
        echo = EchoServer()
        try:
            for config, arm in (("mesh-oauth", "E"), ("oauth2", "H")):
                cookies = self.login_once(binary, workdir / f"login-{config}", arm, pin, echo.port)
                self.cookie_sets[config] = cookies
                self.header_files[config] = workdir / f"{config}.headers"
                self.header_files[config].write_text(f"Host: {APP_HOST}\nCookie: {cookie_header(cookies.cookies)}\n")
                self.bench.log(f"  {config}: logged in; cookies {', '.join(cookies.cookies)} "
                               f"({cookies.header_bytes:,} bytes in `Cookie`), access token "
                               f"{len(cookies.access_token):,} bytes at the upstream")
        finally:
            echo.stop()
        # Arm J: the mesh-oauth session's own access token, as an API client sends it.
        self.header_files["bearer"] = workdir / "bearer.headers"
        self.header_files["bearer"].write_text(
            f"Host: {APP_HOST}\nAuthorization: Bearer {self.cookie_sets['mesh-oauth'].access_token}\n")
        for config, arm in (("mesh-oauth", "E"), ("oauth2", "G")):
            self.unloaded[config] = self.unloaded_requests(binary, workdir / f"unloaded-{config}", arm, pin)
        return [self.without_failing_baseline(w, binary, workdir, pin) if w.mode == MODE else w for w in workloads]

    def without_failing_baseline(self, workload: Any, binary: Path, workdir: Path, pin: bool) -> Any:
        """A baseline module from before `login` existed refuses this configuration: arm F is
        then left out of this workload (said in the log and the report), not the whole bench."""
        if "F" not in workload.arms:
            return workload
        try:
            self.unloaded_requests(binary, workdir / "baseline-check", "F", pin)
            return workload
        except (EnvoyStartError, LoginError) as error:
            self.baseline_note = (f"arm F (baseline) left out of the session workload: the baseline module "
                                  f"does not run its login ({str(error).splitlines()[0][:120]})")
            self.bench.log(f"  {self.baseline_note}")
            without = replace(workload, arms=workload.arms.replace("F", ""))
            self.bench.WORKLOADS[:] = [without if w.key == MODE else w for w in self.bench.WORKLOADS]
            self.bench.WORKLOAD[MODE] = without
            return without

    def login_once(self, binary: Path, workdir: Path, arm: str, pin: bool, echo_port: int) -> CookieSet:
        assert self.op is not None
        config = configuration(arm)
        envoy = self.bench.start_envoy(binary, workdir, [], 1, pin, config=echo_route(self.config(arm), echo_port))
        try:
            assert envoy.port is not None
            if arm == "E":
                wait_for_login(envoy, self.op)
            login = log_in_when_ready(envoy.port, self.op)
            wait_for_session(envoy, login.cookies)
            upstream = session_request(envoy.port, login.cookies)[0].upstream["headers"]
            token = upstream.get("authorization", "").removeprefix("Bearer ")
            if token.count(".") != 2:
                raise LoginError(f"{config}: no bearer token reached the upstream")
            return CookieSet(config, login.cookies, token, len(upstream.get("cookie", "")))
        finally:
            envoy.stop()

    def unloaded_requests(self, binary: Path, workdir: Path, arm: str, pin: bool) -> Latency:
        """Session requests one at a time on a run's Envoy (direct_response): the floor the
        refresh latency compares with."""
        envoy = self.start(binary, workdir, arm, pin)
        try:
            assert envoy.port is not None
            cookies = self.cookie_sets[configuration(arm)].cookies
            wait_for_session(envoy, cookies)
            measured = Latency(configuration(arm))
            measured.plain_ms = [session_request(envoy.port, cookies)[1] for _ in range(UNLOADED_REQUESTS)]
            return measured
        finally:
            envoy.stop()

    def measure_latency(self, binary: Path, workdir: Path, pin: bool, flows: int) -> None:
        """Callback and refresh latency over `flows` real logins per configuration, against an OP
        whose access tokens live LATENCY_TOKEN_TTL_S: mesh-oauth refreshes a token that close to
        its expiry at once; the native filter once it expired (waited for)."""
        self.bench.log(f"session workload: callback and refresh latency, {flows} logins per configuration")
        op = Provider.start(LATENCY_TOKEN_TTL_S, workdir / "op-latency.log")
        try:
            for arm in ("E", "G"):
                self.latency.append(self.latency_of(binary, workdir / f"latency-{arm}", arm, pin, flows, op))
        finally:
            op.stop()
        for measured in self.latency:
            s = measured.summary()
            self.bench.log(f"  {measured.config}: callback p50 {s['callback_ms']['p50']:.1f} ms "
                           f"p99 {s['callback_ms']['p99']:.1f} ms; refresh p50 {s['refresh_ms']['p50']:.1f} ms "
                           f"p99 {s['refresh_ms']['p99']:.1f} ms ({measured.refreshes_seen}/{flows} refreshed)"
                           + (f"; {len(measured.failures)} failures: {measured.failures[0]}" if measured.failures else ""))

    def latency_of(self, binary: Path, workdir: Path, arm: str, pin: bool, flows: int, op: Provider) -> Latency:
        config = configuration(arm)
        measured = Latency(config)
        refreshed_cookie = "__Host-mesh-session" if arm == "E" else "BearerToken"
        envoy = self.bench.start_envoy(binary, workdir, [], 1, pin, config=self.config(arm, op))
        try:
            assert envoy.port is not None
            if arm == "E":
                wait_for_login(envoy, op)
            logins = []
            for _ in range(flows):
                try:
                    login = log_in(envoy.port, op)
                except LoginError as error:
                    measured.failures.append(f"login: {error}"[:300])
                    continue
                logins.append(login)
                measured.callback_ms.append(login.callback_ms)
            if arm != "E":
                time.sleep(LATENCY_TOKEN_TTL_S + 1.5)  # the native filter refreshes expired tokens only
            for login in logins:
                resp, ms = session_request(envoy.port, login.cookies)
                renewed = [c for c in resp.headers_named("set-cookie") if c.startswith(refreshed_cookie)]
                if resp.status == 200 and renewed:
                    measured.refresh_ms.append(ms)
                    measured.refreshes_seen += 1
                else:
                    measured.failures.append(f"refresh: {resp.status}, {len(renewed)} new session cookies, "
                                             f"location {(resp.header('location') or '')[:80]}")
        finally:
            envoy.stop()
        return measured

    def close(self) -> None:
        if self.op is not None:
            self.op.stop()
            self.op = None

    # ---- what a run needs

    def filters(self, arm: str, op: Provider | None = None) -> list[dict[str, Any]]:
        op = op or self.op
        assert op is not None
        if arm in "EFJ":  # F: E's configuration with the --baseline-wasm module
            module = self.bench.BASELINE_MODULE if arm == "F" else self.bench.MODULE
            return [mesh_filter(module, op, self.cookie_keys)]
        native = [oauth2_filter(op)]
        return native + [jwt_authn_filter(op, cache=arm == "I")] if arm in "HI" else native

    def config(self, arm: str, op: Provider | None = None) -> dict[str, Any]:
        op = op or self.op
        assert op is not None
        return session_bootstrap(self.bench.bootstrap(self.filters(arm, op)), op, self.hmac_secret)

    def start(self, binary: Path, workdir: Path, arm: str, pin: bool) -> Envoy:
        return self.bench.start_envoy(binary, workdir, [], 1, pin, config=self.config(arm))

    def ready(self, envoy: Envoy, arm: str) -> None:
        wait_for_session(envoy, self.cookie_sets[configuration(arm)].cookies)

    def lua_args(self, arm: str) -> list[str]:
        return ["headers", str(self.header_files["bearer" if arm == "J" else configuration(arm)])]

    # ---- results

    def targets(self, runs: list[Any]) -> list[Any]:
        b = self.bench

        def versus(name: str, den: str, bound: float | None) -> Any:
            value = b.ratio(runs, MODE, "E", den)
            met = None if bound is None or value != value else value >= bound
            return b.Target(name, value, f"≥ {bound}×" if bound else "report", met,
                            b.ratio(runs, MODE, "E", den, by_cpu=True), b.round_ratios(runs, MODE, "E", den))

        result = [versus("session: mesh-oauth vs native oauth2+jwt_authn (E ÷ H)", "H", 1.5),
                  versus("session: mesh-oauth vs native oauth2 alone (E ÷ G)", "G", 0.8),
                  versus("session: mesh-oauth vs native oauth2+jwt_authn with cache (E ÷ I)", "I", None),
                  versus("session: mesh-oauth session vs the same token as a bearer (E ÷ J)", "J", None)]
        added = b.added_cpu(runs, MODE, "E", "J")
        result.append(b.Target("session: what the session adds, mesh-oauth CPU-µs/req (E − J)", b.median(added),
                               "report", None, rounds=added))
        mesh, native = self.cookie_sets.get("mesh-oauth"), self.cookie_sets.get("oauth2")
        if mesh and native:
            share = mesh.header_bytes / native.header_bytes
            result.append(b.Target(f"session: cookie bytes per request, mesh-oauth ÷ native oauth2 "
                                   f"({mesh.header_bytes:,} vs {native.header_bytes:,} bytes)",
                                   share, "≤ 1.0×", share <= 1.0))
        for measured in self.latency:
            s = measured.summary()
            for what in ("callback", "refresh"):
                values = s[f"{what}_ms"]
                result.append(b.Target(f"{what} latency, {measured.config}, ms (p50; p99 {values['p99']:.1f}; "
                                       f"{values['n']} flows)", values["p50"], "report", None))
        return result

    def summary(self) -> dict[str, Any]:
        return {"cookies": {name: {"cookie_header_bytes": c.header_bytes, "access_token_bytes": len(c.access_token),
                                   "upstream_cookie_bytes": c.upstream_cookie_bytes,
                                   "cookies": {n: len(v) for n, v in c.cookies.items()}}
                            for name, c in self.cookie_sets.items()},
                "latency": [m.summary() for m in self.latency],
                "unloaded": {name: m.summary()["plain_ms"] for name, m in self.unloaded.items()}}

    def report(self) -> list[str]:
        if not self.cookie_sets:
            return []
        lines = ["", "## Browser session (issue 28)", "",
                 f"Workload `{MODE}`: every request carries the cookies a real login set (npm "
                 "`oidc-provider`, its login and consent forms by a scripted client; RS256 JWT access "
                 "token, ID token and refresh token from the same OP) and `Host: "
                 f"{APP_HOST}`. Arms: E mesh-oauth (`login`, session cookie; `sessionRecheckSeconds` "
                 f"{SESSION_RECHECK_S:,} and tokens of {THROUGHPUT_TOKEN_TTL_S} s, so no timed request refreshes), "
                 "G Envoy's `oauth2` (HMAC and expiry check, `forward_bearer_token`), H `oauth2` + "
                 "`jwt_authn` verifying the forwarded token (no cache), I the same with jwt_authn's cache, "
                 "J mesh-oauth's configuration with the session's access token sent as `Authorization: "
                 "Bearer` and no cookie (E − J: what the session itself costs). Every arm hands the "
                 "upstream the access token." + (f" Note: {self.baseline_note}." if self.baseline_note else ""), "",
                 "| login | `Cookie` bytes per request | cookies (name: value bytes) | access token bytes "
                 "| `Cookie` bytes reaching the upstream |", "| --- | ---: | --- | ---: | ---: |"]
        for name, c in self.cookie_sets.items():
            each = ", ".join(f"{n}: {len(v):,}" for n, v in c.cookies.items())
            lines.append(f"| {name} | {c.header_bytes:,} | {each} | {len(c.access_token):,} "
                         f"| {c.upstream_cookie_bytes:,} |")
        if self.latency:
            lines += ["", f"Latency of real flows (one request at a time, ms; an OP whose access tokens "
                      f"live {LATENCY_TOKEN_TTL_S} s): the callback (code redemption at the OP, and for "
                      "mesh-oauth the ID token's checks), then one request per session that refreshes it "
                      "(mesh-oauth: the token is within its 10 s refresh margin at once; the native filter: "
                      "after the token expired). Nearest-rank percentiles: with fewer than 100 flows, p99 is the "
                      f"slowest flow. Unloaded: {UNLOADED_REQUESTS} session requests one at a time without a "
                      "refresh, on a run's Envoy with the throughput logins' cookies.", "",
                      "| login | callback p50 | callback p99 | refresh p50 | refresh p99 | unloaded request p50 "
                      "| flows | refreshed | failures |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
            for m in self.latency:
                s = m.summary()
                plain = self.unloaded[m.config].summary()["plain_ms"] if m.config in self.unloaded else {}
                lines.append(f"| {m.config} | {s['callback_ms']['p50']:.2f} | {s['callback_ms']['p99']:.2f} "
                             f"| {s['refresh_ms']['p50']:.2f} | {s['refresh_ms']['p99']:.2f} "
                             f"| {plain.get('p50', float('nan')):.2f} | {s['callback_ms']['n']} "
                             f"| {m.refreshes_seen} | {'; '.join(m.failures[:3]) or '–'} |")
        return lines
