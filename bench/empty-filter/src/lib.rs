//! The cheapest useful Wasm HTTP filter: one header read and one header removal per request,
//! the same host calls any token filter needs at least. `make bench` measures mesh-oauth
//! against it to separate the filter's own cost from the cost of being a Wasm filter at all.
//!
//! Its plugin configuration names the host calls it makes per request (space-separated steps,
//! in this order whatever the order written), so that one `.wasm` serves every arm of the
//! floor's decomposition (issue 30) and each arm differs from another by known host calls:
//!
//! - `value`  (also the empty configuration: today's floor) `get_header_map_value`
//!   `authorization`;
//! - `values` one `get_header_map_value` per header mesh-oauth's core may read on a cached
//!   bearer request (`READS`), instead of `value`;
//! - `none`   no read and no removal: a request costs only Envoy's calls into the module
//!   (with `clock`, `log`, `metric` still made when named);
//! - `pairs`  the whole request header map in one `get_header_map_pairs`, as mesh-oauth reads
//!   it (the host's one buffer, taken over and freed unparsed), instead of `value`;
//! - `size`   `get_header_map_size` before the read and after the removal: the removal of every
//!   `authorization` field must take exactly the bytes of the one value read, else the
//!   request is refused (400): a repeated field shows without reading the whole map;
//! - `clock`  `get_current_time_nanoseconds`;
//! - `log`    a ~400-byte warn line every 100th request (mesh-oauth's audit line for 1 % of
//!   allowed requests, `audit.allowedSampleRate` 0.01);
//! - `metric` `increment_metric` of a counter defined at configuration;
//! - `set`    replaces the token header with a bearer token of the size mesh-oauth's outbound
//!   arms attach (`replace_header_map_value`, `SET_TOKEN_BYTES`) instead of removing it;
//! - `header=NAME` reads (`value`), size-checks and removes NAME instead of `authorization`
//!   (e.g. `dpop`, a header Envoy keeps as separate fields when repeated, where `authorization`
//!   is folded into one comma-joined value).
//!
//! Every request ends with `remove_header_map_value` of the token header (when a read found it;
//! with `set`, the replacement).
//! An unknown step fails the configuration, so that a typo cannot measure the wrong thing.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::Cell;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root { plan: Plan::default() }));
}}

/// The headers mesh-oauth's core may read on a cached bearer request: the token header, the
/// DPoP proof, cookies (cookie tokens, login sessions) and the pseudo-headers its rules and
/// audit line use.
const READS: [&str; 6] = [
    "authorization",
    "dpop",
    "cookie",
    ":authority",
    ":path",
    ":method",
];

const TOKEN_HEADER: &str = "authorization";

/// A `header=NAME` step's name, kept for the VM's life (plans are `Copy`; so is `set`'s token).
fn leak(name: &str) -> &'static str {
    Box::leak(name.to_ascii_lowercase().into_boxed_str())
}

/// The size of the token `set` attaches: an access token of the outbound workload's server
/// (oidc-provider, RS256, a few claims), as bench/outbound_arms.py's V8 fixture has it.
const SET_TOKEN_BYTES: usize = 684;

/// How often `log` writes its line: mesh-oauth's default audit sample of allowed requests.
const LOG_EVERY: u32 = 100;

#[derive(Clone, Copy)]
struct Plan {
    header: &'static str,
    none: bool,
    values: bool,
    pairs: bool,
    size: bool,
    clock: bool,
    log: bool,
    metric: Option<u32>,
    set: Option<&'static str>,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan {
            header: TOKEN_HEADER,
            none: false,
            values: false,
            pairs: false,
            size: false,
            clock: false,
            log: false,
            metric: None,
            set: None,
        }
    }
}

