"""Multi-tenant issuers (`issuerPattern` + `tenants`, docs/configuration.md): one provider for
the tenants of Microsoft Entra ID, whose tokens all tenants' keys sign alike. One key set is
served at a `common`-style URL, as Entra serves it at
https://login.microsoftonline.com/common/discovery/v2.0/keys, and every token below is signed by
it: what tells tenants apart is the issuer's tenant, the listed `tenants` and the `tid` claim.
Real Envoy and the module; tokens from PyJWT; the audit line, the metrics, the refused
configurations and `mesh-oauth explain` as an operator sees them."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import jwt
import pytest

from checks import error_body, refused_start, www_authenticate
from conftest import REPO
from observe import counters_changed, stats, wait_for_audit
from tokens import KeySet, generate_key

CLI = Path(os.environ.get("MESH_OAUTH_CLI") or REPO / "target" / "debug" / "mesh-oauth")

REALM = "orders"
# GUID-like, lower-case, as Entra writes tenant ids in `iss` and `tid`.
T1 = "3f7a2c1e-9b4d-4e8a-a6c2-1d5e8f0b7a93"  # a customer tenant
T2 = "c05d8e6b-71a4-4f2e-9d3c-8b6a5e4f1027"  # another customer tenant
T3 = "9e2b4a7d-0c6f-4b1e-8a5d-3f7c9e1b2d46"  # an Entra tenant the API does not serve
APP = "6e1c4b9a-2f3d-4a7e-8b5c-0d9e1f2a3b4c"  # the API's application (client) id

V2_PATTERN = "https://login.microsoftonline.com/{tenant}/v2.0"
V1_PATTERN = "https://sts.windows.net/{tenant}/"
V2_KEYS = "/common/discovery/v2.0/keys"
V1_KEYS = "/common/discovery/keys"
TENANT_HEADER = "x-tenant"
BILLING = "/billing/invoices"  # the rule that takes T2 only

UNTRUSTED = "token tenant is not trusted"
MISMATCH = "token tenant (tid) does not match its issuer"
NOT_HERE = "token tenant is not accepted for this resource"


def v2(tenant: str) -> str:
    return V2_PATTERN.replace("{tenant}", tenant)


def v1(tenant: str) -> str:
    return V1_PATTERN.replace("{tenant}", tenant)


def plugin_config(idp) -> dict:
    tenant_header = [{"header": TENANT_HEADER, "claim": "tid"}]
    return {
        "realm": REALM,
        "providers": [
            {"name": "entra", "issuerPattern": V2_PATTERN, "tenants": [T1, T2], "jwksUri": idp.url + V2_KEYS,
             "audiences": [APP], "outputClaimToHeaders": tenant_header},
            # v1.0 tokens carry the App ID URI as aud.
            {"name": "entra-v1", "issuerPattern": V1_PATTERN, "tenants": [T1], "jwksUri": idp.url + V1_KEYS,
             "audiences": [f"api://{APP}"], "outputClaimToHeaders": tenant_header},
        ],
        "rules": [
            {"name": "t2-billing", "match": {"paths": ["/billing/*"]}, "requires": {"tenants": [T2]}},
        ],
        "audit": {"allowedSampleRate": 1},
    }


@pytest.fixture(scope="module")
def entra_keys() -> KeySet:
    """The keys every tenant's tokens are signed with."""
    return KeySet(["RS256"])


@pytest.fixture(scope="module")
def idp(module_idps, entra_keys):
    server = module_idps()
    server.set_json(V2_KEYS, entra_keys.jwks(["RS256"]))
    server.set_json(V1_KEYS, entra_keys.jwks(["RS256"]))
    return server


@pytest.fixture(scope="module")
def envoy(module_envoys, idp):
    return module_envoys.start(plugin_config(idp), idps=[idp])


_TID_OF_ISSUER = object()


