"""Identity to upstream: `outputClaimToHeaders` renders nested claims, lists, numbers, bools and
objects; a header-unsafe claim is never emitted (and the plugin logs the header's name); every
configured identity header, of every provider, is removed from every incoming request,
anonymous ones included."""

import json

import pytest

from rule_checks import log_lines, wait_for_log
from tokens import claims

ISS_MAIN = "https://main.idp.test"
ISS_OTHER = "https://other.idp.test"

MAIN_HEADERS = {
    "x-user": "sub",
    "x-tenant": "org.id",
    "x-roles": "realm_access.roles",
    "x-level": "level",
    "x-ratio": "ratio",
    "x-verified": "email_verified",
    "x-org": "org",
    "x-mixed": "mixed",
    "x-note": "note",
}
NAMESPACED_HEADER = "x-team"
NAMESPACED_CLAIM = "https://example.com/team"
OTHER_HEADER = "x-other-subject"
OTHER_PAYLOAD_HEADER = "x-other-payload"
ALL_IDENTITY_HEADERS = [*MAIN_HEADERS, NAMESPACED_HEADER, OTHER_HEADER, OTHER_PAYLOAD_HEADER]


@pytest.fixture(scope="module")
def envoy(module_envoys, keys):
    outputs = [{"header": header, "claim": claim} for header, claim in MAIN_HEADERS.items()]
    outputs.append({"header": NAMESPACED_HEADER, "claim": [NAMESPACED_CLAIM]})
    config = {
        "providers": [
            {"issuer": ISS_MAIN, "jwks": keys.jwks_string(["RS256"]), "outputClaimToHeaders": outputs},
            {"issuer": ISS_OTHER, "jwks": keys.jwks_string(["ES256"]),
             "outputClaimToHeaders": [{"header": OTHER_HEADER, "claim": "sub"}],
             "outputPayloadToHeader": OTHER_PAYLOAD_HEADER},
        ],
        "rules": [{"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": True}],
    }
    return module_envoys.start(config)


def seen_by_upstream(envoy, keys, path="/", extra_headers=(), **payload):
    token = keys.mint("RS256", claims(ISS_MAIN, audience=None, **payload))
    resp = envoy.request(path, headers=[("Authorization", f"Bearer {token}"), *extra_headers])
    return resp.upstream["headers"]


def test_claims_are_rendered_by_type(envoy, keys):
    seen = seen_by_upstream(
        envoy, keys,
        sub="alice",
        org={"id": "acme", "tier": "gold", "size": 12},
        realm_access={"roles": ["editor", "viewer"]},
        level=3,
        ratio=0.5,
        email_verified=True,
        mixed=["a", 1, False, {"k": "v"}],
        **{NAMESPACED_CLAIM: "payments"},
    )
    assert seen["x-user"] == "alice"
    assert seen["x-tenant"] == "acme"
    assert seen["x-roles"] == "editor,viewer"
    assert seen["x-level"] == "3"
    assert seen["x-ratio"] == "0.5"
    assert seen["x-verified"] == "true"
    assert json.loads(seen["x-org"]) == {"id": "acme", "tier": "gold", "size": 12}
    assert " " not in seen["x-org"], "objects are compact JSON"
    assert seen["x-mixed"] == 'a,1,false,{"k":"v"}'
    assert seen[NAMESPACED_HEADER] == "payments"
    assert "x-note" not in seen  # the token has no `note`


def test_a_single_element_list_and_a_string_render_alike(envoy, keys):
    assert seen_by_upstream(envoy, keys, realm_access={"roles": ["viewer"]})["x-roles"] == "viewer"


@pytest.mark.parametrize("unsafe", ["line one\nline two", "cr\rhere", "nul\x00", "bell\x07", "del\x7f"],
                         ids=["LF", "CR", "NUL", "BEL", "DEL"])
