//! The ID token checks of OpenID Connect Core §3.1.3.7 (and §3.2.2.9 `at_hash`), and the
//! logout token rules of Back-Channel Logout 1.0 §2.6, on top of the same parsing
//! (`token::parse`: no `none`, no JWE, no `crit`) and key selection (`verify::verify`: the
//! provider's algorithm allow-list, its keys) as every access token.

use crate::alg::{Alg, AlgSet};
use crate::claims::{numeric_date, ClaimError};
use crate::keys::KeySet;
use crate::reason::LoginReason;
use crate::token::{self, TokenLimits};
use crate::verify;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;
use serde_json::{Map, Value};

/// The `events` member a logout token must carry (Back-Channel Logout 1.0 §2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What the relying party expects of its tokens.
#[derive(Clone, Copy)]
pub struct Expected<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    pub algorithms: AlgSet,
    pub clock_skew_seconds: u64,
    pub limits: TokenLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenError {
    Token(token::TokenError),
    Signature(verify::VerifyError),
    Issuer,
    Audience,
    /// Several audiences and no `azp`, or an `azp` that is not this client.
    AuthorizedParty,
    Time(ClaimError),
    MissingIssuedAt,
    /// No `sub`, or not a string.
    Subject,
    Nonce,
    AccessTokenHash,
    /// A logout token that is not typed `logout+jwt`.
    LogoutType,
    /// A logout token without the back-channel logout event.
    LogoutEvent,
    /// A logout token with neither `sub` nor `sid`.
    LogoutSubject,
    /// A logout token with a `nonce` (so an ID token cannot pass for one).
    LogoutNonce,
    /// A logout token without a `jti`.
    LogoutId,
}

impl IdTokenError {
    /// A stable code for metrics (`login.failed.<reason>`) and audit lines.
    pub fn reason(self) -> LoginReason {
        match self {
            IdTokenError::Token(error) => match error.reason() {
                crate::reason::Reason::Algorithm => LoginReason::IdTokenAlgorithm,
                _ => LoginReason::IdTokenMalformed,
            },
            IdTokenError::Signature(verify::VerifyError::AlgorithmNotAllowed) => {
                LoginReason::IdTokenAlgorithm
            }
            IdTokenError::Signature(verify::VerifyError::UnknownKey) => {
                LoginReason::IdTokenUnknownKey
            }
            IdTokenError::Signature(_) => LoginReason::IdTokenSignature,
            IdTokenError::Issuer => LoginReason::IdTokenIssuer,
            IdTokenError::Audience => LoginReason::IdTokenAudience,
            IdTokenError::AuthorizedParty => LoginReason::IdTokenAzp,
            IdTokenError::Time(ClaimError::Expired) => LoginReason::IdTokenExpired,
            IdTokenError::Time(_) | IdTokenError::MissingIssuedAt => LoginReason::IdTokenTime,
            IdTokenError::Subject => LoginReason::IdTokenSub,
            IdTokenError::Nonce => LoginReason::IdTokenNonce,
            IdTokenError::AccessTokenHash => LoginReason::IdTokenAtHash,
            IdTokenError::LogoutType => LoginReason::LogoutTokenTyp,
            IdTokenError::LogoutEvent => LoginReason::LogoutTokenEvents,
            IdTokenError::LogoutSubject => LoginReason::LogoutTokenSub,
            IdTokenError::LogoutNonce => LoginReason::LogoutTokenNonce,
            IdTokenError::LogoutId => LoginReason::LogoutTokenJti,
        }
    }
}

/// A verified ID token's claims, and the algorithm it was signed with.
pub struct Verified {
    pub alg: Alg,
    pub claims: Map<String, Value>,
}

