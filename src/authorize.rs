//! One request's decision, from headers to allow/deny, with no host calls: the filter
//! glue gathers the request, calls [`authorize`], and applies the [`Outcome`].

use crate::claims;
use crate::config::{Action, Config, Provider, Unmatched};
use crate::extract::{self, ExtractError, Found, Location, RequestParts};
use crate::keys::KeySet;
use crate::path::{self, PathError};
use crate::policy::{self, Applies, RequestFacts, Unmet};
use crate::response::Denial;
use crate::token::{self, TokenLimits};
use crate::verify::{self, VerifyError};
use serde_json::{Map, Value};

/// The request as the glue read it: pseudo-headers split out, every other header as sent.
pub struct Request<'a> {
    pub method: &'a str,
    /// Raw `:path`, query included.
    pub path: &'a str,
    pub authority: &'a str,
    /// Lower-case names; repeated headers are separate entries.
    pub headers: &'a [(String, String)],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Remove(String),
    Set(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Let the request through after applying these edits in order.
    Allow(Vec<HeaderEdit>),
    Deny(Denial),
}

pub enum KeyState<'a> {
    Ready(&'a KeySet),
    Unavailable { retry_after_seconds: u64 },
}

/// Where verified keys come from (the key store in the filter, fixed sets in tests).
pub trait KeyLookup {
    fn keys(&self, provider: usize) -> KeyState<'_>;
}

/// A verified token: which provider accepted it, and its claims.
struct Verified {
    provider: usize,
    claims: Map<String, Value>,
    found: Found,
    /// The payload segment exactly as signed, kept only when a provider forwards it.
    payload_segment: Option<String>,
}

pub fn authorize(
    config: &Config,
    keys: &impl KeyLookup,
    request: &Request<'_>,
    now: u64,
) -> Outcome {
    // Identity headers are never taken from the client, whatever the decision.
    let mut edits: Vec<HeaderEdit> = identity_headers(&config.providers)
        .map(|h| HeaderEdit::Remove(h.to_string()))
        .collect();

    if config.bypass_cors_preflight && is_cors_preflight(request) {
        return Outcome::Allow(edits);
    }

    let normalized = match path::normalize(request.path) {
        Ok(p) => p,
        Err(PathError::EncodedSlash) => {
            return Outcome::Deny(Denial::InvalidRequest(
                "request path contains an encoded slash or backslash",
            ))
        }
        Err(PathError::Malformed) => {
            return Outcome::Deny(Denial::InvalidRequest("request path is malformed"))
        }
    };
    let facts = RequestFacts {
        method: request.method,
        path: &normalized,
        host: request.authority,
    };
    let action = match policy::select(config, &facts) {
        Applies::Rule(rule) => Need::Rule(&rule.action),
        Applies::Unmatched(Unmatched::Deny) => return Outcome::Deny(Denial::Forbidden),
        Applies::Unmatched(Unmatched::Anonymous) => Need::Anonymous,
        Applies::Unmatched(Unmatched::Authenticated) => Need::AnyValidToken,
    };
    if let Need::Rule(Action::Deny) = action {
        return Outcome::Deny(Denial::Forbidden);
    }

    let parts = RequestParts {
        headers: request.headers,
        path: request.path,
    };
    let found = match extract::find_token(&config.providers, &parts) {
        Ok(found) => found,
        Err(ExtractError::MultipleTokens) => {
            return Outcome::Deny(Denial::InvalidRequest("more than one token in the request"))
        }
    };
    let Some(found) = found else {
        return match action {
            Need::Anonymous | Need::Rule(Action::AllowAnonymous) => Outcome::Allow(edits),
            _ => Outcome::Deny(Denial::MissingToken),
        };
    };

    // A token that is present is always verified, on anonymous routes too.
    let verified = match verify_token(config, keys, found, now) {
        Ok(v) => v,
        Err(denial) => return Outcome::Deny(denial),
    };
    let Some(provider) = config.providers.get(verified.provider) else {
        return Outcome::Deny(invalid("token issuer is not trusted", "issuer"));
    };

    let requirement_check = match action {
        Need::Rule(Action::Requires(req)) => policy::check_requirement(
            req,
            verified.provider,
            &verified.claims,
            &provider.scope_claims,
        ),
        Need::Rule(Action::RequiresAny(reqs)) => policy::check_any(
            reqs,
            verified.provider,
            &verified.claims,
            &provider.scope_claims,
        ),
        _ => Ok(()),
    };
    match requirement_check {
        Ok(()) => {}
        Err(Unmet::WrongProvider) => {
            return Outcome::Deny(invalid(
                "token issuer is not accepted for this resource",
                "issuer",
            ))
        }
        Err(Unmet::MissingScopes(scopes)) => return Outcome::Deny(Denial::MissingScopes(scopes)),
        Err(Unmet::ClaimFailed(_)) => return Outcome::Deny(Denial::ClaimFailed),
    }

    identity_edits(provider, &verified, request, &mut edits);
    Outcome::Allow(edits)
}

