"""A realistic configuration with tokens shaped like the three IdPs users bring: Keycloak
(`realm_access.roles`, `scope` string, `azp`), Auth0 (namespaced `https://…/roles` list claim,
`permissions`, `scope`) and Microsoft Entra ID v2 (`scp` space-separated, `roles` list, `aud`
an app id GUID, issuer `https://login.microsoftonline.com/<tenant>/v2.0`). Each IdP has its own
key (as in reality), a configured realm, and requests that match no rule are denied."""

import uuid

import pytest

from checks import assert_invalid_token, assert_missing_token
from rule_checks import assert_forbidden, assert_insufficient_scope
from tokens import KeySet, claims

REALM = "shop"

KEYCLOAK_ISSUER = "https://sso.shop.example.com/realms/shop"
KEYCLOAK_CLIENT = "shop-web"

AUTH0_ISSUER = "https://shop.eu.auth0.com/"
AUTH0_AUDIENCE = "https://api.shop.example.com"
AUTH0_ROLES = "https://shop.example.com/roles"

ENTRA_TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
ENTRA_ISSUER = f"https://login.microsoftonline.com/{ENTRA_TENANT}/v2.0"
ENTRA_APP_ID = "c44b4083-3bb0-49c1-b47d-974e53cbdf3c"

RULES = [
    {"name": "health", "match": {"paths": ["/healthz"], "methods": ["GET"]}, "allowAnonymous": True},
    {"name": "admin", "match": {"paths": ["/admin/*"]}, "requiresAny": [
        {"providers": ["keycloak"], "claims": [{"claim": "realm_access.roles", "anyOf": ["shop-admin"]}]},
        {"providers": ["auth0"], "claims": [{"claim": [AUTH0_ROLES], "anyOf": ["admin"]}]},
        {"providers": ["entra"], "claims": [{"claim": "roles", "anyOf": ["Shop.Admin"]}]},
    ]},
    {"name": "orders-write", "match": {"paths": ["/orders", "/orders/*"], "methods": ["POST", "PUT", "DELETE"]},
     "requiresAny": [
         {"providers": ["keycloak"], "scopes": ["orders:write"]},
         {"providers": ["auth0"], "claims": [{"claim": "permissions", "anyOf": ["write:orders"]}]},
         {"providers": ["entra"], "scopes": ["Orders.ReadWrite"]},
     ]},
    {"name": "orders-read", "match": {"paths": ["/orders", "/orders/*"], "methods": ["GET"]},
     "requiresAny": [
         {"providers": ["keycloak"], "scopes": ["orders:read"]},
         {"providers": ["auth0"], "scopes": ["read:orders"]},
         {"providers": ["entra"], "scopes": ["Orders.Read"]},
     ]},
    {"name": "partner-reports", "match": {"paths": ["/reports/*"], "hosts": ["partners.shop.example.com"]},
     "requires": {"providers": ["auth0"],
                  "claims": [{"claim": "permissions", "allOf": ["read:reports", "export:reports"]}]}},
    {"name": "batch", "match": {"paths": ["/batch/*"]},
     "requires": {"providers": ["entra"], "claims": [{"claim": "roles", "allOf": ["Batch.Run"]},
                                                     {"claim": "azp", "anyOf": [ENTRA_APP_ID]}]}},
]


@pytest.fixture(scope="module")
def idp_keys():
    """One RS256 key per IdP: a token signed by another IdP's key must fail."""
    return {name: KeySet(["RS256"]) for name in ("keycloak", "auth0", "entra")}


@pytest.fixture(scope="module")
def envoy(module_envoys, idp_keys):
    config = {
        "realm": REALM,
        "unmatched": "deny",
        "providers": [
            {"name": "keycloak", "issuer": KEYCLOAK_ISSUER, "audiences": ["account", "orders-api"],
             "jwks": idp_keys["keycloak"].jwks_string(["RS256"]),
             "outputClaimToHeaders": [{"header": "x-user", "claim": "preferred_username"},
                                      {"header": "x-client", "claim": "azp"},
                                      {"header": "x-roles", "claim": "realm_access.roles"}]},
            {"name": "auth0", "issuer": AUTH0_ISSUER, "audiences": [AUTH0_AUDIENCE],
             "jwks": idp_keys["auth0"].jwks_string(["RS256"]),
             "outputClaimToHeaders": [{"header": "x-user", "claim": "sub"},
                                      {"header": "x-roles", "claim": [AUTH0_ROLES]}]},
            {"name": "entra", "issuer": ENTRA_ISSUER, "audiences": [ENTRA_APP_ID, f"api://{ENTRA_APP_ID}"],
             "jwks": idp_keys["entra"].jwks_string(["RS256"]),
             "outputClaimToHeaders": [{"header": "x-user", "claim": "oid"},
                                      {"header": "x-roles", "claim": "roles"}]},
        ],
        "rules": RULES,
    }
    return module_envoys.start(config)


