//! The plugin configuration (`docs/configuration.md`), parsed and validated into plain data.
//! Every name here maps to a field of the contract; the parser rejects unknown fields and
//! reports problems as `field.path: problem`. What runs is built from it by
//! [`crate::compile`]; this module depends on no stage (only on the vocabulary of `alg` and
//! the strict parser of `json`), so the stages can all depend on it.

use crate::alg::{Alg, AlgSet, KeyFamily};
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
    /// Project addition `audit`.
    pub audit: Audit,
    /// `protectedResource` (RFC 9728): one, or one per host for a gateway serving several.
    pub protected_resources: Vec<ProtectedResource>,
    /// `answers`: how much a refusal tells the client.
    pub answers: Answers,
    /// `denyWith` for refusals no rule's own `denyWith` covers.
    pub deny_with: Option<DenyWith>,
    /// `login`: browser login, one per set of hosts (empty: none).
    pub logins: Vec<Login>,
    /// `outbound`: tokens attached to a workload's outbound requests (issue 29).
    pub outbound: Outbound,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedResource {
    /// `resource`: the canonical URI clients name in `resource` and `aud` (RFC 8707).
    pub resource: String,
    /// Empty: not given; compiled to the providers' issuers.
    pub authorization_servers: Vec<String>,
    /// Empty: not given (or given empty); compiled to the scopes the rules require.
    pub scopes_supported: Vec<String>,
    pub resource_name: Option<String>,
    pub resource_documentation: Option<String>,
    /// The request paths the filter answers with the metadata document.
    pub metadata_paths: Vec<String>,
    /// What every 401 names in `resource_metadata` (RFC 9728 §5.1).
    pub metadata_url: String,
    /// `hosts`: the `:authority`s this resource is served under; `None`: every other one.
    pub hosts: Option<Vec<HostPattern>>,
}

/// `audit`: one JSON line per decision in Envoy's log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Audit {
    /// `audit.level`: `off`, `debug`, `info` or `warn` (default: an Istio sidecar logs Wasm
    /// at `warning` unless told otherwise, so lower levels would be invisible there).
    pub level: AuditLevel,
    /// `audit.allowedSampleRate`, 0 to 1 (default 0.01): the share of allowed requests
    /// logged; refusals are always logged.
    pub allowed_sample_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditLevel {
    Off,
    Debug,
    Info,
    Warn,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            level: AuditLevel::Warn,
            allowed_sample_rate: 0.01,
        }
    }
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
    /// `limits.maxHeldRequests`, default 1024: requests one worker holds while keys load;
    /// past it, 503 at once.
    pub max_held_requests: usize,
    /// `limits.maxCachedTokens`, default 1024: verified tokens remembered per worker;
    /// 0 turns the cache off.
    pub max_cached_tokens: usize,
    /// `limits.maxCachedSessions`, default 1024: opened login sessions remembered per worker
    /// and login; 0 turns the cache off.
    pub max_cached_sessions: usize,
    /// `limits.maxRevocationBytes`, default 1 MiB: a larger fetched revocation list is refused.
    pub max_revocation_bytes: usize,
    /// `limits.maxDpopProofs`, default 65536: DPoP proofs the sidecar remembers within their
    /// window (24 bytes each in shared data); a proof that finds no room is refused (503).
    pub max_dpop_proofs: usize,
    /// `limits.maxOutboundTokens`, default 1024: tokens the outbound cache holds for the
    /// whole sidecar (slots in shared data).
    pub max_outbound_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_token_bytes: 16 * 1024,
            max_json_depth: 16,
            max_json_members: 256,
            max_jwks_bytes: 256 * 1024,
            max_jwks_keys: 64,
            max_held_requests: 1024,
            max_cached_tokens: 1024,
            max_cached_sessions: 1024,
            max_dpop_proofs: 65536,
            max_revocation_bytes: 1024 * 1024,
            max_outbound_tokens: DEFAULT_MAX_OUTBOUND_TOKENS,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Provider {
    /// `name`, default the issuer.
    pub name: String,
    /// The issuer, or for a multi-tenant provider its `issuerPattern`.
    pub issuer: String,
    /// `issuerPattern` + `tenants`: the tenants this provider speaks for.
    pub tenancy: Option<Tenancy>,
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
    /// `jwksCluster` as configured: discovered key URLs go through it too.
    pub jwks_cluster: Option<String>,
    /// Project addition `jwksMinRefetchSeconds` (default 30): an unknown `kid` triggers a key
    /// fetch at most this often per provider, for the whole sidecar.
    pub jwks_min_refetch_seconds: u64,
    /// Project addition `jwksMaxStaleSeconds` (default 24 h): how long the last good keys are
    /// still used while the key server fails.
    pub jwks_max_stale_seconds: u64,
    /// Project addition `revoked`: identities refused although their tokens verify.
    pub revoked: Revoked,
    /// Project addition `revocationUri` (+ `revocationCluster`, `revocationRefreshSeconds`):
    /// a revocation list in the same shape as `revoked`, fetched like keys.
    pub revocation: Option<RemoteRevocation>,
    /// `dpop`: DPoP-bound tokens (RFC 9449).
    pub dpop: Dpop,
    /// `certificateBound`: tokens bound to the client certificate (RFC 8705 §3).
    pub certificate_bound: Binding,
}

