"""Istio's security resources turned into the Envoy HTTP filters istiod gives a sidecar's inbound
listener: `RequestAuthentication` → `envoy.filters.http.jwt_authn`, `AuthorizationPolicy` →
`envoy.filters.http.rbac` (DENY policies, then ALLOW), so plain Envoy decides a request as an
Istio sidecar would and the parity test has a reference to compare mesh-oauth with.

Our own Python, written from reading istiod (github.com/istio/istio, master of 2026-08):
pilot/pkg/security/authn/policy_applier.go for JWT, and pilot/pkg/security/authz/{builder,
model, matcher} for authorization; each function names the file whose rule it follows. Istio
reads JWT claims from jwt_authn's own dynamic metadata (`payload_in_metadata: payload`, matchers
built with `useExtendedJwt`), which is what upstream Envoy has, so nothing here needs Istio's
proxy build. Not translated (rejected with `Unsupported`): CUSTOM policies, `targetRef(s)`,
`experimental.envoy.filters.*` keys; AUDIT policies only log in Istio and are dropped."""

from __future__ import annotations

import ipaddress
import json
import urllib.request
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

import yaml

JWT_AUTHN = "envoy.filters.http.jwt_authn"
# pilot/pkg/xds/filters/filters.go: EnvoyJwtFilterPayload, where jwt_authn puts the payload.
PAYLOAD_KEY = "payload"
SPIFFE_PREFIX = "spiffe://"
ROOT_NAMESPACE = "istio-system"

Json = dict[str, Any]


class Unsupported(ValueError):
    """A resource this translator does not model; the test must not silently drop it."""


class _Invalid(ValueError):
    """A value istiod cannot translate (pilot/pkg/security/authz/model/generator.go errors); what
    happens next depends on the action (model.go, rule.checkError)."""


def load_documents(text: str) -> list[Json]:
    """The objects of a multi-document Kubernetes YAML, as `kubectl apply -f` takes them."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def applies_to(resource: Mapping[str, Any], namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether a RequestAuthentication/AuthorizationPolicy selects the workload: same namespace
    (or the root namespace) and a `selector.matchLabels` that the labels contain, or none
    (pilot/pkg/model/policyattachment.go)."""
    meta = resource.get("metadata") or {}
    if meta.get("namespace", "default") not in (namespace, ROOT_NAMESPACE):
        return False
    spec = resource.get("spec") or {}
    if spec.get("targetRef") or spec.get("targetRefs"):
        raise Unsupported("targetRef(s) select waypoints and gateways, not sidecars")
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


# --------------------------------------------------------------------------- jwt_authn


def fetch_jwks(uri: str, timeout: float = 5.0) -> str:
    """The JWKS document at `uri`, fetched as istiod's JwksResolver does in its default mode."""
    with urllib.request.urlopen(uri, timeout=timeout) as resp:  # noqa: S310 - test IdP on loopback
        return resp.read().decode()


