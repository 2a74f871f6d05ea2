#![allow(clippy::unwrap_used)]

use super::*;
use crate::login::testing::*;
use serde_json::json;

fn expected() -> Expected<'static> {
    Expected {
        issuer: ISSUER,
        client_id: CLIENT,
        algorithms: [Alg::RS256, Alg::PS256, Alg::ES256].into_iter().collect(),
        clock_skew_seconds: 60,
        limits: TokenLimits {
            max_token_bytes: 16 * 1024,
            json: crate::json::JsonLimits {
                max_depth: 16,
                max_members: 256,
            },
        },
    }
}

fn check(op: &Op, raw: &str) -> Result<(), IdTokenError> {
    verify_id_token(raw, &op.keys, &expected(), Some("the-nonce"), None, NOW).map(|_| ())
}

fn refused(op: &Op, patch: serde_json::Value) -> Result<(), IdTokenError> {
    check(op, &op.id_token(patch))
}

#[test]
fn a_good_id_token_passes_with_its_claims() {
    let op = Op::new();
    let verified = verify_id_token(
        &op.id_token(json!({})),
        &op.keys,
        &expected(),
        Some("the-nonce"),
        None,
        NOW,
    )
    .unwrap();
    assert_eq!(verified.text("sub"), Some("alice"));
    assert_eq!(verified.text("sid"), Some("op-session-1"));
    assert_eq!(verified.alg, Alg::RS256);
}

#[test]
fn issuer_must_match_exactly() {
    let op = Op::new();
    for iss in [
        json!("https://op.example.com/"),
        json!("https://OP.example.com"),
        json!(null),
        json!(1),
    ] {
        assert_eq!(
            refused(&op, json!({"iss": iss})),
            Err(IdTokenError::Issuer),
            "{iss}"
        );
    }
}

#[test]
fn audience_must_name_the_client_and_azp_decides_among_several() {
    let op = Op::new();
    assert_eq!(
        refused(&op, json!({"aud": "other"})),
        Err(IdTokenError::Audience)
    );
    assert_eq!(
        refused(&op, json!({"aud": null})),
        Err(IdTokenError::Audience)
    );
    assert_eq!(
        refused(&op, json!({"aud": [CLIENT, 1]})),
        Err(IdTokenError::Audience)
    );
    assert_eq!(refused(&op, json!({"aud": [CLIENT]})), Ok(()));
    assert_eq!(
        refused(&op, json!({"aud": [CLIENT, "api"]})),
        Err(IdTokenError::AuthorizedParty)
    );
    assert_eq!(
        refused(&op, json!({"aud": [CLIENT, "api"], "azp": CLIENT})),
        Ok(())
    );
    assert_eq!(
        refused(&op, json!({"aud": [CLIENT, "api"], "azp": "api"})),
        Err(IdTokenError::AuthorizedParty)
    );
    assert_eq!(
        refused(&op, json!({"azp": "api"})),
        Err(IdTokenError::AuthorizedParty)
    );
}

#[test]
fn times_are_checked_with_the_skew() {
    let op = Op::new();
    assert_eq!(
        refused(&op, json!({"exp": NOW - 61})),
        Err(IdTokenError::Time(ClaimError::Expired))
    );
    assert_eq!(refused(&op, json!({"exp": NOW - 59})), Ok(()));
    assert_eq!(
        refused(&op, json!({"exp": null})),
        Err(IdTokenError::Time(ClaimError::MissingExp))
    );
    assert_eq!(
        refused(&op, json!({"iat": null})),
        Err(IdTokenError::MissingIssuedAt)
    );
    assert_eq!(
        refused(&op, json!({"iat": NOW + 61})),
        Err(IdTokenError::Time(ClaimError::IssuedInFuture))
    );
    assert_eq!(
        refused(&op, json!({"exp": "soon"})),
        Err(IdTokenError::Time(ClaimError::NotNumericDate("exp")))
    );
}

#[test]
fn nonce_and_subject_are_required() {
    let op = Op::new();
    assert_eq!(
        refused(&op, json!({"nonce": "other"})),
        Err(IdTokenError::Nonce)
    );
    assert_eq!(
        refused(&op, json!({"nonce": null})),
        Err(IdTokenError::Nonce)
    );
    assert_eq!(
        refused(&op, json!({"sub": null})),
        Err(IdTokenError::Subject)
    );
    assert_eq!(refused(&op, json!({"sub": 7})), Err(IdTokenError::Subject));
    // A refreshed ID token has no nonce to compare.
    let raw = op.id_token(json!({"nonce": null}));
    assert!(verify_id_token(&raw, &op.keys, &expected(), None, None, NOW).is_ok());
}

#[test]
fn at_hash_is_checked_when_present() {
    let op = Op::new();
    // OIDC Core §A.3's example: at_hash of this access token with RS256.
    assert_eq!(
        token_hash(Alg::RS256, "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"),
        "77QmUPtjPfzWtF2AnpK9RQ"
    );
    let raw = op.id_token(json!({"at_hash": token_hash(Alg::RS256, "the-access-token")}));
    let verify = |access: Option<&str>| {
        verify_id_token(&raw, &op.keys, &expected(), Some("the-nonce"), access, NOW).map(|_| ())
    };
    assert_eq!(verify(Some("the-access-token")), Ok(()));
    assert_eq!(
        verify(Some("another-token")),
        Err(IdTokenError::AccessTokenHash)
    );
    assert_eq!(verify(None), Err(IdTokenError::AccessTokenHash));
}

