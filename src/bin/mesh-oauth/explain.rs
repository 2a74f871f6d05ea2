//! `explain`: one request, as the filter decides it. The decision itself
//! (`authorize::authorize_recorded`) notes each step it takes; this prints that record and the
//! answer, and decides nothing itself, so it cannot drift from the filter.
//! Neither the token nor its signature nor key material is ever printed; claims are, marked
//! as unverified until the signature holds.

use crate::keys::{is_url, read_jwks, Fixed, FixedKeys};
use crate::time;
use mesh_oauth::alg::{Alg, KeyFamily};
use mesh_oauth::audit;
use mesh_oauth::authorize::{self, Allowed, HeaderEdit, Outcome, Request, Trace};
use mesh_oauth::cache::TokenCache;
use mesh_oauth::claims::{self, ClaimSeen};
use mesh_oauth::compile::Compiled;
use mesh_oauth::config::{
    Action, Answers, Binding, ClaimTest, Condition, Config, Fact, KeySource, Mode, Pattern,
    Provider, Requirement, Rule, RuleMatch, Unmatched,
};
use mesh_oauth::extract::{self, Location, RequestParts};
use mesh_oauth::keys::{parse_jwks, JwksLimits};
use mesh_oauth::path::PathError;
use mesh_oauth::peer::FixedPeer;
use mesh_oauth::policy::{self, MissReason, MissSeen, Observed, RequirementSeen, RuleTried, Unmet};
use mesh_oauth::record::{
    KeySeen, KeysSeen, Parsed, ProviderSeen, Record, Recorder, SignatureRefused, Step,
};
use mesh_oauth::response::{Challenges, Denial, Presentation};
use mesh_oauth::sender::ProofSeen;
use mesh_oauth::token::{self, TokenLimits};
use mesh_oauth::verify::VerifyError;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::rc::Rc;

pub struct Options {
    /// `None`: the request carries only the headers (`--request-header`) and path given.
    pub token: Option<String>,
    pub jwks: Option<String>,
    pub method: String,
    pub path: String,
    pub host: String,
    pub now_ms: u64,
    pub placement: Placement,
    /// Other request headers (`--request-header`), lower-case names.
    pub headers: Vec<(String, String)>,
    /// The connection: `--peer`, `--source`, `--destination`, `--sni`, `--client-cert-sha256`.
    pub peer: FixedPeer,
    /// `--dpop PROOF`: the token goes as `Authorization: DPoP`, with this proof.
    pub dpop: Option<String>,
    /// `:scheme`, for the origin a DPoP proof's `htu` names.
    pub scheme: String,
}

/// Where the token is put in the request.
pub enum Placement {
    /// Lower-case name; the value gets the prefix a provider configures for that header.
    Header(String),
    Param(String),
    Cookie(String),
}

/// The report, line by line (explain_login's too).
#[derive(Default)]
pub(crate) struct Out(pub(crate) String);

