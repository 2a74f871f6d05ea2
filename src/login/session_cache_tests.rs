//! The session cache gives what opening gives, at every instant, and opens less.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::login::cookies;
use crate::login::seal::{KEY_LEN, SEAL_RANDOM_LEN};

const HOST: &str = "app.example.com";
const NOW: u64 = 1_700_000_000;
/// The seal's own expiry in these tests.
const SEALED_UNTIL: u64 = NOW + 60;

fn ring(key: u8) -> KeyRing {
    KeyRing::new(&[[key; KEY_LEN]]).unwrap()
}

fn session(name: &str) -> Session {
    Session {
        token: format!("token-of-{name}"),
        refresh_token: Some(format!("refresh-of-{name}")),
        sub: name.to_owned(),
        sid: Some(format!("sid-of-{name}")),
        token_expires_at: NOW + 300,
        authenticated_at: NOW,
        refreshed_at: NOW,
        id_token_hint: None,
    }
}

fn sealed(ring: &KeyRing, name: &str) -> String {
    session(name)
        .sealed(ring, HOST, SEALED_UNTIL, [9; SEAL_RANDOM_LEN])
        .unwrap()
}

/// What carries a session: a fresh open's and the cache's answers.
trait Token {
    fn token(&self) -> String;
}

impl Token for Session {
    fn token(&self) -> String {
        self.token.clone()
    }
}

impl Token for Rc<CachedSession> {
    fn token(&self) -> String {
        self.token.clone()
    }
}

/// `open`'s answer, the session compared by its token (`Session` is never `Debug`).
fn token_of<S: Token>(result: Result<S, SessionError>) -> Result<String, SessionError> {
    result.map(|session| session.token())
}

#[test]
fn a_value_seen_again_is_not_opened_again_and_gives_the_same_session() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    let first = cache.open(&value, &keys, HOST, NOW).ok().unwrap();
    assert!(**first == session("alice"));
    assert_eq!(cache.opens(), 1);
    for now in [NOW, NOW + 1, SEALED_UNTIL - 1] {
        let hit = cache.open(&value, &keys, HOST, now).ok().unwrap();
        assert!(**hit == Session::open(&value, &keys, HOST, now).ok().unwrap());
        assert!(Rc::ptr_eq(&hit, &first), "shared, not copied");
    }
    assert_eq!(cache.opens(), 1, "every later request was a hit");
    assert_eq!(cache.len(), 1);
}

#[test]
fn a_cached_session_expires_at_the_same_instant_as_its_seal() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    assert!(cache.open(&value, &keys, HOST, SEALED_UNTIL - 1).is_ok());
    assert!(cache.open(&value, &keys, HOST, SEALED_UNTIL - 1).is_ok());
    let fresh = token_of(Session::open(&value, &keys, HOST, SEALED_UNTIL));
    assert_eq!(fresh, Err(SessionError::Open(OpenError::Expired)));
    assert_eq!(
        token_of(cache.open(&value, &keys, HOST, SEALED_UNTIL)),
        fresh
    );
    assert_eq!(cache.opens(), 1, "the expired answer came from the entry");
    assert!(cache.is_empty(), "an expired entry is dropped");
    // And later still, now opened again: the same answer, nothing kept.
    assert_eq!(
        token_of(cache.open(&value, &keys, HOST, SEALED_UNTIL + 5)),
        fresh
    );
    assert!(cache.is_empty());
}

#[test]
fn an_already_expired_value_is_refused_as_opening_refuses_it_and_not_kept() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    assert_eq!(
        token_of(cache.open(&value, &keys, HOST, SEALED_UNTIL)),
        token_of(Session::open(&value, &keys, HOST, SEALED_UNTIL))
    );
    assert!(cache.is_empty());
}

#[test]
fn a_tampered_value_never_hits_and_is_never_kept() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    assert!(cache.open(&value, &keys, HOST, NOW).is_ok());
    // The last character changed: still base64url, but the tag no longer verifies.
    let mut tampered = value.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    // A truncated value, and one cut from its key id.
    let truncated = value[..value.len() - 4].to_owned();
    let (_, body) = value.split_once('.').unwrap();
    let other_key = format!("{}.{body}", ring(2).sealing_key_id());
    for bad in [&tampered, &truncated, &other_key] {
        for _ in 0..2 {
            let opens = cache.opens();
            let answer = token_of(cache.open(bad, &keys, HOST, NOW));
            assert!(answer.is_err());
            assert_eq!(answer, token_of(Session::open(bad, &keys, HOST, NOW)));
            assert_eq!(cache.opens(), opens + 1, "opened, every time");
        }
    }
    assert_eq!(cache.len(), 1, "only the good value is held");
}

#[test]
fn another_host_never_hits() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    assert!(cache.open(&value, &keys, HOST, NOW).is_ok());
    let elsewhere = token_of(cache.open(&value, &keys, "evil.example.com", NOW));
    assert_eq!(elsewhere, Err(SessionError::Open(OpenError::Tampered)));
    assert_eq!(cache.opens(), 2);
    // The host's case is a different key too: opened (and accepted, as opening does).
    assert!(cache.open(&value, &keys, "APP.example.com", NOW).is_ok());
    assert_eq!(cache.opens(), 3);
}

