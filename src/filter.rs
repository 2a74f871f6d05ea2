//! The proxy-wasm shell: reads what the host has, calls the core, applies its answer.
//! Only host calls live here. The SDK's trait helpers `unwrap` host errors (a panic kills
//! the worker's VM), so this file calls `hostcalls` directly and handles every error.

use crate::authorize::{self, HeaderEdit, Outcome, Request};
use crate::cache::TokenCache;
use crate::config::{self, Config};
use crate::keystore::{FetchAnswer, KeyStore, SharedStore, Stage};
use crate::response::Denial;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the root looks at the shared key records and at held requests' deadlines.
const TICK: Duration = Duration::from_millis(100);
/// A request that starts waiting wakes the root at once with this tick.
const WAKE: Duration = Duration::from_millis(1);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(Root {
        context_id,
        state: Rc::new(RefCell::new(None)),
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

/// A request paused until its provider's keys change or its deadline passes.
struct Waiter {
    context_id: u32,
    provider: usize,
    deadline_ms: u64,
}

/// What a worker VM's root and its request contexts share.
struct State {
    root_id: u32,
    config: Config,
    keys: KeyStore,
    cache: TokenCache,
    waiters: Vec<Waiter>,
    /// Dispatched key fetches by call token: provider index and stage.
    calls: HashMap<u32, (usize, Stage)>,
    /// Set by a new configuration: held requests are decided again on the next tick.
    reconfigured: bool,
}

/// `None` until the first valid configuration. One cell for the VM's life: a new
/// configuration replaces its contents, so requests already under way see it too.
type SharedState = Rc<RefCell<Option<State>>>;

struct Root {
    context_id: u32,
    state: SharedState,
}

impl State {
    /// Starts due fetches, then looks again at held requests whose provider changed or
    /// whose deadline passed. Runs in the root context.
    fn pump(&mut self, mut changed: Vec<usize>) {
        let now = now_ms();
        if std::mem::take(&mut self.reconfigured) {
            changed.extend(self.waiters.iter().map(|w| w.provider));
        }
        let sync = self.keys.sync(&HostShared, now);
        changed.extend(sync.changed);
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
                    self.keys.dispatch_failed(&HostShared, fetch.provider, now);
                    changed.push(fetch.provider);
                }
            }
        }
        self.wake_waiters(&changed, now);
    }

    fn wake_waiters(&mut self, changed: &[usize], now: u64) {
        if self.waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.waiters);
        for waiter in waiters {
            let expired = now >= waiter.deadline_ms;
            if !expired && !changed.contains(&waiter.provider) {
                self.waiters.push(waiter);
                continue;
            }
            if hostcalls::set_effective_context(waiter.context_id).is_err() {
                continue; // the client has gone
            }
            let outcome = if expired {
                authorize::wait_expired(&self.config, &self.keys, waiter.provider, now).outcome
            } else {
                let request = RequestHeaders::read();
                let view = request.view();
                authorize::authorize(&self.config, &self.keys, &mut self.cache, &view, now).outcome
            };
            match outcome {
                Outcome::Wait { provider, refetch } => {
                    if refetch {
                        self.keys.want_refetch(provider, now);
                    }
                    self.waiters.push(Waiter { provider, ..waiter });
                }
                done => {
                    if self.apply(done) == Action::Continue {
                        let _ = hostcalls::resume_http_request();
                    }
                }
            }
        }
        let _ = hostcalls::set_effective_context(self.root_id);
    }

    /// Applies a final outcome to the current request: edits, or a local response.
    fn apply(&self, outcome: Outcome) -> Action {
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
                self.send_denial(&denial);
                Action::Pause
            }
            // Callers resolve waits before applying.
            Outcome::Wait { .. } => {
                self.send_denial(&Denial::KeysUnavailable {
                    retry_after_seconds: 1,
                });
                Action::Pause
            }
        }
    }

    fn send_denial(&self, denial: &Denial) {
        let authority = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":authority")
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        let realm = self.config.realm.as_deref().unwrap_or(&authority);
        let response = denial.render(realm);
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send_response(response.status, &headers, response.body.as_bytes());
    }

    fn provider_name(&self, provider: usize) -> String {
        self.config
            .providers
            .get(provider)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }
}

/// The current request's headers, read once: pseudo-headers split out.
struct RequestHeaders {
    method: String,
    path: String,
    authority: String,
    headers: Vec<(String, String)>,
}

