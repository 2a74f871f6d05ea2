//! Signing keys per provider, and when to fetch them, for the whole sidecar: a pure state
//! machine over a [`SharedStore`] (Envoy's shared data in the filter, a map in tests).
//!
//! Every worker VM keeps its own parsed keys, but the fetch schedule lives in the shared
//! store, one small `meta` record per provider plus the raw key set. A worker that finds a
//! fetch due claims it by compare-and-swap on `meta` (a lease until the fetch's timeout), so
//! one fetch serves every worker; the others adopt the key set the winner stored.

use crate::authorize::{KeyLookup, KeyState};
use crate::config::{Config, HttpTarget, KeySource, Provider};
use crate::keys::{self, JwksLimits, KeySet};
use serde::{Deserialize, Serialize};

/// The shortest refresh interval a `Cache-Control: max-age` can ask for.
const MIN_REFRESH_SECONDS: u64 = 30;
/// First retry after a failed fetch; doubles per failure up to `MAX_RETRY_MS`.
const FIRST_RETRY_MS: u64 = 500;
const MAX_RETRY_MS: u64 = 60_000;
/// A lease outlives the fetch's own timeout by this much before another worker may take over.
const LEASE_MARGIN_MS: u64 = 1_000;
/// Attempts at a compare-and-swap update before giving up until the next tick.
const CAS_ATTEMPTS: usize = 4;

/// Envoy's shared data: process-wide, with a compare-and-swap token per value.
pub trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// `false` when `cas` no longer matches: another worker wrote first.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `<issuer>/.well-known/openid-configuration`
    Discovery,
    Jwks,
}

/// A fetch this worker has claimed and should dispatch now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub provider: usize,
    pub stage: Stage,
    pub target: HttpTarget,
    pub timeout_ms: u64,
}

/// A fetch's answer as the host gave it. `status` is `None` when the call failed (reset).
pub struct FetchAnswer<'a> {
    pub status: Option<u32>,
    pub cache_control: Option<&'a str>,
    pub body: &'a [u8],
}

/// What [`KeyStore::sync`] did: providers whose keys or prospects changed (their held
/// requests should be looked at again) and fetches to dispatch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncResult {
    pub changed: Vec<usize>,
    pub fetches: Vec<Fetch>,
}

/// The per-provider record every worker shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// When the stored key set was fetched; 0: never. Also its version.
    fetched_ms: u64,
    /// When the next refresh is due (jittered, so a fleet does not fetch in lockstep).
    refresh_ms: u64,
    /// A worker's fetch is under way until then.
    fetching_until_ms: u64,
    /// When the last fetch started: the base of the unknown-kid rate limit.
    attempted_ms: u64,
    /// No attempt before then: backoff after failures.
    retry_ms: u64,
    failures: u32,
    /// The `jwks_uri` learnt through discovery.
    jwks_uri: Option<String>,
}

struct Entry {
    /// Shared-data key prefix: the same provider (issuer, key source, cluster) in any
    /// configuration shares its keys.
    slot: String,
    issuer: String,
    source: KeySource,
    cluster_override: Option<String>,
    cache_seconds: u64,
    timeout_ms: u64,
    min_refetch_ms: u64,
    max_stale_ms: u64,
    keys: Option<KeySet>,
    /// `fetched_ms` of the keys held here.
    version: u64,
    /// The last shared record seen.
    meta: Meta,
    /// An unknown kid asked for a fetch at this time; cleared once a fetch started after it.
    refetch_wanted_ms: Option<u64>,
}

pub struct KeyStore {
    entries: Vec<Entry>,
    jwks_limits: JwksLimits,
    rng: u64,
}

