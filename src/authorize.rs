//! One request's decision, from headers to allow/deny, with no host calls: the filter
//! glue gathers the request, calls [`authorize`], and applies the [`Outcome`].

use crate::alg::Alg;
use crate::cache::{CachedToken, TokenCache};
use crate::claims;
use crate::compile::Compiled;
use crate::config::{Action, Config, Mode, Provider, Unmatched};
use crate::extract::{self, ExtractError, Found, Location, RequestParts};
use crate::host_verify::TrustedHost;
use crate::keys::KeySet;
use crate::path::{self, PathError};
use crate::policy::{self, Applies, RequestFacts, Unmet};
use crate::reason::Reason;
use crate::record::{self, KeySeen, KeysSeen, Recorder, SignatureRefused, Step};
use crate::response::Denial;
use crate::sender::dpop::Proof;
use crate::sender::replay::Admission;
use crate::sender::{self, Presented};
use crate::token::{self, TokenLimits};
use crate::verify::{self, VerifyError};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::rc::Rc;

/// The request as the glue read it: pseudo-headers split out, every other header as sent.
pub struct Request<'a> {
    pub method: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// Raw `:path`, query included.
    pub path: &'a str,
    pub authority: &'a str,
    /// Lower-case names; repeated headers are separate entries.
    pub headers: &'a [(&'a str, &'a str)],
    /// The connection, read only where a rule's `match` asks about it.
    pub peer: &'a dyn crate::peer::Peer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    Set(String, String),
    /// Another field of this name (a response's second `set-cookie`).
    Add(String, String),
}

/// A request that goes on upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Applied in order before the request goes on.
    pub edits: Vec<HeaderEdit>,
    /// `outputClaimToHeaders` headers not set because the claim held header-unsafe characters.
    pub skipped_headers: Vec<String>,
    /// `mode: report`: the refusal enforcement would have answered.
    pub would_deny: Option<Denial>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow(Allowed),
    Deny(Denial),
    /// Hold the request until the provider's keys change or the wait times out; `refetch`:
    /// the token's kid is unknown and a key fetch should be asked for.
    Wait {
        provider: usize,
        refetch: bool,
    },
    /// The filter answers itself: the protected resource metadata (RFC 9728).
    Answer(crate::response::Response),
}

/// What a decision looked at: for metrics, the audit log and `explain`.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Index of the rule that applied; `None`: `unmatched` (or decided before matching).
    pub rule: Option<usize>,
    /// Where the token was found; noted only when recording (for `explain`).
    pub location: Option<Location>,
    /// The provider the token's `iss` selected.
    pub provider: Option<usize>,
    pub alg: Option<Alg>,
    pub kid: Option<Rc<str>>,
    /// The token's claims once parsed: verified only when the outcome allows.
    pub claims: Option<Rc<Map<String, Value>>>,
    /// The verified-token cache answered.
    pub cached: bool,
    /// `invalidToken: "ignore"`: the request went on as anonymous; why its token was not
    /// accepted.
    pub ignored: Option<Reason>,
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub outcome: Outcome,
    pub trace: Trace,
}

/// The same keys, but a held request that already had its refetch gets no other: it is
/// decided with the keys as they now are.
pub struct WithoutRefetch<'k>(pub &'k dyn KeyLookup);

impl KeyLookup for WithoutRefetch<'_> {
    fn keys(&self, provider: usize, now_ms: u64) -> KeyState<'_> {
        self.0.keys(provider, now_ms)
    }
    fn refetch_possible(&self, _provider: usize, _now_ms: u64) -> bool {
        false
    }
    fn key_version(&self, provider: usize) -> u64 {
        self.0.key_version(provider)
    }
    fn refresh_failing(&self, provider: usize, now_ms: u64) -> Option<u64> {
        self.0.refresh_failing(provider, now_ms)
    }
    fn revocations(&self, provider: usize) -> Option<&crate::config::Revoked> {
        self.0.revocations(provider)
    }
    fn signature_host(&self) -> Option<TrustedHost<'_>> {
        self.0.signature_host()
    }
    fn admit_proof(&self, proof: &Proof, now_s: u64) -> Admission {
        self.0.admit_proof(proof, now_s)
    }
}

/// Why a decision stopped short of allowing.
enum Halt {
    Deny(Denial),
    Wait { provider: usize, refetch: bool },
}

impl From<Denial> for Halt {
    fn from(denial: Denial) -> Self {
        Halt::Deny(denial)
    }
}

pub enum KeyState<'a> {
    Ready(&'a KeySet),
    /// No keys yet, but a fetch is under way or due soon: the request may wait for it.
    Loading,
    Unavailable {
        retry_after_seconds: u64,
    },
}

/// Where verified keys come from (the key store in the filter, fixed sets in tests).
pub trait KeyLookup {
    fn keys(&self, provider: usize, now_ms: u64) -> KeyState<'_>;
    /// The token's kid is not among the keys: may a fetch still bring it?
    fn refetch_possible(&self, provider: usize, now_ms: u64) -> bool;
    /// Changes whenever the provider's key set does (for the token cache).
    fn key_version(&self, provider: usize) -> u64;
    /// The provider's last key fetch failed: a kid its keys lack may be a key the issuer
    /// published since, so it is not known to be foreign. `Some(retry_after_seconds)`.
    fn refresh_failing(&self, _provider: usize, _now_ms: u64) -> Option<u64> {
        None
    }
    /// The provider's fetched revocation list, if it has one.
    fn revocations(&self, _provider: usize) -> Option<&crate::config::Revoked> {
        None
    }
    /// The host that verifies RS*/ES* signatures, if it passed its known-answer test; `None`:
    /// ring verifies everything.
    fn signature_host(&self) -> Option<TrustedHost<'_>> {
        None
    }
    /// Records a DPoP proof for the whole sidecar: has it been seen before? Without a
    /// memory, no proof can be promised single use: refused.
    fn admit_proof(&self, _proof: &Proof, _now_s: u64) -> Admission {
        Admission::Unavailable
    }
}

/// A verified token: which provider accepted it, and its claims.
struct Verified<'r> {
    provider: usize,
    claims: Rc<Map<String, Value>>,
    found: Found<'r>,
    /// The payload segment exactly as signed, kept only when a provider forwards it.
    payload_segment: Option<Rc<str>>,
}

pub fn authorize(
    config: &Compiled,
    keys: &dyn KeyLookup,
    cache: &mut TokenCache,
    request: &Request<'_>,
    now_ms: u64,
) -> Decision {
    authorize_recorded(config, keys, cache, request, now_ms, Recorder::OFF)
}

/// [`authorize`], noting each step it takes with `rec` (for `explain`).
pub fn authorize_recorded(
    config: &Compiled,
    keys: &dyn KeyLookup,
    cache: &mut TokenCache,
    request: &Request<'_>,
    now_ms: u64,
    rec: Recorder<'_>,
) -> Decision {
    if let Some(answer) =
        crate::resource::metadata_answer(config, request.method, request.path, request.authority)
    {
        return Decision {
            outcome: Outcome::Answer(answer),
            trace: Trace::default(),
        };
    }
    let mut edits = identity_removals(config);
    let mut trace = Trace::default();
    let outcome = match decide(config, keys, cache, request, now_ms, &mut trace, rec) {
        Ok(mut allowed) => {
            // Usually no identity header is configured: the allowed edits stand as they are.
            if !edits.is_empty() {
                edits.append(&mut allowed.edits);
                allowed.edits = edits;
            }
            Outcome::Allow(allowed)
        }
        Err(Halt::Wait { provider, refetch }) => Outcome::Wait { provider, refetch },
        Err(Halt::Deny(denial)) => refuse(config, &trace, edits, denial),
    };
    Decision { outcome, trace }
}

/// A held request whose wait ran out: the keys could not be had in time.
pub fn wait_expired(
    config: &Config,
    keys: &dyn KeyLookup,
    provider: usize,
    now_ms: u64,
) -> Decision {
    let edits = identity_removals(config);
    let retry_after_seconds = match keys.keys(provider, now_ms) {
        KeyState::Unavailable {
            retry_after_seconds,
        } => retry_after_seconds,
        _ => 1,
    };
    let trace = Trace {
        provider: Some(provider),
        ..Trace::default()
    };
    let denial = Denial::KeysUnavailable {
        retry_after_seconds,
    };
    let outcome = refuse(config, &trace, edits, denial);
    Decision { outcome, trace }
}

/// A held request whose provider a new configuration removed is refused as "issuer not
/// trusted"; its reason says why, so an operator can tell a rollout from a forged issuer.
pub fn provider_removed(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Deny(Denial::InvalidToken {
            description,
            reason: Reason::Issuer,
        }) => Outcome::Deny(Denial::InvalidToken {
            description,
            reason: Reason::ProviderRemoved,
        }),
        other => other,
    }
}

