//! Registered-claim checks after the signature holds: issuer, audience and time
//! (RFC 7519 §4.1, RFC 9068 §4: `exp` is required).

use crate::config::{Provider, Revoked};
use crate::reason::Reason;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimError {
    MissingExp,
    /// A time claim that is not a JSON number (e.g. `"exp": "1700000000"`).
    NotNumericDate(&'static str),
    /// A time claim past the end of year 9999 (or of a signed 64-bit count of seconds): no
    /// clock reaches it, so a token that never expires could pass (RFC 8725 §3.10).
    DateOutOfRange(&'static str),
    Expired,
    NotYetValid,
    IssuedInFuture,
    LifetimeTooLong,
    Audience,
    /// `sub` or `jti` neither a string (RFC 7519 §4.1.2, §4.1.7) nor null (treated as absent,
    /// like any null claim): a number would slip past revocation, which compares strings.
    NotAString(&'static str),
    Revoked,
    /// A multi-tenant issuer's `{tenant}` differs from the token's `tid`: a token of one
    /// tenant that names another's issuer (they share one key set).
    TenantMismatch,
}

impl ClaimError {
    pub fn describe(self) -> &'static str {
        match self {
            ClaimError::MissingExp => "token has no expiry (exp)",
            ClaimError::NotNumericDate("exp") => "token expiry (exp) is not a number",
            ClaimError::NotNumericDate("nbf") => "token not-before (nbf) is not a number",
            ClaimError::NotNumericDate(_) => "token issue time (iat) is not a number",
            ClaimError::DateOutOfRange("exp") => "token expiry (exp) is beyond year 9999",
            ClaimError::DateOutOfRange("nbf") => "token not-before (nbf) is beyond year 9999",
            ClaimError::DateOutOfRange(_) => "token issue time (iat) is beyond year 9999",
            ClaimError::Expired => "token is expired",
            ClaimError::NotYetValid => "token is not yet valid (nbf)",
            ClaimError::IssuedInFuture => "token is not yet valid (iat in the future)",
            ClaimError::LifetimeTooLong => "token lifetime exceeds the allowed maximum",
            ClaimError::Audience => "token audience is not accepted",
            ClaimError::NotAString("sub") => "token subject (sub) is not a string",
            ClaimError::NotAString(_) => "token id (jti) is not a string",
            ClaimError::Revoked => "token revoked",
            ClaimError::TenantMismatch => "token tenant (tid) does not match its issuer",
        }
    }

    /// Why, for metrics and logs.
    pub fn reason(self) -> Reason {
        match self {
            ClaimError::Expired => Reason::Expired,
            ClaimError::NotYetValid | ClaimError::IssuedInFuture => Reason::NotYetValid,
            ClaimError::Audience => Reason::Audience,
            ClaimError::Revoked => Reason::Revoked,
            ClaimError::TenantMismatch => Reason::Tenant,
            ClaimError::MissingExp
            | ClaimError::NotNumericDate(_)
            | ClaimError::DateOutOfRange(_)
            | ClaimError::NotAString(_) => Reason::Malformed,
            ClaimError::LifetimeTooLong => Reason::Lifetime,
        }
    }
}

/// The `iss` claim, which selects the provider; `None` if absent or not a string.
pub fn issuer(claims: &Map<String, Value>) -> Option<&str> {
    claims.get("iss").and_then(Value::as_str)
}

/// Checks `exp` (required), `nbf`, `iat`, the lifetime cap and the audience. `now` in seconds
/// since the epoch.
pub fn check(claims: &Map<String, Value>, provider: &Provider, now: u64) -> Result<(), ClaimError> {
    check_seen(claims, provider, now, None).map(|_| ())
}

/// The time claims of a token [`check`] admitted. Every other check is a function of the
/// token and the provider's configuration alone, so under the same configuration only these
/// need checking again later ([`check_times`]).
/// Kept in every cache entry: an absent `nbf` or `iat` is NaN, which no NumericDate is, so
/// that an entry grows by 24 bytes rather than 40.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    exp: f64,
    nbf: f64,
    iat: f64,
}

impl Times {
    pub(crate) fn new(exp: f64, nbf: Option<f64>, iat: Option<f64>) -> Times {
        Times {
            exp,
            nbf: nbf.unwrap_or(f64::NAN),
            iat: iat.unwrap_or(f64::NAN),
        }
    }

    fn nbf(&self) -> Option<f64> {
        (!self.nbf.is_nan()).then_some(self.nbf)
    }

    fn iat(&self) -> Option<f64> {
        (!self.iat.is_nan()).then_some(self.iat)
    }
}

/// What [`check`] decides at `now` on a token it admitted (its [`Times`]) under the same
/// provider configuration: its checks that depend on `now`, in its order.
pub fn check_times(times: &Times, provider: &Provider, now: u64) -> Result<(), ClaimError> {
    time_checks(times, provider, now as f64, &mut |_| {})
}

/// One check `check` made, in its order, for `explain`: what it read and whether it held.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimSeen {
    /// `exp`, `nbf` or `iat` (`None`: absent) against `now` and the clock skew.
    Time {
        name: &'static str,
        at: Option<f64>,
        now: f64,
        skew: f64,
        held: bool,
    },
    /// `exp` minus `iat` (or minus now without `iat`) against `maxLifetimeSeconds`.
    Lifetime {
        max: Option<u64>,
        span: f64,
        from_iat: bool,
        held: bool,
    },
    /// `aud` against the provider's `audiences` (`accepted` empty: not checked).
    Audience {
        aud: Option<Value>,
        accepted: Vec<String>,
        held: bool,
    },
}