def istio_cluster_for(uri: str) -> str:
    """`outbound|PORT||HOST`, the cluster a ServiceEntry for the key server gives
    (policy_applier.go with model.BuildSubsetKey; port 443/80 by scheme when absent)."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"outbound|{port}||{parts.hostname}"


def _duration_seconds(text: str | None, default: float) -> str:
    if not text:
        return f"{default:g}s"
    return text  # Istio takes a protobuf Duration string ("5s"), which Envoy's JSON takes too


def jwt_authn_filter(
    request_authentications: Iterable[Mapping[str, Any]],
    jwks_fetch: Literal["istiod", "envoy"] = "istiod",
    fetch: Callable[[str], str] = fetch_jwks,
) -> Json | None:
    """The jwt_authn filter for every jwtRule of the RequestAuthentications that select the
    workload, following pilot/pkg/security/authn/policy_applier.go (newPolicyApplier,
    convertToEnvoyJwtConfig):

    - rules sorted by issuer; provider `origins-<i>` each, with `issuer`, `audiences`, `forward`
      (forwardOriginalToken), `forward_payload_header`, `claim_to_headers`, the token locations
      given (none given: jwt_authn's defaults, `Authorization: Bearer` and the `access_token`
      query parameter), `payload_in_metadata: payload`, and `normalize_payload_in_metadata`
      splitting `permission`, `scope` and the rule's `spaceDelimitedClaims`;
    - keys: inline `jwks`, else from `jwksUri`. `jwks_fetch="istiod"` (Istio's default,
      PILOT_JWT_ENABLE_REMOTE_JWKS=false): fetched now and inlined as `local_jwks`, as istiod's
      JwksResolver.BuildLocalJwks; `"envoy"`: `remote_jwks` through the cluster
      `outbound|PORT||HOST`, cached 5 minutes, timeout from the rule (default 5 s);
    - one requirement for every path: with one provider `{provider OR allow_missing}`; with
      several, `P1 OR P2 … OR AND({P1 OR allow_missing}, {P2 OR allow_missing} …)` — a request
      without a token passes (it just has no principal), a request with an invalid token is
      refused with 401;
    - `bypass_cors_preflight: true`.
    None when no jwtRule applies (istiod adds no filter)."""
    rules: list[Mapping[str, Any]] = []
    for resource in request_authentications:
        rules.extend((resource.get("spec") or {}).get("jwtRules") or [])
    if not rules:
        return None
    rules.sort(key=lambda rule: rule.get("issuer", ""))
    providers: dict[str, Json] = {}
    for i, rule in enumerate(rules):
        provider: Json = {
            "issuer": rule.get("issuer", ""),
            "payload_in_metadata": PAYLOAD_KEY,
            "normalize_payload_in_metadata": {
                "space_delimited_claims": sorted({"permission", "scope", *(rule.get("spaceDelimitedClaims") or [])}),
            },
        }
        if rule.get("audiences"):
            provider["audiences"] = list(rule["audiences"])
        if rule.get("forwardOriginalToken"):
            provider["forward"] = True
        if rule.get("outputPayloadToHeader"):
            provider["forward_payload_header"] = rule["outputPayloadToHeader"]
        if rule.get("outputClaimToHeaders"):
            provider["claim_to_headers"] = [{"header_name": c["header"], "claim_name": c["claim"]}
                                            for c in rule["outputClaimToHeaders"]]
        if rule.get("fromHeaders"):
            provider["from_headers"] = [{"name": h["name"], **({"value_prefix": h["prefix"]} if h.get("prefix") else {})}
                                        for h in rule["fromHeaders"]]
        if rule.get("fromParams"):
            provider["from_params"] = list(rule["fromParams"])
        if rule.get("fromCookies"):
            provider["from_cookies"] = list(rule["fromCookies"])
        timeout = _duration_seconds(rule.get("timeout"), 5)
        if rule.get("jwks"):
            provider["local_jwks"] = {"inline_string": rule["jwks"]}
        elif rule.get("jwksUri") and jwks_fetch == "envoy":
            provider["remote_jwks"] = {
                "http_uri": {"uri": rule["jwksUri"], "cluster": istio_cluster_for(rule["jwksUri"]), "timeout": timeout},
                "cache_duration": "300s",
            }
        elif rule.get("jwksUri"):
            provider["local_jwks"] = {"inline_string": fetch(rule["jwksUri"])}
        else:
            raise Unsupported(f"jwtRule for {rule.get('issuer')!r}: OpenID discovery is not modelled; give jwksUri")
        providers[f"origins-{i}"] = provider

    names = list(providers)
    inner = [{"requires_any": {"requirements": [{"provider_name": n}, {"allow_missing": {}}]}} for n in names]
    if len(names) == 1:
        requires = inner[0]
    else:
        requires = {"requires_any": {"requirements": [
            *({"provider_name": n} for n in names),
            {"requires_all": {"requirements": inner}},
        ]}}
    return {
        "name": JWT_AUTHN,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": providers,
            "rules": [{"match": {"prefix": "/"}, "requires": requires}],
            "bypass_cors_preflight": True,
        },
    }


# --------------------------------------------------------------------------- string matchers
# pilot/pkg/security/authz/matcher/string.go


def _quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta: a backslash before each of `\\.+*?()|[]{}^$` (RE2 syntax)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$" else c for c in text)


def _regex(pattern: str) -> Json:
    return {"safe_regex": {"regex": pattern}}


def _exact(value: str, ignore_case: bool = False) -> Json:
    return {"exact": value, **({"ignore_case": True} if ignore_case else {})}


def _prefix(value: str, ignore_case: bool = False) -> Json:
    return {"prefix": value, **({"ignore_case": True} if ignore_case else {})}


def _suffix(value: str, ignore_case: bool = False) -> Json:
    return {"suffix": value, **({"ignore_case": True} if ignore_case else {})}


def string_matcher(value: str, prefix: str = "") -> Json:
    """string.go StringMatcherWithPrefix: `*` → regex `.+` (present and non-empty; `prefix`
    ignored); `*x` → suffix x (with a prefix: regex prefix.*x); `x*` → prefix prefix+x; else
    exact prefix+x. Case-sensitive."""
    if value == "*":
        return _regex(".+")
    if value.startswith("*"):
        if not prefix:
            return _suffix(value[1:])
        return _regex(prefix + ".*" + _quote_meta(value[1:]))
    if value.endswith("*"):
        return _prefix(prefix + value[:-1])
    return _exact(prefix + value)


def _value_string(matcher: Json) -> Json:
    return {"string_match": matcher}


def _value_or(matchers: list[Json]) -> Json:
    """string.go OrMatcher: one matcher as is, several in an or_match."""
    return matchers[0] if len(matchers) == 1 else {"or_match": {"value_matchers": matchers}}


def _string_or(values: Sequence[str]) -> Json:
    """string.go StringOrMatcher."""
    return _value_or([_value_string(string_matcher(v)) for v in values])


# --------------------------------------------------------------------------- header matchers
# pilot/pkg/security/authz/matcher/header.go


def header_matcher(name: str, value: str) -> Json:
    """header.go HeaderMatcher: `*` → present; `*x` → suffix; `x*` → prefix; else exact;
    the value compared case-sensitively."""
    if value == "*":
        return {"name": name, "present_match": True}
    if value.startswith("*"):
        return {"name": name, "string_match": _suffix(value[1:])}
    if value.endswith("*"):
        return {"name": name, "string_match": _prefix(value[:-1])}
    return {"name": name, "string_match": _exact(value)}


def host_matcher(value: str) -> Json:
    """header.go HostMatcher: as HeaderMatcher on `:authority`, ignoring case (CVE-2021-39155).
    No `:port` variant is added: `httpbin.foo` does not match `Host: httpbin.foo:8000` (Istio's
    documented advice is to list `httpbin.foo:*` too)."""
    if value == "*":
        return {"name": ":authority", "present_match": True}
    if value.startswith("*"):
        return {"name": ":authority", "string_match": _suffix(value[1:], True)}
    if value.endswith("*"):
        return {"name": ":authority", "string_match": _prefix(value[:-1], True)}
    return {"name": ":authority", "string_match": _exact(value, True)}


# --------------------------------------------------------------------------- metadata matchers
# pilot/pkg/security/authz/matcher/metadata.go and model/util.go


def _jwt_claim_string(claim: str, matcher: Json) -> Json:
    """util.go MetadataStringMatcherForJWTClaim: jwt_authn metadata `payload.<claim>` as a string."""
    return {"filter": JWT_AUTHN, "path": [{"key": PAYLOAD_KEY}, {"key": claim}], "value": _value_string(matcher)}


def _jwt_claims_list(claims: Sequence[str], value: Json) -> Json:
    """util.go MetadataListValueMatcherForJWTClaims → metadata.go MetadataListValueMatcher with
    useExtendedJwt: the value at `payload.<c1>.<c2>…` matches when it is a list with an element
    that matches (list_match one_of), or is itself a matching value (or_match of both)."""
    return {
        "filter": JWT_AUTHN,
        "path": [{"key": k} for k in (PAYLOAD_KEY, *claims)],
        "value": {"or_match": {"value_matchers": [{"list_match": {"one_of": value}}, value]}},
    }


# --------------------------------------------------------------------------- RBAC building blocks
# pilot/pkg/security/authz/model/permission.go and principal.go


def _perm_and(rules: list[Json]) -> Json:
    return {"and_rules": {"rules": rules}}


def _perm_or(rules: list[Json]) -> Json:
    return {"or_rules": {"rules": rules}}


def _princ_and(ids: list[Json]) -> Json:
    return {"and_ids": {"ids": ids}}


def _princ_or(ids: list[Json]) -> Json:
    return {"or_ids": {"ids": ids}}


def _authenticated(matcher: Json) -> Json:
    """principal.go principalAuthenticated with useAuthenticated (sidecars; waypoints use filter
    state): the peer certificate's URI SAN, else DNS SAN, else subject, matched by Envoy."""
    return {"authenticated": {"principal_name": matcher}}