impl Out {
    pub(crate) fn line(&mut self, text: impl AsRef<str>) {
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

/// The request as the decision gets it: the headers (the token in place, then the others)
/// and `:path`, with the `token:` line that says where the token is.
pub struct Prepared {
    pub headers: Vec<(String, String)>,
    pub path: String,
    pub token_line: String,
}

/// The request `options` describe, for a configuration's token locations.
pub fn prepare(config: &Config, options: &Options) -> Prepared {
    let (mut headers, path, placed) = place_token(config, options);
    headers.extend(options.headers.iter().cloned());
    let token_line = match (&options.token, placed) {
        (Some(token), Some(placed)) => format!(
            "token: {} bytes, sent as {placed} (the token itself is never printed)",
            token.len()
        ),
        _ => "token: none given (the request carries the headers given, if any)".to_string(),
    };
    Prepared {
        headers,
        path,
        token_line,
    }
}

/// The report for one request; `Err` when `--jwks` cannot be read.
pub fn explain(config: &Compiled, options: &Options) -> Result<String, String> {
    let prepared = prepare(config, options);
    let mut report = format!(
        "request: {} {} (host {})\n",
        options.method, options.path, options.host
    );
    report.push_str(&decide(config, options, &prepared, None)?);
    Ok(report)
}

/// The pipeline's decision on a prepared request, step by step, and its answer.
/// `login_answer`: what a login host answers instead of a refusal for want of a token (the
/// lines to print), when the request may start a login.
pub fn decide(
    config: &Compiled,
    options: &Options,
    prepared: &Prepared,
    login_answer: Option<&[String]>,
) -> Result<String, String> {
    let mut out = Out::default();
    out.line(&prepared.token_line);
    let asks_peer = config.rules.iter().any(|rule| {
        let conditions = &rule.matcher.conditions;
        conditions.iter().any(|c| c.fact.needs_peer())
    });
    if asks_peer || options.peer.uri_san.is_some() {
        describe_connection(&options.peer, &mut out);
    }
    let headers: Vec<(&str, &str)> = prepared
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let request = Request {
        method: &options.method,
        scheme: &options.scheme,
        path: &prepared.path,
        authority: &options.host,
        headers: &headers,
        peer: &options.peer,
    };
    let keys = gather_keys(config, options, &request)?;
    let record = RefCell::new(Record::default());
    // No cache: every explanation verifies afresh.
    let decision = authorize::authorize_recorded(
        config,
        &keys.lookup,
        &mut TokenCache::new(0),
        &request,
        options.now_ms,
        Recorder::writing_to(&record),
    );
    let mut render = Render {
        config,
        shown_path: &options.path,
        keys: &keys,
        now_ms: options.now_ms,
        out: &mut out,
        seen: Seen::default(),
    };
    for step in &record.into_inner().steps {
        render.step(step);
    }
    let stops = match &decision.outcome {
        Outcome::Allow(allowed) => allowed.would_deny.is_some(),
        Outcome::Deny(_) | Outcome::Wait { .. } => true,
        Outcome::Answer(_) => false,
    };
    if stops {
        out.line("(the filter stops here)");
    }
    final_answer(
        config,
        &keys,
        &request,
        options.now_ms,
        decision,
        login_answer,
        &mut out,
    );
    Ok(out.0)
}

fn describe_connection(peer: &FixedPeer, out: &mut Out) {
    let identity = match peer.uri_san.as_deref() {
        None => "no mTLS (no peer certificate: rules on principals and namespaces do not match)"
            .to_string(),
        Some(uri_san) => match mesh_oauth::peer::principal(uri_san) {
            Some(principal) => format!("mTLS, principal {principal}"),
            None => format!("mTLS, URI SAN {uri_san} (not a SPIFFE ID: no principal)"),
        },
    };
    let or_unset = |value: &Option<String>| value.clone().unwrap_or_else(|| "unset".to_string());
    out.line(format!(
        "connection: {identity}; source {}, destination {}, SNI {}",
        or_unset(&peer.source_address),
        or_unset(&peer.destination_address),
        or_unset(&peer.sni)
    ));
}

/// The request headers and `:path` with the token in place, and where that is, for humans.
fn place_token(
    config: &Config,
    options: &Options,
) -> (Vec<(String, String)>, String, Option<String>) {
    let Some(token) = &options.token else {
        return (Vec::new(), options.path.clone(), None);
    };
    let (headers, path, placed) = place(config, options, token);
    (headers, path, Some(placed))
}

fn place(
    config: &Config,
    options: &Options,
    token: &str,
) -> (Vec<(String, String)>, String, String) {
    if let Some(proof) = &options.dpop {
        return (
            vec![
                ("authorization".to_string(), format!("DPoP {token}")),
                ("dpop".to_string(), proof.clone()),
            ],
            options.path.clone(),
            "header `authorization: DPoP <token>` with the proof in `dpop`".to_string(),
        );
    }
    match &options.placement {
        Placement::Header(name) => {
            let prefix = config
                .providers
                .iter()
                .flat_map(|p| &p.from_headers)
                .find(|h| &h.name == name)
                .map_or("", |h| h.prefix.as_str());
            (
                vec![(name.clone(), format!("{prefix}{token}"))],
                options.path.clone(),
                format!("header `{name}: {prefix}<token>`"),
            )
        }
        Placement::Param(name) => {
            let separator = if options.path.contains('?') { '&' } else { '?' };
            (
                Vec::new(),
                format!("{}{separator}{name}={token}", options.path),
                format!("query parameter `{name}=<token>`"),
            )
        }
        Placement::Cookie(name) => (
            vec![("cookie".to_string(), format!("{name}={token}"))],
            options.path.clone(),
            format!("cookie `{name}=<token>`"),
        ),
    }
}

/// Keys per provider, and for each a note on where they came from.
struct Keys {
    lookup: FixedKeys,
    notes: Vec<String>,
    /// `--jwks` given for a provider with inline keys (shown once that provider is selected;
    /// a token no provider accepts stops the narration before keys matter).
    unused_jwks: Option<String>,
}

fn gather_keys(config: &Config, options: &Options, request: &Request<'_>) -> Result<Keys, String> {
    let limits = JwksLimits::from(&config.limits);
    // `--jwks` stands for what the provider the token's issuer selects would fetch: the token
    // found where the filter looks, however it was given.
    let token_limits = TokenLimits::from(&config.limits);
    let parts = RequestParts {
        headers: request.headers,
        path: request.path,
    };
    let found = extract::find_token(&config.providers, &parts)
        .ok()
        .flatten();
    let selected = found.and_then(|found| {
        let jws = token::parse(&found.token, &token_limits).ok()?;
        let iss = claims::issuer(&jws.claims)?;
        config.provider_for(iss).map(|(index, _)| index)
    });
    let mut sets = Vec::with_capacity(config.providers.len());
    let mut notes = Vec::with_capacity(config.providers.len());
    let mut jwks_used = false;
    for (index, provider) in config.providers.iter().enumerate() {
        let (set, note) = match (&provider.keys, &options.jwks) {
            (KeySource::Inline(document), _) => {
                match parse_jwks(document.as_bytes(), &limits, true) {
                    Ok(set) => (
                        Fixed::Ready(set),
                        "inline `jwks` of the configuration".to_string(),
                    ),
                    Err(e) => (
                        Fixed::Loading,
                        format!("inline `jwks` unusable: {}", e.describe()),
                    ),
                }
            }
            (source, Some(jwks)) if selected == Some(index) => {
                jwks_used = true;
                // A URL that cannot be fetched is the filter's failed fetch; a file that cannot
                // be read is a mistake on the command line.
                let bytes = match read_jwks(jwks, limits.max_bytes, provider.timeout_ms) {
                    Ok(bytes) => Ok(bytes),
                    Err(e) if is_url(jwks) => Err(e),
                    Err(e) => return Err(e),
                };
                // A fetched document never yields symmetric keys, in the filter as here.
                match bytes.map(|bytes| parse_jwks(&bytes, &limits, false)) {
                    Ok(Ok(set)) => (
                        Fixed::Ready(set),
                        format!("--jwks {jwks} ({})", remote(source)),
                    ),
                    Ok(Err(e)) => (
                        Fixed::Failed,
                        format!(
                            "--jwks {jwks} is not usable: {}; the filter refuses it too",
                            e.describe()
                        ),
                    ),
                    Err(e) => (
                        Fixed::Failed,
                        format!("{e}: as for the filter after a failed fetch"),
                    ),
                }
            }
            (source, _) => (
                Fixed::Loading,
                format!(
                    "none given to explain ({}); pass --jwks FILE|URL",
                    remote(source)
                ),
            ),
        };
        sets.push(set);
        notes.push(note);
    }
    let unused_jwks = match (&options.jwks, jwks_used) {
        (Some(jwks), false) => Some(format!(
            "--jwks {jwks} not used: the selected provider has inline keys"
        )),
        _ => None,
    };
    Ok(Keys {
        lookup: FixedKeys(sets),
        notes,
        unused_jwks,
    })
}

fn remote(source: &KeySource) -> String {
    match source {
        KeySource::Inline(_) => "inline".to_string(),
        KeySource::Remote(target) => format!(
            "the filter fetches {} through cluster {}",
            target.url, target.cluster
        ),
        KeySource::Discovery(target) => format!(
            "the filter discovers them through {} (cluster {})",
            target.url, target.cluster
        ),
    }
}

/// What the steps so far established, for the steps after them.
#[derive(Default)]
struct Seen {
    /// The path rules were matched against.
    path: Option<String>,
    /// The "2. rules" heading is printed.
    rules_begun: bool,
    /// The next rule the selection could have tried: those before a tried one that it did not
    /// try were left out by the path index.
    next_rule: usize,
    /// The rule that applied, or `unmatched`.
    applied: Option<Result<usize, Unmatched>>,
    /// The token's claims (unverified until the signature step) and its provider.
    claims: Option<Rc<Map<String, Value>>>,
    provider: Option<usize>,
    token_looked_at: bool,
}

struct Render<'a> {
    config: &'a Config,
    /// The path as given, without a token put in its query.
    shown_path: &'a str,
    keys: &'a Keys,
    now_ms: u64,
    out: &'a mut Out,
    seen: Seen,
}

impl<'a> Render<'a> {
    fn step(&mut self, step: &Step) {
        match step {
            Step::Path(normalized) => self.path(normalized),
            Step::Rule(tried) => self.rule(tried),
            Step::Unmatched {
                unmatched,
                token_would_help,
            } => self.unmatched(*unmatched, *token_would_help),
            Step::Preflight => self.out.line(
                "   CORS preflight (OPTIONS with Origin and Access-Control-Request-Method): spared the token (bypassCorsPreflight)",
            ),
            Step::Location(found) => self.location(found),
            Step::NoToken { needed } => self.out.line(if *needed {
                "   a token is needed here: refused with 401"
            } else {
                "   none is needed here: the request passes"
            }),
            Step::Cached { provider } => {
                self.seen.provider = Some(*provider);
                self.out.line(
                    "4. token: the verified-token cache knows it (same keys); its claims are checked again",
                );
            }
            Step::Parsed(parsed) => self.parsed(parsed),
            Step::Provider(provider) => self.provider(provider),
            Step::Keys { provider, keys } => self.keys(*provider, keys),
            Step::Signature(verdict) => self.signature(verdict),
            Step::Claims { seen, result } => self.claims(seen, result),
            Step::Revoked => self
                .out
                .line("   revoked: the provider's revocation list names this token: refused with 401"),
            Step::ResourceAudience { resource, held } => self.out.line(if *held {
                format!("   resource (RFC 8707): the token's aud names {resource:?}: pass")
            } else {
                format!(
                    "   resource (RFC 8707): the token's aud does not name {resource:?}: refused with 401 (audience)"
                )
            }),
            Step::Sender { proof, result } => self.sender(proof.as_ref(), result),
            Step::Ignored(reason) => {
                let rule = self.applied_rule().map_or("", |rule| rule.name.as_str());
                self.out.line(format!(
                    "   invalidToken: \"ignore\": the token would be refused ({reason}); rule {rule} lets the request go on as anonymous"
                ));
            }
            Step::Requirement {
                alternatives,
                result,
            } => self.requirement(alternatives, result),
        }
    }

