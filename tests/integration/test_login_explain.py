"""`mesh-oauth explain` and the filter agree on login hosts (issue 28): session cookies the filter
itself set (valid, tampered, truncated, expired, sealed by a retired key, carried to another host)
and callbacks, each sent to a real Envoy with the module and then put to explain exactly as it
was sent, explain opening the cookies with the key ring from its own environment. Compared: the
audit line of the pipeline (decision, status, reason, rule, provider), the login events the
filter logs for the request (`{"login":"session.refused.tampered","reason":"tampered"}` …), and the status the
client gets (a navigation sent to log in: 302). Nothing secret in what explain prints."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import test_login as login
from harness import Envoy, EnvoyFactory, IdpServer
from test_explain_agrees import COMPARED, filter_line
from test_login import APP_HOST, OTHER_HOST, fake_op  # noqa: F401  (fake_op: a fixture)
from tokens import KeySet

REPO = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MESH_OAUTH_CLI") or REPO / "target" / "debug" / "mesh-oauth")
# The whole audit line of a login event (its metric and reason), as the filter logs it.
LOGIN_EVENT = re.compile(r'\{"login":"[a-z_.]+"(?:,"reason":"[a-z_]+")?\}')
API = [("accept", "application/json")]


def login_events(envoy: Envoy) -> list[str]:
    return LOGIN_EVENT.findall(envoy.log())


@dataclass
class Seen:
    status: int
    audit: dict[str, Any] | None
    events: list[str]


def send(envoy: Envoy, b: login.Browser, path: str, headers: list[tuple[str, str]]) -> Seen:
    """The request through Envoy: its status, its audit line (none for an answer the login
    gives itself) and the login events logged for it (requests are sent one at a time)."""
    before = len(login_events(envoy))
    request_id = f"login-explain-{uuid.uuid4().hex[:12]}"
    resp = b.get(path, [*headers, ("x-request-id", request_id)])
    audit = None
    if not path.startswith("/oauth2/"):
        audit = {key: filter_line(envoy, request_id).get(key) for key in COMPARED}
    time.sleep(0.1)  # the login event lines come before the audit line; a margin all the same
    return Seen(resp.status, audit, login_events(envoy)[before:])


def explain(envoy: Envoy, idp: IdpServer, cookie_keys: str, host: str, path: str,
            headers: list[tuple[str, str]], cookie: str) -> tuple[Seen, str]:
    config = envoy.workdir / "plugin.json"
    config.write_text(json.dumps(envoy.plugin_config))
    args = [str(CLI), "explain", "--config", str(config), "--host", host, "--path", path, "--scheme", "http",
            "--jwks", idp.jwks_uri, "--discovery", idp.url + IdpServer.DISCOVERY_PATH]
    for name, value in headers:
        args += ["--request-header", f"{name}: {value}"]
    if cookie:
        args += ["--cookie", "-"]
    env = {**os.environ, login.COOKIE_KEYS_ENV: cookie_keys}
    env.pop(login.CLIENT_SECRET_ENV, None)  # explain never needs the client secret
    result = subprocess.run(args, input=cookie, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    audit = next((json.loads(line.split(": ", 1)[1]) for line in out.splitlines()
                  if line.startswith("  audit line: ")), None)
    final = re.search(r"^final: (\d+) ", out, re.M)
    allowed = re.search(r"^final: allowed", out, re.M)
    status = 200 if allowed else int(final.group(1)) if final else 0
    events = LOGIN_EVENT.findall("\n".join(re.findall(r"login event: .*log line (.*)\)$", out, re.M)))
    return Seen(status, {key: audit.get(key) for key in COMPARED} if audit else None, events), out


def agree(envoy: Envoy, idp: IdpServer, b: login.Browser, path: str, headers: list[tuple[str, str]],
          cookie_keys: str = login.COOKIE_KEYS) -> str:
    cookie = b.cookie()
    filtered = send(envoy, b, path, headers)
    explained, out = explain(envoy, idp, cookie_keys, b.host, path, headers, cookie)
    assert explained == filtered, f"filter {filtered} but explain {explained}:\n{out}"
    # Nothing of the cookies' values, nor the tokens they hold.
    for pair in cookie.split("; "):
        value = pair.partition("=")[2]
        assert len(value) < 12 or value.partition(".")[2][:24] not in out, out
    return out


@pytest.fixture(scope="module")
def envoy(module_envoys: EnvoyFactory, fake_op: IdpServer) -> Envoy:  # noqa: F811
    return login.start_envoy(module_envoys, fake_op)


def test_a_valid_session(envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:  # noqa: F811
    b = login.logged_in(envoy, fake_op, keys)
    b.jar["theme"] = "dark"
    out = agree(envoy, fake_op, b, "/orders", API)
    assert "(the sealing key), bound to host app.test: authentic" in out, out
    assert "final: allowed" in out, out


@pytest.mark.parametrize("how", ["flipped", "truncated"])
@pytest.mark.parametrize("navigation", [False, True], ids=["api", "navigation"])
def test_a_tampered_session(envoy: Envoy, fake_op: IdpServer, keys: KeySet, how: str,  # noqa: F811
                            navigation: bool) -> None:
    b = login.logged_in(envoy, fake_op, keys)
    b.jar["__Host-mesh-session.0"] = login.tamper(b.jar["__Host-mesh-session.0"], how)
    out = agree(envoy, fake_op, b, "/orders", login.NAVIGATE if navigation else API)
    assert "session.refused.tampered" in out, out
    assert ("final: 302 Found: sent to log in" in out) == navigation, out


def test_a_session_carried_to_another_host(envoy: Envoy, fake_op: IdpServer, keys: KeySet) -> None:  # noqa: F811
    b = login.logged_in(envoy, fake_op, keys)
    moved = login.browser(envoy, fake_op.url, host=OTHER_HOST)
    moved.jar = dict(b.jar)
    out = agree(envoy, fake_op, moved, "/orders", API)
    assert f"sealed for host {APP_HOST}, not {OTHER_HOST}" in out, out


def test_a_session_sealed_by_a_retired_key(envoy: Envoy, module_envoys: EnvoyFactory, fake_op: IdpServer,  # noqa: F811
                                           keys: KeySet) -> None:
    b = login.logged_in(envoy, fake_op, keys)
    new_keys = base64.b64encode(secrets.token_bytes(32)).decode()
    rotated = login.start_envoy(module_envoys, fake_op, new_keys)
    elsewhere = login.browser(rotated, fake_op.url)
    elsewhere.jar = dict(b.jar)
    out = agree(rotated, fake_op, elsewhere, "/orders", API, cookie_keys=new_keys)
    assert "is not in the ring: a retired key" in out, out
    # Rotated with the old key kept second: the old cookie still opens, as in the filter.
    both = login.start_envoy(module_envoys, fake_op, f"{new_keys},{login.COOKIE_KEYS}")
    kept = login.browser(both, fake_op.url)
    kept.jar = dict(b.jar)
    out = agree(both, fake_op, kept, "/orders", API, cookie_keys=f"{new_keys},{login.COOKIE_KEYS}")
    assert "an older key of the ring (still opens" in out and "final: allowed" in out, out


def test_an_expired_session(module_envoys: EnvoyFactory, fake_op: IdpServer, keys: KeySet) -> None:  # noqa: F811
    envoy = login.start_envoy(module_envoys, fake_op, sessionMaxAgeSeconds=2)
    b = login.logged_in(envoy, fake_op, keys)
    time.sleep(2.5)
    out = agree(envoy, fake_op, b, "/orders", API)
    assert "session.refused.expired" in out and "cookie expired at" in out, out


@pytest.mark.parametrize("headers", [login.NAVIGATE, API, [("accept", "text/html")], [("sec-fetch-mode", "cors")]],
                         ids=["navigate", "api", "accept-html", "fetch"])
def test_no_session_a_navigation_logs_in_the_rest_gets_the_401(envoy: Envoy, fake_op: IdpServer,  # noqa: F811
                                                               headers: list[tuple[str, str]]) -> None:
    out = agree(envoy, fake_op, login.browser(envoy, fake_op.url), "/orders?page=2", headers)
    navigation = headers != API and headers[0] != ("sec-fetch-mode", "cors")
    assert ("after the login the browser comes back to /orders?page=2" in out) == navigation, out


@pytest.mark.parametrize("case", ["stranger", "wrong_iss", "missing_iss", "provider_error"])
def test_a_callback(envoy: Envoy, fake_op: IdpServer, keys: KeySet, case: str) -> None:  # noqa: F811
    """Callbacks the filter refuses before the token call: the same refusal, the same event."""
    b = login.browser(envoy, fake_op.url)
    params = b.authorize()
    query = {"code": "a-code", "state": params["state"], "iss": fake_op.url}
    if case == "stranger":
        b = login.browser(envoy, fake_op.url)
    elif case == "wrong_iss":
        query["iss"] = "https://evil.example"
    elif case == "missing_iss":
        del query["iss"]
    else:
        query = {"error": "access_denied", "state": params["state"], "iss": fake_op.url}
    path = f"/oauth2/callback?{urllib.parse.urlencode(query)}"
    out = agree(envoy, fake_op, b, path, login.NAVIGATE)
    assert params["state"] not in out and "a-code" not in out, out