def cidr_range(value: str) -> Json:
    """pilot/pkg/networking/util/util.go AddrStrToCidrRange: an address is /32 (/128), a CIDR
    keeps its prefix length; the address is passed as written."""
    try:
        if "/" in value:
            address, length = value.split("/", 1)
            ip = ipaddress.ip_address(address)
            prefix_len = int(length)
            if not 0 <= prefix_len <= ip.max_prefixlen:
                raise ValueError(value)
        else:
            ip = ipaddress.ip_address(value)
            prefix_len = ip.max_prefixlen
    except ValueError as exc:
        raise _Invalid(f"invalid IP or CIDR {value!r}") from exc
    return {"address_prefix": str(ip), "prefix_len": prefix_len}


def _port(value: str) -> int:
    """util.go convertToPort."""
    try:
        port = int(value, 10)
    except ValueError as exc:
        raise _Invalid(f"invalid port {value!r}") from exc
    if not 0 <= port <= 65535:
        raise _Invalid(f"invalid port {value!r}")
    return port


def _brackets(text: str) -> str:
    """util.go extractNameInBrackets."""
    if not (text.startswith("[") and text.endswith("]")):
        raise _Invalid(f"expecting format [<NAME>], but found {text}")
    return text[1:-1]


def _nested_brackets(text: str) -> list[str]:
    """util.go extractNameInNestedBrackets: `[a][b]` → [a, b]; anything else is one name."""
    names: list[str] = []
    begin = 0
    while begin < len(text):
        if text[begin] != "[":
            return [_brackets(text)]
        end = text.find("]", begin + 1)
        inner_open = text.find("[", begin + 1)
        if end == -1 or (inner_open != -1 and inner_open < end):
            return [_brackets(text)]
        names.append(text[begin + 1:end])
        begin = end + 1
    return names