    fn applied_rule(&self) -> Option<&'a Rule> {
        let config: &'a Config = self.config;
        match self.seen.applied {
            Some(Ok(index)) => config.rules.get(index),
            _ => None,
        }
    }

    fn selected_provider(&self) -> Option<(usize, &'a Provider)> {
        let config: &'a Config = self.config;
        let index = self.seen.provider?;
        Some((index, config.providers.get(index)?))
    }

    fn path(&mut self, normalized: &Result<String, PathError>) {
        match normalized {
            Ok(normalized) => {
                self.out.line(format!(
                    "1. path: {:?} normalised to {normalized:?} for rule matching",
                    self.shown_path
                ));
                self.seen.path = Some(normalized.clone());
            }
            Err(e) => {
                let why = match e {
                    PathError::EncodedSlash => "holds an encoded slash or backslash",
                    PathError::Malformed => "is malformed",
                };
                self.out.line(format!(
                    "1. path: {:?} {why}: refused with 400",
                    self.shown_path
                ));
            }
        }
    }

    fn rules_heading(&mut self) {
        if !self.seen.rules_begun {
            self.seen.rules_begun = true;
            self.out.line("2. rules (the first that matches decides):");
        }
    }

    /// The rules before `end` that the selection did not try: the path index left them out,
    /// since their paths cannot match.
    fn skipped_rules_until(&mut self, end: usize) {
        let path = self.seen.path.clone().unwrap_or_default();
        while self.seen.next_rule < end {
            let index = self.seen.next_rule;
            self.seen.next_rule += 1;
            let Some(rule) = self.config.rules.get(index) else {
                continue;
            };
            let patterns = rule
                .matcher
                .conditions
                .iter()
                .find(|c| c.fact == Fact::Path && c.any_of.is_some())
                .map_or(String::new(), describe_patterns);
            self.out.line(format!(
                "   {}: no: paths: {path} not in {patterns} (left out by the path index)",
                rule_label(index, rule)
            ));
        }
    }

    fn rule(&mut self, tried: &RuleTried) {
        self.rules_heading();
        self.skipped_rules_until(tried.rule);
        self.seen.next_rule = tried.rule.saturating_add(1);
        let Some(rule) = self.config.rules.get(tried.rule) else {
            return;
        };
        let label = rule_label(tried.rule, rule);
        let Some(missed) = &tried.missed else {
            self.out.line(format!(
                "   {label}: matches ({})",
                describe_match(&rule.matcher)
            ));
            self.seen.applied = Some(Ok(tried.rule));
            for line in describe_action(self.config, &rule.action) {
                self.out.line(format!("   -> {line}"));
            }
            self.mode_line(rule.mode.unwrap_or(self.config.mode));
            if matches!(rule.action, Action::Deny) {
                self.deny_line();
            }
            return;
        };
        self.out
            .line(format!("   {label}: no: {}", describe_miss(rule, missed)));
    }