/// Whether this decision is only reported: the deciding rule's `mode`, else the top level's.
fn reporting(config: &Config, trace: &Trace) -> bool {
    let rule_mode = trace
        .rule
        .and_then(|i| config.rules.get(i))
        .and_then(|rule| rule.mode);
    rule_mode.unwrap_or(config.mode) == Mode::Report
}

/// The refusal, unless the top-level or the deciding rule's `mode` is `report`.
fn refuse(
    config: &Config,
    trace: &Trace,
    identity_edits: Vec<HeaderEdit>,
    denial: Denial,
) -> Outcome {
    if reporting(config, trace) {
        // Report mode lets everything through untouched but for the identity headers: the
        // token stays, since the application may still rely on it during the rollout.
        Outcome::Allow(Allowed {
            edits: identity_edits,
            skipped_headers: Vec::new(),
            would_deny: Some(denial),
        })
    } else {
        Outcome::Deny(denial)
    }
}

fn decide(
    config: &Compiled,
    keys: &dyn KeyLookup,
    cache: &mut TokenCache,
    request: &Request<'_>,
    now_ms: u64,
    trace: &mut Trace,
    rec: Recorder<'_>,
) -> Result<Allowed, Halt> {
    let normalized = path::normalize(request.path);
    rec.note(|| Step::Path(normalized.clone().map(Cow::into_owned)));
    let normalized = match normalized {
        Ok(p) => p,
        Err(PathError::EncodedSlash) => {
            return Err(Denial::InvalidRequest(
                "request path contains an encoded slash or backslash",
            )
            .into())
        }
        Err(PathError::Malformed) => {
            return Err(Denial::InvalidRequest("request path is malformed").into())
        }
    };
    let facts = RequestFacts {
        method: request.method,
        path: &normalized,
        host: request.authority,
        headers: request.headers,
        peer: request.peer,
    };
    // The token is found and verified at most once: by the first rule whose `match` names
    // token facts, or after selection when the rule's action needs it.
    let mut token: Option<Option<Verified>> = None;
    let selection = {
        let mut claims = || {
            let verified =
                token_once(&mut token, config, keys, cache, request, now_ms, trace, rec)?;
            Ok(verified.map(|v| Rc::clone(&v.claims)))
        };
        let mut tried = |rule| rec.note(|| Step::Rule(rule));
        let tried: Option<&mut dyn FnMut(policy::RuleTried)> =
            if rec.on() { Some(&mut tried) } else { None };
        policy::select_seen::<Halt>(config, &config.rule_index, &facts, &mut claims, tried)?
    };
    if let Applies::Unmatched(unmatched) = selection.applies {
        rec.note(|| Step::Unmatched {
            unmatched,
            token_would_help: selection.token_would_help,
        });
    }
    let action = match selection.applies {
        Applies::Rule(rule) => {
            trace.rule = config.rules.iter().position(|r| std::ptr::eq(r, rule));
            Need::Rule(&rule.action)
        }
        // A rule would have let the request in with a token: ask for one.
        Applies::Unmatched(Unmatched::Deny) if selection.token_would_help => {
            return Err(Denial::MissingToken.into())
        }
        Applies::Unmatched(Unmatched::Deny) => return Err(Denial::Forbidden.into()),
        Applies::Unmatched(Unmatched::Anonymous) => Need::Anonymous,
        Applies::Unmatched(Unmatched::Authenticated) => Need::AnyValidToken,
    };
    if let Need::Rule(Action::Deny) = action {
        return Err(Denial::Forbidden.into());
    }
    // A CORS preflight carries no credentials (Fetch standard): it is spared the token, not
    // the path check or a deny rule.
    if config.bypass_cors_preflight && is_cors_preflight(request) {
        rec.note(|| Step::Preflight);
        return Ok(Allowed::default());
    }

    let ignores_invalid = matches!(action, Need::Rule(Action::AllowAnonymous))
        && trace
            .rule
            .and_then(|i| config.rules.get(i))
            .is_some_and(|rule| rule.ignore_invalid_token);
    let verified = match token_once(&mut token, config, keys, cache, request, now_ms, trace, rec) {
        // A public route that opted in treats a token it cannot accept as no token (an API
        // key or an opaque token meant for someone else); never one it must wait for.
        Err(Halt::Deny(denial @ (Denial::InvalidToken { .. } | Denial::InvalidProof { .. })))
            if ignores_invalid =>
        {
            trace.ignored = Some(denial.reason());
            rec.note(|| Step::Ignored(denial.reason()));
            trace.claims = None;
            return Ok(Allowed::default());
        }
        other => other?,
    };
    let Some(verified) = verified else {
        let needed = !matches!(action, Need::Anonymous | Need::Rule(Action::AllowAnonymous));
        rec.note(|| Step::NoToken { needed });
        return if needed {
            Err(Denial::MissingToken.into())
        } else {
            Ok(Allowed::default())
        };
    };
    let Some(provider) = config.providers.get(verified.provider) else {
        return Err(invalid("token issuer is not trusted", Reason::Issuer).into());
    };

    let mut alternatives = Vec::new();
    let requirement_check = match action {
        Need::Rule(Action::Requires(req)) => {
            let parts = rec.on().then(|| {
                alternatives.push(Vec::new());
                alternatives.last_mut()
            });
            policy::check_requirement_seen(
                req,
                verified.provider,
                &verified.claims,
                &provider.scope_claims,
                now_ms / 1000,
                parts.flatten(),
            )
        }
        Need::Rule(Action::RequiresAny(reqs)) => policy::check_any_seen(
            reqs,
            verified.provider,
            &verified.claims,
            &provider.scope_claims,
            now_ms / 1000,
            rec.on().then_some(&mut alternatives),
        ),
        _ => Ok(()),
    };
    rec.note(|| Step::Requirement {
        alternatives,
        result: requirement_check.clone(),
    });
    match requirement_check {
        Ok(()) => {}
        Err(Unmet::WrongProvider) => {
            return Err(invalid(
                "token issuer is not accepted for this resource",
                Reason::Issuer,
            )
            .into())
        }
        Err(Unmet::MissingScopes(scopes)) => return Err(Denial::MissingScopes(scopes).into()),
        Err(Unmet::ClaimFailed(_)) => return Err(Denial::ClaimFailed.into()),
        Err(Unmet::Audience) => {
            return Err(invalid(
                "token audience is not accepted for this resource",
                Reason::Audience,
            )
            .into())
        }
        Err(Unmet::Tenant) => {
            return Err(invalid(
                "token tenant is not accepted for this resource",
                Reason::Tenant,
            )
            .into())
        }
        Err(Unmet::Delegation(description)) => {
            return Err(Denial::DelegationRefused(description).into())
        }
        Err(Unmet::StepUp {
            acr_values,
            max_age,
        }) => {
            return Err(Denial::StepUp {
                acr_values,
                max_age,
            }
            .into())
        }
    }

    // Report mode changes nothing upstream relies on: the token stays, valid or not.
    let keep_token = provider.forward_original_token || reporting(config, trace);
    Ok(identity_edits(provider, verified, request, keep_token))
}

fn names_audience(claims: &Map<String, Value>, resource: &str) -> bool {
    match claims.get("aud") {
        Some(Value::String(aud)) => aud == resource,
        Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(resource)),
        _ => false,
    }
}

/// The request's token, found and verified on first use and remembered; `None`: no token.
/// A token that is present is always verified, on anonymous routes too.
#[allow(clippy::too_many_arguments)]
fn token_once<'t, 'r>(
    memo: &'t mut Option<Option<Verified<'r>>>,
    config: &Compiled,
    keys: &dyn KeyLookup,
    cache: &mut TokenCache,
    request: &Request<'r>,
    now_ms: u64,
    trace: &mut Trace,
    rec: Recorder<'_>,
) -> Result<Option<&'t Verified<'r>>, Halt> {
    if memo.is_none() {
        *memo = Some(find_and_verify(
            config, keys, cache, request, now_ms, trace, rec,
        )?);
    }
    Ok(memo.as_ref().and_then(Option::as_ref))
}

