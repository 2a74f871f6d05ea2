//! Signing keys (and revocation lists) per provider, and when to fetch them, for the whole
//! sidecar: a pure state machine over a [`SharedStore`] (Envoy's shared data in the filter,
//! a map in tests).
//!
//! Every worker VM keeps its own parsed copy, but each fetched document has its schedule in
//! the shared store: one small `meta` record plus the raw body. A worker that finds a fetch
//! due claims it by compare-and-swap on `meta` (a lease until the fetch's timeout), so one
//! fetch serves every worker; the others adopt the body the winner stored.

use crate::authorize::{KeyLookup, KeyState};
use crate::compile::Compiled;
use crate::config::{self, HttpTarget, KeySource, Provider, Revoked};
use crate::host_verify::TrustedHost;
use crate::keys::{self, JwksLimits, KeySet};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

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

/// Envoy's shared-data semantics in memory, for one process with no Envoy (the command line
/// and the tests): a CAS token per value, bumped on every write; a write with a stale token
/// fails; creating a value is unconditional.
#[derive(Debug, Default)]
pub struct MemoryShared(pub std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>);

impl SharedStore for MemoryShared {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `<issuer>/.well-known/openid-configuration`
    Discovery,
    Jwks,
    /// The provider's `revocationUri`.
    Revocations,
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

/// The per-document record every worker shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// When the stored body was fetched; 0: never. Also its version.
    fetched_ms: u64,
    /// When the fetch of the stored body started.
    #[serde(default)]
    fetch_started_ms: u64,
    /// When the next refresh is due (jittered, so a fleet does not fetch in lockstep).
    refresh_ms: u64,
    /// A worker's fetch is under way until then.
    fetching_until_ms: u64,
    /// When the last fetch started: a fetch that started after an unknown kid was seen
    /// serves it.
    attempted_ms: u64,
    /// When the last fetch asked for by an unknown kid started: the base of the unknown-kid
    /// rate limit. Scheduled refreshes leave it alone, so they never push back first use.
    #[serde(default)]
    kid_refetch_ms: u64,
    /// No attempt before then: backoff after failures.
    retry_ms: u64,
    failures: u32,
    /// The configured interval `refresh_ms` was scheduled with: a configuration with
    /// another one reschedules at once rather than one refresh late.
    #[serde(default)]
    cache_seconds: u64,
    /// The `jwks_uri` learnt through discovery.
    jwks_uri: Option<String>,
    /// The endpoints a browser login uses, learnt through the same discovery (absent when
    /// the document names none: a provider that only issues API tokens).
    #[serde(default)]
    login_endpoints: Option<LoginEndpoints>,
    /// The `token_endpoint` learnt through discovery, for outbound credentials.
    #[serde(default)]
    token_endpoint: Option<String>,
}

/// What a login needs of the discovery document, as every worker shares it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LoginEndpoints {
    authorization: String,
    token: String,
    end_session: Option<String>,
    iss_parameter_supported: bool,
}

/// One fetched document's schedule, as this worker last saw it.
struct Doc {
    /// Shared-data key prefix: the same source in any configuration shares its document.
    slot: String,
    meta: Meta,
    /// `fetched_ms` of the body parsed here; 0: none.
    version: u64,
    cache_seconds: u64,
    timeout_ms: u64,
    max_stale_ms: u64,
    /// Until the first sync: the shared schedule may come from another configuration.
    schedule_unchecked: bool,
}

impl Doc {
    fn new(slot: String, provider: &Provider, cache_seconds: u64) -> Doc {
        Doc {
            slot,
            meta: Meta::default(),
            version: 0,
            cache_seconds,
            timeout_ms: provider.timeout_ms,
            max_stale_ms: provider.jwks_max_stale_seconds.saturating_mul(1000),
            schedule_unchecked: true,
        }
    }

    /// A refresh scheduled under another `jwksCacheSeconds` (or `revocationRefreshSeconds`)
    /// is moved to this configuration's interval, once, by the first worker to see it.
    fn adopt_schedule(&mut self, store: &impl SharedStore, now_ms: u64, jitter: f64) {
        if !std::mem::take(&mut self.schedule_unchecked)
            || self.meta.fetched_ms == 0
            || self.meta.cache_seconds == self.cache_seconds
        {
            return;
        }
        let interval_ms = self.refresh_ms(None, jitter);
        let cache_seconds = self.cache_seconds;
        self.update_meta(store, |meta| {
            if meta.cache_seconds != cache_seconds && meta.fetched_ms != 0 {
                meta.cache_seconds = cache_seconds;
                meta.refresh_ms = meta.fetched_ms.saturating_add(interval_ms).max(now_ms);
            }
        });
    }

    /// Reads the shared record; returns its CAS token and, when another worker stored a
    /// newer body, that body with its version.
    fn read(&mut self, store: &impl SharedStore) -> (Option<u32>, Option<(u64, Vec<u8>)>) {
        let (meta, cas) = read_meta(store, &self.slot);
        let newer = (meta.fetched_ms != self.version && meta.fetched_ms != 0)
            .then(|| stored_body(store, &self.slot, meta.fetched_ms))
            .flatten();
        self.meta = meta;
        (cas, newer)
    }

    fn stale(&self, now_ms: u64) -> bool {
        self.version != 0 && now_ms.saturating_sub(self.version) > self.max_stale_ms
    }

    /// Whether a fetch is under way, or one will start, within `window_ms`.
    fn fetch_expected_within(&self, now_ms: u64, window_ms: u64) -> bool {
        let horizon = now_ms.saturating_add(window_ms);
        self.meta.fetching_until_ms > now_ms || self.meta.retry_ms <= horizon
    }