    fn unmatched(&mut self, unmatched: Unmatched, token_would_help: bool) {
        self.rules_heading();
        self.seen.applied = Some(Err(unmatched));
        self.skipped_rules_until(self.config.rules.len());
        if token_would_help && unmatched == Unmatched::Deny {
            self.out.line(
                "   a rule would let the request in with a token, and it has none: refused with 401 (not 403), so the client can authenticate",
            );
            return;
        }
        let text = match unmatched {
            Unmatched::Authenticated => "authenticated: a valid token from any provider",
            Unmatched::Anonymous => {
                "anonymous: no token needed (one that is sent is still verified)"
            }
            Unmatched::Deny => "deny: refused with 403 whatever the token",
        };
        self.out
            .line(format!("   no rule matches: unmatched = {text}"));
        self.mode_line(self.config.mode);
        if unmatched == Unmatched::Deny {
            self.deny_line();
        }
    }

    fn mode_line(&mut self, mode: Mode) {
        if mode == Mode::Report {
            self.out
                .line("   mode report: a refusal is only reported, the request goes on upstream");
        }
    }

    fn deny_line(&mut self) {
        self.out.line(if self.seen.token_looked_at {
            "   refused with 403"
        } else {
            "   refused with 403 without looking at the token"
        });
    }

    fn location(&mut self, found: &Result<Option<Location>, ()>) {
        self.seen.token_looked_at = true;
        match found {
            Ok(Some(location)) => self.out.line(format!(
                "3. token location: found in {}",
                describe_location(location)
            )),
            Ok(None) => {
                self.out
                    .line("3. token location: none found where the providers look for tokens:");
                for (index, provider) in self.config.providers.iter().enumerate() {
                    self.out.line(format!(
                        "   {}: {}",
                        provider_label(index, provider),
                        provider_locations(provider).join(", ")
                    ));
                }
            }
            Err(()) => self
                .out
                .line("3. token location: more than one token in the request: refused with 400"),
        }
    }

    fn parsed(&mut self, parsed: &Result<Parsed, token::TokenError>) {
        match parsed {
            Ok(parsed) => {
                self.out.line(format!(
                    "4. token header: alg {}, kid {}, typ {}",
                    parsed.alg,
                    quoted_or_none(parsed.kid.as_deref()),
                    quoted_or_none(parsed.typ.as_deref())
                ));
                self.out
                    .line("   claims (UNVERIFIED until the signature step says otherwise):");
                let pretty =
                    serde_json::to_string_pretty(&Value::Object(parsed.claims.as_ref().clone()))
                        .unwrap_or_default();
                for line in pretty.lines() {
                    self.out.line(format!("     {line}"));
                }
                self.seen.claims = Some(Rc::clone(&parsed.claims));
            }
            Err(e) => self.out.line(format!(
                "4. token: {} ({}): refused with 401 before any key is looked at",
                e.describe(),
                e.reason()
            )),
        }
    }

    fn provider(&mut self, seen: &ProviderSeen) {
        let Some(iss) = &seen.iss else {
            self.out
                .line("5. provider: the token has no `iss` string: refused with 401");
            return;
        };
        self.seen.provider = seen.selected;
        self.out.line(format!(
            "5. provider: the token's iss {iss:?} selects the provider:"
        ));
        for (index, provider) in self.config.providers.iter().enumerate() {
            let verdict = match (Some(index) == seen.selected, &seen.tenant) {
                (true, Some((tenant, _))) => format!(
                    "issuerPattern {:?} matches with tenant {tenant:?}: selected",
                    provider.issuer
                ),
                (true, None) => "issuer matches: selected".to_string(),
                (false, _) if provider.tenancy.is_some() => {
                    format!("issuerPattern {:?} does not match", provider.issuer)
                }
                (false, _) => format!("issuer {:?} differs", provider.issuer),
            };
            self.out
                .line(format!("   {}: {verdict}", provider_label(index, provider)));
        }
        let Some((index, provider)) = self.selected_provider() else {
            self.out
                .line("   no provider trusts this issuer: refused with 401");
            return;
        };
        match &seen.tenant {
            Some((tenant, false)) => {
                self.out.line(format!(
                    "   tenant {tenant:?} is not among the provider's tenants: refused with 401 (tenant)"
                ));
                return;
            }
            Some((tenant, true)) => {
                let tid = self
                    .seen
                    .claims
                    .as_ref()
                    .and_then(|claims| claims.get("tid"))
                    .and_then(Value::as_str);
                self.out.line(format!(
                    "   tenant {tenant:?} is listed; the token's tid {} (checked once the signature holds)",
                    tid.map_or("is missing".to_string(), |tid| format!("is {tid:?}"))
                ));
            }
            None => {}
        }
        if !seen.location_listed {
            self.out.line(format!(
                "   {} takes tokens only from {}: refused with 401",
                provider_label(index, provider),
                provider_locations(provider).join(", ")
            ));
        }
    }

    fn keys(&mut self, index: usize, keys: &KeysSeen) {
        let note = self.keys.notes.get(index).map_or("", String::as_str);
        if let Some(unused) = &self.keys.unused_jwks {
            self.out.line(format!("6. keys: {unused}"));
        }
        let timeout_ms = self.config.providers.get(index).map_or(0, |p| p.timeout_ms);
        match keys {
            KeysSeen::Ready { keys, skipped } => {
                self.out.line(format!(
                    "6. keys: {note}: {} usable{}",
                    count(keys.len(), "key"),
                    match skipped {
                        0 => String::new(),
                        n => format!(", {n} skipped (unsupported or unsafe)"),
                    }
                ));
                for key in keys {
                    let alg = key
                        .alg
                        .map_or("any fitting alg".to_string(), |a| format!("alg {a}"));
                    self.out.line(format!(
                        "   - kid {}: {}, {alg}",
                        quoted_or_none(key.kid.as_deref()),
                        family_name(key.family)
                    ));
                }
            }
            KeysSeen::Loading => {
                self.out.line(format!("6. keys: {note}"));
                self.out.line(format!(
                    "   without keys the filter holds the request (up to {timeout_ms} ms) while it fetches them"
                ));
            }
            KeysSeen::Unavailable { .. } => {
                self.out.line(format!("6. keys: {note}"));
                self.out
                    .line("   no keys can be had: refused with 503, for the client to retry");
            }
        }
    }

