//! Runs Wycheproof vectors through the code the filter verifies with (`keys::parse_jwks`, then
//! `verify::verify_with` with Envoy's `verify_signature` as the host, after its known-answer
//! test) inside real Envoy, and answers every request with the results.
//!
//! Configuration: `{"groups": [{"alg": "RS256", "jwk": {..}, "tests": [{"id": "..",
//! "msg": "<base64url>", "sig": "<base64url>"}, ..]}, ..]}` (other members are ignored).
//! Answer: `{"selfTest": null or the failure, "results": [[id, accepted, path], ..],
//! "interface": {..}}`, where `path` says who decided: `host` (the host answered), `ring` (the
//! host gave no answer), `none` (nobody: a signature refused before any call), `module` (an
//! algorithm the host does not verify, decided in the module: EdDSA by `ed25519`), `key-refused`
//! (`parse_jwks` refused the key); `interface`: see [`interface`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mesh_oauth::alg::{Alg, AlgSet};
use mesh_oauth::host::Envoy;
use mesh_oauth::host_verify::{HostAnswer, HostHash, SignatureHost, TrustedHost};
use mesh_oauth::keys::{parse_jwks, JwksLimits, KeySet};
use mesh_oauth::verify::verify_with;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};
use serde_json::{json, Value};
use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Probe { report: Rc::default() }));
}}

/// Envoy, counting its answers.
#[derive(Default)]
struct Counting {
    answered: AtomicUsize,
    unavailable: AtomicUsize,
}

impl SignatureHost for Counting {
    fn verify(&self, hash: HostHash, spki: &[u8], message: &[u8], signature: &[u8]) -> HostAnswer {
        let answer = Envoy.verify(hash, spki, message, signature);
        let counter = match answer {
            HostAnswer::Unavailable => &self.unavailable,
            HostAnswer::Valid | HostAnswer::Invalid => &self.answered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }
}

const LIMITS: JwksLimits = JwksLimits {
    max_bytes: 64 * 1024,
    max_keys: 4,
};

fn run(config: &Value) -> Value {
    let counting: &'static Counting = Box::leak(Box::default());
    let (host, self_test) = match TrustedHost::check(counting) {
        Ok(trusted) => (Some(trusted), Value::Null),
        Err(failure) => (None, Value::String(failure.to_string())),
    };
    let decode = |v: &Value| {
        URL_SAFE_NO_PAD
            .decode(v.as_str().unwrap_or_default())
            .unwrap_or_default()
    };
    let mut results = Vec::new();
    let empty = Vec::new();
    let groups = config["groups"].as_array().unwrap_or(&empty);
    for group in groups {
        let alg = group["alg"].as_str().and_then(Alg::from_name);
        let document = json!({ "keys": [group["jwk"]] }).to_string();
        let keys = parse_jwks(document.as_bytes(), &LIMITS, false).ok();
        for test in group["tests"].as_array().unwrap_or(&empty) {
            let id = test["id"].clone();
            let (Some(alg), Some(keys)) = (alg, &keys) else {
                results.push(json!([id, false, "key-refused"]));
                continue;
            };
            let (msg, sig) = (decode(&test["msg"]), decode(&test["sig"]));
            let (accepted, path) = decide(counting, host, alg, keys, &msg, &sig);
            results.push(json!([id, accepted, path]));
        }
    }
    json!({ "selfTest": self_test, "results": results, "interface": interface(counting, host) })
}

/// Verifies one signature as the filter does, and says who decided.
fn decide(
    counting: &Counting,
    host: Option<TrustedHost<'_>>,
    alg: Alg,
    keys: &KeySet,
    msg: &[u8],
    sig: &[u8],
) -> (bool, &'static str) {
    counting.answered.store(0, Ordering::Relaxed);
    counting.unavailable.store(0, Ordering::Relaxed);
    let accepted = verify_with(host, alg, None, msg, sig, keys, AlgSet::all()).is_ok();
    let path = if HostHash::for_alg(alg).is_none() {
        "module"
    } else if counting.unavailable.load(Ordering::Relaxed) > 0 {
        "ring"
    } else if counting.answered.load(Ordering::Relaxed) > 0 {
        "host"
    } else {
        "none"
    };
    (accepted, path)
}

/// What the known-answer test does not ask: Envoy's answer for a key it cannot import, and who
/// decides for a key the module accepts but BoringSSL will not import (an EC point off its
/// curve).
fn interface(counting: &Counting, host: Option<TrustedHost<'_>>) -> Value {
    let der_signature = [0x30, 6, 2, 1, 1, 2, 1, 1];
    let junk_key = Envoy.verify(HostHash::Sha256, b"not a key", b"m", &der_signature);
    let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
    let off_curve =
        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])}]});
    let off_curve = match parse_jwks(off_curve.to_string().as_bytes(), &LIMITS, false) {
        Ok(keys) => json!(decide(counting, host, Alg::ES256, &keys, b"m", &[1; 64])),
        Err(_) => Value::Null,
    };
    json!({ "junkKey": format!("{junk_key:?}"), "offCurveKey": off_curve })
}

struct Probe {
    report: Rc<Cell<Option<Rc<String>>>>,
}

impl Context for Probe {}

impl RootContext for Probe {
    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
        let config: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let report = run(&config);
        self.report.set(Some(Rc::new(report.to_string())));
        let _ = hostcalls::log(LogLevel::Info, "host-probe: vectors run");
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let report = self.report.take();
        self.report.set(report.clone());
        Some(Box::new(Answer { report }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Answer {
    report: Option<Rc<String>>,
}

impl Context for Answer {}

impl HttpContext for Answer {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let body = self.report.as_deref().map_or("null", String::as_str);
        let _ = hostcalls::send_http_response(
            200,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}
