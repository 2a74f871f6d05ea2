//! The per-VM state machine behind the proxy-wasm shell: plain Rust, no host calls, tested
//! natively (`tests.rs`).
//!
//! The shell (`src/filter.rs`) turns each host callback into one **event** and carries out
//! the **effects** the runtime returns, in order:
//!
//! | event (method)                              | host callback                          |
//! |---------------------------------------------|----------------------------------------|
//! | [`Runtime::check`] + [`Runtime::take_over`] | `on_configure` (with the previous state) |
//! | [`Runtime::on_request`]                     | `on_http_request_headers`              |
//! | [`Runtime::on_response_headers`]            | `on_http_response_headers`             |
//! | [`Runtime::request_done`]                   | `on_done` of a request                 |
//! | [`Runtime::on_tick`]                        | `on_tick`                              |
//! | [`Runtime::answer_cap`] + [`Runtime::on_call_answer`] | `on_http_call_response`      |
//! | [`Runtime::dispatched`] / [`Runtime::not_dispatched`] | the result of an [`Effect::Dispatch`] |
//!
//! Host facts come in with each event ([`Host`]: the time, Envoy's shared data); the
//! request's connection comes inside [`Request`] (its `peer`).
//!
//! ## Extension points (for flows that hold a request and make a call)
//! - **Calls**: [`Runtime::dispatch`] with a [`Purpose`] sends an [`Effect::Dispatch`]; the
//!   runtime keeps each call's purpose under the host's token and hands the answer on by
//!   purpose in [`Runtime::on_call_answer`] (and a refused dispatch in
//!   [`Runtime::not_dispatched`]). A new flow adds a `Purpose` variant and its arms there
//!   and in [`Runtime::answer_cap`] and [`Runtime::take_over`] (what a push does to its
//!   calls in flight): the compiler points at each.
//! - **Held requests** ([`held`]): a request waits either for a provider's keys
//!   ([`held::Until::Keys`], decided again when they change) or for a named call
//!   ([`held::Until::Call`]: the flow takes it with [`Runtime::take_held_for_call`]
//!   when the call answers, and the runtime answers it with the flow's own `expiry` response
//!   if its deadline passes first). `maxHeldRequests` bounds both. Another kind of wait (a
//!   shared-data record that changes) is another `Until` variant with its arm in the wake
//!   that runs at each tick (`Runtime::wake`).
//! - **Answers**: [`Effect::Resume`] with request-header edits, [`Effect::Answer`] with any
//!   response (a 302 with `set-cookie`, a 503 with `retry-after`...), and response-header
//!   edits recorded with [`Runtime::edit_response`], applied when the upstream's answer
//!   passes ([`Effect::EditResponse`]).
//! - A flow that logs a user in, say, would: on the request, `dispatch` its token call with
//!   a new `Purpose` and `hold_for_call` the request (expiry: a 503 with `retry-after`); on
//!   the call's answer, `take_held_for_call` and push [`Effect::Answer`] (a 302 with
//!   `set-cookie`) or [`Effect::Resume`] with an `authorization` edit for each.
//! - **Metrics** have explicit kinds ([`MetricKind`]); per-request counts go through the
//!   tally (flushed at each tick) rather than one host call per request.

pub mod held;
mod login;
mod metrics;
mod outbound;

#[cfg(test)]
mod tests;

use crate::audit;
use crate::authorize::{self, Decision, HeaderEdit, KeyLookup, KeyState, Outcome, Request};
use crate::cache::TokenCache;
use crate::compile::{self, Compiled};
use crate::config::{self, AuditLevel};
use crate::config_hash::{self, ConfigHash};
use crate::host_verify::{SelfTestFailure, TrustedHost};
use crate::keystore::{FetchAnswer, KeyStore, SharedStore, Spread, Stage};
use crate::response::{Challenges, Denial, Presentation, Response};
use crate::sender::dpop::Proof;
use crate::sender::replay::{self, Admission};
use held::{HeldRequests, OwnedRequest, Until};
use login::Logins;
pub use login::MAX_LOGIN_BODY_BYTES;
pub use metrics::{MetricId, MetricKind};
use metrics::{Metrics, Tally};
use std::collections::HashMap;

/// How often the root looks at the shared key records and at held requests' deadlines.
pub const TICK_MS: u64 = 100;
/// While a request waits for another worker's session refresh, the root looks this often.
pub const LOGIN_REFRESH_POLL_MS: u64 = 20;
/// A request that starts waiting wakes the root at once with this tick.
pub const WAKE_MS: u64 = 1;
/// An owner root silent for this long (ten ticks) is taken over by another root.
pub const OWNER_SILENT_MS: u64 = 1_000;

