"""Browser login (issue 28) with real parts: Envoy with the module, npm `oidc-provider` as the
OpenID Provider (`login/op.mjs`), Debian's `chromium` driven by npm `playwright-core`
(`login/browser.mjs`), and the echo upstream, which shows what reached it. The attacks run
against a provider this test controls (discovery, keys and a token endpoint whose answers it
writes, ID tokens signed by `tokens.KeySet`): each ends in a 4xx or a fresh login, never a 5xx
and never access."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import socket
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

import node_tools
from harness import (Envoy, EnvoyFactory, IdpServer, Reply, http_request, istio_cluster_name)
from observe import audit_lines, stats
from tokens import KeySet, b64url

REPO = Path(__file__).resolve().parents[2]
LOGIN = Path(__file__).parent / "login"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
COOKIE_KEYS = base64.b64encode(secrets.token_bytes(32)).decode()
CLIENT_SECRET_ENV = "LOGIN_CLIENT_SECRET"
COOKIE_KEYS_ENV = "LOGIN_COOKIE_KEYS"
NAVIGATE = [("sec-fetch-mode", "navigate"), ("accept", "text/html")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node_binary() -> str:
    return node_tools.node_binary("the login tests run a Node.js OpenID Provider", ("oidc-provider", "playwright-core"))


def login_config(issuer: str, origin: str, **login: Any) -> dict[str, Any]:
    return {
        "providers": [{"name": "op", "issuer": issuer, "audiences": ["web-api"],
                       "forwardOriginalToken": True}],
        "rules": [{"match": {"paths": ["/goodbye"]}, "allowAnonymous": True}],
        "audit": {"level": "info", "allowedSampleRate": 1},
        "login": {
            "provider": "op",
            "clientId": "web-app",
            "clientSecretEnv": CLIENT_SECRET_ENV,
            "cookieKeysEnv": COOKIE_KEYS_ENV,
            "hosts": [origin],
            "postLogoutRedirectUri": f"{origin}/goodbye",
            **login,
        },
    }


def wait_for_login(envoy: Envoy, host: str) -> None:
    """Discovery and keys are fetched at the first tick: a navigation is sent to log in then."""
    deadline = time.monotonic() + 15
    while True:
        resp = envoy.request("/", headers=[("host", host), *NAVIGATE])
        if resp.status == 302 and "signing keys loaded" in envoy.log():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no login redirect: {resp}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- the real browser


@dataclass
class OpenIdProvider:
    proc: subprocess.Popen[bytes]
    issuer: str
    port: int
    client_secret: str

    def stop(self) -> None:
        node_tools.stop(self.proc)


ACCESS_TOKEN_TTL_S = 20


@pytest.fixture(scope="module")
def app_port() -> int:
    return free_port()


def start_op(app_port: int, log: Path, *extra: str, access_token_ttl_s: int = ACCESS_TOKEN_TTL_S) -> OpenIdProvider:
    proc, ready = node_tools.start_server(
        node_binary(), LOGIN / "op.mjs",
        ["--port", "0", "--app-origin", f"http://localhost:{app_port}",
         "--access-token-ttl", str(access_token_ttl_s), *extra],
        log, 20)
    return OpenIdProvider(proc, ready["issuer"], ready["port"], ready["client_secret"])


@pytest.fixture(scope="module")
def op(app_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenIdProvider]:
    server = start_op(app_port, tmp_path_factory.mktemp("op") / "op.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser_envoy(module_envoys: EnvoyFactory, op: OpenIdProvider, app_port: int) -> Envoy:
    # Two scopes: the authorization request carries a space (form-encoded as `+`) that the
    # OP must read back as a space, or it misses `openid` and refuses the login.
    config = login_config(op.issuer, f"http://localhost:{app_port}", scopes=["openid", "email"])
    envoy = module_envoys.start(
        config,
        extra_clusters={istio_cluster_name(op.port): op.port},
        filter_args={"env": {CLIENT_SECRET_ENV: op.client_secret, COOKIE_KEYS_ENV: COOKIE_KEYS}},
        port=app_port,
    )
    wait_for_login(envoy, f"localhost:{app_port}")
    return envoy


def test_a_real_browser_logs_in_calls_the_api_outlives_its_token_and_logs_out(
        browser_envoy: Envoy, op: OpenIdProvider, app_port: int) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (make test does)", pytrace=False)
    app = f"http://localhost:{app_port}"
    run = subprocess.run(
        [node_binary(), str(LOGIN / "browser.mjs"), "--app", app, "--op", op.issuer,
         "--refresh-wait", str(ACCESS_TOKEN_TTL_S - 8)],
        capture_output=True, cwd=REPO, timeout=180)
    steps = json.loads(run.stdout.decode().strip().splitlines()[-1])
    assert steps.get("ok"), steps.get("error") or run.stderr.decode()[-2000:]

    # Sent to the OP's login page, then back on the page asked for.
    assert steps["login_page"].startswith(op.issuer)
    assert steps["landed"]["url"] == f"{app}/orders?page=2"
    upstream = steps["landed"]["upstream"]["headers"]
    first_token = upstream["authorization"].removeprefix("Bearer ")
    assert upstream["authorization"].startswith("Bearer ") and first_token.count(".") == 2
    assert "__Host-mesh" not in upstream.get("cookie", "")
    # The session cookie: __Host-, HttpOnly, Secure, SameSite=Lax, under the browser's limit.
    sessions = [c for c in steps["cookies"] if c["name"].startswith("__Host-mesh-session.")]
    assert sessions and all(c["httpOnly"] and c["secure"] and c["sameSite"] == "Lax" for c in sessions)
    assert all(c["size"] < 4000 for c in steps["cookies"])
    assert not any(c["name"].startswith("__Host-mesh-tx.") for c in steps["cookies"])

    # fetch() from the page is an API call with the session's token.
    assert steps["api"]["status"] == 200
    assert steps["api"]["upstream"]["headers"]["authorization"] == f"Bearer {first_token}"
    # Past the access token's life: refreshed while the request waited.
    assert steps["api_after_expiry"]["status"] == 200, steps["api_after_expiry"]
    refreshed = steps["api_after_expiry"]["upstream"]["headers"]["authorization"]
    assert refreshed != f"Bearer {first_token}"

    # Logout: cookies gone, the OP's end-session page, then back; asked to log in again.
    logout = steps["logout"]
    assert logout["end_session"].startswith(f"{op.issuer}/session/end")
    assert not any(c["name"].startswith("__Host-mesh-") for c in logout["cookies_after"])
    # The OP sends the browser back with the `state` the logout request carried.
    assert logout["landed"].startswith(f"{app}/goodbye?state=")
    assert logout["api"]["status"] == 401
    assert logout["asked_again"].startswith(op.issuer)

    # A logout at the OP: its back-channel logout ends the app's session on the next request.
    back = steps["backchannel"]
    assert back["api_before"]["status"] == 200
    assert any(name.startswith("__Host-mesh-session.") for name in back["cookies_kept"])
    assert back["asked_again"].startswith(op.issuer)

    metrics = stats(browser_envoy)
    assert metrics.get("mesh_oauth.login.started", 0) >= 2
    assert metrics.get("mesh_oauth.login.completed", 0) >= 2
    assert metrics.get("mesh_oauth.session.refreshed", 0) >= 1
    assert metrics.get("mesh_oauth.session.logout", 0) >= 1
    assert metrics.get("mesh_oauth.session.backchannel_logout", 0) >= 1
    # Nothing secret in Envoy's log.
    log = browser_envoy.log()
    for secret in (first_token, refreshed.removeprefix("Bearer "), op.client_secret, COOKIE_KEYS):
        assert secret not in log


def test_a_real_browser_logs_in_with_private_key_jwt(module_envoys: EnvoyFactory,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    """The client authenticates to oidc-provider's token endpoint with an RFC 7523 assertion
    signed by a P-256 key from the VM environment (`aud` = the issuer, a fresh `jti`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
           "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    port = free_port()
    server = start_op(port, tmp_path_factory.mktemp("op-pkjwt") / "op.log", "--client-jwk", json.dumps(jwk))
    try:
        config = login_config(server.issuer, f"http://localhost:{port}", clientAuth="private_key_jwt",
                              clientKeyEnv="LOGIN_CLIENT_KEY")
        del config["login"]["clientSecretEnv"]
        envoy = module_envoys.start(config, extra_clusters={istio_cluster_name(server.port): server.port},
                                    filter_args={"env": {"LOGIN_CLIENT_KEY": pem, COOKIE_KEYS_ENV: COOKIE_KEYS}},
                                    port=port)
        wait_for_login(envoy, f"localhost:{port}")
        run = subprocess.run([node_binary(), str(LOGIN / "browser.mjs"), "--app", f"http://localhost:{port}",
                              "--op", server.issuer], capture_output=True, cwd=REPO, timeout=180)
        steps = json.loads(run.stdout.decode().strip().splitlines()[-1])
        assert steps.get("ok"), steps.get("error") or run.stderr.decode()[-2000:]
        assert steps["landed"]["url"] == f"http://localhost:{port}/orders?page=2"
        assert steps["api"]["status"] == 200
        assert "BEGIN PRIVATE KEY" not in envoy.log()
    finally:
        server.stop()


def test_many_concurrent_requests_of_an_expired_session_share_one_refresh_across_workers(
        module_envoys: EnvoyFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    """oidc-provider rotates refresh tokens: a second refresh of the same session would be
    refused and log the user out (oauth2-proxy's race). Two Envoy workers, many requests of one
    expired session at once, each on its own connection: the OP sees exactly one refresh and
    every request goes through with the new token and gets the new session cookie."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (make test does)", pytrace=False)
    ttl_s = 14
    port = free_port()
    server = start_op(port, tmp_path_factory.mktemp("op-race") / "op.log", access_token_ttl_s=ttl_s)
    try:
        app = f"http://localhost:{port}"
        envoy = module_envoys.start(
            login_config(server.issuer, app),
            extra_clusters={istio_cluster_name(server.port): server.port},
            filter_args={"env": {CLIENT_SECRET_ENV: server.client_secret, COOKIE_KEYS_ENV: COOKIE_KEYS}},
            port=port, concurrency=2)
        wait_for_login(envoy, f"localhost:{port}")
        run = subprocess.run([node_binary(), str(LOGIN / "browser.mjs"), "--app", app, "--op", server.issuer,
                              "--login-only"], capture_output=True, cwd=REPO, timeout=180)
        steps = json.loads(run.stdout.decode().strip().splitlines()[-1])
        assert steps.get("ok"), steps.get("error") or run.stderr.decode()[-2000:]
        session = steps["session_cookie"]
        first_token = steps["landed"]["upstream"]["headers"]["authorization"]
        assert session and first_token.startswith("Bearer ")
        logged_in_at = time.monotonic()

        def grants() -> dict[str, dict[str, int]]:
            with urllib.request.urlopen(f"{server.issuer}/test/grants", timeout=5) as resp:
                return json.loads(resp.read())

        assert grants()["success"].get("refresh_token", 0) == 0
        # Within the refresh margin (10 s before expiry) every request finds the token expiring.
        time.sleep(max(0.0, ttl_s - 10 + 1 - (time.monotonic() - logged_in_at)))
        headers = [("host", f"localhost:{port}"), ("accept", "application/json"), ("cookie", session)]
        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(lambda i: envoy.request(f"/api/orders/{i}", headers=headers), range(24)))

        assert [a.status for a in answers] == [200] * 24, [a.status for a in answers]
        tokens = {a.upstream["headers"]["authorization"] for a in answers}
        assert len(tokens) == 1 and first_token not in tokens, "every request carries the one new token"
        for answer in answers:
            # The new session reaches every browser, the one whose request waited included.
            assert any(v.startswith("__Host-mesh-session.") and "Max-Age=0" not in v
                       for v in answer.headers_named("set-cookie")), answer
        seen = grants()
        assert seen["success"].get("refresh_token") == 1, seen
        assert not seen["error"], seen
        metrics = stats(envoy)
        assert metrics.get("mesh_oauth.session.refreshed") == 1, metrics
        assert not metrics.get("mesh_oauth.session.refresh_failed"), metrics
        # Both workers took some of the requests.
        per_worker = envoy.admin(r"/stats?filter=worker_\d\.downstream_cx_total").body.decode()
        counts = [int(line.rpartition(": ")[2]) for line in per_worker.splitlines()]
        assert len(counts) == 2 and min(counts) > 0, per_worker
    finally:
        server.stop()


# --------------------------------------------------------------------------- attacks

APP_HOST = "app.test"
OTHER_HOST = "other.test"


@pytest.fixture(scope="module")
def fake_op(module_idps: Any, keys: KeySet) -> IdpServer:
    """A provider whose token endpoint answers what each test writes."""
    idp = module_idps()
    idp.set_jwks(keys.jwks(["RS256", "ES256"]))
    idp.set_json(IdpServer.DISCOVERY_PATH, {
        "issuer": idp.url,
        "jwks_uri": idp.jwks_uri,
        "authorization_endpoint": f"{idp.url}/authorize",
        "token_endpoint": f"{idp.url}/token",
        "end_session_endpoint": f"{idp.url}/logout",
        "authorization_response_iss_parameter_supported": True,
    })
    return idp


def start_envoy(factory: EnvoyFactory, idp: IdpServer, cookie_keys: str = COOKIE_KEYS, concurrency: int = 1,
                extra_args: tuple[str, ...] = (), audit_level: str = "info", **login: Any) -> Envoy:
    config = login_config(idp.url, f"http://{APP_HOST}", **login)
    config["login"]["hosts"] = [f"http://{APP_HOST}", f"http://{OTHER_HOST}"]
    config["audit"]["level"] = audit_level
    envoy = factory.build(config, idps=[idp], concurrency=concurrency,
                          filter_args={"env": {CLIENT_SECRET_ENV: "the-client-secret", COOKIE_KEYS_ENV: cookie_keys}})
    envoy.extra_args = list(extra_args)
    envoy.plugin_config = config  # what `mesh-oauth explain --config` is given (test_login_explain.py)
    envoy.start()
    wait_for_login(envoy, APP_HOST)
    return envoy


@pytest.fixture(scope="module")
def attack_envoy(module_envoys: EnvoyFactory, fake_op: IdpServer) -> Envoy:
    return start_envoy(module_envoys, fake_op)


class Browser:
    """A cookie jar over plain HTTP requests to one Envoy."""

    def __init__(self, envoy: Envoy, op_url: str, host: str = APP_HOST) -> None:
        self.envoy = envoy
        self.op_url = op_url
        self.host = host
        self.jar: dict[str, str] = {}

    def cookie(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.jar.items())

    def get(self, path: str, headers: list[tuple[str, str]] | None = None, method: str = "GET",
            body: bytes | None = None) -> Any:
        pairs = [("host", self.host), *(headers or [])]
        if self.jar:
            pairs.append(("cookie", self.cookie()))
        resp = self.envoy.request(path, headers=pairs, method=method, body=body)
        for value in resp.headers_named("set-cookie"):
            pair, _, attributes = value.partition(";")
            name, _, cookie = pair.partition("=")
            if "Max-Age=0" in attributes:
                self.jar.pop(name, None)
            else:
                self.jar[name] = cookie
        return resp

    def navigate(self, path: str) -> Any:
        return self.get(path, NAVIGATE)

    def authorize(self, path: str = "/orders") -> dict[str, str]:
        resp = self.navigate(path)
        assert resp.status == 302, resp
        location = resp.header("location")
        assert location.startswith(f"{self.op_url}/authorize?"), location
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))

    def callback(self, params: dict[str, str], iss: str | None, code: str = "the-code", **extra: str) -> Any:
        query = {"code": code, "state": params["state"], **extra}
        if iss is not None:
            query["iss"] = iss
        return self.navigate(f"/oauth2/callback?{urllib.parse.urlencode(query)}")


def browser(envoy: Envoy, op_url: str, host: str = APP_HOST) -> Browser:
    return Browser(envoy, op_url, host)


def id_token(keys: KeySet, issuer: str, nonce: str, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": issuer, "aud": "web-app", "sub": "alice", "sid": "op-session-1", "nonce": nonce,
            "iat": now, "exp": now + 300, **claims}
    return keys.mint(alg, {k: v for k, v in body.items() if v is not None})


def access_token(keys: KeySet, issuer: str) -> str:
    now = int(time.time())
    return keys.mint("RS256", {"iss": issuer, "aud": "web-api", "sub": "alice", "iat": now,
                               "exp": now + 300, "jti": secrets.token_hex(8)})


def token_answer(idp: IdpServer, keys: KeySet, id_token_value: str, access: str | None = None) -> None:
    idp.set_json("/token", {"access_token": access or access_token(keys, idp.url), "token_type": "Bearer",
                            "expires_in": 300, "id_token": id_token_value})


def logged_in(envoy: Envoy, idp: IdpServer, keys: KeySet, path: str = "/orders", access: str | None = None) -> Browser:
    b = browser(envoy, idp.url)
    params = b.authorize(path)
    token_answer(idp, keys, id_token(keys, idp.url, params["nonce"]), access)
    resp = b.callback(params, idp.url)
    assert resp.status == 302, resp
    assert any(name.startswith("__Host-mesh-session.") for name in b.jar)
    return b


def no_session(b: Browser, resp: Any) -> None:
    """Refused without access: a 4xx, no session cookie set."""
    assert 400 <= resp.status < 500, resp
    assert not any(name.startswith("__Host-mesh-session.") for name in b.jar), b.jar


def test_the_login_cookies_never_reach_the_upstream(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:
    b = logged_in(attack_envoy, fake_op, keys)
    b.jar["theme"] = "dark"
    resp = b.get("/orders", [("accept", "application/json")])
    assert resp.status == 200, resp
    upstream = resp.upstream["headers"]
    assert upstream["authorization"].startswith("Bearer ")
    assert upstream["cookie"] == "theme=dark"
    # The client secret went to the token endpoint as Basic authentication, not in the body.
    body, headers = fake_op.posts("/token")[-1]
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers.get("authorization", "").startswith("Basic ")
    assert b"the-client-secret" not in body and b"code_verifier=" in body


# Paths the pipeline itself refuses (encoded slash or backslash: 400) never start a login;
# the others do, and come back to `/`.
@pytest.mark.parametrize("path, refused", [("//evil.example/x", False), ("///evil.example", False),
                                           ("/%09/evil.example", True), ("/%2F%2Fevil.example", True),
                                           ("/\\evil.example", True), ("/%5Cevil.example", True)])
def test_open_redirect_targets_return_to_the_root(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet,
                                                  path: str, refused: bool) -> None:
    b = browser(attack_envoy, fake_op.url)
    first = b.navigate(path)
    if refused:
        assert first.status == 400 and first.header("location") is None, first
        return
    assert first.status == 302, first
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(first.header("location")).query))
    token_answer(fake_op, keys, id_token(keys, fake_op.url, params["nonce"]))
    resp = b.callback(params, fake_op.url)
    assert resp.status == 302
    assert resp.header("location") == "/"


def test_a_callback_without_or_with_another_browsers_transaction_is_refused(
        attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:
    victim = browser(attack_envoy, fake_op.url)
    params = victim.authorize()
    token_answer(fake_op, keys, id_token(keys, fake_op.url, params["nonce"]))
    stranger = browser(attack_envoy, fake_op.url)
    no_session(stranger, stranger.callback(params, fake_op.url))
    attacker = browser(attack_envoy, fake_op.url)
    attacker.authorize()
    no_session(attacker, attacker.callback(params, fake_op.url))
    # A replayed state: the transaction was cleared by the first callback.
    assert victim.callback(params, fake_op.url).status == 302
    victim.jar = {k: v for k, v in victim.jar.items() if not k.startswith("__Host-mesh-session.")}
    no_session(victim, victim.callback(params, fake_op.url))


@pytest.mark.parametrize("iss", [None, "https://evil.example"])
def test_a_missing_or_wrong_iss_is_refused(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet,
                                           iss: str | None) -> None:
    b = browser(attack_envoy, fake_op.url)
    params = b.authorize()
    token_answer(fake_op, keys, id_token(keys, fake_op.url, params["nonce"]))
    no_session(b, b.callback(params, iss))


def hs256_with_the_rsa_key(keys: KeySet, claims: dict[str, Any]) -> str:
    import hashlib
    import hmac
    public = keys["RS256"].public_jwk
    header = json.dumps({"alg": "HS256", "kid": public["kid"]}).encode()
    signing_input = f"{b64url(header)}.{b64url(json.dumps(claims).encode())}".encode()
    secret = public["n"].encode()
    return f"{signing_input.decode()}.{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"


def flip_a_bit(token: str) -> str:
    head, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 1
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def unsigned(issuer: str, nonce: str) -> str:
    """The classic `alg: none` token, with no signature."""
    now = int(time.time())
    claims = {"iss": issuer, "aud": "web-app", "sub": "a", "nonce": nonce, "iat": now, "exp": now + 60}
    return f"{b64url(json.dumps({'alg': 'none'}).encode())}.{b64url(json.dumps(claims).encode())}."


ID_TOKEN_ATTACKS = {
    "wrong_nonce": lambda keys, iss, nonce: id_token(keys, iss, "not-the-nonce"),
    "alg_none": lambda keys, iss, nonce: unsigned(iss, nonce),
    "hs256_with_rsa_key": lambda keys, iss, nonce: hs256_with_the_rsa_key(keys, {
        "iss": iss, "aud": "web-app", "sub": "a", "nonce": nonce, "iat": int(time.time()),
        "exp": int(time.time()) + 60}),
    "wrong_aud": lambda keys, iss, nonce: id_token(keys, iss, nonce, aud="other-client"),
    "expired": lambda keys, iss, nonce: id_token(keys, iss, nonce, iat=int(time.time()) - 7200,
                                                 exp=int(time.time()) - 3600),
    "unknown_kid": lambda keys, iss, nonce: keys.mint("RS256", {
        "iss": iss, "aud": "web-app", "sub": "a", "nonce": nonce, "iat": int(time.time()),
        "exp": int(time.time()) + 60}, kid="not-a-key"),
    "flipped_bit": lambda keys, iss, nonce: flip_a_bit(id_token(keys, iss, nonce)),
    "wrong_issuer": lambda keys, iss, nonce: id_token(keys, "https://evil.example", nonce),
}


@pytest.mark.parametrize("attack", sorted(ID_TOKEN_ATTACKS))
def test_a_bad_id_token_fails_the_login(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet, attack: str) -> None:
    b = browser(attack_envoy, fake_op.url)
    params = b.authorize()
    token_answer(fake_op, keys, ID_TOKEN_ATTACKS[attack](keys, fake_op.url, params["nonce"]))
    resp = b.callback(params, fake_op.url)
    no_session(b, resp)
    assert resp.header("location") is None, "never a redirect: no loop"


def tamper(value: str, how: str) -> str:
    key_id, _, body = value.partition(".")
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    if how == "flipped":
        raw[20] ^= 1
    elif how == "truncated":
        raw = raw[:-6]
    return f"{key_id}.{b64url(bytes(raw))}"


@pytest.mark.parametrize("how", ["flipped", "truncated"])
def test_a_tampered_session_cookie_gives_no_access(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet,
                                                   how: str) -> None:
    b = logged_in(attack_envoy, fake_op, keys)
    b.jar["__Host-mesh-session.0"] = tamper(b.jar["__Host-mesh-session.0"], how)
    assert b.get("/orders", [("accept", "application/json")]).status == 401
    b2 = logged_in(attack_envoy, fake_op, keys)
    b2.jar["__Host-mesh-session.0"] = tamper(b2.jar["__Host-mesh-session.0"], how)
    resp = b2.navigate("/orders")
    assert resp.status == 302 and resp.header("location").startswith(f"{fake_op.url}/authorize?")


def test_reordered_or_missing_chunks_of_a_large_session_give_no_access(
        attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:
    now = int(time.time())
    large = keys.mint("RS256", {"iss": fake_op.url, "aud": "web-api", "sub": "alice", "iat": now,
                                "exp": now + 300, "pad": secrets.token_urlsafe(4500)})
    b = logged_in(attack_envoy, fake_op, keys, access=large)
    assert {"__Host-mesh-session.0", "__Host-mesh-session.1"} <= set(b.jar)
    resp = b.get("/orders", [("accept", "application/json")])
    assert resp.status == 200 and resp.upstream["headers"]["authorization"] == f"Bearer {large}"
    good = dict(b.jar)
    b.jar["__Host-mesh-session.0"], b.jar["__Host-mesh-session.1"] = good["__Host-mesh-session.1"], good["__Host-mesh-session.0"]
    assert b.get("/orders", [("accept", "application/json")]).status == 401
    b.jar = {k: v for k, v in good.items() if k != "__Host-mesh-session.1"}
    assert b.get("/orders", [("accept", "application/json")]).status == 401


def test_an_expired_session_gives_no_access(module_envoys: EnvoyFactory, fake_op: IdpServer, keys: KeySet) -> None:
    envoy = start_envoy(module_envoys, fake_op, sessionMaxAgeSeconds=2)
    b = logged_in(envoy, fake_op, keys)
    assert b.get("/orders", [("accept", "application/json")]).status == 200
    time.sleep(2.5)
    assert b.get("/orders", [("accept", "application/json")]).status == 401
    assert b.navigate("/orders").status == 302


def test_a_session_cookie_from_another_host_or_a_retired_key_gives_no_access(
        attack_envoy: Envoy, module_envoys: EnvoyFactory, fake_op: IdpServer, keys: KeySet) -> None:
    b = logged_in(attack_envoy, fake_op, keys)
    moved = browser(attack_envoy, fake_op.url, host=OTHER_HOST)
    moved.jar = dict(b.jar)
    assert moved.get("/orders", [("accept", "application/json")]).status == 401
    rotated = start_envoy(module_envoys, fake_op, base64.b64encode(secrets.token_bytes(32)).decode())
    elsewhere = browser(rotated, fake_op.url)
    elsewhere.jar = dict(b.jar)
    assert elsewhere.get("/orders", [("accept", "application/json")]).status == 401


def test_a_cross_site_logout_is_refused(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:
    b = logged_in(attack_envoy, fake_op, keys)
    for headers in ([("origin", "http://evil.example")], [("sec-fetch-site", "cross-site")], []):
        resp = b.get("/oauth2/logout", headers, method="POST", body=b"")
        assert resp.status == 403, (headers, resp)
    assert b.get("/orders", [("accept", "application/json")]).status == 200
    resp = b.get("/oauth2/logout", [("origin", f"http://{APP_HOST}")], method="POST", body=b"")
    assert resp.status == 302 and resp.header("location").startswith(f"{fake_op.url}/logout?")
    assert b.get("/orders", [("accept", "application/json")]).status == 401


def test_logout_hint_id_token_names_the_session_by_its_id_token(module_envoys: EnvoyFactory, fake_op: IdpServer,
                                                                 keys: KeySet) -> None:
    """`logoutHint: "id_token"` (an OP such as Okta wants `id_token_hint`): the session keeps the
    ID token while the access token is forwarded; the end-session redirect carries it."""
    envoy = start_envoy(module_envoys, fake_op, logoutHint="id_token")
    b = logged_in(envoy, fake_op, keys)
    forwarded = b.get("/orders", [("accept", "application/json")]).upstream["headers"]["authorization"]
    assert jwt.decode(forwarded.removeprefix("Bearer "), options={"verify_signature": False})["aud"] == "web-api"
    resp = b.get("/oauth2/logout", [("origin", f"http://{APP_HOST}")], method="POST", body=b"")
    assert resp.status == 302, resp
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.header("location")).query))
    assert "client_id" not in params
    hint = params["id_token_hint"]
    kid = jwt.get_unverified_header(hint).get("kid")
    key = next(jwt.PyJWK(k) for k in keys.jwks(["RS256"])["keys"] if k.get("kid") == kid)
    claims = jwt.decode(hint, key.key, algorithms=["RS256"], audience="web-app")
    assert claims["iss"] == fake_op.url and "nonce" in claims


def logout_token(keys: KeySet, issuer: str, typ: str | None = "logout+jwt", **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": issuer, "aud": "web-app", "sid": "op-session-1", "iat": now, "exp": now + 120,
            "jti": secrets.token_hex(8),
            "events": {"http://schemas.openid.net/event/backchannel-logout": {}}, **claims}
    headers = {"typ": typ} if typ else {}
    return keys.mint("RS256", {k: v for k, v in body.items() if v is not None}, headers=headers)


BACKCHANNEL_ATTACKS = {
    "no_typ": lambda keys, iss: logout_token(keys, iss, typ=None),
    "nonce": lambda keys, iss: logout_token(keys, iss, nonce="n"),
    "no_events": lambda keys, iss: logout_token(keys, iss, events=None),
    "no_sub_or_sid": lambda keys, iss: logout_token(keys, iss, sid=None),
    "wrong_aud": lambda keys, iss: logout_token(keys, iss, aud="other"),
    "flipped_bit": lambda keys, iss: flip_a_bit(logout_token(keys, iss)),
    "an_id_token": lambda keys, iss: id_token(keys, iss, "n"),
}


def backchannel(envoy: Envoy, token: str) -> Any:
    body = urllib.parse.urlencode({"logout_token": token}).encode()
    return envoy.request("/oauth2/backchannel-logout", method="POST", body=body, headers=[
        ("host", APP_HOST), ("content-type", "application/x-www-form-urlencoded")])


@pytest.mark.parametrize("attack", sorted(BACKCHANNEL_ATTACKS))
def test_each_backchannel_logout_rule_refuses_with_400(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet,
                                                       attack: str) -> None:
    b = logged_in(attack_envoy, fake_op, keys)
    resp = backchannel(attack_envoy, BACKCHANNEL_ATTACKS[attack](keys, fake_op.url))
    assert resp.status == 400, resp
    assert resp.header("cache-control") == "no-store"
    assert b.get("/orders", [("accept", "application/json")]).status == 200


def test_a_backchannel_logout_ends_the_session_in_every_worker_at_once(
        module_envoys: EnvoyFactory, fake_op: IdpServer, keys: KeySet) -> None:
    # Two workers; each request is a new connection, so they land on both.
    envoy = start_envoy(module_envoys, fake_op, concurrency=2)
    b = logged_in(envoy, fake_op, keys)
    assert [b.get("/orders", [("accept", "application/json")]).status for _ in range(8)] == [200] * 8
    resp = backchannel(envoy, logout_token(keys, fake_op.url))
    assert resp.status == 200 and resp.header("cache-control") == "no-store"
    assert [b.get("/orders", [("accept", "application/json")]).status for _ in range(8)] == [401] * 8
    assert b.navigate("/orders").status == 302
    # Both workers took connections after the logout was recorded by one of them.
    per_worker = envoy.admin(r"/stats?filter=worker_\d\.downstream_cx_total").body.decode()
    counts = [int(line.rpartition(": ")[2]) for line in per_worker.splitlines()]
    assert len(counts) == 2 and min(counts) > 0, per_worker


def log_in_and_read_the_log(envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> tuple[str, list[str]]:
    """A whole login and an API call through `envoy`: its log, and every secret the flow used."""
    b = browser(envoy, fake_op.url)
    params = b.authorize()
    answer_id_token = id_token(keys, fake_op.url, params["nonce"])
    token_answer(fake_op, keys, answer_id_token)
    access = json.loads(fake_op._replies["/token"].body)["access_token"]
    assert b.callback(params, fake_op.url, code="a-secret-code").status == 302
    assert b.get("/orders", [("accept", "application/json")]).status == 200
    secrets_used = [params["state"], params["nonce"], "a-secret-code", answer_id_token, access,
                    "the-client-secret", COOKIE_KEYS, *b.jar.values()]
    return envoy.log(), secrets_used


def test_nothing_secret_reaches_the_log(attack_envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:
    log, secrets_used = log_in_and_read_the_log(attack_envoy, fake_op, keys)
    assert "mesh_oauth" in log or "mesh-oauth" in log
    for secret in secrets_used:
        assert secret not in log, secret[:12]


def test_nothing_secret_reaches_the_log_at_debug(module_envoys: EnvoyFactory, fake_op: IdpServer,
                                                 keys: KeySet) -> None:
    """The module's every line at Envoy's `debug` (component `wasm`), its audit line for every
    request included. Envoy's own `http` debug lines print request headers, cookies among them:
    that level is Envoy's, not the module's, to keep out of production."""
    envoy = start_envoy(module_envoys, fake_op, extra_args=("--component-log-level", "wasm:debug"),
                        audit_level="debug")
    log, secrets_used = log_in_and_read_the_log(envoy, fake_op, keys)
    allowed_at_debug = [line for line in audit_lines(envoy)
                        if line.level == "debug" and line.fields.get("decision") == "allow"]
    assert allowed_at_debug, "the module's debug lines (audit lines of allowed requests) are in the log"
    for secret in secrets_used:
        assert secret not in log, secret[:12]
