//! Calls to the token endpoint (RFC 6749 §4.1.3 code redemption, §6 refresh) with the
//! configured client authentication, and reading their answers.

use super::endpoints::Endpoints;
use super::flow::{Context, Flow};
use super::form;
use super::id_token::{self, Verified};
use super::session::Session;
use crate::client_auth::{self, Credentials, Signer};
use crate::config::{ClientAuth, Forward, HttpTarget};
use crate::reason::LoginReason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

/// Random bytes for a client assertion's `jti`.
pub const CLIENT_ASSERTION_RANDOM_LEN: usize = client_auth::JTI_LEN;
/// A token answer larger than this is refused unread.
pub const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// A `POST` to the token endpoint. Never `Debug`: the body holds a code or refresh token and
/// the headers may hold the client secret.
pub struct TokenCall {
    pub target: HttpTarget,
    /// Besides `:method`, `:path` and `:authority` (from `target`).
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout_ms: u64,
}

/// The members of a token answer the flow uses.
pub(super) struct Tokens {
    pub access_token: Option<String>,
    pub id_token: Option<String>,
    pub refresh_token: Option<String>,
    pub expires_in: Option<u64>,
}

impl Flow {
    pub(super) fn code_call(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        endpoints: &Endpoints,
        ctx: &mut Context<'_>,
    ) -> TokenCall {
        let params = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        self.token_call(&params, endpoints, ctx)
    }