# --------------------------------------------------------------------------- generators
# pilot/pkg/security/authz/model/generator.go: one value → one matcher (simple), or all values
# → one matcher (extended, for the JWT attributes).


def _service_account_regex(default_namespace: str, value: str) -> str:
    namespace, sep, account = value.partition("/")
    if not sep:
        namespace, account = default_namespace, value
    return f"spiffe://.+/ns/{_quote_meta(namespace)}/(.+/|)sa/{_quote_meta(account)}(/.+)?"


def _trust_domain_matcher(value: str) -> Json:
    if value == "*":
        return _prefix(SPIFFE_PREFIX)
    if "*" not in value:
        return _prefix(f"{SPIFFE_PREFIX}{value}/")
    head, tail = value.split("*", 1)
    return _regex(f"spiffe://{_quote_meta(head)}[^/]*{_quote_meta(tail)}/.*")


def _namespace_principal(value: str) -> Json:
    """srcNamespaceGenerator: regex `.*/ns/<ns>/.*` on the peer principal, `*` → `.*`."""
    pattern = ".*".join(_quote_meta(part) for part in value.split("*"))
    return _authenticated(_regex(f".*/ns/{pattern}/.*"))


def _request_principals(values: Sequence[str]) -> Json | None:
    """requestPrincipalGenerator: each `iss/sub` (split at the last `/`, as issuers are often
    URLs) becomes AND(metadata payload.iss, metadata payload.sub), with `*` handling: `*` → both
    `.+`; `*x` → with a `/`: iss `*` → `.+`, else iss suffix, and sub exact; without: iss `.+`,
    sub suffix x; `x*` → with a `/`: iss exact and sub `*` → `.+`, else sub prefix; without: iss
    prefix x, sub `.+`; else both exact. Several values: OR."""
    match_any = _regex(".+")
    alternatives = []
    for value in values:
        idx = value.rfind("/")
        found = idx >= 0
        iss, sub = (value[:idx], value[idx + 1:]) if found else (value, "")
        if value == "*":
            m_iss, m_sub = match_any, match_any
        elif value.startswith("*"):
            if found:
                m_iss = match_any if iss == "*" else _suffix(iss[1:])
                m_sub = _exact(sub)
            else:
                m_iss, m_sub = match_any, _suffix(value[1:])
        elif value.endswith("*"):
            if found:
                m_iss = _exact(iss)
                m_sub = match_any if sub == "*" else _prefix(sub[:-1])
            else:
                m_iss, m_sub = _prefix(value[:-1]), match_any
        else:
            m_iss, m_sub = _exact(iss), _exact(sub)
        alternatives.append(_princ_and([{"metadata": _jwt_claim_string("iss", m_iss)},
                                        {"metadata": _jwt_claim_string("sub", m_sub)}]))
    if not alternatives:
        return None
    return alternatives[0] if len(alternatives) == 1 else _princ_or(alternatives)


