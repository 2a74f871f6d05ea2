"""The caps on hostile input (`limits.*`), each configured and tested at its edge in Envoy: exactly
at the cap passes, one past it is refused. Defaults: src/config.rs `Limits`."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from checks import assert_invalid_token, assert_retry_after
from harness import Envoy, IdpServer, Reply
from observe import stats
from tokens import SigningKey, b64url, generate_key

AUDIENCE = "api"
ISS = "https://limits.idp.test"
ISS_JWKS_AT_BYTES = "https://jwks-at-bytes.idp.test"
ISS_JWKS_OVER_BYTES = "https://jwks-over-bytes.idp.test"
ISS_JWKS_AT_KEYS = "https://jwks-at-keys.idp.test"
ISS_JWKS_OVER_KEYS = "https://jwks-over-keys.idp.test"

MAX_TOKEN_BYTES = 3000
MAX_JSON_DEPTH = 4
MAX_JSON_MEMBERS = 20
MAX_JWKS_BYTES = 4000
MAX_JWKS_KEYS = 3
DEFAULT_MAX_TOKEN_BYTES = 16 * 1024
MAX_HELD = 2
IDP_DELAY_S = 3.0

BASE_CLAIMS = 5  # iss, aud, sub, iat, exp


def claims(issuer: str = ISS, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 600, **extra}


def sign(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    h = json.dumps({"alg": key.alg, "kid": key.kid, **header}, separators=(",", ":")).encode()
    p = json.dumps(payload, separators=(",", ":")).encode()
    signing_input = f"{b64url(h)}.{b64url(p)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


def token_of_length(key: SigningKey, length: int, issuer: str = ISS) -> str:
    """A valid token exactly `length` bytes long: filler in the payload, fine-tuned in the header
    (base64url cannot grow by every length from one segment alone)."""
    base = len(sign(key, claims(issuer, f="")))
    for header_pad in range(4):
        for extra in range(-8, 8):
            filler = "x" * max(0, (length - base) * 3 // 4 + extra)
            token = sign(key, claims(issuer, f=filler), x="y" * header_pad)
            if len(token) == length:
                return token
    raise AssertionError(f"no token of exactly {length} bytes")


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def jwks_of_exact_size(keys: list[SigningKey], size: int) -> bytes:
    document = json.dumps({"keys": [k.public_jwk for k in keys]}).encode()
    assert len(document) <= size, (len(document), size)
    return document + b" " * (size - len(document))  # trailing whitespace is still JSON


@pytest.fixture(scope="module")
def signing_keys() -> dict[str, SigningKey]:
    return {"main": generate_key("ES256", "limits-es256"), **{f"k{i}": generate_key("ES256", f"k{i}") for i in range(4)}}


@pytest.fixture(scope="module")
def capped(module_envoys, module_idps, signing_keys) -> Envoy:
    """Every cap but held requests set low, one provider per JWKS edge."""
    idp = module_idps()
    main = signing_keys["main"]
    extra = [signing_keys[f"k{i}"] for i in range(4)]
    idp.set_jwks({"keys": [main.public_jwk]})
    documents = {
        "/at-bytes.json": jwks_of_exact_size([main], MAX_JWKS_BYTES),
        "/over-bytes.json": jwks_of_exact_size([main], MAX_JWKS_BYTES + 1),
        "/at-keys.json": json.dumps({"keys": [k.public_jwk for k in [main, *extra[:MAX_JWKS_KEYS - 1]]]}).encode(),
        "/over-keys.json": json.dumps({"keys": [k.public_jwk for k in [main, *extra[:MAX_JWKS_KEYS]]]}).encode(),
    }
    for path, body in documents.items():
        idp.respond(path, Reply(body=body))
    provider = {"audiences": [AUDIENCE], "timeout": "300ms"}
    config = {
        "providers": [
            {"issuer": ISS, "jwksUri": idp.jwks_uri, **provider},
            {"issuer": ISS_JWKS_AT_BYTES, "jwksUri": idp.url + "/at-bytes.json", **provider},
            {"issuer": ISS_JWKS_OVER_BYTES, "jwksUri": idp.url + "/over-bytes.json", **provider},
            {"issuer": ISS_JWKS_AT_KEYS, "jwksUri": idp.url + "/at-keys.json", **provider},
            {"issuer": ISS_JWKS_OVER_KEYS, "jwksUri": idp.url + "/over-keys.json", **provider},
        ],
        "limits": {
            "maxTokenBytes": MAX_TOKEN_BYTES,
            "maxJsonDepth": MAX_JSON_DEPTH,
            "maxJsonMembers": MAX_JSON_MEMBERS,
            "maxJwksBytes": MAX_JWKS_BYTES,
            "maxJwksKeys": MAX_JWKS_KEYS,
            "maxCachedTokens": 0,
        },
    }
    return module_envoys.start(config, idps=[idp])


def test_token_exactly_at_max_token_bytes_passes(capped, signing_keys):
    token = token_of_length(signing_keys["main"], MAX_TOKEN_BYTES)
    assert capped.request("/", headers=bearer(token)).status == 200


def test_token_one_byte_over_max_token_bytes_is_refused(capped, signing_keys):
    token = token_of_length(signing_keys["main"], MAX_TOKEN_BYTES + 1)
    assert_invalid_token(capped.request("/", headers=bearer(token)), "too large")


def test_payload_at_max_json_depth_passes(capped, signing_keys):
    # The payload object is depth 1; each list one more.
    token = sign(signing_keys["main"], claims(n=nested(MAX_JSON_DEPTH - 1)))
    assert capped.request("/", headers=bearer(token)).status == 200


def test_payload_past_max_json_depth_is_refused(capped, signing_keys):
    token = sign(signing_keys["main"], claims(n=nested(MAX_JSON_DEPTH)))
    assert_invalid_token(capped.request("/", headers=bearer(token)), "payload is malformed")


def test_header_past_max_json_depth_is_refused(capped, signing_keys):
    token = sign(signing_keys["main"], claims(), x=nested(MAX_JSON_DEPTH))
    assert_invalid_token(capped.request("/", headers=bearer(token)), "header is malformed")


def test_payload_at_max_json_members_passes(capped, signing_keys):
    # Members and list elements count alike: 5 claims + "l" + its elements.
    token = sign(signing_keys["main"], claims(l=list(range(MAX_JSON_MEMBERS - BASE_CLAIMS - 1))))
    assert capped.request("/", headers=bearer(token)).status == 200


def test_payload_past_max_json_members_is_refused(capped, signing_keys):
    token = sign(signing_keys["main"], claims(l=list(range(MAX_JSON_MEMBERS - BASE_CLAIMS))))
    assert_invalid_token(capped.request("/", headers=bearer(token)), "payload is malformed")


def test_header_past_max_json_members_is_refused(capped, signing_keys):
    members = {f"h{i}": 1 for i in range(MAX_JSON_MEMBERS - 1)}  # + alg and kid
    token = sign(signing_keys["main"], claims(), **members)
    assert_invalid_token(capped.request("/", headers=bearer(token)), "header is malformed")


def test_jwks_exactly_at_max_jwks_bytes_is_used(capped, signing_keys):
    token = sign(signing_keys["main"], claims(ISS_JWKS_AT_BYTES))
    assert capped.request("/", headers=bearer(token)).status == 200


def test_jwks_one_byte_over_max_jwks_bytes_is_refused_fail_closed(capped, signing_keys):
    token = sign(signing_keys["main"], claims(ISS_JWKS_OVER_BYTES))
    assert_retry_after(capped.request("/", headers=bearer(token)))


def test_jwks_with_max_jwks_keys_is_used(capped, signing_keys):
    token = sign(signing_keys["k1"], claims(ISS_JWKS_AT_KEYS))
    assert capped.request("/", headers=bearer(token)).status == 200


def test_jwks_with_one_key_too_many_is_refused_fail_closed(capped, signing_keys):
    token = sign(signing_keys["main"], claims(ISS_JWKS_OVER_KEYS))
    assert_retry_after(capped.request("/", headers=bearer(token)))


def cache_hits(envoy: Envoy) -> int:
    return sum(value for name, value in stats(envoy).items() if name == "mesh_oauth.cache.hit")


def test_max_cached_tokens_zero_turns_the_cache_off_and_tokens_still_work(capped, signing_keys):
    token = sign(signing_keys["main"], claims(jti="repeated"))
    for _ in range(3):
        assert capped.request("/", headers=bearer(token)).status == 200
    assert cache_hits(capped) == 0
    assert stats(capped).get("mesh_oauth.cached_tokens", 0) == 0


MAX_CACHED = 4


@pytest.fixture(scope="module")
def small_cache(module_envoys, module_idps, signing_keys) -> tuple[Envoy, IdpServer]:
    idp = module_idps()
    idp.set_jwks({"keys": [signing_keys["main"].public_jwk]})
    return module_envoys.start(small_cache_config(idp), idps=[idp], pushable=True), idp


def small_cache_config(idp: IdpServer, **extra: Any) -> dict[str, Any]:
    return {
        "providers": [{"issuer": ISS, "audiences": [AUDIENCE], "jwksUri": idp.jwks_uri}],
        "limits": {"maxCachedTokens": MAX_CACHED},
        **extra,
    }


def test_cached_tokens_gauge_counts_verified_tokens_up_to_max_cached_tokens(small_cache, signing_keys):
    small_cache, idp = small_cache
    key = signing_keys["main"]
    for n in range(MAX_CACHED - 1):
        assert small_cache.request("/", headers=bearer(sign(key, claims(jti=f"under-{n}")))).status == 200
    # A refused token is never remembered.
    bad = sign(key, claims(jti="expired", exp=int(time.time()) - 3600))
    assert small_cache.request("/", headers=bearer(bad)).status == 401
    assert stats(small_cache)["mesh_oauth.cached_tokens"] == MAX_CACHED - 1
    for n in range(3 * MAX_CACHED):
        assert small_cache.request("/", headers=bearer(sign(key, claims(jti=f"over-{n}")))).status == 200
    assert stats(small_cache)["mesh_oauth.cached_tokens"] == MAX_CACHED
    # A pushed configuration starts with an empty cache: its entries leave the gauge too.
    small_cache.push(small_cache_config(idp, realm="pushed"))
    deadline = time.monotonic() + 5
    while stats(small_cache)["mesh_oauth.cached_tokens"] != 0:
        assert time.monotonic() < deadline, "the old cache's entries stayed on the gauge"
    assert small_cache.request("/", headers=bearer(sign(key, claims(jti="after-push")))).status == 200
    assert stats(small_cache)["mesh_oauth.cached_tokens"] == 1


# ------------------------------------------------------------------ held requests and defaults


@pytest.fixture(scope="module")
def slow_idp(module_idps, signing_keys) -> IdpServer:
    idp = module_idps()
    idp.set_jwks({"keys": [signing_keys["main"].public_jwk]}, delay_s=IDP_DELAY_S)
    return idp


@pytest.fixture(scope="module")
def held(module_envoys, slow_idp) -> tuple[Envoy, float]:
    """Default limits but maxHeldRequests; keys that take IDP_DELAY_S to arrive. Returns the
    Envoy and when it started (the fetch begins then)."""
    config = {
        "providers": [{"issuer": ISS, "audiences": [AUDIENCE], "jwksUri": slow_idp.jwks_uri, "timeout": "10s"}],
        "limits": {"maxHeldRequests": MAX_HELD},
    }
    envoy = module_envoys.start(config, idps=[slow_idp])
    return envoy, time.monotonic()


def test_requests_past_max_held_requests_get_503_at_once(held, signing_keys):
    envoy, started = held
    token = sign(signing_keys["main"], claims())
    count = MAX_HELD + 3
    results: list[tuple[float, float, Any]] = [None] * count  # type: ignore[list-item]

    def send(i: int) -> None:
        t0 = time.monotonic()
        resp = envoy.request("/", headers=bearer(token), timeout=15)
        results[i] = (t0, time.monotonic() - t0, resp)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    last_sent = max(t0 for t0, _, _ in results)
    assert last_sent - started < IDP_DELAY_S / 2, "the keys could arrive before the hold was full"
    statuses = sorted(resp.status for _, _, resp in results)
    assert statuses == [200] * MAX_HELD + [503] * (count - MAX_HELD), statuses
    for _, elapsed, resp in results:
        if resp.status == 503:
            assert_retry_after(resp)
            assert elapsed < 1.0, f"an over-cap request waited {elapsed:.2f}s"
        else:
            assert elapsed > 1.0, "a held request was answered before the keys came"


def test_default_max_token_bytes_edge(held, signing_keys):
    envoy, _ = held
    key = signing_keys["main"]
    assert envoy.request("/", headers=bearer(token_of_length(key, DEFAULT_MAX_TOKEN_BYTES))).status == 200
    assert_invalid_token(envoy.request("/", headers=bearer(token_of_length(key, DEFAULT_MAX_TOKEN_BYTES + 1))),
                         "too large")


def test_the_cache_is_on_by_default(held, signing_keys):
    """The counterpart of maxCachedTokens 0: the same repeated token is answered from the cache."""
    envoy, _ = held
    token = sign(signing_keys["main"], claims(jti="cached"))
    for _ in range(3):
        assert envoy.request("/", headers=bearer(token)).status == 200
    assert cache_hits(envoy) >= 2
