//! `explain`: one request, narrated step by step with the core's own functions, then the
//! answer of `authorize::authorize` itself, so the verdict is always the filter's.
//! Neither the token nor its signature nor key material is ever printed; claims are, marked
//! as unverified until the signature holds.

use crate::keys::{read_jwks, FixedKeys};
use crate::time;
use mesh_oauth::alg::{Alg, KeyFamily};
use mesh_oauth::authorize::{self, Allowed, HeaderEdit, Outcome, Request, Trace};
use mesh_oauth::cache::TokenCache;
use mesh_oauth::claims;
use mesh_oauth::compile::{self, Compiled};
use mesh_oauth::config::{
    Action, Answers, Binding, ClaimTest, Condition, Config, Fact, KeySource, Mode, Pattern,
    Provider, Requirement, Rule, RuleMatch, Unmatched,
};
use mesh_oauth::extract::{self, ExtractError, Found, Location, RequestParts};
use mesh_oauth::keys::{parse_jwks, JwksLimits, KeySet};
use mesh_oauth::path::{self, PathError};
use mesh_oauth::peer::FixedPeer;
use mesh_oauth::policy::{
    self, Applies, Miss, MissReason, Observed, RequestFacts, TokenClaims, Unmet,
};
use mesh_oauth::response::{Challenges, Denial, Presentation};
use mesh_oauth::sender::replay::Admission;
use mesh_oauth::sender::{self, dpop, Presented};
use mesh_oauth::token::{self, Jws, TokenLimits};
use mesh_oauth::verify::{self, VerifyError};
use serde_json::{Map, Value};