class _Gen:
    """One attribute's translation: `simple(value)` per value, or `extended(values)` for all."""

    def __init__(self, side: Literal["permission", "principal"],
                 simple: Callable[[str], Json] | None = None,
                 extended: Callable[[Sequence[str]], Json | None] | None = None) -> None:
        self.side = side
        self.simple = simple
        self.extended = extended


def _request_header(key: str) -> Callable[[str], Json]:
    def build(value: str) -> Json:
        return {"header": header_matcher(_brackets(key[len("request.headers"):]), value)}
    return build


def _claims(key: str) -> Callable[[Sequence[str]], Json]:
    def build(values: Sequence[str]) -> Json:
        names = _nested_brackets(key[len("request.auth.claims"):])
        return {"metadata": _jwt_claims_list(names, _string_or(values))}
    return build


def _path_permission(value: str) -> Json:
    """pathGenerator: a path template (`{*}`, `{**}`) → uri_template (matcher/template.go);
    else url_path (the path without query) with string_matcher."""
    if "{*}" in value or "{**}" in value:
        template = value.replace("{**}", "**").replace("{*}", "*")
        return {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig",
            "path_template": template}}}
    return {"url_path": {"path": string_matcher(value)}}


def _when_generator(key: str, policy_namespace: str) -> _Gen:
    """model.go New: which generator a `when` key uses, and on which side it lands."""
    if key == "destination.ip":
        return _Gen("permission", lambda v: {"destination_ip": cidr_range(v)})
    if key == "destination.port":
        return _Gen("permission", lambda v: {"destination_port": _port(v)})
    if key == "connection.sni":
        return _Gen("permission", lambda v: {"requested_server_name": string_matcher(v)})
    if key.startswith("experimental.envoy.filters."):
        raise Unsupported(f"{key}: experimental attribute not modelled")
    if key == "source.ip":
        return _Gen("principal", lambda v: {"direct_remote_ip": cidr_range(v)})
    if key == "remote.ip":
        return _Gen("principal", lambda v: {"remote_ip": cidr_range(v)})
    if key == "source.namespace":
        return _Gen("principal", _namespace_principal)
    if key == "source.trustDomain":
        return _Gen("principal", lambda v: _authenticated(_trust_domain_matcher(v)))
    if key == "source.serviceAccount":
        return _Gen("principal", lambda v: _authenticated(_regex(_service_account_regex(policy_namespace, v))))
    if key == "source.principal":
        return _Gen("principal", lambda v: _authenticated(string_matcher(v, SPIFFE_PREFIX)))
    if key == "request.auth.principal":
        return _Gen("principal", extended=_request_principals)
    if key == "request.auth.audiences":
        return _Gen("principal", extended=lambda vs: {"metadata": _jwt_claims_list(["aud"], _string_or(vs))})
    if key == "request.auth.presenter":
        return _Gen("principal", extended=lambda vs: {"metadata": _jwt_claims_list(["azp"], _string_or(vs))})
    if key.startswith("request.headers"):
        return _Gen("principal", _request_header(key))
    if key.startswith("request.auth.claims"):
        return _Gen("principal", extended=_claims(key))
    raise _Invalid(f"unknown attribute {key}")