#[test]
fn the_oldest_session_goes_when_full() {
    let keys = ring(1);
    let cache = SessionCache::new(2);
    let values: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|name| sealed(&keys, name))
        .collect();
    for value in &values {
        assert!(cache.open(value, &keys, HOST, NOW).is_ok());
    }
    assert_eq!((cache.len(), cache.opens()), (2, 3));
    // carol and bob are held; alice was the oldest, so she is opened again (pushing bob out).
    assert!(**cache.open(&values[2], &keys, HOST, NOW).ok().unwrap() == session("carol"));
    assert_eq!(cache.opens(), 3);
    assert!(**cache.open(&values[0], &keys, HOST, NOW).ok().unwrap() == session("alice"));
    assert_eq!(cache.opens(), 4);
    assert!(cache.open(&values[1], &keys, HOST, NOW).is_ok());
    assert_eq!((cache.len(), cache.opens()), (2, 5));
}

#[test]
fn a_refreshed_session_is_a_new_entry_and_the_old_one_still_opens_as_before() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let old = sealed(&keys, "alice");
    let mut renewed = session("alice");
    renewed.token = "the-new-token".to_owned();
    let new = renewed
        .sealed(&keys, HOST, SEALED_UNTIL, [3; SEAL_RANDOM_LEN])
        .unwrap();
    assert_eq!(
        token_of(cache.open(&old, &keys, HOST, NOW)).unwrap(),
        "token-of-alice"
    );
    assert_eq!(
        token_of(cache.open(&new, &keys, HOST, NOW)).unwrap(),
        "the-new-token"
    );
    assert_eq!(
        token_of(cache.open(&old, &keys, HOST, NOW)).unwrap(),
        "token-of-alice"
    );
    assert_eq!((cache.len(), cache.opens()), (2, 2));
}

#[test]
fn capacity_zero_opens_every_time() {
    let keys = ring(1);
    let cache = SessionCache::new(0);
    let value = sealed(&keys, "alice");
    for _ in 0..3 {
        assert!(cache.open(&value, &keys, HOST, NOW).is_ok());
    }
    assert_eq!((cache.len(), cache.opens()), (0, 3));
}

#[test]
fn cookie_headers_read_as_the_session_reads_them() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    let chunks = cookies::chunk(&value).unwrap();
    let header: Vec<String> = chunks
        .iter()
        .rev()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    let header = format!("theme=dark; {}", header.join("; "));
    for header in [
        Some(header.as_str()),
        None,
        Some("theme=dark"),
        Some("__Host-mesh-session.1=x"),
    ] {
        for _ in 0..2 {
            let cached = cache
                .from_cookies(header, &keys, HOST, NOW)
                .map(|s| s.map(|s| s.token.clone()));
            let fresh = Session::from_cookies(header, &keys, HOST, NOW).map(|s| s.map(|s| s.token));
            assert_eq!(cached, fresh, "{header:?}");
        }
    }
    assert_eq!(cache.opens(), 1);
}

#[test]
fn digests_bind_every_part_and_differ_per_cache() {
    let a = SessionCache::new(1);
    let b = SessionCache::new(1);
    let (a, b) = (a.state.borrow(), b.state.borrow());
    assert_eq!(a.digest("v", HOST), a.digest("v", HOST));
    assert_ne!(a.digest("v", HOST), a.digest("w", HOST));
    assert_ne!(a.digest("v", HOST), a.digest("v", "other.example.com"));
    assert_ne!(
        a.digest("v", HOST),
        b.digest("v", HOST),
        "keys are random per cache"
    );
}

#[test]
fn a_not_logged_out_answer_holds_for_its_version_within_a_second_only() {
    let keys = ring(1);
    let cache = SessionCache::new(8);
    let value = sealed(&keys, "alice");
    let held = cache.open(&value, &keys, HOST, NOW).ok().unwrap();
    let version = LedgerVersion {
        cas: Some(3),
        count: 1,
    };
    assert!(
        !held.not_logged_out_under(version, NOW),
        "nothing found yet"
    );
    held.mark_not_logged_out(version, NOW);
    // The next hit is the same entry: what was found travels with it.
    let hit = cache.open(&value, &keys, HOST, NOW).ok().unwrap();
    assert!(hit.not_logged_out_under(version, NOW));
    for other in [
        LedgerVersion {
            cas: Some(4),
            count: 1,
        },
        LedgerVersion {
            cas: Some(3),
            count: 2,
        },
        LedgerVersion {
            cas: None,
            count: 1,
        },
    ] {
        assert!(!hit.not_logged_out_under(other, NOW));
    }
    assert!(!hit.not_logged_out_under(version, NOW + LEDGER_VERDICT_SECONDS));
    assert!(
        !hit.not_logged_out_under(version, NOW - 1),
        "a clock that went back"
    );
    // A fresh open (another cache, or the cache off) starts with nothing found.
    let fresh = SessionCache::new(0)
        .open(&value, &keys, HOST, NOW)
        .ok()
        .unwrap();
    assert!(!fresh.not_logged_out_under(version, NOW));
}
