//! The plugin configuration (`docs/configuration.md`), parsed and validated.
//! Every name here maps to a field of the contract; the parser rejects unknown fields and
//! reports problems as `field.path: problem`.

use crate::alg::{Alg, AlgSet, KeyFamily};
use crate::keys::JwksLimits;
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
    /// `limits.maxRevocationBytes`, default 1 MiB: a larger fetched revocation list is refused.
    pub max_revocation_bytes: usize,
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
            max_revocation_bytes: 1024 * 1024,
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
    /// Project addition: `mode` per rule; `None` follows the top-level `mode`. A rule in
    /// `report` mode refuses nothing, so a new rule can be tried beside enforced ones.
    pub mode: Option<Mode>,
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

fn error(path: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

type Parsed<T> = Result<T, ConfigError>;

/// Parses and validates the plugin configuration JSON.
pub fn parse(json: &str) -> Parsed<Config> {
    if json.trim().is_empty() {
        return Err(error(WHOLE_CONFIG, "empty; expected a JSON object"));
    }
    // serde_json's syntax errors name a position, never the input text (which may hold keys).
    let value: Value = serde_json::from_str(json)
        .map_err(|e| error(WHOLE_CONFIG, format!("not valid JSON: {e}")))?;
    let config = parse_config(&value)?;
    // serde_json keeps the last of two equal member names; a config must not say two things.
    crate::json::parse_object(json.as_bytes(), CONFIG_JSON_LIMITS)
        .map_err(|e| error(WHOLE_CONFIG, e.describe()))?;
    Ok(config)
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
];

fn parse_config(value: &Value) -> Parsed<Config> {
    let config = Object::new(value, "", CONFIG_FIELDS)?;
    let providers = config.required("providers", parse_providers)?;
    let rules = config
        .optional("rules", |value, path| parse_rules(value, path, &providers))?
        .unwrap_or_default();
    let limits = config.optional("limits", parse_limits)?.unwrap_or_default();
    for (i, provider) in providers.iter().enumerate() {
        if let KeySource::Inline(jwks) = &provider.keys {
            crate::keys::parse_jwks(jwks.as_bytes(), &JwksLimits::from(&limits), true)
                .map_err(|e| error(&format!("providers[{i}].jwks"), e.describe()))?;
        }
    }
    Ok(Config {
        providers,
        rules,
        unmatched: config
            .optional("unmatched", parse_unmatched)?
            .unwrap_or(Unmatched::Authenticated),
        realm: config.optional("realm", parse_realm)?,
        bypass_cors_preflight: config
            .optional("bypassCorsPreflight", boolean)?
            .unwrap_or(true),
        mode: config
            .optional("mode", parse_mode)?
            .unwrap_or(Mode::Enforce),
        limits,
        audit: config.optional("audit", parse_audit)?.unwrap_or_default(),
    })
}

fn parse_remote_revocation(provider: &Object<'_>) -> Parsed<Option<RemoteRevocation>> {
    let cluster = provider.optional("revocationCluster", non_empty_string)?;
    let refresh = provider.optional("revocationRefreshSeconds", positive_integer)?;
    let Some(url) = provider.optional("revocationUri", |value, path| {
        HttpUrl::parse(string(value, path)?, path)
    })?
    else {
        if cluster.is_some() || refresh.is_some() {
            return Err(error(
                &provider.path_of("revocationUri"),
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
    parse_revoked(value, "(revocation list)").map_err(|e| e.to_string())
}

fn parse_revoked(value: &Value, path: &str) -> Parsed<Revoked> {
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
            let at = format!("{map_path}.{subject}");
            subjects_issued_before.insert(subject.clone(), non_negative_integer(time, &at)?);
        }
    }
    Ok(Revoked {
        jtis: set("jtis")?,
        subjects: set("subjects")?,
        subjects_issued_before,
    })
}

fn parse_audit(value: &Value, path: &str) -> Parsed<Audit> {
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
                    &audit.path_of("level"),
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
                &audit.path_of("allowedSampleRate"),
                "must be between 0 and 1",
            ))
        }
    };
    Ok(Audit {
        level,
        allowed_sample_rate,
    })
}

fn parse_unmatched(value: &Value, path: &str) -> Parsed<Unmatched> {
    match string(value, path)?.as_str() {
        "authenticated" => Ok(Unmatched::Authenticated),
        "anonymous" => Ok(Unmatched::Anonymous),
        "deny" => Ok(Unmatched::Deny),
        _ => Err(error(
            path,
            "must be \"authenticated\", \"anonymous\" or \"deny\"",
        )),
    }
}

fn parse_mode(value: &Value, path: &str) -> Parsed<Mode> {
    match string(value, path)?.as_str() {
        "enforce" => Ok(Mode::Enforce),
        "report" => Ok(Mode::Report),
        _ => Err(error(path, "must be \"enforce\" or \"report\"")),
    }
}

/// The realm goes into a quoted string of `WWW-Authenticate`, so it must not be able to end it.
fn parse_realm(value: &Value, path: &str) -> Parsed<String> {
    let realm = non_empty_string(value, path)?;
    if !fits_quoted_string(&realm) {
        return Err(error(
            path,
            "must be printable ASCII without '\"' or '\\' (it is sent in WWW-Authenticate)",
        ));
    }
    Ok(realm)
}

fn parse_limits(value: &Value, path: &str) -> Parsed<Limits> {
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
            "maxRevocationBytes",
        ],
    )?;
    let defaults = Limits::default();
    let limit = |key: &str, default: usize| -> Parsed<usize> {
        Ok(limits.optional(key, positive_usize)?.unwrap_or(default))
    };
    let max_cached_tokens = match limits.optional("maxCachedTokens", non_negative_integer)? {
        Some(n) => usize::try_from(n)
            .map_err(|_| error(&limits.path_of("maxCachedTokens"), "too large"))?,
        None => defaults.max_cached_tokens,
    };
    Ok(Limits {
        max_token_bytes: limit("maxTokenBytes", defaults.max_token_bytes)?,
        max_json_depth: limit("maxJsonDepth", defaults.max_json_depth)?,
        max_json_members: limit("maxJsonMembers", defaults.max_json_members)?,
        max_jwks_bytes: limit("maxJwksBytes", defaults.max_jwks_bytes)?,
        max_jwks_keys: limit("maxJwksKeys", defaults.max_jwks_keys)?,
        max_held_requests: limit("maxHeldRequests", defaults.max_held_requests)?,
        max_cached_tokens,
        max_revocation_bytes: limit("maxRevocationBytes", defaults.max_revocation_bytes)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Providers

const PROVIDER_FIELDS: &[&str] = &[
    "issuer",
    "audiences",
    "jwksUri",
    "jwks",
    "jwksCluster",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "forwardOriginalToken",
    "timeout",
    "name",
    "clockSkewSeconds",
    "maxLifetimeSeconds",
    "jwksCacheSeconds",
    "scopeClaims",
    "algorithms",
    "jwksMinRefetchSeconds",
    "jwksMaxStaleSeconds",
    "revoked",
    "revocationUri",
    "revocationCluster",
    "revocationRefreshSeconds",
];

const DEFAULT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 7 * 24 * 3600;
const DEFAULT_JWKS_CACHE_SECONDS: u64 = 600;
const DEFAULT_JWKS_MIN_REFETCH_SECONDS: u64 = 30;
const DEFAULT_JWKS_MAX_STALE_SECONDS: u64 = 24 * 3600;
const DEFAULT_SCOPE_CLAIMS: [&str; 2] = ["scope", "scp"];

fn parse_providers(value: &Value, path: &str) -> Parsed<Vec<Provider>> {
    let items = list(value, path)?;
    if items.is_empty() {
        return Err(error(path, "must list at least one provider"));
    }
    let mut providers: Vec<Provider> = Vec::with_capacity(items.len());
    for (item_path, item) in items {
        let (provider, name_given) = parse_provider(item, &item_path)?;
        // A token's `iss` selects its provider, so two providers may not claim the same issuer.
        if let Some(index) = providers.iter().position(|p| p.issuer == provider.issuer) {
            return Err(error(
                &format!("{item_path}.issuer"),
                format!("same issuer as providers[{index}]"),
            ));
        }
        if let Some(index) = providers.iter().position(|p| p.name == provider.name) {
            let (field, problem) = if name_given {
                ("name", format!("providers[{index}] already has this name"))
            } else {
                (
                    "issuer",
                    format!("the name defaults to the issuer, which providers[{index}] already has as its name"),
                )
            };
            return Err(error(&format!("{item_path}.{field}"), problem));
        }
        // Metrics name providers by label: two that share one would share their counters.
        let label = metric_label(&provider.name);
        if let Some(index) = providers
            .iter()
            .position(|p| metric_label(&p.name) == label)
        {
            let field = if name_given { "name" } else { "issuer" };
            return Err(error(
                &format!("{item_path}.{field}"),
                format!(
                    "the name \"{}\" and the name of providers[{index}] are both \"{label}\" in metric names: rename one",
                    provider.name
                ),
            ));
        }
        providers.push(provider);
    }
    Ok(providers)
}

/// A provider's name as one metric-name segment: anything but ASCII letters and digits
/// becomes `_`.
pub fn metric_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Returns the provider and whether its `name` was given (rather than defaulted to the issuer).
fn parse_provider(value: &Value, path: &str) -> Parsed<(Provider, bool)> {
    let provider = Object::new(value, path, PROVIDER_FIELDS)?;
    let issuer = provider.required("issuer", non_empty_string)?;
    let name = provider.optional("name", non_empty_string)?;
    let name_given = name.is_some();
    let keys = parse_key_source(&provider, &issuer)?;
    let (from_headers, from_params, from_cookies) = parse_token_locations(&provider)?;
    let algorithms = provider
        .optional("algorithms", |value, path| {
            parse_algorithms(value, path, matches!(keys, KeySource::Inline(_)))
        })?
        .unwrap_or_else(|| default_algorithms(&keys));
    let parsed = Provider {
        name: name.unwrap_or_else(|| issuer.clone()),
        issuer,
        audiences: provider
            .optional("audiences", |value, path| {
                items(value, path, non_empty_string)
            })?
            .unwrap_or_default(),
        keys,
        from_headers,
        from_params,
        from_cookies,
        output_payload_to_header: provider.optional("outputPayloadToHeader", header_name)?,
        output_claim_to_headers: provider
            .optional("outputClaimToHeaders", |value, path| {
                items(value, path, parse_claim_to_header)
            })?
            .unwrap_or_default(),
        forward_original_token: provider
            .optional("forwardOriginalToken", boolean)?
            .unwrap_or(false),
        timeout_ms: provider
            .optional("timeout", parse_duration_ms)?
            .unwrap_or(DEFAULT_TIMEOUT_MS),
        clock_skew_seconds: provider
            .optional("clockSkewSeconds", non_negative_integer)?
            .unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS),
        // Access tokens are short-lived: 7 days covers every major IdP's default; 0: off.
        max_lifetime_seconds: match provider.optional("maxLifetimeSeconds", non_negative_integer)? {
            None => Some(DEFAULT_MAX_LIFETIME_SECONDS),
            Some(0) => None,
            seconds => seconds,
        },
        jwks_cache_seconds: provider
            .optional("jwksCacheSeconds", positive_integer)?
            .unwrap_or(DEFAULT_JWKS_CACHE_SECONDS),
        scope_claims: provider
            .optional("scopeClaims", |value, path| {
                non_empty_items(value, path, parse_claim_path)
            })?
            .unwrap_or_else(|| {
                DEFAULT_SCOPE_CLAIMS
                    .iter()
                    .map(|name| ClaimPath(vec![(*name).to_owned()]))
                    .collect()
            }),
        algorithms,
        jwks_cluster: provider.optional("jwksCluster", non_empty_string)?,
        jwks_min_refetch_seconds: provider
            .optional("jwksMinRefetchSeconds", non_negative_integer)?
            .unwrap_or(DEFAULT_JWKS_MIN_REFETCH_SECONDS),
        jwks_max_stale_seconds: provider
            .optional("jwksMaxStaleSeconds", non_negative_integer)?
            .unwrap_or(DEFAULT_JWKS_MAX_STALE_SECONDS),
        revoked: provider
            .optional("revoked", parse_revoked)?
            .unwrap_or_default(),
        revocation: parse_remote_revocation(&provider)?,
    };
    Ok((parsed, name_given))
}

fn parse_key_source(provider: &Object<'_>, issuer: &str) -> Parsed<KeySource> {
    let inline = provider.optional("jwks", parse_inline_jwks)?;
    let uri = provider.optional("jwksUri", |value, path| {
        HttpUrl::parse(string(value, path)?, path)
    })?;
    let cluster = provider.optional("jwksCluster", non_empty_string)?;
    match (inline, uri) {
        (Some(_), Some(_)) => Err(error(
            &provider.path_of("jwksUri"),
            "give either jwks or jwksUri, not both",
        )),
        (Some(jwks), None) => match cluster {
            Some(_) => Err(error(
                &provider.path_of("jwksCluster"),
                "keys are never fetched for a provider with inline jwks",
            )),
            None => Ok(KeySource::Inline(jwks)),
        },
        (None, Some(url)) => Ok(KeySource::Remote(url.target(cluster))),
        (None, None) => {
            let url = discovery_url(issuer).ok_or_else(|| {
                error(
                    &provider.path,
                    "no jwks or jwksUri, and issuer is not an http(s) URL to discover keys from",
                )
            })?;
            Ok(KeySource::Discovery(url.target(cluster)))
        }
    }
}

/// OpenID Connect Discovery 1.0 §4: `/.well-known/openid-configuration` appended to the
/// issuer after removing one terminating `/`. An issuer with a query cannot be discovered.
fn discovery_url(issuer: &str) -> Option<HttpUrl> {
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    let issuer_url = HttpUrl::parse(base.to_owned(), "").ok()?;
    if issuer_url.path_and_query.contains('?') {
        return None;
    }
    let url = format!("{base}/.well-known/openid-configuration");
    HttpUrl::parse(url, "").ok()
}

/// Only the type here: the key set itself is checked once `limits` are known.
fn parse_inline_jwks(value: &Value, path: &str) -> Parsed<String> {
    string(value, path)
}

/// A URL learnt at run time (a discovered `jwks_uri`) as a fetch target; `cluster` is the
/// configured `jwksCluster`, if any.
pub fn http_target(url: &str, cluster: Option<&str>) -> Result<HttpTarget, String> {
    HttpUrl::parse(url.to_owned(), "")
        .map(|parsed| parsed.target(cluster.map(str::to_owned)))
        .map_err(|e| e.problem)
}

/// An `http` or `https` URL, split the way a dispatched call needs it.
struct HttpUrl {
    url: String,
    /// Lower-cased; an IPv6 literal keeps its brackets.
    host: String,
    explicit_port: Option<u16>,
    default_port: u16,
    /// Never empty: `/` when the URL has no path.
    path_and_query: String,
}

impl HttpUrl {
    fn parse(url: String, path: &str) -> Parsed<HttpUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| error(path, "not an http(s) URL"))?;
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else if scheme.eq_ignore_ascii_case("http") {
            80
        } else {
            return Err(error(path, "not an http(s) URL"));
        };
        // It becomes `:path` and `:authority` of a request, so only plain visible ASCII will do.
        if !rest
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\')
        {
            return Err(error(
                path,
                "contains a character that is not allowed in a URL (space, control, non-ASCII or '\\')",
            ));
        }
        if rest.contains('#') {
            return Err(error(path, "must not have a fragment"));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(error(path, "must not contain userinfo"));
        }
        let (host, explicit_port) = split_host_port(authority, path)?;
        let path_and_query = if path_and_query.starts_with('/') {
            path_and_query.to_owned()
        } else {
            format!("/{path_and_query}")
        };
        Ok(HttpUrl {
            url,
            host,
            explicit_port,
            default_port,
            path_and_query,
        })
    }

    /// Where calls to this URL go; without a `cluster` override, Istio's name for the host's cluster.
    fn target(self, cluster: Option<String>) -> HttpTarget {
        let port = self.explicit_port.unwrap_or(self.default_port);
        let cluster = cluster.unwrap_or_else(|| {
            // Istio names clusters after service hosts, which are never bracketed.
            let host = self.host.trim_start_matches('[').trim_end_matches(']');
            format!("outbound|{port}||{host}")
        });
        let authority = match self.explicit_port {
            Some(port) if port != self.default_port => format!("{}:{port}", self.host),
            _ => self.host,
        };
        HttpTarget {
            url: self.url,
            cluster,
            authority,
            path: self.path_and_query,
        }
    }
}