def keycloak_token(idp_keys, roles=("offline_access", "uma_authorization"), scope="openid profile email", **extra):
    payload = claims(
        KEYCLOAK_ISSUER, audience=["orders-api", "account"],
        typ="Bearer", azp=KEYCLOAK_CLIENT, sid=str(uuid.uuid4()), acr="1",
        realm_access={"roles": list(roles)},
        resource_access={"account": {"roles": ["manage-account", "view-profile"]}},
        scope=scope, email_verified=True, preferred_username="alice", email="alice@shop.example.com",
    )
    payload.update(extra)
    return idp_keys["keycloak"].mint("RS256", payload, headers={"typ": "JWT"})


def auth0_token(idp_keys, namespaced_roles=(), permissions=(), scope="openid profile", **extra):
    payload = claims(
        AUTH0_ISSUER, audience=[AUTH0_AUDIENCE, "https://shop.eu.auth0.com/userinfo"],
        sub="auth0|64f1c2a7e4b0c1d2e3f4a5b6", azp="Xq3Yb8Wn2Lk9Pz1Rt5Uv7Ms4Jd6Hf0Ga",
        scope=scope, permissions=list(permissions), **{AUTH0_ROLES: list(namespaced_roles)},
    )
    payload.update(extra)
    return idp_keys["auth0"].mint("RS256", payload, headers={"typ": "at+jwt"})


def entra_token(idp_keys, scp=None, roles=None, **extra):
    payload = claims(
        ENTRA_ISSUER, audience=ENTRA_APP_ID,
        ver="2.0", tid=ENTRA_TENANT, oid="0b1c9e4a-8f7d-4a4e-9c1b-2e3d4f5a6b7c",
        azp="e3a5c7d9-1b2f-4e6a-8c0d-2f4b6d8e0a1c", azpacr="1", sub="AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        name="Alice Example", preferred_username="alice@shop.example.com",
    )
    if scp is not None:
        payload["scp"] = scp
    if roles is not None:
        payload["roles"] = roles
    payload.update(extra)
    return idp_keys["entra"].mint("RS256", payload)


def send(envoy, token=None, path="/orders", method="GET", host="shop.example.com"):
    headers = {"Host": host}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return envoy.request(path, method=method, headers=headers, body=b"{}" if method in ("POST", "PUT") else None)


# --------------------------------------------------------------------------- Keycloak


def test_keycloak_read_with_the_scope_string(envoy, idp_keys):
    resp = send(envoy, keycloak_token(idp_keys, scope="openid profile orders:read email"), "/orders/42")
    seen = resp.upstream["headers"]
    assert (seen["x-user"], seen["x-client"]) == ("alice", KEYCLOAK_CLIENT)
    assert seen["x-roles"] == "offline_access,uma_authorization"
    assert "authorization" not in seen


def test_keycloak_write_without_its_scope_names_it_in_the_configured_realm(envoy, idp_keys):
    resp = send(envoy, keycloak_token(idp_keys, scope="openid orders:read"), "/orders", method="POST")
    assert_insufficient_scope(resp, REALM, "orders:write")


def test_keycloak_admin_by_realm_role(envoy, idp_keys):
    ok = keycloak_token(idp_keys, roles=["shop-admin", "offline_access"])
    assert send(envoy, ok, "/admin/users").status == 200
    # A client role of the same name is another claim: it does not make an admin.
    not_admin = keycloak_token(idp_keys, resource_access={"shop-web": {"roles": ["shop-admin"]}})
    assert_insufficient_scope(send(envoy, not_admin, "/admin/users"), REALM, None)


def test_keycloak_token_for_another_audience(envoy, idp_keys):
    token = keycloak_token(idp_keys, aud="broker", scope="orders:read")
    assert_invalid_token(send(envoy, token, "/orders/42"), "audience")


# --------------------------------------------------------------------------- Auth0


def test_auth0_read_with_the_scope_string(envoy, idp_keys):
    resp = send(envoy, auth0_token(idp_keys, namespaced_roles=["customer"], scope="openid read:orders"), "/orders/42")
    seen = resp.upstream["headers"]
    assert seen["x-user"] == "auth0|64f1c2a7e4b0c1d2e3f4a5b6"
    assert seen["x-roles"] == "customer"


def test_auth0_write_by_permission(envoy, idp_keys):
    ok = auth0_token(idp_keys, permissions=["read:orders", "write:orders"])
    assert send(envoy, ok, "/orders/42", method="PUT").status == 200
    # `permissions` is a claim here, not a scope claim: the same value in `scope` does not count.
    scope_only = auth0_token(idp_keys, scope="write:orders", permissions=["read:orders"])
    assert_insufficient_scope(send(envoy, scope_only, "/orders/42", method="PUT"), REALM, None)


def test_auth0_admin_by_the_namespaced_roles_claim(envoy, idp_keys):
    assert send(envoy, auth0_token(idp_keys, namespaced_roles=["support", "admin"]), "/admin/users").status == 200
    assert_insufficient_scope(send(envoy, auth0_token(idp_keys, namespaced_roles=["support"]), "/admin/users"), REALM, None)
    # The same roles under an unnamespaced `roles` claim are not the configured claim.
    plain_roles = auth0_token(idp_keys, roles=["admin"])
    assert_insufficient_scope(send(envoy, plain_roles, "/admin/users"), REALM, None)