    fn signature(&mut self, verdict: &Result<KeySeen, SignatureRefused>) {
        let refused = match verdict {
            Ok(key) => {
                self.out.line(format!(
                    "7. signature: verified by key kid {} ({}): the claims above are authentic",
                    quoted_or_none(key.kid.as_deref()),
                    family_name(key.family)
                ));
                return;
            }
            Err(refused) => refused,
        };
        let consequence = if refused.refetch {
            "the filter holds the request while it fetches the keys again"
        } else if refused.refresh_failing {
            "the keys cannot be refreshed, so refused with 503 (retryable)"
        } else {
            "refused with 401"
        };
        self.out.line(format!(
            "7. signature: NOT verified: {}: {consequence} (the claims above are unverified)",
            refused.error.describe()
        ));
        let Some((_, provider)) = self.selected_provider() else {
            return;
        };
        match refused.error {
            VerifyError::AlgorithmNotAllowed => {
                let allowed: Vec<&str> = provider.algorithms.iter().map(Alg::name).collect();
                self.out
                    .line(format!("   the provider allows: {}", allowed.join(", ")));
            }
            VerifyError::UnknownKey if !matches!(provider.keys, KeySource::Inline(_)) => {
                self.out.line(format!(
                    "   (the filter first fetches the keys again, at most every {} s, in case the issuer has just rotated them)",
                    provider.jwks_min_refetch_seconds
                ));
            }
            _ => {}
        }
    }

    fn claims(&mut self, seen: &[ClaimSeen], result: &Result<(), claims::ClaimError>) {
        let now_seconds = self.now_ms / 1000;
        let skew = self
            .selected_provider()
            .map_or(0, |(_, p)| p.clock_skew_seconds);
        self.out.line(format!(
            "8. claims, at {} ({now_seconds}), clock skew {skew} s:",
            time::show(now_seconds as f64)
        ));
        for check in seen {
            let line = claim_line(check);
            self.out.line(format!("   {line}"));
        }
        match result {
            Ok(()) => self.out.line("   claims: all pass"),
            Err(e) => self
                .out
                .line(format!("   claims: {}: refused with 401", e.describe())),
        }
    }

    /// Sender-constrained tokens: shown when the provider asks for a binding, the token is
    /// bound, a proof was sent, or the binding refused.
    fn sender(&mut self, proof: Option<&ProofSeen>, result: &Result<(), Denial>) {
        let Some((_, provider)) = self.selected_provider() else {
            return;
        };
        let cnf = self
            .seen
            .claims
            .as_ref()
            .and_then(|c| c.get("cnf").cloned());
        let asks = provider.dpop.mode != Binding::Off || provider.certificate_bound != Binding::Off;
        if cnf.is_none() && !asks && proof.is_none() && result.is_ok() {
            return;
        }
        self.out.line(format!(
            "9. sender binding: dpop {:?}, certificateBound {:?}",
            provider.dpop.mode, provider.certificate_bound
        ));
        if let Some(proof) = proof {
            self.out.line(format!(
                "   DPoP proof checks passed: {}",
                proof.passed.join(", ")
            ));
            match &proof.checked {
                Some(Ok(jkt)) => {
                    self.out.line(format!(
                        "   proof key thumbprint {jkt}; token cnf.jkt {}",
                        cnf.as_ref()
                            .and_then(|c| c.get("jkt"))
                            .map_or("absent".to_string(), Value::to_string)
                    ));
                    self.out.line(
                        "   replay: explain remembers no proof, so this one is a first use (the sidecar remembers each within its window)",
                    );
                }
                Some(Err(e)) => self
                    .out
                    .line(format!("   DPoP proof: FAILED: {}", e.describe())),
                None => {}
            }
        }
        match result {
            Ok(()) => self.out.line("   bound to its sender: pass"),
            Err(denial) => self.out.line(format!(
                "   refused with {} ({})",
                denial.render("").status,
                denial.reason()
            )),
        }
    }

    fn requirement(&mut self, alternatives: &[Vec<RequirementSeen>], result: &Result<(), Unmet>) {
        let action = self.applied_rule().map(|rule| &rule.action);
        let requirements: Vec<&Requirement> = match action {
            Some(Action::Requires(requirement)) => vec![requirement],
            Some(Action::RequiresAny(requirements)) => requirements.iter().collect(),
            Some(Action::AllowAnonymous) | Some(Action::Deny) | None => {
                let line = match self.seen.applied {
                    Some(Err(Unmatched::Authenticated)) => {
                        "10. requirement: any valid token (unmatched: authenticated): met"
                    }
                    _ => "10. requirement: none (anonymous route); the valid token passes",
                };
                self.out.line(line);
                return;
            }
        };
        let Some((_, provider)) = self.selected_provider() else {
            return;
        };
        let provider_name = provider.name.clone();
        let any = matches!(action, Some(Action::RequiresAny(_)));
        self.out.line(if any {
            "10. requirement: any one of"
        } else {
            "10. requirement:"
        });
        for (n, (requirement, parts)) in requirements.iter().zip(alternatives).enumerate() {
            let indent = if any {
                self.out.line(format!("   ({}):", n.saturating_add(1)));
                "     "
            } else {
                "   "
            };
            for part in parts {
                let line = self.requirement_line(requirement, part, &provider_name);
                self.out.line(format!("{indent}{line}"));
            }
        }
        let text = match result {
            Ok(()) => "met".to_string(),
            Err(Unmet::WrongProvider) => {
                "not met: this token's issuer is not accepted here: refused with 401".to_string()
            }
            Err(Unmet::MissingScopes(missing)) => format!(
                "not met: missing scopes {}: refused with 403",
                missing.join(" ")
            ),
            Err(Unmet::ClaimFailed(claim)) => {
                format!("not met: claim {claim} fails its condition: refused with 403")
            }
            Err(Unmet::Delegation(why)) => format!("not met: {why}: refused with 403"),
            Err(Unmet::Audience) => "not met: the token's aud names none of the rule's audiences: refused with 401".to_string(),
            Err(Unmet::Tenant) => "not met: the token's tenant (tid) is none of the rule's tenants: refused with 401".to_string(),
            Err(Unmet::StepUp { .. }) => "not met: the user must authenticate again (step-up): refused with 401 insufficient_user_authentication".to_string(),
        };
        self.out.line(format!("   requirement {text}"));
    }

