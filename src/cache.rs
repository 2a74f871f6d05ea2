//! Verified tokens, remembered per worker so a client that reuses its token (the common
//! case) is not re-verified on every request. Keyed by a keyed 128-bit hash of the token,
//! never the token itself; an entry is only a shortcut past parsing and the signature:
//! its time claims are checked again on every hit (the other claim checks depend only on the
//! token and the configuration, and a new configuration starts a new cache), and an entry
//! is ignored once its provider's keys changed.
//!
//! Once the cache is full, a token is admitted on its second sighting only (a doorkeeper of
//! keyed digests, as in TinyLFU): at a gateway where most tokens are seen once, a one-shot
//! token then neither pays for its insert and the eviction it causes, nor pushes out a token
//! that clients do reuse. Forgetting a sighting only costs a verification, never a check.

use crate::alg::Alg;
use crate::claims::Times;
use crate::token::HeaderMemo;
use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher13};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;

#[derive(Debug, Clone)]
pub struct CachedToken {
    pub provider: usize,
    /// The provider's key-set version that verified the token.
    pub key_version: u64,
    /// Header facts kept for the audit log (the header itself is not kept).
    pub alg: Alg,
    pub kid: Option<Rc<str>>,
    pub claims: Rc<Map<String, Value>>,
    /// What the claims' checks on a later request depend on.
    pub times: Times,
    pub payload_segment: Option<Rc<str>>,
}

pub struct TokenCache {
    entries: DigestMap<CachedToken>,
    /// Tokens verified while the cache was full and not admitted: the high half of their
    /// digest in a slot its bits choose (0: empty), overwritten freely. Allocated when the
    /// cache first fills, so a cache that never does costs nothing more.
    sightings: Vec<u64>,
    /// The same worker's parsed token headers (kept here: what a token's verification
    /// remembers lives with the cache, even one turned off).
    headers: HeaderMemo,
}

/// At most this many sightings (32 KiB), whatever the capacity: enough to tell a token
/// reused within a few thousand others from one seen once.
const MAX_SIGHTINGS: usize = 4096;

/// Entries by a keyed 128-bit digest, at most `capacity` of them, the oldest pushed out first:
/// the verified-token cache and login's session cache. The digest's keys are random per map,
/// so an attacker cannot compute a digest offline.
pub(crate) struct DigestMap<V> {
    capacity: usize,
    entries: HashMap<u128, V, BuildHasherDefault<DigestHasher>>,
    /// Insertion order, oldest first: the entry to evict when full.
    order: VecDeque<u128>,
    keys: (u64, u64),
}

impl<V> DigestMap<V> {
    /// `capacity` 0 keeps nothing; `reserve` entries are allocated at once.
    pub(crate) fn new(capacity: usize, reserve: usize) -> DigestMap<V> {
        DigestMap {
            capacity,
            entries: HashMap::with_capacity_and_hasher(reserve, Default::default()),
            order: VecDeque::with_capacity(reserve),
            // std's RandomState draws its keys from the system's random source (WASI
            // `random_get` in the VM); a hash under it yields a random key for ours.
            keys: (
                RandomState::new().hash_one(0u8),
                RandomState::new().hash_one(1u8),
            ),
        }
    }

    /// A hasher under this map's keys, for the caller to write what the digest covers.
    pub(crate) fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.keys.0, self.keys.1)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn get(&self, digest: u128) -> Option<&V> {
        self.entries.get(&digest)
    }

    pub(crate) fn insert(&mut self, digest: u128, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(digest, value).is_some() {
            return;
        }
        self.order.push_back(digest);
        while self.entries.len() > self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                }
                None => break,
            }
        }
    }

    pub(crate) fn remove(&mut self, digest: u128) {
        if self.entries.remove(&digest).is_some() {
            self.order.retain(|d| *d != digest);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Digests are already keyed random values: the map uses their low bits as they are
/// instead of hashing them again.
#[derive(Default)]
pub(crate) struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, digest: u128) {
        self.0 = digest as u64;
    }
}