enum Need<'c> {
    AnyValidToken,
    Anonymous,
    Rule(&'c Action),
}

fn invalid(description: &'static str, reason: &'static str) -> Denial {
    Denial::InvalidToken {
        description,
        reason,
    }
}

fn is_cors_preflight(request: &Request<'_>) -> bool {
    request.method == "OPTIONS"
        && request.headers.iter().any(|(n, _)| n == "origin")
        && request
            .headers
            .iter()
            .any(|(n, _)| n == "access-control-request-method")
}

fn identity_headers(providers: &[Provider]) -> impl Iterator<Item = &str> {
    providers.iter().flat_map(|p| {
        p.output_payload_to_header
            .iter()
            .map(String::as_str)
            .chain(p.output_claim_to_headers.iter().map(|c| c.header.as_str()))
    })
}

fn verify_token(
    config: &Config,
    keys: &impl KeyLookup,
    found: Found,
    now: u64,
) -> Result<Verified, Denial> {
    let limits = TokenLimits::from(&config.limits);
    let jws = token::parse(&found.token, &limits).map_err(|e| invalid(e.describe(), e.reason()))?;
    // The issuer selects the provider before the signature is checked; nothing from the
    // payload is trusted until the provider's keys have verified it.
    let issuer = claims::issuer(&jws.claims).ok_or(invalid("token has no issuer", "issuer"))?;
    let (index, provider) = config
        .providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.issuer == issuer)
        .ok_or(invalid("token issuer is not trusted", "issuer"))?;
    if !found.location.is_listed_by(provider) {
        return Err(invalid(
            "token was sent in a location its issuer is not configured for",
            "malformed",
        ));
    }
    let key_set = match keys.keys(index) {
        KeyState::Ready(set) => set,
        KeyState::Unavailable {
            retry_after_seconds,
        } => {
            return Err(Denial::KeysUnavailable {
                retry_after_seconds,
            })
        }
    };
    verify::verify(
        jws.header.alg,
        jws.header.kid.as_deref(),
        jws.signing_input,
        &jws.signature,
        key_set,
        provider.algorithms,
    )
    .map_err(|e| invalid(e.describe(), verify_reason(&e)))?;
    claims::check(&jws.claims, provider, now).map_err(|e| invalid(e.describe(), e.reason()))?;
    let payload_segment = provider.output_payload_to_header.as_ref().and_then(|_| {
        let signing_input = std::str::from_utf8(jws.signing_input).ok()?;
        signing_input.split_once('.').map(|(_, p)| p.to_string())
    });
    Ok(Verified {
        provider: index,
        claims: jws.claims,
        found,
        payload_segment,
    })
}

fn verify_reason(error: &VerifyError) -> &'static str {
    match error {
        VerifyError::AlgorithmNotAllowed | VerifyError::KeyAlgorithmMismatch => "algorithm",
        VerifyError::UnknownKey | VerifyError::NoSuitableKey => "unknown_key",
        VerifyError::BadSignature => "signature",
    }
}

/// What upstream gets from a verified token: the token itself removed (unless forwarded) and
/// the configured claim and payload headers.
fn identity_edits(
    provider: &Provider,
    verified: &Verified,
    request: &Request<'_>,
    edits: &mut Vec<HeaderEdit>,
) {
    if !provider.forward_original_token {
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
                    .filter(|(n, _)| n == "cookie")
                    .map(|(_, v)| v.as_str())
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
        if let Some(value) = output.claim.lookup(&verified.claims).and_then(header_value) {
            edits.push(HeaderEdit::Set(output.header.clone(), value));
        }
    }
    if let (Some(header), Some(payload)) = (
        &provider.output_payload_to_header,
        &verified.payload_segment,
    ) {
        edits.push(HeaderEdit::Set(header.clone(), payload.clone()));
    }
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
