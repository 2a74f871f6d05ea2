//! Token endpoint answers (RFC 6749 §5.1/§5.2, RFC 8693 §2.2), parsed strictly: whatever
//! the server sends, the result is an issued token fit for a header or a typed error.

use super::refusal::Refusal;
use super::request::{ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TXN_TOKEN_TYPE};
use crate::json::{self, JsonError, JsonLimits};
use serde_json::Value;

/// A token endpoint answer is a few kilobytes; more is not one.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// No token is cached for longer than a day, whatever `expires_in` says.
pub const MAX_LIFETIME_SECONDS: u64 = 24 * 3600;
const ANSWER_JSON_LIMITS: JsonLimits = JsonLimits {
    max_depth: 8,
    max_members: 256,
};

/// A dispatched call's answer as the host gave it; `status` is `None` when the call failed.
pub struct TokenAnswer<'a> {
    pub status: Option<u32>,
    pub body: &'a [u8],
}

/// What was asked for, so the answer can be checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    ClientCredentials,
    /// RFC 8693: `issued_token_type` is required and must be the requested kind.
    Exchange {
        requested_token_type: &'static str,
    },
}

/// An issued token. Deliberately not `Debug`: it is a credential.
pub struct Issued {
    pub access_token: String,
    pub token_type: TokenType,
    pub expires_in_seconds: u64,
    pub issued_token_type: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Bearer,
    /// RFC 8693 §2.2.1 `N_A`: not an access token (a transaction token, for one).
    NotApplicable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerError {
    /// Reset, refused, timed out: no HTTP answer.
    NoAnswer,
    /// Any status but 200; with the OAuth `error` code when the body gave a clean one.
    Status(u32, Option<String>),
    TooLarge,
    NotJson(JsonError),
    /// `access_token` missing, not a string, empty, too large or not fit for a header.
    AccessToken,
    /// `token_type` missing or neither `Bearer` nor (for an exchange) `N_A`.
    TokenType,
    /// `expires_in` missing, not a positive whole number: a token whose end is unknown is
    /// never cached nor attached.
    ExpiresIn,
    /// An exchange's `issued_token_type` missing or not what was asked for.
    IssuedTokenType,
}

impl AnswerError {
    /// The metric / audit reason.
    pub fn reason(&self) -> Refusal {
        match self {
            AnswerError::NoAnswer => Refusal::TokenEndpointUnreachable,
            AnswerError::Status(..) => Refusal::TokenEndpointStatus,
            AnswerError::TooLarge
            | AnswerError::NotJson(_)
            | AnswerError::AccessToken
            | AnswerError::TokenType
            | AnswerError::ExpiresIn
            | AnswerError::IssuedTokenType => Refusal::TokenEndpointAnswer,
        }
    }

    /// For a log line: the cause, never the body.
    pub fn describe(&self) -> String {
        match self {
            AnswerError::NoAnswer => "the token endpoint did not answer".to_owned(),
            AnswerError::Status(status, Some(code)) => {
                format!("the token endpoint answered {status} ({code})")
            }
            AnswerError::Status(status, None) => format!("the token endpoint answered {status}"),
            AnswerError::TooLarge => "the token endpoint's answer is too large".to_owned(),
            AnswerError::NotJson(e) => format!("the token endpoint's answer is {}", e.describe()),
            AnswerError::AccessToken => "the answer has no usable access_token".to_owned(),
            AnswerError::TokenType => "the answer's token_type is not Bearer".to_owned(),
            AnswerError::ExpiresIn => "the answer has no usable expires_in".to_owned(),
            AnswerError::IssuedTokenType => {
                "the answer's issued_token_type is not the type asked for".to_owned()
            }
        }
    }
}

/// Parses a token endpoint answer. `max_token_bytes`: the largest token accepted.
pub fn parse_answer(
    answer: &TokenAnswer<'_>,
    expect: Expect,
    max_token_bytes: usize,
) -> Result<Issued, AnswerError> {
    let status = answer.status.ok_or(AnswerError::NoAnswer)?;
    if answer.body.len() > MAX_ANSWER_BYTES {
        return Err(match status {
            200 => AnswerError::TooLarge,
            _ => AnswerError::Status(status, None),
        });
    }
    if status != 200 {
        return Err(AnswerError::Status(status, error_code(answer.body)));
    }
    let body = json::parse_object(answer.body, ANSWER_JSON_LIMITS).map_err(AnswerError::NotJson)?;
    let access_token = match body.get("access_token") {
        Some(Value::String(token))
            if !token.is_empty()
                && token.len() <= max_token_bytes
                // It becomes a header value: visible ASCII only, so nothing can be injected.
                && token.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            token.clone()
        }
        _ => return Err(AnswerError::AccessToken),
    };
    let token_type = match body.get("token_type").and_then(Value::as_str) {
        Some(kind) if kind.eq_ignore_ascii_case("bearer") => TokenType::Bearer,
        Some("N_A") if matches!(expect, Expect::Exchange { .. }) => TokenType::NotApplicable,
        _ => return Err(AnswerError::TokenType),
    };
    let expires_in_seconds = match body.get("expires_in") {
        Some(Value::Number(number)) => number.as_u64(),
        // Some servers send it as a string of digits; the value is the same.
        Some(Value::String(text)) if text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok(),
        _ => None,
    }
    .filter(|seconds| *seconds > 0)
    .ok_or(AnswerError::ExpiresIn)?
    .min(MAX_LIFETIME_SECONDS);
    let issued_token_type = match expect {
        Expect::ClientCredentials => None,
        Expect::Exchange {
            requested_token_type,
        } => {
            let issued = body.get("issued_token_type").and_then(Value::as_str);
            let accepted: &[&'static str] = if requested_token_type == ACCESS_TOKEN_TYPE {
                // An access token that is a JWT may be labelled as either.
                &[ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE]
            } else {
                &[TXN_TOKEN_TYPE]
            };
            Some(
                accepted
                    .iter()
                    .copied()
                    .find(|kind| Some(*kind) == issued)
                    .ok_or(AnswerError::IssuedTokenType)?,
            )
        }
    };
    Ok(Issued {
        access_token,
        token_type,
        expires_in_seconds,
        issued_token_type,
    })
}

/// RFC 6749 §5.2 `error`: kept for the log only when it is a plain code.
fn error_code(body: &[u8]) -> Option<String> {
    let body = json::parse_object(body, ANSWER_JSON_LIMITS).ok()?;
    let code = body.get("error")?.as_str()?;
    let plain = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    plain.then(|| code.to_owned())
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