fn split_host_port(authority: &str, path: &str) -> Parsed<(String, Option<u16>)> {
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        let (address, after) = literal
            .split_once(']')
            .ok_or_else(|| error(path, "has an unterminated IPv6 address"))?;
        let is_ipv6 = address.contains(':')
            && address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !is_ipv6 {
            return Err(error(path, "has an invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                error(
                    path,
                    "has something other than a port after the IPv6 address",
                )
            })?),
        };
        (format!("[{}]", address.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(error(path, "has no host"));
        }
        if !is_host_name(host) {
            return Err(error(path, "has an invalid host"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(digits) => {
            let number = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u16>().ok())
                .flatten()
                .filter(|port| *port != 0);
            Some(number.ok_or_else(|| error(path, "port must be 1-65535"))?)
        }
    };
    Ok((host, port))
}

/// Returns `(fromHeaders, fromParams, fromCookies)`. As in Istio and Envoy, the default
/// `Authorization: Bearer` location applies only when no other location is configured.
fn parse_token_locations(
    provider: &Object<'_>,
) -> Parsed<(Vec<HeaderLocation>, Vec<String>, Vec<String>)> {
    let params = provider
        .optional("fromParams", |value, path| {
            items(value, path, non_empty_string)
        })?
        .unwrap_or_default();
    let cookies = provider
        .optional("fromCookies", |value, path| {
            items(value, path, non_empty_string)
        })?
        .unwrap_or_default();
    let headers = provider.optional("fromHeaders", |value, path| {
        items(value, path, parse_header_location)
    })?;
    let headers = match headers {
        Some(headers) => headers,
        None if params.is_empty() && cookies.is_empty() => vec![HeaderLocation {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        }],
        None => Vec::new(),
    };
    if headers.is_empty() && params.is_empty() && cookies.is_empty() {
        return Err(error(
            &provider.path_of("fromHeaders"),
            "is empty and there are no fromParams or fromCookies: a token could never be found",
        ));
    }
    Ok((headers, params, cookies))
}

fn parse_header_location(value: &Value, path: &str) -> Parsed<HeaderLocation> {
    let location = Object::new(value, path, &["name", "prefix"])?;
    Ok(HeaderLocation {
        name: location.required("name", header_name)?,
        prefix: location.optional("prefix", string)?.unwrap_or_default(),
    })
}

fn parse_claim_to_header(value: &Value, path: &str) -> Parsed<ClaimToHeader> {
    let output = Object::new(value, path, &["header", "claim"])?;
    Ok(ClaimToHeader {
        header: output.required("header", header_name)?,
        claim: output.required("claim", parse_claim_path)?,
    })
}

/// An HTTP field name (RFC 9110 token), returned lower-cased as HTTP/2 carries it.
fn header_name(value: &Value, path: &str) -> Parsed<String> {
    let name = non_empty_string(value, path)?;
    if name.starts_with(':') {
        return Err(error(path, "pseudo-headers cannot be used"));
    }
    if !is_token(&name) {
        return Err(error(path, "not a valid HTTP header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// A DNS name or IPv4 address as it appears in a URL or `:authority` (no percent-encoding).
fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// RFC 9110 `token`: header names and methods.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"5s"`, `"500ms"`, `"1.5s"`, `"2m"`, `"1h"` in milliseconds.
fn parse_duration_ms(value: &Value, path: &str) -> Parsed<u64> {
    let text = string(value, path)?;
    if text.starts_with('-') {
        return Err(error(path, "must not be negative"));
    }
    let malformed = || error(path, "not a duration like \"5s\", \"500ms\" or \"1.5s\"");
    let (number, unit_ms) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1_000)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60_000)
    } else if let Some(number) = text.strip_suffix('h') {
        (number, 3_600_000)
    } else {
        return Err(malformed());
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return Err(malformed()),
        None => (number, ""),
    };
    let all_digits = |digits: &str| digits.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(malformed());
    }
    let too_large = || error(path, "is too large");
    let not_whole_ms = || error(path, "must be a whole number of milliseconds");
    let whole_ms = whole
        .parse::<u64>()
        .ok()
        .and_then(|whole| whole.checked_mul(unit_ms))
        .ok_or_else(too_large)?;
    let fraction = fraction.trim_end_matches('0');
    // Nine decimals are enough for any whole number of milliseconds in these units.
    let fraction_ms = if fraction.is_empty() {
        0
    } else {
        let digits = u32::try_from(fraction.len())
            .ok()
            .filter(|digits| *digits <= 9)
            .ok_or_else(not_whole_ms)?;
        let denominator = 10u64.checked_pow(digits).ok_or_else(not_whole_ms)?;
        let scaled = fraction
            .parse::<u64>()
            .ok()
            .and_then(|numerator| numerator.checked_mul(unit_ms))
            .ok_or_else(too_large)?;
        if scaled % denominator != 0 {
            return Err(not_whole_ms());
        }
        scaled / denominator
    };
    let ms = whole_ms.checked_add(fraction_ms).ok_or_else(too_large)?;
    if ms == 0 {
        return Err(error(path, "must be greater than zero"));
    }
    Ok(ms)
}

fn parse_algorithms(value: &Value, path: &str, inline_keys: bool) -> Parsed<AlgSet> {
    let algorithms = non_empty_items(value, path, |value, path| {
        let name = string(value, path)?;
        if name.eq_ignore_ascii_case("none") {
            return Err(error(path, "unsecured tokens cannot be allowed"));
        }
        let alg = Alg::from_name(&name).ok_or_else(|| {
            let supported: Vec<&str> = Alg::ALL.iter().map(|alg| alg.name()).collect();
            error(
                path,
                format!(
                    "unknown algorithm (supported: {}; names are case-sensitive)",
                    supported.join(", ")
                ),
            )
        })?;
        // An HMAC key is a shared secret: it can only be configured, never fetched.
        if alg.key_family() == KeyFamily::Oct && !inline_keys {
            return Err(error(
                path,
                format!("{alg} needs the HMAC key inline in jwks"),
            ));
        }
        Ok(alg)
    })?;
    reject_duplicates(&algorithms, path)?;
    Ok(algorithms.into_iter().collect())
}

/// All algorithms, except HMAC for fetched keys: an HMAC key is a secret and is never fetched.
fn default_algorithms(keys: &KeySource) -> AlgSet {
    match keys {
        KeySource::Inline(_) => AlgSet::all(),
        KeySource::Remote(_) | KeySource::Discovery(_) => Alg::ALL
            .into_iter()
            .filter(|alg| alg.key_family() != KeyFamily::Oct)
            .collect(),
    }
}

fn parse_claim_path(value: &Value, path: &str) -> Parsed<ClaimPath> {
    match value {
        Value::String(dotted) => {
            if dotted.is_empty() {
                return Err(error(path, "must not be empty"));
            }
            let names: Vec<String> = dotted.split('.').map(str::to_owned).collect();
            if names.iter().any(String::is_empty) {
                return Err(error(
                    path,
                    "has an empty name between dots (for names with dots, use a list of names)",
                ));
            }
            Ok(ClaimPath(names))
        }
        Value::Array(_) => Ok(ClaimPath(non_empty_items(value, path, non_empty_string)?)),
        _ => Err(error(
            path,
            "expected a claim path: a dotted string or a list of names",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Rules

fn parse_rules(value: &Value, path: &str, providers: &[Provider]) -> Parsed<Vec<Rule>> {
    let mut rules: Vec<Rule> = Vec::new();
    for (item_path, item) in list(value, path)? {
        let rule = Object::new(
            item,
            &item_path,
            &[
                "name",
                "match",
                "allowAnonymous",
                "deny",
                "requires",
                "requiresAny",
                "mode",
            ],
        )?;
        let given_name = rule.optional("name", non_empty_string)?;
        let name_given = given_name.is_some();
        let name = given_name.unwrap_or_else(|| item_path.clone());
        if let Some(index) = rules.iter().position(|other| other.name == name) {
            let at = if name_given {
                rule.path_of("name")
            } else {
                item_path.clone()
            };
            return Err(error(
                &at,
                format!("rules[{index}] already has the name \"{name}\""),
            ));
        }
        rules.push(Rule {
            name,
            matcher: rule
                .optional("match", parse_rule_match)?
                .unwrap_or_default(),
            action: parse_action(&rule, providers)?,
            mode: rule.optional("mode", parse_mode)?,
        });
    }
    Ok(rules)
}

fn parse_action(rule: &Object<'_>, providers: &[Provider]) -> Parsed<Action> {
    let mut actions: Vec<(&str, Action)> = Vec::new();
    for (key, action) in [
        ("allowAnonymous", Action::AllowAnonymous),
        ("deny", Action::Deny),
    ] {
        match rule.optional(key, boolean)? {
            Some(true) => actions.push((key, action)),
            Some(false) => {
                return Err(error(
                    &rule.path_of(key),
                    "false has no meaning; leave the field out",
                ))
            }
            None => {}
        }
    }
    if let Some(requirement) = rule.optional("requires", |value, path| {
        parse_requirement(value, path, providers)
    })? {
        actions.push(("requires", Action::Requires(requirement)));
    }
    if let Some(requirements) = rule.optional("requiresAny", |value, path| {
        non_empty_items(value, path, |value, path| {
            parse_requirement(value, path, providers)
        })
    })? {
        actions.push(("requiresAny", Action::RequiresAny(requirements)));
    }
    let mut actions = actions.into_iter();
    match (actions.next(), actions.next()) {
        (Some((_, action)), None) => Ok(action),
        (None, _) => Err(error(
            &rule.path,
            "needs one of allowAnonymous: true, deny: true, requires or requiresAny",
        )),
        (Some((first, _)), Some((second, _))) => Err(error(
            &rule.path,
            format!("has both {first} and {second}; give exactly one"),
        )),
    }
}

fn parse_rule_match(value: &Value, path: &str) -> Parsed<RuleMatch> {
    let matcher = Object::new(value, path, &["paths", "methods", "hosts"])?;
    Ok(RuleMatch {
        paths: match_list(&matcher, "paths", parse_path_pattern)?,
        methods: match_list(&matcher, "methods", parse_method)?,
        hosts: match_list(&matcher, "hosts", parse_host_pattern)?,
    })
}

/// An empty list would match no request at all, which is never what a rule means.
fn match_list<T>(
    matcher: &Object<'_>,
    key: &str,
    item: fn(&Value, &str) -> Parsed<T>,
) -> Parsed<Option<Vec<T>>> {
    matcher.optional(key, |value, path| {
        let list = items(value, path, item)?;
        if list.is_empty() {
            return Err(error(
                path,
                "is empty and would match nothing; leave it out to match everything",
            ));
        }
        Ok(list)
    })
}

fn parse_path_pattern(value: &Value, path: &str) -> Parsed<PathPattern> {
    let pattern = non_empty_string(value, path)?;
    if !pattern.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(error(
            path,
            "contains a character a request path cannot have (space, control or non-ASCII)",
        ));
    }
    if pattern.contains(['?', '#']) {
        return Err(error(
            path,
            "must not contain '?' or '#': paths are matched without the query string",
        ));
    }
    if pattern == "*" {
        return Ok(PathPattern::Any);
    }
    let misplaced_star = || {
        error(
            path,
            "'*' is only allowed alone, at the start (suffix) or at the end (prefix)",
        )
    };
    if let Some(suffix) = pattern.strip_prefix('*') {
        if suffix.contains('*') {
            return Err(misplaced_star());
        }
        return Ok(PathPattern::Suffix(suffix.to_owned()));
    }
    let (pattern, is_prefix) = match pattern.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (pattern.as_str(), false),
    };
    if pattern.contains('*') {
        return Err(misplaced_star());
    }
    if !pattern.starts_with('/') {
        return Err(error(path, "must start with '/' (or '*' for a suffix)"));
    }
    // Requests are matched after normalisation, so these would silently never match.
    if pattern.contains("//")
        || pattern
            .split('/')
            .any(|segment| segment == "." || segment == "..")
    {
        return Err(error(
            path,
            "never matches: request paths are normalised (no '//', '.' or '..' segments)",
        ));
    }
    Ok(if is_prefix {
        PathPattern::Prefix(pattern.to_owned())
    } else {
        PathPattern::Exact(pattern.to_owned())
    })
}

fn parse_method(value: &Value, path: &str) -> Parsed<String> {
    let method = non_empty_string(value, path)?;
    if !is_token(&method) {
        return Err(error(path, "not an HTTP method"));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(error(path, "methods must be upper-case"));
    }
    Ok(method)
}

fn parse_host_pattern(value: &Value, path: &str) -> Parsed<HostPattern> {
    let host = non_empty_string(value, path)?.to_ascii_lowercase();
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if host.starts_with('[') && host.ends_with(']') {
        return Ok(HostPattern::Exact(host));
    }
    if host.contains(':') {
        return Err(error(
            path,
            "must not include a port: hosts are matched without it",
        ));
    }
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(name) => (name, true),
        None => (host.as_str(), false),
    };
    if !is_host_name(name) {
        return Err(error(
            path,
            "not a host name, \"*\" or \"*.\" followed by a domain",
        ));
    }
    Ok(if wildcard {
        HostPattern::WildcardSuffix(format!(".{name}"))
    } else {
        HostPattern::Exact(host)
    })
}

fn parse_requirement(value: &Value, path: &str, providers: &[Provider]) -> Parsed<Requirement> {
    let requirement = Object::new(value, path, &["providers", "scopes", "claims"])?;
    let provider_indexes = requirement.optional("providers", |value, path| {
        let indexes = non_empty_items(value, path, |value, path| {
            let name = string(value, path)?;
            providers
                .iter()
                .position(|provider| provider.name == name)
                .ok_or_else(|| error(path, format!("no provider is named \"{name}\"")))
        })?;
        reject_duplicates(&indexes, path)?;
        Ok(indexes)
    })?;
    Ok(Requirement {
        providers: provider_indexes,
        scopes: requirement
            .optional("scopes", |value, path| items(value, path, parse_scope))?
            .unwrap_or_default(),
        claims: requirement
            .optional("claims", |value, path| {
                items(value, path, parse_claim_condition)
            })?
            .unwrap_or_default(),
    })
}

/// Printable ASCII that cannot end or escape an HTTP quoted-string (RFC 9110 §5.6.4).
fn fits_quoted_string(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// RFC 6749 §3.3 scope-token; it is also echoed inside the quoted `scope="…"` of `WWW-Authenticate`.
fn parse_scope(value: &Value, path: &str) -> Parsed<String> {
    let scope = non_empty_string(value, path)?;
    if scope.contains(' ') || !fits_quoted_string(&scope) {
        return Err(error(
            path,
            "not a scope: printable ASCII without spaces, '\"' or '\\'",
        ));
    }
    Ok(scope)
}

fn parse_claim_condition(value: &Value, path: &str) -> Parsed<ClaimCondition> {
    let condition = Object::new(value, path, &["claim", "anyOf", "allOf", "present"])?;
    let claim = condition.required("claim", parse_claim_path)?;
    let mut tests: Vec<ClaimTest> = Vec::new();
    if let Some(values) = condition.optional("anyOf", claim_values)? {
        tests.push(ClaimTest::AnyOf(values));
    }
    if let Some(values) = condition.optional("allOf", claim_values)? {
        tests.push(ClaimTest::AllOf(values));
    }
    match condition.optional("present", boolean)? {
        Some(true) => tests.push(ClaimTest::Present),
        Some(false) => {
            return Err(error(
                &condition.path_of("present"),
                "only true is supported; leave it out otherwise",
            ))
        }
        None => {}
    }
    let mut tests = tests.into_iter();
    match (tests.next(), tests.next()) {
        (Some(test), None) => Ok(ClaimCondition { claim, test }),
        (None, _) => Err(error(path, "needs one of anyOf, allOf or present: true")),
        (Some(_), Some(_)) => Err(error(path, "give only one of anyOf, allOf or present")),
    }
}

fn claim_values(value: &Value, path: &str) -> Parsed<Vec<Value>> {
    non_empty_items(value, path, |value, path| match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(value.clone()),
        _ => Err(error(path, "expected a string, number or boolean")),
    })
}

// ---------------------------------------------------------------------------------------------
// JSON walking: every value is read together with its path, so errors can name it.

/// A JSON object whose field names have been checked against the known ones.
struct Object<'a> {
    map: &'a serde_json::Map<String, Value>,
    /// `""` for the top level.
    path: String,
}

impl<'a> Object<'a> {
    fn new(value: &'a Value, path: &str, fields: &[&str]) -> Parsed<Object<'a>> {
        let shown = if path.is_empty() { WHOLE_CONFIG } else { path };
        let map = value
            .as_object()
            .ok_or_else(|| error(shown, "expected an object"))?;
        let object = Object {
            map,
            path: path.to_owned(),
        };
        if let Some(unknown) = map.keys().find(|key| !fields.contains(&key.as_str())) {
            return Err(error(&object.path_of(unknown), "unknown field"));
        }
        Ok(object)
    }

    fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn optional<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &str) -> Parsed<T>,
    ) -> Parsed<Option<T>> {
        match self.map.get(key) {
            Some(value) => parse(value, &self.path_of(key)).map(Some),
            None => Ok(None),
        }
    }

    fn required<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&'a Value, &str) -> Parsed<T>,
    ) -> Parsed<T> {
        self.optional(key, parse)?
            .ok_or_else(|| error(&self.path_of(key), "required"))
    }
}