#[test]
fn algorithm_signature_and_key_are_checked() {
    let op = Op::new();
    let good = op.id_token(json!({}));
    // A flipped bit in the signature.
    let mut flipped = good.clone().into_bytes();
    let last = flipped.len() - 3;
    flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    assert_eq!(
        check(&op, &flipped),
        Err(IdTokenError::Signature(verify::VerifyError::BadSignature))
    );
    // alg none, in the classic unsigned form.
    let (input, _) = good.rsplit_once('.').unwrap();
    let (_, payload) = input.split_once('.').unwrap();
    let none = format!("{}.{payload}.", b64url(br#"{"alg":"none"}"#));
    assert_eq!(
        check(&op, &none),
        Err(IdTokenError::Token(token::TokenError::Unsecured))
    );
    // HS256 "signed" with the RSA public key: not in the allow-list, and no key would fit.
    let modulus = op.key.jwk(None)["n"].as_str().unwrap().to_owned();
    let hmac_with_public_key = crate::keys::testing::TestKey::oct(modulus.as_bytes());
    let claims = op.id_token(json!({}));
    let payload = claims.split('.').nth(1).unwrap();
    let input = format!("{}.{payload}", b64url(br#"{"alg":"HS256","kid":"op-1"}"#));
    let hs = format!(
        "{input}.{}",
        b64url(&hmac_with_public_key.sign(Alg::HS256, input.as_bytes()))
    );
    assert_eq!(
        check(&op, &hs).map_err(|e| IdTokenError::reason(e).name()),
        Err("id_token_algorithm")
    );
    let mut all = expected();
    all.algorithms = AlgSet::all();
    let verdict = verify_id_token(&hs, &op.keys, &all, Some("the-nonce"), None, NOW).map(|_| ());
    assert_eq!(
        verdict,
        Err(IdTokenError::Signature(
            verify::VerifyError::KeyAlgorithmMismatch
        ))
    );
    // An unknown kid.
    let unknown = op.sign(
        &json!({"alg": "RS256", "kid": "other"}),
        &json!({"iss": ISSUER, "aud": CLIENT, "sub": "a", "iat": NOW, "exp": NOW + 60, "nonce": "the-nonce"}),
    );
    assert_eq!(
        check(&op, &unknown).map_err(|e| IdTokenError::reason(e).name()),
        Err("id_token_unknown_key")
    );
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn logout(op: &Op, raw: &str) -> Result<(), IdTokenError> {
    verify_logout_token(raw, &op.keys, &expected(), NOW).map(|_| ())
}

#[test]
fn a_good_logout_token_passes_in_either_typ_spelling() {
    let op = Op::new();
    for typ in ["logout+jwt", "application/logout+jwt", "Logout+JWT"] {
        assert_eq!(
            logout(&op, &op.logout_token(json!({}), Some(typ))),
            Ok(()),
            "{typ}"
        );
    }
    assert_eq!(
        logout(
            &op,
            &op.logout_token(json!({"sid": null}), Some("logout+jwt"))
        ),
        Ok(())
    );
    assert_eq!(
        logout(
            &op,
            &op.logout_token(json!({"sub": null}), Some("logout+jwt"))
        ),
        Ok(())
    );
}

#[test]
fn each_logout_token_rule_refuses() {
    let op = Op::new();
    let typed = |patch| op.logout_token(patch, Some("logout+jwt"));
    let cases = [
        (op.logout_token(json!({}), None), IdTokenError::LogoutType),
        (
            op.logout_token(json!({}), Some("JWT")),
            IdTokenError::LogoutType,
        ),
        (typed(json!({"events": null})), IdTokenError::LogoutEvent),
        (typed(json!({"events": {}})), IdTokenError::LogoutEvent),
        (
            typed(json!({"events": {BACKCHANNEL_LOGOUT_EVENT: "yes"}})),
            IdTokenError::LogoutEvent,
        ),
        (
            typed(json!({"sub": null, "sid": null})),
            IdTokenError::LogoutSubject,
        ),
        (typed(json!({"sid": 5})), IdTokenError::LogoutSubject),
        (typed(json!({"nonce": "n"})), IdTokenError::LogoutNonce),
        (typed(json!({"jti": null})), IdTokenError::LogoutId),
        (
            typed(json!({"iss": "https://evil.example"})),
            IdTokenError::Issuer,
        ),
        (typed(json!({"aud": "other"})), IdTokenError::Audience),
        (
            typed(json!({"exp": NOW - 100})),
            IdTokenError::Time(ClaimError::Expired),
        ),
        (typed(json!({"iat": null})), IdTokenError::MissingIssuedAt),
    ];
    for (raw, error) in cases {
        assert_eq!(logout(&op, &raw), Err(error), "{error:?}");
    }
    // An ID token is no logout token.
    assert_eq!(
        logout(&op, &op.id_token(json!({}))),
        Err(IdTokenError::LogoutType)
    );
}
