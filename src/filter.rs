//! The proxy-wasm shell: turns each host callback into an event of the runtime
//! (`crate::runtime`, where every decision is taken) and carries out the effects it returns.
//! Only host calls live here. The SDK's trait helpers `unwrap` host errors (a panic kills
//! the worker's VM), so this file calls `hostcalls` directly and handles every error.

use crate::authorize::HeaderEdit;
use crate::header_map::{self, HeaderBlock};
use crate::host;
use crate::host_verify::TrustedHost;
use crate::keystore::SharedStore;
use crate::peer::LazyPeer;
use crate::runtime::{
    self, CallAnswer, Effect, Effects, Host, Level, MetricKind, Runtime, TakeOver,
};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| Box::new(Root {
        context_id,
        state: Rc::new(RefCell::new(Slot::default())),
        signature_host: None,
    }));
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, &format!("mesh-oauth: {message}"));
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

static HOST_SHARED: HostShared = HostShared;

/// The host's facts for an event, now.
fn host() -> Host<'static> {
    let now = hostcalls::get_current_time().ok();
    let since_epoch = now.and_then(|t: SystemTime| t.duration_since(UNIX_EPOCH).ok());
    Host {
        now_ms: since_epoch.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        shared: &HOST_SHARED,
    }
}

/// What this VM keeps for one plugin: its runtime (`None` until the first valid
/// configuration) and the host's ids for the runtime's metrics. One cell for the VM's life:
/// a new configuration replaces the runtime, so requests already under way see it too.
#[derive(Default)]
struct Slot {
    runtime: Option<Runtime>,
    metric_ids: Vec<Option<u32>>,
    /// The last event's effects buffer, kept: a request allocates none.
    spare: Effects,
}

type SharedState = Rc<RefCell<Slot>>;

struct Root {
    context_id: u32,
    state: SharedState,
    /// The host's known-answer test, run at the first configuration (`None` until then):
    /// `Some(None)` if it failed.
    signature_host: Option<Option<TrustedHost<'static>>>,
}

