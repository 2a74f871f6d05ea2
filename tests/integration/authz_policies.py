"""RequestAuthentication + AuthorizationPolicy pairs, each with the requests that tell its rules
apart and the verdict Istio's documented semantics give each request (`expect`).

The pairs follow Istio's documentation tasks (Security → Authentication, Authorization: HTTP
traffic, JWT, ingress IP allow lists, explicit deny, allow-nothing) and patterns users write
(per service-account access, health checks outside JWT, Keycloak roles, audience/presenter
checks, host and port rules). All live in namespace `foo` and select `app: httpbin`.
Placeholders filled at run time: `${JWKS_URI}` (the test IdP's key set), `${PORT}` and
`${OTHER_PORT}` (the two ports the workload listens on).

The semantics the expectations encode (Istio's reference and concept pages):
- the JWT filter runs first: a request whose token is invalid (signature, expiry, issuer) is
  refused with 401 whatever the policies say, one whose `aud` the jwtRule does not accept with
  403 (jwt_authn's answer to an audience mismatch); a request without a token passes
  authentication with no request principal;
- DENY policies are evaluated before ALLOW policies; when any ALLOW policy selects the workload,
  a request that matches none of its rules is refused (403); with none, it is allowed;
- `requestPrincipals`, `request.auth.*` and claims need a verified token: without one they do
  not match (so an ALLOW needing them refuses with 403, and `notRequestPrincipals` matches);
- `principals`, `namespaces`, `source.principal` need an mTLS peer; a request without a client
  certificate has none;
- `ipBlocks`/`source.ip` are the connection's peer address; `remoteIpBlocks`/`remote.ip` the
  client address Envoy takes from `x-forwarded-for`;
- paths are compared after Envoy's normalisation (dot segments), exactly or by a `*` prefix or
  suffix, and without the query; hosts ignoring case, without removing a port; methods and
  header values case-sensitively."""

from __future__ import annotations

import string
import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from mtls import NO_URI_SAN, spiffe_id

ISSUER = "testing@secure.istio.io"  # the issuer of Istio's demo tokens (security/tools/jwt)
ISSUER_2 = "https://accounts.example.com"
UNKNOWN_ISSUER = "https://unknown.example.com"
NAMESPACE = "foo"
LABELS = {"app": "httpbin"}
HOST = "httpbin.foo"  # what curl http://httpbin.foo/... sends
SIDECAR_SNI = "outbound_.8000_._.httpbin.foo.svc.cluster.local"  # what a client sidecar sends

Expect = Literal["allow", 401, 403]


@dataclass(frozen=True)
class Token:
    """A token's claims and what is wrong with it: `flaw` "signature" (a byte of the signature
    flipped), "expired" (an hour past `exp`, beyond jwt_authn's 60 s of skew), or None."""

    iss: str = ISSUER
    sub: str | None = "alice"
    aud: str | list[str] | None = "httpbin"
    extra: Mapping[str, Any] = field(default_factory=dict)
    flaw: Literal["signature", "expired"] | None = None


TOKENS: dict[str, Token] = {
    "alice": Token(),
    "bob": Token(sub="bob"),
    "admin": Token(sub="admin"),
    "no-sub": Token(sub=None),
    "bad-signature": Token(flaw="signature"),
    "expired": Token(flaw="expired"),
    "unknown-issuer": Token(iss=UNKNOWN_ISSUER),
    "aud-list": Token(aud=["other", "httpbin"]),
    "aud-other": Token(aud="other"),
    "groups-1-2": Token(extra={"groups": ["group1", "group2"]}),
    "groups-2": Token(extra={"groups": ["group2"]}),
    "groups-1-string": Token(extra={"groups": "group1"}),
    "realm-admin": Token(extra={"realm_access": {"roles": ["admin", "user"]}}),
    "realm-user": Token(extra={"realm_access": {"roles": ["user"]}}),
    "frontend": Token(extra={"azp": "frontend"}),
    "frontend-aud-list": Token(aud=["other", "httpbin.foo.svc.cluster.local"], extra={"azp": "frontend"}),
    "frontend-aud-other": Token(aud="other", extra={"azp": "frontend"}),
    "backend": Token(extra={"azp": "backend"}),
    "scope-read": Token(extra={"scope": "read"}),
    "scope-read-write": Token(extra={"scope": "read write", "email_verified": True}),
    "scope-read-write-verified-string": Token(extra={"scope": "read write", "email_verified": "true"}),
    "scope-list": Token(extra={"scope": ["read"]}),
    "issuer2-alice": Token(iss=ISSUER_2),
    "issuer2-admin": Token(iss=ISSUER_2, sub="admin"),
    "issuer2-bad-signature": Token(iss=ISSUER_2, flaw="signature"),
}