    /// Claims the fetch when it is due (`extra_due`: an unknown kid asks for one) and nobody
    /// else holds it. Compare-and-swap; retried when another worker wrote in between.
    fn claim(
        &mut self,
        store: &impl SharedStore,
        mut cas: Option<u32>,
        now_ms: u64,
        extra_due: impl Fn(&Meta) -> bool,
    ) -> bool {
        for _ in 0..CAS_ATTEMPTS {
            let meta = &self.meta;
            let scheduled = meta.fetched_ms == 0 || now_ms >= meta.refresh_ms;
            let extra = !scheduled && extra_due(meta);
            let blocked = meta.fetching_until_ms > now_ms || now_ms < meta.retry_ms;
            if !(scheduled || extra) || blocked {
                return false;
            }
            let mut claimed = meta.clone();
            claimed.fetching_until_ms = now_ms
                .saturating_add(self.timeout_ms)
                .saturating_add(LEASE_MARGIN_MS);
            claimed.attempted_ms = now_ms;
            if extra {
                claimed.kid_refetch_ms = now_ms;
            }
            if write_meta(store, &self.slot, &claimed, cas) {
                self.meta = claimed;
                return true;
            }
            // Another worker wrote first: look again at what it did.
            let (meta, fresh_cas) = read_meta(store, &self.slot);
            self.meta = meta;
            cas = fresh_cas;
        }
        false
    }

    /// Stores a good body for every worker and schedules the next refresh.
    fn publish(&mut self, store: &impl SharedStore, body: &[u8], refresh_ms: u64, now_ms: u64) {
        // 0 means "never fetched".
        let version = now_ms.max(1);
        // The body first, then the record that announces it.
        let mut stored = version.to_be_bytes().to_vec();
        stored.extend_from_slice(body);
        store.set(&body_key(&self.slot), &stored, None);
        let cache_seconds = self.cache_seconds;
        self.update_meta(store, |meta| {
            meta.fetch_started_ms = meta.attempted_ms;
            meta.fetched_ms = version;
            meta.refresh_ms = now_ms.saturating_add(refresh_ms);
            meta.cache_seconds = cache_seconds;
            meta.fetching_until_ms = 0;
            meta.retry_ms = 0;
            meta.failures = 0;
        });
        self.version = version;
    }