impl TokenCache {
    /// `capacity` 0 disables the cache.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            entries: DigestMap::new(capacity, capacity.min(4096)),
            sightings: Vec::new(),
            headers: HeaderMemo::default(),
        }
    }

    pub fn digest(&self, token: &str) -> u128 {
        let mut hasher = self.entries.hasher();
        hasher.write(token.as_bytes());
        hasher.finish128().as_u128()
    }

    pub fn header_memo(&mut self) -> &mut HeaderMemo {
        &mut self.headers
    }

    pub fn get(&self, digest: u128) -> Option<&CachedToken> {
        self.entries.get(digest)
    }

    pub fn insert(&mut self, digest: u128, token: CachedToken) {
        if self.entries.capacity() == 0 {
            return;
        }
        // Only a token not found in the cache is inserted: no lookup for one to replace.
        if self.entries.len() >= self.entries.capacity() && !self.seen_before(digest) {
            return;
        }
        self.entries.insert(digest, token);
    }

    /// Whether the full cache saw `digest` not long ago (it is then admitted); if not, its
    /// sighting is noted. The map's index uses the digest's low half, this its high half.
    fn seen_before(&mut self, digest: u128) -> bool {
        if self.sightings.is_empty() {
            let slots = self
                .entries
                .capacity()
                .min(MAX_SIGHTINGS)
                .next_power_of_two();
            self.sightings = vec![0; slots];
        }
        let high = (digest >> 64) as u64;
        let tag = high | 1; // never 0, the empty slot
        let slot = (high >> 32) as usize & (self.sightings.len() - 1);
        match self.sightings.get_mut(slot) {
            Some(seen) if *seen == tag => {
                *seen = 0;
                true
            }
            Some(seen) => {
                *seen = tag;
                false
            }
            None => true,
        }
    }

    pub fn remove(&mut self, digest: u128) {
        self.entries.remove(digest);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(provider: usize) -> CachedToken {
        CachedToken {
            provider,
            key_version: 1,
            alg: Alg::RS256,
            kid: None,
            claims: Rc::new(Map::new()),
            times: Times::new(0.0, None, None),
            payload_segment: None,
        }
    }

    #[test]
    fn digests_differ_per_token_and_per_cache() {
        let a = TokenCache::new(4);
        let b = TokenCache::new(4);
        assert_eq!(a.digest("x.y.z"), a.digest("x.y.z"));
        assert_ne!(a.digest("x.y.z"), a.digest("x.y.Z"));
        assert_ne!(
            a.digest("x.y.z"),
            b.digest("x.y.z"),
            "keys are random per cache"
        );
    }

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let mut cache = TokenCache::new(2);
        let (d1, d2, d3) = (cache.digest("1"), cache.digest("2"), cache.digest("3"));
        cache.insert(d1, entry(1));
        cache.insert(d2, entry(2));
        cache.insert(d3, entry(3));
        cache.insert(d3, entry(3)); // admitted on its second sighting
        assert_eq!(cache.len(), 2);
        assert!(cache.get(d1).is_none());
        assert_eq!(cache.get(d3).map(|e| e.provider), Some(3));
        cache.remove(d2);
        assert_eq!(cache.len(), 1);
        cache.insert(d1, entry(1)); // room again: admitted at once
        cache.insert(d2, entry(2));
        cache.insert(d2, entry(2));
        assert!(cache.get(d3).is_none(), "removal kept the order consistent");
        assert_eq!(cache.get(d2).map(|e| e.provider), Some(2));
    }

    #[test]
    fn a_full_cache_admits_a_token_on_its_second_sighting_only() {
        let mut cache = TokenCache::new(2);
        let (d1, d2) = (cache.digest("1"), cache.digest("2"));
        cache.insert(d1, entry(1));
        cache.insert(d2, entry(2));
        let one_shots: Vec<u128> = (0..100)
            .map(|n| cache.digest(&format!("once {n}")))
            .collect();
        for &digest in &one_shots {
            cache.insert(digest, entry(9));
        }
        assert_eq!(cache.len(), 2);
        assert!(
            cache.get(d1).is_some() && cache.get(d2).is_some(),
            "one-shot tokens evict nothing"
        );
        let reused = cache.digest("reused");
        cache.insert(reused, entry(3));
        assert!(cache.get(reused).is_none(), "not on its first sighting");
        cache.insert(reused, entry(3));
        assert_eq!(cache.get(reused).map(|e| e.provider), Some(3));
        assert!(cache.get(d1).is_none(), "the oldest made room");
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn capacity_zero_disables_it() {
        let mut cache = TokenCache::new(0);
        let d = cache.digest("t");
        cache.insert(d, entry(0));
        assert!(cache.is_empty());
    }
}