impl RequestHeaders {
    fn read() -> RequestHeaders {
        // Bytes, not strings: the SDK's string getter panics on non-UTF-8 header values.
        let raw = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let mut request = RequestHeaders {
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            headers: Vec::with_capacity(raw.len()),
        };
        for (name, value) in raw {
            let value = String::from_utf8_lossy(&value).into_owned();
            match name.as_str() {
                ":method" => request.method = value,
                ":path" => request.path = value,
                ":authority" => request.authority = value,
                _ => request.headers.push((name.to_ascii_lowercase(), value)),
            }
        }
        request
    }

    fn view(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            authority: &self.authority,
            headers: &self.headers,
        }
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
        let headers =
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let status = header(":status").and_then(|s| s.parse::<u32>().ok());
        let cache_control = header("cache-control");
        // Read at most one byte past the cap: an over-size body is then refused by the core
        // without the rest of it ever being copied into the VM.
        let cap = state.config.limits.max_jwks_bytes.saturating_add(1);
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
            (Err(problem), _) => {
                log(
                    LogLevel::Warn,
                    &format!("provider \"{name}\": key fetch failed: {problem}"),
                );
            }
        }
        // Discovery done: fetch the keys at once; keys in: release the held requests.
        state.pump(vec![provider]);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config = match config::parse(&String::from_utf8_lossy(&raw)) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("invalid configuration: {error}"));
                return false;
            }
        };
        let seed = now_ms() ^ u64::from(self.context_id).rotate_left(32) ^ random_seed();
        let mut cell = self.state.borrow_mut();
        let previous = cell.take();
        let (previous_keys, waiters) = match previous {
            // Answers to fetches started under the old configuration are dropped: their
            // lease runs out after the fetch timeout and the fetch is made again.
            Some(old) => (Some(old.keys), old.waiters),
            None => (None, Vec::new()),
        };
        let keys = match KeyStore::new(&config, previous_keys, seed) {
            Ok(keys) => keys,
            Err(problem) => {
                log(
                    LogLevel::Error,
                    &format!("invalid configuration: {problem}"),
                );
                return false;
            }
        };
        let state = State {
            root_id: self.context_id,
            // Entries were verified under the old configuration: start afresh.
            cache: TokenCache::new(config.limits.max_cached_tokens),
            config,
            keys,
            waiters,
            calls: HashMap::new(),
            reconfigured: true,
        };
        *cell = Some(state);
        // Fetches start from the first tick, not from here: Envoy also configures VMs it
        // never runs (e.g. to validate the configuration), and a fetch claimed by one of
        // those would hold every worker's lease until it timed out.
        let _ = hostcalls::set_tick_period(WAKE);
        true
    }

    fn on_tick(&mut self) {
        if let Some(state) = self.state.borrow_mut().as_mut() {
            state.pump(Vec::new());
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
        let mut cell = self.state.borrow_mut();
        let Some(state) = cell.as_mut() else {
            // No valid configuration: fail closed.
            send_response(503, &[], b"");
            return Action::Pause;
        };
        let request = RequestHeaders::read();
        let now = now_ms();
        let view = request.view();
        match authorize::authorize(&state.config, &state.keys, &mut state.cache, &view, now).outcome
        {
            Outcome::Wait { provider, refetch } => {
                if state.waiters.len() >= state.config.limits.max_held_requests {
                    let retry_after_seconds = state.keys.retry_after_seconds(provider, now);
                    let outcome =
                        authorize::wait_expired(&state.config, &state.keys, provider, now).outcome;
                    log(
                        LogLevel::Warn,
                        &format!("held requests at their limit: answering at once (retry after {retry_after_seconds} s)"),
                    );
                    return state.apply(outcome);
                }
                if refetch {
                    state.keys.want_refetch(provider, now);
                }
                let timeout_ms = state
                    .config
                    .providers
                    .get(provider)
                    .map_or(0, |p| p.timeout_ms);
                state.waiters.push(Waiter {
                    context_id: self.context_id,
                    provider,
                    deadline_ms: now.saturating_add(timeout_ms),
                });
                // Fetches start from the root (an answer must not depend on this request
                // living on); wake it now rather than at its next tick.
                if hostcalls::set_tick_period(WAKE).is_err() {
                    log(LogLevel::Warn, "could not wake the root context");
                }
                Action::Pause
            }
            outcome => state.apply(outcome),
        }
    }
}

fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    if hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
        log(LogLevel::Warn, "could not send the local response");
    }
}