@pytest.mark.parametrize("permissions, passes", [
    (["read:reports", "export:reports", "read:orders"], True),
    (["read:reports"], False),
])
def test_auth0_partner_reports_need_all_permissions_on_the_partner_host(envoy, idp_keys, permissions, passes):
    resp = send(envoy, auth0_token(idp_keys, permissions=permissions), "/reports/2024", host="partners.shop.example.com")
    if passes:
        assert resp.status == 200, resp
    else:
        assert_insufficient_scope(resp, REALM, None)


def test_reports_on_another_host_match_no_rule_and_are_denied(envoy, idp_keys):
    token = auth0_token(idp_keys, permissions=["read:reports", "export:reports"])
    assert_forbidden(send(envoy, token, "/reports/2024", host="shop.example.com"))


def test_a_keycloak_token_on_the_auth0_only_route_is_invalid_there(envoy, idp_keys):
    resp = send(envoy, keycloak_token(idp_keys, scope="openid"), "/reports/2024", host="partners.shop.example.com")
    assert_invalid_token(resp, "issuer")


# --------------------------------------------------------------------------- Entra ID


def test_entra_read_with_the_scp_string(envoy, idp_keys):
    resp = send(envoy, entra_token(idp_keys, scp="User.Read Orders.Read"), "/orders")
    seen = resp.upstream["headers"]
    assert seen["x-user"] == "0b1c9e4a-8f7d-4a4e-9c1b-2e3d4f5a6b7c"
    assert "x-roles" not in seen


def test_entra_write_needs_its_own_scope(envoy, idp_keys):
    resp = send(envoy, entra_token(idp_keys, scp="Orders.Read"), "/orders/7", method="DELETE")
    assert_insufficient_scope(resp, REALM, "Orders.ReadWrite")
    assert send(envoy, entra_token(idp_keys, scp="Orders.Read Orders.ReadWrite"), "/orders/7",
                method="DELETE").status == 200


def test_entra_app_roles(envoy, idp_keys):
    admin = entra_token(idp_keys, roles=["Shop.Admin", "Batch.Run"])
    resp = send(envoy, admin, "/admin/users")
    assert resp.upstream["headers"]["x-roles"] == "Shop.Admin,Batch.Run"
    assert_insufficient_scope(send(envoy, entra_token(idp_keys, roles=["Shop.Reader"]), "/admin/users"), REALM, None)


def test_entra_claims_conditions_all_hold(envoy, idp_keys):
    ok = entra_token(idp_keys, roles=["Batch.Run"], azp=ENTRA_APP_ID)
    assert send(envoy, ok, "/batch/run").status == 200
    other_client = entra_token(idp_keys, roles=["Batch.Run"])
    assert_insufficient_scope(send(envoy, other_client, "/batch/run"), REALM, None)


def test_entra_v1_issuer_is_not_the_v2_issuer(envoy, idp_keys):
    token = entra_token(idp_keys, scp="Orders.Read", iss=f"https://sts.windows.net/{ENTRA_TENANT}/")
    assert_invalid_token(send(envoy, token), "issuer")


def test_entra_application_id_uri_audience(envoy, idp_keys):
    token = entra_token(idp_keys, scp="Orders.Read", aud=f"api://{ENTRA_APP_ID}")
    assert send(envoy, token).status == 200


# --------------------------------------------------------------------------- across IdPs


def test_a_token_signed_with_another_idps_key_is_invalid(envoy, idp_keys):
    """Claims of an Entra token, signed by the Keycloak key (the `kid` is Keycloak's)."""
    payload = claims(ENTRA_ISSUER, audience=ENTRA_APP_ID, scp="Orders.Read")
    forged = idp_keys["keycloak"].mint("RS256", payload)
    assert_invalid_token(send(envoy, forged), "key", "signature")


def test_one_idps_scope_is_not_another_idps_scope(envoy, idp_keys):
    """Keycloak's `orders:read` is not what the Entra requirement asks for, and vice versa."""
    resp = send(envoy, entra_token(idp_keys, scp="orders:read"))
    assert_insufficient_scope(resp, REALM, "Orders.Read")
    resp = send(envoy, keycloak_token(idp_keys, scope="Orders.Read"))
    assert_insufficient_scope(resp, REALM, "orders:read")


def test_health_is_anonymous_and_everything_else_unmatched_is_denied(envoy, idp_keys):
    assert send(envoy, None, "/healthz").status == 200
    assert_forbidden(send(envoy, None, "/healthz", method="POST"))
    assert_forbidden(send(envoy, keycloak_token(idp_keys, roles=["shop-admin"]), "/internal"))


def test_no_token_on_a_rule_route_is_a_challenge_in_the_configured_realm(envoy):
    assert_missing_token(send(envoy, None, "/orders"), REALM)