# Source fields in the order model.go New inserts them at the front (so the last listed ends up
# first), with the `when` key whose generator each uses.
_SOURCE_FIELDS = [
    ("ipBlocks", "notIpBlocks", "source.ip"),
    ("remoteIpBlocks", "notRemoteIpBlocks", "remote.ip"),
    ("namespaces", "notNamespaces", "source.namespace"),
    ("trustDomains", "notTrustDomains", "source.trustDomain"),
    ("serviceAccounts", "notServiceAccounts", "source.serviceAccount"),
    ("requestPrincipals", "notRequestPrincipals", "request.auth.principal"),
    ("principals", "notPrincipals", "source.principal"),
]
_OPERATION_FIELDS = [
    ("ports", "notPorts", _Gen("permission", lambda v: {"destination_port": _port(v)})),
    ("paths", "notPaths", _Gen("permission", _path_permission)),
    ("methods", "notMethods", _Gen("permission", lambda v: {"header": header_matcher(":method", v)})),
    ("hosts", "notHosts", _Gen("permission", lambda v: {"header": host_matcher(v)})),
]


class _Condition:
    def __init__(self, gen: _Gen, values: Sequence[str], not_values: Sequence[str]) -> None:
        self.gen = gen
        self.values = [str(v) for v in values or []]
        self.not_values = [str(v) for v in not_values or []]

    def matchers(self, action: str) -> list[Json]:
        """model.go rule.permission/rule.principal: values → OR of per-value matchers (or the
        extended matcher), notValues → NOT of that. An invalid value fails the whole rule of an
        ALLOW policy (a narrower allow); of a DENY policy, it is left out (a wider deny) — as
        rule.checkError."""
        side_or = _perm_or if self.gen.side == "permission" else _princ_or
        side_not = "not_rule" if self.gen.side == "permission" else "not_id"
        out: list[Json] = []
        for values, negate in ((self.values, False), (self.not_values, True)):
            if not values:
                continue
            if self.gen.extended is not None:
                try:
                    built = self.gen.extended(values)
                except _Invalid:
                    if action == "ALLOW":
                        raise
                    built = None
                if built is not None:
                    out.append({side_not: built} if negate else built)
                continue
            alternatives = []
            for value in values:
                try:
                    assert self.gen.simple is not None
                    alternatives.append(self.gen.simple(value))
                except _Invalid:
                    if action == "ALLOW":
                        raise
            if alternatives:
                combined = side_or(alternatives)
                out.append({side_not: combined} if negate else combined)
        return out


def rbac_policy(rule: Mapping[str, Any], action: str, policy_namespace: str) -> Json:
    """One AuthorizationPolicy rule → one Envoy RBAC policy (model.go New and Generate): every
    `from` source is a principal (its fields ANDed, with the rule's principal-side `when`
    conditions), every `to` operation a permission (likewise with the permission-side `when`
    conditions: destination.ip/port, connection.sni); no `from` → one principal of just the
    `when` conditions, no `to` likewise; an empty AND is `any`. Envoy's policy matches when some
    permission and some principal match. Raises `_Invalid` when istiod would skip the rule."""
    base_permission: list[_Condition] = []
    base_principal: list[_Condition] = []
    for when in rule.get("when") or []:
        gen = _when_generator(when["key"], policy_namespace)
        condition = _Condition(gen, when.get("values") or [], when.get("notValues") or [])
        (base_permission if gen.side == "permission" else base_principal).append(condition)

    principal_lists: list[list[_Condition]] = []
    for entry in rule.get("from") or []:
        source = entry.get("source") or {}
        merged = list(base_principal)
        for field, not_field, key in _SOURCE_FIELDS:
            if source.get(field) or source.get(not_field):
                merged.insert(0, _Condition(_when_generator(key, policy_namespace),
                                            source.get(field) or [], source.get(not_field) or []))
        principal_lists.append(merged)
    if not rule.get("from"):
        principal_lists.append(base_principal)

    permission_lists: list[list[_Condition]] = []
    for entry in rule.get("to") or []:
        operation = entry.get("operation") or {}
        merged = list(base_permission)
        for field, not_field, gen in _OPERATION_FIELDS:
            if operation.get(field) or operation.get(not_field):
                merged.insert(0, _Condition(gen, operation.get(field) or [], operation.get(not_field) or []))
        permission_lists.append(merged)
    if not rule.get("to"):
        permission_lists.append(base_permission)

    def build(conditions: list[_Condition], and_: Callable[[list[Json]], Json]) -> Json:
        parts = [m for c in conditions for m in c.matchers(action)]
        return and_(parts or [{"any": True}])

    return {
        "permissions": [build(c, _perm_and) for c in permission_lists],
        "principals": [build(c, _princ_and) for c in principal_lists],
    }