/// Verified tokens remembered, summed over the workers: bounded by `limits.maxCachedTokens`
/// per worker.
const CACHED_TOKENS_GAUGE: &str = "mesh_oauth.cached_tokens";
/// 1 while the host verifies RS*/ES* signatures, 0 while ring does.
const HOST_SIGNATURES_GAUGE: &str = "mesh_oauth.host_signatures";
/// Logged when a request that would wait cannot: `limits.maxHeldRequests` are held.
const HELD_FULL: &str = "held requests at their limit: answering at once";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the shell does for the runtime, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start this call; report the host's token with [`Runtime::dispatched`], or the
    /// refusal with [`Runtime::not_dispatched`]. From the root context.
    Dispatch {
        call: CallId,
        request: Call,
    },
    /// Apply the edits to request `context`'s headers, in order, and let it go on.
    Resume {
        context: u32,
        edits: Vec<HeaderEdit>,
    },
    /// Answer request `context` with this local response.
    Answer {
        context: u32,
        response: Response,
    },
    /// Apply the edits to request `context`'s headers now; it goes on later, with a `Resume`.
    EditRequest {
        context: u32,
        edits: Vec<HeaderEdit>,
    },
    /// Apply the edits to the response headers of request `context` (the current one).
    EditResponse {
        context: u32,
        edits: Vec<HeaderEdit>,
    },
    /// Define `name` in the host; `id` names it in the effects that follow.
    DefineMetric {
        id: MetricId,
        kind: MetricKind,
        name: String,
    },
    IncrementMetric {
        id: MetricId,
        delta: i64,
    },
    RecordMetric {
        id: MetricId,
        value: u64,
    },
    /// A log line as it should appear (with its `mesh-oauth: ` prefix, or an audit line).
    Log {
        level: Level,
        line: String,
    },
    /// The root context's next tick, in milliseconds.
    SetTickPeriod {
        ms: u64,
    },
}

pub type Effects = Vec<Effect>;

/// An outgoing HTTP call (through an Envoy cluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

/// The runtime's name for a call until the host has given it a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallId(u64);

/// What a call is for: its answer is handed on by purpose. A new variant also decides, in
/// [`Runtime::take_over`], what becomes of its calls at a push: those dispatched from a root
/// context are dropped by Envoy with it; those dispatched while handling a request (answered
/// in that request's context) are still answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A provider's discovery document, key set or revocation list.
    KeyFetch { provider: usize, stage: Stage },
    /// A browser login's call to the token endpoint (code redemption or refresh), made while
    /// handling a request: answered in that request's context.
    Login { call: u64 },
    /// A token endpoint call of the outbound flow; `id` names its pending state.
    Outbound { id: u64 },
}

/// A call's answer as the host gave it. No `:status` (a reset call, unreadable headers):
/// the call failed.
pub struct CallAnswer<'a> {
    /// Lower-case names, lossy values.
    pub headers: &'a [(String, String)],
    /// At most [`Runtime::answer_cap`] bytes.
    pub body: &'a [u8],
}

impl CallAnswer<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Facts about the host at the time of an event.
#[derive(Clone, Copy)]
pub struct Host<'h> {
    pub now_ms: u64,
    /// Envoy's shared data: the sidecar-wide key records and DPoP proof memory.
    pub shared: &'h dyn SharedStore,
}

/// The facts `take_over` needs besides the checked configuration.
pub struct TakeOver<'a> {
    /// The root context being configured: it owns the state from now on.
    pub root_id: u32,
    /// The `name` Envoy gives the plugin (Istio: `<namespace>.<WasmPlugin name>`).
    pub plugin: &'a str,
    /// This VM configures the plugin for the first time.
    pub new_in_vm: bool,
    /// The host's signature verifier, if it passed its known-answer test.
    pub signature_host: Option<TrustedHost<'static>>,
}

/// A configuration that parsed and whose inline key sets are valid: taking it over cannot
/// fail on them.
pub struct Checked {
    config: Compiled,
    seed: u64,
    /// The policy identity: logged and reported as a gauge once the configuration is taken.
    identity: Option<ConfigHash>,
}

/// The answer while no valid configuration is in place: fail closed.
pub fn not_configured() -> Response {
    Response {
        status: 503,
        headers: Vec::new(),
        body: String::new(),
        grpc_status: None,
    }
}

/// The host's signature verifier if it passed its known-answer test (logged either way):
/// RS*/ES* signatures are then verified by the host, the others by ring in the module.
pub fn signature_host(
    checked: Result<TrustedHost<'static>, SelfTestFailure>,
    out: &mut Effects,
) -> Option<TrustedHost<'static>> {
    let (message, host) = match checked {
        Ok(trusted) => (
            "signatures: RS*/ES* verified by the host (BoringSSL), others in the module (ring)"
                .to_string(),
            Some(trusted),
        ),
        Err(failure) => (
            format!("signatures: verified in the module (ring): {failure}"),
            None,
        ),
    };
    log(out, Level::Info, &message);
    host
}