/// Whether a provider's tokens must, may or need not be bound to their sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Binding {
    #[default]
    Off,
    Allowed,
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dpop {
    pub mode: Binding,
    /// Asymmetric only.
    pub algorithms: AlgSet,
    /// How old a proof's `iat` may be, on top of the provider's clock skew.
    pub max_age_seconds: u64,
    /// The `scheme://host[:port]`s a proof's `htu` may name, as written (normalised when
    /// compiled); `None`: the request's own.
    pub origins: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRevocation {
    pub target: HttpTarget,
    /// `revocationRefreshSeconds`, default 60.
    pub refresh_seconds: u64,
}

/// `revoked`: `{"jtis": [...], "subjects": [...], "subjectsIssuedBefore": {"<sub>": <time>}}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    pub jtis: std::collections::HashSet<String>,
    pub subjects: std::collections::HashSet<String>,
    /// Tokens of this subject issued (`iat`) before this time (Unix seconds) are refused:
    /// the identity changed (password reset, role removed) and older tokens must go.
    pub subjects_issued_before: std::collections::HashMap<String, u64>,
}

impl Revoked {
    pub fn is_empty(&self) -> bool {
        self.jtis.is_empty() && self.subjects.is_empty() && self.subjects_issued_before.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `jwks`: the inline JWKS document as given (its keys are parsed when compiled).
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
    /// Project addition: `mode` per rule; `None` follows the top-level `mode`. A rule in
    /// `report` mode refuses nothing, so a new rule can be tried beside enforced ones.
    pub mode: Option<Mode>,
    /// `denyWith`: how this rule's refusals look; `None`: the top-level one.
    pub deny_with: Option<DenyWith>,
    /// `invalidToken: "ignore"` (only with `allowAnonymous`): a token that does not verify
    /// counts as no token here, rather than a 401.
    pub ignore_invalid_token: bool,
}

/// A rule's `match`: every condition must hold; no condition matches every request.
#[derive(Debug, Clone, Default)]
pub struct RuleMatch {
    /// In the order the fields are read: request, then peer, then token conditions, so a
    /// rule that fails on the request never reads the connection or verifies a token.
    pub conditions: Vec<Condition>,
}

/// One `match` field (`paths`, `notPaths`, …) or one `when` entry: a fact of the request and
/// the patterns it must (`any_of`) or must not (`none_of`) meet.
#[derive(Debug, Clone)]
pub struct Condition {
    /// Where it was written: `paths`, `notPrincipals`, `when[0]` …, for `explain`.
    pub field: std::borrow::Cow<'static, str>,
    pub fact: Fact,
    /// Holds when one pattern matches one of the fact's values.
    pub any_of: Option<Vec<Pattern>>,
    /// Holds when no pattern matches any of the fact's values (an absent fact holds).
    pub none_of: Option<Vec<Pattern>>,
}

impl Condition {
    pub fn any_of(field: &str, fact: Fact, patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Condition {
            field: field.to_owned().into(),
            fact,
            any_of: Some(patterns.into_iter().collect()),
            none_of: None,
        }
    }

