//! The proxy-wasm shell: reads what the host has, calls the core, applies its answer.
//! Only host calls live here. The SDK's trait helpers `unwrap` host errors (a panic kills
//! the worker's VM), so this file calls `hostcalls` directly and handles every error.

use crate::audit;
use crate::authorize::{self, Decision, HeaderEdit, KeyLookup, KeyState, Outcome, Request};
use crate::cache::TokenCache;
use crate::compile::{self, Compiled};
use crate::config;
use crate::config::AuditLevel;
use crate::header_map;
use crate::host;
use crate::host_verify::TrustedHost;
use crate::keystore::{FetchAnswer, KeyStore, SharedStore, Spread, Stage};
use crate::peer::Peer;
use crate::response::{Challenges, Denial, Presentation};
use crate::sender::dpop::Proof;
use crate::sender::replay::{self, Admission};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the root looks at the shared key records and at held requests' deadlines.
const TICK: Duration = Duration::from_millis(100);
/// A request that starts waiting wakes the root at once with this tick.
const WAKE: Duration = Duration::from_millis(1);
/// An owner root silent for this long (ten ticks) is taken over by another root.
const OWNER_SILENT_MS: u64 = 1_000;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(Root {
        context_id,
        state: Rc::new(RefCell::new(None)),
        signature_host: None,
    }));
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, &format!("mesh-oauth: {message}"));
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Envoy's shared data, process-wide: how the worker VMs share one key fetch.
struct HostShared;

impl SharedStore for HostShared {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        hostcalls::set_shared_data(key, Some(value), cas).is_ok()
    }
}

/// The worker's keys, and the sidecar's memory of DPoP proofs in shared data.
struct Sidecar<'k> {
    keys: &'k KeyStore,
    max_dpop_proofs: usize,
}

impl KeyLookup for Sidecar<'_> {
    fn keys(&self, provider: usize, now_ms: u64) -> KeyState<'_> {
        self.keys.keys(provider, now_ms)
    }
    fn refetch_possible(&self, provider: usize, now_ms: u64) -> bool {
        self.keys.refetch_possible(provider, now_ms)
    }
    fn key_version(&self, provider: usize) -> u64 {
        self.keys.key_version(provider)
    }
    fn refresh_failing(&self, provider: usize, now_ms: u64) -> Option<u64> {
        self.keys.refresh_failing(provider, now_ms)
    }
    fn revocations(&self, provider: usize) -> Option<&config::Revoked> {
        self.keys.revocations(provider)
    }
    fn signature_host(&self) -> Option<TrustedHost<'_>> {
        self.keys.signature_host()
    }
    fn admit_proof(&self, proof: &Proof, now_s: u64) -> Admission {
        replay::admit_shared(
            &HostShared,
            self.max_dpop_proofs,
            proof.replay_id,
            proof.expires_s,
            now_s,
        )
    }
}

/// A request paused until its provider's keys change or its deadline passes.
struct Waiter {
    context_id: u32,
    provider: usize,
    deadline_ms: u64,
    /// Waiting for a refetch for an unknown kid: when it started waiting. Once keys fetched
    /// by a fetch that started since are in, the request is decided with them, without
    /// asking for another fetch (one in flight before may predate the key).
    refetch_since: Option<u64>,
    /// A new configuration no longer has the provider it waited for.
    provider_removed: bool,
}

/// What a worker VM's root and its request contexts share.
struct State {
    /// The root context that fetches and wakes held requests: the one configured last.
    /// After a push Envoy drops the old root with its calls' answers, so only one pumps.
    owner_root: u32,
    /// When the owner last pumped: a root that stays silent (Envoy never ran it) is
    /// replaced by any other root that shares the state.
    last_pump_ms: u64,
    config: Compiled,
    keys: KeyStore,
    cache: TokenCache,
    waiters: Vec<Waiter>,
    /// Dispatched key fetches by call token: provider index and stage.
    calls: HashMap<u32, (usize, Stage)>,
    /// Set by a new configuration: held requests are decided again on the next tick.
    reconfigured: bool,
    /// Metric ids by name.
    metrics: HashMap<String, u32>,
    /// Per-request counts not yet handed to Envoy.
    tally: Tally,
    /// Audit sampling.
    rng: Spread,
    /// The keys-age gauge per provider as last recorded, in seconds: recorded when it moves.
    keys_age_s: Vec<Option<u64>>,
    /// This VM's part of `CACHED_TOKENS_GAUGE` as last added (the gauge sums all workers).
    cached_tokens_counted: usize,
}

