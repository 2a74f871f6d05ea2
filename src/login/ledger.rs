//! Back-channel logouts in the sidecar's shared data, so every worker refuses a logged-out
//! session at once. Entries are digests of the issuer and the `sid`/`sub`, never the
//! identifiers themselves, with the logout time.
//!
//! Bounded: Envoy's shared data cannot delete a key, so logouts live in a fixed set of
//! [`LOGOUT_BUCKETS`] values per issuer, each with at most [`LOGOUT_BUCKET_ENTRIES`] entries.
//! An entry is pruned once the session lifetime (`sessionMaxAgeSeconds`) has passed since the
//! logout: every session it could end has expired by then. A bucket that is full of live
//! entries fails closed: its oldest entry is folded into the bucket's *floor*, and every
//! session whose `sid` or `sub` falls in that bucket and that began at or before the floor is
//! refused (more sessions end than were logged out, never fewer).

use super::flow::LogoutLedger;
pub use super::refreshes::{SharedRefreshes, REFRESH_SLOTS};
use crate::keystore::SharedStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;

/// Buckets of logouts per issuer.
pub const LOGOUT_BUCKETS: u16 = 256;
/// Entries per bucket (24 bytes each): 8,192 logouts per issuer within a session lifetime are
/// remembered one by one.
pub const LOGOUT_BUCKET_ENTRIES: usize = 32;
const DIGEST_LEN: usize = 16;
const ENTRY_LEN: usize = DIGEST_LEN + 8;
/// Attempts at a compare-and-swap before a logout is reported unrecorded.
const CAS_ATTEMPTS: usize = 8;
/// Envoy creates a missing value whatever CAS token comes with the write and checks the token
/// against an existing one: a token no value has makes the write create-only.
const CREATE_ONLY: u32 = u32::MAX;

/// The logouts of one issuer in shared data.
pub struct SharedLedger<'a> {
    pub store: &'a dyn SharedStore,
    pub issuer: &'a str,
    /// The longest `sessionMaxAgeSeconds` of the logins of this issuer: how long a logout
    /// is kept.
    pub lifetime_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sid,
    Sub,
}

/// One bucket: `[floor: u64 BE]` then entries `[digest: 16][logout time: u64 BE]`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Bucket {
    /// Sessions of this bucket that began at or before this time are refused (0: none).
    floor: u64,
    entries: Vec<([u8; DIGEST_LEN], u64)>,
}

impl Bucket {
    fn parse(bytes: &[u8]) -> Bucket {
        let Some((floor, rest)) = bytes.split_first_chunk::<8>() else {
            return Bucket::default();
        };
        let entries = rest
            .chunks_exact(ENTRY_LEN)
            .filter_map(|entry| {
                let (digest, at) = entry.split_first_chunk::<DIGEST_LEN>()?;
                Some((*digest, u64::from_be_bytes(at.try_into().ok()?)))
            })
            .collect();
        Bucket {
            floor: u64::from_be_bytes(*floor),
            entries,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 + self.entries.len() * ENTRY_LEN);
        bytes.extend_from_slice(&self.floor.to_be_bytes());
        for (digest, at) in &self.entries {
            bytes.extend_from_slice(digest);
            bytes.extend_from_slice(&at.to_be_bytes());
        }
        bytes
    }

    fn at(&self, digest: &[u8; DIGEST_LEN]) -> Option<u64> {
        self.entries
            .iter()
            .find(|(d, _)| d == digest)
            .map(|(_, at)| *at)
    }

    /// Drops what no live session can need: logouts older than a session lifetime.
    fn prune(&mut self, now: u64, lifetime: u64) {
        let live = |at: u64| at.saturating_add(lifetime) >= now;
        self.entries.retain(|(_, at)| live(*at));
        if !live(self.floor) {
            self.floor = 0;
        }
    }

    /// Adds (or moves forward) a logout; when full, the oldest entry becomes the floor.
    fn add(&mut self, digest: [u8; DIGEST_LEN], now: u64) {
        if let Some(entry) = self.entries.iter_mut().find(|(d, _)| *d == digest) {
            entry.1 = entry.1.max(now);
            return;
        }
        if self.entries.len() >= LOGOUT_BUCKET_ENTRIES {
            if let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].1) {
                let (_, at) = self.entries.swap_remove(oldest);
                self.floor = self.floor.max(at);
            }
        }
        self.entries.push((digest, now));
    }
}