    fn record_failure(
        &mut self,
        store: &impl SharedStore,
        now_ms: u64,
        jitter: f64,
        also: impl Fn(&mut Meta),
    ) {
        self.update_meta(store, |meta| {
            meta.failures = meta.failures.saturating_add(1);
            let backoff = FIRST_RETRY_MS
                .saturating_mul(1u64 << meta.failures.saturating_sub(1).min(16))
                .min(MAX_RETRY_MS);
            // Equal jitter: at least half the backoff, so retries spread but still back off.
            meta.retry_ms = now_ms.saturating_add(jittered(backoff, 0.5, jitter));
            meta.fetching_until_ms = 0;
            also(meta);
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
    /// (a server cannot make us hammer it) and never beyond the configured interval.
    fn refresh_ms(&self, cache_control: Option<&str>, jitter: f64) -> u64 {
        let configured = self.cache_seconds;
        let seconds = match cache_control.and_then(max_age) {
            Some(age) => age.clamp(MIN_REFRESH_SECONDS.min(configured), configured),
            None => configured,
        };
        jittered(seconds.saturating_mul(1000), 0.8, jitter)
    }

    fn retry_after_seconds(&self, now_ms: u64) -> u64 {
        let wait_ms = self
            .meta
            .retry_ms
            .max(self.meta.fetching_until_ms)
            .saturating_sub(now_ms);
        wait_ms.div_ceil(1000).max(1)
    }
}

/// A provider's revocation list fetched from its `revocationUri`.
struct RemoteRevocations {
    doc: Doc,
    target: HttpTarget,
    list: Option<Revoked>,
}

struct Entry {
    issuer: String,
    source: KeySource,
    cluster_override: Option<String>,
    keys_doc: Doc,
    /// Shared with the compiled configuration for inline keys.
    keys: Option<Arc<KeySet>>,
    min_refetch_ms: u64,
    /// An unknown kid asked for a fetch at this time; cleared once a fetch started after it.
    refetch_wanted_ms: Option<u64>,
    revocations: Option<RemoteRevocations>,
    /// The login endpoints as last built from the document's, so a session request does not
    /// build them (strings copied, the token URL parsed) while they stay the same.
    /// (A `Mutex`, never contended: a key store is one worker's, yet `Sync` like its keys.)
    login_endpoints_built: Mutex<Option<(LoginEndpoints, Arc<crate::login::endpoints::Endpoints>)>>,
}

pub struct KeyStore {
    entries: Vec<Entry>,
    jwks_limits: JwksLimits,
    max_revocation_bytes: usize,
    rng: Spread,
    /// Handed to verification with the keys (see [`KeyStore::use_signature_host`]).
    signature_host: Option<TrustedHost<'static>>,
}

impl KeyStore {
    /// Inline key sets come parsed with the configuration; what providers unchanged from
    /// `previous` (a reconfiguration) had is kept. `seed` feeds the jitter.
    pub fn new(config: &Compiled, previous: Option<KeyStore>, seed: u64) -> KeyStore {
        let jwks_limits = JwksLimits::from(&config.limits);
        let mut previous: Vec<Entry> = previous.map(|p| p.entries).unwrap_or_default();
        let mut entries = Vec::with_capacity(config.providers.len());
        for (i, provider) in config.providers.iter().enumerate() {
            let slot = keys_slot(provider);
            let kept = previous
                .iter()
                .position(|e| e.keys_doc.slot == slot)
                .map(|at| previous.swap_remove(at));
            let mut keys_doc = Doc::new(slot, provider, provider.jwks_cache_seconds);
            let mut keys = config.inline_keys.get(i).cloned().flatten();
            let mut revocations = provider
                .revocation
                .as_ref()
                .map(|remote| RemoteRevocations {
                    doc: Doc::new(
                        revocations_slot(provider, &remote.target),
                        provider,
                        remote.refresh_seconds,
                    ),
                    target: remote.target.clone(),
                    list: None,
                });

            if let Some(old) = kept {
                if keys.is_none() {
                    keys = old.keys;
                    keys_doc.meta = old.keys_doc.meta;
                    keys_doc.version = old.keys_doc.version;
                }
                if let (Some(new), Some(old)) = (&mut revocations, old.revocations) {
                    if new.doc.slot == old.doc.slot {
                        new.list = old.list;
                        new.doc.meta = old.doc.meta;
                        new.doc.version = old.doc.version;
                    }
                }
            }
            entries.push(Entry {
                issuer: provider.issuer.clone(),
                source: provider.keys.clone(),
                cluster_override: provider.jwks_cluster.clone(),
                keys_doc,
                keys,
                min_refetch_ms: provider.jwks_min_refetch_seconds.saturating_mul(1000),
                refetch_wanted_ms: None,
                revocations,
                login_endpoints_built: Mutex::new(None),
            });
        }
        KeyStore {
            entries,
            jwks_limits,
            max_revocation_bytes: config.limits.max_revocation_bytes,
            rng: Spread::new(seed),
            signature_host: None,
        }
    }

    /// The host that verifies RS*/ES* signatures for requests decided with these keys (the
    /// filter sets it after the host's known-answer test); `None`, the default: ring alone.
    pub fn use_signature_host(&mut self, host: Option<TrustedHost<'static>>) {
        self.signature_host = host;
    }

    /// Reads the shared records, adopts what other workers fetched, drops documents stale
    /// beyond their bound, and claims the fetches that are due.
    pub fn sync(&mut self, store: &impl SharedStore, now_ms: u64) -> SyncResult {
        let mut result = SyncResult::default();
        let limits = self.jwks_limits;
        let max_revocation_bytes = self.max_revocation_bytes;
        for (provider, entry) in self.entries.iter_mut().enumerate() {
            let before = entry.prospect(now_ms);
            if !matches!(entry.source, KeySource::Inline(_)) {
                let (mut cas, newer) = entry.keys_doc.read(store);
                if let Some((version, body)) = newer {
                    if let Ok(set) = keys::parse_jwks(&body, &limits, false) {
                        entry.keys = Some(Arc::new(set));
                        entry.keys_doc.version = version;
                    }
                }
                if entry.keys_doc.schedule_unchecked {
                    entry
                        .keys_doc
                        .adopt_schedule(store, now_ms, self.rng.sample());
                    cas = read_meta(store, &entry.keys_doc.slot).1;
                }
                if entry.keys_doc.stale(now_ms) {
                    // Fail closed: keys nobody could refresh for this long are not trusted.
                    entry.keys = None;
                    entry.keys_doc.version = 0;
                }
                if let Some(fetch) = entry.claim_keys_fetch(store, cas, provider, now_ms) {
                    result.fetches.push(fetch);
                }
            }
            if let Some(remote) = &mut entry.revocations {
                let (mut cas, newer) = remote.doc.read(store);
                if let Some((version, body)) = newer {
                    if let Ok(list) = parse_revocations(&body, max_revocation_bytes) {
                        remote.list = Some(list);
                        remote.doc.version = version;
                    }
                }
                if remote.doc.schedule_unchecked {
                    remote.doc.adopt_schedule(store, now_ms, self.rng.sample());
                    cas = read_meta(store, &remote.doc.slot).1;
                }
                if remote.doc.stale(now_ms) {
                    remote.list = None;
                    remote.doc.version = 0;
                }
                if remote.doc.claim(store, cas, now_ms, |_| false) {
                    result.fetches.push(Fetch {
                        provider,
                        stage: Stage::Revocations,
                        target: remote.target.clone(),
                        timeout_ms: remote.doc.timeout_ms,
                    });
                }
            }
            if entry.prospect(now_ms) != before {
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

    /// A fetch this worker started will not be answered (the root context that made it is
    /// gone): its lease is freed, so the next sync fetches again at once rather than after
    /// the fetch timeout.
    pub fn abandon_fetch(&mut self, store: &impl SharedStore, provider: usize, stage: Stage) {
        if let Some(doc) = self
            .entries
            .get_mut(provider)
            .and_then(|e| e.doc_mut(stage))
        {
            let lease = doc.meta.fetching_until_ms;
            if lease != 0 {
                doc.update_meta(store, |meta| {
                    if meta.fetching_until_ms == lease {
                        meta.fetching_until_ms = 0;
                    }
                });
            }
        }
    }

    /// The token endpoint the provider's discovery document named, as a call target.
    pub fn token_endpoint(&self, provider: usize) -> Option<HttpTarget> {
        let entry = self.entries.get(provider)?;
        let uri = entry.keys_doc.meta.token_endpoint.as_deref()?;
        config::http_target(uri, entry.cluster_override.as_deref()).ok()
    }

    /// How old the provider's fetched keys are: those in use, or, once dropped as stale,
    /// the last ones fetched. `None`: inline keys, or never fetched.
    pub fn keys_age_ms(&self, provider: usize, now_ms: u64) -> Option<u64> {
        let entry = self.entries.get(provider)?;
        if matches!(entry.source, KeySource::Inline(_)) {
            return None;
        }
        let doc = &entry.keys_doc;
        let fetched = if doc.version != 0 {
            doc.version
        } else {
            doc.meta.fetched_ms
        };
        (fetched != 0).then(|| now_ms.saturating_sub(fetched))
    }

    /// Whether the provider's keys now come from a fetch that started at `since_ms` or later
    /// (what a held unknown kid waits for).
    pub fn fetched_since(&self, provider: usize, since_ms: u64) -> bool {
        self.entries.get(provider).is_some_and(|entry| {
            let doc = &entry.keys_doc;
            doc.version != 0
                && doc.version == doc.meta.fetched_ms
                && doc.meta.fetch_started_ms >= since_ms
        })
    }

    /// The host refused to dispatch a claimed fetch (e.g. unknown cluster).
    pub fn dispatch_failed(
        &mut self,
        store: &impl SharedStore,
        provider: usize,
        stage: Stage,
        now_ms: u64,
    ) {
        let jitter = self.next_random();
        if let Some(entry) = self.entries.get_mut(provider) {
            if let Some(doc) = entry.doc_mut(stage) {
                doc.record_failure(store, now_ms, jitter, |_| {});
            }
        }
    }

    /// Feeds a fetch's answer in and publishes the outcome to every worker. `Ok` carries
    /// how many keys (or revocation entries) are now loaded, 0 after discovery; `Err` says
    /// why the answer was not used: the last good document stays.
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
        let max_revocation_bytes = self.max_revocation_bytes;
        let Some(entry) = self.entries.get_mut(provider) else {
            return Err("answer for a provider no longer configured".to_string());
        };
        let result = match (answer.status, stage) {
            (None, _) => Err("server did not answer".to_string()),
            (Some(200), Stage::Discovery) => entry.discovered_uri(answer.body).map(|uri| {
                let login = crate::login::endpoints::from_discovery(
                    answer.body,
                    &entry.issuer,
                    entry.cluster_override.as_deref(),
                )
                .ok()
                .map(|found| LoginEndpoints {
                    authorization: found.authorization,
                    token: found.token.url,
                    end_session: found.end_session,
                    iss_parameter_supported: found.iss_parameter_supported,
                });
                let token_endpoint = entry.discovered_token_endpoint(answer.body);
                entry.keys_doc.update_meta(store, |meta| {
                    meta.jwks_uri = Some(uri.clone());
                    meta.login_endpoints = login.clone();
                    meta.token_endpoint = token_endpoint.clone();
                    // Lease released, no backoff: the next sync claims the key fetch at once.
                    meta.fetching_until_ms = 0;
                    meta.retry_ms = 0;
                });
                0
            }),
            (Some(200), Stage::Jwks) => keys::parse_jwks(answer.body, &limits, false)
                .map(|set| {
                    let refresh_ms = entry.keys_doc.refresh_ms(answer.cache_control, jitter);
                    entry
                        .keys_doc
                        .publish(store, answer.body, refresh_ms, now_ms);
                    let loaded = set.len();
                    entry.keys = Some(Arc::new(set));
                    loaded
                })
                .map_err(|e| format!("key set refused: {}", e.describe())),
            (Some(200), Stage::Revocations) => match &mut entry.revocations {
                None => Err("no revocation list configured".to_string()),
                Some(remote) => parse_revocations(answer.body, max_revocation_bytes).map(|list| {
                    let refresh_ms = remote.doc.refresh_ms(answer.cache_control, jitter);
                    remote.doc.publish(store, answer.body, refresh_ms, now_ms);
                    let loaded =
                        list.jtis.len() + list.subjects.len() + list.subjects_issued_before.len();
                    remote.list = Some(list);
                    loaded
                }),
            },
            (Some(status), _) => Err(format!("server answered status {status}")),
        };
        if result.is_err() {
            // The key URL may have moved: a failed key fetch after discovery asks again.
            let rediscover =
                matches!(entry.source, KeySource::Discovery(_)) && stage == Stage::Jwks;
            if let Some(doc) = entry.doc_mut(stage) {
                doc.record_failure(store, now_ms, jitter, |meta| {
                    if rediscover {
                        meta.jwks_uri = None;
                    }
                });
            }
        }
        result
    }

    /// The provider's login endpoints (authorization, token, end-session) once its discovery
    /// document is in, as any worker of the sidecar fetched it.
    pub fn login_endpoints(
        &self,
        provider: usize,
    ) -> Option<Arc<crate::login::endpoints::Endpoints>> {
        let entry = self.entries.get(provider)?;
        let found = entry.keys_doc.meta.login_endpoints.as_ref()?;
        let build = || {
            Some(Arc::new(crate::login::endpoints::Endpoints {
                authorization: found.authorization.clone(),
                token: config::http_target(&found.token, entry.cluster_override.as_deref()).ok()?,
                end_session: found.end_session.clone(),
                iss_parameter_supported: found.iss_parameter_supported,
            }))
        };
        let Ok(mut built) = entry.login_endpoints_built.lock() else {
            return build();
        };
        if let Some((from, endpoints)) = built.as_ref() {
            if from == found {
                return Some(Arc::clone(endpoints));
            }
        }
        let endpoints = build()?;
        *built = Some((found.clone(), Arc::clone(&endpoints)));
        Some(endpoints)
    }

    /// Seconds a client should wait before retrying when keys are unavailable.
    pub fn retry_after_seconds(&self, provider: usize, now_ms: u64) -> u64 {
        self.entries.get(provider).map_or(1, |e| {
            let keys = e.keys_doc.retry_after_seconds(now_ms);
            let revocations = e
                .revocations
                .as_ref()
                .map_or(1, |r| r.doc.retry_after_seconds(now_ms));
            keys.max(revocations)
        })
    }

    fn next_random(&mut self) -> f64 {
        self.rng.sample()
    }
}

/// xorshift64: jitter and sampling need spread, not secrecy.
pub struct Spread(u64);

impl Spread {
    /// Any seed will do: a small one (a time, a context id) is spread over 64 bits first.
    pub fn new(seed: u64) -> Spread {
        Spread(splitmix64(seed) | 1)
    }

    /// Uniform in [0, 1).
    pub fn sample(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What a provider looks like to a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prospect {
    keys_version: u64,
    keys_loading: bool,
    revocations_version: u64,
    revocations_loading: bool,
}

impl Entry {
    fn prospect(&self, now_ms: u64) -> Prospect {
        let keys_loading = self.keys.is_none()
            && self
                .keys_doc
                .fetch_expected_within(now_ms, self.keys_doc.timeout_ms);
        let (revocations_version, revocations_loading) =
            self.revocations.as_ref().map_or((0, false), |r| {
                let loading =
                    r.list.is_none() && r.doc.fetch_expected_within(now_ms, r.doc.timeout_ms);
                (r.doc.version, loading)
            });
        Prospect {
            keys_version: self.keys_doc.version + u64::from(self.keys.is_some()),
            keys_loading,
            revocations_version,
            revocations_loading,
        }
    }

    fn doc_mut(&mut self, stage: Stage) -> Option<&mut Doc> {
        match stage {
            Stage::Discovery | Stage::Jwks => Some(&mut self.keys_doc),
            Stage::Revocations => self.revocations.as_mut().map(|r| &mut r.doc),
        }
    }

    fn claim_keys_fetch(
        &mut self,
        store: &impl SharedStore,
        cas: Option<u32>,
        provider: usize,
        now_ms: u64,
    ) -> Option<Fetch> {
        let (stage, target) = self.next_target()?;
        let wanted = self.refetch_wanted_ms;
        let min_refetch_ms = self.min_refetch_ms;
        let claimed = self.keys_doc.claim(store, cas, now_ms, |meta| {
            wanted.is_some_and(|since| {
                // A fetch that started since the unknown kid was seen serves it; one that was
                // in flight then may have missed the key.
                meta.attempted_ms < since
                    && now_ms.saturating_sub(meta.kid_refetch_ms) >= min_refetch_ms
            })
        });
        if let Some(since) = self.refetch_wanted_ms {
            let meta = &self.keys_doc.meta;
            if meta.attempted_ms >= since {
                self.refetch_wanted_ms = None;
            }
        }
        claimed.then_some(Fetch {
            provider,
            stage,
            target,
            timeout_ms: self.keys_doc.timeout_ms,
        })
    }

    fn next_target(&self) -> Option<(Stage, HttpTarget)> {
        match &self.source {
            KeySource::Inline(_) => None,
            KeySource::Remote(target) => Some((Stage::Jwks, target.clone())),
            KeySource::Discovery(discovery) => match &self.keys_doc.meta.jwks_uri {
                Some(uri) => config::http_target(uri, self.cluster_override.as_deref())
                    .ok()
                    .map(|target| (Stage::Jwks, target)),
                None => Some((Stage::Discovery, discovery.clone())),
            },
        }
    }

    fn discovered_uri(&self, body: &[u8]) -> Result<String, String> {
        let doc: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| "discovery document is not JSON".to_string())?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err("discovery document names a different issuer".to_string());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("discovery document has no jwks_uri")?;
        config::http_target(uri, self.cluster_override.as_deref())
            .map_err(|problem| format!("discovery jwks_uri: {problem}"))?;
        Ok(uri.to_string())
    }

    /// The discovery document's `token_endpoint`, when it is a URL a call can go to
    /// (through the provider's `jwksCluster` if it has one, like the keys).
    fn discovered_token_endpoint(&self, body: &[u8]) -> Option<String> {
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        let uri = doc.get("token_endpoint")?.as_str()?;
        config::http_target(uri, self.cluster_override.as_deref()).ok()?;
        Some(uri.to_string())
    }
}

fn parse_revocations(body: &[u8], max_bytes: usize) -> Result<Revoked, String> {
    if body.len() > max_bytes {
        return Err("revocation list is too large".to_string());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "revocation list is not JSON".to_string())?;
    config::parse_revocation_list(&value).map_err(|e| format!("revocation list refused: {e}"))
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

fn slot_of(parts: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, parts.as_bytes());
    let hex: String = digest
        .as_ref()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("mesh-oauth/v1/{hex}")
}

fn keys_slot(provider: &Provider) -> String {
    let source = match &provider.keys {
        KeySource::Inline(_) => String::new(),
        KeySource::Remote(t) | KeySource::Discovery(t) => format!("{}\u{0}{}", t.url, t.cluster),
    };
    slot_of(&format!("{}\u{0}{source}", provider.issuer))
}

fn revocations_slot(provider: &Provider, target: &HttpTarget) -> String {
    slot_of(&format!(
        "revocations\u{0}{}\u{0}{}\u{0}{}",
        provider.issuer, target.url, target.cluster
    ))
}

fn body_key(slot: &str) -> String {
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

/// The stored body of `version`: the record and the body are written separately, so only
/// a matching pair is taken.
fn stored_body(store: &impl SharedStore, slot: &str, version: u64) -> Option<(u64, Vec<u8>)> {
    let (Some(stored), _) = store.get(&body_key(slot)) else {
        return None;
    };
    let (stamp, body) = stored.split_first_chunk::<8>()?;
    (u64::from_be_bytes(*stamp) == version).then(|| (version, body.to_vec()))
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
    fn signature_host(&self) -> Option<TrustedHost<'_>> {
        self.signature_host
    }

    fn keys(&self, provider: usize, now_ms: u64) -> KeyState<'_> {
        let Some(entry) = self.entries.get(provider) else {
            return KeyState::Unavailable {
                retry_after_seconds: 1,
            };
        };
        // A provider with a revocation list is only usable once the list is in: fail closed.
        let revocations_ready = entry.revocations.as_ref().is_none_or(|r| r.list.is_some());
        if let (Some(set), true) = (&entry.keys, revocations_ready) {
            return KeyState::Ready(set);
        }
        let prospect = entry.prospect(now_ms);
        if prospect.keys_loading || prospect.revocations_loading {
            KeyState::Loading
        } else {
            KeyState::Unavailable {
                retry_after_seconds: self.retry_after_seconds(provider, now_ms),
            }
        }
    }

    fn key_version(&self, provider: usize) -> u64 {
        self.entries.get(provider).map_or(0, |e| e.keys_doc.version)
    }

    fn refresh_failing(&self, provider: usize, now_ms: u64) -> Option<u64> {
        let entry = self.entries.get(provider)?;
        let failing =
            !matches!(entry.source, KeySource::Inline(_)) && entry.keys_doc.meta.failures > 0;
        failing.then(|| entry.keys_doc.retry_after_seconds(now_ms))
    }

    /// Yes when a fetch is under way or the next one (a refetch once the rate window allows
    /// it, or the scheduled refresh, whichever is sooner) starts within the provider's
    /// timeout: a held request never waits longer than that.
    fn refetch_possible(&self, provider: usize, now_ms: u64) -> bool {
        self.entries.get(provider).is_some_and(|entry| {
            let doc = &entry.keys_doc;
            let meta = &doc.meta;
            let next_fetch_ms = meta
                .kid_refetch_ms
                .saturating_add(entry.min_refetch_ms)
                .min(meta.refresh_ms)
                .max(meta.retry_ms);
            !matches!(entry.source, KeySource::Inline(_))
                && (meta.fetching_until_ms > now_ms
                    || next_fetch_ms <= now_ms.saturating_add(doc.timeout_ms))
        })
    }

    fn revocations(&self, provider: usize) -> Option<&Revoked> {
        self.entries
            .get(provider)?
            .revocations
            .as_ref()?
            .list
            .as_ref()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::testing::TestKey;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com";
    const URI: &str = "https://idp.example.com/jwks";

    pub(crate) use super::MemoryShared as Shared;

    fn config(provider: serde_json::Value) -> Compiled {
        let mut p = json!({"issuer": ISSUER, "jwksUri": URI});
        for (k, v) in provider.as_object().unwrap() {
            match v {
                serde_json::Value::Null => {
                    p.as_object_mut().unwrap().remove(k);
                }
                _ => p[k] = v.clone(),
            }
        }
        crate::compile::configure(&json!({"providers": [p]}).to_string()).unwrap()
    }

    fn store(provider: serde_json::Value) -> KeyStore {
        KeyStore::new(&config(provider), None, 7)
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
            .map(|i| KeyStore::new(&config(json!({"jwksCacheSeconds": 60})), None, i + 1))
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
        let (meta_a, cas_a) = read_meta(&shared, &a.entries[0].keys_doc.slot);
        let (meta_b, cas_b) = read_meta(&shared, &b.entries[0].keys_doc.slot);
        a.entries[0].keys_doc.meta = meta_a;
        b.entries[0].keys_doc.meta = meta_b;
        let claimed_a = a.entries[0].claim_keys_fetch(&shared, cas_a, 0, 0);
        let claimed_b = b.entries[0].claim_keys_fetch(&shared, cas_b, 0, 0);
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
        let refresh = s.entries[0].keys_doc.meta.refresh_ms;
        assert!(
            (80_000..=100_000).contains(&refresh),
            "refresh at {refresh}"
        );
        let mut other = KeyStore::new(&config(json!({"jwksCacheSeconds": 100})), None, 12345);
        let shared2 = Shared::default();
        other.sync(&shared2, 0);
        other
            .on_answer(&shared2, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        assert_ne!(
            other.entries[0].keys_doc.meta.refresh_ms, refresh,
            "different seeds spread"
        );
    }

    #[test]
    fn max_age_shortens_the_refresh_within_bounds() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 600}));
        let mut refresh_after = |cache_control: &str, now: u64| {
            s.sync(&shared, now);
            s.entries[0].keys_doc.meta.refresh_ms = now; // make the fetch due
            s.entries[0].keys_doc.meta.fetching_until_ms = 0;
            let body = jwks();
            s.on_answer(
                &shared,
                0,
                Stage::Jwks,
                &ok(&body, Some(cache_control)),
                now,
            )
            .unwrap();
            s.entries[0].keys_doc.meta.refresh_ms - now
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
            let gap = s.entries[0].keys_doc.meta.retry_ms - now;
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
    fn keys_age_grows_while_refreshes_fail_and_restarts_at_a_good_fetch() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 60, "jwksMaxStaleSeconds": 120}));
        assert_eq!(s.keys_age_ms(0, 5), None, "never fetched");
        s.sync(&shared, 1_000);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 1_000)
            .unwrap();
        assert_eq!(s.keys_age_ms(0, 31_000), Some(30_000));
        for now in [61_000, 91_000, 121_000, 200_000] {
            for fetch in s.sync(&shared, now).fetches {
                let _ = s.on_answer(&shared, fetch.provider, fetch.stage, &failed(503), now);
            }
        }
        assert_ne!(state(&s, 200_000), "ready", "dropped as stale");
        assert_eq!(
            s.keys_age_ms(0, 200_000),
            Some(199_000),
            "still counting once dropped"
        );
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 201_000)
            .unwrap();
        assert_eq!(s.keys_age_ms(0, 202_000), Some(1_000));
        let inline = KeyStore::new(
            &config(json!({"jwksUri": null, "jwks": String::from_utf8(jwks()).unwrap()})),
            None,
            7,
        );
        assert_eq!(
            inline.keys_age_ms(0, 10_000),
            None,
            "inline keys have no age"
        );
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
            now = s.entries[0].keys_doc.meta.retry_ms;
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
        let mut workers: Vec<KeyStore> = (0..4).map(|i| KeyStore::new(&cfg, None, i + 9)).collect();
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
        assert!(
            s.refetch_possible(0, 26_000),
            "the window opens within the timeout: wait for it"
        );
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
    fn scheduled_refreshes_leave_the_unknown_kid_refetch_free() {
        let shared = Shared::default();
        let cfg = config(json!({"jwksCacheSeconds": 5, "jwksMinRefetchSeconds": 30}));
        let mut workers: Vec<KeyStore> = (0..4).map(|i| KeyStore::new(&cfg, None, i + 3)).collect();
        // A minute of scheduled refreshes, the last one just before the new kid is seen.
        let scheduled = run_fleet(&shared, &mut workers, 0, 60_000, 100, &jwks());
        assert!(scheduled >= 12, "{scheduled} scheduled fetches");
        let last = workers[0].entries[0].keys_doc.meta.attempted_ms;
        let seen = last + 100;
        assert!(workers[1].want_refetch(0, seen), "a refetch is allowed");
        let fetches = workers[1].sync(&shared, seen).fetches;
        assert_eq!(fetches.len(), 1, "refetched at once, not after the window");
    }

