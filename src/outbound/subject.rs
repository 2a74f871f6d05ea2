//! The subject token of a token exchange: the app's `Authorization: Bearer` token. It is not
//! verified here (the authorization server does that); it is read only to refuse early what
//! the server would refuse — an expired token, a `may_act` naming someone else — and to cap
//! the exchanged token's life at the subject's.

use super::refusal::Refusal;
use crate::json::{self, JsonLimits};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

/// Generous: only the claims below are read.
const SUBJECT_JSON_LIMITS: JsonLimits = JsonLimits {
    max_depth: 16,
    max_members: 1024,
};

/// What was read from a subject token. Not `Debug`: `token` is a credential.
pub struct Subject<'a> {
    pub token: &'a str,
    /// For the audit line only.
    pub sub: Option<String>,
    pub exp_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectRefusal {
    /// No `Authorization: Bearer` token, or more than one `Authorization` header.
    Missing,
    Expired,
    /// A JWT whose `exp` or `may_act` is not what the specs allow.
    Malformed,
    /// RFC 8693 §4.4: `may_act` does not name this client.
    MayAct,
}

impl SubjectRefusal {
    pub fn reason(self) -> Refusal {
        match self {
            SubjectRefusal::Missing => Refusal::MissingSubject,
            SubjectRefusal::Expired => Refusal::SubjectExpired,
            SubjectRefusal::Malformed => Refusal::SubjectMalformed,
            SubjectRefusal::MayAct => Refusal::MayAct,
        }
    }
}

/// The bearer token of the request's one `Authorization` header, if it has one.
pub fn bearer<'a>(headers: &[(&str, &'a str)]) -> Result<&'a str, SubjectRefusal> {
    let mut values = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| *value);
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(SubjectRefusal::Missing);
    };
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(SubjectRefusal::Missing)?;
    let token = token.trim_start();
    let usable = scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.bytes().all(|b| (0x21..=0x7e).contains(&b));
    usable.then_some(token).ok_or(SubjectRefusal::Missing)
}

/// Reads `sub`, `exp` and `may_act` of a JWT subject token; an opaque token has none of them.
/// `client_id` and `issuer`: who would act, for `may_act`.
pub fn read<'a>(
    token: &'a str,
    now_s: u64,
    client_id: &str,
    issuer: &str,
) -> Result<Subject<'a>, SubjectRefusal> {
    let Some(claims) = jwt_claims(token) else {
        return Ok(Subject {
            token,
            sub: None,
            exp_s: None,
        });
    };
    let exp_s = match claims.get("exp") {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_f64().filter(|v| *v >= 0.0).map(|v| v as u64))
                .ok_or(SubjectRefusal::Malformed)?,
        ),
        Some(_) => return Err(SubjectRefusal::Malformed),
    };
    if exp_s.is_some_and(|exp| exp <= now_s) {
        return Err(SubjectRefusal::Expired);
    }
    if let Some(may_act) = claims.get("may_act") {
        let may_act = may_act.as_object().ok_or(SubjectRefusal::Malformed)?;
        let names_us = may_act.get("sub").and_then(Value::as_str) == Some(client_id)
            && may_act
                .get("iss")
                .is_none_or(|iss| iss.as_str() == Some(issuer));
        if !names_us {
            return Err(SubjectRefusal::MayAct);
        }
    }
    let sub = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    Ok(Subject { token, sub, exp_s })
}

/// The payload of a compact JWS, when it is one whose payload is a JSON object.
fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    json::parse_object(&bytes, SUBJECT_JSON_LIMITS).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_700_000_000;

    fn jwt(claims: Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn check(claims: Value) -> Result<(Option<String>, Option<u64>), SubjectRefusal> {
        let token = jwt(claims);
        read(&token, NOW, "agent", "https://idp.example.com").map(|s| (s.sub, s.exp_s))
    }

    #[test]
    fn the_bearer_token_of_one_authorization_header() {
        assert_eq!(bearer(&[("authorization", "Bearer abc")]), Ok("abc"));
        assert_eq!(bearer(&[("Authorization", "bearer   abc")]), Ok("abc"));
        for headers in [
            vec![],
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            vec![("authorization", "Bearer")],
            vec![("authorization", "Bearer a b")],
            vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
            vec![("x-token", "Bearer a")],
        ] {
            assert_eq!(
                bearer(&headers),
                Err(SubjectRefusal::Missing),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn a_current_subject_gives_its_sub_and_exp() {
        assert_eq!(
            check(json!({"sub": "alice", "exp": NOW + 60})),
            Ok((Some("alice".into()), Some(NOW + 60)))
        );
        let opaque = read("opaque-token", NOW, "agent", "x").unwrap();
        assert_eq!((opaque.sub, opaque.exp_s), (None, None));
    }

    #[test]
    fn an_expired_or_malformed_subject_is_refused() {
        assert_eq!(check(json!({"exp": NOW})), Err(SubjectRefusal::Expired));
        assert_eq!(check(json!({"exp": NOW - 1})), Err(SubjectRefusal::Expired));
        assert_eq!(
            check(json!({"exp": "tomorrow"})),
            Err(SubjectRefusal::Malformed)
        );
        assert_eq!(check(json!({"exp": -5})), Err(SubjectRefusal::Malformed));
        assert_eq!(
            check(json!({"may_act": "agent"})),
            Err(SubjectRefusal::Malformed)
        );
    }

    #[test]
    fn may_act_must_name_this_client_of_this_issuer() {
        assert!(check(json!({"may_act": {"sub": "agent"}})).is_ok());
        assert!(
            check(json!({"may_act": {"sub": "agent", "iss": "https://idp.example.com"}})).is_ok()
        );
        assert_eq!(
            check(json!({"may_act": {"sub": "other-agent"}})),
            Err(SubjectRefusal::MayAct)
        );
        assert_eq!(
            check(json!({"may_act": {"sub": "agent", "iss": "https://evil.example.com"}})),
            Err(SubjectRefusal::MayAct)
        );
        assert_eq!(check(json!({"may_act": {}})), Err(SubjectRefusal::MayAct));
    }
}