/// Per-request counters, added up in the VM and handed to Envoy on the next tick (at most
/// `TICK` late): two host calls per request cost more than a cached request's own work.
#[derive(Default)]
struct Tally {
    /// By provider and verdict: the counter's id and the count not yet reported. A handful
    /// of entries, scanned in order: a request neither formats nor hashes a metric name.
    verdicts: Vec<(Option<usize>, audit::Verdict, u32, u64)>,
    /// `CACHE_HIT` and `CACHE_MISS`: id once defined, count not yet reported.
    cache: [(Option<u32>, u64); 2],
}

impl Tally {
    fn flush(&mut self) {
        let verdicts = self.verdicts.iter_mut().map(|(_, _, id, n)| (Some(*id), n));
        let cache = self.cache.iter_mut().map(|(id, n)| (*id, n));
        for (id, pending) in verdicts.chain(cache) {
            if let (Some(id), 1..) = (id, *pending) {
                let _ =
                    hostcalls::increment_metric(id, i64::try_from(*pending).unwrap_or(i64::MAX));
                *pending = 0;
            }
        }
    }
}

const HELD_GAUGE: &str = "mesh_oauth.held_requests";
/// Verified tokens remembered, summed over the workers: bounded by `limits.maxCachedTokens`
/// per worker.
const CACHED_TOKENS_GAUGE: &str = "mesh_oauth.cached_tokens";
const CACHE_HIT: &str = "mesh_oauth.cache.hit";
const CACHE_MISS: &str = "mesh_oauth.cache.miss";
/// 1 while the host verifies RS*/ES* signatures, 0 while ring does.
const HOST_SIGNATURES_GAUGE: &str = "mesh_oauth.host_signatures";

/// `None` until the first valid configuration. One cell for the VM's life: a new
/// configuration replaces its contents, so requests already under way see it too.
type SharedState = Rc<RefCell<Option<State>>>;

struct Root {
    context_id: u32,
    state: SharedState,
    /// The host's known-answer test, run at the first configuration (`None` until then):
    /// `Some(None)` if it failed.
    signature_host: Option<Option<TrustedHost<'static>>>,
}

