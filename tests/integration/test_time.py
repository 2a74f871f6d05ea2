"""Time claims: the default 60 s clock skew, and `maxLifetimeSeconds`."""

import time

from checks import assert_invalid_token
from plugin_configs import ISS_LIFETIME, ISS_RSA, MAX_LIFETIME
from tokens import claims


def send(envoy, keys, payload):
    return envoy.request("/", headers={"Authorization": f"Bearer {keys.mint('RS256', payload)}"})


def rsa_claims(issuer=ISS_RSA, **times):
    return claims(issuer, **times)


def test_expired_within_the_default_skew_is_accepted(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, keys, rsa_claims(iat=now - 600, exp=now - 30))
    assert resp.status == 200, resp


def test_expired_beyond_the_default_skew_is_refused(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, keys, rsa_claims(iat=now - 600, exp=now - 120))
    assert_invalid_token(resp, "expired")


def test_not_before_within_the_default_skew_is_accepted(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, keys, rsa_claims(nbf=now + 30, iat=now + 30, exp=now + 600))
    assert resp.status == 200, resp


def test_lifetime_within_the_maximum_is_accepted(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, keys, rsa_claims(ISS_LIFETIME, iat=now, exp=now + MAX_LIFETIME))
    assert resp.status == 200, resp


def test_lifetime_over_the_maximum_is_refused(standard_envoy, keys):
    now = int(time.time())
    resp = send(standard_envoy, keys, rsa_claims(ISS_LIFETIME, iat=now, exp=now + MAX_LIFETIME + 120))
    assert_invalid_token(resp, "lifetime")


def test_maximum_lifetime_needs_iat(standard_envoy, keys):
    payload = rsa_claims(ISS_LIFETIME)
    del payload["iat"]
    resp = send(standard_envoy, keys, payload)
    assert_invalid_token(resp, "iat", "lifetime")