fn find_and_verify<'r>(
    config: &Compiled,
    keys: &dyn KeyLookup,
    cache: &mut TokenCache,
    request: &Request<'r>,
    now_ms: u64,
    trace: &mut Trace,
    rec: Recorder<'_>,
) -> Result<Option<Verified<'r>>, Halt> {
    let parts = RequestParts {
        headers: request.headers,
        path: request.path,
    };
    let found = extract::find_token(&config.providers, &parts);
    rec.note(|| {
        Step::Location(match &found {
            Ok(found) => Ok(found.as_ref().map(|f| f.location.clone())),
            Err(ExtractError::MultipleTokens) => Err(()),
        })
    });
    let found = match found {
        Ok(found) => found,
        Err(ExtractError::MultipleTokens) => {
            return Err(Denial::InvalidRequest("more than one token in the request").into())
        }
    };
    // Only `explain` reads it: a filter's request is spared the copy.
    if rec.on() {
        trace.location = found.as_ref().map(|f| f.location.clone());
    }
    let Some(found) = found else {
        return Ok(None);
    };
    let verified = verify_token(config, keys, cache, found, now_ms, trace, rec)?;
    if keys
        .revocations(verified.provider)
        .is_some_and(|list| claims::is_revoked(&verified.claims, list))
    {
        rec.note(|| Step::Revoked);
        return Err(invalid("token revoked", Reason::Revoked).into());
    }
    let Some(provider) = config.providers.get(verified.provider) else {
        return Err(invalid("token issuer is not trusted", Reason::Issuer).into());
    };
    // RFC 8707: a protected resource accepts tokens issued for itself, unless the provider
    // names its own audiences.
    if let Some(resource) = config.resource_for(request.authority) {
        if provider.audiences.is_empty() {
            let held = names_audience(&verified.claims, &resource.resource);
            rec.note(|| Step::ResourceAudience {
                resource: resource.resource.clone(),
                held,
            });
            if !held {
                return Err(
                    invalid("token audience is not this resource", Reason::Audience).into(),
                );
            }
        }
    }
    let presented = if verified.found.location.is_dpop() {
        Presented::Dpop
    } else {
        Presented::Bearer
    };

    let mut proof = (rec.on() && presented == Presented::Dpop).then(sender::ProofSeen::default);
    let bound = sender::check_seen(
        provider,
        &verified.claims,
        &verified.found.token,
        presented,
        request,
        now_ms,
        &TokenLimits::from(&config.limits),
        keys.signature_host(),
        &mut |proof| keys.admit_proof(proof, now_ms / 1000),
        proof.as_mut(),
    );
    rec.note(|| Step::Sender {
        proof,
        result: bound.clone(),
    });
    bound?;
    Ok(Some(verified))
}

enum Need<'c> {
    AnyValidToken,
    Anonymous,
    Rule(&'c Action),
}

fn wrong_location() -> Denial {
    invalid(
        "token was sent in a location its issuer is not configured for",
        Reason::Malformed,
    )
}

fn invalid(description: &'static str, reason: Reason) -> Denial {
    Denial::InvalidToken {
        description,
        reason,
    }
}

fn is_cors_preflight(request: &Request<'_>) -> bool {
    request.method == "OPTIONS"
        && request.headers.iter().any(|(n, _)| *n == "origin")
        && request
            .headers
            .iter()
            .any(|(n, _)| *n == "access-control-request-method")
}

/// Identity headers are never taken from the client, whatever the decision or mode.
fn identity_removals(config: &Config) -> Vec<HeaderEdit> {
    config
        .providers
        .iter()
        .flat_map(|p| {
            p.output_payload_to_header
                .iter()
                .chain(p.output_claim_to_headers.iter().map(|c| &c.header))
        })
        .map(|header| HeaderEdit::Remove(header.clone()))
        .collect()
}

fn verify_token<'r>(
    config: &Config,
    keys: &dyn KeyLookup,
    cache: &mut TokenCache,
    found: Found<'r>,
    now_ms: u64,
    trace: &mut Trace,
    rec: Recorder<'_>,
) -> Result<Verified<'r>, Halt> {
    let digest = cache.digest(&found.token);
    if let Some(hit) = cache.get(digest).cloned() {
        let outcome = cache_hit(config, keys, &hit, &found, now_ms, rec);
        if outcome.is_some() {
            rec.note(|| Step::Cached {
                provider: hit.provider,
            });
            trace.cached = true;
            trace.provider = Some(hit.provider);
            trace.alg = Some(hit.alg);
            trace.kid.clone_from(&hit.kid);
            trace.claims = Some(Rc::clone(&hit.claims));
        }
        if let Some(Ok(())) = outcome {
            return Ok(Verified {
                provider: hit.provider,
                claims: hit.claims,
                found,
                payload_segment: hit.payload_segment,
            });
        }
        // Stale or no longer valid: forget it, and verify afresh or refuse.
        cache.remove(digest);
        if let Some(Err(halt)) = outcome {
            return Err(halt);
        }
    }
    let limits = TokenLimits::from(&config.limits);
    let jws = token::parse_remembering(&found.token, &limits, cache.header_memo());
    rec.note(|| {
        Step::Parsed(match &jws {
            Ok(jws) => Ok(record::Parsed {
                alg: jws.header.alg,
                kid: jws.header.kid.as_deref().map(str::to_string),
                typ: jws.header.typ.as_deref().map(str::to_string),
                claims: Rc::new(jws.claims.clone()),
            }),
            Err(e) => Err(*e),
        })
    });
    let jws = jws.map_err(|e| invalid(e.describe(), e.reason()))?;
    let claims = Rc::new(jws.claims);
    let kid: Option<Rc<str>> = jws.header.kid.clone();
    trace.alg = Some(jws.header.alg);
    trace.kid.clone_from(&kid);
    trace.claims = Some(Rc::clone(&claims));
    // The issuer selects the provider before the signature is checked; nothing from the
    // payload is trusted until the provider's keys have verified it.
    let issuer = claims::issuer(&claims);
    let selected = issuer.and_then(|issuer| config.provider_for(issuer));
    rec.note(|| {
        let provider = selected.map(|(_, provider)| provider);
        Step::Provider(record::ProviderSeen {
            iss: issuer.map(str::to_string),
            selected: selected.map(|(index, _)| index),
            tenant: provider.zip(issuer).and_then(|(provider, issuer)| {
                let tenant = provider.tenant_of(issuer)?;
                let admitted = provider.tenancy.as_ref()?.admits(tenant);
                Some((tenant.to_string(), admitted))
            }),
            location_listed: provider.is_some_and(|p| found.location.is_listed_by(p)),
        })
    });
    let issuer = issuer.ok_or(invalid("token has no issuer", Reason::Issuer))?;
    let (index, provider) =
        selected.ok_or(invalid("token issuer is not trusted", Reason::Issuer))?;
    trace.provider = Some(index);
    if let (Some(tenancy), Some(tenant)) = (&provider.tenancy, provider.tenant_of(issuer)) {
        if !tenancy.admits(tenant) {
            return Err(invalid("token tenant is not trusted", Reason::Tenant).into());
        }
    }
    if !found.location.is_listed_by(provider) {
        return Err(wrong_location().into());
    }
    let key_state = keys.keys(index, now_ms);
    rec.note(|| Step::Keys {
        provider: index,
        keys: match &key_state {
            KeyState::Ready(set) => KeysSeen::Ready {
                keys: set
                    .keys()
                    .iter()
                    .map(|key| KeySeen {
                        kid: key.kid().map(str::to_string),
                        family: key.family(),
                        alg: key.alg(),
                    })
                    .collect(),
                skipped: set.skipped(),
            },
            KeyState::Loading => KeysSeen::Loading,
            KeyState::Unavailable {
                retry_after_seconds,
            } => KeysSeen::Unavailable {
                retry_after_seconds: *retry_after_seconds,
            },
        },
    });
    let key_set = match key_state {
        KeyState::Ready(set) => set,
        KeyState::Loading => {
            return Err(Halt::Wait {
                provider: index,
                refetch: false,
            })
        }
        KeyState::Unavailable {
            retry_after_seconds,
        } => {
            return Err(Denial::KeysUnavailable {
                retry_after_seconds,
            }
            .into())
        }
    };
    let verified = verify::verify_with(
        keys.signature_host(),
        jws.header.alg,
        kid.as_deref(),
        jws.signing_input,
        &jws.signature,
        key_set,
        provider.algorithms,
    );
    match verified {
        Ok(key) => rec.note(|| {
            Step::Signature(Ok(KeySeen {
                kid: key.kid().map(str::to_string),
                family: key.family(),
                alg: key.alg(),
            }))
        }),
        // Rotation: a kid the keys lack may be a key the issuer just published.
        Err(VerifyError::UnknownKey) if keys.refetch_possible(index, now_ms) => {
            rec.note(|| {
                Step::Signature(Err(SignatureRefused {
                    error: VerifyError::UnknownKey,
                    refetch: true,
                    refresh_failing: false,
                }))
            });
            return Err(Halt::Wait {
                provider: index,
                refetch: true,
            });
        }
        Err(e) => {
            // The keys could not be refreshed: the kid may be the issuer's newest key, and a
            // 401 would tell a valid client its token is bad. Refused, but as retryable.
            let failing = matches!(e, VerifyError::UnknownKey)
                .then(|| keys.refresh_failing(index, now_ms))
                .flatten();
            rec.note(|| {
                Step::Signature(Err(SignatureRefused {
                    error: e,
                    refetch: false,
                    refresh_failing: failing.is_some(),
                }))
            });
            if let Some(retry_after_seconds) = failing {
                return Err(Denial::KeysUnavailable {
                    retry_after_seconds,
                }
                .into());
            }
            return Err(invalid(e.describe(), verify_reason(&e)).into());
        }
    }
    let times = checked_claims(&claims, provider, now_ms, rec)
        .map_err(|e| invalid(e.describe(), e.reason()))?;
    let payload_segment: Option<Rc<str>> =
        provider.output_payload_to_header.as_ref().and_then(|_| {
            let signing_input = std::str::from_utf8(jws.signing_input).ok()?;
            signing_input.split_once('.').map(|(_, p)| Rc::from(p))
        });
    cache.insert(
        digest,
        CachedToken {
            provider: index,
            key_version: keys.key_version(index),
            alg: jws.header.alg,
            kid,
            claims: Rc::clone(&claims),
            times,
            payload_segment: payload_segment.clone(),
        },
    );
    Ok(Verified {
        provider: index,
        claims,
        found,
        payload_segment,
    })
}

