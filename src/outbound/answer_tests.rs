use super::*;
use serde_json::json;

const CC: Expect = Expect::ClientCredentials;
const EXCHANGE: Expect = Expect::Exchange {
    requested_token_type: ACCESS_TOKEN_TYPE,
};
const TXN: Expect = Expect::Exchange {
    requested_token_type: TXN_TOKEN_TYPE,
};

fn answer(status: u32, body: &serde_json::Value, expect: Expect) -> Result<Issued, AnswerError> {
    let body = body.to_string();
    parse_answer(
        &TokenAnswer {
            status: Some(status),
            body: body.as_bytes(),
        },
        expect,
        16 * 1024,
    )
}

#[test]
fn a_client_credentials_answer_gives_token_type_and_lifetime() {
    let issued = answer(
        200,
        &json!({"access_token": "abc.def.ghi", "token_type": "bearer", "expires_in": 300, "scope": "x"}),
        CC,
    )
    .unwrap();
    assert_eq!(issued.access_token, "abc.def.ghi");
    assert_eq!(issued.token_type, TokenType::Bearer);
    assert_eq!(issued.expires_in_seconds, 300);
    assert_eq!(issued.issued_token_type, None);
    let as_string = answer(
        200,
        &json!({"access_token": "t", "token_type": "Bearer", "expires_in": "60"}),
        CC,
    )
    .unwrap();
    assert_eq!(as_string.expires_in_seconds, 60);
    let capped = answer(
        200,
        &json!({"access_token": "t", "token_type": "Bearer", "expires_in": 10_000_000}),
        CC,
    )
    .unwrap();
    assert_eq!(capped.expires_in_seconds, MAX_LIFETIME_SECONDS);
}

#[test]
fn an_exchange_answer_needs_the_issued_token_type_asked_for() {
    let ok = |issued: &str| {
        answer(
            200,
            &json!({"access_token": "t", "token_type": "Bearer", "expires_in": 60,
                    "issued_token_type": issued}),
            EXCHANGE,
        )
    };
    assert_eq!(
        ok(ACCESS_TOKEN_TYPE).unwrap().issued_token_type,
        Some(ACCESS_TOKEN_TYPE)
    );
    assert_eq!(
        ok(JWT_TOKEN_TYPE).unwrap().issued_token_type,
        Some(JWT_TOKEN_TYPE)
    );
    assert_eq!(ok(TXN_TOKEN_TYPE).err(), Some(AnswerError::IssuedTokenType));
    let missing = answer(
        200,
        &json!({"access_token": "t", "token_type": "Bearer", "expires_in": 60}),
        EXCHANGE,
    );
    assert_eq!(missing.err(), Some(AnswerError::IssuedTokenType));
    let txn = answer(
        200,
        &json!({"access_token": "t", "token_type": "N_A", "expires_in": 60,
                "issued_token_type": TXN_TOKEN_TYPE}),
        TXN,
    )
    .unwrap();
    assert_eq!(txn.token_type, TokenType::NotApplicable);
}

#[test]
fn refusals_and_garbage_are_typed_errors() {
    let cases: Vec<(u32, serde_json::Value, Expect, AnswerError)> = vec![
        (
            400,
            json!({"error": "invalid_client", "error_description": "nope"}),
            CC,
            AnswerError::Status(400, Some("invalid_client".into())),
        ),
        (
            500,
            json!({"error": "Bad\nCode"}),
            CC,
            AnswerError::Status(500, None),
        ),
        (
            200,
            json!({"token_type": "Bearer", "expires_in": 60}),
            CC,
            AnswerError::AccessToken,
        ),
        (
            200,
            json!({"access_token": "", "token_type": "Bearer", "expires_in": 60}),
            CC,
            AnswerError::AccessToken,
        ),
        (
            200,
            json!({"access_token": "a\r\nx-evil: 1", "token_type": "Bearer", "expires_in": 60}),
            CC,
            AnswerError::AccessToken,
        ),
        (
            200,
            json!({"access_token": "a b", "token_type": "Bearer", "expires_in": 60}),
            CC,
            AnswerError::AccessToken,
        ),
        (
            200,
            json!({"access_token": 12, "token_type": "Bearer", "expires_in": 60}),
            CC,
            AnswerError::AccessToken,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "DPoP", "expires_in": 60}),
            CC,
            AnswerError::TokenType,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "N_A", "expires_in": 60}),
            CC,
            AnswerError::TokenType,
        ),
        (
            200,
            json!({"access_token": "t", "expires_in": 60}),
            CC,
            AnswerError::TokenType,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "Bearer"}),
            CC,
            AnswerError::ExpiresIn,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": 0}),
            CC,
            AnswerError::ExpiresIn,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": -5}),
            CC,
            AnswerError::ExpiresIn,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": 1.5}),
            CC,
            AnswerError::ExpiresIn,
        ),
        (
            200,
            json!({"access_token": "t", "token_type": "Bearer", "expires_in": "soon"}),
            CC,
            AnswerError::ExpiresIn,
        ),
    ];
    for (status, body, expect, expected) in cases {
        assert_eq!(
            answer(status, &body, expect).err(),
            Some(expected),
            "{body}"
        );
    }
    let raw = |body: &[u8]| {
        parse_answer(
            &TokenAnswer {
                status: Some(200),
                body,
            },
            CC,
            16 * 1024,
        )
        .err()
    };
    assert_eq!(
        raw(b"<html>"),
        Some(AnswerError::NotJson(JsonError::Syntax))
    );
    assert_eq!(
        raw(b"[1]"),
        Some(AnswerError::NotJson(JsonError::NotObject))
    );
    assert_eq!(
        raw(br#"{"access_token":"a","access_token":"b","token_type":"Bearer","expires_in":5}"#),
        Some(AnswerError::NotJson(JsonError::DuplicateMember))
    );
    assert_eq!(
        raw(&vec![b' '; MAX_ANSWER_BYTES + 1]),
        Some(AnswerError::TooLarge)
    );
    let none = parse_answer(
        &TokenAnswer {
            status: None,
            body: b"",
        },
        CC,
        10,
    );
    assert_eq!(none.err(), Some(AnswerError::NoAnswer));
    let too_long = answer(
        200,
        &json!({"access_token": "x".repeat(17 * 1024), "token_type": "Bearer", "expires_in": 5}),
        CC,
    );
    assert_eq!(too_long.err(), Some(AnswerError::AccessToken));
}

#[test]
fn descriptions_never_echo_the_body() {
    let err = answer(
        400,
        &json!({"error": "invalid_grant", "error_description": "secret-ish"}),
        CC,
    )
    .err()
    .unwrap();
    assert_eq!(
        err.describe(),
        "the token endpoint answered 400 (invalid_grant)"
    );
    assert_eq!(err.reason().name(), "token_endpoint_status");
}