impl KeyStore {
    /// Inline key sets are parsed here; keys of providers unchanged from `previous` (a
    /// reconfiguration) are kept. `seed` feeds the jitter.
    pub fn new(config: &Config, previous: Option<KeyStore>, seed: u64) -> Result<KeyStore, String> {
        let jwks_limits = JwksLimits::from(&config.limits);
        let mut previous: Vec<Entry> = previous.map(|p| p.entries).unwrap_or_default();
        let mut entries = Vec::with_capacity(config.providers.len());
        for (i, provider) in config.providers.iter().enumerate() {
            let slot = slot_for(provider);
            let kept = previous
                .iter()
                .position(|e| e.slot == slot)
                .map(|at| previous.swap_remove(at));
            let (keys, version, meta) = match (&provider.keys, kept) {
                (KeySource::Inline(doc), _) => {
                    let set = keys::parse_jwks(doc.as_bytes(), &jwks_limits, true)
                        .map_err(|e| format!("providers[{i}].jwks: {}", e.describe()))?;
                    (Some(set), 0, Meta::default())
                }
                (_, Some(old)) => (old.keys, old.version, old.meta),
                (_, None) => (None, 0, Meta::default()),
            };
            entries.push(Entry {
                slot,
                issuer: provider.issuer.clone(),
                source: provider.keys.clone(),
                cluster_override: provider.jwks_cluster.clone(),
                cache_seconds: provider.jwks_cache_seconds,
                timeout_ms: provider.timeout_ms,
                min_refetch_ms: provider.jwks_min_refetch_seconds.saturating_mul(1000),
                max_stale_ms: provider.jwks_max_stale_seconds.saturating_mul(1000),
                keys,
                version,
                meta,
                refetch_wanted_ms: None,
            });
        }
        Ok(KeyStore {
            entries,
            jwks_limits,
            rng: splitmix64(seed) | 1,
        })
    }

    /// Reads the shared records, adopts key sets other workers fetched, drops keys stale
    /// beyond their bound, and claims the fetches that are due.
    pub fn sync(&mut self, store: &impl SharedStore, now_ms: u64) -> SyncResult {
        let mut result = SyncResult::default();
        for provider in 0..self.entries.len() {
            let limits = self.jwks_limits;
            let Some(entry) = self.entries.get_mut(provider) else {
                continue;
            };
            if matches!(entry.source, KeySource::Inline(_)) {
                continue;
            }
            let before = entry.prospect(now_ms);
            let (meta, cas) = read_meta(store, &entry.slot);
            if meta.fetched_ms != entry.version && meta.fetched_ms != 0 {
                entry.adopt(store, meta.fetched_ms, &limits);
            }
            entry.meta = meta;
            if entry.version != 0 && now_ms.saturating_sub(entry.version) > entry.max_stale_ms {
                // Fail closed: keys nobody could refresh for this long are not trusted.
                entry.keys = None;
                entry.version = 0;
            }
            if let Some(fetch) = entry.claim_fetch(store, cas, provider, now_ms) {
                result.fetches.push(fetch);
            }
            if entry.prospect(now_ms) != before || entry.version != before.version {
                result.changed.push(provider);
            }
        }
        result
    }

    /// A token named a kid the keys lack: ask for a refetch, which `sync` starts when the
    /// per-provider rate limit allows. Returns whether a fetch may still bring the key.
    pub fn want_refetch(&mut self, provider: usize, now_ms: u64) -> bool {
        let possible = self.refetch_possible(provider, now_ms);
        if let Some(entry) = self.entries.get_mut(provider) {
            if possible && entry.refetch_wanted_ms.is_none() {
                entry.refetch_wanted_ms = Some(now_ms);
            }
        }
        possible
    }

    /// The host refused to dispatch a claimed fetch (e.g. unknown cluster).
    pub fn dispatch_failed(&mut self, store: &impl SharedStore, provider: usize, now_ms: u64) {
        let jitter = self.next_random();
        if let Some(entry) = self.entries.get_mut(provider) {
            entry.record_failure(store, Stage::Jwks, now_ms, jitter);
        }
    }