# Peers: SPIFFE IDs of calling workloads (a client certificate each), or NO_URI_SAN.
SLEEP = spiffe_id("foo", "sleep")
INGRESS = spiffe_id("istio-system", "istio-ingressgateway-service-account")
BAR_SLEEP = spiffe_id("bar", "sleep")

TokenPlace = Literal["bearer", "query", "bearer-lower-case", "x-goog-iap-jwt-assertion"]


@dataclass(frozen=True)
class Request:
    """One request of a pair's matrix. `token`: a TOKENS name, sent as `token_in` says;
    `peer`: the client certificate's identity (None: no certificate); `source`: the loopback
    address the client connects from; `port`: "main" (`${PORT}`) or "other" (`${OTHER_PORT}`);
    `sni`: the TLS server name (None: none)."""

    id: str
    expect: Expect
    path: str = "/"
    method: str = "GET"
    host: str = HOST
    token: str | None = None
    token_in: TokenPlace = "bearer"
    headers: tuple[tuple[str, str], ...] = ()
    peer: str | None = None
    source: str = "127.0.0.1"
    port: Literal["main", "other"] = "main"
    sni: str | None = None
    why: str = ""


def R(id: str, expect: Expect, **kwargs: Any) -> Request:  # noqa: A002, N802 - terse table rows
    if "headers" in kwargs and isinstance(kwargs["headers"], Mapping):
        kwargs["headers"] = tuple(kwargs["headers"].items())
    return Request(id, expect, **kwargs)


@dataclass(frozen=True)
class Pair:
    name: str
    origin: str  # the Istio documentation task or user pattern it follows
    yaml: str
    requests: tuple[Request, ...]

    def render(self, jwks_uri: str, port: int, other_port: int) -> str:
        """The YAML with its placeholders filled, as it would be applied."""
        return string.Template(self.yaml).substitute(JWKS_URI=jwks_uri, PORT=port, OTHER_PORT=other_port)


