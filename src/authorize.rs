//! One request's decision, from headers to allow/deny, with no host calls: the filter
//! glue gathers the request, calls [`authorize`], and applies the [`Outcome`].

use crate::claims;
use crate::config::{Action, Config, Mode, Provider, Unmatched};
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
    // Identity headers are never taken from the client, whatever the decision or mode.
    let mut edits: Vec<HeaderEdit> = identity_headers(&config.providers)
        .map(|h| HeaderEdit::Remove(h.to_string()))
        .collect();
    match decide(config, keys, request, now) {
        Ok(mut allowed) => {
            edits.append(&mut allowed.edits);
            allowed.edits = edits;
            Outcome::Allow(allowed)
        }
        // Report mode lets everything through untouched but for the identity headers: the
        // token stays, since the application may still rely on it during the rollout.
        Err(denial) if config.mode == Mode::Report => Outcome::Allow(Allowed {
            edits,
            skipped_headers: Vec::new(),
            would_deny: Some(denial),
        }),
        Err(denial) => Outcome::Deny(denial),
    }
}

fn decide(
    config: &Config,
    keys: &impl KeyLookup,
    request: &Request<'_>,
    now: u64,
) -> Result<Allowed, Denial> {
    if config.bypass_cors_preflight && is_cors_preflight(request) {
        return Ok(Allowed::default());
    }

    let normalized = match path::normalize(request.path) {
        Ok(p) => p,
        Err(PathError::EncodedSlash) => {
            return Err(Denial::InvalidRequest(
                "request path contains an encoded slash or backslash",
            ))
        }
        Err(PathError::Malformed) => {
            return Err(Denial::InvalidRequest("request path is malformed"))
        }
    };
    let facts = RequestFacts {
        method: request.method,
        path: &normalized,
        host: request.authority,
    };
    let action = match policy::select(config, &facts) {
        Applies::Rule(rule) => Need::Rule(&rule.action),
        Applies::Unmatched(Unmatched::Deny) => return Err(Denial::Forbidden),
        Applies::Unmatched(Unmatched::Anonymous) => Need::Anonymous,
        Applies::Unmatched(Unmatched::Authenticated) => Need::AnyValidToken,
    };
    if let Need::Rule(Action::Deny) = action {
        return Err(Denial::Forbidden);
    }

    let parts = RequestParts {
        headers: request.headers,
        path: request.path,
    };
    let found = match extract::find_token(&config.providers, &parts) {
        Ok(found) => found,
        Err(ExtractError::MultipleTokens) => {
            return Err(Denial::InvalidRequest("more than one token in the request"))
        }
    };
    let Some(found) = found else {
        return match action {
            Need::Anonymous | Need::Rule(Action::AllowAnonymous) => Ok(Allowed::default()),
            _ => Err(Denial::MissingToken),
        };
    };

    // A token that is present is always verified, on anonymous routes too.
    let verified = verify_token(config, keys, found, now)?;
    let Some(provider) = config.providers.get(verified.provider) else {
        return Err(invalid("token issuer is not trusted", "issuer"));
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
            return Err(invalid(
                "token issuer is not accepted for this resource",
                "issuer",
            ))
        }
        Err(Unmet::MissingScopes(scopes)) => return Err(Denial::MissingScopes(scopes)),
        Err(Unmet::ClaimFailed(_)) => return Err(Denial::ClaimFailed),
    }

    Ok(identity_edits(provider, &verified, request))
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
fn identity_edits(provider: &Provider, verified: &Verified, request: &Request<'_>) -> Allowed {
    let mut allowed = Allowed::default();
    let edits = &mut allowed.edits;
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
        edits.push(HeaderEdit::Set(header.clone(), payload.clone()));
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
        config: Config,
        keys: FixedKeys,
    }

    /// Keys for provider 0 only; every other provider has none yet.
    struct FixedKeys(KeySet);

    impl KeyLookup for FixedKeys {
        fn keys(&self, provider: usize) -> KeyState<'_> {
            match provider {
                0 => KeyState::Ready(&self.0),
                _ => KeyState::Unavailable {
                    retry_after_seconds: 3,
                },
            }
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
            keys: FixedKeys(parse_jwks(jwks.as_bytes(), &limits, false).unwrap()),
            config: crate::config::parse(&config.to_string()).unwrap(),
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
            let headers: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let request = Request {
                method,
                path,
                authority: "orders.example.com:8443",
                headers: &headers,
            };
            authorize(&self.config, &self.keys, &request, NOW)
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
            Outcome::Allow(a) => panic!("expected a refusal, got {a:?}"),
        }
    }

    fn allowed(outcome: Outcome) -> Allowed {
        match outcome {
            Outcome::Allow(a) => a,
            Outcome::Deny(d) => panic!("expected to pass, got {d:?}"),
        }
    }

    fn reason(outcome: Outcome) -> &'static str {
        denial(outcome).reason()
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

    #[test]
    fn a_token_in_a_location_its_issuer_does_not_list_is_refused() {
        let f = fixture(json!({"providers": [provider(json!({})),
            {"issuer": OTHER_ISSUER, "jwksUri": "https://o/jwks", "fromHeaders": [{"name": "x-token"}]}]}));
        let d = denial(f.run("GET", "/", &[("x-token", &f.good_token())]));
        assert_eq!(d.reason(), "malformed");
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
        assert_eq!(d.reason(), "invalid_request");
        assert_eq!(reason(f.with_token("/admin%2Fx", &t)), "invalid_request");
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
        assert_eq!(a.would_deny.map(|d| d.reason()), Some("malformed"));
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