fn item_paths(path: &str) -> impl Iterator<Item = String> + '_ {
    (0usize..).map(move |index| format!("{path}[{index}]"))
}

fn list<'a>(value: &'a Value, path: &str) -> Parsed<Vec<(String, &'a Value)>> {
    let array = value
        .as_array()
        .ok_or_else(|| error(path, "expected a list"))?;
    Ok(item_paths(path).zip(array).collect())
}

fn items<'a, T>(
    value: &'a Value,
    path: &str,
    mut parse: impl FnMut(&'a Value, &str) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    list(value, path)?
        .into_iter()
        .map(|(item_path, item)| parse(item, &item_path))
        .collect()
}

fn non_empty_items<'a, T>(
    value: &'a Value,
    path: &str,
    parse: impl FnMut(&'a Value, &str) -> Parsed<T>,
) -> Parsed<Vec<T>> {
    let parsed = items(value, path, parse)?;
    if parsed.is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(parsed)
}

fn reject_duplicates<T: PartialEq>(values: &[T], path: &str) -> Parsed<()> {
    for ((index, value), item_path) in values.iter().enumerate().zip(item_paths(path)) {
        if values.iter().take(index).any(|earlier| earlier == value) {
            return Err(error(&item_path, "listed twice"));
        }
    }
    Ok(())
}