/// [`check`], noting each check in `seen` when given; the token's [`Times`] if it holds.
pub fn check_seen(
    claims: &Map<String, Value>,
    provider: &Provider,
    now: u64,
    mut seen: Option<&mut Vec<ClaimSeen>>,
) -> Result<Times, ClaimError> {
    let mut note = |step: &dyn Fn() -> ClaimSeen| {
        if let Some(seen) = seen.as_deref_mut() {
            seen.push(step());
        }
    };
    // Fractional NumericDates are legal (RFC 7519 §2); f64 keeps them and any u64-sized value.
    let times = Times::new(
        numeric_date(claims, "exp")?.ok_or(ClaimError::MissingExp)?,
        numeric_date(claims, "nbf")?,
        numeric_date(claims, "iat")?,
    );

    for name in ["sub", "jti"] {
        if claims
            .get(name)
            .is_some_and(|value| !value.is_string() && !value.is_null())
        {
            return Err(ClaimError::NotAString(name));
        }
    }

    time_checks(&times, provider, now as f64, &mut note)?;
    let foreign = !provider.audiences.is_empty()
        && !audience_accepted(claims.get("aud"), &provider.audiences);
    note(&|| ClaimSeen::Audience {
        aud: claims.get("aud").cloned(),
        accepted: provider.audiences.clone(),
        held: !foreign,
    });
    if foreign {
        return Err(ClaimError::Audience);
    }
    if !provider.revoked.is_empty() && is_revoked(claims, &provider.revoked) {
        return Err(ClaimError::Revoked);
    }
    // Entra's own rule for its shared `common` keys: the issuer's tenant is the token's.
    if let Some(tenant) = issuer(claims).and_then(|iss| provider.tenant_of(iss)) {
        if claims.get("tid").and_then(Value::as_str) != Some(tenant) {
            return Err(ClaimError::TenantMismatch);
        }
    }
    Ok(times)
}

/// `exp`, `nbf`, `iat` and the lifetime cap at `now`, noting each check.
fn time_checks(
    times: &Times,
    provider: &Provider,
    now: f64,
    note: &mut dyn FnMut(&dyn Fn() -> ClaimSeen),
) -> Result<(), ClaimError> {
    let (exp, nbf, iat) = (times.exp, times.nbf(), times.iat());
    let skew = provider.clock_skew_seconds as f64;
    let time = |name, at, held| ClaimSeen::Time {
        name,
        at,
        now,
        skew,
        held,
    };
    let expired = now >= exp + skew;
    note(&|| time("exp", Some(exp), !expired));
    if expired {
        return Err(ClaimError::Expired);
    }
    let early = nbf.is_some_and(|nbf| nbf > now + skew);
    note(&|| time("nbf", nbf, !early));
    if early {
        return Err(ClaimError::NotYetValid);
    }
    let future = iat.is_some_and(|iat| iat > now + skew);
    note(&|| time("iat", iat, !future));
    if future {
        return Err(ClaimError::IssuedInFuture);
    }
    // Without `iat` the lifetime left counts: an absurd `exp` is refused however it is written.
    let span = exp - iat.unwrap_or(now);
    let too_long = provider
        .max_lifetime_seconds
        .is_some_and(|max| span > max as f64);
    note(&|| ClaimSeen::Lifetime {
        max: provider.max_lifetime_seconds,
        span,
        from_iat: iat.is_some(),
        held: !too_long,
    });
    if too_long {
        return Err(ClaimError::LifetimeTooLong);
    }
    Ok(())
}