impl Plan {
    fn parse(text: &str) -> Result<Plan, String> {
        let mut plan = Plan::default();
        for step in text.split_whitespace() {
            if let Some(name) = step.strip_prefix("header=") {
                plan.header = leak(name);
                continue;
            }
            match step {
                "value" => {}
                "none" => plan.none = true,
                "values" => plan.values = true,
                "pairs" => plan.pairs = true,
                "size" => plan.size = true,
                "clock" => plan.clock = true,
                "log" => plan.log = true,
                "set" => {
                    let token = format!("Bearer {}", "t".repeat(SET_TOKEN_BYTES));
                    plan.set = Some(Box::leak(token.into_boxed_str()));
                }
                "metric" => {
                    let id = hostcalls::define_metric(MetricType::Counter, "empty_filter.requests")
                        .map_err(|status| format!("define_metric: {status:?}"))?;
                    plan.metric = Some(id);
                }
                other => return Err(format!("unknown step {other:?}")),
            }
        }
        if plan.none && (plan.values || plan.pairs || plan.size || plan.set.is_some()) {
            return Err("`none` reads nothing: no `values`, `pairs`, `size` or `set`".into());
        }
        if plan.values && plan.pairs {
            return Err("`values` and `pairs` are two ways of reading: pick one".into());
        }
        if plan.size && plan.set.is_some() {
            return Err("`size` checks a removal, not a replacement".into());
        }
        if plan.size && plan.pairs {
            return Err("`size` checks the one value read by `value` or `values`".into());
        }
        Ok(plan)
    }
}

struct Root {
    plan: Plan,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Plan::parse(&String::from_utf8_lossy(&raw)) {
            Ok(plan) => {
                self.plan = plan;
                true
            }
            Err(message) => {
                let _ = hostcalls::log(LogLevel::Error, &format!("empty-filter: {message}"));
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request { plan: self.plan }))
    }
}

struct Request {
    plan: Plan,
}

impl Context for Request {}

thread_local! {
    /// Requests seen by this VM, for `log`'s sample.
    static SEEN: Cell<u32> = const { Cell::new(0) };
}

#[link(wasm_import_module = "env")]
extern "C" {
    /// Not in the SDK.
    fn proxy_get_header_map_size(map_type: u32, return_size: *mut usize) -> u32;
    /// The SDK's reader copies every name and value into a `String` and a `Vec`.
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
}

fn map_size() -> Option<usize> {
    let mut size = 0;
    // SAFETY: the host writes one usize to a live local.
    let status =
        unsafe { proxy_get_header_map_size(MapType::HttpRequestHeaders as u32, &mut size) };
    (status == 0).then_some(size)
}

/// The whole request header map, as mesh-oauth's `read_headers` takes it over; its byte size.
fn read_pairs() -> usize {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: on success the host hands over a buffer it allocated through the SDK's
    // `proxy_on_memory_allocate` (a boxed `[u8]` of exactly `size` bytes).
    let status = unsafe {
        proxy_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size)
    };
    if status != 0 || data.is_null() {
        return 0;
    }
    // SAFETY: see above; dropping it frees it.
    drop(unsafe { Vec::from_raw_parts(data, size, size) });
    size
}

fn header(name: &str) -> Option<String> {
    hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Host errors are ignored rather than unwrapped: a panic would kill the VM.
        let plan = self.plan;
        let before = if plan.size { map_size() } else { None };
        let token = if plan.none {
            None
        } else if plan.pairs {
            (read_pairs() > 0).then(String::new)
        } else if plan.values {
            let mut token = None;
            for name in READS {
                let value = header(name);
                if name == plan.header {
                    token = value;
                }
            }
            token
        } else {
            header(plan.header)
        };
        if plan.clock {
            let _ = hostcalls::get_current_time();
        }
        if let Some(id) = plan.metric {
            let _ = hostcalls::increment_metric(id, 1);
        }
        if plan.log {
            let seen = SEEN.with(|seen| {
                seen.set(seen.get().wrapping_add(1));
                seen.get()
            });
            if seen.is_multiple_of(LOG_EVERY) {
                let _ = hostcalls::log(LogLevel::Warn, AUDIT_LIKE_LINE);
            }
        }
        if let Some(token) = token {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, plan.header, plan.set);
            if let Some(before) = before {
                let one_field = plan.header.len() + token.len();
                if map_size().map(|after| before.saturating_sub(after)) != Some(one_field) {
                    let _ = hostcalls::send_http_response(400, vec![], None);
                    return Action::Pause;
                }
            }
        }
        Action::Continue
    }
}

/// The size of mesh-oauth's audit line for an allowed cached request.
const AUDIT_LIKE_LINE: &str = concat!(
    r#"{"actors":null,"alg":"RS256","cached":true,"client_id":null,"decision":"allow","#,
    r#""iss":"https://bench.idp.test","kid":"rs256-00000000","method":"GET","path":"/","#,
    r#""provider":"https://bench.idp.test","reason":"valid","#,
    r#""request_id":"00000000-0000-0000-0000-000000000000","rule":null,"status":200,"#,
    r#""sub":"user-0","tenant":null}"#
);