fn string(value: &Value, path: &str) -> Parsed<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| error(path, "expected a string"))
}

fn non_empty_string(value: &Value, path: &str) -> Parsed<String> {
    let text = string(value, path)?;
    if text.trim().is_empty() {
        return Err(error(path, "must not be empty"));
    }
    Ok(text)
}

fn boolean(value: &Value, path: &str) -> Parsed<bool> {
    value
        .as_bool()
        .ok_or_else(|| error(path, "expected true or false"))
}

fn non_negative_integer(value: &Value, path: &str) -> Parsed<u64> {
    let Value::Number(number) = value else {
        return Err(error(path, "expected an integer"));
    };
    if let Some(integer) = number.as_u64() {
        return Ok(integer);
    }
    if number.as_i64().is_some() {
        return Err(error(path, "must not be negative"));
    }
    Err(error(path, "expected an integer"))
}

fn positive_integer(value: &Value, path: &str) -> Parsed<u64> {
    let integer = non_negative_integer(value, path)?;
    if integer == 0 {
        return Err(error(path, "must be greater than zero"));
    }
    Ok(integer)
}

fn positive_usize(value: &Value, path: &str) -> Parsed<usize> {
    usize::try_from(positive_integer(value, path)?).map_err(|_| error(path, "is too large"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com";
    const JWKS_URI: &str = "https://idp.example.com/jwks";
    const INLINE_JWKS: &str =
        r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE"}]}"#;

    fn ok(json: &str) -> Config {
        parse(json).unwrap_or_else(|e| panic!("config rejected: {e}"))
    }

    fn problem(json: &str) -> String {
        match parse(json) {
            Ok(_) => panic!("config accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_problem(json: &str, expected: &str) {
        assert_eq!(problem(json), expected, "config: {json}");
    }

    /// A config with one provider: the minimal valid one, with `patch` applied (null removes a field).
    fn provider_config(patch: Value) -> String {
        let mut provider = json!({"issuer": ISSUER, "jwksUri": JWKS_URI});
        for (key, value) in patch.as_object().unwrap() {
            if value.is_null() {
                provider.as_object_mut().unwrap().remove(key);
            } else {
                provider[key] = value.clone();
            }
        }
        json!({ "providers": [provider] }).to_string()
    }

    fn provider(patch: Value) -> Provider {
        ok(&provider_config(patch)).providers.remove(0)
    }

    /// A config with providers `idp` and `other`, and the given rules.
    fn rules_config(rules: Value) -> String {
        json!({
            "providers": [
                {"name": "idp", "issuer": ISSUER, "jwksUri": JWKS_URI},
                {"name": "other", "issuer": "https://other.example.com", "jwks": INLINE_JWKS}
            ],
            "rules": rules
        })
        .to_string()
    }

    fn rule_config(rule: Value) -> String {
        rules_config(json!([rule]))
    }

    fn rule(rule: Value) -> Rule {
        ok(&rule_config(rule)).rules.remove(0)
    }

    // --- the whole document -------------------------------------------------------------------

    #[test]
    fn empty_config_is_refused() {
        assert_problem("", "(config): empty; expected a JSON object");
        assert_problem(" \n\t", "(config): empty; expected a JSON object");
    }

    #[test]
    fn invalid_json_is_refused_with_its_position() {
        let message = problem(r#"{"providers": [}"#);
        assert!(
            message.starts_with("(config): not valid JSON: "),
            "{message}"
        );
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn non_object_config_is_refused() {
        assert_problem("[]", "(config): expected an object");
        assert_problem("\"x\"", "(config): expected an object");
    }

    #[test]
    fn unknown_top_level_field_is_refused() {
        let mut config: Value = serde_json::from_str(&provider_config(json!({}))).unwrap();
        config["realms"] = json!("orders");
        assert_problem(&config.to_string(), "realms: unknown field");
    }

    #[test]
    fn providers_are_required() {
        assert_problem("{}", "providers: required");
        assert_problem(
            r#"{"providers": []}"#,
            "providers: must list at least one provider",
        );
        assert_problem(r#"{"providers": {}}"#, "providers: expected a list");
    }

    fn top_level(field: &str, value: Value) -> String {
        let mut config: Value = serde_json::from_str(&provider_config(json!({}))).unwrap();
        config[field] = value;
        config.to_string()
    }

    #[test]
    fn top_level_values_are_read() {
        let config = ok(&top_level("unmatched", json!("anonymous")));
        assert_eq!(config.unmatched, Unmatched::Anonymous);
        let config = ok(&top_level("unmatched", json!("deny")));
        assert_eq!(config.unmatched, Unmatched::Deny);
        let config = ok(&top_level("mode", json!("report")));
        assert_eq!(config.mode, Mode::Report);
        let config = ok(&top_level("realm", json!("orders api")));
        assert_eq!(config.realm.as_deref(), Some("orders api"));
        let config = ok(&top_level("bypassCorsPreflight", json!(false)));
        assert!(!config.bypass_cors_preflight);
    }

    #[test]
    fn unknown_unmatched_is_refused() {
        assert_problem(
            &top_level("unmatched", json!("allow")),
            "unmatched: must be \"authenticated\", \"anonymous\" or \"deny\"",
        );
    }

    #[test]
    fn unknown_mode_is_refused() {
        assert_problem(
            &top_level("mode", json!("Enforce")),
            "mode: must be \"enforce\" or \"report\"",
        );
    }

    #[test]
    fn realm_that_could_break_the_challenge_is_refused() {
        let expected =
            "realm: must be printable ASCII without '\"' or '\\' (it is sent in WWW-Authenticate)";
        assert_problem(&top_level("realm", json!("a\"b")), expected);
        assert_problem(&top_level("realm", json!("a\\b")), expected);
        assert_problem(&top_level("realm", json!("a\r\nb")), expected);
        assert_problem(&top_level("realm", json!("ünï")), expected);
        assert_problem(&top_level("realm", json!(" ")), "realm: must not be empty");
        assert_problem(&top_level("realm", json!(1)), "realm: expected a string");
    }

    #[test]
    fn non_boolean_flag_is_refused() {
        assert_problem(
            &top_level("bypassCorsPreflight", json!("true")),
            "bypassCorsPreflight: expected true or false",
        );
    }

    #[test]
    fn limits_are_read_and_default_individually() {
        let config = ok(&top_level(
            "limits",
            json!({"maxTokenBytes": 8192, "maxJwksKeys": 8}),
        ));
        let expected = Limits {
            max_token_bytes: 8192,
            max_jwks_keys: 8,
            ..Limits::default()
        };
        assert_eq!(config.limits, expected);
    }

    #[test]
    fn zero_limit_is_refused() {
        assert_problem(
            &top_level("limits", json!({"maxTokenBytes": 0})),
            "limits.maxTokenBytes: must be greater than zero",
        );
    }

    #[test]
    fn negative_or_fractional_limit_is_refused() {
        assert_problem(
            &top_level("limits", json!({"maxJsonDepth": -1})),
            "limits.maxJsonDepth: must not be negative",
        );
        assert_problem(
            &top_level("limits", json!({"maxJwksBytes": 1.5})),
            "limits.maxJwksBytes: expected an integer",
        );
    }

    #[test]
    fn unknown_limit_is_refused() {
        assert_problem(
            &top_level("limits", json!({"maxTokenSize": 10})),
            "limits.maxTokenSize: unknown field",
        );
        assert_problem(
            &top_level("limits", json!(10)),
            "limits: expected an object",
        );
    }

    // --- defaults -----------------------------------------------------------------------------

    #[test]
    fn minimal_config_yields_every_default() {
        let config = ok(
            r#"{"providers":[{"issuer":"https://idp.example.com","jwksUri":"https://idp.example.com/jwks"}]}"#,
        );
        assert!(config.rules.is_empty());
        assert_eq!(config.unmatched, Unmatched::Authenticated);
        assert_eq!(config.realm, None);
        assert!(config.bypass_cors_preflight);
        assert_eq!(config.mode, Mode::Enforce);
        assert_eq!(config.limits, Limits::default());

        let provider = &config.providers[0];
        assert_eq!(provider.name, ISSUER);
        assert_eq!(provider.issuer, ISSUER);
        assert!(provider.audiences.is_empty());
        assert_eq!(
            provider.keys,
            KeySource::Remote(HttpTarget {
                url: JWKS_URI.to_owned(),
                cluster: "outbound|443||idp.example.com".to_owned(),
                authority: "idp.example.com".to_owned(),
                path: "/jwks".to_owned(),
            })
        );
        assert_eq!(
            provider.from_headers,
            vec![HeaderLocation {
                name: "authorization".to_owned(),
                prefix: "Bearer ".to_owned()
            }]
        );
        assert!(provider.from_params.is_empty());
        assert!(provider.from_cookies.is_empty());
        assert_eq!(provider.output_payload_to_header, None);
        assert!(provider.output_claim_to_headers.is_empty());
        assert!(!provider.forward_original_token);
        assert_eq!(provider.timeout_ms, 5_000);
        assert_eq!(provider.clock_skew_seconds, 60);
        assert_eq!(
            provider.max_lifetime_seconds,
            Some(DEFAULT_MAX_LIFETIME_SECONDS)
        );
        assert_eq!(provider.jwks_cache_seconds, 600);
        assert_eq!(
            provider.scope_claims,
            vec![
                ClaimPath(vec!["scope".to_owned()]),
                ClaimPath(vec!["scp".to_owned()])
            ]
        );
    }

    #[test]
    fn fetched_keys_default_to_every_asymmetric_algorithm() {
        let algorithms = provider(json!({})).algorithms;
        for alg in Alg::ALL {
            assert_eq!(
                algorithms.contains(alg),
                alg.key_family() != KeyFamily::Oct,
                "{alg}"
            );
        }
    }

    #[test]
    fn inline_keys_default_to_every_algorithm() {
        let provider = provider(json!({"jwksUri": null, "jwks": INLINE_JWKS}));
        assert_eq!(provider.algorithms, AlgSet::all());
        assert_eq!(provider.keys, KeySource::Inline(INLINE_JWKS.to_owned()));
    }

    // --- key sources --------------------------------------------------------------------------

    #[test]
    fn explicit_port_names_cluster_and_authority() {
        let provider = provider(json!({"jwksUri": "http://127.0.0.1:8081/keys"}));
        assert_eq!(
            provider.keys,
            KeySource::Remote(HttpTarget {
                url: "http://127.0.0.1:8081/keys".to_owned(),
                cluster: "outbound|8081||127.0.0.1".to_owned(),
                authority: "127.0.0.1:8081".to_owned(),
                path: "/keys".to_owned(),
            })
        );
    }

    fn remote(provider: Provider) -> HttpTarget {
        match provider.keys {
            KeySource::Remote(target) => target,
            other => panic!("expected remote keys, got {other:?}"),
        }
    }

    #[test]
    fn default_port_is_left_out_of_the_authority() {
        let target = remote(provider(json!({"jwksUri": "https://IdP.Example.com:443"})));
        assert_eq!(target.cluster, "outbound|443||idp.example.com");
        assert_eq!(target.authority, "idp.example.com");
        assert_eq!(target.path, "/");
        let target = remote(provider(
            json!({"jwksUri": "http://keys.internal?tenant=a"}),
        ));
        assert_eq!(target.cluster, "outbound|80||keys.internal");
        assert_eq!(target.authority, "keys.internal");
        assert_eq!(target.path, "/?tenant=a");
    }

    #[test]
    fn query_is_kept_in_the_path() {
        let target = remote(provider(
            json!({"jwksUri": "https://idp.example.com/certs?v=2"}),
        ));
        assert_eq!(target.path, "/certs?v=2");
    }

    #[test]
    fn ipv6_literal_is_accepted() {
        let target = remote(provider(json!({"jwksUri": "http://[::1]:8081/keys"})));
        assert_eq!(target.authority, "[::1]:8081");
        assert_eq!(target.cluster, "outbound|8081||::1");
    }

    #[test]
    fn jwks_cluster_overrides_the_derived_name() {
        let target = remote(provider(json!({"jwksCluster": "idp-cluster"})));
        assert_eq!(target.cluster, "idp-cluster");
        assert_eq!(target.authority, "idp.example.com");
    }

    fn jwks_uri(uri: &str) -> String {
        provider_config(json!({ "jwksUri": uri }))
    }

    #[test]
    fn non_http_jwks_uri_is_refused() {
        let expected = "providers[0].jwksUri: not an http(s) URL";
        assert_problem(&jwks_uri("ftp://idp.example.com/jwks"), expected);
        assert_problem(&jwks_uri("idp.example.com/jwks"), expected);
        assert_problem(&jwks_uri(""), expected);
    }

    #[test]
    fn jwks_uri_without_host_is_refused() {
        assert_problem(
            &jwks_uri("https:///jwks"),
            "providers[0].jwksUri: has no host",
        );
        assert_problem(
            &jwks_uri("https://:443/jwks"),
            "providers[0].jwksUri: has no host",
        );
    }

    #[test]
    fn jwks_uri_with_userinfo_is_refused() {
        assert_problem(
            &jwks_uri("https://user:pw@idp.example.com/jwks"),
            "providers[0].jwksUri: must not contain userinfo",
        );
    }

    #[test]
    fn jwks_uri_with_fragment_is_refused() {
        assert_problem(
            &jwks_uri("https://idp.example.com/jwks#keys"),
            "providers[0].jwksUri: must not have a fragment",
        );
    }

    #[test]
    fn jwks_uri_with_bad_port_is_refused() {
        let expected = "providers[0].jwksUri: port must be 1-65535";
        for uri in [
            "https://idp.example.com:0/jwks",
            "https://idp.example.com:65536/jwks",
            "https://idp.example.com:/jwks",
            "https://idp.example.com:+443/jwks",
            "https://idp.example.com:https/jwks",
        ] {
            assert_problem(&jwks_uri(uri), expected);
        }
    }

    #[test]
    fn jwks_uri_with_bad_host_is_refused() {
        assert_problem(
            &jwks_uri("https://idp%2eexample.com/jwks"),
            "providers[0].jwksUri: has an invalid host",
        );
        assert_problem(
            &jwks_uri("http://[::1/keys"),
            "providers[0].jwksUri: has an unterminated IPv6 address",
        );
        assert_problem(
            &jwks_uri("http://[example]/keys"),
            "providers[0].jwksUri: has an invalid IPv6 address",
        );
        assert_problem(
            &jwks_uri("http://[::1]x/keys"),
            "providers[0].jwksUri: has something other than a port after the IPv6 address",
        );
    }

    #[test]
    fn jwks_uri_with_unsendable_characters_is_refused() {
        let expected = "providers[0].jwksUri: contains a character that is not allowed in a URL (space, control, non-ASCII or '\\')";
        assert_problem(&jwks_uri("https://idp.example.com/my keys"), expected);
        assert_problem(&jwks_uri("https://idp.example.com/\\keys"), expected);
    }

    #[test]
    fn jwks_and_jwks_uri_together_are_refused() {
        assert_problem(
            &provider_config(json!({ "jwks": INLINE_JWKS })),
            "providers[0].jwksUri: give either jwks or jwksUri, not both",
        );
    }

    #[test]
    fn jwks_cluster_with_inline_jwks_is_refused() {
        assert_problem(
            &provider_config(json!({"jwksUri": null, "jwks": INLINE_JWKS, "jwksCluster": "x"})),
            "providers[0].jwksCluster: keys are never fetched for a provider with inline jwks",
        );
    }

    fn inline_jwks(jwks: Value) -> String {
        provider_config(json!({"jwksUri": null, "jwks": jwks}))
    }

    #[test]
    fn inline_jwks_that_is_not_a_key_set_is_refused() {
        assert_problem(
            &inline_jwks(json!("{\"keys\": [")),
            "providers[0].jwks: key set document is not JSON",
        );
        assert_problem(
            &inline_jwks(json!("[]")),
            "providers[0].jwks: key set document has no keys array",
        );
        assert_problem(
            &inline_jwks(json!("{\"kty\": \"oct\"}")),
            "providers[0].jwks: key set document has no keys array",
        );
        assert_problem(
            &inline_jwks(json!("{\"keys\": {}}")),
            "providers[0].jwks: key set document has no keys array",
        );
        assert_problem(
            &inline_jwks(json!(
                "{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}"
            )),
            "providers[0].jwks: key set document has no usable signing key",
        );
    }

    #[test]
    fn revocations_are_read_and_checked() {
        let p = provider(json!({"revoked": {"jtis": ["a"], "subjects": ["b"],
                                            "subjectsIssuedBefore": {"c": 1700000000}}}));
        assert!(p.revoked.jtis.contains("a"));
        assert!(p.revoked.subjects.contains("b"));
        assert_eq!(
            p.revoked.subjects_issued_before.get("c"),
            Some(&1_700_000_000)
        );
        assert_problem(
            &provider_config(json!({"revoked": {"subjectsIssuedBefore": {"c": -1}}})),
            "providers[0].revoked.subjectsIssuedBefore.c: must not be negative",
        );
        assert_problem(
            &provider_config(json!({"revoked": {"jti": ["a"]}})),
            "providers[0].revoked.jti: unknown field",
        );
    }

    #[test]
    fn duplicate_member_names_are_refused() {
        assert_problem(
            r#"{"providers":[{"issuer":"https://a","issuer":"https://b","jwksUri":"https://a/k"}]}"#,
            "(config): duplicate member name",
        );
    }

    #[test]
    fn inline_jwks_as_an_object_instead_of_a_string_is_refused() {
        assert_problem(
            &inline_jwks(json!({"keys": []})),
            "providers[0].jwks: expected a string",
        );
    }

    #[test]
    fn discovery_is_used_without_jwks_or_jwks_uri() {
        let provider = provider(json!({
            "issuer": "https://sso.example.com:8443/realms/shop/",
            "jwksUri": null
        }));
        assert_eq!(
            provider.keys,
            KeySource::Discovery(HttpTarget {
                url: "https://sso.example.com:8443/realms/shop/.well-known/openid-configuration"
                    .to_owned(),
                cluster: "outbound|8443||sso.example.com".to_owned(),
                authority: "sso.example.com:8443".to_owned(),
                path: "/realms/shop/.well-known/openid-configuration".to_owned(),
            })
        );
    }

    #[test]
    fn discovery_honours_jwks_cluster() {
        let provider = provider(json!({"jwksUri": null, "jwksCluster": "sso"}));
        match provider.keys {
            KeySource::Discovery(target) => assert_eq!(target.cluster, "sso"),
            other => panic!("expected discovery, got {other:?}"),
        }
    }

    #[test]
    fn discovery_needs_an_http_issuer() {
        let expected = "providers[0]: no jwks or jwksUri, and issuer is not an http(s) URL to discover keys from";
        assert_problem(
            &provider_config(json!({"issuer": "acme", "jwksUri": null})),
            expected,
        );
        assert_problem(
            &provider_config(
                json!({"issuer": "https://idp.example.com?tenant=a", "jwksUri": null}),
            ),
            expected,
        );
    }

    // --- provider fields ----------------------------------------------------------------------

    #[test]
    fn unknown_provider_field_is_refused() {
        assert_problem(
            &provider_config(json!({"jwks_uri": JWKS_URI})),
            "providers[0].jwks_uri: unknown field",
        );
    }

    #[test]
    fn issuer_is_required_and_not_empty() {
        assert_problem(
            &provider_config(json!({"issuer": null})),
            "providers[0].issuer: required",
        );
        assert_problem(
            &provider_config(json!({"issuer": ""})),
            "providers[0].issuer: must not be empty",
        );
        assert_problem(
            &provider_config(json!({"issuer": 7})),
            "providers[0].issuer: expected a string",
        );
    }

    #[test]
    fn provider_that_is_not_an_object_is_refused() {
        assert_problem(
            r#"{"providers": ["https://idp.example.com"]}"#,
            "providers[0]: expected an object",
        );
    }

    #[test]
    fn duplicate_provider_name_is_refused() {
        let config = json!({"providers": [
            {"name": "idp", "issuer": ISSUER, "jwksUri": JWKS_URI},
            {"name": "idp", "issuer": "https://other.example.com", "jwksUri": JWKS_URI}
        ]});
        assert_problem(
            &config.to_string(),
            "providers[1].name: providers[0] already has this name",
        );
    }

    #[test]
    fn provider_names_alike_in_metric_names_are_refused() {
        let config = json!({"providers": [
            {"name": "a-b", "issuer": ISSUER, "jwksUri": JWKS_URI},
            {"name": "a.b", "issuer": "https://other.example.com", "jwksUri": JWKS_URI}
        ]});
        assert_problem(
            &config.to_string(),
            "providers[1].name: the name \"a.b\" and the name of providers[0] are both \"a_b\" in metric names: rename one",
        );
        let defaulted = json!({"providers": [
            {"name": "https_//other_example_com", "issuer": ISSUER, "jwksUri": JWKS_URI},
            {"issuer": "https://other.example.com", "jwksUri": JWKS_URI}
        ]});
        let problem = crate::config::parse(&defaulted.to_string()).unwrap_err();
        assert_eq!(problem.path, "providers[1].issuer", "{problem}");
    }

    #[test]
    fn duplicate_defaulted_provider_name_is_reported_on_the_issuer() {
        let config = json!({"providers": [
            {"name": "https://other.example.com", "issuer": ISSUER, "jwksUri": JWKS_URI},
            {"issuer": "https://other.example.com", "jwksUri": JWKS_URI}
        ]});
        assert_problem(
            &config.to_string(),
            "providers[1].issuer: the name defaults to the issuer, which providers[0] already has as its name",
        );
    }

    #[test]
    fn duplicate_issuer_is_refused() {
        let config = json!({"providers": [
            {"name": "a", "issuer": ISSUER, "jwksUri": JWKS_URI},
            {"name": "b", "issuer": ISSUER, "jwksUri": JWKS_URI}
        ]});
        assert_problem(
            &config.to_string(),
            "providers[1].issuer: same issuer as providers[0]",
        );
    }

    #[test]
    fn empty_audience_is_refused() {
        assert_problem(
            &provider_config(json!({"audiences": ["api", ""]})),
            "providers[0].audiences[1]: must not be empty",
        );
        assert_problem(
            &provider_config(json!({"audiences": "api"})),
            "providers[0].audiences: expected a list",
        );
    }

    #[test]
    fn header_locations_are_lower_cased_with_prefix_default_empty() {
        let provider = provider(json!({"fromHeaders": [
            {"name": "X-Jwt-Assertion"},
            {"name": "Authorization", "prefix": "Bearer "}
        ]}));
        assert_eq!(
            provider.from_headers,
            vec![
                HeaderLocation {
                    name: "x-jwt-assertion".to_owned(),
                    prefix: String::new()
                },
                HeaderLocation {
                    name: "authorization".to_owned(),
                    prefix: "Bearer ".to_owned()
                },
            ]
        );
    }

    #[test]
    fn header_location_needs_a_valid_name() {
        assert_problem(
            &provider_config(json!({"fromHeaders": [{"prefix": "Bearer "}]})),
            "providers[0].fromHeaders[0].name: required",
        );
        assert_problem(
            &provider_config(json!({"fromHeaders": [{"name": "x token"}]})),
            "providers[0].fromHeaders[0].name: not a valid HTTP header name",
        );
        assert_problem(
            &provider_config(json!({"fromHeaders": [{"name": "x", "scheme": "Bearer"}]})),
            "providers[0].fromHeaders[0].scheme: unknown field",
        );
    }

    #[test]
    fn provider_without_any_token_location_is_refused() {
        assert_problem(
            &provider_config(json!({"fromHeaders": []})),
            "providers[0].fromHeaders: is empty and there are no fromParams or fromCookies: a token could never be found",
        );
    }

    #[test]
    fn params_or_cookies_alone_replace_the_default_header() {
        // Istio/Envoy: the Authorization default applies only when no location is configured.
        let param_provider = provider(json!({"fromParams": ["access_token"]}));
        assert!(param_provider.from_headers.is_empty());
        assert_eq!(param_provider.from_params, vec!["access_token".to_owned()]);
        let cookie_provider = provider(json!({"fromHeaders": [], "fromCookies": ["session"]}));
        assert!(cookie_provider.from_headers.is_empty());
        assert_eq!(cookie_provider.from_cookies, vec!["session".to_owned()]);
    }

    #[test]
    fn empty_param_or_cookie_name_is_refused() {
        assert_problem(
            &provider_config(json!({"fromParams": [""]})),
            "providers[0].fromParams[0]: must not be empty",
        );
        assert_problem(
            &provider_config(json!({"fromCookies": ["a", 1]})),
            "providers[0].fromCookies[1]: expected a string",
        );
    }

    #[test]
    fn output_headers_must_be_settable_header_names() {
        assert_problem(
            &provider_config(json!({"outputPayloadToHeader": ":path"})),
            "providers[0].outputPayloadToHeader: pseudo-headers cannot be used",
        );
        assert_problem(
            &provider_config(json!({"outputPayloadToHeader": "x payload"})),
            "providers[0].outputPayloadToHeader: not a valid HTTP header name",
        );
        assert_problem(
            &provider_config(
                json!({"outputClaimToHeaders": [{"header": "x-sub:", "claim": "sub"}]}),
            ),
            "providers[0].outputClaimToHeaders[0].header: not a valid HTTP header name",
        );
    }

    #[test]
    fn output_claim_needs_a_claim_path() {
        assert_problem(
            &provider_config(json!({"outputClaimToHeaders": [{"header": "x-sub"}]})),
            "providers[0].outputClaimToHeaders[0].claim: required",
        );
        assert_problem(
            &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": "a..b"}]})),
            "providers[0].outputClaimToHeaders[0].claim: has an empty name between dots (for names with dots, use a list of names)",
        );
        assert_problem(
            &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": []}]})),
            "providers[0].outputClaimToHeaders[0].claim: must not be empty",
        );
        assert_problem(
            &provider_config(
                json!({"outputClaimToHeaders": [{"header": "x-r", "claim": ["a", ""]}]}),
            ),
            "providers[0].outputClaimToHeaders[0].claim[1]: must not be empty",
        );
        assert_problem(
            &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": 1}]})),
            "providers[0].outputClaimToHeaders[0].claim: expected a claim path: a dotted string or a list of names",
        );
    }

    fn timeout(value: Value) -> Result<u64, String> {
        parse(&provider_config(json!({ "timeout": value })))
            .map(|mut config| config.providers.remove(0).timeout_ms)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn timeouts_are_read_in_milliseconds() {
        assert_eq!(timeout(json!("5s")), Ok(5_000));
        assert_eq!(timeout(json!("500ms")), Ok(500));
        assert_eq!(timeout(json!("1.5s")), Ok(1_500));
        assert_eq!(timeout(json!("0.250s")), Ok(250));
        assert_eq!(timeout(json!("2m")), Ok(120_000));
        assert_eq!(timeout(json!("1h")), Ok(3_600_000));
        assert_eq!(timeout(json!("1.000s")), Ok(1_000));
    }

    #[test]
    fn malformed_timeout_is_refused() {
        let expected =
            "providers[0].timeout: not a duration like \"5s\", \"500ms\" or \"1.5s\"".to_owned();
        for text in [
            "5", "s", ".5s", "5.s", "1.5.2s", "5 s", "5sec", "+5s", "1e3ms", "",
        ] {
            assert_eq!(timeout(json!(text)), Err(expected.clone()), "{text:?}");
        }
        assert_eq!(
            timeout(json!(5)),
            Err("providers[0].timeout: expected a string".to_owned())
        );
    }

    #[test]
    fn negative_timeout_is_refused() {
        assert_eq!(
            timeout(json!("-5s")),
            Err("providers[0].timeout: must not be negative".to_owned())
        );
    }

    #[test]
    fn zero_timeout_is_refused() {
        for text in ["0s", "0ms", "0.000s"] {
            assert_eq!(
                timeout(json!(text)),
                Err("providers[0].timeout: must be greater than zero".to_owned())
            );
        }
    }

    #[test]
    fn sub_millisecond_timeout_is_refused() {
        let expected = "providers[0].timeout: must be a whole number of milliseconds".to_owned();
        assert_eq!(timeout(json!("1.5ms")), Err(expected.clone()));
        assert_eq!(timeout(json!("0.0001s")), Err(expected.clone()));
        assert_eq!(timeout(json!("1.0000000001h")), Err(expected));
    }

    #[test]
    fn huge_timeout_is_refused_not_wrapped() {
        let expected = "providers[0].timeout: is too large".to_owned();
        assert_eq!(
            timeout(json!("99999999999999999999ms")),
            Err(expected.clone())
        );
        assert_eq!(timeout(json!("18446744073709551615h")), Err(expected));
    }

    #[test]
    fn negative_seconds_are_refused() {
        assert_problem(
            &provider_config(json!({"clockSkewSeconds": -1})),
            "providers[0].clockSkewSeconds: must not be negative",
        );
        assert_problem(
            &provider_config(json!({"maxLifetimeSeconds": -3600})),
            "providers[0].maxLifetimeSeconds: must not be negative",
        );
    }

    #[test]
    fn fractional_or_textual_seconds_are_refused() {
        assert_problem(
            &provider_config(json!({"clockSkewSeconds": 1.5})),
            "providers[0].clockSkewSeconds: expected an integer",
        );
        assert_problem(
            &provider_config(json!({"jwksCacheSeconds": "600"})),
            "providers[0].jwksCacheSeconds: expected an integer",
        );
    }

    #[test]
    fn zero_cache_time_is_refused_but_zero_skew_or_lifetime_is_fine() {
        assert_problem(
            &provider_config(json!({"jwksCacheSeconds": 0})),
            "providers[0].jwksCacheSeconds: must be greater than zero",
        );
        assert_eq!(
            provider(json!({"clockSkewSeconds": 0})).clock_skew_seconds,
            0
        );
    }

    #[test]
    fn empty_scope_claims_are_refused() {
        assert_problem(
            &provider_config(json!({"scopeClaims": []})),
            "providers[0].scopeClaims: must not be empty",
        );
    }

    #[test]
    fn none_algorithm_is_refused() {
        assert_problem(
            &provider_config(json!({"algorithms": ["RS256", "none"]})),
            "providers[0].algorithms[1]: unsecured tokens cannot be allowed",
        );
    }

    #[test]
    fn unknown_algorithm_is_refused() {
        assert_problem(
            &provider_config(json!({"algorithms": ["rs256"]})),
            "providers[0].algorithms[0]: unknown algorithm (supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512; names are case-sensitive)",
        );
    }

    #[test]
    fn empty_or_repeated_algorithms_are_refused() {
        assert_problem(
            &provider_config(json!({"algorithms": []})),
            "providers[0].algorithms: must not be empty",
        );
        assert_problem(
            &provider_config(json!({"algorithms": ["ES256", "RS256", "ES256"]})),
            "providers[0].algorithms[2]: listed twice",
        );
    }

    #[test]
    fn hmac_needs_inline_keys() {
        assert_problem(
            &provider_config(json!({"algorithms": ["RS256", "HS256"]})),
            "providers[0].algorithms[1]: HS256 needs the HMAC key inline in jwks",
        );
        assert_problem(
            &provider_config(json!({"jwksUri": null, "algorithms": ["HS512"]})),
            "providers[0].algorithms[0]: HS512 needs the HMAC key inline in jwks",
        );
        let provider =
            provider(json!({"jwksUri": null, "jwks": INLINE_JWKS, "algorithms": ["HS256"]}));
        assert!(provider.algorithms.iter().eq([Alg::HS256]));
    }

    // --- rules --------------------------------------------------------------------------------

    #[test]
    fn rule_names_default_to_their_position() {
        let config = ok(&rules_config(
            json!([{"deny": true}, {"name": "open", "allowAnonymous": true}]),
        ));
        assert_eq!(config.rules[0].name, "rules[0]");
        assert_eq!(config.rules[1].name, "open");
        assert!(matches!(config.rules[0].action, Action::Deny));
        assert!(matches!(config.rules[1].action, Action::AllowAnonymous));
    }

    #[test]
    fn duplicate_rule_name_is_refused() {
        assert_problem(
            &rules_config(json!([{"name": "a", "deny": true}, {"name": "a", "deny": true}])),
            "rules[1].name: rules[0] already has the name \"a\"",
        );
        assert_problem(
            &rules_config(json!([{"name": "rules[1]", "deny": true}, {"deny": true}])),
            "rules[1]: rules[0] already has the name \"rules[1]\"",
        );
    }

    #[test]
    fn unknown_rule_field_is_refused() {
        assert_problem(
            &rule_config(json!({"deny": true, "when": {}})),
            "rules[0].when: unknown field",
        );
        assert_problem(
            &rule_config(json!({"deny": true, "match": {"path": ["/a"]}})),
            "rules[0].match.path: unknown field",
        );
        assert_problem(&rules_config(json!({})), "rules: expected a list");
    }

    #[test]
    fn rule_without_action_is_refused() {
        assert_problem(
            &rule_config(json!({"match": {"paths": ["/a"]}})),
            "rules[0]: needs one of allowAnonymous: true, deny: true, requires or requiresAny",
        );
    }

    #[test]
    fn rule_with_two_actions_is_refused() {
        assert_problem(
            &rule_config(json!({"allowAnonymous": true, "requires": {}})),
            "rules[0]: has both allowAnonymous and requires; give exactly one",
        );
        assert_problem(
            &rule_config(json!({"deny": true, "requiresAny": [{}]})),
            "rules[0]: has both deny and requiresAny; give exactly one",
        );
    }

    #[test]
    fn false_action_flags_are_refused() {
        assert_problem(
            &rule_config(json!({"allowAnonymous": false, "requires": {}})),
            "rules[0].allowAnonymous: false has no meaning; leave the field out",
        );
        assert_problem(
            &rule_config(json!({"deny": false})),
            "rules[0].deny: false has no meaning; leave the field out",
        );
    }

    #[test]
    fn absent_match_matches_everything() {
        for parsed in [
            rule(json!({"deny": true})),
            rule(json!({"match": {}, "deny": true})),
        ] {
            assert!(parsed.matcher.paths.is_none());
            assert!(parsed.matcher.methods.is_none());
            assert!(parsed.matcher.hosts.is_none());
        }
    }

    #[test]
    fn empty_match_list_is_refused() {
        for key in ["paths", "methods", "hosts"] {
            assert_problem(
                &rule_config(json!({"match": {key: []}, "deny": true})),
                &format!("rules[0].match.{key}: is empty and would match nothing; leave it out to match everything"),
            );
        }
    }

    fn paths(patterns: Value) -> Result<Vec<PathPattern>, String> {
        parse(&rule_config(
            json!({"match": {"paths": patterns}, "deny": true}),
        ))
        .map(|mut config| config.rules.remove(0).matcher.paths.unwrap())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn path_patterns_follow_istio_syntax() {
        assert_eq!(
            paths(json!(["*", "/a/b", "/a/*", "*.png", "/api*"])),
            Ok(vec![
                PathPattern::Any,
                PathPattern::Exact("/a/b".to_owned()),
                PathPattern::Prefix("/a/".to_owned()),
                PathPattern::Suffix(".png".to_owned()),
                PathPattern::Prefix("/api".to_owned()),
            ])
        );
    }

    #[test]
    fn misplaced_star_in_path_is_refused() {
        let expected =
            "rules[0].match.paths[1]: '*' is only allowed alone, at the start (suffix) or at the end (prefix)"
                .to_owned();
        for pattern in ["/a/*/b", "**", "*.p*", "/a**"] {
            assert_eq!(
                paths(json!(["/ok", pattern])),
                Err(expected.clone()),
                "{pattern}"
            );
        }
    }

    #[test]
    fn relative_path_is_refused() {
        assert_eq!(
            paths(json!(["orders/*"])),
            Err("rules[0].match.paths[0]: must start with '/' (or '*' for a suffix)".to_owned())
        );
    }

    #[test]
    fn path_with_query_is_refused() {
        assert_eq!(
            paths(json!(["/a?b=c"])),
            Err("rules[0].match.paths[0]: must not contain '?' or '#': paths are matched without the query string".to_owned())
        );
    }

    #[test]
    fn path_that_normalisation_rules_out_is_refused() {
        let expected = "rules[0].match.paths[0]: never matches: request paths are normalised (no '//', '.' or '..' segments)".to_owned();
        for pattern in ["/a//b", "/a/../b", "/./a", "/a/..*"] {
            assert_eq!(paths(json!([pattern])), Err(expected.clone()), "{pattern}");
        }
    }

    #[test]
    fn path_with_unsendable_characters_is_refused() {
        assert_eq!(
            paths(json!(["/my orders"])),
            Err("rules[0].match.paths[0]: contains a character a request path cannot have (space, control or non-ASCII)".to_owned())
        );
        assert_eq!(
            paths(json!([""])),
            Err("rules[0].match.paths[0]: must not be empty".to_owned())
        );
    }

    #[test]
    fn lower_case_method_is_refused() {
        assert_problem(
            &rule_config(json!({"match": {"methods": ["GET", "post"]}, "deny": true})),
            "rules[0].match.methods[1]: methods must be upper-case",
        );
        assert_problem(
            &rule_config(json!({"match": {"methods": ["GE T"]}, "deny": true})),
            "rules[0].match.methods[0]: not an HTTP method",
        );
    }

    fn hosts(patterns: Value) -> Result<Vec<HostPattern>, String> {
        parse(&rule_config(
            json!({"match": {"hosts": patterns}, "deny": true}),
        ))
        .map(|mut config| config.rules.remove(0).matcher.hosts.unwrap())
        .map_err(|e| e.to_string())
    }

    #[test]
    fn host_patterns_are_lower_cased() {
        assert_eq!(
            hosts(json!(["Orders.Example.com", "*.Example.com", "*", "[::1]"])),
            Ok(vec![
                HostPattern::Exact("orders.example.com".to_owned()),
                HostPattern::WildcardSuffix(".example.com".to_owned()),
                HostPattern::Any,
                HostPattern::Exact("[::1]".to_owned()),
            ])
        );
    }

    #[test]
    fn host_with_port_is_refused() {
        assert_eq!(
            hosts(json!(["orders.example.com:443"])),
            Err(
                "rules[0].match.hosts[0]: must not include a port: hosts are matched without it"
                    .to_owned()
            )
        );
    }

    #[test]
    fn misplaced_host_wildcard_is_refused() {
        let expected =
            "rules[0].match.hosts[0]: not a host name, \"*\" or \"*.\" followed by a domain"
                .to_owned();
        for pattern in ["orders.*.com", "*example.com", "*.", "exa mple.com"] {
            assert_eq!(hosts(json!([pattern])), Err(expected.clone()), "{pattern}");
        }
    }

    #[test]
    fn requirement_names_providers_by_index() {
        let rule =
            rule(json!({"requires": {"providers": ["other", "idp"], "scopes": ["orders:write"]}}));
        let Action::Requires(requirement) = rule.action else {
            panic!("expected requires");
        };
        assert_eq!(requirement.providers, Some(vec![1, 0]));
        assert_eq!(requirement.scopes, vec!["orders:write".to_owned()]);
    }

    #[test]
    fn empty_requirement_accepts_any_valid_token() {
        let rule = rule(json!({"requires": {}}));
        let Action::Requires(requirement) = rule.action else {
            panic!("expected requires");
        };
        assert_eq!(requirement.providers, None);
        assert!(requirement.scopes.is_empty());
        assert!(requirement.claims.is_empty());
    }

    #[test]
    fn unknown_required_provider_is_refused() {
        assert_problem(
            &rule_config(json!({"requires": {"providers": ["idp", "keycloak"]}})),
            "rules[0].requires.providers[1]: no provider is named \"keycloak\"",
        );
    }

    #[test]
    fn empty_or_repeated_required_providers_are_refused() {
        assert_problem(
            &rule_config(json!({"requires": {"providers": []}})),
            "rules[0].requires.providers: must not be empty",
        );
        assert_problem(
            &rule_config(json!({"requires": {"providers": ["idp", "idp"]}})),
            "rules[0].requires.providers[1]: listed twice",
        );
    }

    #[test]
    fn invalid_scope_is_refused() {
        let expected = "rules[0].requires.scopes[0]: not a scope: printable ASCII without spaces, '\"' or '\\'";
        for scope in ["orders write", "a\"b", "a\\b"] {
            assert_problem(
                &rule_config(json!({"requires": {"scopes": [scope]}})),
                expected,
            );
        }
        assert_problem(
            &rule_config(json!({"requires": {"scopes": [""]}})),
            "rules[0].requires.scopes[0]: must not be empty",
        );
    }

    fn claim_condition(condition: Value) -> String {
        rule_config(json!({"requires": {"claims": [condition]}}))
    }

    #[test]
    fn claim_conditions_are_read() {
        let rule = rule(json!({"requires": {"claims": [
            {"claim": "realm_access.roles", "anyOf": ["editor", 3, true]},
            {"claim": ["https://example.com/groups"], "allOf": ["a"]},
            {"claim": "email_verified", "present": true}
        ]}}));
        let Action::Requires(requirement) = rule.action else {
            panic!("expected requires");
        };
        let [roles, groups, verified] = &requirement.claims[..] else {
            panic!("expected three conditions");
        };
        assert_eq!(roles.claim.0, vec!["realm_access", "roles"]);
        assert!(
            matches!(&roles.test, ClaimTest::AnyOf(v) if v == &vec![json!("editor"), json!(3), json!(true)])
        );
        assert_eq!(groups.claim.0, vec!["https://example.com/groups"]);
        assert!(matches!(&groups.test, ClaimTest::AllOf(v) if v == &vec![json!("a")]));
        assert!(matches!(verified.test, ClaimTest::Present));
    }

    #[test]
    fn claim_condition_needs_a_claim() {
        assert_problem(
            &claim_condition(json!({"anyOf": ["a"]})),
            "rules[0].requires.claims[0].claim: required",
        );
    }

    #[test]
    fn empty_claim_values_are_refused() {
        assert_problem(
            &claim_condition(json!({"claim": "roles", "anyOf": []})),
            "rules[0].requires.claims[0].anyOf: must not be empty",
        );
        assert_problem(
            &claim_condition(json!({"claim": "roles", "allOf": []})),
            "rules[0].requires.claims[0].allOf: must not be empty",
        );
    }

    #[test]
    fn structured_claim_values_are_refused() {
        assert_problem(
            &claim_condition(json!({"claim": "roles", "anyOf": ["a", null]})),
            "rules[0].requires.claims[0].anyOf[1]: expected a string, number or boolean",
        );
        assert_problem(
            &claim_condition(json!({"claim": "roles", "allOf": [["a"]]})),
            "rules[0].requires.claims[0].allOf[0]: expected a string, number or boolean",
        );
    }

    #[test]
    fn claim_condition_needs_exactly_one_test() {
        assert_problem(
            &claim_condition(json!({"claim": "roles"})),
            "rules[0].requires.claims[0]: needs one of anyOf, allOf or present: true",
        );
        assert_problem(
            &claim_condition(json!({"claim": "roles", "anyOf": ["a"], "allOf": ["b"]})),
            "rules[0].requires.claims[0]: give only one of anyOf, allOf or present",
        );
        assert_problem(
            &claim_condition(json!({"claim": "roles", "present": false})),
            "rules[0].requires.claims[0].present: only true is supported; leave it out otherwise",
        );
        assert_problem(
            &claim_condition(json!({"claim": "roles", "noneOf": ["a"]})),
            "rules[0].requires.claims[0].noneOf: unknown field",
        );
    }

    #[test]
    fn requires_any_lists_requirements() {
        let rule = rule(json!({"requiresAny": [{"scopes": ["a"]}, {"providers": ["other"]}]}));
        let Action::RequiresAny(requirements) = rule.action else {
            panic!("expected requiresAny");
        };
        assert_eq!(requirements.len(), 2);
        assert_eq!(requirements[1].providers, Some(vec![1]));
    }

    #[test]
    fn empty_requires_any_is_refused() {
        assert_problem(
            &rule_config(json!({"requiresAny": []})),
            "rules[0].requiresAny: must not be empty",
        );
        assert_problem(
            &rule_config(json!({"requiresAny": [{"scopes": ["a b"]}]})),
            "rules[0].requiresAny[0].scopes[0]: not a scope: printable ASCII without spaces, '\"' or '\\'",
        );
    }

    // --- whole configurations -----------------------------------------------------------------

    #[test]
    fn istio_jwt_rules_paste_unchanged() {
        // `jwtRules` entries of a RequestAuthentication, as Istio's docs write them.
        let config = ok(r#"{
          "providers": [
            {
              "issuer": "https://accounts.google.com",
              "audiences": ["bookstore_android.apps.googleusercontent.com", "bookstore_web.apps.googleusercontent.com"],
              "jwksUri": "https://www.googleapis.com/oauth2/v1/certs",
              "fromHeaders": [{"name": "x-goog-iap-jwt-assertion"}, {"name": "Authorization", "prefix": "Bearer "}],
              "fromParams": ["my_token"],
              "outputPayloadToHeader": "x-jwt-payload",
              "outputClaimToHeaders": [{"header": "x-jwt-claim-group", "claim": "group"}],
              "forwardOriginalToken": true,
              "timeout": "10s"
            },
            {
              "issuer": "testing@secure.istio.io",
              "jwksUri": "https://raw.githubusercontent.com/istio/istio/release-1.22/security/tools/jwt/samples/jwks.json"
            }
          ]
        }"#);
        let google = &config.providers[0];
        assert_eq!(google.audiences.len(), 2);
        assert_eq!(google.from_headers[0].name, "x-goog-iap-jwt-assertion");
        assert_eq!(google.from_headers[0].prefix, "");
        assert_eq!(google.from_params, vec!["my_token".to_owned()]);
        assert_eq!(
            google.output_payload_to_header.as_deref(),
            Some("x-jwt-payload")
        );
        assert_eq!(google.output_claim_to_headers[0].claim.0, vec!["group"]);
        assert!(google.forward_original_token);
        assert_eq!(google.timeout_ms, 10_000);
        assert_eq!(
            remote(google.clone()).cluster,
            "outbound|443||www.googleapis.com"
        );
        assert_eq!(
            remote(config.providers[1].clone()).authority,
            "raw.githubusercontent.com"
        );
    }

    #[test]
    fn full_config_with_every_field() {
        let config = ok(r#"{
          "providers": [
            {
              "name": "keycloak",
              "issuer": "https://sso.example.com/realms/shop",
              "audiences": ["orders"],
              "jwksUri": "https://sso.example.com/realms/shop/protocol/openid-connect/certs",
              "jwksCluster": "outbound|443||sso.example.com",
              "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
              "fromParams": ["access_token"],
              "fromCookies": ["session"],
              "outputPayloadToHeader": "X-Jwt-Payload",
              "outputClaimToHeaders": [
                {"header": "x-user", "claim": "preferred_username"},
                {"header": "x-roles", "claim": ["realm_access", "roles"]}
              ],
              "forwardOriginalToken": false,
              "timeout": "1.5s",
              "clockSkewSeconds": 30,
              "maxLifetimeSeconds": 3600,
              "jwksCacheSeconds": 300,
              "scopeClaims": ["scope", "authorization.permissions"],
              "algorithms": ["RS256", "PS256", "ES256", "EdDSA"]
            },
            {
              "name": "internal",
              "issuer": "internal-ci",
              "jwks": "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"ci\", \"k\": \"c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE\"}]}",
              "algorithms": ["HS256"]
            }
          ],
          "rules": [
            {"name": "health", "match": {"paths": ["/healthz", "/metrics*"], "methods": ["GET"]}, "allowAnonymous": true},
            {"name": "admin", "match": {"paths": ["/admin/*"], "hosts": ["*.internal.example.com"]}, "deny": true},
            {"name": "orders-write",
             "match": {"paths": ["/orders/*"], "methods": ["POST", "PUT", "DELETE"], "hosts": ["orders.example.com"]},
             "requires": {"providers": ["keycloak"], "scopes": ["orders:write"],
                          "claims": [{"claim": "realm_access.roles", "anyOf": ["editor", "admin"]}]}},
            {"name": "reports",
             "match": {"paths": ["*.csv"]},
             "requiresAny": [{"providers": ["internal"]}, {"scopes": ["reports:read"]}]}
          ],
          "unmatched": "deny",
          "realm": "orders",
          "bypassCorsPreflight": false,
          "mode": "report",
          "limits": {"maxTokenBytes": 8192, "maxJsonDepth": 8, "maxJsonMembers": 128, "maxJwksBytes": 65536, "maxJwksKeys": 16, "maxHeldRequests": 10}
        }"#);
        assert_eq!(config.providers.len(), 2);
        assert_eq!(config.rules.len(), 4);
        assert_eq!(config.unmatched, Unmatched::Deny);
        assert_eq!(config.realm.as_deref(), Some("orders"));
        assert!(!config.bypass_cors_preflight);
        assert_eq!(config.mode, Mode::Report);
        assert_eq!(
            config.limits,
            Limits {
                max_token_bytes: 8192,
                max_json_depth: 8,
                max_json_members: 128,
                max_jwks_bytes: 65536,
                max_jwks_keys: 16,
                max_held_requests: 10,
                max_cached_tokens: 1024,
                max_revocation_bytes: 1024 * 1024,
            }
        );

        let keycloak = &config.providers[0];
        assert_eq!(keycloak.name, "keycloak");
        assert_eq!(keycloak.audiences, vec!["orders".to_owned()]);
        assert_eq!(
            keycloak.keys,
            KeySource::Remote(HttpTarget {
                url: "https://sso.example.com/realms/shop/protocol/openid-connect/certs".to_owned(),
                cluster: "outbound|443||sso.example.com".to_owned(),
                authority: "sso.example.com".to_owned(),
                path: "/realms/shop/protocol/openid-connect/certs".to_owned(),
            })
        );
        assert_eq!(keycloak.from_headers[0].name, "authorization");
        assert_eq!(keycloak.from_params, vec!["access_token".to_owned()]);
        assert_eq!(keycloak.from_cookies, vec!["session".to_owned()]);
        assert_eq!(
            keycloak.output_payload_to_header.as_deref(),
            Some("x-jwt-payload")
        );
        assert_eq!(
            keycloak.output_claim_to_headers[1],
            ClaimToHeader {
                header: "x-roles".to_owned(),
                claim: ClaimPath(vec!["realm_access".to_owned(), "roles".to_owned()])
            }
        );
        assert!(!keycloak.forward_original_token);
        assert_eq!(keycloak.timeout_ms, 1_500);
        assert_eq!(keycloak.clock_skew_seconds, 30);
        assert_eq!(keycloak.max_lifetime_seconds, Some(3600));
        assert_eq!(keycloak.jwks_cache_seconds, 300);
        assert_eq!(
            keycloak.scope_claims[1].0,
            vec!["authorization", "permissions"]
        );
        assert!(keycloak
            .algorithms
            .iter()
            .eq([Alg::RS256, Alg::PS256, Alg::ES256, Alg::EdDSA]));

        let internal = &config.providers[1];
        assert!(matches!(internal.keys, KeySource::Inline(_)));
        assert!(internal.algorithms.iter().eq([Alg::HS256]));

        let health = &config.rules[0];
        assert_eq!(
            health.matcher.paths,
            Some(vec![
                PathPattern::Exact("/healthz".to_owned()),
                PathPattern::Prefix("/metrics".to_owned())
            ])
        );
        assert!(matches!(health.action, Action::AllowAnonymous));
        assert_eq!(
            config.rules[1].matcher.hosts,
            Some(vec![HostPattern::WildcardSuffix(
                ".internal.example.com".to_owned()
            )])
        );
        assert!(matches!(config.rules[1].action, Action::Deny));
        let orders = &config.rules[2];
        assert_eq!(
            orders.matcher.methods,
            Some(vec![
                "POST".to_owned(),
                "PUT".to_owned(),
                "DELETE".to_owned()
            ])
        );
        let Action::Requires(requirement) = &orders.action else {
            panic!("expected requires");
        };
        assert_eq!(requirement.providers, Some(vec![0]));
        assert_eq!(requirement.claims[0].claim.display(), "realm_access.roles");
        let Action::RequiresAny(alternatives) = &config.rules[3].action else {
            panic!("expected requiresAny");
        };
        assert_eq!(alternatives[0].providers, Some(vec![1]));
        assert_eq!(alternatives[1].scopes, vec!["reports:read".to_owned()]);
    }

    #[test]
    fn errors_never_quote_inline_keys() {
        let secret = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE";
        let broken = format!("{{\"keys\": [{{\"kty\": \"oct\", \"k\": \"{secret}\"");
        let message = problem(&inline_jwks(json!(broken)));
        assert!(!message.contains(secret), "{message}");
    }
}