    fn requirement_line(
        &self,
        requirement: &Requirement,
        part: &RequirementSeen,
        provider_name: &str,
    ) -> String {
        let verdict = |held: bool| if held { "pass" } else { "FAIL" };
        let shown = |value: &Option<Value>| {
            value
                .as_ref()
                .map_or("absent".to_string(), Value::to_string)
        };
        let list = |values: &Option<Vec<String>>, separator: &str| {
            values.as_deref().unwrap_or_default().join(separator)
        };
        match part {
            RequirementSeen::Providers { held } => format!(
                "providers {}: the token's is {provider_name}: {}",
                provider_names(
                    self.config,
                    requirement.providers.as_deref().unwrap_or_default()
                ),
                verdict(*held)
            ),
            RequirementSeen::Audiences { aud, held } => format!(
                "audiences: one of [{}], the token has {}: {}",
                list(&requirement.audiences, ", "),
                shown(aud),
                verdict(*held)
            ),
            RequirementSeen::Tenants { tid, held } => format!(
                "tenants: one of [{}], the token's tid is {}: {}",
                list(&requirement.tenants, ", "),
                tid.as_ref()
                    .map_or("absent".to_string(), |t| format!("{t:?}")),
                verdict(*held)
            ),
            RequirementSeen::Delegation { refusal } => match refusal {
                None => "delegation (client, actor, depth): pass".to_string(),
                Some(why) => format!("delegation: FAIL, {why}"),
            },
            RequirementSeen::Acr { acr, held } => format!(
                "acr: one of [{}], the token has {}: {}",
                list(&requirement.acr_values, ", "),
                acr.as_ref()
                    .map_or("none".to_string(), |a| format!("{a:?}")),
                verdict(*held)
            ),
            RequirementSeen::AuthAge { age, held } => {
                let max_age = requirement.max_auth_age_seconds.unwrap_or_default();
                match age {
                    Some(age) => format!(
                        "auth_time {} s ago, at most {max_age}: {}",
                        json_number(*age),
                        verdict(*held)
                    ),
                    None => format!("auth_time absent, at most {max_age} s ago required: FAIL"),
                }
            }
            RequirementSeen::Scopes { granted, missing } => {
                let sources: Vec<String> = self
                    .selected_provider()
                    .map(|(_, p)| p.scope_claims.iter().map(|c| c.display()).collect())
                    .unwrap_or_default();
                let outcome = if missing.is_empty() {
                    "pass".to_string()
                } else {
                    format!("FAIL, missing {}", missing.join(" "))
                };
                format!(
                    "scopes: required [{}], granted [{}] (from {}): {outcome}",
                    requirement.scopes.join(" "),
                    granted.join(" "),
                    sources.join(", ")
                )
            }
            RequirementSeen::Claim { index, value, held } => match requirement.claims.get(*index) {
                Some(condition) => format!(
                    "claim {} {}: the token has {}: {}",
                    condition.claim.display(),
                    describe_test(&condition.test),
                    shown(value),
                    verdict(*held)
                ),
                None => String::new(),
            },
        }
    }
}

/// One registered-claim check as the core made it.
fn claim_line(check: &ClaimSeen) -> String {
    let verdict = |held: bool| if held { "pass" } else { "FAIL" };
    match check {
        ClaimSeen::Time {
            name: "exp",
            at: Some(exp),
            now,
            skew,
            held,
        } => {
            let (exp, now, skew) = (*exp, *now, *skew);
            let shown = format!("exp {} ({})", json_number(exp), time::show(exp));
            match held {
                true if now < exp => format!("{shown}: pass, expires in {}", time::span(exp - now)),
                true => format!(
                    "{shown}: pass, expired {} ago but within the skew",
                    time::span(now - exp)
                ),
                false => format!(
                    "{shown}: FAIL, expired {} ago ({} beyond the skew)",
                    time::span(now - exp),
                    time::span(now - exp - skew)
                ),
            }
        }
        ClaimSeen::Time { name, at: None, .. } => format!("{name}: absent"),
        ClaimSeen::Time {
            name,
            at: Some(at),
            now,
            held,
            ..
        } => {
            let shown = format!("{name} {} ({})", json_number(*at), time::show(*at));
            if *held {
                format!("{shown}: pass")
            } else {
                let what = if *name == "nbf" {
                    "not before"
                } else {
                    "issued"
                };
                format!(
                    "{shown}: FAIL, {what} {} from now (beyond the skew)",
                    time::span(at - now)
                )
            }
        }
        ClaimSeen::Lifetime { max: None, .. } => {
            "lifetime: not limited (maxLifetimeSeconds: 0)".to_string()
        }
        ClaimSeen::Lifetime {
            max: Some(max),
            span,
            from_iat,
            held,
        } => {
            let what = if *from_iat {
                "exp - iat"
            } else {
                "no iat, exp - now"
            };
            format!(
                "lifetime: {what} = {} s, at most {max} s: {}",
                json_number(*span),
                verdict(*held)
            )
        }
        ClaimSeen::Audience { accepted, .. } if accepted.is_empty() => {
            "aud: not checked (no audiences configured)".to_string()
        }
        ClaimSeen::Audience {
            aud,
            accepted,
            held,
        } => format!(
            "aud {}, accepted {}: {}",
            aud.as_ref().map_or("absent".to_string(), Value::to_string),
            serde_json::to_string(accepted).unwrap_or_default(),
            verdict(*held)
        ),
    }
}

