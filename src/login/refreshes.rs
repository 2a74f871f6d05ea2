//! Session refreshes, single-flight across the workers of a sidecar (issue 28: "once per
//! session per sidecar across workers"). With refresh-token rotation at the OP a refresh
//! spends the token: a second worker refreshing the same session gets `invalid_grant` and
//! logs the user out (oauth2-proxy's race). So a worker about to refresh claims a lease in
//! shared data by compare-and-swap; the others wait for the lease's outcome and use it.
//!
//! Shared data holds [`REFRESH_SLOTS`] values per issuer (Envoy's shared data cannot delete a
//! key, so sessions share a fixed set of slots). A slot's record is named by a digest of the
//! session's refresh token ([`Session::refresh_key`](super::session::Session::refresh_key)),
//! never the token, and is one of:
//! - a lease: a worker's refresh call is under way until `until_ms` (the call's timeout plus a
//!   margin, so a worker that dies frees it);
//! - done: the refreshed session, **sealed** with the cookie keys (what the browser gets as its
//!   cookie), served for [`REFRESH_SHARED_SECONDS`] to requests that still carry the old cookie;
//! - failed: the refresh failed; requests that waited for it end the same way for
//!   [`FAILED_SHARED_MS`] rather than spending the token again.
//!
//! A slot held by another session's live lease is left alone: that request refreshes without
//! the cross-worker guarantee (it keeps the per-worker one). With 64 slots and leases that
//! last one token call, that needs two sessions refreshing in the same instant in one slot.

use super::flow::{RecentRefreshes, REFRESH_SHARED_SECONDS};
use crate::keystore::SharedStore;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;

/// Slots for refreshes, per issuer: each holds one record (at most one sealed session, which
/// the cookie chunking caps well under 16 KB).
pub const REFRESH_SLOTS: u8 = 64;
/// How long requests that waited for a refresh that failed take that failure as theirs.
pub const FAILED_SHARED_MS: u64 = 5_000;
/// A refresh's result younger than this is not replaced by a new claim, even when the
/// asking request could not use it (it may have come an instant after that request looked).
const DONE_SETTLE_MS: u64 = 2_000;
/// Attempts at a compare-and-swap before the request waits a tick and asks again.
const CAS_ATTEMPTS: usize = 4;
/// Envoy creates a missing value whatever CAS token comes with the write and checks the token
/// against an existing one: a token no value has makes the write create-only.
const CREATE_ONLY: u32 = u32::MAX;

const LEASE: u8 = b'L';
const DONE: u8 = b'D';
const FAILED: u8 = b'F';

/// The refreshes of one issuer in shared data.
pub struct SharedRefreshes<'a> {
    pub store: &'a dyn SharedStore,
    pub issuer: &'a str,
}

/// What a request that would refresh its session does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the lease: it makes the call and publishes the outcome.
    Won,
    /// The slot is another session's live lease: refresh without the cross-worker lease.
    Unshared,
    /// Another worker (or request) refreshes this session: ask again (each tick) until
    /// `until_ms`, when its lease runs out.
    Wait { until_ms: u64 },
    /// The refresh this request waited for failed moments ago: it failed for this one too.
    FailedElsewhere,
}

/// A refresh's outcome for [`SharedRefreshes::publish`].
pub enum Outcome<'a> {
    /// The refreshed session, sealed as its cookie is.
    Done(&'a str),
    Failed,
}

/// One slot's record: `[kind][time_ms: u64 BE][key length: u8][key][sealed session]`.
struct Record<'a> {
    kind: u8,
    /// Lease: until when; done and failed: when.
    time_ms: u64,
    key: &'a [u8],
    sealed: &'a [u8],
}

impl<'a> Record<'a> {
    /// `None` for anything else, records of an older layout included (they are replaced).
    fn parse(value: &'a [u8]) -> Option<Record<'a>> {
        let (kind, rest) = value.split_first()?;
        if ![LEASE, DONE, FAILED].contains(kind) {
            return None;
        }
        let (time, rest) = rest.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first()?;
        let (key, sealed) = rest.split_at_checked(usize::from(*len))?;
        Some(Record {
            kind: *kind,
            time_ms: u64::from_be_bytes(*time),
            key,
            sealed,
        })
    }

    fn encode(kind: u8, time_ms: u64, key: &str, sealed: &str) -> Vec<u8> {
        let key = &key.as_bytes()[..key.len().min(255)];
        let mut value = Vec::with_capacity(10 + key.len() + sealed.len());
        value.push(kind);
        value.extend_from_slice(&time_ms.to_be_bytes());
        value.push(key.len() as u8);
        value.extend_from_slice(key);
        value.extend_from_slice(sealed.as_bytes());
        value
    }

    fn live_lease(&self, now_ms: u64) -> bool {
        self.kind == LEASE && self.time_ms > now_ms
    }
}

impl SharedRefreshes<'_> {
    fn slot(&self, key: &str) -> String {
        let mut input = self.issuer.as_bytes().to_vec();
        input.push(0);
        input.extend_from_slice(key.as_bytes());
        let hash = digest::digest(&digest::SHA256, &input);
        let issuer = URL_SAFE_NO_PAD
            .encode(&digest::digest(&digest::SHA256, self.issuer.as_bytes()).as_ref()[..9]);
        format!(
            "mesh-oauth/refresh/{issuer}/{}",
            hash.as_ref()[0] % REFRESH_SLOTS
        )
    }