    /// Feeds a fetch's answer in and publishes the outcome to every worker. `Ok` carries
    /// how many keys are now loaded (0 after discovery); `Err` says why the answer was not
    /// used: the last good keys stay.
    pub fn on_answer(
        &mut self,
        store: &impl SharedStore,
        provider: usize,
        stage: Stage,
        answer: &FetchAnswer<'_>,
        now_ms: u64,
    ) -> Result<usize, String> {
        let jitter = self.next_random();
        let limits = self.jwks_limits;
        let Some(entry) = self.entries.get_mut(provider) else {
            return Err("answer for a provider no longer configured".to_string());
        };
        let outcome = match (answer.status, stage) {
            (None, _) => Err("key server did not answer".to_string()),
            (Some(200), Stage::Discovery) => entry.discovered_uri(answer.body),
            (Some(200), Stage::Jwks) => keys::parse_jwks(answer.body, &limits, false)
                .map(Learnt::Keys)
                .map_err(|e| format!("key set refused: {}", e.describe())),
            (Some(status), _) => Err(format!("key server answered status {status}")),
        };
        match outcome {
            Ok(Learnt::JwksUri(uri)) => {
                entry.update_meta(store, |meta| {
                    meta.jwks_uri = Some(uri.clone());
                    // Lease released and no backoff: the next sync claims the key fetch at once.
                    meta.fetching_until_ms = 0;
                    meta.retry_ms = 0;
                });
                Ok(0)
            }
            Ok(Learnt::Keys(set)) => {
                let loaded = set.len();
                let refresh_ms = jittered(
                    entry.refresh_seconds(answer.cache_control) * 1000,
                    0.8,
                    jitter,
                );
                // The key set first, then the record that announces it.
                let mut stored = now_ms.max(1).to_be_bytes().to_vec();
                stored.extend_from_slice(answer.body);
                store.set(&keys_key(&entry.slot), &stored, None);
                // 0 means "never fetched".
                let version = now_ms.max(1);
                entry.update_meta(store, |meta| {
                    meta.fetched_ms = version;
                    meta.refresh_ms = now_ms.saturating_add(refresh_ms);
                    meta.fetching_until_ms = 0;
                    meta.retry_ms = 0;
                    meta.failures = 0;
                });
                entry.keys = Some(set);
                entry.version = version;
                Ok(loaded)
            }
            Err(problem) => {
                entry.record_failure(store, stage, now_ms, jitter);
                Err(problem)
            }
        }
    }

    /// Seconds a client should wait before retrying when keys are unavailable.
    pub fn retry_after_seconds(&self, provider: usize, now_ms: u64) -> u64 {
        self.entries.get(provider).map_or(1, |e| {
            let wait_ms = e
                .meta
                .retry_ms
                .max(e.meta.fetching_until_ms)
                .saturating_sub(now_ms);
            wait_ms.div_ceil(1000).max(1)
        })
    }

    /// xorshift64: jitter needs spread, not secrecy.
    fn next_random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Learnt {
    JwksUri(String),
    Keys(KeySet),
}

/// What a provider's keys look like to a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prospect {
    ready: bool,
    loading: bool,
    version: u64,
}

impl Entry {
    fn prospect(&self, now_ms: u64) -> Prospect {
        Prospect {
            ready: self.keys.is_some(),
            loading: self.fetch_expected_within(now_ms, self.timeout_ms),
            version: self.version,
        }
    }

    /// Whether a fetch is under way, or one will start, within `window_ms`.
    fn fetch_expected_within(&self, now_ms: u64, window_ms: u64) -> bool {
        let horizon = now_ms.saturating_add(window_ms);
        self.meta.fetching_until_ms > now_ms || self.meta.retry_ms <= horizon
    }

    fn adopt(&mut self, store: &impl SharedStore, version: u64, limits: &JwksLimits) {
        let (Some(stored), _) = store.get(&keys_key(&self.slot)) else {
            return;
        };
        let Some((stamp, body)) = stored.split_first_chunk::<8>() else {
            return;
        };
        // The record and the key set are written separately: adopt only a matching pair.
        if u64::from_be_bytes(*stamp) != version {
            return;
        }
        if let Ok(set) = keys::parse_jwks(body, limits, false) {
            self.keys = Some(set);
            self.version = version;
        }
    }

    fn claim_fetch(
        &mut self,
        store: &impl SharedStore,
        mut cas: Option<u32>,
        provider: usize,
        now_ms: u64,
    ) -> Option<Fetch> {
        for _ in 0..CAS_ATTEMPTS {
            let meta = &self.meta;
            if let Some(since) = self.refetch_wanted_ms {
                // A fetch started, or finished, since the unknown kid was seen: it is served.
                if meta.attempted_ms >= since || meta.fetched_ms >= since {
                    self.refetch_wanted_ms = None;
                }
            }
            let refetch_due = self.refetch_wanted_ms.is_some()
                && now_ms.saturating_sub(meta.attempted_ms) >= self.min_refetch_ms;
            let due = meta.fetched_ms == 0 || now_ms >= meta.refresh_ms || refetch_due;
            let blocked = meta.fetching_until_ms > now_ms || now_ms < meta.retry_ms;
            if !due || blocked {
                return None;
            }
            let (stage, target) = self.next_target()?;
            let mut claimed = meta.clone();
            claimed.fetching_until_ms = now_ms
                .saturating_add(self.timeout_ms)
                .saturating_add(LEASE_MARGIN_MS);
            claimed.attempted_ms = now_ms;
            if write_meta(store, &self.slot, &claimed, cas) {
                self.meta = claimed;
                self.refetch_wanted_ms = None;
                return Some(Fetch {
                    provider,
                    stage,
                    target,
                    timeout_ms: self.timeout_ms,
                });
            }
            // Another worker wrote first: look again at what it did.
            let (meta, fresh_cas) = read_meta(store, &self.slot);
            self.meta = meta;
            cas = fresh_cas;
        }
        None
    }