/// The filter's own decision for the request, and the answer it gives.
fn final_answer(
    config: &Compiled,
    keys: &Keys,
    request: &Request<'_>,
    now_ms: u64,
    decision: authorize::Decision,
    login_answer: Option<&[String]>,
    out: &mut Out,
) {
    out.line("");
    out.line("the filter's answer (authorize::authorize):");
    out.line(format!(
        "  looked at: {}",
        describe_trace(config, &decision.trace)
    ));
    // A held request is logged once decided: here, as if its keys never came.
    let logged = match decision.outcome {
        Outcome::Wait { provider, .. } => {
            authorize::wait_expired(config, &keys.lookup, provider, now_ms)
        }
        _ => decision.clone(),
    };
    out.line(format!(
        "  audit line: {}",
        audit::audit_line(config, &logged, request, None)
    ));
    let realm = config.realm.as_deref().unwrap_or(request.authority);
    let challenges = Challenges::for_request(config, decision.trace.rule, request.authority);
    let answering = Answering {
        realm,
        challenges: &challenges,
        how: Presentation::of(
            config,
            decision.trace.rule,
            request.method,
            request.path,
            request.headers,
        ),
    };
    match decision.outcome {
        Outcome::Wait { provider, .. } => {
            let name = config
                .providers
                .get(provider)
                .map_or(String::new(), |p| provider_label(provider, p));
            let timeout = config.providers.get(provider).map_or(0, |p| p.timeout_ms);
            out.line(format!(
                "held: keys loading for {name}: the filter holds the request up to {timeout} ms while it fetches them"
            ));
            out.line("  if they do not come in time:");
            outcome_lines(out, config, &logged.outcome, &answering);
        }
        Outcome::Deny(Denial::MissingToken) if login_answer.is_some() => {
            for line in login_answer.unwrap_or_default() {
                out.line(line);
            }
        }
        outcome => outcome_lines(out, config, &outcome, &answering),
    }
}

/// How the filter would answer this request: its realm, and the challenges of its schemes.
struct Answering<'a> {
    realm: &'a str,
    challenges: &'a Challenges,
    /// `answers`, `denyWith`, and whether the client speaks gRPC or is a browser.
    how: Presentation<'a>,
}

fn outcome_lines(out: &mut Out, config: &Config, outcome: &Outcome, answering: &Answering<'_>) {
    match outcome {
        Outcome::Allow(allowed) => allowed_lines(out, config, allowed, answering),
        Outcome::Deny(denial) => denial_lines(out, denial, answering, "final: "),
        Outcome::Wait { .. } => out.line("final: held"),
        Outcome::Answer(answer) => out.line(format!(
            "final: {} answered by the filter itself: the protected resource metadata",
            answer.status
        )),
    }
}

fn allowed_lines(out: &mut Out, config: &Config, allowed: &Allowed, answering: &Answering<'_>) {
    let payload_headers: Vec<&str> = config
        .providers
        .iter()
        .filter_map(|p| p.output_payload_to_header.as_deref())
        .collect();
    match &allowed.would_deny {
        None => out.line("final: allowed: the request goes on upstream"),
        Some(denial) => {
            out.line("final: allowed (report mode): the request goes on upstream");
            denial_lines(
                out,
                denial,
                answering,
                "  enforcing, the filter would answer: ",
            );
        }
    }
    for edit in &allowed.edits {
        match edit {
            HeaderEdit::Remove(name) => out.line(format!("  upstream: remove {name}")),
            // The payload header carries a piece of the token: named, not shown.
            HeaderEdit::Set(name, value) if payload_headers.contains(&name.as_str()) => {
                out.line(format!(
                    "  upstream: set {name}: <the verified payload, base64url, {} chars>",
                    value.len()
                ))
            }
            HeaderEdit::Set(name, value) => out.line(format!("  upstream: set {name}: {value}")),
            HeaderEdit::Add(name, value) => out.line(format!("  upstream: add {name}: {value}")),
        }
    }
    for header in &allowed.skipped_headers {
        out.line(format!(
            "  upstream: {header} not set: the claim holds characters unsafe in a header"
        ));
    }
}

fn denial_lines(out: &mut Out, denial: &Denial, answering: &Answering<'_>, lead: &str) {
    let response = denial.answer(answering.realm, answering.challenges, &answering.how);
    out.line(format!(
        "{lead}{} {} ({})",
        response.status,
        status_text(response.status),
        denial.reason()
    ));
    // `denyWith` changes what the client sees, never the refusal the audit line records.
    let own = denial.render("").status;
    if own != response.status {
        out.line(format!(
            "  the refusal's own status, in the audit line and metrics: {own}"
        ));
    }
    for (name, value) in &response.headers {
        out.line(format!("  {name}: {value}"));
    }
    match response.grpc_status {
        Some(status) => out.line(format!(
            "  gRPC: grpc-status {status}, grpc-message: {}",
            response.body
        )),
        None if response.body.is_empty() => out.line("  body: (none)"),
        None => out.line(format!("  body: {}", response.body)),
    }
    if answering.how.answers == Answers::Minimal {
        out.line(format!(
            "  answers: minimal: the client is not told why; the audit line and metrics say {}",
            denial.reason()
        ));
    }
}

