//! Opened sessions, remembered per worker, so a browser's requests do not each pay for the
//! AES-256-GCM open of the same session cookie (ring's portable AES-GCM takes 70–90 µs in V8
//! for a session of 840 bytes; everything else a session request does, a few). Like the
//! verified-token cache does for signatures: the cipher runs the first time a worker sees a
//! cookie value, and later requests take the session from here until the seal's expiry.
//!
//! An entry is exactly what the open yields (the session, and the expiry sealed with it), keyed
//! by a keyed 128-bit hash of exactly what the open depends on besides the key ring: the
//! sealed value, the host and the cookie name (never the value itself). One cache serves one
//! key ring: each login's [`Flow`](super::flow::Flow) owns both, and a new configuration makes
//! new flows, so a push that changes a login or its keys starts with an empty cache. Only
//! values that opened are kept: a tampered, truncated, cross-host or retired-key value is
//! opened (and refused) every time. Everything after the open (the back-channel logout ledger,
//! refresh and recheck) runs on every request as before. A refreshed session has a new value,
//! so a new entry; the old one is pushed out in its turn, as the oldest.

use super::cookies::SESSION_COOKIE;
use super::seal::{KeyRing, OpenError};
use super::session::{Session, SessionError};
use crate::cache::DigestMap;
use siphasher::sip128::Hasher128;
use std::cell::RefCell;
use std::hash::Hasher;

/// One worker's opened sessions for one key ring. Never `Debug`: it holds tokens.
pub struct SessionCache {
    state: RefCell<State>,
}

struct State {
    entries: DigestMap<Entry>,
    /// Times the cipher ran (a miss): what the cache is there to save.
    opens: u64,
}

struct Entry {
    session: Session,
    /// The expiry sealed with the value (Unix seconds): from then on it opens as `Expired`.
    expires_at: u64,
}

impl SessionCache {
    /// `capacity` 0 turns the cache off (every request opens its cookie).
    pub fn new(capacity: usize) -> SessionCache {
        SessionCache {
            state: RefCell::new(State {
                // Grown as sessions come: a configuration checked but never run costs nothing.
                entries: DigestMap::new(capacity, 0),
                opens: 0,
            }),
        }
    }

    /// What [`Session::from_cookies`] gives with the same ring at `now`.
    pub fn from_cookies(
        &self,
        header: Option<&str>,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<Option<Session>, SessionError> {
        Session::from_cookies_with(header, |sealed| self.open(sealed, keys, host, now))
    }

    /// What [`Session::open`] gives with the same ring at `now`.
    pub fn open(
        &self,
        sealed: &str,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<Session, SessionError> {
        let mut state = self.state.borrow_mut();
        let digest = state.digest(sealed, host);
        if let Some(entry) = state.entries.get(digest) {
            if now < entry.expires_at {
                return Ok(entry.session.clone());
            }
            // Expired for good: the open would say so, and the entry serves no one again.
            state.entries.remove(digest);
            return Err(SessionError::Open(OpenError::Expired));
        }
        state.opens += 1;
        let (session, expires_at) = Session::open_until(sealed, keys, host, now)?;
        state.entries.insert(
            digest,
            Entry {
                session: session.clone(),
                expires_at,
            },
        );
        Ok(session)
    }

    /// Sessions held now.
    pub fn len(&self) -> usize {
        self.state.borrow().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Times a session cookie was opened with the cipher (not found here).
    pub fn opens(&self) -> u64 {
        self.state.borrow().opens
    }
}

impl State {
    /// Length-prefixed parts, so no two (host, cookie, value) triples hash the same bytes.
    fn digest(&self, sealed: &str, host: &str) -> u128 {
        let mut hasher = self.entries.hasher();
        for part in [host, SESSION_COOKIE, sealed] {
            hasher.write(&(part.len() as u64).to_be_bytes());
            hasher.write(part.as_bytes());
        }
        hasher.finish128().as_u128()
    }
}

#[cfg(test)]
#[path = "session_cache_tests.rs"]
mod tests;