impl State {
    /// Starts due fetches, then looks again at held requests whose provider changed or
    /// whose deadline passed. Runs in the root context `root_id`: after a push, the old
    /// root and the new one share this state, and either may pump it.
    fn pump(&mut self, root_id: u32, mut changed: Vec<usize>) {
        let now = now_ms();
        if root_id != self.owner_root {
            if now.saturating_sub(self.last_pump_ms) < OWNER_SILENT_MS {
                return;
            }
            self.owner_root = root_id;
        }
        self.last_pump_ms = now;
        self.tally.flush();
        self.record_cached_tokens();
        if std::mem::take(&mut self.reconfigured) {
            changed.extend(self.waiters.iter().map(|w| w.provider));
        }
        let sync = self.keys.sync(&HostShared, now);
        changed.extend(sync.changed);
        self.record_keys_age(now);
        for fetch in sync.fetches {
            let headers = vec![
                (":method", "GET"),
                (":path", fetch.target.path.as_str()),
                (":authority", fetch.target.authority.as_str()),
                ("accept", "application/json"),
                ("user-agent", "mesh-oauth"),
            ];
            let timeout = Duration::from_millis(fetch.timeout_ms);
            match hostcalls::dispatch_http_call(
                &fetch.target.cluster,
                headers,
                None,
                vec![],
                timeout,
            ) {
                Ok(token) => {
                    self.calls.insert(token, (fetch.provider, fetch.stage));
                }
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "provider \"{}\": key fetch could not start through cluster \"{}\": {status:?}",
                            self.provider_name(fetch.provider),
                            fetch.target.cluster
                        ),
                    );
                    self.keys
                        .dispatch_failed(&HostShared, fetch.provider, fetch.stage, now);
                    changed.push(fetch.provider);
                }
            }
        }
        self.wake_waiters(root_id, &changed, now);
    }

    /// `mesh_oauth.<provider>.keys_age_seconds`: how long ago the keys in use were fetched,
    /// so "serving stale keys since N s" shows before the keys are dropped.
    fn record_keys_age(&mut self, now: u64) {
        for provider in 0..self.config.providers.len() {
            let age_s = self.keys.keys_age_ms(provider, now).map(|ms| ms / 1000);
            if age_s.is_none() || self.keys_age_s.get(provider) == Some(&age_s) {
                continue;
            }
            if let Some(slot) = self.keys_age_s.get_mut(provider) {
                *slot = age_s;
            }
            let label = audit::provider_label(&self.config, Some(provider));
            self.gauge(
                &format!("mesh_oauth.{label}.keys_age_seconds"),
                age_s.unwrap_or(0),
            );
        }
    }

    fn record_cached_tokens(&mut self) {
        let cached = self.cache.len();
        if cached != self.cached_tokens_counted {
            let delta = i64::try_from(cached).unwrap_or(i64::MAX)
                - i64::try_from(self.cached_tokens_counted).unwrap_or(i64::MAX);
            self.count(CACHED_TOKENS_GAUGE, delta);
            self.cached_tokens_counted = cached;
        }
    }

    fn wake_waiters(&mut self, root_id: u32, changed: &[usize], now: u64) {
        if self.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiters);
        self.count(HELD_GAUGE, -(waiters.len() as i64));
        for waiter in waiters {
            let expired = now >= waiter.deadline_ms;
            if !expired && !changed.contains(&waiter.provider) {
                self.hold(waiter);
                continue;
            }
            if hostcalls::set_effective_context(waiter.context_id).is_err() {
                continue; // the client has gone
            }
            if let Some(action) = self.handle(waiter.context_id, Some((&waiter, expired))) {
                if action == Action::Continue {
                    let _ = hostcalls::resume_http_request();
                }
            }
        }
        let _ = hostcalls::set_effective_context(root_id);
    }

    /// Decides the current request and applies the decision, or holds the request; `None`
    /// when it is held. `expired_for`: a held request whose wait for that provider ran out.
    fn handle(&mut self, context_id: u32, held: Option<(&Waiter, bool)>) -> Option<Action> {
        let Some(buffer) = HeaderBuffer::read(MapType::HttpRequestHeaders) else {
            log(
                LogLevel::Warn,
                "could not read the request headers: refused",
            );
            send_response(500, &[], b"");
            return Some(Action::Pause);
        };
        let repairs;
        let fields = match buffer.fields(&[]) {
            Some(fields) => fields,
            None => {
                repairs = buffer.repairs();
                // Every piece that is not UTF-8 now has its lossy copy.
                buffer.fields(&repairs).unwrap_or_default()
            }
        };
        let peer = HostPeer::default();
        let view = fields.request(&peer);
        let now = now_ms();
        // A held unknown kid is decided with the keys as they are once its fetch came, or
        // once its wait ran out: the kid is unknown (401), the keys are there.
        let refetch_over = held.is_some_and(|(w, expired)| {
            w.refetch_since
                .is_some_and(|since| expired || self.keys.fetched_since(w.provider, since))
        });
        let mut decision = self.decide(&view, now, refetch_over);
        // A held request past its deadline that would still wait: the keys could not be had.
        if let (Outcome::Wait { provider, .. }, Some((_, true))) = (&decision.outcome, held) {
            decision.outcome =
                authorize::wait_expired(&self.config, &self.keys, *provider, now).outcome;
        }
        if held.is_some_and(|(w, _)| w.provider_removed) {
            decision.outcome = authorize::provider_removed(decision.outcome);
        }
        if let Outcome::Wait { provider, refetch } = decision.outcome {
            if self.waiters.len() < self.config.limits.max_held_requests {
                if refetch {
                    self.keys.want_refetch(provider, now);
                }
                let timeout_ms = self
                    .config
                    .providers
                    .get(provider)
                    .map_or(0, |p| p.timeout_ms);
                let deadline_ms =
                    held.map_or(now.saturating_add(timeout_ms), |(w, _)| w.deadline_ms);
                let refetch_since = held
                    .and_then(|(w, _)| w.refetch_since)
                    .or(refetch.then_some(now));
                self.hold(Waiter {
                    context_id,
                    provider,
                    deadline_ms,
                    refetch_since,
                    provider_removed: false,
                });
                return None;
            }
            log(
                LogLevel::Warn,
                "held requests at their limit: answering at once",
            );
            decision = if refetch {
                self.decide(&view, now, true)
            } else {
                authorize::wait_expired(&self.config, &self.keys, provider, now)
            };
        }
        self.observe(&decision, &view);
        Some(self.apply(decision.outcome, decision.trace.rule, &view))
    }

    /// `without_refetch`: an unknown kid is refused rather than waited for.
    fn decide(&mut self, view: &Request<'_>, now: u64, without_refetch: bool) -> Decision {
        let sidecar = Sidecar {
            keys: &self.keys,
            max_dpop_proofs: self.config.limits.max_dpop_proofs,
        };
        if without_refetch {
            let keys = authorize::WithoutRefetch(&sidecar);
            authorize::authorize(&self.config, &keys, &mut self.cache, view, now)
        } else {
            authorize::authorize(&self.config, &sidecar, &mut self.cache, view, now)
        }
    }

    fn hold(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
        self.count(HELD_GAUGE, 1);
    }

    /// Metrics and the audit line for a final decision.
    fn observe(&mut self, decision: &Decision, request: &Request<'_>) {
        let verdict = audit::Verdict::of(decision);
        self.count_verdict(decision, verdict);
        if decision.trace.alg.is_some() {
            let (slot, name) = if decision.trace.cached {
                (0, CACHE_HIT)
            } else {
                (1, CACHE_MISS)
            };
            if self.tally.cache[slot].0.is_none() {
                self.tally.cache[slot].0 = self.metric(MetricType::Counter, name);
            }
            self.tally.cache[slot].1 += 1;
        }
        let level = match self.config.audit.level {
            AuditLevel::Off => return,
            AuditLevel::Debug => LogLevel::Debug,
            AuditLevel::Info => LogLevel::Info,
            AuditLevel::Warn => LogLevel::Warn,
        };
        let logged =
            verdict.always_logged() || self.rng.sample() < self.config.audit.allowed_sample_rate;
        if logged {
            let request_id = request
                .headers
                .iter()
                .find(|(n, _)| *n == "x-request-id")
                .map(|(_, v)| *v);
            let line = audit::audit_line(&self.config, decision, request, request_id);
            let _ = hostcalls::log(level, &line);
        }
    }

    /// Counts a decided request under its provider and verdict; the counter is defined on
    /// first use.
    fn count_verdict(&mut self, decision: &Decision, verdict: audit::Verdict) {
        let provider = decision.trace.provider;
        let known = self
            .tally
            .verdicts
            .iter_mut()
            .find(|(p, v, _, _)| *p == provider && *v == verdict);
        if let Some((_, _, _, pending)) = known {
            *pending += 1;
            return;
        }
        let Some(name) = audit::request_metric(&self.config, decision) else {
            return;
        };
        if let Some(id) = self.metric(MetricType::Counter, &name) {
            self.tally.verdicts.push((provider, verdict, id, 1));
        }
    }

    /// Adds `delta` to a counter or gauge. Envoy keeps one stat per name for the whole
    /// process, so every worker adds to the same one.
    fn count(&mut self, name: &str, delta: i64) {
        let kind =
            if name == HELD_GAUGE || name == CACHED_TOKENS_GAUGE || name.ends_with("keys_loaded") {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
        if let Some(id) = self.metric(kind, name) {
            let _ = hostcalls::increment_metric(id, delta);
        }
    }

    fn gauge(&mut self, name: &str, value: u64) {
        if let Some(id) = self.metric(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// A metric's id, defined on first use.
    fn metric(&mut self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.metrics.get(name) {
            return Some(*id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.metrics.insert(name.to_string(), id);
        Some(id)
    }

    /// Applies a final outcome to the current request: edits, or a local response.
    /// `rule`: the deciding rule, whose scopes a refusal names.
    fn apply(&mut self, outcome: Outcome, rule: Option<usize>, request: &Request<'_>) -> Action {
        match outcome {
            Outcome::Allow(allowed) => {
                for header in &allowed.skipped_headers {
                    log(
                        LogLevel::Warn,
                        &format!("header {header} not set: the claim holds characters unsafe in a header"),
                    );
                }
                if let Some(denial) = &allowed.would_deny {
                    log(
                        LogLevel::Info,
                        &format!(
                            "report mode: would refuse with {} ({})",
                            denial.render("").status,
                            denial.reason()
                        ),
                    );
                }
                for edit in allowed.edits {
                    let result = match &edit {
                        HeaderEdit::Remove(name) => {
                            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, None)
                        }
                        HeaderEdit::Set(name, value) => {
                            hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                        }
                    };
                    if result.is_err() {
                        // An edit we cannot make could leak a token or trust a forged header.
                        send_response(500, &[], b"");
                        return Action::Pause;
                    }
                }
                Action::Continue
            }
            Outcome::Deny(denial) => {
                self.send_denial(&denial, rule, request);
                Action::Pause
            }
            Outcome::Answer(answer) => {
                let headers: Vec<(&str, &str)> = answer
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                send_response(answer.status, &headers, answer.body.as_bytes());
                Action::Pause
            }
            // Callers resolve waits before applying.
            Outcome::Wait { .. } => {
                self.send_denial(
                    &Denial::KeysUnavailable {
                        retry_after_seconds: 1,
                    },
                    rule,
                    request,
                );
                Action::Pause
            }
        }
    }

    fn send_denial(&self, denial: &Denial, rule: Option<usize>, request: &Request<'_>) {
        let realm = self.config.realm.as_deref().unwrap_or(request.authority);
        let challenges = Challenges::for_request(&self.config, rule, request.authority);
        let how = Presentation::of(
            &self.config,
            rule,
            request.method,
            request.path,
            request.headers,
        );
        let response = denial.answer(realm, &challenges, &how);
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send_local_response(
            response.status,
            &headers,
            response.body.as_bytes(),
            response.grpc_status,
        );
    }

    fn provider_name(&self, provider: usize) -> String {
        self.config
            .providers
            .get(provider)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }
}

/// A header map (the request's, or a key fetch's answer): the host's one buffer, read once,
/// that every name and value borrows from. Names are lower-cased in place.
struct HeaderBuffer {
    raw: Vec<u8>,
    spans: Vec<(Range<usize>, Range<usize>)>,
}

/// The request as the core sees it, borrowing from a `HeaderBuffer`.
#[derive(Default)]
struct RequestFields<'a> {
    method: &'a str,
    scheme: &'a str,
    path: &'a str,
    authority: &'a str,
    headers: Vec<(&'a str, &'a str)>,
}

#[link(wasm_import_module = "env")]
extern "C" {
    /// The SDK's own reader copies every name and value into a `String` and a `Vec`.
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    /// The SDK's own sender panics when the host refuses.
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

impl HeaderBuffer {
    /// `None` when the host gives no map or one that breaks its own counts.
    fn read(map: MapType) -> Option<HeaderBuffer> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: on success the host has written a buffer it allocated through the SDK's
        // `proxy_on_memory_allocate` (a boxed `[u8]` of exactly `size` bytes) and hands it
        // over; the SDK's `get_map_bytes` takes ownership the same way (and is not used: it
        // copies every name and value into its own `String` and `Vec`).
        let status = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
        if status != 0 {
            return None;
        }
        let mut raw = if data.is_null() {
            Vec::new()
        } else {
            // SAFETY: see above.
            unsafe { Vec::from_raw_parts(data, size, size) }
        };
        let spans = header_map::spans(&raw)?;
        for (name, _) in &spans {
            if let Some(name) = raw.get_mut(name.clone()) {
                name.make_ascii_lowercase();
            }
        }
        Some(HeaderBuffer { raw, spans })
    }

    /// The first value of a header, lossy where it is not UTF-8.
    fn value(&self, name: &str) -> Option<String> {
        self.spans
            .iter()
            .find(|(n, _)| self.raw.get(n.clone()) == Some(name.as_bytes()))
            .and_then(|(_, v)| self.raw.get(v.clone()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Lossy copies of the names and values that are not UTF-8 (rare), in header order.
    fn repairs(&self) -> Vec<String> {
        self.spans
            .iter()
            .flat_map(|(name, value)| [name, value])
            .filter_map(|span| {
                let bytes = self.raw.get(span.clone()).unwrap_or_default();
                std::str::from_utf8(bytes)
                    .is_err()
                    .then(|| String::from_utf8_lossy(bytes).into_owned())
            })
            .collect()
    }

    /// The request's fields; `None` when a name or value is not UTF-8 and `repairs` (from
    /// [`HeaderBuffer::repairs`]) has no copy for it. Each piece is checked once here: the
    /// common request, all UTF-8, needs no `repairs` pass at all.
    fn fields<'a>(&'a self, repairs: &'a [String]) -> Option<RequestFields<'a>> {
        let mut repaired = repairs.iter();
        let mut text = |span: &Range<usize>| -> Option<&'a str> {
            let bytes = self.raw.get(span.clone()).unwrap_or_default();
            match std::str::from_utf8(bytes) {
                Ok(text) => Some(text),
                Err(_) => repaired.next().map(String::as_str),
            }
        };
        let mut fields = RequestFields {
            method: "",
            scheme: "",
            path: "",
            authority: "",
            headers: Vec::with_capacity(self.spans.len()),
        };
        for (name, value) in &self.spans {
            let (name, value) = (text(name)?, text(value)?);
            match name {
                ":method" => fields.method = value,
                ":scheme" => fields.scheme = value,
                ":path" => fields.path = value,
                ":authority" => fields.authority = value,
                _ => fields.headers.push((name, value)),
            }
        }
        Some(fields)
    }
}

impl RequestFields<'_> {
    fn request<'a>(&'a self, peer: &'a HostPeer) -> Request<'a> {
        Request {
            method: self.method,
            scheme: self.scheme,
            path: self.path,
            authority: self.authority,
            headers: &self.headers,
            peer,
        }
    }
}

/// The connection's properties, each read from Envoy on first use only: a configuration
/// whose rules never ask about the connection makes no property call at all.
#[derive(Default)]
struct HostPeer {
    uri_san: OnceCell<Option<String>>,
    source_address: OnceCell<Option<String>>,
    destination_address: OnceCell<Option<String>>,
    sni: OnceCell<Option<String>>,
    certificate_digest: OnceCell<Option<String>>,
}

impl HostPeer {
    fn read<'a>(cell: &'a OnceCell<Option<String>>, path: [&str; 2]) -> Option<&'a str> {
        cell.get_or_init(|| {
            let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
            String::from_utf8(bytes).ok()
        })
        .as_deref()
    }
}

impl Peer for HostPeer {
    fn uri_san(&self) -> Option<&str> {
        Self::read(&self.uri_san, ["connection", "uri_san_peer_certificate"])
    }
    fn source_address(&self) -> Option<&str> {
        Self::read(&self.source_address, ["source", "address"])
    }
    fn destination_address(&self) -> Option<&str> {
        Self::read(&self.destination_address, ["destination", "address"])
    }
    fn sni(&self) -> Option<&str> {
        Self::read(&self.sni, ["connection", "requested_server_name"])
    }
    fn certificate_digest(&self) -> Option<&str> {
        Self::read(
            &self.certificate_digest,
            ["connection", "sha256_peer_certificate_digest"],
        )
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let mut cell = self.state.borrow_mut();
        let Some(state) = cell.as_mut() else {
            return;
        };
        let Some((provider, stage)) = state.calls.remove(&token_id) else {
            return;
        };
        // No headers (a reset call) or unreadable ones: no status, a failed fetch.
        let headers = HeaderBuffer::read(MapType::HttpCallResponseHeaders);
        let header = |name: &str| headers.as_ref().and_then(|h| h.value(name));
        let status = header(":status").and_then(|s| s.parse::<u32>().ok());
        let cache_control = header("cache-control");
        // Read at most one byte past the cap: an over-size body is then refused by the core
        // without the rest of it ever being copied into the VM.
        let limits = &state.config.limits;
        let cap = match stage {
            Stage::Discovery | Stage::Jwks => limits.max_jwks_bytes,
            Stage::Revocations => limits.max_revocation_bytes,
        }
        .saturating_add(1);
        let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(cap))
            .ok()
            .flatten()
            .unwrap_or_default();
        let answer = FetchAnswer {
            status,
            cache_control: cache_control.as_deref(),
            body: &body,
        };
        let result = state
            .keys
            .on_answer(&HostShared, provider, stage, &answer, now_ms());
        let name = state.provider_name(provider);
        let label = audit::provider_label(&state.config, Some(provider));
        let (what, counter) = match stage {
            Stage::Discovery | Stage::Jwks => ("key", "key_fetch"),
            Stage::Revocations => ("revocation list", "revocation_fetch"),
        };
        let fetch_metric = if result.is_ok() { "success" } else { "failure" };
        state.count(&format!("mesh_oauth.{label}.{counter}.{fetch_metric}"), 1);
        if let (Ok(count), Stage::Jwks) = (&result, stage) {
            state.gauge(&format!("mesh_oauth.{label}.keys_loaded"), *count as u64);
        }
        match (result, stage) {
            (Ok(_), Stage::Discovery) => {
                log(
                    LogLevel::Info,
                    &format!("provider \"{name}\": discovery done"),
                );
            }
            (Ok(count), Stage::Jwks) => {
                log(
                    LogLevel::Info,
                    &format!("provider \"{name}\": {count} signing keys loaded"),
                );
            }
            (Ok(count), Stage::Revocations) => {
                log(
                    LogLevel::Info,
                    &format!("provider \"{name}\": revocation list of {count} entries loaded"),
                );
            }
            (Err(problem), _) => {
                log(
                    LogLevel::Warn,
                    &format!("provider \"{name}\": {what} fetch failed: {problem}"),
                );
            }
        }
        // Discovery done: fetch the keys at once; keys in: release the held requests.
        state.pump(self.context_id, vec![provider]);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        // Compiled (inline keys too) before anything is taken over: a refused push leaves
        // the running configuration as it was.
        let config = match compile::configure(&String::from_utf8_lossy(&raw)) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("invalid configuration: {error}"));
                return false;
            }
        };
        let seed = now_ms() ^ u64::from(self.context_id).rotate_left(32) ^ random_seed();
        let identity = crate::config_hash::ConfigHash::of(&String::from_utf8_lossy(&raw));
        let plugin = plugin_name();
        if let Some(hash) = &identity {
            log(
                LogLevel::Info,
                &format!(
                    "configured plugin \"{plugin}\": config sha256 {}",
                    hash.hex()
                ),
            );
        }
        self.state = plugin_state(&self.state);
        let mut cell = self.state.borrow_mut();
        let (previous_keys, waiters, abandoned, metrics, cached_tokens_counted) = match cell.take()
        {
            Some(mut old) => {
                old.tally.flush();
                // Held requests follow their provider (by issuer) to its new index.
                let new_index = |provider: usize| {
                    let issuer = &old.config.providers.get(provider)?.issuer;
                    config.providers.iter().position(|p| &p.issuer == issuer)
                };
                let waiters = std::mem::take(&mut old.waiters)
                    .into_iter()
                    .map(|mut waiter| {
                        match new_index(waiter.provider) {
                            Some(index) => waiter.provider = index,
                            None => waiter.provider_removed = true,
                        }
                        waiter
                    })
                    .collect();
                // Envoy drops the old root context with its calls: their answers never come.
                let abandoned: Vec<(usize, Stage)> = old
                    .calls
                    .values()
                    .filter_map(|(provider, stage)| Some((new_index(*provider)?, *stage)))
                    .collect();
                (
                    Some(old.keys),
                    waiters,
                    abandoned,
                    old.metrics,
                    old.cached_tokens_counted,
                )
            }
            None => (None, Vec::new(), Vec::new(), HashMap::new(), 0),
        };
        let mut keys = KeyStore::new(&config, previous_keys, seed);
        for (provider, stage) in abandoned {
            keys.abandon_fetch(&HostShared, provider, stage);
        }
        if config
            .providers
            .iter()
            .any(|p| p.dpop.mode != config::Binding::Off)
        {
            replay::prepare_slots(&HostShared, config.limits.max_dpop_proofs);
        }
        let signature_host = *self.signature_host.get_or_insert_with(|| match host::checked() {
            Ok(trusted) => {
                log(
                    LogLevel::Info,
                    "signatures: RS*/ES* verified by the host (BoringSSL), others in the module (ring)",
                );
                Some(trusted)
            }
            Err(failure) => {
                log(
                    LogLevel::Info,
                    &format!("signatures: verified in the module (ring): {failure}"),
                );
                None
            }
        });
        keys.use_signature_host(signature_host);
        let config_providers = config.providers.len();
        let mut state = State {
            owner_root: self.context_id,
            last_pump_ms: now_ms(),
            // Entries were verified under the old configuration: start afresh.
            cache: TokenCache::new(config.limits.max_cached_tokens),
            config,
            keys,
            waiters,
            calls: HashMap::new(),
            reconfigured: true,
            metrics,
            rng: Spread::new(seed),
            keys_age_s: vec![None; config_providers],
            // The old cache's count comes off the gauge at the first pump.
            cached_tokens_counted,
            // Provider indexes may mean other providers now: looked up afresh by name.
            tally: Tally::default(),
        };
        state.gauge(HOST_SIGNATURES_GAUGE, u64::from(signature_host.is_some()));
        if let Some(hash) = &identity {
            let name = crate::config_hash::gauge_name(&plugin);
            state.gauge(&name, hash.gauge_value());
        }
        *cell = Some(state);
        // Fetches start from the first tick, not from here: Envoy also configures VMs it
        // never runs (e.g. to validate the configuration), and a fetch claimed by one of
        // those would hold every worker's lease until it timed out.
        let _ = hostcalls::set_tick_period(WAKE);
        true
    }

    fn on_tick(&mut self) {
        if let Some(state) = self.state.borrow_mut().as_mut() {
            state.pump(self.context_id, Vec::new());
        }
        let _ = hostcalls::set_tick_period(TICK);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            context_id,
            state: self.state.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

thread_local! {
    /// Each plugin's state in this VM, by plugin name. Envoy gives a pushed configuration a
    /// new root context in the same VM: it takes over the old one's state (keys, held
    /// requests, fetches in flight, metrics) instead of starting cold beside it, and the
    /// requests held under the old configuration are decided with the new one.
    static PLUGIN_STATES: RefCell<Vec<(String, SharedState)>> = const { RefCell::new(Vec::new()) };
}

/// The state this VM keeps for the plugin being configured; `own` the first time.
fn plugin_state(own: &SharedState) -> SharedState {
    let plugin = plugin_name();
    PLUGIN_STATES.with(|states| {
        let mut states = states.borrow_mut();
        if let Some((_, state)) = states.iter().find(|(name, _)| *name == plugin) {
            return state.clone();
        }
        count_vm_start(&plugin);
        states.push((plugin, own.clone()));
        own.clone()
    })
}

/// The `name` Envoy gives the plugin (Istio: `<namespace>.<WasmPlugin name>`).
fn plugin_name() -> String {
    hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .map(|name| String::from_utf8_lossy(&name).into_owned())
        .unwrap_or_default()
}

/// `mesh_oauth.vm_starts.<plugin>`: this VM configures the plugin for the first time. A VM
/// Envoy reloads after a crash (`FAIL_RELOAD`) starts empty and counts again, so a crash loop
/// shows as a climbing counter.
fn count_vm_start(plugin: &str) {
    let label = match config::metric_label(plugin) {
        label if label.is_empty() => "unnamed".to_string(),
        label => label,
    };
    if let Ok(id) = hostcalls::define_metric(
        MetricType::Counter,
        &format!("mesh_oauth.vm_starts.{label}"),
    ) {
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// Entropy for the refresh jitter from WASI; the time alone would start every sidecar of a
/// fleet deployed at once on the same schedule.
fn random_seed() -> u64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => 0,
    }
}

struct Filter {
    context_id: u32,
    state: SharedState,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-test")]
        if hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-mesh-oauth-crash-test")
            .ok()
            .flatten()
            .is_some()
        {
            std::process::abort();
        }
        let mut cell = self.state.borrow_mut();
        let Some(state) = cell.as_mut() else {
            // No valid configuration: fail closed.
            send_response(503, &[], b"");
            return Action::Pause;
        };
        match state.handle(self.context_id, None) {
            Some(action) => action,
            None => {
                // Fetches start from the root (an answer must not depend on this request
                // living on); wake it now rather than at its next tick.
                if hostcalls::set_tick_period(WAKE).is_err() {
                    log(LogLevel::Warn, "could not wake the root context");
                }
                Action::Pause
            }
        }
    }
}

fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    send_local_response(status, headers, body, None);
}

/// The SDK's `send_http_response` panics when the host refuses, which would take the VM
/// down; here a refusal is logged. `grpc_status`: what a gRPC client reads, with `body` as
/// its `grpc-message`.
fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
    grpc_status: Option<u32>,
) {
    let headers = header_map::serialize(headers);
    let grpc_status = grpc_status
        .and_then(|s| i32::try_from(s).ok())
        .unwrap_or(-1);
    // SAFETY: every pointer and length describes a live buffer of this function, which the
    // host only reads during the call.
    let result = unsafe {
        proxy_send_local_response(
            status,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            grpc_status,
        )
    };
    if result != 0 {
        log(LogLevel::Warn, "could not send the local response");
    }
}
