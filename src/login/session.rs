//! What a session cookie holds: only what later requests need — the token to forward, the
//! refresh token, `sub`/`sid` (for back-channel logout), and the times that decide refreshes.

use super::cookies::{self, SESSION_COOKIE};
use super::seal::{Binding, KeyRing, OpenError, Opened, SEAL_RANDOM_LEN};
use crate::reason::LoginReason;
use serde::{Deserialize, Serialize};

/// Never `Debug`: it holds tokens.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token forwarded as `Authorization: Bearer`.
    #[serde(rename = "t")]
    pub token: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(rename = "s")]
    pub sub: String,
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When the forwarded token expires (Unix seconds).
    #[serde(rename = "e")]
    pub token_expires_at: u64,
    /// When the user logged in: a back-channel logout by `sub` ends sessions older than it,
    /// and `sessionMaxAgeSeconds` counts from it.
    #[serde(rename = "a")]
    pub authenticated_at: u64,
    /// When the tokens were last obtained (login or refresh): `sessionRecheckSeconds` counts
    /// from it.
    #[serde(rename = "f")]
    pub refreshed_at: u64,
    /// The latest ID token, kept only for the end-session redirect's `id_token_hint`
    /// (`logoutHint: "id_token"` while access tokens are forwarded).
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub id_token_hint: Option<String>,
}

/// Why a request's session cookie is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    Chunks(cookies::ChunkError),
    Open(OpenError),
}

impl SessionError {
    pub fn reason(self) -> LoginReason {
        match self {
            SessionError::Chunks(_) => LoginReason::Chunks,
            SessionError::Open(error) => error.reason(),
        }
    }
}

impl Session {
    /// Seals the session for `host` until `expires_at`; `None` when it needs more chunks than
    /// a browser should carry.
    pub fn seal(
        &self,
        keys: &KeyRing,
        host: &str,
        expires_at: u64,
        random: [u8; SEAL_RANDOM_LEN],
    ) -> Option<Vec<(String, String)>> {
        cookies::chunk(&self.sealed(keys, host, expires_at, random)?)
    }

    /// The session sealed as one value (what its chunks join to).
    pub fn sealed(
        &self,
        keys: &KeyRing,
        host: &str,
        expires_at: u64,
        random: [u8; SEAL_RANDOM_LEN],
    ) -> Option<String> {
        let plaintext = serde_json::to_vec(self).ok()?;
        Some(keys.seal(&plaintext, expires_at, binding(host), random))
    }

    /// The session in a `Cookie` header, `Ok(None)` when there is none.
    pub fn from_cookies(
        header: Option<&str>,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<Option<Session>, SessionError> {
        let Some(sealed) = cookies::session_value(header).map_err(SessionError::Chunks)? else {
            return Ok(None);
        };
        Session::open(&sealed, keys, host, now).map(Some)
    }

    /// A sealed session value (the chunks joined).
    pub fn open(
        sealed: &str,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<Session, SessionError> {
        Session::open_until(sealed, keys, host, now).map(|(session, _)| session)
    }

    /// [`Session::open`], with when the seal ends (how long the session cache keeps it).
    pub(super) fn open_until(
        sealed: &str,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<(Session, u64), SessionError> {
        let opened = keys
            .open_at_any_time(sealed, binding(host))
            .map_err(SessionError::Open)?;
        if now >= opened.expires_at {
            return Err(SessionError::Open(OpenError::Expired));
        }
        Ok((
            Session::from_plaintext(&opened.plaintext)?,
            opened.expires_at,
        ))
    }

    /// A sealed session value opened whatever its expiry, with what opened it: `explain`
    /// reports it; the filter uses [`Session::open`].
    pub fn inspect(
        sealed: &str,
        keys: &KeyRing,
        host: &str,
    ) -> Result<(Session, Opened), SessionError> {
        let opened = keys
            .open_at_any_time(sealed, binding(host))
            .map_err(SessionError::Open)?;
        Ok((Session::from_plaintext(&opened.plaintext)?, opened))
    }

    pub(super) fn from_plaintext(plaintext: &[u8]) -> Result<Session, SessionError> {
        serde_json::from_slice(plaintext).map_err(|_| SessionError::Open(OpenError::Malformed))
    }

    /// The name a refresh of this session goes by in the sidecar's shared data: a digest of
    /// its refresh token, never the token.
    pub fn refresh_key(&self) -> Option<String> {
        use base64::Engine as _;
        let token = self.refresh_token.as_deref()?;
        let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash.as_ref()[..18]))
    }
}

/// What a session cookie's seal is bound to: its host and the cookie's name.
fn binding(host: &str) -> Binding<'_> {
    Binding {
        host,
        cookie: SESSION_COOKIE,
    }
}