def entra_claims(iss: str, tid=_TID_OF_ISSUER, aud: str = APP, version: str = "2.0", **extra) -> dict:
    """An Entra access token's payload; `tid` defaults to the issuer's tenant, None leaves it out."""
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "iat": now, "nbf": now, "exp": now + 3600, "ver": version,
               "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "0b1c9e4a-8f7d-4a4e-9c1b-2e3d4f5a6b7c",
               "azp": "e3a5c7d9-1b2f-4e6a-8c0d-2f4b6d8e0a1c", "scp": "Orders.Read",
               "uti": uuid.uuid4().hex}  # unique: equal tokens would meet the token cache
    if tid is _TID_OF_ISSUER:
        tid = iss.rstrip("/").split("/")[3]
    if tid is not None:
        payload["tid"] = tid
    payload.update(extra)
    return payload


def v2_token(keys: KeySet, tenant: str, **kwargs) -> str:
    return keys.mint("RS256", entra_claims(v2(tenant), **kwargs))


def v1_token(keys: KeySet, tenant: str, **kwargs) -> str:
    return keys.mint("RS256", entra_claims(v1(tenant), aud=f"api://{APP}", version="1.0", **kwargs))


def send(envoy, token: str, path: str = "/orders/7", request_id: str | None = None, **headers: str):
    request_id = request_id or f"tenants-{uuid.uuid4().hex[:12]}"
    resp = envoy.request(path, headers={"Authorization": f"Bearer {token}", "x-request-id": request_id, **headers})
    return resp, request_id