/// Whether the token's `jti` or `sub` is revoked. Checked on every request (cached tokens
/// too), so a new revocation applies on the token's next use.
pub fn is_revoked(claims: &Map<String, Value>, revoked: &Revoked) -> bool {
    let iat = claims.get("iat").and_then(Value::as_f64);
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    if text("jti").is_some_and(|jti| revoked.jtis.contains(jti)) {
        return true;
    }
    let Some(sub) = text("sub") else {
        return false;
    };
    if revoked.subjects.contains(sub) {
        return true;
    }
    // Without an iat a token cannot show it was issued after the cut-off: fail closed.
    revoked
        .subjects_issued_before
        .get(sub)
        .is_some_and(|cutoff| iat.is_none_or(|iat| iat < *cutoff as f64))
}

/// 9999-12-31T23:59:59Z: also well inside a signed 64-bit count of seconds.
const LAST_SECOND_OF_9999: f64 = 253_402_300_799.0;

/// A time claim: absent, a NumericDate in seconds, or why it is not one.
pub fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<f64>, ClaimError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if (0.0..=LAST_SECOND_OF_9999).contains(&v) => Ok(Some(v)),
            Some(v) if v.is_finite() && v > 0.0 => Err(ClaimError::DateOutOfRange(name)),
            _ => Err(ClaimError::NotNumericDate(name)),
        },
        Some(_) => Err(ClaimError::NotNumericDate(name)),
    }
}

