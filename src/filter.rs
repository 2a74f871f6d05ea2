//! The proxy-wasm shell: reads what the host has, calls the core, applies its answer.
//! Only host calls live here. The SDK's trait helpers `unwrap` host errors (a panic kills
//! the worker's VM), so this file calls `hostcalls` directly and handles every error.

use crate::authorize::{self, HeaderEdit, Outcome, Request};
use crate::config::{self, Config};
use crate::keystore::{FetchAnswer, KeyStore, Stage};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often the root wakes to start due key fetches.
const TICK: Duration = Duration::from_millis(500);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// What a worker VM's root and its request contexts share.
struct State {
    config: Config,
    keys: KeyStore,
}

#[derive(Default)]
struct Root {
    state: Option<Rc<RefCell<State>>>,
    /// Dispatched key fetches by call token: provider index and stage.
    calls: HashMap<u32, (usize, Stage)>,
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, &format!("mesh-oauth: {message}"));
}

fn now() -> Duration {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default()
}

fn now_ms() -> u64 {
    u64::try_from(now().as_millis()).unwrap_or(u64::MAX)
}

impl Root {
    fn start_due_fetches(&mut self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut state = state.borrow_mut();
        let now = now_ms();
        for fetch in state.keys.due(now) {
            let headers = vec![
                (":method", "GET"),
                (":path", fetch.target.path.as_str()),
                (":authority", fetch.target.authority.as_str()),
                ("accept", "application/json"),
                ("user-agent", "mesh-oauth"),
            ];
            match hostcalls::dispatch_http_call(
                &fetch.target.cluster,
                headers,
                None,
                vec![],
                Duration::from_millis(fetch.timeout_ms),
            ) {
                Ok(token) => {
                    self.calls.insert(token, (fetch.provider, fetch.stage));
                }
                Err(status) => {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "key fetch for providers[{}] could not start through cluster \"{}\": {status:?}",
                            fetch.provider, fetch.target.cluster
                        ),
                    );
                    state.keys.dispatch_failed(fetch.provider, now);
                }
            }
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
        let Some((provider, stage)) = self.calls.remove(&token_id) else {
            return;
        };
        let Some(state) = self.state.clone() else {
            return;
        };
        let mut state = state.borrow_mut();
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
        let issuer = state
            .config
            .providers
            .get(provider)
            .map(|p| p.issuer.clone())
            .unwrap_or_default();
        let answer = FetchAnswer {
            status,
            cache_control: cache_control.as_deref(),
            body: &body,
        };
        let result = state
            .keys
            .on_answer(provider, stage, &issuer, &answer, now_ms());
        let name = state
            .config
            .providers
            .get(provider)
            .map(|p| p.name.clone())
            .unwrap_or_default();
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
        drop(state);
        // Discovery done: fetch the keys at once rather than on the next tick.
        self.start_due_fetches();
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        let config = match config::parse(&text) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("invalid configuration: {error}"));
                return false;
            }
        };
        let keys = match KeyStore::new(&config) {
            Ok(keys) => keys,
            Err(problem) => {
                log(
                    LogLevel::Error,
                    &format!("invalid configuration: {problem}"),
                );
                return false;
            }
        };
        self.state = Some(Rc::new(RefCell::new(State { config, keys })));
        self.calls.clear();
        let _ = hostcalls::set_tick_period(TICK);
        self.start_due_fetches();
        true
    }

    fn on_tick(&mut self) {
        self.start_due_fetches();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            state: self.state.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    state: Option<Rc<RefCell<State>>>,
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(state) = self.state.clone() else {
            // No valid configuration: fail closed.
            send_response(503, &[], b"");
            return Action::Pause;
        };
        let state = state.borrow();
        // Bytes, not strings: the SDK's string getter panics on non-UTF-8 header values.
        let raw = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let mut method = String::new();
        let mut path = String::new();
        let mut authority = String::new();
        let mut headers = Vec::with_capacity(raw.len());
        for (name, value) in raw {
            let value = String::from_utf8_lossy(&value).into_owned();
            match name.as_str() {
                ":method" => method = value,
                ":path" => path = value,
                ":authority" => authority = value,
                _ => headers.push((name.to_ascii_lowercase(), value)),
            }
        }
        let request = Request {
            method: &method,
            path: &path,
            authority: &authority,
            headers: &headers,
        };
        match authorize::authorize(&state.config, &state.keys, &request, now().as_secs()) {
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
                            "report mode: would refuse {method} {} with {} ({})",
                            path_without_query(&path),
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
                let realm = state.config.realm.as_deref().unwrap_or(&authority);
                let response = denial.render(realm);
                let headers: Vec<(&str, &str)> = response
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                send_response(response.status, &headers, response.body.as_bytes());
                Action::Pause
            }
        }
    }
}

/// Logs never carry the query string: it may hold a token.
fn path_without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

fn send_response(status: u32, headers: &[(&str, &str)], body: &[u8]) {
    if hostcalls::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
        log(LogLevel::Warn, "could not send the local response");
    }
}