impl SharedLedger<'_> {
    fn digest(&self, kind: Kind, value: &str) -> [u8; DIGEST_LEN] {
        let label = match kind {
            Kind::Sid => "sid",
            Kind::Sub => "sub",
        };
        let mut input = Vec::with_capacity(self.issuer.len() + value.len() + 16);
        for part in [self.issuer, label, value] {
            input.extend_from_slice(&(part.len() as u32).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        let hash = digest::digest(&digest::SHA256, &input);
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&hash.as_ref()[..DIGEST_LEN]);
        out
    }

    fn bucket_key(&self, digest: &[u8; DIGEST_LEN]) -> String {
        let issuer = URL_SAFE_NO_PAD
            .encode(&digest::digest(&digest::SHA256, self.issuer.as_bytes()).as_ref()[..9]);
        let bucket = u16::from_be_bytes([digest[0], digest[1]]) % LOGOUT_BUCKETS;
        format!("mesh-oauth/logouts/{issuer}/{bucket}")
    }

    fn bucket(&self, key: &str) -> (Bucket, u32) {
        match self.store.get(key) {
            (Some(bytes), cas) => (Bucket::parse(&bytes), cas.unwrap_or(CREATE_ONLY)),
            (None, _) => (Bucket::default(), CREATE_ONLY),
        }
    }

    /// Records a verified back-channel logout (Back-Channel Logout 1.0 §2.7): with a `sid`,
    /// that OP session ends; with only a `sub`, every session of the subject from before now.
    /// `false` when it could not be recorded (other workers kept writing the same bucket):
    /// the logout must then not be acknowledged, so the OP may send it again.
    pub fn record(&self, sid: Option<&str>, sub: Option<&str>, now: u64) -> bool {
        let digest = match (sid, sub) {
            (Some(sid), _) => self.digest(Kind::Sid, sid),
            (None, Some(sub)) => self.digest(Kind::Sub, sub),
            (None, None) => return true,
        };
        let key = self.bucket_key(&digest);
        for _ in 0..CAS_ATTEMPTS {
            let (mut bucket, cas) = self.bucket(&key);
            bucket.prune(now, self.lifetime_seconds);
            bucket.add(digest, now);
            if self.store.set(&key, &bucket.encode(), Some(cas)) {
                return true;
            }
        }
        false
    }

    fn read(&self, kind: Kind, value: &str) -> (Option<u64>, u64) {
        let digest = self.digest(kind, value);
        let (bucket, _) = self.bucket(&self.bucket_key(&digest));
        (bucket.at(&digest), bucket.floor)
    }
}