def test_a_claim_with_control_characters_is_not_emitted_and_is_logged(envoy, keys, unsafe):
    logged_before = len(log_lines(envoy, "mesh-oauth", "x-note"))
    seen = seen_by_upstream(envoy, keys, extra_headers=[("x-note", "forged")], sub="bob", note=unsafe)
    assert "x-note" not in seen, "neither the unsafe value nor the client's forged copy may reach upstream"
    assert seen["x-user"] == "bob", "the other headers are still set"
    line = wait_for_log(envoy, "mesh-oauth", "x-note", seen=logged_before)
    assert unsafe not in line


def test_a_list_with_an_unsafe_element_is_not_emitted(envoy, keys):
    seen = seen_by_upstream(envoy, keys, realm_access={"roles": ["viewer", "admin\r\nx-user: root"]})
    assert "x-roles" not in seen
    assert seen["x-user"] == "user-1234"


def test_an_object_claim_holding_a_newline_is_safe_as_json(envoy, keys):
    """Inside compact JSON a newline is the two characters `\\n`: nothing unsafe reaches the header."""
    seen = seen_by_upstream(envoy, keys, org={"id": "a\nb"})
    assert json.loads(seen["x-org"]) == {"id": "a\nb"}
    assert "x-tenant" not in seen  # the nested string itself is unsafe


def test_a_missing_nested_claim_sets_no_header_and_removes_the_forged_one(envoy, keys):
    seen = seen_by_upstream(envoy, keys, extra_headers=[("x-tenant", "forged")], org="acme")
    assert "x-tenant" not in seen


def test_forged_identity_headers_of_every_provider_are_removed_from_a_token_request(envoy, keys):
    forged = [(header, "forged") for header in ALL_IDENTITY_HEADERS]
    seen = seen_by_upstream(envoy, keys, extra_headers=forged, sub="carol")
    assert seen["x-user"] == "carol"
    leaked = [header for header in ALL_IDENTITY_HEADERS if seen.get(header) == "forged"]
    assert not leaked, f"client-set identity headers reached upstream: {leaked}"


@pytest.mark.parametrize("path", ["/public/page", "/"], ids=["anonymous-rule", "preflight"])
def test_forged_identity_headers_are_removed_without_a_token(envoy, path):
    forged = [(header, "forged") for header in ALL_IDENTITY_HEADERS]
    if path == "/":  # a CORS preflight passes without a token too
        resp = envoy.request(path, method="OPTIONS", headers=[
            ("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "GET"), *forged])
    else:
        resp = envoy.request(path, headers=forged)
    seen = resp.upstream["headers"]
    leaked = [header for header in ALL_IDENTITY_HEADERS if header in seen]
    assert not leaked, f"client-set identity headers reached upstream: {leaked}"


def test_forged_identity_headers_in_another_case_are_removed(envoy):
    resp = envoy.request("/public/page", headers=[("X-User", "forged"), ("X-OTHER-PAYLOAD", "forged")])
    seen = resp.upstream["headers"]
    assert "x-user" not in seen and "x-other-payload" not in seen


def test_repeated_forged_identity_headers_are_all_removed(envoy, keys):
    seen = seen_by_upstream(envoy, keys, extra_headers=[("x-level", "1"), ("x-level", "2")], sub="dave")
    assert "x-level" not in seen


def test_a_null_claim_sets_no_header_and_is_not_logged_as_unsafe(envoy, keys):
    logged_before = len(log_lines(envoy, "mesh-oauth", "x-tenant"))
    seen = seen_by_upstream(envoy, keys, extra_headers=[("x-tenant", "forged")], org={"id": None})
    assert "x-tenant" not in seen
    # One worker logs in order: once the next request's line is there, this one's would be too.
    markers_before = len(log_lines(envoy, "mesh-oauth", "x-note"))
    seen_by_upstream(envoy, keys, note="marker\n")
    wait_for_log(envoy, "mesh-oauth", "x-note", seen=markers_before)
    assert len(log_lines(envoy, "mesh-oauth", "x-tenant")) == logged_before, "a null claim is not unsafe"
