//! Issued tokens for the whole sidecar, single-flight: a pure state machine over a
//! [`SharedStore`] (Envoy's shared data in the filter, a map in tests), in the key store's
//! manner.
//!
//! The shared data holds `capacity` slots; a token's key (a hash of what it is for, never the
//! token) may live in one of two of them. A slot's record carries the token, when it expires
//! and when to renew it, and a fetch lease: a worker that finds no usable token claims the
//! lease by compare-and-swap and makes the one call to the token endpoint; every other request,
//! on any worker, waits for the record that call publishes. Each worker keeps a copy of the
//! records it used, read again from the shared data only once its renewal is due.

use crate::keystore::SharedStore;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A lease outlives the call's own timeout by this much before another worker may take over.
const LEASE_MARGIN_MS: u64 = 1_000;
/// Attempts at a compare-and-swap update before giving up (the caller waits and asks again).
const CAS_ATTEMPTS: usize = 4;
/// First retry after a failed call; doubles per failure up to `MAX_RETRY_MS`.
const FIRST_RETRY_MS: u64 = 1_000;
const MAX_RETRY_MS: u64 = 30_000;
/// A token is dropped this long before it expires (clock skew, time in transit) …
const MAX_EXPIRY_MARGIN_MS: u64 = 30_000;
/// … or a tenth of its life, if that is less.
const EXPIRY_MARGIN_FRACTION: u64 = 10;
/// Renewal starts between 80 % and 90 % of the usable life.
const RENEW_FROM: f64 = 0.8;
const RENEW_SPREAD: f64 = 0.1;
/// Envoy creates a missing value whatever CAS token comes with the write and checks the
/// token against an existing one, so a token no value has makes the write create-only.
const CREATE_ONLY: u32 = u32::MAX;
const SLOT_PREFIX: &str = "mesh-oauth/v1/outbound/";

/// What a token is for, hashed: never the token itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 16]);

impl CacheKey {
    /// SHA-256 over the length-prefixed parts, truncated to 128 bits.
    pub fn of(parts: &[&[u8]]) -> CacheKey {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in parts {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
        let digest = context.finish();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest.as_ref()[..16]);
        CacheKey(key)
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The two slots this key may live in.
    fn slots(&self, capacity: usize) -> [usize; 2] {
        let half = |bytes: &[u8]| {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            u64::from_be_bytes(word)
        };
        let capacity = capacity.max(1) as u64;
        [
            (half(&self.0[..8]) % capacity) as usize,
            (half(&self.0[8..]) % capacity) as usize,
        ]
    }
}

/// A usable token. Not `Debug`: it is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub value: String,
    /// `token_type` Bearer (else `N_A`).
    pub bearer: bool,
    pub expires_ms: u64,
}

/// This worker holds the fetch for `key`: it makes the call and hands the outcome to
/// [`TokenCache::complete`] (or [`TokenCache::abandon`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub key: CacheKey,
    /// `None`: both slots were busy with other fetches; the token is for this worker only.
    slot: Option<usize>,
    until_ms: u64,
}

/// What a request finds.
pub enum Lookup {
    /// A token before its renewal time.
    Fresh(Token),
    /// A token past its renewal time: attach it; if the lease is here, this worker renews.
    Renew(Token, Option<Lease>),
    /// No usable token; this worker holds the fetch.
    Fetch(Lease),
    /// No usable token; another worker (or an earlier request here) fetches it until then.
    Wait { until_ms: u64 },
    /// No usable token, and the last call failed: not before the backoff ends.
    Failing { retry_after_seconds: u64 },
}

/// A call's outcome for [`TokenCache::complete`].
pub enum Outcome {
    /// The token, its `expires_in`, and the latest time it may be used at all (the subject
    /// token's `exp`), both capped before storing.
    Issued {
        value: String,
        bearer: bool,
        expires_in_ms: u64,
        not_after_ms: Option<u64>,
    },
    Failed,
}