    pub fn none_of(field: &str, fact: Fact, patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Condition {
            field: field.to_owned().into(),
            fact,
            any_of: None,
            none_of: Some(patterns.into_iter().collect()),
        }
    }
}

/// What a condition looks at, with the Istio attribute it corresponds to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// `paths`: the normalised path, without the query.
    Path,
    /// `methods`.
    Method,
    /// `hosts`: `:authority` without its port.
    Host,
    /// `ports`, `destination.port`: the port the connection came in on.
    DestinationPort,
    /// `principals`, `source.principal`: the peer certificate's SPIFFE ID without `spiffe://`.
    Principal,
    /// `namespaces`, `source.namespace`: the `ns` segment of the principal.
    Namespace,
    /// `ipBlocks`, `source.ip`: the directly connected peer.
    DirectIp,
    /// `remoteIpBlocks`, `remote.ip`: the client as Envoy's `x-forwarded-for` handling found it.
    RemoteIp,
    /// `destination.ip`.
    DestinationIp,
    /// `connection.sni`.
    Sni,
    /// `request.headers[name]`: lower-case name; repeated headers joined with `,` as Envoy does.
    Header(String),
    /// `requestPrincipals`, `request.auth.principal`: `iss/sub` of the verified token.
    RequestPrincipal,
    /// `request.auth.audiences`: each `aud` entry.
    Audiences,
    /// `request.auth.presenter`: `azp`.
    Presenter,
    /// `request.auth.claims[a][b]`: a string claim, or each string in a list claim.
    Claim(ClaimPath),
}

impl Fact {
    /// Facts only a verified token can give.
    pub fn needs_token(&self) -> bool {
        matches!(
            self,
            Fact::RequestPrincipal | Fact::Audiences | Fact::Presenter | Fact::Claim(_)
        )
    }

