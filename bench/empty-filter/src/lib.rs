//! The cheapest useful Wasm HTTP filter: one header read and one header removal per request,
//! the same host calls any token filter needs at least. `make bench` measures mesh-oauth
//! against it to separate the filter's own cost from the cost of being a Wasm filter at all.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Request))
    }
}

struct Request;

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        // Host errors are ignored rather than unwrapped: a panic would kill the VM.
        if let Ok(Some(_token)) =
            hostcalls::get_map_value(MapType::HttpRequestHeaders, "authorization")
        {
            let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, "authorization", None);
        }
        Action::Continue
    }
}