/// Carries out the runtime's effects in order, in host callback context `home`; `current`:
/// the request whose headers this callback is about. Returns what that request does next.
/// No borrow of the state is held while the host acts: a host call may call back into the VM.
fn carry_out(state: &SharedState, home: u32, current: Option<u32>, effects: Effects) -> Action {
    let mut queue = VecDeque::from(effects);
    let mut action = Action::Pause;
    let mut effective = home;
    // Makes `context` the one host calls act on; `false`: it is gone (its client left).
    let mut enter = |context: u32| {
        if effective == context {
            return true;
        }
        let entered = hostcalls::set_effective_context(context).is_ok();
        if entered {
            effective = context;
        }
        entered
    };
    while let Some(effect) = queue.pop_front() {
        match effect {
            Effect::Dispatch { call, request } => {
                let _ = enter(home);
                let headers = header_map::borrowed(&request.headers);
                let timeout = Duration::from_millis(request.timeout_ms);
                let body = request.body.as_deref();
                let result =
                    hostcalls::dispatch_http_call(&request.cluster, headers, body, vec![], timeout);
                let more = event(state, |runtime, out| match result {
                    Ok(token) => runtime.dispatched(call, token),
                    Err(status) => {
                        runtime.not_dispatched(call, &format!("{status:?}"), host(), out)
                    }
                });
                for effect in more.into_iter().rev() {
                    queue.push_front(effect);
                }
            }
            Effect::Resume { context, edits } if enter(context) => {
                if !edit(MapType::HttpRequestHeaders, &edits) {
                    // An edit we cannot make could leak a token or trust a forged header.
                    send_local_response(500, &[], b"", None);
                } else if Some(context) == current {
                    action = Action::Continue;
                } else {
                    let _ = hostcalls::resume_http_request();
                }
            }
            Effect::Answer { context, response } if enter(context) => {
                let headers = header_map::borrowed(&response.headers);
                let body = response.body.as_bytes();
                send_local_response(response.status, &headers, body, response.grpc_status);
            }
            Effect::EditRequest { context, edits } if enter(context) => {
                if !edit(MapType::HttpRequestHeaders, &edits) {
                    // An edit we cannot make could leak a login cookie or lose the session.
                    send_local_response(500, &[], b"", None);
                }
            }
            // The client has gone.
            Effect::Answer { .. } | Effect::Resume { .. } | Effect::EditRequest { .. } => {}
            Effect::EditResponse { context, edits } => {
                if enter(context) && !edit(MapType::HttpResponseHeaders, &edits) {
                    log(LogLevel::Warn, "could not edit the response headers");
                }
            }
            Effect::DefineMetric { id, kind, name } => {
                let kind = match kind {
                    MetricKind::Counter => MetricType::Counter,
                    MetricKind::Gauge => MetricType::Gauge,
                };
                let defined = hostcalls::define_metric(kind, &name).ok();
                if let Ok(mut slot) = state.try_borrow_mut() {
                    let at = id.0 as usize;
                    if slot.metric_ids.len() <= at {
                        slot.metric_ids.resize(at + 1, None);
                    }
                    slot.metric_ids[at] = defined;
                }
            }
            Effect::IncrementMetric { id, delta } => {
                if let Some(host_id) = metric_id(state, id) {
                    let _ = hostcalls::increment_metric(host_id, delta);
                }
            }
            Effect::RecordMetric { id, value } => {
                if let Some(host_id) = metric_id(state, id) {
                    let _ = hostcalls::record_metric(host_id, value);
                }
            }
            Effect::Log { level, line } => {
                let level = match level {
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                let _ = hostcalls::log(level, &line);
            }
            Effect::SetTickPeriod { ms } => {
                let _ = enter(home);
                if hostcalls::set_tick_period(Duration::from_millis(ms)).is_err()
                    && current.is_some()
                {
                    log(LogLevel::Warn, "could not wake the root context");
                }
            }
        }
    }
    if effective != home {
        let _ = hostcalls::set_effective_context(home);
    }
    if let Ok(mut slot) = state.try_borrow_mut() {
        slot.spare = Vec::from(queue); // empty: its buffer serves the next event
    }
    action
}

/// Runs an event on the plugin's runtime (none before the first valid configuration).
fn event(state: &SharedState, run: impl FnOnce(&mut Runtime, &mut Effects)) -> Effects {
    let Ok(mut slot) = state.try_borrow_mut() else {
        return Vec::new();
    };
    let mut out = std::mem::take(&mut slot.spare);
    if let Some(runtime) = slot.runtime.as_mut() {
        run(runtime, &mut out);
    }
    out
}

fn metric_id(state: &SharedState, id: runtime::MetricId) -> Option<u32> {
    state
        .try_borrow()
        .ok()?
        .metric_ids
        .get(id.0 as usize)
        .copied()
        .flatten()
}

/// Applies header edits to the current context's `map`; `false` at the first one refused.
fn edit(map: MapType, edits: &[HeaderEdit]) -> bool {
    edits.iter().all(|edit| {
        match edit {
            HeaderEdit::Remove(name) => hostcalls::set_map_value(map, name, None),
            HeaderEdit::Set(name, value) => hostcalls::set_map_value(map, name, Some(value)),
            HeaderEdit::Add(name, value) => hostcalls::add_map_value(map, name, value),
        }
        .is_ok()
    })
}

/// A call's answer, in context `context_id` (`root`: a root context).
fn call_answered(state: &SharedState, context_id: u32, root: bool, token: u32, body_size: usize) {
    let slot = state.try_borrow().ok();
    let cap = slot.and_then(|slot| slot.runtime.as_ref()?.answer_cap(token));
    let Some(cap) = cap else {
        return; // not a call of this state (one from before a push)
    };
    // No headers (a reset call) or unreadable ones: no status, a failed call.
    let headers = read_headers(MapType::HttpCallResponseHeaders)
        .map(|h| h.pairs())
        .unwrap_or_default();
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size.min(cap))
        .ok()
        .flatten()
        .unwrap_or_default();
    let answer = CallAnswer {
        headers: &headers,
        body: &body,
    };
    let root_id = root.then_some(context_id);
    let out = event(state, |runtime, out| {
        runtime.on_call_answer(root_id, token, &answer, host(), out)
    });
    carry_out(state, context_id, None, out);
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

/// A header map (the request's, or a call's answer) in the host's one buffer, read once;
/// `None` when the host gives no map or one that breaks its own counts.
fn read_headers(map: MapType) -> Option<HeaderBlock> {
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
    let raw = if data.is_null() {
        Vec::new()
    } else {
        // SAFETY: see above.
        unsafe { Vec::from_raw_parts(data, size, size) }
    };
    HeaderBlock::new(raw)
}

/// The connection's properties, read from Envoy's `path` (on first use only).
fn property(path: [&str; 2]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        call_answered(&self.state, self.context_id, true, token_id, body_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut out = Vec::new();
        let raw = String::from_utf8_lossy(&raw);
        let checked = Runtime::check(
            &raw,
            self.context_id,
            host().now_ms,
            random_seed(),
            &mut out,
        );
        let Some(checked) = checked else {
            carry_out(&self.state, self.context_id, None, out);
            return false;
        };
        let (plugin, new_in_vm);
        (self.state, plugin, new_in_vm) = plugin_state(&self.state);
        let signature_host = *self
            .signature_host
            .get_or_insert_with(|| runtime::signature_host(host::checked(), &mut out));
        let facts = TakeOver {
            root_id: self.context_id,
            plugin: &plugin,
            new_in_vm,
            signature_host,
        };
        let configured = match self.state.try_borrow_mut() {
            Ok(mut slot) => {
                let previous = slot.runtime.take();
                slot.runtime = Some(Runtime::take_over(
                    checked,
                    previous,
                    facts,
                    host(),
                    &mut out,
                ));
                true
            }
            Err(_) => false,
        };
        carry_out(&self.state, self.context_id, None, out);
        configured
    }

    fn on_tick(&mut self) {
        let mut out = event(&self.state, |runtime, out| {
            runtime.on_tick(self.context_id, host(), out)
        });
        if out.is_empty() {
            out.push(Effect::SetTickPeriod {
                ms: runtime::TICK_MS,
            });
        }
        carry_out(&self.state, self.context_id, None, out);
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

/// The state this VM keeps for the plugin being configured, `own` the first time; with the
/// plugin's name and whether this VM had no state for it yet.
fn plugin_state(own: &SharedState) -> (SharedState, String, bool) {
    let plugin = hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .map(|name| String::from_utf8_lossy(&name).into_owned())
        .unwrap_or_default();
    PLUGIN_STATES.with(|states| {
        let mut states = states.borrow_mut();
        if let Some((_, state)) = states.iter().find(|(name, _)| *name == plugin) {
            return (state.clone(), plugin, false);
        }
        states.push((plugin.clone(), own.clone()));
        (own.clone(), plugin, true)
    })
}

/// Entropy for the refresh jitter from WASI.
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

impl Filter {
    fn wants_body(&self) -> bool {
        self.state.try_borrow().is_ok_and(|slot| {
            slot.runtime
                .as_ref()
                .is_some_and(|runtime| runtime.wants_body(self.context_id))
        })
    }

    fn body_arrived(&self, body: &[u8]) {
        let out = event(&self.state, |runtime, out| {
            runtime.on_request_body(self.context_id, body, host(), out)
        });
        carry_out(&self.state, self.context_id, None, out);
    }
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        call_answered(&self.state, self.context_id, false, token_id, body_size);
    }

    fn on_done(&mut self) -> bool {
        let out = event(&self.state, |runtime, out| {
            runtime.request_done(self.context_id, out)
        });
        carry_out(&self.state, self.context_id, None, out);
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-test")]
        if hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-mesh-oauth-crash-test")
            .ok()
            .flatten()
            .is_some()
        {
            std::process::abort();
        }
        let context = Some(self.context_id);
        if self
            .state
            .try_borrow()
            .map_or(true, |slot| slot.runtime.is_none())
        {
            let response = runtime::not_configured(); // fail closed
            let answer = Effect::Answer {
                context: self.context_id,
                response,
            };
            return carry_out(&self.state, self.context_id, context, vec![answer]);
        }
        let Some(buffer) = read_headers(MapType::HttpRequestHeaders) else {
            log(
                LogLevel::Warn,
                "could not read the request headers: refused",
            );
            send_local_response(500, &[], b"", None);
            return Action::Pause;
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
        let peer = LazyPeer::new(property);
        let request = fields.request(&peer);
        let out = event(&self.state, |runtime, out| {
            runtime.on_request(self.context_id, &request, host(), out)
        });
        let action = carry_out(&self.state, self.context_id, context, out);
        if self.wants_body() {
            if end_of_stream {
                // A request that waits for a body that will never come: decided without one.
                self.body_arrived(&[]);
                return Action::Pause;
            }
            // Envoy delivers no body to a filter that paused the headers: the headers go on
            // (the body stays here, paused, and the request is answered locally at its end).
            return Action::Continue;
        }
        action
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.wants_body() {
            return Action::Continue;
        }
        let cap = runtime::MAX_LOGIN_BODY_BYTES.saturating_add(1);
        if !end_of_stream && body_size < cap {
            // Envoy buffers it until the end.
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size.min(cap))
            .ok()
            .flatten()
            .unwrap_or_default();
        self.body_arrived(&body);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let out = event(&self.state, |runtime, out| {
            runtime.on_response_headers(self.context_id, out)
        });
        carry_out(&self.state, self.context_id, None, out);
        Action::Continue
    }
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