impl Verified {
    pub fn text(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

/// Signature, `iss`, `aud`/`azp`, `exp`/`iat`, `sub`: what ID and logout tokens share.
fn verify_common(
    raw: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
    now: u64,
) -> Result<(token::Header, Verified), IdTokenError> {
    let jws = token::parse(raw, &expected.limits).map_err(IdTokenError::Token)?;
    verify::verify(
        jws.header.alg,
        jws.header.kid.as_deref(),
        jws.signing_input,
        &jws.signature,
        keys,
        expected.algorithms,
    )
    .map_err(IdTokenError::Signature)?;
    let claims = jws.claims;
    if claims.get("iss").and_then(Value::as_str) != Some(expected.issuer) {
        return Err(IdTokenError::Issuer);
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(list)) => list
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<&str>>>()
            .ok_or(IdTokenError::Audience)?,
        _ => return Err(IdTokenError::Audience),
    };
    if !audiences.contains(&expected.client_id) {
        return Err(IdTokenError::Audience);
    }
    match claims.get("azp") {
        None if audiences.len() > 1 => return Err(IdTokenError::AuthorizedParty),
        None => {}
        Some(azp) if azp.as_str() == Some(expected.client_id) => {}
        Some(_) => return Err(IdTokenError::AuthorizedParty),
    }
    let skew = expected.clock_skew_seconds as f64;
    let now_f = now as f64;
    let exp = numeric_date(&claims, "exp").map_err(IdTokenError::Time)?;
    let iat = numeric_date(&claims, "iat")
        .map_err(IdTokenError::Time)?
        .ok_or(IdTokenError::MissingIssuedAt)?;
    if exp.is_some_and(|exp| now_f >= exp + skew) {
        return Err(IdTokenError::Time(ClaimError::Expired));
    }
    if iat > now_f + skew {
        return Err(IdTokenError::Time(ClaimError::IssuedInFuture));
    }
    if claims.get("sub").is_some_and(|sub| !sub.is_string()) {
        return Err(IdTokenError::Subject);
    }
    let header = jws.header;
    let alg = header.alg;
    Ok((header, Verified { alg, claims }))
}

/// Verifies an ID token from the token endpoint: every §3.1.3.7 check, `nonce` equal to the
/// one this flow sent (when `nonce` is given: a refresh's ID token carries none to compare),
/// and `at_hash` against `access_token` when the token carries one.
pub fn verify_id_token(
    raw: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
    nonce: Option<&str>,
    access_token: Option<&str>,
    now: u64,
) -> Result<Verified, IdTokenError> {
    let (_, verified) = verify_common(raw, keys, expected, now)?;
    let claims = &verified.claims;
    if numeric_date(claims, "exp")
        .map_err(IdTokenError::Time)?
        .is_none()
    {
        return Err(IdTokenError::Time(ClaimError::MissingExp));
    }
    if verified.text("sub").is_none_or(str::is_empty) {
        return Err(IdTokenError::Subject);
    }
    if let Some(nonce) = nonce {
        let matches = verified
            .text("nonce")
            .is_some_and(|sent| super::transaction::same_secret(sent, nonce));
        if !matches {
            return Err(IdTokenError::Nonce);
        }
    }
    if let Some(at_hash) = claims.get("at_hash") {
        let expected_hash = access_token.map(|token| token_hash(verified.alg, token));
        if at_hash.as_str().is_none() || at_hash.as_str() != expected_hash.as_deref() {
            return Err(IdTokenError::AccessTokenHash);
        }
    }
    Ok(verified)
}

/// Verifies a back-channel logout token (Back-Channel Logout 1.0 §2.6).
pub fn verify_logout_token(
    raw: &str,
    keys: &KeySet,
    expected: &Expected<'_>,
    now: u64,
) -> Result<Verified, IdTokenError> {
    let (header, verified) = verify_common(raw, keys, expected, now)?;
    let typed = header.typ.as_deref().is_some_and(|typ| {
        let typ = typ.to_ascii_lowercase();
        typ == "logout+jwt" || typ == "application/logout+jwt"
    });
    if !typed {
        return Err(IdTokenError::LogoutType);
    }
    let claims = &verified.claims;
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err(IdTokenError::LogoutEvent);
    }
    let sid = claims.get("sid");
    if sid.is_some_and(|sid| !sid.is_string()) {
        return Err(IdTokenError::LogoutSubject);
    }
    if verified.text("sub").is_none() && verified.text("sid").is_none() {
        return Err(IdTokenError::LogoutSubject);
    }
    if claims.contains_key("nonce") {
        return Err(IdTokenError::LogoutNonce);
    }
    if verified.text("jti").is_none_or(str::is_empty) {
        return Err(IdTokenError::LogoutId);
    }
    Ok(verified)
}

/// `at_hash`/`c_hash`: the left half of the hash of the token with the hash function of the
/// signing algorithm (SHA-512 for EdDSA with Ed25519), base64url.
pub fn token_hash(alg: Alg, token: &str) -> String {
    let algorithm = match alg {
        Alg::RS384 | Alg::PS384 | Alg::ES384 | Alg::HS384 => &digest::SHA384,
        Alg::RS512 | Alg::PS512 | Alg::HS512 | Alg::EdDSA => &digest::SHA512,
        _ => &digest::SHA256,
    };
    let hash = digest::digest(algorithm, token.as_bytes());
    let bytes = hash.as_ref();
    URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() / 2])
}

#[cfg(test)]
#[path = "id_token_tests.rs"]
mod tests;