fn status_text(status: u32) -> &'static str {
    match status {
        302 => "Found",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn describe_trace(config: &Config, trace: &Trace) -> String {
    let mut parts = vec![
        match trace.rule.and_then(|i| Some((i, config.rules.get(i)?))) {
            Some((index, rule)) => format!("rule {}", rule_label(index, rule)),
            None => "no rule applied".to_string(),
        },
    ];
    if let Some(location) = &trace.location {
        parts.push(format!("token in {}", describe_location(location)));
    }
    if let Some((index, provider)) = trace
        .provider
        .and_then(|i| Some((i, config.providers.get(i)?)))
    {
        parts.push(format!("provider {}", provider_label(index, provider)));
    }
    if let Some(alg) = trace.alg {
        parts.push(format!("alg {alg}"));
    }
    if let Some(kid) = &trace.kid {
        parts.push(format!("kid {kid:?}"));
    }
    parts.join(", ")
}

fn rule_label(index: usize, rule: &Rule) -> String {
    let generated = format!("rules[{index}]");
    if rule.name == generated {
        generated
    } else {
        format!("{generated} {:?}", rule.name)
    }
}

fn provider_label(index: usize, provider: &Provider) -> String {
    format!("providers[{index}] {:?}", provider.name)
}

fn provider_names(config: &Config, indexes: &[usize]) -> String {
    let names: Vec<&str> = indexes
        .iter()
        .filter_map(|i| config.providers.get(*i))
        .map(|p| p.name.as_str())
        .collect();
    format!("[{}]", names.join(", "))
}

fn describe_location(location: &Location) -> String {
    match location {
        Location::Header { name, prefix } if prefix.is_empty() => format!("header {name}"),
        Location::Header { name, prefix } => format!("header {name} (prefix {prefix:?})"),
        Location::Param(name) => format!("query parameter {name}"),
        Location::Cookie(name) => format!("cookie {name}"),
    }
}

fn provider_locations(provider: &Provider) -> Vec<String> {
    let headers = provider.from_headers.iter().map(|h| {
        describe_location(&Location::Header {
            name: h.name.clone(),
            prefix: h.prefix.clone(),
        })
    });
    let params = provider
        .from_params
        .iter()
        .map(|p| describe_location(&Location::Param(p.clone())));
    let cookies = provider
        .from_cookies
        .iter()
        .map(|c| describe_location(&Location::Cookie(c.clone())));
    headers.chain(params).chain(cookies).collect()
}

fn describe_match(matcher: &RuleMatch) -> String {
    let parts: Vec<String> = matcher
        .conditions
        .iter()
        .map(|c| format!("{} {}", c.field, describe_patterns(c)))
        .collect();
    if parts.is_empty() {
        "matches every request".to_string()
    } else {
        parts.join(", ")
    }
}

fn describe_patterns(condition: &Condition) -> String {
    let list = |patterns: &[Pattern]| {
        let shown: Vec<String> = patterns.iter().map(policy::describe_pattern).collect();
        format!("[{}]", shown.join(", "))
    };
    match (&condition.any_of, &condition.none_of) {
        (Some(any), None) if !condition.field.starts_with("when") => list(any),
        (None, Some(none)) if !condition.field.starts_with("when") => list(none),
        (any, none) => {
            let mut parts = Vec::new();
            if let Some(any) = any {
                parts.push(format!("values {}", list(any)));
            }
            if let Some(none) = none {
                parts.push(format!("notValues {}", list(none)));
            }
            parts.join(" ")
        }
    }
}

/// Why a rule's `match` does not hold, with the value the core read.
fn describe_miss(rule: &Rule, missed: &MissSeen) -> String {
    let Some(condition) = rule.matcher.conditions.get(missed.miss.condition) else {
        return "does not match".to_string();
    };
    let field = &condition.field;
    match &missed.miss.why {
        MissReason::Absent(what) => {
            let consequence = match condition.fact {
                Fact::Principal | Fact::Namespace => {
                    ": a rule that needs the caller's identity does not match without mTLS"
                }
                _ => "",
            };
            format!("{field}: {what}{consequence}")
        }
        MissReason::Unknown(what) => {
            format!("{field}: {what}: unknown, so only a deny rule would count it as matching")
        }
        MissReason::Unmet => {
            let shown = match &missed.observed {
                Some(Observed::Text(values)) => values.join(", "),
                Some(Observed::Ip(ip)) => ip.to_string(),
                Some(Observed::Port(port)) => port.to_string(),
                Some(Observed::Absent(what) | Observed::Unknown(what)) => (*what).to_string(),
                None => String::new(),
            };
            if missed.listed {
                format!(
                    "{field}: {shown} is listed {}",
                    describe_patterns(condition)
                )
            } else {
                format!("{field}: {shown} not in {}", describe_patterns(condition))
            }
        }
    }
}

fn describe_action(config: &Config, action: &Action) -> Vec<String> {
    match action {
        Action::AllowAnonymous => {
            vec!["allowAnonymous: no token needed (one that is sent is still verified)".into()]
        }
        Action::Deny => vec!["deny: refused with 403 whatever the token".into()],
        Action::Requires(requirement) => {
            vec![format!(
                "requires {}",
                describe_requirement(config, requirement)
            )]
        }
        Action::RequiresAny(requirements) => std::iter::once("requiresAny, one of:".to_string())
            .chain(requirements.iter().enumerate().map(|(n, r)| {
                format!(
                    "  ({}) {}",
                    n.saturating_add(1),
                    describe_requirement(config, r)
                )
            }))
            .collect(),
    }
}

fn describe_requirement(config: &Config, requirement: &Requirement) -> String {
    let mut parts = vec![match &requirement.providers {
        Some(providers) => format!("a valid token from {}", provider_names(config, providers)),
        None => "a valid token from any provider".to_string(),
    }];
    if !requirement.scopes.is_empty() {
        parts.push(format!("scopes [{}]", requirement.scopes.join(" ")));
    }
    for condition in &requirement.claims {
        parts.push(format!(
            "claim {} {}",
            condition.claim.display(),
            describe_test(&condition.test)
        ));
    }
    let lists = [
        ("audiences", &requirement.audiences),
        ("tenants", &requirement.tenants),
        ("acrValues", &requirement.acr_values),
        ("clients", &requirement.clients),
        ("actor", &requirement.actors),
    ];
    for (name, values) in lists {
        if let Some(values) = values {
            parts.push(format!("{name} one of [{}]", values.join(" ")));
        }
    }
    if let Some(seconds) = requirement.max_auth_age_seconds {
        parts.push(format!("authenticated within {seconds} s"));
    }
    if let Some(depth) = requirement.max_delegation_depth {
        parts.push(format!("at most {depth} delegation levels"));
    }
    if requirement.delegation_forbidden {
        parts.push("no delegation".to_string());
    }
    parts.join(", ")
}

fn describe_test(test: &ClaimTest) -> String {
    let list = |values: &[Value]| serde_json::to_string(values).unwrap_or_default();
    match test {
        ClaimTest::AnyOf(values) => format!("anyOf {}", list(values)),
        ClaimTest::AllOf(values) => format!("allOf {}", list(values)),
        ClaimTest::Present => "present".to_string(),
    }
}

fn family_name(family: KeyFamily) -> &'static str {
    match family {
        KeyFamily::Rsa => "RSA",
        KeyFamily::EcP256 => "EC P-256",
        KeyFamily::EcP384 => "EC P-384",
        KeyFamily::Ed25519 => "Ed25519",
        KeyFamily::Oct => "symmetric (oct)",
    }
}

fn quoted_or_none(text: Option<&str>) -> String {
    text.map_or("(none)".to_string(), |t| format!("{t:?}"))
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Whole seconds without a trailing `.0`.
fn json_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}
