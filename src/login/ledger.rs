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
//!
//! A version value per issuer counts the logouts recorded, written after the bucket: a worker
//! that found a session not logged out under one version need not read the buckets again for
//! it while the version stands ([`LogoutLedger::version`]), so a session request reads one
//! small value, not two buckets with four digests.

use super::flow::{LedgerVersion, LogoutLedger};
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

/// The names of one issuer's logouts in shared data, made once per configuration (each is a
/// digest of the issuer).
pub struct LedgerName {
    issuer: String,
    /// `mesh-oauth/logouts/<digest of the issuer>/`: the buckets are `<prefix><number>`.
    prefix: String,
    /// `<prefix>version`: the logouts recorded, as a u64 BE.
    version_key: String,
}

impl LedgerName {
    pub fn new(issuer: &str) -> LedgerName {
        let digest = URL_SAFE_NO_PAD
            .encode(&digest::digest(&digest::SHA256, issuer.as_bytes()).as_ref()[..9]);
        let prefix = format!("mesh-oauth/logouts/{digest}/");
        LedgerName {
            issuer: issuer.to_owned(),
            version_key: format!("{prefix}version"),
            prefix,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The logouts of one issuer in shared data.
pub struct SharedLedger<'a> {
    pub store: &'a dyn SharedStore,
    pub name: &'a LedgerName,
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
        let issuer = self.name.issuer.as_str();
        let mut input = Vec::with_capacity(issuer.len() + value.len() + 16);
        for part in [issuer, label, value] {
            input.extend_from_slice(&(part.len() as u32).to_be_bytes());
            input.extend_from_slice(part.as_bytes());
        }
        let hash = digest::digest(&digest::SHA256, &input);
        let mut out = [0u8; DIGEST_LEN];
        out.copy_from_slice(&hash.as_ref()[..DIGEST_LEN]);
        out
    }

    fn bucket_key(&self, digest: &[u8; DIGEST_LEN]) -> String {
        let bucket = u16::from_be_bytes([digest[0], digest[1]]) % LOGOUT_BUCKETS;
        format!("{}{bucket}", self.name.prefix)
    }

    /// Moves the version on (after a bucket was written); `false` when other workers kept
    /// writing it.
    fn bump_version(&self) -> bool {
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = self.store.get(&self.name.version_key);
            let count = value.as_deref().map_or(0, version_count);
            let next = count.wrapping_add(1).to_be_bytes();
            if self.store.set(
                &self.name.version_key,
                &next,
                Some(cas.unwrap_or(CREATE_ONLY)),
            ) {
                return true;
            }
        }
        false
    }

    fn bucket(&self, key: &str) -> (Bucket, u32) {
        match self.store.get(key) {
            (Some(bytes), cas) => (Bucket::parse(&bytes), cas.unwrap_or(CREATE_ONLY)),
            (None, _) => (Bucket::default(), CREATE_ONLY),
        }
    }

    /// Records a verified back-channel logout (Back-Channel Logout 1.0 §2.7): with a `sid`,
    /// that OP session ends; with only a `sub`, every session of the subject from before now.
    /// `false` when it could not be recorded (other workers kept writing the same bucket or
    /// the version): the logout must then not be acknowledged, so the OP may send it again.
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
                // Only now: a reader that sees the new version finds the entry.
                return self.bump_version();
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

/// A version value as written (anything else counts as none written).
fn version_count(value: &[u8]) -> u64 {
    value
        .try_into()
        .map_or(0, |bytes: [u8; 8]| u64::from_be_bytes(bytes))
}

impl LogoutLedger for SharedLedger<'_> {
    fn version(&self) -> Option<LedgerVersion> {
        let (value, cas) = self.store.get(&self.name.version_key);
        Some(LedgerVersion {
            cas,
            count: value.as_deref().map_or(0, version_count),
        })
    }

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
        let name = LedgerName::new("https://op.example.com");
        let ledger = SharedLedger {
            store: &map,
            name: &name,
            lifetime_seconds: 3600,
        };
        ledger.record(Some("session-1"), Some("alice"), 100);
        let reader = SharedLedger {
            store: &map,
            name: &name,
            lifetime_seconds: 3600,
        };
        assert_eq!(reader.sid_logged_out_at("session-1"), Some(100));
        assert_eq!(reader.sid_logged_out_at("session-2"), None);
        // With a sid, only that session ends.
        assert_eq!(reader.sub_logged_out_at("alice"), None);
        // Another issuer's session of the same id is not affected.
        let other_name = LedgerName::new("https://other.example.com");
        let other = SharedLedger {
            store: &map,
            name: &other_name,
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
        let ledger = ledger(&map);
        ledger.record(None, Some("alice"), 100);
        ledger.record(None, Some("alice"), 200);
        assert_eq!(ledger.sub_logged_out_at("alice"), Some(200));
        ledger.record(None, None, 300);
        // The bucket and the version.
        assert_eq!(map.0.borrow().len(), 2);
    }

    fn ledger(map: &Map) -> SharedLedger<'_> {
        static NAME: std::sync::OnceLock<LedgerName> = std::sync::OnceLock::new();
        SharedLedger {
            store: map,
            name: NAME.get_or_init(|| LedgerName::new("https://op.example.com")),
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
        // Bounded: buckets per issuer (and the version), entries per bucket.
        let values = map.0.borrow();
        assert!(values.len() <= usize::from(LOGOUT_BUCKETS) + 1);
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

    #[test]
    fn every_recorded_logout_moves_the_version_and_reading_does_not() {
        let map = Map::default();
        let ledger = ledger(&map);
        let never = ledger.version();
        assert_eq!(
            never,
            Some(LedgerVersion {
                cas: None,
                count: 0
            })
        );
        assert!(!ledger.session_logged_out(Some("s-1"), "alice", 50));
        assert_eq!(ledger.version(), never, "a read writes nothing");
        assert!(ledger.record(Some("s-1"), None, 100));
        let first = ledger.version();
        assert_ne!(first, never);
        // The same logout again still moves it (its time may have moved on).
        assert!(ledger.record(Some("s-1"), None, 100));
        let second = ledger.version();
        assert_ne!(second, first);
        assert_eq!(second.map(|v| v.count), Some(2));
        // Another issuer's logouts leave this one's version alone.
        let other_name = LedgerName::new("https://other.example.com");
        let other = SharedLedger {
            store: &map,
            name: &other_name,
            lifetime_seconds: 3600,
        };
        assert!(other.record(Some("s-1"), None, 100));
        assert_eq!(ledger.version(), second);
    }

    /// A store whose version value loses every compare-and-swap (other workers keep writing).
    struct BusyVersion(Map);

    impl SharedStore for BusyVersion {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            self.0.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            !key.ends_with("/version") && self.0.set(key, value, cas)
        }
    }

    #[test]
    fn a_logout_whose_version_cannot_move_is_reported_unrecorded() {
        let store = BusyVersion(Map::default());
        let name = LedgerName::new("https://op.example.com");
        let ledger = SharedLedger {
            store: &store,
            name: &name,
            lifetime_seconds: 3600,
        };
        // Not acknowledged, so the OP sends it again; the entry itself is there and fails
        // closed for every reader that reads the buckets.
        assert!(!ledger.record(Some("s-1"), None, 100));
        assert!(ledger.session_logged_out(Some("s-1"), "alice", 50));
    }
}