/// What a worker VM keeps for one plugin: its root contexts and requests share it.
pub struct Runtime {
    /// The root context that fetches and wakes held requests: the one configured last.
    /// After a push Envoy drops the old root with its calls' answers, so only one pumps.
    owner_root: u32,
    /// When the owner last pumped: a root that stays silent (Envoy never ran it) is
    /// replaced by any other root that shares the state.
    last_pump_ms: u64,
    config: Compiled,
    keys: KeyStore,
    cache: TokenCache,
    held: HeldRequests,
    /// Calls dispatched, by the host's token.
    calls: HashMap<u32, Purpose>,
    /// Calls handed to the shell whose token is not known yet, with their cluster.
    starting: Vec<(CallId, Purpose, String)>,
    next_call: u64,
    /// Set by a new configuration: held requests are decided again on the next tick.
    reconfigured: bool,
    metrics: Metrics,
    /// Per-request counts not yet handed to the host.
    tally: Tally,
    /// Audit sampling.
    rng: Spread,
    /// The keys-age gauge per provider as last recorded, in seconds: recorded when it moves.
    keys_age_s: Vec<Option<u64>>,
    /// This VM's part of `CACHED_TOKENS_GAUGE` as last added (the gauge sums all workers).
    cached_tokens_counted: usize,
    /// Response-header edits waiting for their request's response, by context.
    response_edits: Vec<(u32, Vec<HeaderEdit>)>,
    /// Browser logins (`login`) and what they have under way.
    logins: Logins,
    /// The outbound flow, when the configuration has `outbound` entries.
    outbound: Option<outbound::OutboundState>,
}

fn log(out: &mut Effects, level: Level, message: &str) {
    out.push(Effect::Log {
        level,
        line: format!("mesh-oauth: {message}"),
    });
}

/// The worker's keys, and the sidecar's memory of DPoP proofs in shared data.
struct Sidecar<'k> {
    keys: &'k KeyStore,
    shared: &'k dyn SharedStore,
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
            self.shared,
            self.max_dpop_proofs,
            proof.replay_id,
            proof.expires_s,
            now_s,
        )
    }
}

/// The key store reads shared data through `&impl SharedStore`.
impl SharedStore for &dyn SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        (**self).set(key, value, cas)
    }
}

/// A held request as it was before this look: what its new decision builds on.
#[derive(Clone, Copy)]
struct Prior {
    provider: usize,
    deadline_ms: u64,
    refetch_since: Option<u64>,
    provider_removed: bool,
    expired: bool,
}

/// A decision that says wait for the provider's keys.
struct KeyWait {
    provider: usize,
    deadline_ms: u64,
    refetch_since: Option<u64>,
}

impl Runtime {
    /// Parses `raw` and checks its inline key sets, before anything is taken over: a refused
    /// push leaves the running configuration as it was. `None`: refused (logged).
    /// `random`: entropy for the refresh jitter (the time alone would start every sidecar of
    /// a fleet deployed at once on the same schedule).
    pub fn check(
        raw: &str,
        root_id: u32,
        now_ms: u64,
        random: u64,
        out: &mut Effects,
    ) -> Option<Checked> {
        let config = match compile::configure(raw) {
            Ok(config) => config,
            Err(error) => {
                log(
                    out,
                    Level::Error,
                    &format!("invalid configuration: {error}"),
                );
                return None;
            }
        };
        if Logins::new(&config).is_none() {
            log(
                out,
                Level::Error,
                "invalid configuration: login: the cookie keys make no key ring",
            );
            return None;
        }
        let seed = now_ms ^ u64::from(root_id).rotate_left(32) ^ random;
        let identity = ConfigHash::of(raw);
        Some(Checked {
            config,
            seed,
            identity,
        })
    }