def assert_refused(resp, description: str) -> None:
    """401 invalid_token with exactly this description, in the challenge and in the body."""
    assert resp.status == 401, resp
    assert resp.headers_named("www-authenticate") == [
        f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'], resp
    _, params = www_authenticate(resp)
    assert params["error_description"] == description, resp
    body = error_body(resp)
    assert (body["error"], body["error_description"]) == ("invalid_token", description), resp


def audit_of(envoy, request_id: str) -> dict:
    fields = wait_for_audit(envoy, request_id).fields
    return {name: fields[name] for name in ("decision", "status", "reason", "provider", "iss", "tenant", "rule")}


# --------------------------------------------------------------------------- the listed tenants


@pytest.mark.parametrize("tenant", [T1, T2], ids=["T1", "T2"])
def test_a_listed_tenants_v2_token_passes_and_upstream_sees_its_tenant(envoy, entra_keys, tenant):
    resp, request_id = send(envoy, v2_token(entra_keys, tenant))
    assert resp.status == 200, resp
    assert resp.upstream["headers"][TENANT_HEADER] == tenant
    assert audit_of(envoy, request_id) == {
        "decision": "allow", "status": 200, "reason": "valid", "provider": "entra", "iss": v2(tenant),
        "tenant": tenant, "rule": None}


def test_the_audit_line_of_an_allowed_t2_request_names_the_tenant(envoy, entra_keys):
    resp, request_id = send(envoy, v2_token(entra_keys, T2), request_id="tenants-allowed-t2")
    assert resp.status == 200, resp
    assert wait_for_audit(envoy, request_id).fields == {
        "decision": "allow", "status": 200, "reason": "valid", "rule": None, "provider": "entra",
        "iss": v2(T2), "tenant": T2, "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "client_id": "e3a5c7d9-1b2f-4e6a-8c0d-2f4b6d8e0a1c", "actors": None,
        "kid": entra_keys["RS256"].kid, "alg": "RS256", "cached": False,
        "request_id": "tenants-allowed-t2", "method": "GET", "path": "/orders/7",
    }


def test_a_client_cannot_send_the_tenant_header_itself(envoy, entra_keys):
    resp, _ = send(envoy, v2_token(entra_keys, T1), **{TENANT_HEADER: T2})
    assert resp.status == 200, resp
    assert resp.upstream["headers"][TENANT_HEADER] == T1


# --------------------------------------------------------------------------- other tenants


def test_a_foreign_tenants_token_signed_by_the_shared_keys_is_not_trusted(envoy, entra_keys):
    resp, request_id = send(envoy, v2_token(entra_keys, T3))
    assert_refused(resp, UNTRUSTED)
    assert audit_of(envoy, request_id) == {
        "decision": "deny", "status": 401, "reason": "tenant", "provider": "entra", "iss": v2(T3),
        "tenant": T3, "rule": None}


def test_an_unlisted_tenant_is_refused_before_the_signature_is_checked(envoy, entra_keys):
    forger = generate_key("RS256", kid=entra_keys["RS256"].kid)
    token = jwt.encode(entra_claims(v2(T3)), forger.private, algorithm="RS256", headers={"kid": forger.kid})
    resp, request_id = send(envoy, token)
    assert_refused(resp, UNTRUSTED)
    assert audit_of(envoy, request_id)["reason"] == "tenant"


@pytest.mark.parametrize("tid", [T3, None], ids=["tid-of-another-tenant", "no-tid"])
def test_a_listed_tenants_issuer_with_another_or_no_tid_is_refused(envoy, entra_keys, tid):
    """Entra's rule: every tenant's token is signed by the shared keys, so a token of T3 could
    name T1's issuer; `tid` must be the issuer's tenant."""
    resp, request_id = send(envoy, v2_token(entra_keys, T1, tid=tid))
    assert_refused(resp, MISMATCH)
    assert audit_of(envoy, request_id) == {
        "decision": "deny", "status": 401, "reason": "tenant", "provider": "entra", "iss": v2(T1),
        "tenant": T1, "rule": None}


def test_tid_is_checked_only_once_the_signature_holds(envoy, entra_keys):
    forger = generate_key("RS256", kid=entra_keys["RS256"].kid)
    token = jwt.encode(entra_claims(v2(T1), tid=T3), forger.private, algorithm="RS256", headers={"kid": forger.kid})
    resp, request_id = send(envoy, token)
    assert resp.status == 401, resp
    assert audit_of(envoy, request_id)["reason"] == "signature"


@pytest.mark.parametrize("iss", ["https://login.microsoftonline.com//v2.0",
                                 f"https://login.microsoftonline.com/{T1}/extra/v2.0"],
                         ids=["empty-tenant", "tenant-with-slash"])
def test_an_issuer_whose_tenant_is_not_one_segment_selects_no_provider(envoy, entra_keys, iss):
    resp, request_id = send(envoy, entra_keys.mint("RS256", entra_claims(iss, tid=T1)))
    assert_refused(resp, "token issuer is not trusted")
    assert audit_of(envoy, request_id) == {
        "decision": "deny", "status": 401, "reason": "issuer", "provider": None, "iss": iss,
        "tenant": None, "rule": None}


# --------------------------------------------------------------------------- the v1.0 form


def test_a_v1_token_of_its_listed_tenant_passes(envoy, entra_keys):
    resp, request_id = send(envoy, v1_token(entra_keys, T1))
    assert resp.status == 200, resp
    assert resp.upstream["headers"][TENANT_HEADER] == T1
    assert audit_of(envoy, request_id) == {
        "decision": "allow", "status": 200, "reason": "valid", "provider": "entra-v1", "iss": v1(T1),
        "tenant": T1, "rule": None}


def test_a_v1_token_of_a_tenant_only_the_v2_provider_lists_is_not_trusted(envoy, entra_keys):
    resp, request_id = send(envoy, v1_token(entra_keys, T2))
    assert_refused(resp, UNTRUSTED)
    assert audit_of(envoy, request_id) == {
        "decision": "deny", "status": 401, "reason": "tenant", "provider": "entra-v1", "iss": v1(T2),
        "tenant": T2, "rule": None}


# --------------------------------------------------------------------------- requires.tenants


def test_a_rule_that_takes_one_tenant_passes_it(envoy, entra_keys):
    resp, request_id = send(envoy, v2_token(entra_keys, T2), path=BILLING)
    assert resp.status == 200, resp
    assert resp.upstream["headers"][TENANT_HEADER] == T2
    assert audit_of(envoy, request_id) == {
        "decision": "allow", "status": 200, "reason": "valid", "provider": "entra", "iss": v2(T2),
        "tenant": T2, "rule": "t2-billing"}


@pytest.mark.parametrize("make", [v2_token, v1_token], ids=["v2", "v1"])
def test_a_rule_that_takes_one_tenant_refuses_another_listed_tenant(envoy, entra_keys, make):
    resp, request_id = send(envoy, make(entra_keys, T1), path=BILLING)
    assert_refused(resp, NOT_HERE)
    assert audit_of(envoy, request_id) == {
        "decision": "deny", "status": 401, "reason": "tenant",
        "provider": "entra" if make is v2_token else "entra-v1",
        "iss": v2(T1) if make is v2_token else v1(T1), "tenant": T1, "rule": "t2-billing"}


# --------------------------------------------------------------------------- keys and metrics


def test_the_key_set_is_fetched_once_for_all_tenants(envoy, idp, entra_keys):
    for tenant in (T1, T2, T1, T2):
        resp, _ = send(envoy, v2_token(entra_keys, tenant))
        assert resp.status == 200, resp
    assert idp.count(V2_KEYS) == 1
    seen = stats(envoy)
    assert seen["mesh_oauth.entra.key_fetch.success"] == 1
    assert seen["mesh_oauth.entra.keys_loaded"] == 1
    assert seen.get("mesh_oauth.entra.key_fetch.failure", 0) == 0


def test_metrics_stay_per_provider_whatever_the_tenant(envoy, entra_keys):
    before = stats(envoy)
    for token in (v2_token(entra_keys, T1), v2_token(entra_keys, T2), v2_token(entra_keys, T2)):
        assert send(envoy, token)[0].status == 200
    assert send(envoy, v2_token(entra_keys, T3))[0].status == 401
    assert send(envoy, v2_token(entra_keys, T1, tid=T2))[0].status == 401
    assert send(envoy, v1_token(entra_keys, T1))[0].status == 200
    assert send(envoy, v2_token(entra_keys, T1), path=BILLING)[0].status == 401
    assert counters_changed(before, stats(envoy)) == {
        "mesh_oauth.entra.allowed": 3,
        "mesh_oauth.entra.denied.tenant": 3,
        "mesh_oauth.entra_v1.allowed": 1,
    }


# --------------------------------------------------------------------------- refused configurations


PATTERN_PROVIDER = {"name": "entra", "issuerPattern": V2_PATTERN, "tenants": [T1],
                    "jwksUri": "https://login.microsoftonline.com/common/discovery/v2.0/keys"}
EXACT_PROVIDER = {"name": "entra-t2", "issuer": v2(T2),
                  "jwksUri": f"https://login.microsoftonline.com/{T2}/discovery/v2.0/keys"}


@pytest.mark.parametrize("providers, message", [
    ([PATTERN_PROVIDER, EXACT_PROVIDER],
     "providers[1].issuer: is an issuer the issuerPattern of providers[0]"),
    ([EXACT_PROVIDER, PATTERN_PROVIDER],
     "providers[1].issuerPattern: matches the issuer of providers[0]"),
], ids=["pattern-then-exact", "exact-then-pattern"])
def test_a_pattern_that_matches_another_providers_issuer_is_refused(envoys, providers, message):
    """Even for a tenant the pattern does not list (T2): no `iss` may select two providers."""
    log = refused_start(envoys, {"providers": providers})
    assert "Unable to create Wasm plugin mesh-oauth" in log
    lines = [line for line in log.splitlines() if "wasm log" in line]
    assert any(line.endswith(f"invalid configuration: {message}") for line in lines), lines


# --------------------------------------------------------------------------- explain


def test_explain_names_the_tenant_that_matched(tmp_path, idp, entra_keys):
    assert CLI.is_file() and os.access(CLI, os.X_OK), f"mesh-oauth CLI not found at {CLI} (set MESH_OAUTH_CLI)"
    config_path = tmp_path / "plugin.json"
    config_path.write_text(json.dumps(plugin_config(idp)))
    jwks_path = tmp_path / "keys.json"
    jwks_path.write_text(json.dumps(entra_keys.jwks(["RS256"])))
    result = subprocess.run(
        [str(CLI), "explain", "--config", str(config_path), "--token", v2_token(entra_keys, T1),
         "--jwks", str(jwks_path), "--path", "/orders/7"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    selected = [line for line in lines if "matches with tenant" in line]
    assert len(selected) == 1, result.stdout
    assert selected[0].endswith(f'issuerPattern "{V2_PATTERN}" matches with tenant "{T1}": selected'), result.stdout
    assert any(line.strip() == f'tenant "{T1}" is listed; the token\'s tid is "{T1}" (checked once the signature holds)'
               for line in lines), result.stdout
    assert any(line.endswith(f'issuerPattern "{V1_PATTERN}" does not match') for line in lines), result.stdout
    assert "final: allowed: the request goes on upstream" in lines, result.stdout
    assert f"  upstream: set {TENANT_HEADER}: {T1}" in lines, result.stdout
