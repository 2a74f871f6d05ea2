//! The plugin configuration (`../shared/spec/plugin-config.md`), parsed and validated.
//! Every name here maps to a field of the contract; the parser rejects unknown fields and
//! reports problems as `field.path: problem`.

use crate::alg::AlgSet;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub unmatched: Unmatched,
    /// `None`: the request's `:authority` is the realm.
    pub realm: Option<String>,
    pub bypass_cors_preflight: bool,
    pub mode: Mode,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    Authenticated,
    Anonymous,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Report,
}

/// Caps on hostile input (project addition: top-level `limits`, every field optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `limits.maxTokenBytes`, default 16 KiB.
    pub max_token_bytes: usize,
    /// `limits.maxJsonDepth`, default 16: nesting of token header/payload JSON.
    pub max_json_depth: usize,
    /// `limits.maxJsonMembers`, default 256: members+elements in one token header/payload.
    pub max_json_members: usize,
    /// `limits.maxJwksBytes`, default 256 KiB.
    pub max_jwks_bytes: usize,
    /// `limits.maxJwksKeys`, default 64.
    pub max_jwks_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token_bytes: 16 * 1024,
            max_json_depth: 16,
            max_json_members: 256,
            max_jwks_bytes: 256 * 1024,
            max_jwks_keys: 64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    /// `name`, default the issuer.
    pub name: String,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub from_headers: Vec<HeaderLocation>,
    pub from_params: Vec<String>,
    pub from_cookies: Vec<String>,
    /// Lower-cased header name.
    pub output_payload_to_header: Option<String>,
    pub output_claim_to_headers: Vec<ClaimToHeader>,
    pub forward_original_token: bool,
    /// `timeout`, default 5 s.
    pub timeout_ms: u64,
    pub clock_skew_seconds: u64,
    pub max_lifetime_seconds: Option<u64>,
    pub jwks_cache_seconds: u64,
    pub scope_claims: Vec<ClaimPath>,
    pub algorithms: AlgSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `jwks`: the inline JWKS document as given (validated by `keys::parse_jwks`).
    Inline(String),
    /// `jwksUri` (+ `jwksCluster`, defaulted the way Istio names clusters).
    Remote(HttpTarget),
    /// Neither: OpenID Connect discovery at `<issuer>/.well-known/openid-configuration`.
    Discovery(HttpTarget),
}

/// Where a dispatched HTTP call goes: the Envoy cluster, and the `:authority` and `:path` to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub url: String,
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLocation {
    /// Lower-cased header name.
    pub name: String,
    /// The prefix as configured; matched case-insensitively. May be empty.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToHeader {
    /// Lower-cased header name.
    pub header: String,
    pub claim: ClaimPath,
}

/// A claim path: `"realm_access.roles"` (split on dots) or `["https://example.com/roles"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub Vec<String>);

impl ClaimPath {
    /// Looks the path up in a JSON object (the token payload).
    pub fn lookup<'a>(&self, claims: &'a serde_json::Map<String, Value>) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut value = claims.get(first)?;
        for name in rest {
            value = value.as_object()?.get(name)?;
        }
        Some(value)
    }

    /// The path as written in logs: names joined with dots.
    pub fn display(&self) -> String {
        self.0.join(".")
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    /// `name`, default `rules[i]`.
    pub name: String,
    pub matcher: RuleMatch,
    pub action: Action,
}

#[derive(Debug, Clone, Default)]
pub struct RuleMatch {
    /// `None`: the list was absent and matches everything.
    pub paths: Option<Vec<PathPattern>>,
    /// Upper-case methods.
    pub methods: Option<Vec<String>>,
    pub hosts: Option<Vec<HostPattern>>,
}

/// Istio path syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `*`
    Any,
    /// `/a/b`
    Exact(String),
    /// `/a/*`: stored without the `*` (`/a/`).
    Prefix(String),
    /// `*.png`: stored without the `*` (`.png`).
    Suffix(String),
}

/// `:authority` pattern, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `orders.example.com`
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    WildcardSuffix(String),
    /// `*`
    Any,
}

#[derive(Debug, Clone)]
pub enum Action {
    AllowAnonymous,
    Deny,
    Requires(Requirement),
    RequiresAny(Vec<Requirement>),
}

#[derive(Debug, Clone, Default)]
pub struct Requirement {
    /// Indexes into `Config::providers`; `None`: any provider.
    pub providers: Option<Vec<usize>>,
    pub scopes: Vec<String>,
    pub claims: Vec<ClaimCondition>,
}

#[derive(Debug, Clone)]
pub struct ClaimCondition {
    pub claim: ClaimPath,
    pub test: ClaimTest,
}

#[derive(Debug, Clone)]
pub enum ClaimTest {
    /// Values compare by JSON type: `"true"` is not `true`.
    AnyOf(Vec<Value>),
    AllOf(Vec<Value>),
    Present,
}
