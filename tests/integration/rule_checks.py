"""Assertions on the authorization answers (403s) and on the plugin's log, shared by the rule,
identity-header and IdP-shape modules."""

from __future__ import annotations

import time

from checks import error_body, www_authenticate
from harness import Envoy, Response


def assert_insufficient_scope(resp: Response, realm: str, scope: str | None) -> None:
    """403 `insufficient_scope`; `scope` the expected `scope=` parameter, or None when a claim
    condition (not a scope) was the cause and the challenge must carry no `scope=`."""
    assert resp.status == 403, resp
    scheme, params = www_authenticate(resp)
    assert scheme == "Bearer", resp
    assert params.get("realm") == realm, resp
    assert params.get("error") == "insufficient_scope", resp
    if scope is None:
        assert "scope" not in params, f"a failed claim condition must not name scopes: {resp}"
    else:
        assert params.get("scope") == scope, resp
    assert error_body(resp)["error"] == "insufficient_scope", resp


def assert_forbidden(resp: Response) -> None:
    """403 of a `deny` rule or `unmatched: deny`: no challenge (no token would help), JSON body."""
    assert resp.status == 403, resp
    assert resp.header("www-authenticate") is None, resp
    assert error_body(resp)["error"] not in ("insufficient_scope", "invalid_token"), resp


def log_lines(envoy: Envoy, *fragments: str) -> list[str]:
    """Envoy log lines holding every fragment."""
    return [line for line in envoy.log().splitlines() if all(fragment in line for fragment in fragments)]


def wait_for_log(envoy: Envoy, *fragments: str, seen: int = 0, timeout_s: float = 3.0) -> str:
    """The newest Envoy log line holding every fragment, once there are more than `seen` of them
    (the count before the request that should log); fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = log_lines(envoy, *fragments)
        if len(lines) > seen:
            return lines[-1]
        assert time.monotonic() < deadline, f"no new Envoy log line with {fragments} in {envoy.log_path}"
        time.sleep(0.05)