    fn read(&self, slot: &str) -> (Option<Vec<u8>>, u32) {
        match self.store.get(slot) {
            (Some(value), cas) => (Some(value), cas.unwrap_or(CREATE_ONLY)),
            (None, _) => (None, CREATE_ONLY),
        }
    }

    /// Claims the refresh of the session named `key` for `lease_ms` from `now_ms`, unless
    /// another request holds it or has just finished it.
    pub fn claim(&self, key: &str, now_ms: u64, lease_ms: u64) -> Claim {
        let slot = self.slot(key);
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = self.read(&slot);
            if let Some(record) = value.as_deref().and_then(Record::parse) {
                let age_ms = now_ms.saturating_sub(record.time_ms);
                if record.key == key.as_bytes() {
                    match record.kind {
                        LEASE if record.time_ms > now_ms => {
                            return Claim::Wait {
                                until_ms: record.time_ms,
                            }
                        }
                        FAILED if age_ms <= FAILED_SHARED_MS => return Claim::FailedElsewhere,
                        DONE if age_ms < DONE_SETTLE_MS => {
                            return Claim::Wait {
                                until_ms: record.time_ms.saturating_add(DONE_SETTLE_MS),
                            }
                        }
                        _ => {}
                    }
                } else if record.live_lease(now_ms) {
                    return Claim::Unshared;
                }
            }
            let lease = Record::encode(LEASE, now_ms.saturating_add(lease_ms), key, "");
            if self.store.set(&slot, &lease, Some(cas)) {
                return Claim::Won;
            }
            // Another worker wrote first: look again at what it wrote.
        }
        Claim::Wait { until_ms: now_ms }
    }

    /// Publishes the outcome of a refresh of the session named `key` (ending its lease), for
    /// the requests that wait for it and those that still carry the old cookie, in every
    /// worker. Another session's live lease in the slot is left alone; a failure does not
    /// replace a result already there.
    pub fn publish(&self, key: &str, outcome: Outcome<'_>, now_ms: u64) {
        let slot = self.slot(key);
        let (kind, sealed) = match outcome {
            Outcome::Done(sealed) => (DONE, sealed),
            Outcome::Failed => (FAILED, ""),
        };
        for _ in 0..CAS_ATTEMPTS {
            let (value, cas) = self.read(&slot);
            if let Some(record) = value.as_deref().and_then(Record::parse) {
                let ours = record.key == key.as_bytes();
                if !ours && record.live_lease(now_ms) {
                    return;
                }
                if ours && kind == FAILED && record.kind == DONE {
                    return;
                }
            }
            let value = Record::encode(kind, now_ms, key, sealed);
            if self.store.set(&slot, &value, Some(cas)) {
                return;
            }
        }
    }

    /// Records the sealed session a refresh of the session named `key` made (`now` in Unix
    /// seconds).
    pub fn record(&self, key: &str, sealed: &str, now: u64) {
        self.publish(key, Outcome::Done(sealed), now.saturating_mul(1000));
    }
}