/// The per-slot record every worker shares (JSON in the shared data).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    /// The key's hex; empty: a free slot.
    key: String,
    token: Option<String>,
    bearer: bool,
    expires_ms: u64,
    renew_ms: u64,
    /// A worker's call is under way until then.
    lease_until_ms: u64,
    /// No new call before then: backoff after failures.
    retry_ms: u64,
    failures: u32,
}

impl Record {
    fn token(&self, now_ms: u64) -> Option<Token> {
        let value = self.token.as_ref()?;
        // An expired token is never handed out.
        (now_ms < self.expires_ms).then(|| Token {
            value: value.clone(),
            bearer: self.bearer,
            expires_ms: self.expires_ms,
        })
    }

    /// Nobody would miss it: no live token and no call under way.
    fn free(&self, now_ms: u64) -> bool {
        self.key.is_empty() || (self.token(now_ms).is_none() && self.lease_until_ms <= now_ms)
    }
}

pub struct TokenCache {
    capacity: usize,
    /// Records this worker used, by key, with the slot they came from.
    local: HashMap<CacheKey, (Option<usize>, Record)>,
}

impl TokenCache {
    /// `capacity`: `limits.maxOutboundTokens`. `previous`: this worker's cache before a
    /// configuration push (the shared records survive it anyway).
    pub fn new(capacity: usize, previous: Option<TokenCache>) -> TokenCache {
        let capacity = capacity.max(1);
        let mut local = previous.map(|p| p.local).unwrap_or_default();
        local.retain(|_, (slot, _)| slot.is_none_or(|slot| slot < capacity));
        TokenCache { capacity, local }
    }

    /// The token for `key`, or what to do for one. `timeout_ms`: the call's timeout, for the
    /// lease.
    pub fn lookup(
        &mut self,
        store: &impl SharedStore,
        key: CacheKey,
        now_ms: u64,
        timeout_ms: u64,
    ) -> Lookup {
        // The fast path: this worker's copy, before its renewal time, needs no shared read.
        if let Some((_, record)) = self.local.get(&key) {
            if now_ms < record.renew_ms {
                if let Some(token) = record.token(now_ms) {
                    return Lookup::Fresh(token);
                }
            }
        }
        let lease_until = now_ms
            .saturating_add(timeout_ms)
            .saturating_add(LEASE_MARGIN_MS);
        for _ in 0..CAS_ATTEMPTS {
            let (slot, record, cas) = self.find_slot(store, key, now_ms);
            let Some(slot) = slot else {
                // Both slots are busy with other keys' calls: fetch for this worker alone,
                // unless an earlier request here already does.
                return self.local_only(key, now_ms, lease_until);
            };
            let token = record.token(now_ms);
            let ours = record.key == key.hex();
            let leased = ours && record.lease_until_ms > now_ms;
            let backing_off = ours && record.retry_ms > now_ms;
            if ours && now_ms < record.renew_ms {
                if let Some(token) = token.clone() {
                    self.remember(key, Some(slot), record);
                    return Lookup::Fresh(token);
                }
            }
            if leased || backing_off {
                let until_ms = record.lease_until_ms.max(record.retry_ms);
                let retry_after_seconds = record.retry_ms.saturating_sub(now_ms).div_ceil(1000);
                self.remember(key, Some(slot), record);
                return match token {
                    Some(token) => Lookup::Renew(token, None),
                    None if leased => Lookup::Wait { until_ms },
                    None => Lookup::Failing {
                        retry_after_seconds: retry_after_seconds.max(1),
                    },
                };
            }
            // Due for a call, and nobody makes it: claim the lease.
            let mut claimed = if ours {
                record.clone()
            } else {
                Record {
                    key: key.hex(),
                    ..Record::default()
                }
            };
            claimed.lease_until_ms = lease_until;
            if write(store, slot, &claimed, cas) {
                self.remember(key, Some(slot), claimed);
                let lease = Lease {
                    key,
                    slot: Some(slot),
                    until_ms: lease_until,
                };
                return match token {
                    Some(token) => Lookup::Renew(token, Some(lease)),
                    None => Lookup::Fetch(lease),
                };
            }
            // Another worker wrote first: look again at what it did.
        }
        Lookup::Wait {
            until_ms: now_ms.saturating_add(LEASE_MARGIN_MS),
        }
    }

