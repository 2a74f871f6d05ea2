"""Assertions on the plugin's answers (RFC 6750 responses of the contract)."""

from __future__ import annotations

import email.utils
import re
from typing import Any

import pytest

from harness import EnvoyStartError, Response

_AUTH_PARAM = re.compile(r'([A-Za-z_]+)="((?:[^"\\]|\\.)*)"')


def www_authenticate(resp: Response) -> tuple[str, dict[str, str]]:
    """(scheme, params) of the single `WWW-Authenticate` header."""
    values = resp.headers_named("www-authenticate")
    assert len(values) == 1, f"expected one WWW-Authenticate header: {resp}"
    scheme, _, rest = values[0].partition(" ")
    params = {name: value for name, value in _AUTH_PARAM.findall(rest)}
    return scheme, params


def error_body(resp: Response) -> dict[str, Any]:
    content_type = resp.header("content-type") or ""
    assert "application/json" in content_type, f"error body is not JSON: {resp}"
    body = resp.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("error_description"), str), resp
    return body


def assert_missing_token(resp: Response, realm: str) -> None:
    assert resp.status == 401, resp
    assert resp.header("www-authenticate") == f'Bearer realm="{realm}"', resp


def assert_invalid_token(resp: Response, *keywords: str) -> str:
    """401 invalid_token whose description names the cause (any of `keywords`, case-insensitive).
    Returns the description."""
    assert resp.status == 401, resp
    scheme, params = www_authenticate(resp)
    assert scheme == "Bearer", resp
    assert "realm" in params, resp
    assert params.get("error") == "invalid_token", resp
    assert params.get("error_description"), resp
    body = error_body(resp)
    assert body["error"] == "invalid_token", resp
    description = body["error_description"]
    assert any(k.lower() in description.lower() for k in keywords), (
        f"description {description!r} names none of {keywords}")
    return description


def assert_invalid_request(resp: Response) -> None:
    assert resp.status == 400, resp
    assert error_body(resp)["error"] == "invalid_request", resp


def assert_retry_after(resp: Response) -> None:
    """503 with a `Retry-After` (delay-seconds or an HTTP date, RFC 9110 §10.2.3)."""
    assert resp.status == 503, resp
    value = (resp.header("retry-after") or "").strip()
    assert value, f"no Retry-After: {resp}"
    assert value.isdigit() or email.utils.parsedate_to_datetime(value), resp


def refused_start(envoys, plugin_config) -> str:
    """Starts an Envoy whose plugin must refuse `plugin_config`; returns its log."""
    envoy = envoys.build(plugin_config)
    with pytest.raises(EnvoyStartError) as refused:
        envoy.start()
    assert refused.value.returncode not in (None, 0), "Envoy should exit, not hang"
    return refused.value.log