    /// Facts read from the connection (host calls in the filter).
    pub fn needs_peer(&self) -> bool {
        matches!(
            self,
            Fact::DestinationPort
                | Fact::Principal
                | Fact::Namespace
                | Fact::DirectIp
                | Fact::RemoteIp
                | Fact::DestinationIp
                | Fact::Sni
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Path(PathPattern),
    /// Upper-case; compared case-insensitively.
    Method(String),
    Host(HostPattern),
    Port(u16),
    Text(TextPattern),
    Ip(IpBlock),
}

/// Istio's string match: exact, `prefix*`, `*suffix`, or `*` (present, any value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextPattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

/// A CIDR block (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    pub network: std::net::IpAddr,
    pub prefix_len: u8,
}

impl IpBlock {
    /// The block's first address: the network with the bits after the prefix cleared.
    pub fn masked(&self) -> std::net::IpAddr {
        use std::net::IpAddr;
        match self.network {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// An IPv4 address never falls in an IPv6 block, nor the reverse (as Envoy's CIDR match);
    /// an IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`) is compared as the IPv4 address it is.
    pub fn contains(&self, address: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let same_family = address.is_ipv4() == self.network.is_ipv4();
        same_family
            && IpBlock {
                network: address,
                prefix_len: self.prefix_len,
            }
            .masked()
                == self.masked()
    }
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

impl PathPattern {
    /// Istio path semantics, case-sensitive. `Prefix` is a plain string prefix, exactly as
    /// Istio turns `/a/*` into Envoy's `prefix: "/a/"`: it matches `/a/` and `/a/x` but not `/a`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Any => true,
            PathPattern::Exact(exact) => path == exact,
            PathPattern::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathPattern::Suffix(suffix) => path.ends_with(suffix.as_str()),
        }
    }
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

impl HostPattern {
    /// Matches a host name already in the patterns' form: lower-case, without port or
    /// trailing dot. `*.example.com` matches any name under `example.com`, at any depth, but
    /// not `example.com`.
    pub fn matches_host(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(exact) => host == exact,
            HostPattern::WildcardSuffix(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

// Built once per configuration and read in place, never moved per request: boxing the
// requirement would only add a pointer chase to every rule check.
#[allow(clippy::large_enum_variant)]
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
    /// `acrValues` (RFC 9470): the token's `acr` must be one of these.
    pub acr_values: Option<Vec<String>>,
    /// `maxAuthAgeSeconds` (RFC 9470): `auth_time` no older than this.
    pub max_auth_age_seconds: Option<u64>,
    /// `clients`: the token's `client_id` (RFC 9068) or `azp` is one of these.
    pub clients: Option<Vec<String>>,
    /// `actor`: the current actor, `act.sub` of the outermost `act` (RFC 8693 §4.1), is one of these.
    pub actors: Option<Vec<String>>,
    /// `maxDelegationDepth`: at most this many nested `act` levels.
    pub max_delegation_depth: Option<u64>,
    /// `delegation: "forbidden"`: a token with an `act` claim does not meet the requirement.
    pub delegation_forbidden: bool,
    /// `audiences`: the token's `aud` names one of these (after the provider's own check).
    pub audiences: Option<Vec<String>>,
    /// `tenants`: the token's tenant (`tid`) is one of these.
    pub tenants: Option<Vec<String>>,
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

/// A configuration problem: the JSON path of the offending field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub problem: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The path used for problems with the configuration as a whole.
const WHOLE_CONFIG: &str = "(config)";

fn error(path: impl std::fmt::Display, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_string(),
        problem: problem.into(),
    }
}

type Parsed<T> = Result<T, ConfigError>;

/// The VM's environment, as the caller reads it (`std::env::var` in the module): where the
/// secrets and keys of `login` and `outbound` come from.
pub type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

/// Parses and validates the plugin configuration JSON; the secrets and keys it names (`login`,
/// `outbound`) come from this process's environment (the Wasm VM's, in the module).
pub fn parse(json: &str) -> Parsed<Config> {
    parse_with_env(json, &|name| std::env::var(name).ok())
}

/// [`parse`], reading the environment variables a `login` or `outbound` entry names through `env`.
pub fn parse_with_env(json: &str, env: Env<'_>) -> Parsed<Config> {
    if json.trim().is_empty() {
        return Err(error(WHOLE_CONFIG, "empty; expected a JSON object"));
    }
    // One pass that also refuses two equal member names (serde_json alone keeps the last): a
    // configuration must not say two things. A gateway's is large: it is read once.
    let value = match crate::json::parse_object(json.as_bytes(), CONFIG_JSON_LIMITS) {
        Ok(map) => Value::Object(map),
        // serde_json's syntax errors name a position, never the input text (which may hold keys).
        Err(refusal @ (crate::json::JsonError::Syntax | crate::json::JsonError::NotObject)) => {
            let value: Value = serde_json::from_str(json)
                .map_err(|e| error(WHOLE_CONFIG, format!("not valid JSON: {e}")))?;
            return match refusal {
                // Valid JSON, not an object: the parser says so in its words.
                crate::json::JsonError::NotObject => parse_config(&value, env),
                _ => Err(error(WHOLE_CONFIG, refusal.describe())),
            };
        }
        Err(e) => return Err(error(WHOLE_CONFIG, e.describe())),
    };
    parse_config(&value, env)
}

/// Generous: only duplicate member names are meant to trip this.
const CONFIG_JSON_LIMITS: crate::json::JsonLimits = crate::json::JsonLimits {
    max_depth: 64,
    max_members: 1_000_000,
};

const CONFIG_FIELDS: &[&str] = &[
    "providers",
    "rules",
    "unmatched",
    "realm",
    "bypassCorsPreflight",
    "mode",
    "limits",
    "audit",
    "protectedResource",
    "answers",
    "denyWith",
    "login",
    "outbound",
];

fn parse_config(value: &Value, env: Env<'_>) -> Parsed<Config> {
    let config = Object::new(value, &At::Top, CONFIG_FIELDS)?;
    let providers = config.required("providers", parse_providers)?;
    let logins = config
        .optional("login", |value, path| {
            parse_logins(value, path, &providers, env)
        })?
        .unwrap_or_default();
    let outbound = config
        .optional("outbound", |value, path| {
            parse_outbound(value, path, &providers, env)
        })?
        .unwrap_or_default();
    if !outbound.entries.is_empty() {
        // The outbound side attaches tokens; deciding who may call is the inbound plugin's.
        for field in [
            "rules",
            "unmatched",
            "protectedResource",
            "denyWith",
            "login",
        ] {
            if value.get(field).is_some() {
                return Err(error(
                    field,
                    "belongs to the inbound plugin: a configuration with outbound entries \
                     configures a workload's outbound side, where no request is refused for \
                     its own token",
                ));
            }
        }
    }
    let rules = config
        .optional("rules", |value, path| parse_rules(value, path, &providers))?
        .unwrap_or_default();
    let unmatched = config
        .optional("unmatched", parse_unmatched)?
        .unwrap_or(Unmatched::Authenticated);
    if providers.is_empty() {
        if let Some(needs) = needs_a_token(&rules, unmatched) {
            return Err(error(
                "providers",
                format!("is empty, and {needs} needs a token; list at least one provider"),
            ));
        }
    }
    let limits = config.optional("limits", parse_limits)?.unwrap_or_default();
    let protected_resources = config
        .optional("protectedResource", parse_protected_resources)?
        .unwrap_or_default();
    Ok(Config {
        providers,
        logins,
        rules,
        unmatched,
        realm: config.optional("realm", parse_realm)?,
        bypass_cors_preflight: config
            .optional("bypassCorsPreflight", boolean)?
            .unwrap_or(true),
        mode: config
            .optional("mode", parse_mode)?
            .unwrap_or(Mode::Enforce),
        limits,
        audit: config.optional("audit", parse_audit)?.unwrap_or_default(),
        protected_resources,
        answers: config
            .optional("answers", parse_answers)?
            .unwrap_or_default(),
        deny_with: config.optional("denyWith", parse_deny_with)?,
        outbound,
    })
}

/// A configuration without providers decides on the request and its connection only (a
/// converted AuthorizationPolicy without a RequestAuthentication): nothing may ask for a token.
fn needs_a_token(rules: &[Rule], unmatched: Unmatched) -> Option<String> {
    let by_rule = rules.iter().enumerate().find(|(_, rule)| {
        matches!(rule.action, Action::Requires(_) | Action::RequiresAny(_))
            || rule.matcher.conditions.iter().any(|c| c.fact.needs_token())
    });
    match by_rule {
        Some((index, _)) => Some(format!("rules[{index}]")),
        None if unmatched == Unmatched::Authenticated => {
            Some("unmatched (authenticated, the default)".to_owned())
        }
        None => None,
    }
}

fn parse_remote_revocation(provider: &Object<'_, '_>) -> Parsed<Option<RemoteRevocation>> {
    let cluster = provider.optional("revocationCluster", non_empty_string)?;
    let refresh = provider.optional("revocationRefreshSeconds", positive_integer)?;
    let Some(url) = provider.optional("revocationUri", |value, path| {
        HttpUrl::parse(string(value, path)?, path)
    })?
    else {
        if cluster.is_some() || refresh.is_some() {
            return Err(error(
                provider.path_of("revocationUri"),
                "required when revocationCluster or revocationRefreshSeconds is given",
            ));
        }
        return Ok(None);
    };
    Ok(Some(RemoteRevocation {
        target: url.target(cluster),
        refresh_seconds: refresh.unwrap_or(DEFAULT_REVOCATION_REFRESH_SECONDS),
    }))
}

const DEFAULT_REVOCATION_REFRESH_SECONDS: u64 = 60;

/// A fetched revocation list: the shape of a provider's `revoked`.
pub fn parse_revocation_list(value: &Value) -> Result<Revoked, String> {
    parse_revoked(value, &At::Top.field("(revocation list)")).map_err(|e| e.to_string())
}

fn parse_revoked(value: &Value, path: &At<'_>) -> Parsed<Revoked> {
    let revoked = Object::new(value, path, &["jtis", "subjects", "subjectsIssuedBefore"])?;
    let set = |key: &str| -> Parsed<std::collections::HashSet<String>> {
        Ok(revoked
            .optional(key, |v, p| items(v, p, non_empty_string))?
            .unwrap_or_default()
            .into_iter()
            .collect())
    };
    let mut subjects_issued_before = std::collections::HashMap::new();
    if let Some(map) = revoked.optional("subjectsIssuedBefore", |v, p| {
        v.as_object()
            .cloned()
            .ok_or_else(|| error(p, "expected an object of subject: Unix time"))
    })? {
        let map_path = revoked.path_of("subjectsIssuedBefore");
        for (subject, time) in &map {
            let at = map_path.field(subject);
            subjects_issued_before.insert(subject.clone(), non_negative_integer(time, &at)?);
        }
    }
    Ok(Revoked {
        jtis: set("jtis")?,
        subjects: set("subjects")?,
        subjects_issued_before,
    })
}

fn parse_audit(value: &Value, path: &At<'_>) -> Parsed<Audit> {
    let audit = Object::new(value, path, &["level", "allowedSampleRate"])?;
    let defaults = Audit::default();
    let level = match audit.optional("level", string)? {
        None => defaults.level,
        Some(level) => match level.as_str() {
            "off" => AuditLevel::Off,
            "debug" => AuditLevel::Debug,
            "info" => AuditLevel::Info,
            "warn" => AuditLevel::Warn,
            _ => {
                return Err(error(
                    audit.path_of("level"),
                    "must be \"off\", \"debug\", \"info\" or \"warn\"",
                ))
            }
        },
    };
    let allowed_sample_rate = match audit.optional("allowedSampleRate", |v, p| {
        v.as_f64().ok_or_else(|| error(p, "expected a number"))
    })? {
        None => defaults.allowed_sample_rate,
        Some(rate) if (0.0..=1.0).contains(&rate) => rate,
        Some(_) => {
            return Err(error(
                audit.path_of("allowedSampleRate"),
                "must be between 0 and 1",
            ))
        }
    };
    Ok(Audit {
        level,
        allowed_sample_rate,
    })
}

fn parse_unmatched(value: &Value, path: &At<'_>) -> Parsed<Unmatched> {
    one_of(
        value,
        path,
        &[
            ("authenticated", Unmatched::Authenticated),
            ("anonymous", Unmatched::Anonymous),
            ("deny", Unmatched::Deny),
        ],
    )
}

fn parse_mode(value: &Value, path: &At<'_>) -> Parsed<Mode> {
    one_of(
        value,
        path,
        &[("enforce", Mode::Enforce), ("report", Mode::Report)],
    )
}

/// The realm goes into a quoted string of `WWW-Authenticate`, so it must not be able to end it.
fn parse_realm(value: &Value, path: &At<'_>) -> Parsed<String> {
    let realm = non_empty_string(value, path)?;
    if !fits_quoted_string(&realm) {
        return Err(error(
            path,
            "must be printable ASCII without '\"' or '\\' (it is sent in WWW-Authenticate)",
        ));
    }
    Ok(realm)
}

fn parse_limits(value: &Value, path: &At<'_>) -> Parsed<Limits> {
    let limits = Object::new(
        value,
        path,
        &[
            "maxTokenBytes",
            "maxJsonDepth",
            "maxJsonMembers",
            "maxJwksBytes",
            "maxJwksKeys",
            "maxHeldRequests",
            "maxCachedTokens",
            "maxCachedSessions",
            "maxRevocationBytes",
            "maxDpopProofs",
            "maxOutboundTokens",
        ],
    )?;
    let defaults = Limits::default();
    let limit = |key: &str, default: usize| -> Parsed<usize> {
        Ok(limits.optional(key, positive_usize)?.unwrap_or(default))
    };
    // Cache sizes may be 0 (the cache is off).
    let cache_size = |key: &str, default: usize| -> Parsed<usize> {
        match limits.optional(key, non_negative_integer)? {
            Some(n) => usize::try_from(n).map_err(|_| error(limits.path_of(key), "too large")),
            None => Ok(default),
        }
    };
    let max_cached_tokens = cache_size("maxCachedTokens", defaults.max_cached_tokens)?;
    Ok(Limits {
        max_token_bytes: limit("maxTokenBytes", defaults.max_token_bytes)?,
        max_json_depth: limit("maxJsonDepth", defaults.max_json_depth)?,
        max_json_members: limit("maxJsonMembers", defaults.max_json_members)?,
        max_jwks_bytes: limit("maxJwksBytes", defaults.max_jwks_bytes)?,
        max_jwks_keys: limit("maxJwksKeys", defaults.max_jwks_keys)?,
        max_held_requests: limit("maxHeldRequests", defaults.max_held_requests)?,
        max_cached_tokens,
        max_cached_sessions: cache_size("maxCachedSessions", defaults.max_cached_sessions)?,
        max_revocation_bytes: limit("maxRevocationBytes", defaults.max_revocation_bytes)?,
        max_dpop_proofs: limit("maxDpopProofs", defaults.max_dpop_proofs)?,
        max_outbound_tokens: limit("maxOutboundTokens", defaults.max_outbound_tokens)?,
    })
}

mod answers;
mod client;
mod fields;
mod login;
mod outbound;
mod overlap;
mod providers;
mod request_match;
mod resource;
mod rules;
mod sender;
mod tenancy;
#[cfg(test)]
mod tests;

pub use answers::*;
pub use client::*;
use fields::*;
pub use login::*;
pub use outbound::*;
use providers::*;
pub use providers::{http_target, metric_label};
use request_match::*;
pub use resource::METADATA_PATH;
use resource::*;
use rules::*;
use sender::*;
pub use tenancy::*;
