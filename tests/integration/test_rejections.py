"""Invalid tokens: each is refused with 401 invalid_token and a description naming the cause,
which never echoes the token."""

import json
import time

from checks import assert_invalid_token
from plugin_configs import AUDIENCE, ISS_RS256_ONLY, ISS_RSA
from tokens import b64url, claims, segments

ALG = "RS256"


def send(envoy, token: str):
    return envoy.request("/orders", headers={"Authorization": f"Bearer {token}"})


def rsa_token(keys, **overrides) -> str:
    return keys.mint(ALG, {**claims(ISS_RSA), **overrides})


def test_expired(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, rsa_token(keys, iat=now - 3600, exp=now - 600))
    assert_invalid_token(resp, "expired")


def test_not_before_in_the_future(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, rsa_token(keys, nbf=now + 600, exp=now + 1200))
    assert_invalid_token(resp, "not yet valid")


def test_issued_in_the_future(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, rsa_token(keys, iat=now + 600, exp=now + 1200))
    assert_invalid_token(resp, "not yet valid", "future")


def test_unknown_issuer(standard_envoy, keys):
    resp = send(standard_envoy, rsa_token(keys, iss="https://unknown.idp.test"))
    assert_invalid_token(resp, "issuer")


def test_issuer_must_match_exactly(standard_envoy, keys):
    resp = send(standard_envoy, rsa_token(keys, iss=ISS_RSA + "/"))
    assert_invalid_token(resp, "issuer")


def test_wrong_audience(standard_envoy, keys):
    resp = send(standard_envoy, rsa_token(keys, aud="someone-else"))
    assert_invalid_token(resp, "audience")


def test_audience_list_with_the_configured_audience_passes(standard_envoy, keys):
    resp = send(standard_envoy, rsa_token(keys, aud=["someone-else", AUDIENCE]))
    assert resp.status == 200, resp


def test_missing_audience(standard_envoy, keys):
    payload = claims(ISS_RSA, audience=None)
    resp = send(standard_envoy, keys.mint(ALG, payload))
    assert_invalid_token(resp, "audience")


def test_unknown_key_id(standard_envoy, keys):
    resp = send(standard_envoy, keys.mint(ALG, claims(ISS_RSA), kid="no-such-key"))
    assert_invalid_token(resp, "key")


def test_alg_none(standard_envoy, keys):
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims(ISS_RSA)).encode())
    resp = send(standard_envoy, f"{header}.{payload}.")
    assert_invalid_token(resp, "algorithm")


def test_alg_outside_the_providers_allow_list(standard_envoy, keys):
    # Correctly signed with a published RS384 key, but this provider allows only RS256.
    resp = send(standard_envoy, keys.mint("RS384", claims(ISS_RS256_ONLY)))
    assert_invalid_token(resp, "algorithm")


def test_missing_exp(standard_envoy, keys):
    payload = claims(ISS_RSA)
    del payload["exp"]
    resp = send(standard_envoy, keys.mint(ALG, payload))
    assert_invalid_token(resp, "exp")


def test_exp_as_a_string(standard_envoy, keys):
    resp = send(standard_envoy, rsa_token(keys, exp="9999999999"))
    assert_invalid_token(resp, "exp", "malformed")


def test_two_segments(standard_envoy, keys):
    header, payload, _ = segments(rsa_token(keys))
    resp = send(standard_envoy, f"{header}.{payload}")
    assert_invalid_token(resp, "malformed")


def test_base64_padding_in_a_segment(standard_envoy, keys):
    header, payload, signature = segments(rsa_token(keys))
    assert len(signature) % 4 == 2  # an RSA-2048 signature needs "==" in padded base64
    resp = send(standard_envoy, f"{header}.{payload}.{signature}==")
    assert_invalid_token(resp, "malformed")


def test_token_over_16_kib(standard_envoy, keys):
    token = rsa_token(keys, filler="x" * (17 * 1024))
    assert len(token) > 16 * 1024
    resp = send(standard_envoy, token)
    assert_invalid_token(resp, "large", "long", "size", "malformed")


def test_duplicate_member_in_the_payload(standard_envoy, keys):
    good = claims(ISS_RSA)
    members = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in good.items())
    payload = f'{{{members}, "sub": "admin"}}'.encode()
    header = json.dumps({"alg": ALG, "typ": "JWT", "kid": keys[ALG].kid}).encode()
    resp = send(standard_envoy, keys.sign_raw(ALG, header, payload))
    assert_invalid_token(resp, "malformed", "duplicate")


def test_control_token_made_like_the_duplicate_one_passes(standard_envoy, keys):
    """Shows the hand-made tokens above are refused for their defect, not for how they are made."""
    payload = json.dumps(claims(ISS_RSA)).encode()
    header = json.dumps({"alg": ALG, "typ": "JWT", "kid": keys[ALG].kid}).encode()
    resp = send(standard_envoy, keys.sign_raw(ALG, header, payload))
    assert resp.status == 200, resp


def test_description_does_not_echo_the_token(standard_envoy, keys):
    secret_sub = "sub-4f1c9e-do-not-echo"
    odd_issuer = "https://iss-7d2a.echo-check.test"
    token = keys.mint(ALG, claims(odd_issuer, sub=secret_sub))
    header, payload, signature = segments(token)
    resp = send(standard_envoy, token)
    assert_invalid_token(resp, "issuer")
    answer = resp.body.decode() + (resp.header("www-authenticate") or "")
    for leaked in (secret_sub, odd_issuer, header, payload, signature, signature[:16]):
        assert leaked not in answer, f"response echoes token content {leaked[:40]!r}: {answer}"