    /// The state for a checked configuration, taking over `previous` (the plugin's state
    /// under its last configuration): keys, metrics, fetches in flight and held requests,
    /// which follow their provider (by issuer) and are decided again with the new
    /// configuration at the next tick. The configuration was checked: nothing here refuses.
    pub fn take_over(
        checked: Checked,
        previous: Option<Runtime>,
        facts: TakeOver<'_>,
        host: Host<'_>,
        out: &mut Effects,
    ) -> Runtime {
        let Checked {
            config,
            seed,
            identity,
        } = checked;
        let mut previous = previous;
        let mut metrics = previous
            .as_mut()
            .map(|p| std::mem::take(&mut p.metrics))
            .unwrap_or_default();
        if facts.new_in_vm {
            count_vm_start(&mut metrics, facts.plugin, out);
        }
        let previous_outbound = previous.as_mut().and_then(|p| p.outbound.take());
        let (previous_keys, held, abandoned, cached_tokens_counted) = match previous {
            Some(mut old) => {
                old.tally.flush(out);
                // Held requests follow their provider (by issuer) to its new index.
                let new_index = |provider: usize| {
                    let issuer = &old.config.providers.get(provider)?.issuer;
                    config.providers.iter().position(|p| &p.issuer == issuer)
                };
                let mut held = std::mem::take(&mut old.held);
                held.follow_providers(new_index);
                // Envoy drops the old root context with its calls: their answers never come.
                let abandoned: Vec<(usize, Stage)> = old
                    .calls
                    .values()
                    .filter_map(|purpose| match *purpose {
                        Purpose::KeyFetch { provider, stage } => {
                            Some((new_index(provider)?, stage))
                        }
                        // Answered in its request's context, to a state that forgot it:
                        // the held request gets its expiry answer.
                        Purpose::Login { .. } => None,
                        // Freed with the outbound state below.
                        Purpose::Outbound { .. } => None,
                    })
                    .collect();
                (Some(old.keys), held, abandoned, old.cached_tokens_counted)
            }
            None => (None, HeldRequests::default(), Vec::new(), 0),
        };
        let mut keys = KeyStore::new(&config, previous_keys, seed);
        for (provider, stage) in abandoned {
            keys.abandon_fetch(&host.shared, provider, stage);
        }
        if config
            .providers
            .iter()
            .any(|p| p.dpop.mode != config::Binding::Off)
        {
            replay::prepare_slots(host.shared, config.limits.max_dpop_proofs);
        }
        keys.use_signature_host(facts.signature_host);
        // `check` made sure every login compiles.
        let logins = Logins::new(&config).unwrap_or_default();
        // Cached outbound tokens live on in shared data and in the worker's copy.
        let outbound = outbound::OutboundState::new(&config, previous_outbound, host, out);
        let providers = config.providers.len();
        let mut runtime = Runtime {
            owner_root: facts.root_id,
            last_pump_ms: host.now_ms,
            // Entries were verified under the old configuration: start afresh.
            cache: TokenCache::new(config.limits.max_cached_tokens),
            config,
            keys,
            held,
            calls: HashMap::new(),
            starting: Vec::new(),
            next_call: 0,
            reconfigured: true,
            metrics,
            rng: Spread::new(seed),
            keys_age_s: vec![None; providers],
            // The old cache's count comes off the gauge at the first pump.
            cached_tokens_counted,
            // Provider indexes may mean other providers now: looked up afresh by name.
            tally: Tally::default(),
            response_edits: Vec::new(),
            logins,
            outbound,
        };
        runtime.metrics.record(
            HOST_SIGNATURES_GAUGE,
            u64::from(facts.signature_host.is_some()),
            out,
        );
        if let Some(hash) = &identity {
            log(
                out,
                Level::Info,
                &format!(
                    "configured plugin \"{}\": config sha256 {}",
                    facts.plugin,
                    hash.hex()
                ),
            );
            let name = config_hash::gauge_name(facts.plugin);
            runtime.metrics.record(&name, hash.gauge_value(), out);
        }
        // Fetches start from the first tick, not from here: Envoy also configures VMs it
        // never runs (e.g. to validate the configuration), and a fetch claimed by one of
        // those would hold every worker's lease until it timed out.
        out.push(Effect::SetTickPeriod { ms: WAKE_MS });
        runtime
    }

    /// A request's headers: decided at once (resumed or answered), or held (the root is
    /// woken to fetch what it waits for).
    pub fn on_request(
        &mut self,
        context: u32,
        request: &Request<'_>,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        // A configuration with outbound entries is a workload's outbound side: tokens are
        // attached, no request is refused for its own token.
        if self.outbound.is_some() {
            self.outbound_request(context, request, None, host, out);
            return;
        }
        let route = self.login_request(context, request, host, out);
        self.follow_route(context, request, route, host, out);
    }