/// A remembered token still stands only if its provider's keys are the ones that verified
/// it; its time claims are checked anew. `None`: the entry is stale, verify afresh.
fn cache_hit(
    config: &Config,
    keys: &dyn KeyLookup,
    hit: &CachedToken,
    found: &Found,
    now_ms: u64,
    rec: Recorder<'_>,
) -> Option<Result<(), Halt>> {
    let provider = config.providers.get(hit.provider)?;
    let keys_unchanged = matches!(keys.keys(hit.provider, now_ms), KeyState::Ready(_))
        && keys.key_version(hit.provider) == hit.key_version;
    if !keys_unchanged {
        return None;
    }
    if !found.location.is_listed_by(provider) {
        return Some(Err(wrong_location().into()));
    }
    // The cache is the configuration's (a new one starts empty): only the checks that
    // depend on the clock can decide otherwise than when the token was admitted.
    let checked = if rec.on() {
        checked_claims(&hit.claims, provider, now_ms, rec).map(|_| ())
    } else {
        claims::check_times(&hit.times, provider, now_ms / 1000)
    };
    Some(checked.map_err(|e| invalid(e.describe(), e.reason()).into()))
}

/// The registered claims' checks, noted check by check when recording.
fn checked_claims(
    claims: &Map<String, Value>,
    provider: &Provider,
    now_ms: u64,
    rec: Recorder<'_>,
) -> Result<claims::Times, claims::ClaimError> {
    if !rec.on() {
        return claims::check_seen(claims, provider, now_ms / 1000, None);
    }
    let mut seen = Vec::new();
    let result = claims::check_seen(claims, provider, now_ms / 1000, Some(&mut seen));
    rec.note(|| Step::Claims {
        seen,
        result: result.map(|_| ()),
    });
    result
}

fn verify_reason(error: &VerifyError) -> Reason {
    match error {
        VerifyError::AlgorithmNotAllowed | VerifyError::KeyAlgorithmMismatch => Reason::Algorithm,
        VerifyError::UnknownKey | VerifyError::NoSuitableKey => Reason::UnknownKey,
        VerifyError::BadSignature => Reason::Signature,
    }
}

/// What upstream gets from a verified token: the token itself removed (unless forwarded) and
/// the configured claim and payload headers.
fn identity_edits(
    provider: &Provider,
    verified: &Verified,
    request: &Request<'_>,
    keep_token: bool,
) -> Allowed {
    let mut allowed = Allowed::default();
    let edits = &mut allowed.edits;
    if !keep_token {
        // The proof goes with the token it was made for.
        if verified.found.location.is_dpop() {
            edits.push(HeaderEdit::Remove("dpop".to_string()));
        }
        match &verified.found.location {
            Location::Header { name, .. } => edits.push(HeaderEdit::Remove(name.clone())),
            Location::Param(name) => edits.push(HeaderEdit::Set(
                ":path".to_string(),
                extract::path_without_param(request.path, name),
            )),
            Location::Cookie(name) => {
                let cookies: Vec<&str> = request
                    .headers
                    .iter()
                    .filter(|(n, _)| *n == "cookie")
                    .map(|(_, v)| *v)
                    .collect();
                edits.push(HeaderEdit::Remove("cookie".to_string()));
                let kept: Vec<String> = cookies
                    .iter()
                    .filter_map(|c| extract::cookie_header_without(c, name))
                    .collect();
                if !kept.is_empty() {
                    edits.push(HeaderEdit::Set("cookie".to_string(), kept.join("; ")));
                }
            }
        }
    }
    for output in &provider.output_claim_to_headers {
        // A null claim is absent, not unsafe: it must not be logged as an injection attempt.
        match output
            .claim
            .lookup(&verified.claims)
            .filter(|claim| !claim.is_null())
            .map(header_value)
        {
            Some(Some(value)) => edits.push(HeaderEdit::Set(output.header.clone(), value)),
            Some(None) => allowed.skipped_headers.push(output.header.clone()),
            None => {}
        }
    }
    if let (Some(header), Some(payload)) = (
        &provider.output_payload_to_header,
        &verified.payload_segment,
    ) {
        edits.push(HeaderEdit::Set(header.clone(), payload.to_string()));
    }
    allowed
}