# builder.go rbacPolicyMatchNever: what a policy without rules becomes.
MATCH_NEVER: Json = {
    "permissions": [{"not_rule": {"any": True}}],
    "principals": [{"not_id": {"any": True}}],
}


def rbac_filters(policies: Iterable[Mapping[str, Any]]) -> list[Json]:
    """The RBAC filters for the AuthorizationPolicies that select the workload, as
    pilot/pkg/security/authz/builder/builder.go (build, buildHTTP): one filter for the DENY
    policies, then one for the ALLOW policies (AUDIT only logs; dropped), each policy rule named
    `ns[<ns>]-policy[<name>]-rule[<i>]`. A policy without rules is one that never matches: as
    DENY it denies nothing, as ALLOW (`spec: {}`) it makes the ALLOW filter exist, so everything
    not otherwise allowed — here everything — is denied. A rule istiod cannot translate is
    skipped (for ALLOW a smaller allow)."""
    policies = list(policies)
    by_action: dict[str, dict[str, Json]] = {"DENY": {}, "ALLOW": {}}
    for policy in policies:
        meta = policy.get("metadata") or {}
        spec = policy.get("spec") or {}
        action = spec.get("action", "ALLOW")
        if action == "AUDIT":
            continue
        if action not in by_action:
            raise Unsupported(f"action {action} is not modelled")
        namespace, name = meta.get("namespace", "default"), meta.get("name", "")
        rules = spec.get("rules") or []
        for i, rule in enumerate(rules):
            if rule is None:
                continue
            try:
                by_action[action][f"ns[{namespace}]-policy[{name}]-rule[{i}]"] = rbac_policy(rule, action, namespace)
            except _Invalid:
                continue  # builder.go: "skipped invalid rule"
        if not rules:
            by_action[action][f"ns[{namespace}]-policy[{name}]-rule[0]"] = MATCH_NEVER
    present = {(p.get("spec") or {}).get("action", "ALLOW") for p in policies}
    filters = []
    for action in ("DENY", "ALLOW"):
        if action not in present:
            continue  # builder.go: no filter for an action without policies
        filters.append({
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": action, "policies": by_action[action]},
            },
        })
    return filters


def sidecar_http_filters(
    documents: Iterable[Mapping[str, Any]],
    namespace: str,
    labels: Mapping[str, str],
    jwks_fetch: Literal["istiod", "envoy"] = "istiod",
    fetch: Callable[[str], str] = fetch_jwks,
) -> list[Json]:
    """The HTTP filters istiod puts before the router on the inbound listener of a workload in
    `namespace` with `labels`, in pilot/pkg/networking/core/listener_builder.go's order
    (buildHTTPConnectionManager): authn (jwt_authn), then authz (RBAC DENY, RBAC ALLOW). Istio's
    own filters (metadata exchange, stats) do not decide requests and are left out."""
    documents = list(documents)
    kinds = {doc.get("kind") for doc in documents}
    unknown = kinds - {"RequestAuthentication", "AuthorizationPolicy"}
    if unknown:
        raise Unsupported(f"kinds not modelled: {sorted(map(str, unknown))}")
    selected = [doc for doc in documents if applies_to(doc, namespace, labels)]
    filters: list[Json] = []
    jwt = jwt_authn_filter([d for d in selected if d["kind"] == "RequestAuthentication"], jwks_fetch, fetch)
    if jwt is not None:
        filters.append(jwt)
    filters.extend(rbac_filters([d for d in selected if d["kind"] == "AuthorizationPolicy"]))
    return filters


def dump(filters: Sequence[Json]) -> str:
    """The filters as indented JSON, for a failure message."""
    return json.dumps(list(filters), indent=2)
