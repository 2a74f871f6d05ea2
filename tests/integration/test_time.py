"""Time claims: the default 60 s clock skew, and `maxLifetimeSeconds`."""

import time

import pytest

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


def test_without_iat_the_lifetime_left_is_bounded(standard_envoy, keys):
    now = int(time.time())
    payload = rsa_claims(ISS_LIFETIME, exp=now + MAX_LIFETIME - 60)
    del payload["iat"]
    assert send(standard_envoy, keys, payload).status == 200
    payload["exp"] = now + MAX_LIFETIME + 120
    assert_invalid_token(send(standard_envoy, keys, payload), "lifetime")


WEEK_S = 7 * 24 * 3600


def test_the_default_lifetime_cap_is_seven_days(standard_envoy, keys):
    """A provider without `maxLifetimeSeconds`: tokens living a week pass, longer ones do not."""
    now = int(time.time())
    assert send(standard_envoy, keys, rsa_claims(iat=now, exp=now + WEEK_S)).status == 200
    assert_invalid_token(send(standard_envoy, keys, rsa_claims(iat=now, exp=now + WEEK_S + 120)), "lifetime")


@pytest.mark.parametrize("exp", [10**30, 1e300, 2**64, 253402300800], ids=["1e30", "1e300", "2^64", "year-10000"])
def test_a_token_that_never_expires_is_malformed(standard_envoy, keys, exp):
    now = int(time.time())
    resp = send(standard_envoy, keys, rsa_claims(iat=now, exp=exp))
    assert_invalid_token(resp, "beyond year 9999")