    fn next_target(&self) -> Option<(Stage, HttpTarget)> {
        match &self.source {
            KeySource::Inline(_) => None,
            KeySource::Remote(target) => Some((Stage::Jwks, target.clone())),
            KeySource::Discovery(discovery) => match &self.meta.jwks_uri {
                Some(uri) => crate::config::http_target(uri, self.cluster_override.as_deref())
                    .ok()
                    .map(|target| (Stage::Jwks, target)),
                None => Some((Stage::Discovery, discovery.clone())),
            },
        }
    }

    fn record_failure(&mut self, store: &impl SharedStore, stage: Stage, now_ms: u64, jitter: f64) {
        let rediscover = matches!(self.source, KeySource::Discovery(_)) && stage == Stage::Jwks;
        self.update_meta(store, |meta| {
            meta.failures = meta.failures.saturating_add(1);
            let backoff = FIRST_RETRY_MS
                .saturating_mul(1u64 << meta.failures.saturating_sub(1).min(16))
                .min(MAX_RETRY_MS);
            // Equal jitter: at least half the backoff, so retries spread but still back off.
            meta.retry_ms = now_ms.saturating_add(jittered(backoff, 0.5, jitter));
            meta.fetching_until_ms = 0;
            if rediscover {
                // The key URL may have moved: ask the discovery document again.
                meta.jwks_uri = None;
            }
        });
    }

    /// Read-modify-write of the shared record, retried when another worker wrote between.
    fn update_meta(&mut self, store: &impl SharedStore, change: impl Fn(&mut Meta)) {
        for _ in 0..CAS_ATTEMPTS {
            let (mut meta, cas) = read_meta(store, &self.slot);
            change(&mut meta);
            if write_meta(store, &self.slot, &meta, cas) {
                self.meta = meta;
                return;
            }
        }
    }

    /// `Cache-Control: max-age` may shorten the refresh interval, never below a floor
    /// (a key server cannot make us hammer it) and never beyond `jwksCacheSeconds`.
    fn refresh_seconds(&self, cache_control: Option<&str>) -> u64 {
        let configured = self.cache_seconds;
        match cache_control.and_then(max_age) {
            Some(age) => age.clamp(MIN_REFRESH_SECONDS.min(configured), configured),
            None => configured,
        }
    }

    fn discovered_uri(&self, body: &[u8]) -> Result<Learnt, String> {
        let doc: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| "discovery document is not JSON".to_string())?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err("discovery document names a different issuer".to_string());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("discovery document has no jwks_uri")?;
        crate::config::http_target(uri, self.cluster_override.as_deref())
            .map_err(|problem| format!("discovery jwks_uri: {problem}"))?;
        Ok(Learnt::JwksUri(uri.to_string()))
    }
}

/// Spreads a small seed (a time, a context id) over all 64 bits for xorshift.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `fraction`..1 of `ms`, by `random` in [0, 1).
fn jittered(ms: u64, fraction: f64, random: f64) -> u64 {
    let factor = fraction + (1.0 - fraction) * random.clamp(0.0, 1.0);
    (ms as f64 * factor) as u64
}

fn slot_for(provider: &Provider) -> String {
    let source = match &provider.keys {
        KeySource::Inline(_) => String::new(),
        KeySource::Remote(t) | KeySource::Discovery(t) => format!("{}\u{0}{}", t.url, t.cluster),
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{}\u{0}{source}", provider.issuer).as_bytes(),
    );
    let hex: String = digest
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("mesh-oauth/v1/{hex}")
}

fn keys_key(slot: &str) -> String {
    format!("{slot}/keys")
}

/// Envoy creates a missing value whatever CAS token comes with the write, but checks the
/// token against an existing one; a token no value has yet makes the write create-only, so
/// two workers that both found no record cannot both claim the first fetch.
const CREATE_ONLY: u32 = u32::MAX;