    /// The pipeline's decision on a request: at once, or held for keys.
    fn decide_request(
        &mut self,
        context: u32,
        request: &Request<'_>,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        if let Some(wait) = self.handle(context, request, None, host, out) {
            self.held.hold(
                held::Held {
                    context,
                    request: OwnedRequest::of(request),
                    deadline_ms: wait.deadline_ms,
                    until: Until::Keys {
                        provider: wait.provider,
                        refetch_since: wait.refetch_since,
                        provider_removed: false,
                    },
                },
                &mut self.metrics,
                out,
            );
            // Fetches start from the root (an answer must not depend on this request living
            // on); wake it now rather than at its next tick.
            out.push(Effect::SetTickPeriod { ms: WAKE_MS });
        }
    }

    /// The upstream's response headers for request `context`: the edits recorded for it.
    pub fn on_response_headers(&mut self, context: u32, out: &mut Effects) {
        if self.response_edits.is_empty() {
            return;
        }
        if let Some(at) = self.response_edits.iter().position(|(c, _)| *c == context) {
            let (_, edits) = self.response_edits.swap_remove(at);
            out.push(Effect::EditResponse { context, edits });
        }
    }

    /// Records edits for the response to request `context` (e.g. a `set-cookie` once the
    /// request is resumed).
    pub fn edit_response(&mut self, context: u32, edits: Vec<HeaderEdit>) {
        match self.response_edits.iter_mut().find(|(c, _)| *c == context) {
            Some((_, pending)) => pending.extend(edits),
            None => self.response_edits.push((context, edits)),
        }
    }

    /// Holds request `context` until call `call` answers (the flow then takes it with
    /// [`Runtime::take_held_for_call`]) or `deadline_ms` passes (answered with `expiry`).
    /// `false`: `maxHeldRequests` are held already, nothing was held.
    pub fn hold_for_call(
        &mut self,
        context: u32,
        request: &Request<'_>,
        call: CallId,
        deadline_ms: u64,
        expiry: Response,
        out: &mut Effects,
    ) -> bool {
        self.hold(
            context,
            request,
            deadline_ms,
            Until::Call { call, expiry },
            out,
        )
    }

    /// Holds request `context` until `until` or `deadline_ms`; `false`, with a warning, when
    /// the held requests are at their limit (the caller then answers at once).
    fn hold(
        &mut self,
        context: u32,
        request: &Request<'_>,
        deadline_ms: u64,
        until: Until,
        out: &mut Effects,
    ) -> bool {
        if self.held.len() >= self.config.limits.max_held_requests {
            log(out, Level::Warn, HELD_FULL);
            return false;
        }
        let held = held::Held {
            context,
            request: OwnedRequest::of(request),
            deadline_ms,
            until,
        };
        self.held.hold(held, &mut self.metrics, out);
        true
    }

    /// The requests held for `call`, for the flow whose call answered to resume or answer.
    pub fn take_held_for_call(&mut self, call: CallId, out: &mut Effects) -> Vec<held::Held> {
        self.held.take_for_call(call, &mut self.metrics, out)
    }

    /// Request `context` is over (answered, or its client has gone): whatever waited for it
    /// is forgotten, and a held request frees its place.
    pub fn request_done(&mut self, context: u32, out: &mut Effects) {
        self.login_request_done(context);
        if !self.response_edits.is_empty() {
            self.response_edits.retain(|(c, _)| *c != context);
        }
        self.held.release(context, &mut self.metrics, out);
    }

    pub fn on_tick(&mut self, root_id: u32, host: Host<'_>, out: &mut Effects) {
        self.pump(root_id, Vec::new(), host, out);
        let ms = if self.held.any_login_refresh() {
            LOGIN_REFRESH_POLL_MS
        } else {
            TICK_MS
        };
        out.push(Effect::SetTickPeriod { ms });
    }

    /// Starts a call for `purpose`.
    pub fn dispatch(&mut self, purpose: Purpose, request: Call, out: &mut Effects) -> CallId {
        let call = CallId(self.next_call);
        self.next_call += 1;
        self.starting.push((call, purpose, request.cluster.clone()));
        out.push(Effect::Dispatch { call, request });
        call
    }

    /// The host took call `call` under `token`.
    pub fn dispatched(&mut self, call: CallId, token: u32) {
        if let Some(at) = self.starting.iter().position(|(c, _, _)| *c == call) {
            let (_, purpose, _) = self.starting.swap_remove(at);
            self.calls.insert(token, purpose);
        }
    }

    /// The host refused to start call `call` (e.g. an unknown cluster): `reason` as it said.
    pub fn not_dispatched(
        &mut self,
        call: CallId,
        reason: &str,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let Some(at) = self.starting.iter().position(|(c, _, _)| *c == call) else {
            return;
        };
        let (_, purpose, cluster) = self.starting.swap_remove(at);
        match purpose {
            Purpose::Login { call } => {
                log(
                    out,
                    Level::Warn,
                    &format!(
                        "login: token call could not start through cluster \"{cluster}\": {reason}"
                    ),
                );
                self.login_not_dispatched(call, host, out);
            }
            Purpose::KeyFetch { provider, stage } => {
                log(
                    out,
                    Level::Warn,
                    &format!(
                        "provider \"{}\": key fetch could not start through cluster \"{cluster}\": {reason}",
                        self.provider_name(provider),
                    ),
                );
                self.keys
                    .dispatch_failed(&host.shared, provider, stage, host.now_ms);
                self.wake(&[provider], host, out);
            }
            Purpose::Outbound { id } => {
                log(
                    out,
                    Level::Warn,
                    &format!("outbound token call could not start through cluster \"{cluster}\": {reason}"),
                );
                self.outbound_answered(false, id, None, &[], host, out);
            }
        }
    }

    /// How many bytes of call `token`'s answer body to read: one past the limit, so an
    /// over-size body is refused without the rest of it ever being copied into the VM.
    /// `None`: not a call of this state (one from before a push): ignore its answer.
    pub fn answer_cap(&self, token: u32) -> Option<usize> {
        let limits = &self.config.limits;
        let cap = match self.calls.get(&token)? {
            Purpose::Login { .. } => Self::login_answer_cap(),
            Purpose::KeyFetch { stage, .. } => match stage {
                Stage::Discovery | Stage::Jwks => limits.max_jwks_bytes,
                Stage::Revocations => limits.max_revocation_bytes,
            },
            Purpose::Outbound { .. } => self.outbound_answer_cap(),
        };
        Some(cap.saturating_add(1))
    }

    /// Call `token` answered, in root context `root_id` (`None`: in a request's context,
    /// for a call dispatched while handling that request).
    pub fn on_call_answer(
        &mut self,
        root_id: Option<u32>,
        token: u32,
        answer: &CallAnswer<'_>,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let Some(purpose) = self.calls.remove(&token) else {
            return;
        };
        match purpose {
            Purpose::Login { call } => {
                let status = answer.header(":status").and_then(|s| s.parse::<u32>().ok());
                self.login_answered(call, status, answer.body, host, out);
            }
            Purpose::KeyFetch { provider, stage } => {
                self.fetch_answered(provider, stage, answer, host, out);
                // Discovery done: fetch the keys at once; keys in: release the held requests.
                match root_id {
                    Some(root_id) => self.pump(root_id, vec![provider], host, out),
                    None => self.wake(&[provider], host, out),
                }
            }
            Purpose::Outbound { id } => {
                let status = answer.header(":status").and_then(|s| s.parse::<u32>().ok());
                self.outbound_answered(root_id.is_some(), id, status, answer.body, host, out);
            }
        }
    }

    fn fetch_answered(
        &mut self,
        provider: usize,
        stage: Stage,
        answer: &CallAnswer<'_>,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let fetched = FetchAnswer {
            status: answer.header(":status").and_then(|s| s.parse::<u32>().ok()),
            cache_control: answer.header("cache-control"),
            body: answer.body,
        };
        let result = self
            .keys
            .on_answer(&host.shared, provider, stage, &fetched, host.now_ms);
        let name = self.provider_name(provider);
        let label = audit::provider_label(&self.config, Some(provider));
        let (what, counter) = match stage {
            Stage::Discovery | Stage::Jwks => ("key", "key_fetch"),
            Stage::Revocations => ("revocation list", "revocation_fetch"),
        };
        let fetch_metric = if result.is_ok() { "success" } else { "failure" };
        self.metrics.add(
            MetricKind::Counter,
            &format!("mesh_oauth.{label}.{counter}.{fetch_metric}"),
            1,
            out,
        );
        if let (Ok(count), Stage::Jwks) = (&result, stage) {
            self.record_keys_loaded(&label, *count, out);
        }
        let (level, message) = match (result, stage) {
            (Ok(_), Stage::Discovery) => {
                (Level::Info, format!("provider \"{name}\": discovery done"))
            }
            (Ok(count), Stage::Jwks) => (
                Level::Info,
                format!("provider \"{name}\": {count} signing keys loaded"),
            ),
            (Ok(count), Stage::Revocations) => (
                Level::Info,
                format!("provider \"{name}\": revocation list of {count} entries loaded"),
            ),
            (Err(problem), _) => (
                Level::Warn,
                format!("provider \"{name}\": {what} fetch failed: {problem}"),
            ),
        };
        log(out, level, &message);
    }

    /// Starts due fetches, then looks again at held requests whose provider changed or
    /// whose deadline passed. Runs in the root context `root_id`: after a push, the old
    /// root and the new one share this state, and either may pump it.
    fn pump(&mut self, root_id: u32, mut changed: Vec<usize>, host: Host<'_>, out: &mut Effects) {
        let now = host.now_ms;
        if root_id != self.owner_root {
            if now.saturating_sub(self.last_pump_ms) < OWNER_SILENT_MS {
                return;
            }
            self.owner_root = root_id;
        }
        self.last_pump_ms = now;
        self.tally.flush(out);
        self.record_cached_tokens(out);
        let reconfigured = std::mem::take(&mut self.reconfigured);
        if reconfigured {
            changed.extend(self.held.key_providers());
        }
        let sync = self.keys.sync(&host.shared, now);
        // Keys another VM fetched count here too: a plugin whose VM never fetches (a second
        // plugin of the same `vm_id`) still reports the keys it uses.
        for &provider in &sync.changed {
            if let KeyState::Ready(keys) = self.keys.keys(provider, now) {
                let label = audit::provider_label(&self.config, Some(provider));
                self.record_keys_loaded(&label, keys.len(), out);
            }
        }
        changed.extend(sync.changed);
        self.record_keys_age(now, out);
        for fetch in sync.fetches {
            let request = Call {
                cluster: fetch.target.cluster,
                headers: vec![
                    (":method".into(), "GET".into()),
                    (":path".into(), fetch.target.path),
                    (":authority".into(), fetch.target.authority),
                    ("accept".into(), "application/json".into()),
                    ("user-agent".into(), "mesh-oauth".into()),
                ],
                body: None,
                timeout_ms: fetch.timeout_ms,
            };
            let purpose = Purpose::KeyFetch {
                provider: fetch.provider,
                stage: fetch.stage,
            };
            self.dispatch(purpose, request, out);
        }
        self.wake(&changed, host, out);
        self.pump_outbound(reconfigured, host, out);
    }

    fn record_keys_loaded(&mut self, provider_label: &str, count: usize, out: &mut Effects) {
        let name = format!("mesh_oauth.{provider_label}.keys_loaded");
        self.metrics.record(&name, count as u64, out);
    }

    /// `mesh_oauth.<provider>.keys_age_seconds`: how long ago the keys in use were fetched,
    /// so "serving stale keys since N s" shows before the keys are dropped.
    fn record_keys_age(&mut self, now: u64, out: &mut Effects) {
        for provider in 0..self.config.providers.len() {
            let age_s = self.keys.keys_age_ms(provider, now).map(|ms| ms / 1000);
            if age_s.is_none() || self.keys_age_s.get(provider) == Some(&age_s) {
                continue;
            }
            if let Some(slot) = self.keys_age_s.get_mut(provider) {
                *slot = age_s;
            }
            let label = audit::provider_label(&self.config, Some(provider));
            self.metrics.record(
                &format!("mesh_oauth.{label}.keys_age_seconds"),
                age_s.unwrap_or(0),
                out,
            );
        }
    }

    fn record_cached_tokens(&mut self, out: &mut Effects) {
        let cached = self.cache.len();
        if cached != self.cached_tokens_counted {
            let delta = i64::try_from(cached).unwrap_or(i64::MAX)
                - i64::try_from(self.cached_tokens_counted).unwrap_or(i64::MAX);
            self.metrics
                .add(MetricKind::Gauge, CACHED_TOKENS_GAUGE, delta, out);
            self.cached_tokens_counted = cached;
        }
    }

    /// Decides again the held requests whose provider is in `changed`, and those whose
    /// deadline passed.
    fn wake(&mut self, changed: &[usize], host: Host<'_>, out: &mut Effects) {
        if self.held.is_empty() {
            return;
        }
        let now = host.now_ms;
        let waiting = self.held.take_all(&mut self.metrics, out);
        let mut login_refreshes = Vec::new();
        for waiter in waiting {
            let expired = now >= waiter.deadline_ms;
            let prior = match &waiter.until {
                Until::Keys {
                    provider,
                    refetch_since,
                    provider_removed,
                } => {
                    if !expired && !changed.contains(provider) {
                        self.held.hold(waiter, &mut self.metrics, out);
                        continue;
                    }
                    Prior {
                        provider: *provider,
                        deadline_ms: waiter.deadline_ms,
                        refetch_since: *refetch_since,
                        provider_removed: *provider_removed,
                        expired,
                    }
                }
                // Looked at by the outbound flow's own wake.
                Until::Outbound { .. } => {
                    self.held.hold(waiter, &mut self.metrics, out);
                    continue;
                }
                Until::LoginRefresh => {
                    login_refreshes.push(waiter);
                    continue;
                }
                Until::Call { expiry, .. } => {
                    if expired {
                        out.push(Effect::Answer {
                            context: waiter.context,
                            response: expiry.clone(),
                        });
                    } else {
                        self.held.hold(waiter, &mut self.metrics, out);
                    }
                    continue;
                }
            };
            let wait = {
                let headers = waiter.request.header_pairs();
                let request = waiter.request.view(&headers);
                self.handle(waiter.context, &request, Some(prior), host, out)
            };
            if let Some(wait) = wait {
                let held = held::Held {
                    deadline_ms: wait.deadline_ms,
                    until: Until::Keys {
                        provider: wait.provider,
                        refetch_since: wait.refetch_since,
                        provider_removed: false,
                    },
                    ..waiter
                };
                self.held.hold(held, &mut self.metrics, out);
            }
        }
        for waiter in login_refreshes {
            self.login_refresh_again(waiter, host, out);
        }
    }

    /// Decides a request and answers or resumes it; `Some` when it is to wait for keys.
    /// `prior`: a held request being looked at again.
    fn handle(
        &mut self,
        context: u32,
        request: &Request<'_>,
        prior: Option<Prior>,
        host: Host<'_>,
        out: &mut Effects,
    ) -> Option<KeyWait> {
        let now = host.now_ms;
        // A held unknown kid is decided with the keys as they are once its fetch came, or
        // once its wait ran out: the kid is unknown (401), the keys are there.
        let refetch_over = prior.is_some_and(|p| {
            p.refetch_since
                .is_some_and(|since| p.expired || self.keys.fetched_since(p.provider, since))
        });
        let mut decision = self.decide(request, host, refetch_over);
        // A held request past its deadline that would still wait: the keys could not be had.
        if let (Outcome::Wait { provider, .. }, Some(Prior { expired: true, .. })) =
            (&decision.outcome, prior)
        {
            decision.outcome =
                authorize::wait_expired(&self.config, &self.keys, *provider, now).outcome;
        }
        if prior.is_some_and(|p| p.provider_removed) {
            decision.outcome = authorize::provider_removed(decision.outcome);
        }
        if let Outcome::Wait { provider, refetch } = decision.outcome {
            if self.held.len() < self.config.limits.max_held_requests {
                if refetch {
                    self.keys.want_refetch(provider, now);
                }
                let timeout_ms = self
                    .config
                    .providers
                    .get(provider)
                    .map_or(0, |p| p.timeout_ms);
                return Some(KeyWait {
                    provider,
                    deadline_ms: prior.map_or(now.saturating_add(timeout_ms), |p| p.deadline_ms),
                    refetch_since: prior
                        .and_then(|p| p.refetch_since)
                        .or(refetch.then_some(now)),
                });
            }
            log(out, Level::Warn, HELD_FULL);
            decision = if refetch {
                self.decide(request, host, true)
            } else {
                authorize::wait_expired(&self.config, &self.keys, provider, now)
            };
        }
        self.observe(&decision, request, out);
        self.apply(
            context,
            decision.outcome,
            decision.trace.rule,
            request,
            host.now_ms,
            out,
        );
        None
    }

    /// `without_refetch`: an unknown kid is refused rather than waited for.
    fn decide(&mut self, request: &Request<'_>, host: Host<'_>, without_refetch: bool) -> Decision {
        let sidecar = Sidecar {
            keys: &self.keys,
            shared: host.shared,
            max_dpop_proofs: self.config.limits.max_dpop_proofs,
        };
        if without_refetch {
            let keys = authorize::WithoutRefetch(&sidecar);
            authorize::authorize(&self.config, &keys, &mut self.cache, request, host.now_ms)
        } else {
            authorize::authorize(
                &self.config,
                &sidecar,
                &mut self.cache,
                request,
                host.now_ms,
            )
        }
    }

    /// Metrics and the audit line for a final decision.
    fn observe(&mut self, decision: &Decision, request: &Request<'_>, out: &mut Effects) {
        let verdict = audit::Verdict::of(decision);
        self.tally
            .count_verdict(&self.config, decision, verdict, &mut self.metrics, out);
        if decision.trace.alg.is_some() {
            self.tally
                .count_cache(decision.trace.cached, &mut self.metrics, out);
        }
        let level = match self.config.audit.level {
            AuditLevel::Off => return,
            AuditLevel::Debug => Level::Debug,
            AuditLevel::Info => Level::Info,
            AuditLevel::Warn => Level::Warn,
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
            out.push(Effect::Log { level, line });
        }
    }

    /// A final outcome for request `context`: edits, or a local response. `rule`: the
    /// deciding rule, whose scopes a refusal names.
    fn apply(
        &mut self,
        context: u32,
        outcome: Outcome,
        rule: Option<usize>,
        request: &Request<'_>,
        now_ms: u64,
        out: &mut Effects,
    ) {
        let response = match outcome {
            Outcome::Allow(allowed) => {
                for header in &allowed.skipped_headers {
                    log(
                        out,
                        Level::Warn,
                        &format!("header {header} not set: the claim holds characters unsafe in a header"),
                    );
                }
                if let Some(denial) = &allowed.would_deny {
                    log(
                        out,
                        Level::Info,
                        &format!(
                            "report mode: would refuse with {} ({})",
                            denial.render("").status,
                            denial.reason()
                        ),
                    );
                }
                out.push(Effect::Resume {
                    context,
                    edits: allowed.edits,
                });
                return;
            }
            // A browser navigation without a token, on a login host: sent to log in.
            Outcome::Deny(Denial::MissingToken) if self.login_may_start(context) => {
                match self.login_instead(context, request, now_ms, out) {
                    Some(login) => login,
                    None => self.denial(&Denial::MissingToken, rule, request),
                }
            }
            Outcome::Deny(denial) => self.denial(&denial, rule, request),
            // The filter's own answers go out as they are (no gRPC status of their own).
            Outcome::Answer(answer) => Response {
                grpc_status: None,
                ..answer
            },
            // Callers resolve waits before applying.
            Outcome::Wait { .. } => self.denial(
                &Denial::KeysUnavailable {
                    retry_after_seconds: 1,
                },
                rule,
                request,
            ),
        };
        out.push(Effect::Answer { context, response });
    }

    /// A refusal rendered for this request: its realm, challenges and presentation.
    fn denial(&self, denial: &Denial, rule: Option<usize>, request: &Request<'_>) -> Response {
        let realm = self.config.realm.as_deref().unwrap_or(request.authority);
        let challenges = Challenges::for_request(&self.config, rule, request.authority);
        let how = Presentation::of(
            &self.config,
            rule,
            request.method,
            request.path,
            request.headers,
        );
        denial.answer(realm, &challenges, &how)
    }

    fn provider_name(&self, provider: usize) -> String {
        self.config
            .providers
            .get(provider)
            .map(|p| p.name.clone())
            .unwrap_or_default()
    }
}

/// `mesh_oauth.vm_starts.<plugin>`: this VM configures the plugin for the first time. A VM
/// Envoy reloads after a crash (`FAIL_RELOAD`) starts empty and counts again, so a crash loop
/// shows as a climbing counter.
fn count_vm_start(metrics: &mut Metrics, plugin: &str, out: &mut Effects) {
    let label = match config::metric_label(plugin) {
        label if label.is_empty() => "unnamed".to_string(),
        label => label,
    };
    metrics.add(
        MetricKind::Counter,
        &format!("mesh_oauth.vm_starts.{label}"),
        1,
        out,
    );
}