pub struct Options {
    pub token: String,
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

/// The report, line by line.
#[derive(Default)]
struct Out(String);

impl Out {
    fn line(&mut self, text: impl AsRef<str>) {
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

/// What the matched rule (or `unmatched`) asks of the request, as in the core.
enum Need<'c> {
    AnyValidToken,
    Anonymous,
    Rule(&'c Action),
}

/// The report for one request; `Err` when `--jwks` cannot be read.
pub fn explain(config: &Compiled, options: &Options) -> Result<String, String> {
    let mut out = Out::default();
    let (headers, raw_path, placed) = place_token(config, options);
    let keys = gather_keys(config, options)?;
    out.line(format!(
        "request: {} {} (host {})",
        options.method, options.path, options.host
    ));
    out.line(format!(
        "token: {} bytes, sent as {placed} (the token itself is never printed)",
        options.token.len()
    ));
    let asks_peer = config.rules.iter().any(|rule| {
        let conditions = &rule.matcher.conditions;
        conditions.iter().any(|c| c.fact.needs_peer())
    });
    if asks_peer || options.peer.uri_san.is_some() {
        describe_connection(&options.peer, &mut out);
    }
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .chain(&options.headers)
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let request = Request {
        method: &options.method,
        scheme: &options.scheme,
        path: &raw_path,
        authority: &options.host,
        headers: &headers,
        peer: &options.peer,
    };
    let mut narration = Narration {
        config,
        shown_path: &options.path,
        keys: &keys,
        request: &request,
        now_ms: options.now_ms,
        out: &mut out,
    };
    if narration.steps().is_none() {
        out.line("(the filter stops here)");
    }
    final_answer(config, &keys, &request, options.now_ms, &mut out);
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
fn place_token(config: &Config, options: &Options) -> (Vec<(String, String)>, String, String) {
    let token = &options.token;
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

fn gather_keys(config: &Config, options: &Options) -> Result<Keys, String> {
    let limits = JwksLimits::from(&config.limits);
    // `--jwks` stands for what the provider the token's issuer selects would fetch.
    let token_limits = TokenLimits::from(&config.limits);
    let selected = token::parse(&options.token, &token_limits)
        .ok()
        .and_then(|jws| {
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
                    Ok(set) => (Some(set), "inline `jwks` of the configuration".to_string()),
                    Err(e) => (None, format!("inline `jwks` unusable: {}", e.describe())),
                }
            }
            (source, Some(jwks)) if selected == Some(index) => {
                jwks_used = true;
                let bytes = read_jwks(jwks, limits.max_bytes, provider.timeout_ms)?;
                // A fetched document never yields symmetric keys, in the filter as here.
                match parse_jwks(&bytes, &limits, false) {
                    Ok(set) => (Some(set), format!("--jwks {jwks} ({})", remote(source))),
                    Err(e) => (
                        None,
                        format!(
                            "--jwks {jwks} is not usable: {}; the filter would refuse it too",
                            e.describe()
                        ),
                    ),
                }
            }
            (source, _) => (
                None,
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

struct Narration<'a> {
    config: &'a Compiled,
    /// The path as given, without a token put in its query.
    shown_path: &'a str,
    keys: &'a Keys,
    request: &'a Request<'a>,
    now_ms: u64,
    out: &'a mut Out,
}

impl<'a> Narration<'a> {
    /// The steps of the core's decision in its order; `None` where the filter stops.
    fn steps(&mut self) -> Option<()> {
        let normalized = self.path_step()?;
        let need = self.rule_step(&normalized)?;
        let found = self.token_step(&need)?;
        let limits = TokenLimits::from(&self.config.limits);
        let jws = self.parse_step(&found, &limits)?;
        let (index, provider) = self.provider_step(&jws, &found)?;
        self.signature_step(&jws, index, provider)?;
        self.claims_step(&jws.claims, provider)?;
        self.binding_step(&found, provider, &jws.claims)?;
        self.requirement_step(&need, index, provider, &jws.claims)
    }

    fn path_step(&mut self) -> Option<String> {
        match path::normalize(self.request.path) {
            Ok(normalized) => {
                self.out.line(format!(
                    "1. path: {:?} normalised to {normalized:?} for rule matching",
                    self.shown_path
                ));
                Some(normalized)
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
                None
            }
        }
    }

    fn rule_step(&mut self, normalized: &str) -> Option<Need<'a>> {
        let config = self.config;
        let facts = RequestFacts {
            method: self.request.method,
            path: normalized,
            host: self.request.authority,
            headers: self.request.headers,
            peer: self.request.peer,
        };
        let (keys, request, now_ms) = (self.keys, self.request, self.now_ms);
        let mut token = || verified_claims(config, keys, request, now_ms);
        self.out.line("2. rules (the first that matches decides):");
        let selection = match policy::select(config, &config.rule_index, &facts, &mut token) {
            Ok(selection) => selection,
            Err(why) => {
                self.out.line(format!(
                    "   a rule's match names token facts, and the token does not pass: {why}"
                ));
                return None;
            }
        };
        let applies = selection.applies;
        let chosen = match applies {
            Applies::Rule(rule) => config.rules.iter().position(|r| std::ptr::eq(r, rule)),
            Applies::Unmatched(_) => None,
        };
        for (index, rule) in config.rules.iter().enumerate() {
            if Some(index) == chosen {
                self.out.line(format!(
                    "   {}: matches ({})",
                    rule_label(index, rule),
                    describe_match(&rule.matcher)
                ));
                break;
            }
            let why = match policy::check_rule(rule, &facts, &mut token) {
                Ok(Err(miss)) => describe_miss(rule, &miss, &facts, &mut token),
                _ => "does not match".to_string(),
            };
            self.out
                .line(format!("   {}: no: {why}", rule_label(index, rule)));
        }
        if selection.token_would_help {
            self.out.line(
                "   a rule would let the request in with a token, and it has none: refused with 401 (not 403), so the client can authenticate",
            );
            return None;
        }
        let (need, mode) = match applies {
            Applies::Rule(rule) => {
                for line in describe_action(config, &rule.action) {
                    self.out.line(format!("   -> {line}"));
                }
                (Need::Rule(&rule.action), rule.mode.unwrap_or(config.mode))
            }
            Applies::Unmatched(unmatched) => {
                let (need, text) = match unmatched {
                    Unmatched::Authenticated => (
                        Need::AnyValidToken,
                        "authenticated: a valid token from any provider",
                    ),
                    Unmatched::Anonymous => (
                        Need::Anonymous,
                        "anonymous: no token needed (one that is sent is still verified)",
                    ),
                    Unmatched::Deny => (
                        Need::Rule(&Action::Deny),
                        "deny: refused with 403 whatever the token",
                    ),
                };
                self.out
                    .line(format!("   no rule matches: unmatched = {text}"));
                (need, config.mode)
            }
        };
        if mode == Mode::Report {
            self.out
                .line("   mode report: a refusal is only reported, the request goes on upstream");
        }
        if matches!(need, Need::Rule(Action::Deny)) {
            self.out
                .line("   refused with 403 without looking at the token");
            return None;
        }
        Some(need)
    }

    fn token_step(&mut self, need: &Need<'_>) -> Option<Found> {
        let parts = RequestParts {
            headers: self.request.headers,
            path: self.request.path,
        };
        match extract::find_token(&self.config.providers, &parts) {
            Ok(Some(found)) => {
                self.out.line(format!(
                    "3. token location: found in {}",
                    describe_location(&found.location)
                ));
                Some(found)
            }
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
                let verdict = match need {
                    Need::Anonymous | Need::Rule(Action::AllowAnonymous) => {
                        "none is needed here: the request passes"
                    }
                    _ => "a token is needed here: refused with 401",
                };
                self.out.line(format!("   {verdict}"));
                None
            }
            Err(ExtractError::MultipleTokens) => {
                self.out.line(
                    "3. token location: more than one token in the request: refused with 400",
                );
                None
            }
        }
    }

    fn parse_step<'t>(&mut self, found: &'t Found, limits: &TokenLimits) -> Option<Jws<'t>> {
        match token::parse(&found.token, limits) {
            Ok(jws) => {
                let header = &jws.header;
                self.out.line(format!(
                    "4. token header: alg {}, kid {}, typ {}",
                    header.alg,
                    quoted_or_none(header.kid.as_deref()),
                    quoted_or_none(header.typ.as_deref())
                ));
                self.out
                    .line("   claims (UNVERIFIED until the signature step says otherwise):");
                let pretty = serde_json::to_string_pretty(&Value::Object(jws.claims.clone()))
                    .unwrap_or_default();
                for line in pretty.lines() {
                    self.out.line(format!("     {line}"));
                }
                Some(jws)
            }
            Err(e) => {
                self.out.line(format!(
                    "4. token: {} ({}): refused with 401 before any key is looked at",
                    e.describe(),
                    e.reason()
                ));
                None
            }
        }
    }

    fn provider_step(&mut self, jws: &Jws<'_>, found: &Found) -> Option<(usize, &'a Provider)> {
        let providers = &self.config.providers;
        let Some(iss) = claims::issuer(&jws.claims) else {
            self.out
                .line("5. provider: the token has no `iss` string: refused with 401");
            return None;
        };
        let selected = self.config.provider_for(iss).map(|(index, _)| index);
        self.out.line(format!(
            "5. provider: the token's iss {iss:?} selects the provider:"
        ));
        for (index, provider) in providers.iter().enumerate() {
            let verdict = match (Some(index) == selected, provider.tenant_of(iss)) {
                (true, Some(tenant)) => format!(
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
        let Some((index, provider)) = selected.and_then(|i| Some((i, providers.get(i)?))) else {
            self.out
                .line("   no provider trusts this issuer: refused with 401");
            return None;
        };
        if let (Some(tenancy), Some(tenant)) = (&provider.tenancy, provider.tenant_of(iss)) {
            if !tenancy.admits(tenant) {
                self.out.line(format!(
                    "   tenant {tenant:?} is not among the provider's tenants: refused with 401 (tenant)"
                ));
                return None;
            }
            let tid = jws.claims.get("tid").and_then(Value::as_str);
            self.out.line(format!(
                "   tenant {tenant:?} is listed; the token's tid {} (checked once the signature holds)",
                tid.map_or("is missing".to_string(), |tid| format!("is {tid:?}"))
            ));
        }
        if !found.location.is_listed_by(provider) {
            self.out.line(format!(
                "   {} takes tokens only from {}: refused with 401",
                provider_label(index, provider),
                provider_locations(provider).join(", ")
            ));
            return None;
        }
        Some((index, provider))
    }

    fn signature_step(&mut self, jws: &Jws<'_>, index: usize, provider: &Provider) -> Option<()> {
        let note = self.keys.notes.get(index).map_or("", String::as_str);
        if let Some(unused) = &self.keys.unused_jwks {
            self.out.line(format!("6. keys: {unused}"));
        }
        let Some(Some(set)) = self.keys.lookup.0.get(index) else {
            self.out.line(format!("6. keys: {note}"));
            self.out.line(format!(
                "   without keys the filter holds the request (up to {} ms) while it fetches them",
                provider.timeout_ms
            ));
            return None;
        };
        self.out.line(format!(
            "6. keys: {note}: {} usable{}",
            count(set.len(), "key"),
            match set.skipped() {
                0 => String::new(),
                n => format!(", {n} skipped (unsupported or unsafe)"),
            }
        ));
        list_keys(self.out, set);
        let header = &jws.header;
        let verified = verify::verify(
            header.alg,
            header.kid.as_deref(),
            jws.signing_input,
            &jws.signature,
            set,
            provider.algorithms,
        );
        match verified {
            Ok(key) => {
                self.out.line(format!(
                    "7. signature: verified by key kid {} ({}): the claims above are authentic",
                    quoted_or_none(key.kid()),
                    family_name(key.family())
                ));
                Some(())
            }
            Err(e) => {
                self.out.line(format!(
                    "7. signature: NOT verified: {}: refused with 401 (the claims above are unverified)",
                    e.describe()
                ));
                match e {
                    VerifyError::AlgorithmNotAllowed => {
                        let allowed: Vec<&str> =
                            provider.algorithms.iter().map(Alg::name).collect();
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
                None
            }
        }
    }

    fn claims_step(
        &mut self,
        token_claims: &Map<String, Value>,
        provider: &Provider,
    ) -> Option<()> {
        let now_seconds = self.now_ms / 1000;
        let now = now_seconds as f64;
        let skew = provider.clock_skew_seconds as f64;
        self.out.line(format!(
            "8. claims, at {} ({now_seconds}), clock skew {} s:",
            time::show(now),
            provider.clock_skew_seconds
        ));
        let exp = numeric_date(token_claims, "exp");
        let iat = numeric_date(token_claims, "iat");
        let line = match exp {
            NumericDate::Absent => "exp: absent, but required: fail".to_string(),
            NumericDate::NotANumber => "exp: not a number: fail".to_string(),
            NumericDate::OutOfRange => "exp: beyond year 9999: FAIL".to_string(),
            NumericDate::At(exp) if now < exp => format!(
                "exp {} ({}): pass, expires in {}",
                json_number(exp),
                time::show(exp),
                time::span(exp - now)
            ),
            NumericDate::At(exp) if now < exp + skew => format!(
                "exp {} ({}): pass, expired {} ago but within the skew",
                json_number(exp),
                time::show(exp),
                time::span(now - exp)
            ),
            NumericDate::At(exp) => format!(
                "exp {} ({}): FAIL, expired {} ago ({} beyond the skew)",
                json_number(exp),
                time::show(exp),
                time::span(now - exp),
                time::span(now - exp - skew)
            ),
        };
        self.out.line(format!("   {line}"));
        for (name, what) in [("nbf", "not before"), ("iat", "issued")] {
            let line = match numeric_date(token_claims, name) {
                NumericDate::Absent => format!("{name}: absent"),
                NumericDate::NotANumber => format!("{name}: not a number: fail"),
                NumericDate::OutOfRange => format!("{name}: beyond year 9999: FAIL"),
                NumericDate::At(at) if at <= now + skew => {
                    format!("{name} {} ({}): pass", json_number(at), time::show(at))
                }
                NumericDate::At(at) => format!(
                    "{name} {} ({}): FAIL, {what} {} from now (beyond the skew)",
                    json_number(at),
                    time::show(at),
                    time::span(at - now)
                ),
            };
            self.out.line(format!("   {line}"));
        }
        let lifetime = match (provider.max_lifetime_seconds, exp, iat) {
            (None, _, _) => "lifetime: not limited (maxLifetimeSeconds: 0)".to_string(),
            (Some(max), NumericDate::At(exp), NumericDate::At(iat)) => {
                let verdict = if exp - iat > max as f64 {
                    "FAIL"
                } else {
                    "pass"
                };
                format!(
                    "lifetime: exp - iat = {} s, at most {max} s: {verdict}",
                    json_number(exp - iat)
                )
            }
            (Some(max), NumericDate::At(exp), NumericDate::Absent) => {
                let verdict = if exp - now > max as f64 {
                    "FAIL"
                } else {
                    "pass"
                };
                format!(
                    "lifetime: no iat, exp - now = {} s, at most {max} s: {verdict}",
                    json_number(exp - now)
                )
            }
            (Some(max), _, _) => format!("lifetime: at most {max} s: cannot be computed"),
        };
        self.out.line(format!("   {lifetime}"));
        let audience = if provider.audiences.is_empty() {
            "aud: not checked (no audiences configured)".to_string()
        } else {
            let given = token_claims
                .get("aud")
                .map_or("absent".to_string(), Value::to_string);
            let accepted = audience_accepted(token_claims.get("aud"), &provider.audiences);
            format!(
                "aud {given}, accepted {}: {}",
                serde_json::to_string(&provider.audiences).unwrap_or_default(),
                if accepted { "pass" } else { "FAIL" }
            )
        };
        self.out.line(format!("   {audience}"));
        match claims::check(token_claims, provider, now_seconds) {
            Ok(()) => {
                self.out.line("   claims: all pass");
                Some(())
            }
            Err(e) => {
                self.out
                    .line(format!("   claims: {}: refused with 401", e.describe()));
                None
            }
        }
    }

    /// Sender-constrained tokens: the DPoP proof, check by check, and the binding verdict of
    /// the core itself.
    fn binding_step(
        &mut self,
        found: &Found,
        provider: &Provider,
        token_claims: &Map<String, Value>,
    ) -> Option<()> {
        let bound = token_claims.get("cnf").is_some();
        let asks = provider.dpop.mode != Binding::Off || provider.certificate_bound != Binding::Off;
        if !bound && !asks && !found.location.is_dpop() {
            return Some(());
        }
        self.out.line(format!(
            "9. sender binding: dpop {:?}, certificateBound {:?}",
            provider.dpop.mode, provider.certificate_bound
        ));
        let limits = TokenLimits::from(&self.config.limits);
        if found.location.is_dpop() {
            if let Ok(proof) = dpop::proof_header(self.request) {
                let mut passed = Vec::new();
                let checked = dpop::check_proof(
                    proof,
                    &found.token,
                    &provider.dpop,
                    provider.clock_skew_seconds,
                    self.request,
                    self.now_ms / 1000,
                    &limits,
                    None,
                    &mut passed,
                );
                self.out.line(format!(
                    "   DPoP proof checks passed: {}",
                    passed.join(", ")
                ));
                match &checked {
                    Ok(proof) => self.out.line(format!(
                        "   proof key thumbprint {}; token cnf.jkt {}",
                        proof.jkt,
                        token_claims
                            .get("cnf")
                            .and_then(|c| c.get("jkt"))
                            .map_or("absent".to_string(), Value::to_string)
                    )),
                    Err(e) => self
                        .out
                        .line(format!("   DPoP proof: FAILED: {}", e.describe())),
                }
                self.out.line(
                    "   replay: not checked here (the sidecar remembers each proof within its window)",
                );
            }
        }
        let verdict = sender::check(
            provider,
            token_claims,
            &found.token,
            if found.location.is_dpop() {
                Presented::Dpop
            } else {
                Presented::Bearer
            },
            self.request,
            self.now_ms,
            &limits,
            None,
            &mut |_| Admission::Fresh,
        );
        match verdict {
            Ok(()) => {
                self.out.line("   bound to its sender: pass");
                Some(())
            }
            Err(denial) => {
                self.out.line(format!(
                    "   refused with {} ({})",
                    denial.render("").status,
                    denial.reason()
                ));
                None
            }
        }
    }

    fn requirement_step(
        &mut self,
        need: &Need<'_>,
        index: usize,
        provider: &Provider,
        token_claims: &Map<String, Value>,
    ) -> Option<()> {
        let verdict = match need {
            Need::AnyValidToken => {
                self.out
                    .line("10. requirement: any valid token (unmatched: authenticated): met");
                return Some(());
            }
            Need::Anonymous | Need::Rule(Action::AllowAnonymous) | Need::Rule(Action::Deny) => {
                self.out
                    .line("10. requirement: none (anonymous route); the valid token passes");
                return Some(());
            }
            Need::Rule(Action::Requires(requirement)) => {
                self.out.line("10. requirement:");
                self.requirement_lines(requirement, index, provider, token_claims, "   ");
                policy::check_requirement(
                    requirement,
                    index,
                    token_claims,
                    &provider.scope_claims,
                    self.now_ms / 1000,
                )
            }
            Need::Rule(Action::RequiresAny(requirements)) => {
                self.out.line("10. requirement: any one of");
                for (n, requirement) in requirements.iter().enumerate() {
                    self.out.line(format!("   ({}):", n.saturating_add(1)));
                    self.requirement_lines(requirement, index, provider, token_claims, "     ");
                }
                policy::check_any(
                    requirements,
                    index,
                    token_claims,
                    &provider.scope_claims,
                    self.now_ms / 1000,
                )
            }
        };
        let text = match verdict {
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
        Some(())
    }

    fn requirement_lines(
        &mut self,
        requirement: &Requirement,
        index: usize,
        provider: &Provider,
        token_claims: &Map<String, Value>,
        indent: &str,
    ) {
        if let Some(providers) = &requirement.providers {
            let verdict = if providers.contains(&index) {
                "pass"
            } else {
                "FAIL"
            };
            self.out.line(format!(
                "{indent}providers {}: the token's is {}: {verdict}",
                provider_names(self.config, providers),
                provider.name
            ));
        }
        if !requirement.scopes.is_empty() {
            let granted = policy::granted_scopes(token_claims, &provider.scope_claims);
            let missing: Vec<&str> = requirement
                .scopes
                .iter()
                .filter(|scope| !granted.contains(scope))
                .map(String::as_str)
                .collect();
            let sources: Vec<String> = provider.scope_claims.iter().map(|c| c.display()).collect();
            let verdict = if missing.is_empty() {
                "pass".to_string()
            } else {
                format!("FAIL, missing {}", missing.join(" "))
            };
            self.out.line(format!(
                "{indent}scopes: required [{}], granted [{}] (from {}): {verdict}",
                requirement.scopes.join(" "),
                granted.join(" "),
                sources.join(", ")
            ));
        }
        if let Some(accepted) = &requirement.audiences {
            let given = token_claims
                .get("aud")
                .map_or("absent".to_string(), Value::to_string);
            let met = audience_accepted(token_claims.get("aud"), accepted);
            self.out.line(format!(
                "{indent}audiences: one of [{}], the token has {given}: {}",
                accepted.join(", "),
                if met { "pass" } else { "FAIL" }
            ));
        }
        if let Some(accepted) = &requirement.acr_values {
            let acr = token_claims.get("acr").and_then(Value::as_str);
            let met = acr.is_some_and(|acr| accepted.iter().any(|a| a == acr));
            self.out.line(format!(
                "{indent}acr: one of [{}], the token has {}: {}",
                accepted.join(", "),
                acr.map_or("none".to_string(), |a| format!("{a:?}")),
                if met { "pass" } else { "FAIL" }
            ));
        }
        if let Some(max_age) = requirement.max_auth_age_seconds {
            let now = (self.now_ms / 1000) as f64;
            let line = match token_claims.get("auth_time").and_then(Value::as_f64) {
                Some(auth_time) if now - auth_time <= max_age as f64 => format!(
                    "auth_time {} s ago, at most {max_age}: pass",
                    json_number(now - auth_time)
                ),
                Some(auth_time) => format!(
                    "auth_time {} s ago, at most {max_age}: FAIL",
                    json_number(now - auth_time)
                ),
                None => format!("auth_time absent, at most {max_age} s ago required: FAIL"),
            };
            self.out.line(format!("{indent}{line}"));
        }
        for condition in &requirement.claims {
            let alone = Requirement {
                claims: vec![condition.clone()],
                ..Requirement::default()
            };
            let holds = policy::check_requirement(
                &alone,
                index,
                token_claims,
                &provider.scope_claims,
                self.now_ms / 1000,
            )
            .is_ok();
            let value = condition
                .claim
                .lookup(token_claims)
                .map_or("absent".to_string(), Value::to_string);
            self.out.line(format!(
                "{indent}claim {} {}: the token has {value}: {}",
                condition.claim.display(),
                describe_test(&condition.test),
                if holds { "pass" } else { "FAIL" }
            ));
        }
    }
}

/// The filter's own decision for the request, and the answer it gives.
fn final_answer(config: &Compiled, keys: &Keys, request: &Request<'_>, now_ms: u64, out: &mut Out) {
    // No cache: every explanation verifies afresh.
    let mut cache = TokenCache::new(0);
    let decision = authorize::authorize(config, &keys.lookup, &mut cache, request, now_ms);
    out.line("");
    out.line("the filter's answer (authorize::authorize):");
    out.line(format!(
        "  looked at: {}",
        describe_trace(config, &decision.trace)
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
    if let (Some(reason), Some(rule)) = (
        decision.trace.ignored,
        decision.trace.rule.and_then(|i| config.rules.get(i)),
    ) {
        out.line(format!(
            "  invalidToken: \"ignore\": the token would be refused ({reason}); rule {} lets the request go on as anonymous",
            rule.name
        ));
    }
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
            let expired = authorize::wait_expired(config, &keys.lookup, provider, now_ms);
            outcome_lines(out, config, &expired.outcome, &answering);
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
fn describe_miss(
    rule: &Rule,
    miss: &Miss,
    facts: &RequestFacts<'_>,
    token: &mut dyn FnMut() -> Result<TokenClaims, String>,
) -> String {
    let Some(condition) = rule.matcher.conditions.get(miss.condition) else {
        return "does not match".to_string();
    };
    let field = &condition.field;
    match &miss.why {
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
            let claims = if condition.fact.needs_token() {
                token().ok().flatten()
            } else {
                None
            };
            let observed = policy::observe(&condition.fact, facts, claims.as_ref());
            let shown = match &observed {
                Observed::Text(values) => values.join(", "),
                Observed::Ip(ip) => ip.to_string(),
                Observed::Port(port) => port.to_string(),
                Observed::Absent(what) | Observed::Unknown(what) => (*what).to_string(),
            };
            let in_any = condition
                .any_of
                .as_ref()
                .is_none_or(|ps| ps.iter().any(|p| policy::pattern_matches(p, &observed)));
            if in_any {
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

/// The token's verified claims, as the filter would have them; `Err`: why it does not verify.
fn verified_claims(
    config: &Compiled,
    keys: &Keys,
    request: &Request<'_>,
    now_ms: u64,
) -> Result<TokenClaims, String> {
    // The filter itself, with no rule to choose: only the token is looked at.
    let probe = compile::compile(Config {
        rules: Vec::new(),
        unmatched: Unmatched::Anonymous,
        mode: Mode::Enforce,
        ..config.config.clone()
    })
    .map_err(|e| e.to_string())?;
    let decision = authorize::authorize(
        &probe,
        &keys.lookup,
        &mut TokenCache::new(0),
        request,
        now_ms,
    );
    match decision.outcome {
        Outcome::Allow(_) => Ok(decision.trace.claims),
        Outcome::Deny(denial) => Err(format!(
            "refused with {} ({})",
            denial.render("").status,
            denial.reason()
        )),
        Outcome::Wait { .. } => Err("its provider's keys are not at hand".to_string()),
        Outcome::Answer(_) => Ok(None),
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

fn list_keys(out: &mut Out, set: &KeySet) {
    for key in set.keys() {
        let alg = key
            .alg()
            .map_or("any fitting alg".to_string(), |a| format!("alg {a}"));
        out.line(format!(
            "   - kid {}: {}, {alg}",
            quoted_or_none(key.kid()),
            family_name(key.family())
        ));
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

enum NumericDate {
    Absent,
    NotANumber,
    /// Past year 9999: refused as malformed.
    OutOfRange,
    At(f64),
}

/// A time claim read as `claims::check` reads it.
fn numeric_date(token_claims: &Map<String, Value>, name: &'static str) -> NumericDate {
    match claims::numeric_date(token_claims, name) {
        Ok(None) => NumericDate::Absent,
        Ok(Some(at)) => NumericDate::At(at),
        Err(claims::ClaimError::DateOutOfRange(_)) => NumericDate::OutOfRange,
        Err(_) => NumericDate::NotANumber,
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

/// `aud` as `claims::check` reads it: a string or a list of strings.
fn audience_accepted(aud: Option<&Value>, accepted: &[String]) -> bool {
    match aud {
        Some(Value::String(a)) => accepted.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| accepted.iter().any(|x| x == a)),
        _ => false,
    }
}
