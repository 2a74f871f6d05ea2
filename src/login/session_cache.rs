//! Opened sessions, remembered per worker, so a browser's requests do not each pay for the
//! AES-256-GCM open of the same session cookie (ring's portable AES-GCM takes 70–90 µs in V8
//! for a session of 840 bytes; everything else a session request does, a few). Like the
//! verified-token cache does for signatures: the cipher runs the first time a worker sees a
//! cookie value, and later requests take the session from here until the seal's expiry.
//!
//! An entry is exactly what the open yields (the session, and the expiry sealed with it), handed
//! out shared ([`Rc`]: a hit copies no token), keyed
//! by a keyed 128-bit hash of exactly what the open depends on besides the key ring: the
//! sealed value, the host and the cookie name (never the value itself). One cache serves one
//! key ring: each login's [`Flow`](super::flow::Flow) owns both, and a new configuration makes
//! new flows, so a push that changes a login or its keys starts with an empty cache. Only
//! values that opened are kept: a tampered, truncated, cross-host or retired-key value is
//! opened (and refused) every time. Everything after the open (the back-channel logout ledger,
//! refresh and recheck) is decided on every request as before; the entry only remembers under
//! which version of the ledger the session was last found not logged out
//! ([`CachedSession::not_logged_out_under`]). A refreshed session has a new value, so a new
//! entry; the old one is pushed out in its turn, as the oldest.

use super::cookies::{self, SESSION_COOKIE};
use super::flow::LedgerVersion;
use super::seal::{KeyRing, OpenError};
use super::session::{Session, SessionError};
use crate::cache::DigestMap;
use siphasher::sip128::Hasher128;
use std::cell::{Cell, RefCell};
use std::hash::Hasher;
use std::ops::Deref;
use std::rc::Rc;

/// A "not logged out" answer of the ledger is reused for at most this long even while the
/// ledger's version stands: a bucket written without the version moving (a version bump that
/// lost every compare-and-swap, whose logout is answered 503; a module of an earlier release
/// in the same VM group) is still seen within it.
pub const LEDGER_VERDICT_SECONDS: u64 = 1;

/// An opened session as a worker holds it: exactly what the open gave, and what the
/// back-channel logout ledger last said of it. Never `Debug`: it holds tokens.
pub struct CachedSession {
    session: Session,
    /// The ledger's version when the session was last found not logged out, and when (Unix
    /// seconds).
    not_logged_out: Cell<Option<(LedgerVersion, u64)>>,
}

impl CachedSession {
    fn new(session: Session) -> CachedSession {
        CachedSession {
            session,
            not_logged_out: Cell::new(None),
        }
    }

    /// Whether the ledger found this session not logged out under `version`, less than
    /// [`LEDGER_VERDICT_SECONDS`] before `now`: nothing recorded since can have ended it.
    pub fn not_logged_out_under(&self, version: LedgerVersion, now: u64) -> bool {
        self.not_logged_out.get().is_some_and(|(seen, at)| {
            seen == version && now >= at && now - at < LEDGER_VERDICT_SECONDS
        })
    }

    /// The ledger found this session not logged out under `version` (read before its entries).
    pub fn mark_not_logged_out(&self, version: LedgerVersion, now: u64) {
        self.not_logged_out.set(Some((version, now)));
    }
}

impl Deref for CachedSession {
    type Target = Session;

    fn deref(&self) -> &Session {
        &self.session
    }
}

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
    session: Rc<CachedSession>,
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
    ) -> Result<Option<Rc<CachedSession>>, SessionError> {
        let Some(sealed) = cookies::session_value(header).map_err(SessionError::Chunks)? else {
            return Ok(None);
        };
        self.open(&sealed, keys, host, now).map(Some)
    }

    /// What [`Session::open`] gives with the same ring at `now`.
    pub fn open(
        &self,
        sealed: &str,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<Rc<CachedSession>, SessionError> {
        let mut state = self.state.borrow_mut();
        let digest = state.digest(sealed, host);
        if let Some(entry) = state.entries.get(digest) {
            if now < entry.expires_at {
                return Ok(Rc::clone(&entry.session));
            }
            // Expired for good: the open would say so, and the entry serves no one again.
            state.entries.remove(digest);
            return Err(SessionError::Open(OpenError::Expired));
        }
        state.opens += 1;
        let (opened, expires_at) = Session::open_until(sealed, keys, host, now)?;
        let session = Rc::new(CachedSession::new(opened));
        state.entries.insert(
            digest,
            Entry {
                session: Rc::clone(&session),
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