    /// Publishes a call's outcome for every worker and releases the lease. Returns the token
    /// when one was issued that is usable now; a failure keeps a still-valid token.
    pub fn complete(
        &mut self,
        store: &impl SharedStore,
        lease: &Lease,
        outcome: Outcome,
        now_ms: u64,
        jitter: f64,
    ) -> Option<Token> {
        let issued = match outcome {
            Outcome::Issued {
                value,
                bearer,
                expires_in_ms,
                not_after_ms,
            } => {
                let life = not_after_ms.map_or(expires_in_ms, |not_after| {
                    expires_in_ms.min(not_after.saturating_sub(now_ms))
                });
                let margin = MAX_EXPIRY_MARGIN_MS.min(life / EXPIRY_MARGIN_FRACTION);
                let usable = life.saturating_sub(margin);
                let share = RENEW_FROM + RENEW_SPREAD * jitter.clamp(0.0, 1.0);
                (usable > 0).then(|| {
                    (
                        value,
                        bearer,
                        now_ms.saturating_add(usable),
                        now_ms.saturating_add((usable as f64 * share) as u64),
                    )
                })
            }
            Outcome::Failed => None,
        };
        let key_hex = lease.key.hex();
        let change = |record: &mut Record| {
            if record.key != key_hex {
                // The slot went to another key meanwhile: start afresh in it.
                *record = Record {
                    key: key_hex.clone(),
                    ..Record::default()
                };
            }
            if record.lease_until_ms == lease.until_ms {
                record.lease_until_ms = 0;
            }
            match &issued {
                Some((value, bearer, expires_ms, renew_ms)) => {
                    record.token = Some(value.clone());
                    record.bearer = *bearer;
                    record.expires_ms = *expires_ms;
                    record.renew_ms = *renew_ms;
                    record.retry_ms = 0;
                    record.failures = 0;
                }
                None => {
                    record.failures = record.failures.saturating_add(1);
                    let backoff = FIRST_RETRY_MS
                        .saturating_mul(1u64 << record.failures.saturating_sub(1).min(16))
                        .min(MAX_RETRY_MS);
                    // Equal jitter: at least half the backoff.
                    let spread = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
                    record.retry_ms = now_ms.saturating_add((backoff as f64 * spread) as u64);
                }
            }
        };
        let shared = lease.slot.and_then(|slot| {
            for _ in 0..CAS_ATTEMPTS {
                let (mut record, cas) = read(store, slot);
                if record.key != key_hex && !record.free(now_ms) {
                    // Another key's live record took the slot meanwhile: leave it alone.
                    return None;
                }
                change(&mut record);
                if write(store, slot, &record, cas) {
                    return Some((slot, record));
                }
            }
            None
        });
        let (slot, record) = match shared {
            Some((slot, record)) => (Some(slot), record),
            None => {
                // This worker's own copy still serves its requests.
                let mut record = self
                    .local
                    .get(&lease.key)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                change(&mut record);
                (None, record)
            }
        };
        let token = record.token(now_ms);
        self.remember(lease.key, slot, record);
        token
    }

    /// A call this worker holds will not be answered (its root context is gone, or it was
    /// never dispatched and no failure is to be counted): the lease is freed, so the next
    /// request calls at once rather than after the lease.
    pub fn abandon(&mut self, store: &impl SharedStore, lease: &Lease) {
        let key_hex = lease.key.hex();
        let release = |record: &mut Record| {
            if record.key == key_hex && record.lease_until_ms == lease.until_ms {
                record.lease_until_ms = 0;
            }
        };
        if let Some(slot) = lease.slot {
            for _ in 0..CAS_ATTEMPTS {
                let (mut record, cas) = read(store, slot);
                if record.key != key_hex || record.lease_until_ms != lease.until_ms {
                    break;
                }
                release(&mut record);
                if write(store, slot, &record, cas) {
                    break;
                }
            }
        }
        if let Some((_, record)) = self.local.get_mut(&lease.key) {
            release(record);
        }
    }