    pub(super) fn refresh_call(
        &self,
        refresh_token: &str,
        endpoints: &Endpoints,
        ctx: &mut Context<'_>,
    ) -> TokenCall {
        let params = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ];
        self.token_call(&params, endpoints, ctx)
    }

    fn token_call(
        &self,
        params: &[(&str, &str)],
        endpoints: &Endpoints,
        ctx: &mut Context<'_>,
    ) -> TokenCall {
        let mut params: Vec<(&str, &str)> = params.to_vec();
        let mut headers = vec![
            (
                "content-type".to_owned(),
                "application/x-www-form-urlencoded".to_owned(),
            ),
            ("accept".to_owned(), "application/json".to_owned()),
        ];
        let mut jti = [0u8; CLIENT_ASSERTION_RANDOM_LEN];
        if matches!(self.login.client_auth, ClientAuth::PrivateKeyJwt(_)) {
            (ctx.random)(&mut jti);
        }
        let signer = match &self.login.client_auth {
            ClientAuth::PrivateKeyJwt(key) => Signer::new(key),
            _ => None,
        };
        // A key that will not sign (parsing checked it) sends no credentials: the OP refuses.
        let credentials = client_auth::credentials(
            &self.login.client_auth,
            &self.login.client_id,
            signer.as_ref(),
            &self.issuer,
            &endpoints.token.url,
            ctx.now,
            jti,
        )
        .unwrap_or(Credentials {
            authorization: None,
            params: Vec::new(),
        });
        if let Some(authorization) = credentials.authorization {
            headers.push(("authorization".to_owned(), authorization));
        }
        params.extend(
            credentials
                .params
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        );
        TokenCall {
            target: endpoints.token.clone(),
            headers,
            body: form::encode(&params),
            timeout_ms: self.timeout_ms(),
        }
    }

    /// The token answer's members, or why it is no success (a metric reason).
    pub(super) fn token_answer(
        &self,
        status: Option<u32>,
        body: &[u8],
    ) -> Result<Tokens, LoginReason> {
        match status {
            None => return Err(LoginReason::TokenEndpoint),
            Some(status) if status >= 500 => return Err(LoginReason::TokenEndpoint),
            Some(200) => {}
            Some(_) => return Err(LoginReason::TokenRefused),
        }
        if body.len() > MAX_TOKEN_ANSWER_BYTES {
            return Err(LoginReason::TokenAnswer);
        }
        let answer = crate::json::parse_object(body, self.expected().limits.json)
            .map_err(|_| LoginReason::TokenAnswer)?;
        let text = |name: &str| -> Result<Option<String>, LoginReason> {
            match answer.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) if !text.is_empty() => Ok(Some(text.clone())),
                Some(_) => Err(LoginReason::TokenAnswer),
            }
        };
        let token_type = text("token_type")?;
        let access_token = text("access_token")?;
        // Only a bearer token can be forwarded as one (a DPoP-bound token needs its key).
        if access_token.is_some()
            && !token_type.is_some_and(|kind| kind.eq_ignore_ascii_case("bearer"))
        {
            return Err(LoginReason::TokenType);
        }
        Ok(Tokens {
            access_token,
            id_token: text("id_token")?,
            refresh_token: text("refresh_token")?,
            expires_in: answer.get("expires_in").and_then(Value::as_u64),
        })
    }

    /// The session a verified login makes; `None` when the token to forward is missing.
    pub(super) fn new_session(
        &self,
        tokens: &Tokens,
        id_token: &Verified,
        now: u64,
    ) -> Option<Session> {
        let id_raw = tokens.id_token.clone()?;
        let id_raw_kept = Some(id_raw.clone());
        let id_exp = id_token.claims.get("exp").and_then(Value::as_u64);
        let (token, expires_at) = self.forwarded(tokens, id_raw, id_exp, now)?;
        Some(Session {
            token,
            refresh_token: tokens.refresh_token.clone(),
            sub: id_token.text("sub").unwrap_or_default().to_owned(),
            sid: id_token.text("sid").map(str::to_owned),
            token_expires_at: expires_at,
            authenticated_at: now,
            refreshed_at: now,
            id_token_hint: self.login.keeps_id_token().then_some(id_raw_kept).flatten(),
        })
    }

    /// The token to forward and when it expires.
    fn forwarded(
        &self,
        tokens: &Tokens,
        id_raw: String,
        id_exp: Option<u64>,
        now: u64,
    ) -> Option<(String, u64)> {
        match self.login.forward {
            Forward::IdToken => Some((id_raw, id_exp.unwrap_or(now + DEFAULT_SECONDS))),
            Forward::AccessToken => {
                let access = tokens.access_token.clone()?;
                let expires_at = tokens
                    .expires_in
                    .map(|seconds| now.saturating_add(seconds))
                    .or_else(|| unverified_exp(&access))
                    .or(id_exp)
                    .unwrap_or(now + DEFAULT_SECONDS);
                Some((access, expires_at))
            }
        }
    }

    /// The session after a refresh answer, or why the refresh failed.
    pub(super) fn refreshed(
        &self,
        session: &Session,
        status: Option<u32>,
        body: &[u8],
        ctx: &Context<'_>,
    ) -> Result<Session, LoginReason> {
        let tokens = self.token_answer(status, body)?;
        let mut id_exp = None;
        let mut sid = session.sid.clone();
        if let Some(raw) = tokens.id_token.as_deref() {
            let keys = ctx.keys.ok_or(LoginReason::KeysUnavailable)?;
            let verified = id_token::verify_id_token(
                raw,
                keys,
                &self.expected(),
                None,
                tokens.access_token.as_deref(),
                ctx.now,
            )
            .map_err(id_token::IdTokenError::reason)?;
            // OIDC Core §12.2: a refreshed ID token is about the same person.
            if verified.text("sub") != Some(session.sub.as_str()) {
                return Err(LoginReason::IdTokenSub);
            }
            id_exp = verified.claims.get("exp").and_then(Value::as_u64);
            sid = verified.text("sid").map(str::to_owned).or(sid);
        }
        let id_raw = match (&tokens.id_token, self.login.forward) {
            (Some(raw), _) => raw.clone(),
            // Forwarding ID tokens and none came back: nothing new to forward.
            (None, Forward::IdToken) => return Err(LoginReason::IdTokenMissing),
            (None, Forward::AccessToken) => String::new(),
        };
        let (token, token_expires_at) = self
            .forwarded(&tokens, id_raw, id_exp, ctx.now)
            .ok_or(LoginReason::AccessTokenMissing)?;
        Ok(Session {
            token,
            // No new refresh token: the old one stays valid (RFC 6749 §6).
            refresh_token: tokens
                .refresh_token
                .or_else(|| session.refresh_token.clone()),
            sub: session.sub.clone(),
            sid,
            token_expires_at,
            authenticated_at: session.authenticated_at,
            refreshed_at: ctx.now,
            // A refresh without a new ID token keeps the one the session has.
            id_token_hint: match self.login.keeps_id_token() {
                true => tokens.id_token.or_else(|| session.id_token_hint.clone()),
                false => None,
            },
        })
    }
}

const DEFAULT_SECONDS: u64 = super::flow::DEFAULT_TOKEN_SECONDS;

/// The `exp` of a JWT access token, read without verifying it: only to schedule the refresh
/// (the pipeline verifies the token on every request).
fn unverified_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
}