/// `aud` is a string or a list of strings (RFC 7519 §4.1.3); any configured audience will do.
/// A list holding anything but strings is malformed, whatever else it holds.
fn audience_accepted(aud: Option<&Value>, accepted: &[String]) -> bool {
    match aud {
        Some(Value::String(a)) => accepted.iter().any(|x| x == a),
        Some(Value::Array(list)) => {
            let strings: Option<Vec<&str>> = list.iter().map(Value::as_str).collect();
            strings.is_some_and(|list| list.iter().any(|a| accepted.iter().any(|x| x == a)))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn provider(extra: &str) -> Provider {
        let json = format!(
            r#"{{"providers":[{{"issuer":"https://idp.example.com","jwksUri":"https://idp.example.com/jwks"{extra}}}]}}"#
        );
        crate::config::parse(&json).unwrap().providers.remove(0)
    }

    fn claims(value: serde_json::Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_current_token_passes() {
        let c = claims(json!({"exp": NOW + 300, "iat": NOW, "nbf": NOW}));
        assert_eq!(check(&c, &provider(""), NOW), Ok(()));
    }

    /// A cache hit runs only `check_times`: at every instant it must decide as a full check
    /// of the same token under the same configuration would (clock going forward past `exp`
    /// or back before `nbf`, `iat` or into a lifetime the cap refuses).
    #[test]
    fn an_admitted_tokens_time_checks_decide_as_the_full_check_at_any_instant() {
        let providers = [
            provider(""),
            provider(r#","clockSkewSeconds":30"#),
            provider(r#","maxLifetimeSeconds":600,"clockSkewSeconds":0"#),
            provider(r#","audiences":["orders"],"revoked":{"subjects":["mallory"]}"#),
        ];
        let tokens = [
            json!({"exp": NOW + 300}),
            json!({"exp": NOW + 300, "iat": NOW - 10, "nbf": NOW - 5, "sub": "alice"}),
            json!({"exp": NOW as f64 + 500.5, "nbf": NOW as f64 - 19.5, "aud": ["x", "orders"]}),
            json!({"exp": NOW + 120, "iat": NOW, "aud": "orders", "jti": null}),
        ];
        let mut admitted = 0;
        for p in &providers {
            for token in &tokens {
                let c = claims(token.clone());
                let Ok(times) = check_seen(&c, p, NOW, None) else {
                    continue;
                };
                admitted += 1;
                for later in (NOW - 2000..NOW + 2000).step_by(7) {
                    assert_eq!(
                        check_times(&times, p, later),
                        check(&c, p, later),
                        "{token} at {later}"
                    );
                }
            }
        }
        assert!(admitted >= 10, "only {admitted} admitted");
    }

    #[test]
    fn exp_is_required_and_must_be_a_number() {
        let p = provider("");
        assert_eq!(
            check(&claims(json!({})), &p, NOW),
            Err(ClaimError::MissingExp)
        );
        assert_eq!(
            check(&claims(json!({"exp": "9999999999"})), &p, NOW),
            Err(ClaimError::NotNumericDate("exp"))
        );
        assert_eq!(
            check(&claims(json!({"exp": NOW + 60, "nbf": true})), &p, NOW),
            Err(ClaimError::NotNumericDate("nbf"))
        );
        assert_eq!(
            check(&claims(json!({"exp": NOW + 60, "iat": null})), &p, NOW),
            Err(ClaimError::NotNumericDate("iat"))
        );
        assert_eq!(
            check(&claims(json!({"exp": -5})), &p, NOW),
            Err(ClaimError::NotNumericDate("exp"))
        );
    }

    #[test]
    fn expiry_allows_the_configured_skew_and_no_more() {
        let p = provider(r#","clockSkewSeconds":60"#);
        assert_eq!(check(&claims(json!({"exp": NOW - 30})), &p, NOW), Ok(()));
        assert_eq!(
            check(&claims(json!({"exp": NOW - 60})), &p, NOW),
            Err(ClaimError::Expired)
        );
        let strict = provider(r#","clockSkewSeconds":0"#);
        assert_eq!(
            check(&claims(json!({"exp": NOW})), &strict, NOW),
            Err(ClaimError::Expired)
        );
        assert_eq!(
            check(&claims(json!({"exp": NOW + 1})), &strict, NOW),
            Ok(())
        );
    }

    #[test]
    fn fractional_times_are_numeric_dates() {
        let strict = provider(r#","clockSkewSeconds":0"#);
        assert_eq!(
            check(&claims(json!({"exp": NOW as f64 + 0.5})), &strict, NOW),
            Ok(())
        );
        assert_eq!(
            check(&claims(json!({"exp": NOW as f64 - 0.5})), &strict, NOW),
            Err(ClaimError::Expired)
        );
    }

    #[test]
    fn nbf_and_iat_in_the_future_are_refused_beyond_the_skew() {
        let p = provider("");
        let exp = NOW + 3600;
        assert_eq!(
            check(&claims(json!({"exp": exp, "nbf": NOW + 30})), &p, NOW),
            Ok(())
        );
        assert_eq!(
            check(&claims(json!({"exp": exp, "nbf": NOW + 61})), &p, NOW),
            Err(ClaimError::NotYetValid)
        );
        assert_eq!(
            check(&claims(json!({"exp": exp, "iat": NOW + 61})), &p, NOW),
            Err(ClaimError::IssuedInFuture)
        );
    }

    #[test]
    fn lifetime_cap_needs_iat() {
        let p = provider(r#","maxLifetimeSeconds":3600"#);
        assert_eq!(
            check(&claims(json!({"exp": NOW + 3600, "iat": NOW})), &p, NOW),
            Ok(())
        );
        assert_eq!(
            check(&claims(json!({"exp": NOW + 3601, "iat": NOW})), &p, NOW),
            Err(ClaimError::LifetimeTooLong)
        );
        // Without iat, the lifetime left.
        assert_eq!(check(&claims(json!({"exp": NOW + 3600})), &p, NOW), Ok(()));
        assert_eq!(
            check(&claims(json!({"exp": NOW + 3601})), &p, NOW),
            Err(ClaimError::LifetimeTooLong)
        );
    }

    #[test]
    fn time_claims_beyond_year_9999_are_malformed() {
        let p = provider(r#","maxLifetimeSeconds":0"#);
        for exp in [
            json!(1e30),
            json!(1e300),
            json!(u64::MAX),
            json!(253_402_300_800u64),
        ] {
            let error = check(&claims(json!({ "exp": exp })), &p, NOW).unwrap_err();
            assert_eq!(error, ClaimError::DateOutOfRange("exp"), "{exp}");
            assert_eq!(error.reason().name(), "malformed");
        }
        let huge: Map<String, Value> =
            serde_json::from_str(r#"{"exp": 1000000000000000000000000000000}"#).unwrap();
        assert_eq!(
            check(&huge, &p, NOW),
            Err(ClaimError::DateOutOfRange("exp"))
        );
        for name in ["nbf", "iat"] {
            let c = claims(json!({"exp": NOW + 60, name: 1e20}));
            assert_eq!(check(&c, &p, NOW), Err(ClaimError::DateOutOfRange(name)));
        }
        assert_eq!(
            check(&claims(json!({"exp": 253_402_300_799u64})), &p, NOW),
            Ok(()),
            "year 9999 itself is a date, refused only by the lifetime cap when it is on"
        );
    }

    #[test]
    fn the_lifetime_cap_is_seven_days_unless_configured() {
        let p = provider("");
        assert_eq!(p.max_lifetime_seconds, Some(604_800));
        let week = claims(json!({"exp": NOW + 604_800, "iat": NOW}));
        assert_eq!(check(&week, &p, NOW), Ok(()));
        let longer = claims(json!({"exp": NOW + 604_801, "iat": NOW}));
        assert_eq!(check(&longer, &p, NOW), Err(ClaimError::LifetimeTooLong));
        let off = provider(r#","maxLifetimeSeconds":0"#);
        assert_eq!(off.max_lifetime_seconds, None);
        assert_eq!(check(&longer, &off, NOW), Ok(()));
    }

    #[test]
    fn audience_is_any_of_string_or_list() {
        let p = provider(r#","audiences":["orders","billing"]"#);
        let exp = NOW + 60;
        assert_eq!(
            check(&claims(json!({"exp": exp, "aud": "orders"})), &p, NOW),
            Ok(())
        );
        assert_eq!(
            check(
                &claims(json!({"exp": exp, "aud": ["x", "billing"]})),
                &p,
                NOW
            ),
            Ok(())
        );
        for aud in [
            json!("Orders"),
            json!(["x"]),
            json!(null),
            json!(7),
            json!([]),
            json!([1, "orders"]),
            json!([["orders"]]),
        ] {
            assert_eq!(
                check(&claims(json!({"exp": exp, "aud": aud})), &p, NOW),
                Err(ClaimError::Audience),
                "aud {aud} must be refused"
            );
        }
        assert_eq!(
            check(&claims(json!({"exp": exp})), &p, NOW),
            Err(ClaimError::Audience)
        );
        // No audiences configured: aud is not checked.
        assert_eq!(
            check(
                &claims(json!({"exp": exp, "aud": "any"})),
                &provider(""),
                NOW
            ),
            Ok(())
        );
    }

    #[test]
    fn subject_must_be_a_string_or_null() {
        let p = provider("");
        let exp = NOW + 60;
        assert_eq!(
            check(&claims(json!({"exp": exp, "sub": "u-1"})), &p, NOW),
            Ok(())
        );
        assert_eq!(check(&claims(json!({"exp": exp})), &p, NOW), Ok(()));
        assert_eq!(
            check(&claims(json!({"exp": exp, "sub": null})), &p, NOW),
            Ok(())
        );
        for sub in [json!(1234), json!({"id": 1}), json!(["u-1"]), json!(true)] {
            assert_eq!(
                check(&claims(json!({"exp": exp, "sub": sub})), &p, NOW),
                Err(ClaimError::NotAString("sub")),
                "sub {sub} must be refused"
            );
            assert_eq!(
                check(&claims(json!({"exp": exp, "jti": sub})), &p, NOW),
                Err(ClaimError::NotAString("jti")),
                "jti {sub} must be refused: revocation compares strings"
            );
        }
        assert_eq!(
            ClaimError::NotAString("jti").describe(),
            "token id (jti) is not a string"
        );
    }

    #[test]
    fn revoked_jtis_subjects_and_tokens_issued_before_a_cutoff_are_refused() {
        let p = provider(
            r#","revoked":{"jtis":["j-1"],"subjects":["mallory"],"subjectsIssuedBefore":{"alice":1700000000}}"#,
        );
        let exp = NOW + 60;
        let check_claims = |c: serde_json::Value| check(&claims(c), &p, NOW);
        assert_eq!(
            check_claims(json!({"exp": exp, "jti": "j-1", "sub": "bob"})),
            Err(ClaimError::Revoked)
        );
        assert_eq!(
            check_claims(json!({"exp": exp, "jti": "j-2", "sub": "bob"})),
            Ok(())
        );
        assert_eq!(
            check_claims(json!({"exp": exp, "sub": "mallory"})),
            Err(ClaimError::Revoked)
        );
        assert_eq!(
            check_claims(json!({"exp": exp, "sub": "alice", "iat": NOW - 10})),
            Err(ClaimError::Revoked),
            "issued before the cut-off"
        );
        assert_eq!(
            check_claims(json!({"exp": exp, "sub": "alice", "iat": NOW})),
            Ok(())
        );
        assert_eq!(
            check_claims(json!({"exp": exp, "sub": "alice"})),
            Err(ClaimError::Revoked),
            "no iat: cannot prove it is newer"
        );
        assert_eq!(ClaimError::Revoked.describe(), "token revoked");
    }

    #[test]
    fn issuer_must_be_a_string() {
        assert_eq!(
            issuer(&claims(json!({"iss": "https://a"}))),
            Some("https://a")
        );
        assert_eq!(issuer(&claims(json!({"iss": ["https://a"]}))), None);
        assert_eq!(issuer(&claims(json!({}))), None);
    }
}