/// A claim as a header value: strings as they are, lists of strings joined with `,`, numbers
/// and bools as JSON text, objects as compact JSON. Anything with control characters is
/// never emitted (header injection).
pub fn header_value(claim: &Value) -> Option<String> {
    let text = match claim {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    let safe = text
        .chars()
        .all(|c| c == '\t' || (c >= ' ' && c != '\u{7f}'));
    safe.then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alg::Alg;
    use crate::keys::testing::{b64, TestKey};
    use crate::keys::{parse_jwks, JwksLimits};
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;
    const ISSUER: &str = "https://idp.example.com";
    const OTHER_ISSUER: &str = "https://other.example.com";

    struct Fixture {
        key: TestKey,
        config: Compiled,
        keys: FixedKeys,
        cache: std::cell::RefCell<TokenCache>,
    }

    /// Keys for provider 0; provider 1 cannot have any; provider 2's are loading.
    /// `refetch`: whether an unknown kid may still be fetched.
    /// `refresh_failing`: the last key fetch failed, retry after that many seconds.
    struct FixedKeys(
        KeySet,
        bool,
        u64,
        crate::sender::replay::LocalReplay,
        Option<u64>,
    );

    impl KeyLookup for FixedKeys {
        fn keys(&self, provider: usize, _now_ms: u64) -> KeyState<'_> {
            match provider {
                0 => KeyState::Ready(&self.0),
                2 => KeyState::Loading,
                _ => KeyState::Unavailable {
                    retry_after_seconds: 3,
                },
            }
        }

        fn refetch_possible(&self, _provider: usize, _now_ms: u64) -> bool {
            self.1
        }

        fn key_version(&self, _provider: usize) -> u64 {
            self.2
        }

        fn refresh_failing(&self, _provider: usize, _now_ms: u64) -> Option<u64> {
            self.4
        }

        fn admit_proof(&self, proof: &Proof, now_s: u64) -> Admission {
            self.3.admit(proof.replay_id, proof.expires_s, now_s)
        }
    }

    fn fixture(config: serde_json::Value) -> Fixture {
        let key = TestKey::ed25519();
        let jwks = json!({"keys": [key.jwk(Some("k1"))]}).to_string();
        let limits = JwksLimits {
            max_bytes: 64 * 1024,
            max_keys: 8,
        };
        Fixture {
            keys: FixedKeys(
                parse_jwks(jwks.as_bytes(), &limits, false).unwrap(),
                false,
                1,
                Default::default(),
                None,
            ),
            cache: std::cell::RefCell::new(TokenCache::new(0)),
            config: crate::compile::configure(&config.to_string()).unwrap(),
            key,
        }
    }

    fn provider(extra: serde_json::Value) -> serde_json::Value {
        let mut p = json!({"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks",
                           "audiences": ["orders"],
                           "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}]});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    }

    fn simple() -> Fixture {
        fixture(json!({"providers": [provider(json!({})),
            {"issuer": OTHER_ISSUER, "jwksUri": "https://other.example.com/jwks"}]}))
    }

    impl Fixture {
        fn token(&self, claims: serde_json::Value) -> String {
            let header = b64(json!({"alg": "EdDSA", "kid": "k1"}).to_string().as_bytes());
            let payload = b64(claims.to_string().as_bytes());
            let input = format!("{header}.{payload}");
            let signature = b64(&self.key.sign(Alg::EdDSA, input.as_bytes()));
            format!("{input}.{signature}")
        }

        fn good_token(&self) -> String {
            self.token(json!({"iss": ISSUER, "aud": "orders", "sub": "alice",
                              "exp": NOW + 300, "iat": NOW, "scope": "orders:read"}))
        }

        fn run(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Outcome {
            let request = Request {
                method,
                scheme: "https",
                path,
                authority: "orders.example.com:8443",
                headers,
                peer: &crate::peer::NoPeer,
            };
            self.run_at(&request, NOW * 1000)
        }

        fn run_at(&self, request: &Request<'_>, now_ms: u64) -> Outcome {
            let mut cache = self.cache.borrow_mut();
            authorize(&self.config, &self.keys, &mut cache, request, now_ms).outcome
        }

        /// The decision and its audit line.
        fn audited(&self, path: &str, headers: &[(&str, &str)]) -> (Decision, String) {
            let request = Request {
                method: "GET",
                scheme: "https",
                path,
                authority: "orders.example.com",
                headers,
                peer: &crate::peer::NoPeer,
            };
            let decision = authorize(
                &self.config,
                &self.keys,
                &mut self.cache.borrow_mut(),
                &request,
                NOW * 1000,
            );
            let line = crate::audit::audit_line(&self.config, &decision, &request, None);
            (decision, line)
        }

        fn with_token(&self, path: &str, token: &str) -> Outcome {
            self.run(
                "GET",
                path,
                &[("authorization", &format!("Bearer {token}"))],
            )
        }
    }

    fn denial(outcome: Outcome) -> Denial {
        match outcome {
            Outcome::Deny(d) => d,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn allowed(outcome: Outcome) -> Allowed {
        match outcome {
            Outcome::Allow(a) => a,
            other => panic!("expected to pass, got {other:?}"),
        }
    }

    fn reason(outcome: Outcome) -> &'static str {
        denial(outcome).reason().name()
    }

    #[test]
    fn a_valid_token_passes_with_identity_headers_and_without_the_token() {
        let f = simple();
        let a = allowed(f.with_token("/orders", &f.good_token()));
        assert_eq!(
            a.edits,
            vec![
                HeaderEdit::Remove("x-sub".into()),
                HeaderEdit::Remove("authorization".into()),
                HeaderEdit::Set("x-sub".into(), "alice".into()),
            ]
        );
        assert_eq!(a.would_deny, None);
    }

    #[test]
    fn no_token_is_401_and_identity_headers_are_still_cleared_on_anonymous_routes() {
        let f = simple();
        assert_eq!(denial(f.run("GET", "/", &[])), Denial::MissingToken);
        let anon = fixture(json!({"providers": [provider(json!({}))], "unmatched": "anonymous"}));
        let a = allowed(anon.run("GET", "/", &[("x-sub", "forged")]));
        assert_eq!(a.edits, vec![HeaderEdit::Remove("x-sub".into())]);
    }

    #[test]
    fn a_public_rule_that_ignores_invalid_tokens_serves_them_as_anonymous() {
        let f = fixture(json!({"providers": [provider(json!({}))], "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": true,
             "invalidToken": "ignore"},
            {"name": "strict-public", "match": {"paths": ["/open/*"]}, "allowAnonymous": true}]}));
        let expired = f.token(json!({"iss": ISSUER, "aud": "orders", "sub": "alice",
                                     "exp": NOW - 300, "iat": NOW - 900}));
        let good = f.good_token();
        let (input, signature) = good.rsplit_once('.').unwrap();
        let flipped = if signature.starts_with('A') { 'B' } else { 'A' };
        let forged = format!("{input}.{flipped}{}", &signature[1..]);
        for (token, why) in [
            ("an-api-key", "malformed"),
            (expired.as_str(), "expired"),
            (forged.as_str(), "signature"),
        ] {
            let bearer = format!("Bearer {token}");
            let (decision, line) = f.audited(
                "/public/page",
                &[("authorization", &bearer), ("x-sub", "forged")],
            );
            assert_eq!(
                decision.trace.ignored.map(|r| r.name()),
                Some(why),
                "{token}"
            );
            assert_eq!(
                crate::audit::Verdict::of(&decision),
                crate::audit::Verdict::Anonymous
            );
            assert!(line.contains(r#""reason":"token_ignored""#), "{line}");
            assert!(line.contains(&format!(r#""ignored":"{why}""#)), "{line}");
            let Outcome::Allow(allowed) = decision.outcome else {
                panic!("{token}: refused");
            };
            assert_eq!(
                allowed.edits,
                [HeaderEdit::Remove("x-sub".into())],
                "no identity"
            );
            // The default stays strict: a token that does not verify is refused.
            assert_eq!(reason(f.with_token("/open/page", token)), why);
        }
        // A valid token still brings its identity.
        let valid = allowed(f.with_token("/public/page", &f.good_token()));
        assert!(valid
            .edits
            .contains(&HeaderEdit::Set("x-sub".into(), "alice".into())));
        // More than one token is not "no token".
        let two = f.run(
            "GET",
            "/public/page",
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        );
        assert_eq!(denial(two).reason().name(), "invalid_request");
    }

    #[test]
    fn a_multi_tenant_provider_takes_its_tenants_and_no_other_tenants_tokens() {
        const V2: &str = "https://login.microsoftonline.com/{tenant}/v2.0";
        let f = fixture(json!({"providers": [
            {"name": "entra", "issuerPattern": V2, "tenants": ["t1", "t2"],
             "jwksUri": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
             "audiences": ["api://orders"]},
            {"name": "other", "issuer": OTHER_ISSUER, "jwksUri": "https://other.example.com/jwks"}],
            "rules": [{"match": {"paths": ["/t2-only/*"]}, "requires": {"tenants": ["t2"]}}]}));
        // The Entra v1 form (fixture keys are the first provider's).
        let v1 = fixture(json!({"providers": [
            {"name": "entra-v1", "issuerPattern": "https://sts.windows.net/{tenant}/", "tenants": ["t1"],
             "jwksUri": "https://login.microsoftonline.com/common/discovery/keys"}]}));
        let token = |iss: &str, tid: Option<&str>| {
            let mut claims = json!({"iss": iss, "aud": "api://orders", "sub": "u",
                                    "exp": NOW + 300, "iat": NOW});
            if let Some(tid) = tid {
                claims["tid"] = json!(tid);
            }
            f.token(claims)
        };
        let v2 = |tenant: &str| format!("https://login.microsoftonline.com/{tenant}/v2.0");
        for tenant in ["t1", "t2"] {
            allowed(f.with_token("/x", &token(&v2(tenant), Some(tenant))));
        }
        let v1_token = |tenant: &str| {
            v1.token(
                json!({"iss": format!("https://sts.windows.net/{tenant}/"), "tid": tenant,
                            "sub": "u", "exp": NOW + 300, "iat": NOW}),
            )
        };
        allowed(v1.with_token("/x", &v1_token("t1")));
        assert_eq!(reason(v1.with_token("/x", &v1_token("t2"))), "tenant");
        // A foreign tenant, signed by the shared keys all the same.
        assert_eq!(
            reason(f.with_token("/x", &token(&v2("t3"), Some("t3")))),
            "tenant"
        );
        // A token of t3 that names t1's issuer, or names none.
        for tid in [Some("t3"), None] {
            let refused = denial(f.with_token("/x", &token(&v2("t1"), tid)));
            assert_eq!(
                refused,
                Denial::InvalidToken {
                    description: "token tenant (tid) does not match its issuer",
                    reason: crate::reason::Reason::Tenant
                }
            );
        }
        // A rule that takes one tenant.
        allowed(f.with_token("/t2-only/a", &token(&v2("t2"), Some("t2"))));
        assert_eq!(
            denial(f.with_token("/t2-only/a", &token(&v2("t1"), Some("t1")))),
            Denial::InvalidToken {
                description: "token tenant is not accepted for this resource",
                reason: crate::reason::Reason::Tenant
            }
        );
        // The audit line names the tenant.
        let bearer = format!("Bearer {}", token(&v2("t2"), Some("t2")));
        let (decision, line) = f.audited("/x", &[("authorization", bearer.as_str())]);
        assert!(line.contains(r#""tenant":"t2""#), "{line}");
        assert_eq!(
            crate::audit::request_metric(&f.config, &decision).as_deref(),
            Some("mesh_oauth.entra.allowed"),
            "metrics stay per provider"
        );
    }

    #[test]
    fn each_invalid_token_names_its_cause() {
        let f = simple();
        let good = f.good_token();
        // The first signature character carries six signature bits; the last one of an
        // Ed25519 signature only two, so changing it may break the base64 instead.
        let (input, signature) = good.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        let tampered = format!("{input}.{first}{}", &signature[1..]);
        assert_eq!(reason(f.with_token("/", &tampered)), "signature");
        assert_eq!(reason(f.with_token("/", "a.b")), "malformed");
        let expired = f.token(json!({"iss": ISSUER, "aud": "orders", "exp": NOW - 3600}));
        assert_eq!(reason(f.with_token("/", &expired)), "expired");
        let wrong_aud = f.token(json!({"iss": ISSUER, "aud": "billing", "exp": NOW + 60}));
        assert_eq!(reason(f.with_token("/", &wrong_aud)), "audience");
        let unknown_iss = f.token(json!({"iss": "https://evil.example.com", "exp": NOW + 60}));
        assert_eq!(reason(f.with_token("/", &unknown_iss)), "issuer");
        let no_iss = f.token(json!({"exp": NOW + 60}));
        assert_eq!(reason(f.with_token("/", &no_iss)), "issuer");
    }

    #[test]
    fn an_issuer_without_keys_yet_is_503() {
        let f = simple();
        let t = f.token(json!({"iss": OTHER_ISSUER, "exp": NOW + 60}));
        assert_eq!(
            denial(f.with_token("/", &t)),
            Denial::KeysUnavailable {
                retry_after_seconds: 3
            }
        );
    }

    fn three_providers() -> Fixture {
        fixture(json!({"providers": [provider(json!({})),
            {"issuer": OTHER_ISSUER, "jwksUri": "https://other.example.com/jwks"},
            {"issuer": "https://loading.example.com", "jwksUri": "https://loading.example.com/jwks"}]}))
    }

    #[test]
    fn a_token_waits_while_its_keys_load() {
        let f = three_providers();
        let t = f.token(json!({"iss": "https://loading.example.com", "exp": NOW + 60}));
        assert_eq!(
            f.with_token("/", &t),
            Outcome::Wait {
                provider: 2,
                refetch: false
            }
        );
    }

    #[test]
    fn an_unknown_kid_waits_for_a_refetch_only_while_one_is_possible() {
        let mut f = simple();
        let header = b64(json!({"alg": "EdDSA", "kid": "rotated"})
            .to_string()
            .as_bytes());
        let payload = b64(json!({"iss": ISSUER, "aud": "orders", "exp": NOW + 60})
            .to_string()
            .as_bytes());
        let input = format!("{header}.{payload}");
        let t = format!("{input}.{}", b64(&f.key.sign(Alg::EdDSA, input.as_bytes())));
        assert_eq!(reason(f.with_token("/", &t)), "unknown_key");
        f.keys.1 = true;
        assert_eq!(
            f.with_token("/", &t),
            Outcome::Wait {
                provider: 0,
                refetch: true
            }
        );
        // No refetch can come in time and the last one failed: the kid may be new.
        f.keys.1 = false;
        f.keys.4 = Some(7);
        assert_eq!(
            denial(f.with_token("/", &t)),
            Denial::KeysUnavailable {
                retry_after_seconds: 7
            }
        );
        // A failing refresh does not excuse a bad signature under a known kid.
        let forged = format!("{input}.{}", b64(&[0u8; 64]));
        let known = forged.replacen(&header, &b64(br#"{"alg":"EdDSA","kid":"k1"}"#), 1);
        assert_eq!(reason(f.with_token("/", &known)), "signature");
    }

    #[test]
    fn an_expired_wait_is_503_or_reported() {
        let f = three_providers();
        assert_eq!(
            denial(wait_expired(&f.config, &f.keys, 1, NOW * 1000).outcome),
            Denial::KeysUnavailable {
                retry_after_seconds: 3
            }
        );
        let report = fixture(json!({"providers": [provider(json!({}))], "mode": "report"}));
        let a = allowed(wait_expired(&report.config, &report.keys, 0, NOW * 1000).outcome);
        assert_eq!(
            a.would_deny.map(|d| d.reason().name()),
            Some("keys_unavailable")
        );
    }

    #[test]
    fn a_token_in_a_location_its_issuer_does_not_list_is_refused() {
        let f = fixture(json!({"providers": [provider(json!({})),
            {"issuer": OTHER_ISSUER, "jwksUri": "https://o/jwks", "fromHeaders": [{"name": "x-token"}]}]}));
        let d = denial(f.run("GET", "/", &[("x-token", &f.good_token())]));
        assert_eq!(d.reason().name(), "malformed");
    }

    #[test]
    fn two_tokens_and_encoded_slashes_are_bad_requests() {
        let f = simple();
        let t = f.good_token();
        let d = denial(f.run(
            "GET",
            "/",
            &[
                ("authorization", &format!("Bearer {t}")),
                ("authorization", &format!("Bearer {t}x")),
            ],
        ));
        assert_eq!(d.reason().name(), "invalid_request");
        assert_eq!(reason(f.with_token("/admin%2Fx", &t)), "invalid_request");
    }

    /// The record `explain` prints: recording changes no decision, and it holds the steps an
    /// explanation of its own once missed (RFC 8707 audience, CORS preflight, ignore).
    #[test]
    fn a_recorded_decision_is_the_same_decision_with_its_steps() {
        let recorded = |f: &Fixture, method: &str, path: &str, headers: &[(&str, &str)]| {
            let request = Request {
                method,
                scheme: "https",
                path,
                authority: "orders.example.com",
                headers,
                peer: &crate::peer::NoPeer,
            };
            let record = std::cell::RefCell::new(record::Record::default());
            let mut cache = TokenCache::new(0);
            let rec = Recorder::writing_to(&record);
            let with =
                authorize_recorded(&f.config, &f.keys, &mut cache, &request, NOW * 1000, rec);
            let without = authorize(&f.config, &f.keys, &mut cache, &request, NOW * 1000);
            assert_eq!(with.outcome, without.outcome, "{method} {path}");
            (with.outcome, record.into_inner().steps)
        };
        let resource = fixture(json!({
            "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks"}],
            "protectedResource": {"resource": "https://orders.example.com/api"},
            "rules": [{"match": {"paths": ["/public"]}, "allowAnonymous": true,
                       "invalidToken": "ignore"}]}));
        let bearer = format!("Bearer {}", resource.good_token());
        let (outcome, steps) = recorded(&resource, "GET", "/api", &[("authorization", &bearer)]);
        assert_eq!(denial(outcome).reason(), Reason::Audience);
        assert!(
            matches!(
                steps.as_slice(),
                [
                    Step::Path(Ok(_)),
                    Step::Rule(_),
                    Step::Unmatched { .. },
                    Step::Location(Ok(Some(_))),
                    Step::Parsed(Ok(_)),
                    Step::Provider(_),
                    Step::Keys { .. },
                    Step::Signature(Ok(_)),
                    Step::Claims { result: Ok(()), .. },
                    Step::ResourceAudience { held: false, .. }
                ]
            ),
            "{steps:#?}"
        );
        let (outcome, steps) = recorded(&resource, "GET", "/public", &[("authorization", &bearer)]);
        assert!(matches!(outcome, Outcome::Allow(_)));
        assert!(
            matches!(steps.last(), Some(Step::Ignored(Reason::Audience))),
            "{steps:#?}"
        );
        let preflight = [
            ("origin", "https://app"),
            ("access-control-request-method", "POST"),
        ];
        let (outcome, steps) = recorded(&simple(), "OPTIONS", "/", &preflight);
        assert!(matches!(outcome, Outcome::Allow(_)));
        assert!(matches!(steps.last(), Some(Step::Preflight)), "{steps:#?}");
        // Every step of a refusal by requirement, down to the scopes it lacks.
        let rules = with_rules();
        let token = format!("Bearer {}", rules.good_token());
        let (outcome, steps) = recorded(&rules, "POST", "/orders/1", &[("authorization", &token)]);
        assert_eq!(denial(outcome).reason(), Reason::Scope);
        assert!(
            matches!(
                steps.last(),
                Some(Step::Requirement { alternatives, result: Err(Unmet::MissingScopes(_)) })
                    if matches!(alternatives.as_slice(), [parts] if parts.iter().any(|p| matches!(p, policy::RequirementSeen::Scopes { .. })))
            ),
            "{steps:#?}"
        );
    }

    #[test]
    fn cors_preflight_passes_without_a_token_unless_switched_off() {
        let preflight = [
            ("origin", "https://app"),
            ("access-control-request-method", "POST"),
        ];
        assert!(matches!(
            simple().run("OPTIONS", "/", &preflight),
            Outcome::Allow(_)
        ));
        let strict =
            fixture(json!({"providers": [provider(json!({}))], "bypassCorsPreflight": false}));
        assert_eq!(
            denial(strict.run("OPTIONS", "/", &preflight)),
            Denial::MissingToken
        );
        // An OPTIONS request that is not a preflight needs a token.
        assert_eq!(
            denial(simple().run("OPTIONS", "/", &[])),
            Denial::MissingToken
        );
        // A preflight is spared the token only: deny rules and the path check still hold.
        let rules = with_rules();
        assert_eq!(
            denial(rules.run("OPTIONS", "/admin/x", &preflight)),
            Denial::Forbidden
        );
        assert_eq!(
            reason(rules.run("OPTIONS", "/a%2Fb", &preflight)),
            "invalid_request"
        );
        assert!(matches!(
            rules.run("OPTIONS", "/orders/1", &preflight),
            Outcome::Allow(_)
        ));
    }

    #[test]
    fn a_dpop_bound_token_needs_its_proof_once() {
        use crate::sender::{b64url, dpop::thumbprint, sha256};
        let fx = fixture(json!({"providers": [provider(json!({"dpop": {"mode": "required"}}))]}));
        let client = TestKey::ec(Alg::ES256);
        let mut jwk = client.jwk(None);
        jwk.as_object_mut().unwrap().remove("alg");
        let jkt = thumbprint(jwk.as_object().unwrap()).unwrap();
        let token = fx.token(json!({"iss": ISSUER, "aud": "orders", "sub": "alice",
                                    "exp": NOW + 300, "iat": NOW, "cnf": {"jkt": jkt}}));
        let proof = |jti: &str| {
            let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            let claims = json!({"jti": jti, "htm": "GET", "iat": NOW,
                                "htu": "https://orders.example.com:8443/orders/1",
                                "ath": b64url(&sha256(token.as_bytes()))});
            let input = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
            let signature = client.sign(Alg::ES256, input.as_bytes());
            format!("{input}.{}", b64(&signature))
        };
        let dpop = format!("DPoP {token}");
        let first = proof("one");
        let run = |auth: &str, proof: &str| {
            fx.run(
                "GET",
                "/orders/1",
                &[("authorization", auth), ("dpop", proof)],
            )
        };
        assert!(matches!(run(&dpop, &first), Outcome::Allow(_)));
        let replayed = run(&dpop, &first);
        assert!(
            matches!(
                replayed,
                Outcome::Deny(Denial::InvalidProof {
                    reason: crate::reason::Reason::DpopReplay,
                    ..
                })
            ),
            "{replayed:?}"
        );
        assert!(matches!(run(&dpop, &proof("two")), Outcome::Allow(_)));
        let bearer = format!("Bearer {token}");
        let downgraded = run(&bearer, &proof("three"));
        assert!(
            matches!(
                downgraded,
                Outcome::Deny(Denial::InvalidToken {
                    reason: crate::reason::Reason::DpopDowngrade,
                    ..
                })
            ),
            "{downgraded:?}"
        );
        // A plain bearer token for a provider that requires DPoP.
        let plain = format!("Bearer {}", fx.good_token());
        let outcome = fx.run("GET", "/orders/1", &[("authorization", &plain)]);
        assert!(
            matches!(
                outcome,
                Outcome::Deny(Denial::InvalidToken {
                    reason: crate::reason::Reason::DpopRequired,
                    ..
                })
            ),
            "{outcome:?}"
        );
    }

    fn istio_style() -> Fixture {
        fixture(json!({
            "providers": [provider(json!({}))],
            "rules": [
                {"name": "no-mallory", "match": {"requestPrincipals": [format!("{ISSUER}/mallory")]}, "deny": true},
                {"name": "health", "match": {"paths": ["/healthz"]}, "allowAnonymous": true},
                {"name": "users", "match": {"paths": ["/api/*"], "requestPrincipals": ["*"]}, "allowAnonymous": true}
            ],
            "unmatched": "deny"
        }))
    }

    #[test]
    fn a_rule_on_request_principals_verifies_the_token_first() {
        let fx = istio_style();
        let bearer = |token: String| format!("Bearer {token}");
        let mallory = fx.token(json!({"iss": ISSUER, "aud": "orders", "sub": "mallory",
                                      "exp": NOW + 300, "iat": NOW}));
        let auth = bearer(mallory);
        let outcome = fx.run("GET", "/api/x", &[("authorization", &auth)]);
        assert_eq!(outcome, Outcome::Deny(Denial::Forbidden));
        let auth = bearer(fx.good_token());
        assert!(matches!(
            fx.run("GET", "/api/x", &[("authorization", &auth)]),
            Outcome::Allow(_)
        ));
        // A token that does not verify is refused as such, before any rule decides.
        let forged = format!("{}x", fx.good_token());
        let auth = bearer(forged);
        let outcome = fx.run("GET", "/healthz", &[("authorization", &auth)]);
        assert!(matches!(
            outcome,
            Outcome::Deny(Denial::InvalidToken { .. })
        ));
    }

    #[test]
    fn a_missing_token_where_a_rule_needs_one_is_401_not_403() {
        let fx = istio_style();
        assert_eq!(
            fx.run("GET", "/api/x", &[]),
            Outcome::Deny(Denial::MissingToken)
        );
        assert_eq!(
            fx.run("GET", "/other", &[]),
            Outcome::Deny(Denial::Forbidden)
        );
        assert!(matches!(fx.run("GET", "/healthz", &[]), Outcome::Allow(_)));
    }

    fn with_rules() -> Fixture {
        fixture(json!({
        "providers": [provider(json!({})),
            {"issuer": OTHER_ISSUER, "jwksUri": "https://other.example.com/jwks"}],
        "rules": [
            {"match": {"paths": ["/public/*"]}, "allowAnonymous": true},
            {"match": {"paths": ["/admin/*"]}, "deny": true},
            {"match": {"paths": ["/orders/*"], "methods": ["GET"]},
             "requires": {"scopes": ["orders:read"]}},
            {"match": {"paths": ["/orders/*"]}, "requires": {"scopes": ["orders:write", "orders:read"]}},
            {"match": {"paths": ["/editors/*"]},
             "requires": {"claims": [{"claim": "roles", "anyOf": ["editor"]}]}},
            {"match": {"paths": ["/other/*"]}, "requires": {"providers": [OTHER_ISSUER]}}
        ]}))
    }

    #[test]
    fn rules_decide_by_first_match() {
        let f = with_rules();
        let t = f.good_token();
        assert!(matches!(f.run("GET", "/public/x", &[]), Outcome::Allow(_)));
        assert_eq!(denial(f.with_token("/admin/x", &t)), Denial::Forbidden);
        // Normalisation: a dot segment cannot walk around the deny rule.
        assert_eq!(
            denial(f.with_token("/public/../admin/x", &t)),
            Denial::Forbidden
        );
        assert!(matches!(f.with_token("/orders/1", &t), Outcome::Allow(_)));
        let post = f.run(
            "POST",
            "/orders/1",
            &[("authorization", &format!("Bearer {t}"))],
        );
        assert_eq!(
            denial(post),
            Denial::MissingScopes(vec!["orders:write".into()])
        );
        assert_eq!(denial(f.with_token("/editors/x", &t)), Denial::ClaimFailed);
        assert_eq!(reason(f.with_token("/other/x", &t)), "issuer");
    }

    #[test]
    fn a_token_on_an_anonymous_route_is_still_verified() {
        let f = with_rules();
        assert_eq!(
            reason(f.with_token("/public/x", "not.a.token")),
            "malformed"
        );
    }

    #[test]
    fn unmatched_deny_refuses_whatever_the_token() {
        let f = fixture(json!({"providers": [provider(json!({}))], "unmatched": "deny"}));
        assert_eq!(
            denial(f.with_token("/", &f.good_token())),
            Denial::Forbidden
        );
    }

    #[test]
    fn report_mode_lets_refusals_through_but_still_clears_identity_headers() {
        let f = fixture(json!({"providers": [provider(json!({}))], "mode": "report"}));
        let a = allowed(f.run(
            "GET",
            "/",
            &[("authorization", "Bearer x.y.z"), ("x-sub", "forged")],
        ));
        assert_eq!(a.edits, vec![HeaderEdit::Remove("x-sub".into())]);
        assert_eq!(a.would_deny.map(|d| d.reason().name()), Some("malformed"));
    }

    #[test]
    fn forwarding_keeps_the_token_and_payload_header_is_the_signed_segment() {
        let f = fixture(json!({"providers": [provider(json!({
            "forwardOriginalToken": true, "outputPayloadToHeader": "x-payload"}))]}));
        let t = f.good_token();
        let a = allowed(f.with_token("/", &t));
        let segment = t.split('.').nth(1).unwrap().to_string();
        assert!(!a
            .edits
            .contains(&HeaderEdit::Remove("authorization".into())));
        assert!(a
            .edits
            .contains(&HeaderEdit::Set("x-payload".into(), segment)));
    }

    #[test]
    fn tokens_in_params_and_cookies_do_not_travel_upstream() {
        let f = fixture(json!({"providers": [provider(json!({
            "fromParams": ["access_token"], "fromCookies": ["session"]}))]}));
        let t = f.good_token();
        let a = allowed(f.run("GET", &format!("/x?a=1&access_token={t}"), &[]));
        assert!(a
            .edits
            .contains(&HeaderEdit::Set(":path".into(), "/x?a=1".into())));
        let a = allowed(f.run(
            "GET",
            "/x",
            &[("cookie", &format!("session={t}; theme=dark"))],
        ));
        assert!(a
            .edits
            .contains(&HeaderEdit::Set("cookie".into(), "theme=dark".into())));
    }

    #[test]
    fn unsafe_claim_values_are_never_emitted() {
        let f = simple();
        let t = f.token(json!({"iss": ISSUER, "aud": "orders", "exp": NOW + 60,
                               "sub": "alice\r\nx-admin: true"}));
        let a = allowed(f.with_token("/", &t));
        assert_eq!(a.skipped_headers, vec!["x-sub".to_string()]);
        assert!(!a
            .edits
            .iter()
            .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "x-sub")));
    }

    fn cached() -> Fixture {
        let f = simple();
        *f.cache.borrow_mut() = TokenCache::new(16);
        f
    }

    fn empty_keys() -> KeySet {
        let other = TestKey::ed25519();
        let jwks = json!({"keys": [other.jwk(Some("other"))]}).to_string();
        let limits = JwksLimits {
            max_bytes: 64 * 1024,
            max_keys: 8,
        };
        parse_jwks(jwks.as_bytes(), &limits, false).unwrap()
    }

    #[test]
    fn a_cached_token_skips_verification_until_the_keys_change() {
        let mut f = cached();
        let t = f.good_token();
        assert!(matches!(f.with_token("/", &t), Outcome::Allow(_)));
        // The verifying key is gone but the key-set version is the same: the cache answers,
        // with the same identity headers.
        f.keys.0 = empty_keys();
        let a = allowed(f.with_token("/", &t));
        assert!(a
            .edits
            .contains(&HeaderEdit::Set("x-sub".into(), "alice".into())));
        // A new key-set version: the entry no longer counts and the token is verified again.
        f.keys.2 = 2;
        assert_eq!(reason(f.with_token("/", &t)), "unknown_key");
    }

    #[test]
    fn a_cached_token_still_expires_and_keeps_to_its_locations() {
        let f = cached();
        let t = f.token(json!({"iss": ISSUER, "aud": "orders", "exp": NOW + 60}));
        assert!(matches!(f.with_token("/", &t), Outcome::Allow(_)));
        let bearer = format!("Bearer {t}");
        let headers = [("authorization", bearer.as_str())];
        let later = Request {
            method: "GET",
            scheme: "https",
            path: "/",
            authority: "a",
            headers: &headers,
            peer: &crate::peer::NoPeer,
        };
        assert_eq!(reason(f.run_at(&later, (NOW + 3600) * 1000)), "expired");
        assert!(f.cache.borrow().is_empty(), "an expired entry is dropped");
    }

    /// A hit re-checks only the time claims: the keys are gone (a fresh verification would
    /// say unknown_key), so each refusal below is the hit's, and it is what a fresh check of
    /// the claims at that instant decides.
    #[test]
    fn a_cached_token_is_refused_on_a_hit_whenever_its_time_claims_fail() {
        let mut f = fixture(json!({"providers": [provider(json!({
            "maxLifetimeSeconds": 600, "clockSkewSeconds": 0}))]}));
        *f.cache.borrow_mut() = TokenCache::new(16);
        let at = |f: &Fixture, token: &str, now_s: u64| {
            let bearer = format!("Bearer {token}");
            let headers = [("authorization", bearer.as_str())];
            let request = Request {
                method: "GET",
                scheme: "https",
                path: "/",
                authority: "a",
                headers: &headers,
                peer: &crate::peer::NoPeer,
            };
            f.run_at(&request, now_s * 1000)
        };
        let with_nbf = f.token(json!({"iss": ISSUER, "aud": "orders", "exp": NOW + 300,
                                      "nbf": NOW - 5, "iat": NOW - 5}));
        let without_iat = f.token(json!({"iss": ISSUER, "aud": "orders", "exp": NOW + 500}));
        for token in [&with_nbf, &without_iat] {
            assert!(matches!(at(&f, token, NOW), Outcome::Allow(_)));
        }
        f.keys.0 = empty_keys();
        assert!(matches!(at(&f, &with_nbf, NOW + 10), Outcome::Allow(_)));
        assert_eq!(reason(at(&f, &with_nbf, NOW - 60)), "not_yet_valid");
        assert!(matches!(at(&f, &without_iat, NOW), Outcome::Allow(_)));
        // The clock set back: 500 s left plus 200 is more than the 600 s cap.
        assert_eq!(reason(at(&f, &without_iat, NOW - 200)), "lifetime");
        assert!(f.cache.borrow().is_empty(), "refused entries are dropped");
    }

    #[test]
    fn a_null_claim_sets_no_header_and_is_not_reported_unsafe() {
        let f = simple();
        let t = f.token(json!({"iss": ISSUER, "aud": "orders", "exp": NOW + 60, "sub": null}));
        let a = allowed(f.with_token("/", &t));
        assert!(a.skipped_headers.is_empty());
        assert!(!a
            .edits
            .iter()
            .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "x-sub")));
    }

    #[test]
    fn a_rule_in_report_mode_refuses_nothing_beside_enforced_rules() {
        let f = fixture(json!({
        "providers": [provider(json!({}))],
        "rules": [
            {"name": "trial", "mode": "report", "match": {"paths": ["/new/*"]},
             "requires": {"scopes": ["new:read"]}},
            {"name": "old", "match": {"paths": ["/old/*"]}, "requires": {"scopes": ["old:read"]}}
        ]}));
        let t = f.good_token();
        let a = allowed(f.with_token("/new/x", &t));
        assert_eq!(
            a.would_deny,
            Some(Denial::MissingScopes(vec!["new:read".into()]))
        );
        // A valid token in report mode stays for upstream too.
        let valid = fixture(json!({"providers": [provider(json!({}))], "mode": "report"}));
        let a = allowed(valid.with_token("/", &valid.good_token()));
        assert!(!a
            .edits
            .contains(&HeaderEdit::Remove("authorization".into())));
        assert_eq!(
            denial(f.with_token("/old/x", &t)),
            Denial::MissingScopes(vec!["old:read".into()])
        );
    }

    #[test]
    fn the_trace_tells_what_was_looked_at() {
        let f = with_rules();
        *f.cache.borrow_mut() = TokenCache::new(4);
        let t = f.good_token();
        let bearer = format!("Bearer {t}");
        let headers = [("authorization", bearer.as_str())];
        let request = Request {
            method: "GET",
            scheme: "https",
            path: "/orders/7",
            authority: "a",
            headers: &headers,
            peer: &crate::peer::NoPeer,
        };
        let decide = || {
            let mut cache = f.cache.borrow_mut();
            authorize(&f.config, &f.keys, &mut cache, &request, NOW * 1000)
        };
        let first = decide();
        assert!(matches!(first.outcome, Outcome::Allow(_)));
        assert_eq!(first.trace.rule, Some(2));
        assert_eq!(first.trace.provider, Some(0));
        assert_eq!(first.trace.alg, Some(Alg::EdDSA));
        assert_eq!(first.trace.kid.as_deref(), Some("k1"));
        assert_eq!(
            first.trace.claims.as_ref().and_then(|c| c.get("sub")),
            Some(&json!("alice"))
        );
        assert!(!first.trace.cached);
        let second = decide();
        assert!(second.trace.cached);
        assert_eq!(second.trace.kid.as_deref(), Some("k1"));
    }

    /// Provider 0's keys with a fetched revocation list.
    struct RevokingKeys(FixedKeys, crate::config::Revoked);

    impl KeyLookup for RevokingKeys {
        fn keys(&self, provider: usize, now_ms: u64) -> KeyState<'_> {
            self.0.keys(provider, now_ms)
        }
        fn refetch_possible(&self, provider: usize, now_ms: u64) -> bool {
            self.0.refetch_possible(provider, now_ms)
        }
        fn key_version(&self, provider: usize) -> u64 {
            self.0.key_version(provider)
        }
        fn revocations(&self, _provider: usize) -> Option<&crate::config::Revoked> {
            Some(&self.1)
        }
    }

    #[test]
    fn a_fetched_revocation_list_refuses_even_cached_tokens() {
        let f = cached();
        let t = f.good_token();
        assert!(matches!(f.with_token("/", &t), Outcome::Allow(_)));
        let mut list = crate::config::Revoked::default();
        list.subjects.insert("alice".to_string());
        let keys = RevokingKeys(
            FixedKeys(empty_keys(), false, 1, Default::default(), None),
            list,
        );
        let bearer = format!("Bearer {t}");
        let headers = [("authorization", bearer.as_str())];
        let request = Request {
            method: "GET",
            scheme: "https",
            path: "/",
            authority: "a",
            headers: &headers,
            peer: &crate::peer::NoPeer,
        };
        let mut cache = f.cache.borrow_mut();
        let decision = authorize(&f.config, &keys, &mut cache, &request, NOW * 1000);
        assert!(decision.trace.cached, "the cache answered the signature");
        assert_eq!(
            decision.outcome,
            Outcome::Deny(Denial::InvalidToken {
                description: "token revoked",
                reason: crate::reason::Reason::Revoked
            })
        );
    }

    #[test]
    fn claim_header_values_follow_their_json_type() {
        assert_eq!(header_value(&json!("a")), Some("a".into()));
        assert_eq!(header_value(&json!(["a", "b"])), Some("a,b".into()));
        assert_eq!(header_value(&json!(42)), Some("42".into()));
        assert_eq!(header_value(&json!(true)), Some("true".into()));
        assert_eq!(header_value(&json!({"a": 1})), Some("{\"a\":1}".into()));
        assert_eq!(header_value(&json!(null)), None);
        assert_eq!(header_value(&json!("a\nb")), None);
    }
}