    #[test]
    fn a_fetch_in_flight_when_the_kid_was_seen_does_not_serve_it() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 5, "jwksMinRefetchSeconds": 30}));
        s.sync(&shared, 100_000);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 100_000)
            .unwrap();
        let refresh = s.entries[0].keys_doc.meta.refresh_ms;
        assert_eq!(s.sync(&shared, refresh).fetches.len(), 1, "scheduled");
        // The IdP publishes a key while that fetch is under way; its first token comes.
        let seen = refresh + 20;
        assert!(s.want_refetch(0, seen), "a fetch is in flight");
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), refresh + 40)
            .unwrap();
        assert!(!s.fetched_since(0, seen), "that fetch may predate the key");
        assert_eq!(s.sync(&shared, refresh + 50).fetches.len(), 1, "refetched");
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), refresh + 60)
            .unwrap();
        assert!(s.fetched_since(0, seen));
    }

    #[test]
    fn an_unknown_kid_inside_the_rate_window_waits_for_the_scheduled_refresh() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 5, "jwksMinRefetchSeconds": 30}));
        let start = 100_000;
        s.sync(&shared, start);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), start)
            .unwrap();
        let refresh = s.entries[0].keys_doc.meta.refresh_ms;
        // An unknown-kid refetch uses up the window...
        let now = refresh - 3_000;
        assert!(s.want_refetch(0, now));
        assert_eq!(s.sync(&shared, now).fetches.len(), 1);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), now)
            .unwrap();
        // ...so the next new kid waits for the scheduled refresh, due within the timeout.
        let next = s.entries[0].keys_doc.meta.refresh_ms;
        let seen = next - 2_000;
        assert!(s.want_refetch(0, seen));
        assert!(s.sync(&shared, seen).fetches.is_empty(), "rate limited");
        assert_eq!(
            s.sync(&shared, next).fetches.len(),
            1,
            "the refresh serves it"
        );
    }

    #[test]
    fn an_unknown_kid_is_refused_when_no_fetch_can_come_within_the_timeout() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 1200, "jwksMinRefetchSeconds": 30}));
        s.sync(&shared, 0);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        assert!(s.want_refetch(0, 40_000));
        assert_eq!(s.sync(&shared, 40_000).fetches.len(), 1);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 40_050)
            .unwrap();
        // Window closed until 70 s, refresh 16 minutes away, timeout 5 s.
        assert!(!s.want_refetch(0, 50_000));
        assert!(
            s.want_refetch(0, 65_000),
            "the window opens within the timeout"
        );
        assert!(s.sync(&shared, 65_000).fetches.is_empty());
        assert_eq!(s.sync(&shared, 70_000).fetches.len(), 1);
    }

    #[test]
    fn an_unknown_kid_is_unconfirmed_while_the_last_fetch_failed() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksCacheSeconds": 60}));
        s.sync(&shared, 0);
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 0)
            .unwrap();
        assert_eq!(
            s.refresh_failing(0, 1_000),
            None,
            "fresh keys: a kid they lack is foreign"
        );
        let fetch = s.sync(&shared, 61_000).fetches;
        assert_eq!(fetch.len(), 1);
        let _ = s.on_answer(&shared, 0, Stage::Jwks, &failed(500), 61_050);
        let retry = s.refresh_failing(0, 61_050).expect("failing");
        assert!(
            (1..=5).contains(&retry),
            "until the backoff's retry: {retry}"
        );
        for fetch in s.sync(&shared, 80_000).fetches {
            s.on_answer(
                &shared,
                fetch.provider,
                fetch.stage,
                &ok(&jwks(), None),
                80_000,
            )
            .unwrap();
        }
        assert_eq!(
            s.refresh_failing(0, 80_000),
            None,
            "a good fetch confirms the keys"
        );
        let inline = KeyStore::new(
            &config(json!({"jwksUri": null, "jwks": String::from_utf8(jwks()).unwrap()})),
            None,
            7,
        );
        assert_eq!(inline.refresh_failing(0, 0), None);
    }

    #[test]
    fn a_pushed_cache_interval_applies_to_the_next_refresh() {
        let shared = Shared::default();
        let mut old = store(json!({"jwksCacheSeconds": 600}));
        old.sync(&shared, 0);
        old.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 1_000)
            .unwrap();
        // A push makes a new root context: a store without `previous`, the same shared record.
        let mut shorter = store(json!({"jwksCacheSeconds": 5}));
        assert!(shorter.sync(&shared, 2_000).fetches.is_empty());
        assert!(
            shorter.entries[0].keys_doc.meta.refresh_ms <= 6_000,
            "rescheduled from the fetch at 1 s"
        );
        assert_eq!(shorter.sync(&shared, 6_000).fetches.len(), 1);
        shorter
            .on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 6_000)
            .unwrap();

        let mut longer = store(json!({"jwksCacheSeconds": 1200}));
        longer.sync(&shared, 7_000);
        let refresh = longer.entries[0].keys_doc.meta.refresh_ms;
        assert!(refresh >= 6_000 + 960_000, "{refresh}");
        // Workers of the same configuration do not move it again.
        let mut peer = store(json!({"jwksCacheSeconds": 1200}));
        peer.sync(&shared, 8_000);
        assert_eq!(peer.entries[0].keys_doc.meta.refresh_ms, refresh);
    }

    #[test]
    fn discovery_keeps_the_login_endpoints_for_every_worker() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksUri": null, "jwksCluster": "idp"}));
        s.sync(&shared, 0);
        assert_eq!(s.login_endpoints(0), None);
        let doc = json!({
            "issuer": ISSUER, "jwks_uri": "https://keys.example.com/certs",
            "authorization_endpoint": "https://login.example.com/authorize",
            "token_endpoint": "https://login.example.com:8443/token",
            "end_session_endpoint": "https://login.example.com/logout",
            "authorization_response_iss_parameter_supported": true
        })
        .to_string();
        s.on_answer(&shared, 0, Stage::Discovery, &ok(doc.as_bytes(), None), 5)
            .unwrap();
        let mut peer = store(json!({"jwksUri": null, "jwksCluster": "idp"}));
        peer.sync(&shared, 6);
        for worker in [&s, &peer] {
            let endpoints = worker.login_endpoints(0).unwrap();
            assert_eq!(
                endpoints.authorization,
                "https://login.example.com/authorize"
            );
            assert_eq!(endpoints.token.path, "/token");
            assert_eq!(endpoints.token.authority, "login.example.com:8443");
            assert_eq!(
                endpoints.token.cluster, "idp",
                "token calls go through jwksCluster"
            );
            assert_eq!(
                endpoints.end_session.as_deref(),
                Some("https://login.example.com/logout")
            );
            assert!(endpoints.iss_parameter_supported);
            // Built once while the document stands.
            assert!(Arc::ptr_eq(&endpoints, &worker.login_endpoints(0).unwrap()));
        }
        // A new document: the endpoints it names, in every worker.
        let moved = doc.replace(":8443/token", ":9443/token");
        s.on_answer(&shared, 0, Stage::Discovery, &ok(moved.as_bytes(), None), 7)
            .unwrap();
        peer.sync(&shared, 8);
        for worker in [&s, &peer] {
            let endpoints = worker.login_endpoints(0).unwrap();
            assert_eq!(endpoints.token.authority, "login.example.com:9443");
        }
        // A document without login endpoints still serves the keys.
        let shared = Shared::default();
        let mut api_only = store(json!({"jwksUri": null}));
        api_only.sync(&shared, 0);
        let doc =
            json!({"issuer": ISSUER, "jwks_uri": "https://keys.example.com/certs"}).to_string();
        assert_eq!(
            api_only.on_answer(&shared, 0, Stage::Discovery, &ok(doc.as_bytes(), None), 5),
            Ok(0)
        );
        assert_eq!(api_only.login_endpoints(0), None);
    }

    #[test]
    fn discovery_finds_the_jwks_uri_then_fetches_keys() {
        let shared = Shared::default();
        let mut s = store(json!({"jwksUri": null}));
        let due = s.sync(&shared, 0).fetches;
        assert_eq!(due[0].stage, Stage::Discovery);
        assert_eq!(due[0].target.path, "/.well-known/openid-configuration");
        let doc = json!({"issuer": ISSUER, "jwks_uri": "https://keys.example.com:8443/certs",
                         "token_endpoint": "https://idp.example.com/oauth/token"})
        .to_string();
        assert_eq!(s.token_endpoint(0), None, "not discovered yet");
        assert_eq!(
            s.on_answer(&shared, 0, Stage::Discovery, &ok(doc.as_bytes(), None), 5),
            Ok(0)
        );
        let due = s.sync(&shared, 5).fetches;
        assert_eq!(due[0].stage, Stage::Jwks);
        assert_eq!(due[0].target.cluster, "outbound|8443||keys.example.com");
        assert_eq!(due[0].target.authority, "keys.example.com:8443");
        assert_eq!(due[0].target.path, "/certs");
        let token = s.token_endpoint(0).unwrap();
        assert_eq!(token.cluster, "outbound|443||idp.example.com");
        assert_eq!(token.path, "/oauth/token");
        // Another worker needs no discovery of its own.
        let mut other = store(json!({"jwksUri": null}));
        s.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 6)
            .unwrap();
        assert!(other.sync(&shared, 7).fetches.is_empty());
        assert_eq!(state(&other, 7), "ready");
        assert_eq!(
            other.token_endpoint(0),
            Some(token),
            "learnt from the shared record"
        );
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
            crate::compile::configure(
                &json!({"providers": [
                {"issuer": ISSUER, "jwksUri": URI},
                {"issuer": "https://b.example.com", "jwksUri": second_uri}]})
                .to_string(),
            )
            .unwrap()
        };
        let mut s = KeyStore::new(&two("https://b.example.com/k1"), None, 3);
        for fetch in s.sync(&shared, 0).fetches {
            s.on_answer(&shared, fetch.provider, fetch.stage, &ok(&jwks(), None), 0)
                .unwrap();
        }
        assert!(matches!(s.keys(1, 0), KeyState::Ready(_)));
        let s = KeyStore::new(&two("https://b.example.com/k2"), Some(s), 3);
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
    fn a_revocation_list_is_fetched_shared_and_required_before_use() {
        let shared = Shared::default();
        let cfg = config(json!({"revocationUri": "https://revoke.example.com/list",
                                "revocationRefreshSeconds": 60}));
        let mut a = KeyStore::new(&cfg, None, 1);
        let mut b = KeyStore::new(&cfg, None, 2);
        let fetches = a.sync(&shared, 0).fetches;
        let stages: Vec<Stage> = fetches.iter().map(|f| f.stage).collect();
        assert_eq!(stages, vec![Stage::Jwks, Stage::Revocations]);
        assert_eq!(
            fetches[1].target.cluster,
            "outbound|443||revoke.example.com"
        );
        a.on_answer(&shared, 0, Stage::Jwks, &ok(&jwks(), None), 1)
            .unwrap();
        assert_eq!(state(&a, 1), "loading", "keys alone are not enough");
        let list = br#"{"jtis": ["j1"], "subjects": ["mallory"]}"#;
        assert_eq!(
            a.on_answer(&shared, 0, Stage::Revocations, &ok(list, None), 2),
            Ok(2)
        );
        assert_eq!(state(&a, 2), "ready");
        assert!(a
            .revocations(0)
            .is_some_and(|r| r.subjects.contains("mallory")));
        // The other worker adopts both without fetching.
        assert!(b.sync(&shared, 3).fetches.is_empty());
        assert_eq!(state(&b, 3), "ready");
        assert!(b.revocations(0).is_some_and(|r| r.jtis.contains("j1")));
        // A bad list later does not replace the good one.
        let refresh = a.entries[0]
            .revocations
            .as_ref()
            .unwrap()
            .doc
            .meta
            .refresh_ms;
        let due: Vec<Stage> = a
            .sync(&shared, refresh)
            .fetches
            .iter()
            .map(|f| f.stage)
            .collect();
        assert_eq!(due, vec![Stage::Revocations]);
        assert!(a
            .on_answer(&shared, 0, Stage::Revocations, &ok(b"[1,2]", None), refresh)
            .is_err());
        assert!(a
            .revocations(0)
            .is_some_and(|r| r.subjects.contains("mallory")));
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

    /// The filter hands the host to verification through the key store: every decision made
    /// with the store (held requests' too) asks it, and none does once it is taken away.
    #[test]
    fn decisions_with_the_store_ask_its_signature_host() {
        use crate::alg::Alg;
        use crate::authorize::{authorize, Outcome, Request, WithoutRefetch};
        use crate::cache::TokenCache;
        use crate::host_verify::testing::FakeHost;
        use crate::keys::testing::{b64, RSA_A};

        let key = TestKey::rsa(RSA_A);
        let jwks = json!({"keys": [key.jwk(Some("k1"))]}).to_string();
        let mut s = store(json!({"jwksUri": null, "jwks": jwks}));
        let host: &'static FakeHost = Box::leak(Box::default());
        let trusted = TrustedHost::check(host).unwrap();
        host.clear_calls();
        s.use_signature_host(Some(trusted));

        let now_s = 1_700_000_000u64;
        let header = b64(br#"{"alg":"RS256","kid":"k1"}"#);
        let payload = b64(json!({"iss": ISSUER, "exp": now_s + 60})
            .to_string()
            .as_bytes());
        let input = format!("{header}.{payload}");
        let signature = b64(&key.sign(Alg::RS256, input.as_bytes()));
        let bearer = format!("Bearer {input}.{signature}");
        let headers = [("authorization", bearer.as_str())];
        let request = Request {
            method: "GET",
            scheme: "https",
            path: "/",
            authority: "example.com",
            headers: &headers,
            peer: &crate::peer::NoPeer,
        };
        let cfg = config(json!({"jwksUri": null, "jwks": jwks}));
        let decide = |lookup: &dyn KeyLookup| {
            let mut cache = TokenCache::new(0);
            authorize(&cfg, lookup, &mut cache, &request, now_s * 1000).outcome
        };
        assert!(matches!(decide(&s), Outcome::Allow(_)));
        assert_eq!(host.calls(), 1);
        assert!(matches!(decide(&WithoutRefetch(&s)), Outcome::Allow(_)));
        assert_eq!(host.calls(), 2);
        s.use_signature_host(None);
        assert!(matches!(decide(&s), Outcome::Allow(_)));
        assert_eq!(host.calls(), 2);
    }
}