fn read_meta(store: &impl SharedStore, slot: &str) -> (Meta, Option<u32>) {
    match store.get(&format!("{slot}/meta")) {
        (Some(bytes), cas) => (serde_json::from_slice(&bytes).unwrap_or_default(), cas),
        (None, _) => (Meta::default(), Some(CREATE_ONLY)),
    }
}

fn write_meta(store: &impl SharedStore, slot: &str, meta: &Meta, cas: Option<u32>) -> bool {
    match serde_json::to_vec(meta) {
        Ok(bytes) => store.set(&format!("{slot}/meta"), &bytes, cas),
        Err(_) => false,
    }
}

fn max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())?
    })
}

impl KeyLookup for KeyStore {
    fn keys(&self, provider: usize, now_ms: u64) -> KeyState<'_> {
        match self.entries.get(provider) {
            Some(Entry {
                keys: Some(set), ..
            }) => KeyState::Ready(set),
            Some(entry) if entry.fetch_expected_within(now_ms, entry.timeout_ms) => {
                KeyState::Loading
            }
            _ => KeyState::Unavailable {
                retry_after_seconds: self.retry_after_seconds(provider, now_ms),
            },
        }
    }

    fn key_version(&self, provider: usize) -> u64 {
        self.entries.get(provider).map_or(0, |e| e.version)
    }

    fn refetch_possible(&self, provider: usize, now_ms: u64) -> bool {
        self.entries.get(provider).is_some_and(|entry| {
            let meta = &entry.meta;
            !matches!(entry.source, KeySource::Inline(_))
                && (meta.fetching_until_ms > now_ms
                    || now_ms.saturating_sub(meta.attempted_ms) >= entry.min_refetch_ms)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::testing::TestKey;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;

    const ISSUER: &str = "https://idp.example.com";
    const URI: &str = "https://idp.example.com/jwks";

    /// Envoy's shared-data semantics: a CAS token per value, bumped on every write; a write
    /// with a stale token fails; creating a value is unconditional.
    #[derive(Default)]
    struct Shared(RefCell<HashMap<String, (Vec<u8>, u32)>>);

    impl SharedStore for Shared {
        fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
            match self.0.borrow().get(key) {
                Some((value, cas)) => (Some(value.clone()), Some(*cas)),
                None => (None, None),
            }
        }

        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
            let mut map = self.0.borrow_mut();
            let next = match map.get(key) {
                Some((_, current)) if cas.is_some_and(|c| c != *current) => return false,
                Some((_, current)) => current + 1,
                None => 1,
            };
            map.insert(key.to_string(), (value.to_vec(), next));
            true
        }
    }

    fn config(provider: serde_json::Value) -> Config {
        let mut p = json!({"issuer": ISSUER, "jwksUri": URI});
        for (k, v) in provider.as_object().unwrap() {
            match v {
                serde_json::Value::Null => {
                    p.as_object_mut().unwrap().remove(k);
                }
                _ => p[k] = v.clone(),
            }
        }
        crate::config::parse(&json!({"providers": [p]}).to_string()).unwrap()
    }

    fn store(provider: serde_json::Value) -> KeyStore {
        KeyStore::new(&config(provider), None, 7).unwrap()
    }

    fn jwks() -> Vec<u8> {
        json!({"keys": [TestKey::ed25519().jwk(Some("k1"))]})
            .to_string()
            .into_bytes()
    }

    fn ok<'a>(body: &'a [u8], cache_control: Option<&'a str>) -> FetchAnswer<'a> {
        FetchAnswer {
            status: Some(200),
            cache_control,
            body,
        }
    }

    fn failed(status: u32) -> FetchAnswer<'static> {
        FetchAnswer {
            status: Some(status),
            cache_control: None,
            body: b"",
        }
    }

    fn state(s: &KeyStore, now_ms: u64) -> &'static str {
        match s.keys(0, now_ms) {
            KeyState::Ready(_) => "ready",
            KeyState::Loading => "loading",
            KeyState::Unavailable { .. } => "unavailable",
        }
    }

    /// Runs `workers` key stores against one shared store every `step_ms` until `until_ms`,
    /// answering each fetch at once with `answer`; returns the number of fetches.
    fn run_fleet(
        shared: &Shared,
        workers: &mut [KeyStore],
        from_ms: u64,
        until_ms: u64,
        step_ms: u64,
        body: &[u8],
    ) -> usize {
        let mut fetches = 0;
        let mut now = from_ms;
        while now < until_ms {
            let mut this_round = 0;
            for worker in workers.iter_mut() {
                for fetch in worker.sync(shared, now).fetches {
                    fetches += 1;
                    this_round += 1;
                    assert_eq!(this_round, 1, "two workers fetched at {now}");
                    worker
                        .on_answer(shared, fetch.provider, fetch.stage, &ok(body, None), now)
                        .unwrap();
                }
            }
            now += step_ms;
        }
        fetches
    }

    #[test]
    fn one_fetch_serves_every_worker() {
        let shared = Shared::default();
        let mut workers: Vec<KeyStore> = (0..4)
            .map(|i| KeyStore::new(&config(json!({"jwksCacheSeconds": 60})), None, i + 1).unwrap())
            .collect();
        let claimed: Vec<Fetch> = workers
            .iter_mut()
            .flat_map(|w| w.sync(&shared, 0).fetches)
            .collect();
        assert_eq!(claimed.len(), 1, "one worker claims the first fetch");
        assert_eq!(claimed[0].target.cluster, "outbound|443||idp.example.com");
        assert!(workers.iter().all(|w| state(w, 0) == "loading"));
        workers[0]
            .on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 10)
            .unwrap();
        for w in workers.iter_mut() {
            let sync = w.sync(&shared, 20);
            assert!(sync.fetches.is_empty());
        }
        assert!(
            workers.iter().all(|w| state(w, 20) == "ready"),
            "the others adopt the keys"
        );
        // Ten refresh periods with every worker syncing each 100 ms: one fetch per period.
        // Refreshes come after 48 to 60 s (jitter), so 600 s hold 10 to 12 of them.
        let fetches = run_fleet(&shared, &mut workers, 100, 600_000, 100, &jwks());
        assert!(
            (10..=12).contains(&fetches),
            "{fetches} fetches by 4 workers in 600 s"
        );
    }

    #[test]
    fn two_workers_that_both_find_no_record_claim_one_fetch() {
        let shared = Shared::default();
        let mut a = store(json!({}));
        let mut b = store(json!({}));
        // Both read "no record" before either writes.
        let (meta_a, cas_a) = read_meta(&shared, &a.entries[0].slot);
        let (meta_b, cas_b) = read_meta(&shared, &b.entries[0].slot);
        a.entries[0].meta = meta_a;
        b.entries[0].meta = meta_b;
        let claimed_a = a.entries[0].claim_fetch(&shared, cas_a, 0, 0);
        let claimed_b = b.entries[0].claim_fetch(&shared, cas_b, 0, 0);
        assert!(claimed_a.is_some());
        assert!(
            claimed_b.is_none(),
            "the second creation attempt finds the first one's claim"
        );
    }

    #[test]
    fn refreshes_are_jittered_before_the_cache_time() {
        let mut s = store(json!({"jwksCacheSeconds": 100}));
        let shared = Shared::default();
        s.sync(&shared, 0);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        let refresh = s.entries[0].meta.refresh_ms;
        assert!(
            (80_000..=100_000).contains(&refresh),
            "refresh at {refresh}"
        );
        let other = KeyStore::new(&config(json!({"jwksCacheSeconds": 100})), None, 12345);
        let mut other = other.unwrap();
        let shared2 = Shared::default();
        other.sync(&shared2, 0);
        other
            .on_answer(&shared2, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        assert_ne!(
            other.entries[0].meta.refresh_ms, refresh,
            "different seeds spread"
        );
    }

    #[test]
    fn max_age_shortens_the_refresh_within_bounds() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 600}));
        let mut refresh_after = |cache_control: &str, now: u64| {
            s.sync(&shared, now);
            s.entries[0].meta.refresh_ms = now; // make the fetch due
            s.entries[0].meta.fetching_until_ms = 0;
            let body = jwks();
            s.on_answer(
                &shared,
                0,
                Stage::Jwks,
                &ok(&body, Some(cache_control)),
                now,
            )
            .unwrap();
            s.entries[0].meta.refresh_ms - now
        };
        let at = refresh_after("public, max-age=100", 0);
        assert!((80_000..=100_000).contains(&at), "{at}");
        let at = refresh_after("max-age=1", 1_000_000);
        assert!((24_000..=30_000).contains(&at), "floor of 30 s: {at}");
        let at = refresh_after("max-age=99999", 2_000_000);
        assert!(
            (480_000..=600_000).contains(&at),
            "ceiling of jwksCacheSeconds: {at}"
        );
    }

    #[test]
    fn failures_back_off_with_jitter_and_never_replace_good_keys() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 60}));
        s.sync(&shared, 0);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        let bad_answers = [
            failed(500),
            FetchAnswer {
                status: None,
                cache_control: None,
                body: b"",
            },
            ok(b"<html>", None),
            ok(br#"{"keys": []}"#, None),
            ok(&[b' '; 300 * 1024], None),
        ];
        let mut now = 60_000;
        let mut gaps = Vec::new();
        for answer in &bad_answers {
            let fetch = s.sync(&shared, now).fetches;
            assert_eq!(fetch.len(), 1, "a retry is due at {now}");
            assert!(s.on_answer(&shared, 0, Stage::Jwks, answer, now).is_err());
            assert_eq!(state(&s, now), "ready", "last good keys stay");
            let gap = s.entries[0].meta.retry_ms - now;
            assert!(
                s.sync(&shared, now + gap - 1).fetches.is_empty(),
                "no retry before the backoff"
            );
            gaps.push(gap);
            now += gap;
        }
        // Backoff doubles (0.5 s, 1 s, 2 s, ...) with up to half of it taken off as jitter.
        for (i, gap) in gaps.iter().enumerate() {
            let full = FIRST_RETRY_MS << i;
            assert!(
                (full / 2..=full).contains(gap),
                "retry {i}: {gap} ms of {full}"
            );
        }
    }

    #[test]
    fn keys_stale_beyond_the_bound_are_dropped() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 60, "jwksMaxStaleSeconds": 3600}));
        s.sync(&shared, 0);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        let mut now = 60_000;
        while now <= 3_600_000 {
            for fetch in s.sync(&shared, now).fetches {
                let _ = s.on_answer(&shared, fetch.provider, fetch.stage, &failed(503), now);
            }
            assert_eq!(state(&s, now), "ready", "at {now}");
            now += 10_000;
        }
        s.sync(&shared, 3_600_010);
        assert_ne!(state(&s, 3_600_010), "ready");
    }

    #[test]
    fn before_keys_exist_requests_may_wait_unless_retries_are_far_off() {
        let shared = Shared::default();
        let mut s = store(json!({"timeout": "2s"}));
        assert_eq!(state(&s, 0), "loading", "first fetch due");
        s.sync(&shared, 0);
        assert_eq!(state(&s, 0), "loading", "in flight");
        // The key server stays down: backoff grows past the 2 s a request may wait.
        let mut now = 0;
        for _ in 0..8 {
            let _ = s.on_answer(&shared, 0, Stage::Jwks, &failed(503), now);
            now = s.entries[0].meta.retry_ms;
            s.sync(&shared, now);
        }
        let _ = s.on_answer(&shared, 0, Stage::Jwks, &failed(503), now);
        let KeyState::Unavailable {
            retry_after_seconds,
        } = s.keys(0, now)
        else {
            panic!("expected unavailable, got {}", state(&s, now));
        };
        assert!(retry_after_seconds >= 2, "{retry_after_seconds}");
    }

    #[test]
    fn a_kid_storm_is_rate_limited_for_the_whole_sidecar() {
        let shared = Shared::default();
        let cfg = config(json!({"jwksCacheSeconds": 600, "jwksMinRefetchSeconds": 30}));
        let mut workers: Vec<KeyStore> = (0..4)
            .map(|i| KeyStore::new(&cfg, None, i + 9).unwrap())
            .collect();
        run_fleet(&shared, &mut workers, 0, 100, 100, &jwks());
        let mut fetches = 0;
        // 2 000 requests with random kids over 100 s, spread over the workers.
        for i in 0..2000u64 {
            let now = 1_000 + i * 50;
            let worker = &mut workers[(i % 4) as usize];
            worker.want_refetch(0, now);
            for fetch in worker.sync(&shared, now).fetches {
                fetches += 1;
                worker
                    .on_answer(
                        &shared,
                        fetch.provider,
                        fetch.stage,
                        &ok(&jwks(), None),
                        now,
                    )
                    .unwrap();
            }
        }
        // 100 s at one refetch per 30 s: at most 4 (the first one 30 s after the initial fetch).
        assert!((3..=4).contains(&fetches), "{fetches} fetches");
    }

    #[test]
    fn an_unknown_kid_may_wait_only_while_a_fetch_can_come() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksMinRefetchSeconds": 30}));
        s.sync(&shared, 0);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        assert!(!s.refetch_possible(0, 10_000), "rate limited");
        assert!(s.refetch_possible(0, 30_000));
        assert!(s.want_refetch(0, 30_000));
        let fetches = s.sync(&shared, 30_000).fetches;
        assert_eq!(fetches.len(), 1);
        assert!(
            s.refetch_possible(0, 30_001),
            "a fetch is in flight: wait for it"
        );
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 30_100)
            .unwrap();
        assert!(
            !s.refetch_possible(0, 30_200),
            "fetched: the kid is really unknown"
        );
    }

    #[test]
    fn discovery_finds_the_jwks_uri_then_fetches_keys() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksUri": null}));
        let due = s.sync(&shared, 0).fetches;
        assert_eq!(due[0].stage, Stage::Discovery);
        assert_eq!(due[0].target.path, "/.well-known/openid-configuration");
        let doc = json!({"issuer": ISSUER, "jwks_uri": "https://keys.example.com:8443/certs"})
            .to_string();
        assert_eq!(
            s.on_answer(&shared, 0, Stage::Discovery, &ok(doc.as_bytes(), None), 5),
            Ok(0)
        );
        let due = s.sync(&shared, 5).fetches;
        assert_eq!(due[0].stage, Stage::Jwks);
        assert_eq!(due[0].target.cluster, "outbound|8443||keys.example.com");
        assert_eq!(due[0].target.authority, "keys.example.com:8443");
        assert_eq!(due[0].target.path, "/certs");
        // Another worker needs no discovery of its own.
        let mut other = store(json!({"jwksUri": null}));
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 6)
            .unwrap();
        assert!(other.sync(&shared, 7).fetches.is_empty());
        assert_eq!(state(&other, 7), "ready");
    }

    #[test]
    fn discovery_for_another_issuer_is_refused() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksUri": null, "jwksCluster": "idp-cluster"}));
        s.sync(&shared, 0);
        let doc =
            json!({"issuer": "https://evil.example.com", "jwks_uri": "https://evil.example.com/k"})
                .to_string();
        let refused = s.on_answer(&shared, 0, Stage::Discovery, &ok(doc.as_bytes(), None), 0);
        assert_eq!(
            refused,
            Err("discovery document names a different issuer".to_string())
        );
        let due = s.sync(&shared, 10_000).fetches;
        assert_eq!(due[0].stage, Stage::Discovery, "still discovering");
        assert_eq!(due[0].target.cluster, "idp-cluster");
    }

    #[test]
    fn reconfiguration_keeps_keys_of_unchanged_providers_only() {
        let shared = Shared::default();
        let two = |second_uri: &str| {
            crate::config::parse(
                &json!({"providers": [
                {"issuer": ISSUER, "jwksUri": URI},
                {"issuer": "https://b.example.com", "jwksUri": second_uri}]})
                .to_string(),
            )
            .unwrap()
        };
        let mut s = KeyStore::new(&two("https://b.example.com/k1"), None, 3).unwrap();
        for fetch in s.sync(&shared, 0).fetches {
            s.on_answer(&shared, fetch.provider, fetch.stage, &ok(&jwks(), None), 0)
                .unwrap();
        }
        assert!(matches!(s.keys(1, 0), KeyState::Ready(_)));
        let s = KeyStore::new(&two("https://b.example.com/k2"), Some(s), 3).unwrap();
        assert!(
            matches!(s.keys(0, 1), KeyState::Ready(_)),
            "unchanged provider keeps keys"
        );
        assert!(
            matches!(s.keys(1, 1), KeyState::Loading),
            "a new key source starts empty"
        );
    }

    #[test]
    fn inline_keys_are_ready_without_fetching() {
        let shared = Shared::default();
        let jwk = TestKey::ed25519().jwk(Some("k1"));
        let mut s = store(json!({"jwksUri": null, "jwks": json!({"keys": [jwk]}).to_string()}));
        assert_eq!(state(&s, 0), "ready");
        assert_eq!(s.sync(&shared, 0), SyncResult::default());
        assert!(!s.refetch_possible(0, 0));
    }
}