impl RecentRefreshes for SharedRefreshes<'_> {
    fn recent(&self, key: &str, now: u64) -> Option<String> {
        let (value, _) = self.store.get(&self.slot(key));
        let value = value?;
        let record = Record::parse(&value)?;
        let age_s = now.saturating_sub(record.time_ms / 1000);
        (record.kind == DONE && record.key == key.as_bytes() && age_s <= REFRESH_SHARED_SECONDS)
            .then(|| String::from_utf8(record.sealed.to_vec()).ok())
            .flatten()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keystore::MemoryShared as Map;

    const ISSUER: &str = "https://op.example.com";
    const T: u64 = 1_700_000_000_000;

    fn refreshes(map: &Map) -> SharedRefreshes<'_> {
        SharedRefreshes {
            store: map,
            issuer: ISSUER,
        }
    }

    #[test]
    fn a_refresh_is_shared_for_a_minute_under_its_own_key_only() {
        let map = Map::default();
        let refreshes = refreshes(&map);
        refreshes.record("key-1", "sealed-session", 100);
        assert_eq!(
            refreshes.recent("key-1", 160).as_deref(),
            Some("sealed-session")
        );
        assert_eq!(refreshes.recent("key-1", 161), None);
        assert_eq!(refreshes.recent("key-2", 100), None);
        let other = SharedRefreshes {
            store: &map,
            issuer: "https://other.example.com",
        };
        assert_eq!(other.recent("key-1", 100), None);
        // Bounded: however many sessions refresh, at most REFRESH_SLOTS values per issuer.
        for i in 0..1000 {
            refreshes.record(&format!("k{i}"), "s", 100);
        }
        assert!(map.0.borrow().len() <= usize::from(REFRESH_SLOTS) + 1);
        // Nothing in shared data names a token: keys and values hold digests and sealed data.
        for key in map.0.borrow().keys() {
            assert!(key.starts_with("mesh-oauth/refresh/"), "{key}");
        }
    }

    #[test]
    fn one_worker_wins_the_lease_the_others_wait_then_use_its_result() {
        let map = Map::default();
        // Two workers, one shared data.
        let first = refreshes(&map);
        let second = refreshes(&map);
        assert_eq!(first.claim("key-1", T, 3_000), Claim::Won);
        assert_eq!(
            second.claim("key-1", T + 10, 3_000),
            Claim::Wait {
                until_ms: T + 3_000
            }
        );
        // Still nothing to use while the call is under way.
        assert_eq!(second.recent("key-1", (T + 10) / 1000), None);
        first.publish("key-1", Outcome::Done("sealed-new"), T + 200);
        assert_eq!(
            second.recent("key-1", (T + 300) / 1000).as_deref(),
            Some("sealed-new")
        );
        // A request that looked an instant before the result came does not refresh again.
        assert!(matches!(
            second.claim("key-1", T + 300, 3_000),
            Claim::Wait { .. }
        ));
    }

    #[test]
    fn two_workers_that_both_find_no_record_claim_one_lease() {
        let map = Map::default();
        let refreshes = refreshes(&map);
        let slot = refreshes.slot("key-1");
        // Both read "nothing" before either writes: only one create succeeds.
        let (_, cas_a) = refreshes.read(&slot);
        let (_, cas_b) = refreshes.read(&slot);
        let lease = Record::encode(LEASE, T + 3_000, "key-1", "");
        assert!(map.set(&slot, &lease, Some(cas_a)));
        assert!(!map.set(&slot, &lease, Some(cas_b)));
        // And through `claim`: the second sees the first's lease.
        assert!(matches!(
            refreshes.claim("key-1", T, 3_000),
            Claim::Wait { .. }
        ));
    }

    #[test]
    fn a_lease_of_a_worker_that_never_answers_runs_out() {
        let map = Map::default();
        let refreshes = refreshes(&map);
        assert_eq!(refreshes.claim("key-1", T, 3_000), Claim::Won);
        assert_eq!(refreshes.claim("key-1", T + 3_001, 3_000), Claim::Won);
    }

    #[test]
    fn a_failure_is_shared_briefly_and_never_replaces_a_result() {
        let map = Map::default();
        let refreshes = refreshes(&map);
        assert_eq!(refreshes.claim("key-1", T, 3_000), Claim::Won);
        refreshes.publish("key-1", Outcome::Failed, T + 100);
        assert_eq!(refreshes.recent("key-1", T / 1000), None);
        assert_eq!(
            refreshes.claim("key-1", T + 100 + FAILED_SHARED_MS, 3_000),
            Claim::FailedElsewhere
        );
        // Later, a new attempt may go ahead (the OP may be back).
        assert_eq!(
            refreshes.claim("key-1", T + 101 + FAILED_SHARED_MS, 3_000),
            Claim::Won
        );
        refreshes.publish("key-1", Outcome::Done("sealed"), T + 10_000);
        refreshes.publish("key-1", Outcome::Failed, T + 10_001);
        assert_eq!(
            refreshes.recent("key-1", (T + 10_001) / 1000).as_deref(),
            Some("sealed")
        );
    }

    #[test]
    fn another_sessions_live_lease_in_the_same_slot_is_left_alone() {
        let map = Map::default();
        let refreshes = refreshes(&map);
        let slot = refreshes.slot("key-1");
        let other = (0..10_000)
            .map(|i| format!("other-{i}"))
            .find(|k| refreshes.slot(k) == slot)
            .unwrap();
        assert_eq!(refreshes.claim(&other, T, 3_000), Claim::Won);
        assert_eq!(refreshes.claim("key-1", T + 1, 3_000), Claim::Unshared);
        // Its result does not end the other session's lease either.
        refreshes.publish("key-1", Outcome::Done("mine"), T + 2);
        assert!(matches!(
            refreshes.claim(&other, T + 3, 3_000),
            Claim::Wait { .. }
        ));
        // Once that lease is over, the slot is anyone's.
        refreshes.publish(&other, Outcome::Done("theirs"), T + 4);
        assert_eq!(refreshes.claim("key-1", T + 5, 3_000), Claim::Won);
    }

    #[test]
    fn a_record_of_another_layout_is_replaced() {
        let map = Map::default();
        let refreshes = refreshes(&map);
        let slot = refreshes.slot("key-1");
        let mut old = 100u64.to_be_bytes().to_vec();
        old.extend_from_slice(b"\x05key-1sealed");
        map.set(&slot, &old, None);
        assert_eq!(refreshes.recent("key-1", 100), None);
        assert_eq!(refreshes.claim("key-1", T, 3_000), Claim::Won);
    }
}