def _doc(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def request_authentication(*rules: str) -> str:
    """A RequestAuthentication `jwt` for httpbin with the given jwtRules entries (YAML)."""
    body = "\n".join(textwrap.indent(textwrap.dedent(rule).strip(), "  ") for rule in rules)
    return _doc("""
        apiVersion: security.istio.io/v1
        kind: RequestAuthentication
        metadata:
          name: jwt
          namespace: foo
        spec:
          selector:
            matchLabels:
              app: httpbin
          jwtRules:
        """) + body + "\n"


RA_DEMO = request_authentication(f"""
    - issuer: "{ISSUER}"
      jwksUri: "${{JWKS_URI}}"
    """)


def policy(name: str, spec: str) -> str:
    """An AuthorizationPolicy for httpbin; `spec` is the YAML below `spec:` without the selector."""
    return _doc(f"""
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: {name}
          namespace: foo
        spec:
          selector:
            matchLabels:
              app: httpbin
        """) + textwrap.indent(textwrap.dedent(spec).strip(), "  ") + "\n"


def documents(*parts: str) -> str:
    return "---\n".join(parts)


PAIRS: list[Pair] = [
    Pair(
        "require-jwt",
        "Istio task Authentication policy, 'Require a valid token' (ALLOW requestPrincipals: ['*'])",
        documents(RA_DEMO, policy("require-jwt", """
            action: ALLOW
            rules:
            - from:
              - source:
                  requestPrincipals: ["*"]
            """)),
        (
            R("anonymous", 403, why="no token: authenticated by nobody, no request principal"),
            R("valid", "allow", token="alice"),
            R("valid-in-query", "allow", token="alice", token_in="query",
              why="jwt_authn's default locations include ?access_token="),
            R("valid-post", "allow", method="POST", path="/post", token="alice"),
            R("invalid-signature", 401, token="bad-signature"),
            R("expired", 401, token="expired"),
            R("unknown-issuer", 401, token="unknown-issuer", why="a token no jwtRule accepts is invalid"),
            R("no-sub", 403, token="no-sub", why="'*' needs iss and sub both present"),
            R("scheme-lower-case", 403, token="alice", token_in="bearer-lower-case",
              why="jwt_authn looks for 'Bearer ' exactly: no token seen"),
            R("cors-preflight", 403, method="OPTIONS", path="/post",
              headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
              why="jwt_authn lets a preflight through without a token; RBAC still needs a principal"),
        ),
    ),
    Pair(
        "jwt-per-path",
        "Istio task Authorization with JWT: /ip open, /headers only for one request principal",
        documents(RA_DEMO, policy("per-path", f"""
            action: ALLOW
            rules:
            - to:
              - operation:
                  paths: ["/ip"]
            - from:
              - source:
                  requestPrincipals: ["{ISSUER}/alice"]
              to:
              - operation:
                  paths: ["/headers", "/api/*"]
            """)),
        (
            R("ip-anonymous", "allow", path="/ip"),
            R("ip-query", "allow", path="/ip?format=json", why="paths match without the query"),
            R("ip-invalid-token", 401, path="/ip", token="bad-signature", why="authentication runs on every path"),
            R("headers-anonymous", 403, path="/headers"),
            R("headers-alice", "allow", path="/headers", token="alice"),
            R("headers-bob", 403, path="/headers", token="bob"),
            R("api-alice", "allow", path="/api/v1/items", token="alice"),
            R("api-root-alice", 403, path="/api", token="alice", why="'/api/*' is the prefix '/api/'"),
            R("headers-trailing-slash-alice", 403, path="/headers/", token="alice"),
            R("dot-segments-anonymous", 403, path="/ip/../headers", why="normalised to /headers"),
            R("dot-segments-alice", "allow", path="/ip/../headers", token="alice"),
            R("double-slash-alice", 403, path="//headers", token="alice",
              why="the default normalisation does not merge slashes"),
        ),
    ),
    Pair(
        "jwt-claim-groups",
        "Istio task Authorization with JWT: when request.auth.claims[groups] (a list claim)",
        documents(RA_DEMO, policy("require-group", f"""
            action: ALLOW
            rules:
            - from:
              - source:
                  requestPrincipals: ["{ISSUER}/*"]
              when:
              - key: request.auth.claims[groups]
                values: ["group1"]
            """)),
        (
            R("groups-list-with", "allow", token="groups-1-2"),
            R("groups-list-without", 403, token="groups-2"),
            R("groups-string", "allow", token="groups-1-string", why="a string claim is compared as a value"),
            R("groups-missing", 403, token="alice"),
            R("anonymous", 403),
            R("invalid-signature", 401, token="bad-signature"),
        ),
    ),
    Pair(
        "nested-claim-admin-paths",
        "User pattern (Keycloak realm roles): DENY /admin/* unless realm_access.roles has admin",
        documents(RA_DEMO, policy("admin-role", """
            action: DENY
            rules:
            - to:
              - operation:
                  paths: ["/admin/*"]
              when:
              - key: request.auth.claims[realm_access][roles]
                notValues: ["admin"]
            """), policy("authenticated", """
            action: ALLOW
            rules:
            - from:
              - source:
                  requestPrincipals: ["*"]
            """)),
        (
            R("admin-role", "allow", path="/admin/users", token="realm-admin"),
            R("user-role", 403, path="/admin/users", token="realm-user"),
            R("no-roles", 403, path="/admin/users", token="alice", why="notValues on a missing claim matches"),
            R("anonymous-admin", 403, path="/admin/users"),
            R("user-role-profile", "allow", path="/profile", token="realm-user"),
            R("user-role-admin-exact", "allow", path="/admin", token="realm-user",
              why="'/admin/*' does not cover /admin itself"),
            R("anonymous-profile", 403, path="/profile"),
        ),
    ),
    Pair(
        "audiences-presenter",
        "User pattern: when request.auth.audiences and request.auth.presenter (azp)",
        documents(RA_DEMO, policy("frontend-only", """
            action: ALLOW
            rules:
            - from:
              - source:
                  requestPrincipals: ["*"]
              when:
              - key: request.auth.audiences
                values: ["httpbin", "httpbin.foo.svc.cluster.local"]
              - key: request.auth.presenter
                values: ["frontend"]
            """)),
        (
            R("frontend", "allow", token="frontend"),
            R("frontend-aud-list", "allow", token="frontend-aud-list", why="one element of the aud list matches"),
            R("frontend-aud-other", 403, token="frontend-aud-other"),
            R("backend", 403, token="backend"),
            R("no-azp", 403, token="alice"),
            R("anonymous", 403),
        ),
    ),
    Pair(
        "deny-missing-jwt-except-health",
        "Istio reference example: DENY notRequestPrincipals ['*'] (requests without JWT), health paths exempt",
        documents(request_authentication(f"""
            - issuer: "{ISSUER}"
              jwksUri: "${{JWKS_URI}}"
              audiences: ["httpbin"]
            """), policy("deny-no-jwt", """
            action: DENY
            rules:
            - from:
              - source:
                  notRequestPrincipals: ["*"]
              to:
              - operation:
                  notPaths: ["/healthz", "/metrics/*"]
            """)),
        (
            R("healthz-anonymous", "allow", path="/healthz"),
            R("metrics-anonymous", "allow", path="/metrics/prometheus"),
            R("status-anonymous", 403, path="/status"),
            R("status-alice", "allow", path="/status", token="alice"),
            R("status-aud-list", "allow", path="/status", token="aud-list"),
            R("status-wrong-audience", 403, path="/status", token="aud-other",
              why="jwtRules.audiences: jwt_authn refuses, with 403 'Audiences in Jwt are not allowed'"),
            R("healthz-wrong-audience", 403, path="/healthz", token="aud-other",
              why="refused by jwt_authn (403), on a path no policy restricts"),
            R("healthz-invalid-signature", 401, path="/healthz", token="bad-signature"),
            R("status-no-sub", 403, path="/status", token="no-sub"),
        ),
    ),
    Pair(
        "namespace-isolation",
        "Istio task Authorization on HTTP traffic: ALLOW from the same namespace and istio-system",
        documents(RA_DEMO, policy("same-namespace", """
            action: ALLOW
            rules:
            - from:
              - source:
                  namespaces: ["foo", "istio-system"]
            """)),
        (
            R("same-namespace", "allow", peer=SLEEP),
            R("ingress-gateway", "allow", peer=INGRESS),
            R("other-namespace", 403, peer=BAR_SLEEP),
            R("namespace-prefix", 403, peer=spiffe_id("foobar", "sleep"), why="regex .*/ns/foo/.* needs the '/'"),
            R("plaintext", 403),
            R("plaintext-with-jwt", 403, token="alice"),
            R("no-uri-san", 403, peer=NO_URI_SAN),
            R("same-namespace-invalid-token", 401, peer=SLEEP, token="bad-signature"),
        ),
    ),
    Pair(
        "service-account-methods",
        "Istio task Authorization on HTTP traffic: one service account may GET, another anything",
        documents(RA_DEMO, policy("sleep-get", """
            action: ALLOW
            rules:
            - from:
              - source:
                  principals: ["cluster.local/ns/foo/sa/sleep"]
              to:
              - operation:
                  methods: ["GET", "HEAD"]
            - from:
              - source:
                  principals: ["cluster.local/ns/foo/sa/admin"]
            """)),
        (
            R("sleep-get", "allow", peer=SLEEP),
            # No HEAD request: harness.EchoServer answers HEAD with a body, which breaks Envoy's
            # upstream connection for the request after it.
            R("sleep-put", 403, method="PUT", peer=SLEEP),
            R("sleep-post", 403, method="POST", peer=SLEEP),
            R("admin-delete", "allow", method="DELETE", peer=spiffe_id("foo", "admin")),
            R("other-namespace-sleep", 403, peer=BAR_SLEEP),
            R("similar-name", 403, peer=spiffe_id("foo", "sleepy")),
            R("other-trust-domain", 403, peer=spiffe_id("foo", "sleep", "other.domain")),
            R("plaintext", 403),
        ),
    ),
    Pair(
        "require-mtls-principal-wildcards",
        "Istio mTLS migration: DENY notPrincipals ['*'] (plaintext), ALLOW principals with prefix/suffix '*'",
        documents(RA_DEMO, policy("require-mtls", """
            action: DENY
            rules:
            - from:
              - source:
                  notPrincipals: ["*"]
            """), policy("callers", """
            action: ALLOW
            rules:
            - from:
              - source:
                  principals: ["cluster.local/ns/prod/*", "*/sa/reader"]
            - from:
              - source:
                  principals: ["*"]
              to:
              - operation:
                  paths: ["/public/*"]
            """)),
        (
            R("plaintext", 403),
            R("plaintext-public", 403, path="/public/a"),
            R("prod", "allow", peer=spiffe_id("prod", "api")),
            R("prod-lookalike", 403, peer=spiffe_id("production", "api")),
            R("reader", "allow", peer=spiffe_id("foo", "reader")),
            R("reader-other-domain", "allow", peer=spiffe_id("x", "reader", "other.domain")),
            R("writer", 403, peer=spiffe_id("foo", "writer")),
            R("writer-public", "allow", path="/public/a", peer=spiffe_id("foo", "writer")),
            R("no-uri-san-public", "allow", path="/public/a", peer=NO_URI_SAN,
              why="Envoy's principal is the URI SAN, else the DNS SAN: '*' matches it"),
            R("no-uri-san-private", 403, path="/private", peer=NO_URI_SAN),
        ),
    ),
    Pair(
        "deny-by-header",
        "Istio task Explicit deny / user pattern: DENY on a header's presence, prefix and suffix",
        documents(RA_DEMO, policy("deny-headers", """
            action: DENY
            rules:
            - when:
              - key: request.headers[x-debug]
                values: ["*"]
            - to:
              - operation:
                  methods: ["DELETE"]
              when:
              - key: request.headers[User-Agent]
                values: ["BadBot*", "*-scanner"]
            """)),
        (
            R("plain", "allow"),
            R("debug-header", 403, headers={"x-debug": "1"}),
            R("debug-header-name-case", 403, headers={"X-DEBUG": "on"}, why="header names ignore case"),
            R("delete-badbot", 403, method="DELETE", headers={"User-Agent": "BadBot/1.0"}),
            R("delete-scanner", 403, method="DELETE", headers={"User-Agent": "vuln-scanner"}),
            R("get-badbot", "allow", headers={"User-Agent": "BadBot/1.0"}),
            R("delete-curl", "allow", method="DELETE", headers={"User-Agent": "curl/8.5.0"}),
            R("delete-badbot-lower-case", "allow", method="DELETE", headers={"User-Agent": "badbot/2.0"},
              why="header values are case-sensitive"),
        ),
    ),
    Pair(
        "ip-allow-list",
        "Istio task Ingress IP-based allow list (ipBlocks), on the workload",
        documents(RA_DEMO, policy("ip-allow-list", """
            action: ALLOW
            rules:
            - from:
              - source:
                  ipBlocks: ["127.0.0.2", "127.0.0.16/28"]
            """)),
        (
            R("listed-address", "allow", source="127.0.0.2"),
            R("listed-range", "allow", source="127.0.0.20"),
            R("range-last", "allow", source="127.0.0.31"),
            R("range-past-end", 403, source="127.0.0.32"),
            R("unlisted", 403, source="127.0.0.3"),
            R("loopback", 403, source="127.0.0.1"),
            R("unlisted-with-listed-xff", 403, source="127.0.0.3", headers={"X-Forwarded-For": "127.0.0.2"},
              why="ipBlocks is the peer address; x-forwarded-for does not count"),
            R("listed-with-xff", "allow", source="127.0.0.2", headers={"X-Forwarded-For": "203.0.113.9"}),
        ),
    ),
    Pair(
        "remote-ip",
        "Istio reference: remoteIpBlocks / remote.ip (x-forwarded-for) beside source.ip",
        documents(RA_DEMO, policy("deny-remote", """
            action: DENY
            rules:
            - from:
              - source:
                  remoteIpBlocks: ["203.0.113.0/24"]
            - when:
              - key: source.ip
                values: ["127.0.0.3"]
            """), policy("allow-remote", """
            action: ALLOW
            rules:
            - when:
              - key: remote.ip
                values: ["127.0.0.0/8", "192.0.2.0/24"]
            """)),
        (
            R("direct", "allow"),
            R("xff-denied", 403, headers={"X-Forwarded-For": "203.0.113.7"}),
            R("xff-chain-last-allowed", "allow", headers={"X-Forwarded-For": "203.0.113.7, 192.0.2.1"},
              why="the right-most entry is the client (no trusted hops)"),
            R("xff-allowed", "allow", headers={"X-Forwarded-For": "192.0.2.10"}),
            R("xff-unlisted", 403, headers={"X-Forwarded-For": "198.51.100.1"}),
            R("direct-denied", 403, source="127.0.0.3"),
            R("direct-denied-xff-allowed", 403, source="127.0.0.3", headers={"X-Forwarded-For": "192.0.2.1"}),
            R("xff-private", 403, source="127.0.0.2", headers={"X-Forwarded-For": "10.0.0.1"}),
        ),
    ),
    Pair(
        "health-static-not-paths",
        "User pattern: health and static files open, everything else but admin paths needs a JWT",
        documents(RA_DEMO, policy("paths", """
            action: ALLOW
            rules:
            - to:
              - operation:
                  paths: ["/healthz", "/static/*", "*.css"]
                  methods: ["GET"]
            - from:
              - source:
                  requestPrincipals: ["*"]
              to:
              - operation:
                  notPaths: ["/admin/*", "/internal"]
            """)),
        (
            R("healthz", "allow", path="/healthz"),
            R("healthz-post", 403, method="POST", path="/healthz"),
            R("healthz-query", "allow", path="/healthz?full=1"),
            R("static", "allow", path="/static/app.js"),
            R("css-suffix", "allow", path="/theme/site.css"),
            R("api-anonymous", 403, path="/api"),
            R("api-alice", "allow", path="/api", token="alice"),
            R("admin-alice", 403, path="/admin/users", token="alice"),
            R("internal-alice", 403, path="/internal", token="alice"),
            R("internal-below-alice", "allow", path="/internal/x", token="alice", why="notPaths '/internal' is exact"),
            R("dot-segments-alice", 403, path="/static/../admin/users", token="alice"),
        ),
    ),
    Pair(
        "ports",
        "User pattern: a workload with two ports, one open, one only for /public/* and never DELETE",
        documents(RA_DEMO, policy("by-port", """
            action: ALLOW
            rules:
            - to:
              - operation:
                  ports: ["${PORT}"]
            - to:
              - operation:
                  ports: ["${OTHER_PORT}"]
                  paths: ["/public/*"]
            """), policy("no-delete-off-main", """
            action: DENY
            rules:
            - to:
              - operation:
                  notPorts: ["${PORT}"]
                  methods: ["DELETE"]
            """)),
        (
            R("main-get", "allow"),
            R("main-delete", "allow", method="DELETE", path="/x"),
            R("other-public", "allow", port="other", path="/public/a"),
            R("other-private", 403, port="other", path="/private"),
            R("other-private-alice", 403, port="other", path="/private", token="alice"),
            R("other-public-delete", 403, port="other", method="DELETE", path="/public/a"),
        ),
    ),
    Pair(
        "allow-all",
        "Istio reference: ALLOW with rules: [{}] (allow everything)",
        documents(RA_DEMO, policy("allow-all", """
            action: ALLOW
            rules:
            - {}
            """)),
        (
            R("anonymous", "allow"),
            R("alice", "allow", token="alice"),
            R("invalid-signature", 401, token="bad-signature", why="authentication still refuses a bad token"),
            R("expired", 401, token="expired"),
            R("peer-delete", "allow", method="DELETE", peer=SLEEP),
            R("no-uri-san", "allow", peer=NO_URI_SAN),
        ),
    ),
    Pair(
        "allow-nothing",
        "Istio task Authorization on HTTP traffic, allow-nothing: a policy without rules (spec: selector only)",
        documents(RA_DEMO, _doc("""
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata:
              name: allow-nothing
              namespace: foo
            spec:
              selector:
                matchLabels:
                  app: httpbin
            """)),
        (
            R("anonymous", 403),
            R("alice", 403, token="alice"),
            R("invalid-signature", 401, token="bad-signature"),
            R("peer", 403, peer=SLEEP),
            R("healthz", 403, path="/healthz"),
        ),
    ),
    Pair(
        "hosts",
        "User pattern: ALLOW GET by host (exact and *.suffix), DENY one host",
        documents(RA_DEMO, policy("deny-admin-host", """
            action: DENY
            rules:
            - to:
              - operation:
                  hosts: ["admin.example.com"]
            """), policy("hosts", """
            action: ALLOW
            rules:
            - to:
              - operation:
                  hosts: ["httpbin.foo", "*.example.com"]
                  methods: ["GET"]
            """)),
        (
            R("service-host", "allow"),
            R("service-host-upper-case", "allow", host="HTTPBIN.FOO", why="hosts ignore case"),
            R("service-host-with-port", 403, host="httpbin.foo:8000", why="no ':port' variant is added"),
            R("subdomain", "allow", host="api.example.com"),
            R("subdomain-mixed-case", "allow", host="API.Example.COM"),
            R("subdomain-with-port", 403, host="api.example.com:443"),
            R("denied-host", 403, host="admin.example.com"),
            R("denied-host-mixed-case", 403, host="Admin.Example.Com"),
            R("apex", 403, host="example.com"),
            R("other-service", 403, host="httpbin.bar"),
            R("service-host-post", 403, method="POST"),
        ),
    ),
    Pair(
        "sni-destination",
        "User pattern: when connection.sni, destination.ip and destination.port",
        documents(RA_DEMO, policy("sni", """
            action: ALLOW
            rules:
            - when:
              - key: connection.sni
                values: ["*.foo.svc.cluster.local"]
              - key: destination.ip
                values: ["127.0.0.0/8"]
            - when:
              - key: destination.port
                values: ["${OTHER_PORT}"]
            """)),
        (
            R("sidecar-sni", "allow", sni=SIDECAR_SNI),
            R("other-namespace-sni", 403, sni="outbound_.8000_._.httpbin.bar.svc.cluster.local"),
            R("no-sni", 403),
            R("no-sni-other-port", "allow", port="other"),
            R("other-sni-other-port", "allow", port="other", sni="example.com"),
        ),
    ),
    Pair(
        "source-and-jwt-conditions",
        "User pattern: when source.principal + request.auth.principal, source.namespace + claims[iss]",
        documents(request_authentication(f"""
            - issuer: "{ISSUER}"
              jwksUri: "${{JWKS_URI}}"
            - issuer: "{ISSUER_2}"
              jwksUri: "${{JWKS_URI}}"
            """), policy("caller-and-user", f"""
            action: ALLOW
            rules:
            - when:
              - key: source.principal
                values: ["cluster.local/ns/foo/sa/sleep"]
              - key: request.auth.principal
                values: ["{ISSUER}/alice"]
            - when:
              - key: source.namespace
                values: ["admin"]
              - key: request.auth.claims[iss]
                values: ["{ISSUER}"]
            """)),
        (
            R("sleep-alice", "allow", peer=SLEEP, token="alice"),
            R("sleep-bob", 403, peer=SLEEP, token="bob"),
            R("sleep-anonymous", 403, peer=SLEEP),
            R("plaintext-alice", 403, token="alice"),
            R("sleep-issuer2-alice", 403, peer=SLEEP, token="issuer2-alice"),
            R("admin-namespace-bob", "allow", peer=spiffe_id("admin", "ops"), token="bob"),
            R("admin-namespace-anonymous", 403, peer=spiffe_id("admin", "ops")),
            R("admin-namespace-issuer2", 403, peer=spiffe_id("admin", "ops"), token="issuer2-alice"),
            R("admin-namespace-issuer2-invalid", 401, peer=spiffe_id("admin", "ops"), token="issuer2-bad-signature"),
        ),
    ),
    Pair(
        "scopes-and-typed-claims",
        "User pattern: OAuth scopes by method (scope split on spaces), a boolean claim",
        documents(RA_DEMO, policy("scopes", """
            action: ALLOW
            rules:
            - to:
              - operation:
                  methods: ["GET"]
              when:
              - key: request.auth.claims[scope]
                values: ["read"]
            - to:
              - operation:
                  methods: ["POST", "PUT"]
              when:
              - key: request.auth.claims[scope]
                values: ["write"]
              - key: request.auth.claims[email_verified]
                values: ["true"]
            """)),
        (
            R("get-read", "allow", token="scope-read"),
            R("get-read-write", "allow", token="scope-read-write", why="scope is split on spaces"),
            R("get-scope-list", "allow", token="scope-list"),
            R("post-read", 403, method="POST", token="scope-read"),
            R("post-verified-string", "allow", method="POST", token="scope-read-write-verified-string"),
            R("post-verified-boolean", 403, method="POST", token="scope-read-write",
              why="claims are matched as strings: JSON true is not \"true\""),
            R("get-no-scope", 403, token="alice"),
            R("get-anonymous", 403),
        ),
    ),
    Pair(
        "two-issuers-locations",
        "User pattern: two issuers, one in its own header (IAP style); requestPrincipals 'iss/*' and '*/sub'",
        documents(request_authentication(f"""
            - issuer: "{ISSUER}"
              jwksUri: "${{JWKS_URI}}"
            - issuer: "{ISSUER_2}"
              jwksUri: "${{JWKS_URI}}"
              fromHeaders:
              - name: x-goog-iap-jwt-assertion
            """), policy("issuers", f"""
            action: ALLOW
            rules:
            - from:
              - source:
                  requestPrincipals: ["{ISSUER_2}/*"]
            - from:
              - source:
                  requestPrincipals: ["*/admin"]
              to:
              - operation:
                  paths: ["/admin/*"]
            """)),
        (
            R("issuer2-own-header", "allow", token="issuer2-alice", token_in="x-goog-iap-jwt-assertion"),
            R("issuer2-bearer", 401, token="issuer2-alice",
              why="the Authorization header belongs to the first issuer's rule: a foreign token there is invalid"),
            R("issuer1-plain-path", 403, token="alice"),
            R("issuer1-admin", "allow", path="/admin/x", token="admin"),
            R("issuer2-admin", "allow", path="/admin/x", token="issuer2-admin", token_in="x-goog-iap-jwt-assertion"),
            R("anonymous", 403),
            R("issuer2-invalid", 401, token="issuer2-bad-signature", token_in="x-goog-iap-jwt-assertion"),
            R("issuer1-in-issuer2-header", 401, token="alice", token_in="x-goog-iap-jwt-assertion"),
        ),
    ),
]


def request_ids() -> set[str]:
    """Every `pair/request` id, for checking that lists of ids name real requests."""
    return {f"{pair.name}/{request.id}" for pair in PAIRS for request in pair.requests}


def _check_table() -> None:
    names = [pair.name for pair in PAIRS]
    assert len(names) == len(set(names)), "pair names must be unique"
    for pair in PAIRS:
        ids = [r.id for r in pair.requests]
        assert len(ids) == len(set(ids)), f"{pair.name}: request ids must be unique"
        for r in pair.requests:
            assert r.token is None or r.token in TOKENS, f"{pair.name}/{r.id}: unknown token {r.token}"


_check_table()