impl LogoutLedger for SharedLedger<'_> {
    fn sid_logged_out_at(&self, sid: &str) -> Option<u64> {
        self.read(Kind::Sid, sid).0
    }

    fn sub_logged_out_at(&self, sub: &str) -> Option<u64> {
        self.read(Kind::Sub, sub).0
    }

    fn session_logged_out(&self, sid: Option<&str>, sub: &str, authenticated_at: u64) -> bool {
        let (sub_at, sub_floor) = self.read(Kind::Sub, sub);
        let (sid_at, sid_floor) = match sid {
            Some(sid) => self.read(Kind::Sid, sid),
            None => (None, 0),
        };
        sid_at.is_some()
            || sub_at.is_some_and(|at| at >= authenticated_at)
            || authenticated_at <= sub_floor.max(sid_floor)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keystore::MemoryShared as Map;

    #[test]
    fn a_sid_logout_is_seen_by_every_reader_and_names_nothing() {
        let map = Map::default();
        let ledger = SharedLedger {
            store: &map,
            issuer: "https://op.example.com",
            lifetime_seconds: 3600,
        };
        ledger.record(Some("session-1"), Some("alice"), 100);
        let reader = SharedLedger {
            store: &map,
            issuer: "https://op.example.com",
            lifetime_seconds: 3600,
        };
        assert_eq!(reader.sid_logged_out_at("session-1"), Some(100));
        assert_eq!(reader.sid_logged_out_at("session-2"), None);
        // With a sid, only that session ends.
        assert_eq!(reader.sub_logged_out_at("alice"), None);
        // Another issuer's session of the same id is not affected.
        let other = SharedLedger {
            store: &map,
            issuer: "https://other.example.com",
            lifetime_seconds: 3600,
        };
        assert_eq!(other.sid_logged_out_at("session-1"), None);
        for key in map.0.borrow().keys() {
            assert!(
                !key.contains("session-1") && !key.contains("alice"),
                "{key}"
            );
        }
    }

    #[test]
    fn a_sub_logout_keeps_its_latest_time() {
        let map = Map::default();
        let ledger = SharedLedger {
            store: &map,
            issuer: "https://op.example.com",
            lifetime_seconds: 3600,
        };
        ledger.record(None, Some("alice"), 100);
        ledger.record(None, Some("alice"), 200);
        assert_eq!(ledger.sub_logged_out_at("alice"), Some(200));
        ledger.record(None, None, 300);
        assert_eq!(map.0.borrow().len(), 1);
    }

    fn ledger(map: &Map) -> SharedLedger<'_> {
        SharedLedger {
            store: map,
            issuer: "https://op.example.com",
            lifetime_seconds: 3600,
        }
    }

    #[test]
    fn logouts_are_pruned_once_a_session_lifetime_has_passed() {
        let map = Map::default();
        let ledger = ledger(&map);
        assert!(ledger.record(Some("old"), None, 1_000));
        // Still needed: a session that began before the logout may live until 1_000 + 3600.
        assert!(ledger.record(Some("other"), None, 4_600));
        assert_eq!(ledger.sid_logged_out_at("old"), Some(1_000));
        // Each write prunes the bucket it writes: record logouts in every bucket.
        for i in 0..5_000 {
            assert!(ledger.record(Some(&format!("later-{i}")), None, 4_601));
        }
        assert_eq!(ledger.sid_logged_out_at("old"), None, "pruned");
        assert_eq!(ledger.sid_logged_out_at("other"), Some(4_600));
        // Bounded: buckets per issuer, entries per bucket.
        let values = map.0.borrow();
        assert!(values.len() <= usize::from(LOGOUT_BUCKETS));
        assert!(values
            .values()
            .all(|(v, _)| v.len() <= 8 + LOGOUT_BUCKET_ENTRIES * ENTRY_LEN));
    }

    /// Logouts by `sid`, all in the bucket of `first`.
    fn same_bucket(ledger: &SharedLedger<'_>, first: &str, count: usize) -> Vec<String> {
        let key = ledger.bucket_key(&ledger.digest(Kind::Sid, first));
        (0..)
            .map(|i| format!("sid-{i}"))
            .filter(|sid| ledger.bucket_key(&ledger.digest(Kind::Sid, sid)) == key)
            .take(count)
            .collect()
    }

    #[test]
    fn a_full_bucket_fails_closed_for_the_sessions_of_its_oldest_logout() {
        let map = Map::default();
        let ledger = ledger(&map);
        let sids = same_bucket(&ledger, "sid-0", LOGOUT_BUCKET_ENTRIES + 1);
        for (i, sid) in sids.iter().enumerate() {
            assert!(ledger.record(Some(sid), None, 1_000 + i as u64));
        }
        // The first logout's entry made room for the last one ...
        assert_eq!(ledger.sid_logged_out_at(&sids[0]), None);
        // ... yet its session is still refused: it began before its logout, at or before the
        // bucket's floor now.
        assert!(ledger.session_logged_out(Some(&sids[0]), "alice", 999));
        // A session of the same bucket begun after that logout is not.
        assert!(!ledger.session_logged_out(Some(&sids[0]), "alice", 1_001));
        // The others are remembered one by one.
        assert!(ledger.session_logged_out(Some(&sids[5]), "alice", 2_000));
        assert!(ledger.session_logged_out(Some(&sids[LOGOUT_BUCKET_ENTRIES]), "alice", 2_000));
        // The floor goes too once a session lifetime has passed.
        assert!(ledger.record(Some(&sids[1]), None, 1_000 + 3_601));
        assert!(!ledger.session_logged_out(Some(&sids[0]), "alice", 999));
    }

    #[test]
    fn a_sub_logout_ends_only_the_sessions_that_began_before_it() {
        let map = Map::default();
        let ledger = ledger(&map);
        assert!(ledger.record(None, Some("alice"), 100));
        assert!(ledger.session_logged_out(Some("s-1"), "alice", 100));
        assert!(!ledger.session_logged_out(Some("s-1"), "alice", 101));
        assert!(!ledger.session_logged_out(None, "bob", 50));
    }
}