    /// The slot holding `key`, else the one to claim for it: free, or holding the token that
    /// expires first and no call. `None` when both hold calls for other keys.
    fn find_slot(
        &self,
        store: &impl SharedStore,
        key: CacheKey,
        now_ms: u64,
    ) -> (Option<usize>, Record, Option<u32>) {
        let key_hex = key.hex();
        let [first, second] = key.slots(self.capacity);
        let read_first = read(store, first);
        if read_first.0.key == key_hex {
            return (Some(first), read_first.0, read_first.1);
        }
        let read_second = if second == first {
            None
        } else {
            Some(read(store, second))
        };
        if let Some((record, cas)) = &read_second {
            if record.key == key_hex {
                return (Some(second), record.clone(), *cas);
            }
        }
        let mut candidates = vec![(first, read_first)];
        if let Some(read_second) = read_second {
            candidates.push((second, read_second));
        }
        let choice = candidates
            .iter()
            .filter(|(_, (record, _))| record.free(now_ms) || record.lease_until_ms <= now_ms)
            .min_by_key(|(_, (record, _))| {
                if record.free(now_ms) {
                    0
                } else {
                    record.expires_ms.max(1)
                }
            });
        match choice {
            // Evicted or free: this key starts with an empty record there.
            Some((slot, (_, cas))) => (
                Some(*slot),
                Record {
                    key: String::new(),
                    ..Record::default()
                },
                *cas,
            ),
            None => (None, Record::default(), None),
        }
    }

    fn local_only(&mut self, key: CacheKey, now_ms: u64, lease_until: u64) -> Lookup {
        let mut record = self
            .local
            .get(&key)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| Record {
                key: key.hex(),
                ..Record::default()
            });
        let token = record.token(now_ms);
        if record.lease_until_ms > now_ms {
            return match token {
                Some(token) => Lookup::Renew(token, None),
                None => Lookup::Wait {
                    until_ms: record.lease_until_ms,
                },
            };
        }
        if record.retry_ms > now_ms && token.is_none() {
            return Lookup::Failing {
                retry_after_seconds: record.retry_ms.saturating_sub(now_ms).div_ceil(1000).max(1),
            };
        }
        record.lease_until_ms = lease_until;
        self.remember(key, None, record);
        let lease = Lease {
            key,
            slot: None,
            until_ms: lease_until,
        };
        match token {
            Some(token) => Lookup::Renew(token, Some(lease)),
            None => Lookup::Fetch(lease),
        }
    }

    /// Keeps this worker's copy, bounded like the shared slots.
    fn remember(&mut self, key: CacheKey, slot: Option<usize>, record: Record) {
        if self.local.len() >= self.capacity && !self.local.contains_key(&key) {
            let oldest = self
                .local
                .iter()
                .min_by_key(|(_, (_, r))| r.expires_ms)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.local.remove(&oldest);
            }
        }
        self.local.insert(key, (slot, record));
    }

    #[cfg(test)]
    fn local_len(&self) -> usize {
        self.local.len()
    }
}

fn slot_key(slot: usize) -> String {
    format!("{SLOT_PREFIX}{slot}")
}

fn read(store: &impl SharedStore, slot: usize) -> (Record, Option<u32>) {
    match store.get(&slot_key(slot)) {
        (Some(bytes), cas) => (serde_json::from_slice(&bytes).unwrap_or_default(), cas),
        (None, _) => (Record::default(), Some(CREATE_ONLY)),
    }
}

fn write(store: &impl SharedStore, slot: usize, record: &Record, cas: Option<u32>) -> bool {
    match serde_json::to_vec(record) {
        Ok(bytes) => store.set(&slot_key(slot), &bytes, cas),
        Err(_) => false,
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
