//! The outbound flow (issue 29) in the runtime: a request's [`Step`] becomes effects (resume
//! with the token attached, answer 403/503, hold), token calls are dispatched from the root
//! context (their answers must not depend on one request living on), and requests held for a
//! token are asked about again when its call answers or their deadline passes.

use super::held::{self, Until};
use super::metrics::Metrics;
use super::{
    log, Call, Effect, Effects, Host, Level, MetricId, MetricKind, Purpose, Runtime, WAKE_MS,
};
use crate::authorize::{HeaderEdit, Request};
use crate::config::{self, AuditLevel, Config};
use crate::outbound::answer::{TokenAnswer, MAX_ANSWER_BYTES};
use crate::outbound::cache::CacheKey;
use crate::outbound::refusal::Refusal;
use crate::outbound::{self, Context, Flow, OutboundRequest, Pending, Source, Step};
use crate::response::Response;
use std::collections::HashMap;

/// A request held for a call it caused waits at most this long past the call's timeout.
const CALL_WAIT_MARGIN_MS: u64 = 1_000;

/// What the runtime keeps for the outbound flow.
pub(super) struct OutboundState {
    flow: Flow,
    /// Calls in flight, by the id in their [`Purpose::Outbound`].
    pending: HashMap<u64, Pending>,
    /// Calls to dispatch at the next pump, from the root context.
    queued: Vec<outbound::Call>,
    next_id: u64,
    /// Keys whose call answered since held requests were last looked at.
    answered: Vec<CacheKey>,
    /// Each entry's name as a metric label, made once.
    labels: Vec<String>,
    tally: OutboundTally,
}

/// The per-request counters (`attached`, `cache_hit`, `passed_through`), added up in the VM
/// and handed to the host at the next pump, as the inbound verdicts are: two host calls per
/// request cost more than attaching a cached token.
#[derive(Default)]
struct OutboundTally {
    /// By entry: the counters' ids once defined (indexes of [`Tallied`]).
    ids: Vec<[Option<MetricId>; 3]>,
    /// Counts not yet reported, by id: a handful, scanned in order.
    pending: Vec<(MetricId, u64)>,
}

#[derive(Clone, Copy)]
enum Tallied {
    Attached = 0,
    CacheHit = 1,
    PassedThrough = 2,
}

impl Tallied {
    fn name(self) -> &'static str {
        match self {
            Tallied::Attached => "attached",
            Tallied::CacheHit => "cache_hit",
            Tallied::PassedThrough => "passed_through",
        }
    }
}

impl OutboundTally {
    fn count(
        &mut self,
        entry: usize,
        what: Tallied,
        label: &str,
        metrics: &mut Metrics,
        out: &mut Effects,
    ) {
        if self.ids.len() <= entry {
            self.ids.resize(entry + 1, [None; 3]);
        }
        let id = *self.ids[entry][what as usize].get_or_insert_with(|| {
            let name = format!("mesh_oauth.outbound.{label}.{}", what.name());
            metrics.id(MetricKind::Counter, &name, out)
        });
        match self.pending.iter_mut().find(|(known, _)| *known == id) {
            Some((_, count)) => *count += 1,
            None => self.pending.push((id, 1)),
        }
    }

    fn flush(&mut self, out: &mut Effects) {
        for (id, count) in &mut self.pending {
            if *count > 0 {
                let delta = i64::try_from(*count).unwrap_or(i64::MAX);
                out.push(Effect::IncrementMetric { id: *id, delta });
                *count = 0;
            }
        }
    }
}

impl OutboundState {
    /// `previous`: the state under the last configuration. Its calls were dispatched from the
    /// old root context, which Envoy drops with their answers: their leases are freed.
    pub(super) fn new(
        config: &Config,
        previous: Option<OutboundState>,
        host: Host<'_>,
        out: &mut Effects,
    ) -> Option<OutboundState> {
        let previous_flow = previous.map(|mut old| {
            for pending in old.pending.values() {
                old.flow.abandon(&host.shared, pending);
            }
            // Entry indexes may mean other entries now.
            old.tally.flush(out);
            old.flow
        });
        if config.outbound.entries.is_empty() {
            return None;
        }
        let flow = Flow::new(
            config,
            &config.outbound,
            config.limits.max_outbound_tokens,
            previous_flow,
        );
        Some(OutboundState {
            flow,
            pending: HashMap::new(),
            queued: Vec::new(),
            next_id: 0,
            answered: Vec::new(),
            labels: config
                .outbound
                .entries
                .iter()
                .map(|entry| config::metric_label(&entry.name))
                .collect(),
            tally: OutboundTally::default(),
        })
    }
}

impl Runtime {
    /// An outbound request (or a held one asked about again, `arrived_ms` given).
    pub(super) fn outbound_request(
        &mut self,
        context: u32,
        request: &Request<'_>,
        arrived_ms: Option<u64>,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        self.ask_outbound(context, request, arrived_ms, false, host, out);
    }

    /// `fetched`: the request waited for a call that answered, so a token it now finds in
    /// the cache was fetched for it.
    fn ask_outbound(
        &mut self,
        context: u32,
        request: &Request<'_>,
        arrived_ms: Option<u64>,
        fetched: bool,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let now = host.now_ms;
        let arrived_ms = arrived_ms.unwrap_or(now);
        let jitter = self.rng.sample();
        let jti = || fresh_jti(now, jitter);
        let Some(state) = self.outbound.as_mut() else {
            out.push(Effect::Resume {
                context,
                edits: Vec::new(),
            });
            return;
        };
        let keys = &self.keys;
        let endpoint = |provider: usize| keys.token_endpoint(provider);
        let cx = Context {
            store: &host.shared,
            now_ms: now,
            token_endpoint: &endpoint,
            jti: &jti,
            jitter,
        };
        let asked = OutboundRequest {
            method: request.method,
            path: request.path,
            authority: request.authority,
            headers: request.headers,
            peer: request.peer,
            arrived_ms,
        };
        let mut step = state.flow.on_request(&asked, &cx);
        if let Step::Continue { audit, .. } = &mut step {
            if fetched && audit.source == Source::Cached {
                audit.source = Source::Fetched;
            }
        }
        self.apply_outbound(context, step, request, arrived_ms, host, out);
    }

    fn apply_outbound(
        &mut self,
        context: u32,
        step: Step,
        request: &Request<'_>,
        arrived_ms: u64,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        match step {
            Step::Untouched | Step::Done | Step::RenewalFailed { .. } => out.push(Effect::Resume {
                context,
                edits: Vec::new(),
            }),
            Step::Continue {
                edits,
                renewal,
                renewal_failed,
                audit,
            } => {
                let edits = edits
                    .into_iter()
                    .map(|edit| match edit {
                        outbound::HeaderEdit::Set(name, value) => HeaderEdit::Set(name, value),
                        outbound::HeaderEdit::Remove(name) => HeaderEdit::Remove(name),
                    })
                    .collect();
                if let Some(renewal) = renewal {
                    self.queue_outbound(renewal, out);
                }
                if let Some(reason) = renewal_failed {
                    self.renewal_failed(audit.entry, reason, out);
                }
                let counted: &[Tallied] = match audit.source {
                    Source::Cached => &[Tallied::Attached, Tallied::CacheHit],
                    Source::Fetched => &[Tallied::Attached],
                    Source::PassedThrough => &[Tallied::PassedThrough],
                };
                if let Some(state) = self.outbound.as_mut() {
                    let label = state
                        .labels
                        .get(audit.entry)
                        .map_or("unknown", String::as_str);
                    for &what in counted {
                        state
                            .tally
                            .count(audit.entry, what, label, &mut self.metrics, out);
                    }
                }
                let passed_through = audit.source == Source::PassedThrough;
                if self.audited(passed_through) {
                    let token = match audit.source {
                        Source::Cached => "cached",
                        Source::Fetched => "fetched",
                        Source::PassedThrough => "passed_through",
                    };
                    let line = serde_json::json!({
                        "decision": "outbound",
                        "outbound": self.outbound_name(audit.entry),
                        "status": 200,
                        "reason": if passed_through { "passed_through" } else { "attached" },
                        "destination": clipped(&audit.destination),
                        "sub": audit.subject.as_deref().map(clipped),
                        "actor": audit.actor,
                        "token": token,
                    });
                    self.audit_outbound(line, request, out);
                }
                out.push(Effect::Resume { context, edits });
            }
            Step::Respond {
                entry,
                status,
                retry_after_seconds,
                reason,
            } => {
                let response = outbound_refusal(status, retry_after_seconds, reason);
                self.refuse_outbound(context, entry, response, reason, request, out);
            }
            Step::Call(call) => {
                let key = call.pending.key();
                let deadline_ms = host
                    .now_ms
                    .saturating_add(call.timeout_ms)
                    .saturating_add(CALL_WAIT_MARGIN_MS);
                let entry = call.pending.entry();
                self.queue_outbound(call, out);
                self.hold_outbound(context, entry, request, key, arrived_ms, deadline_ms, out);
            }
            Step::Wait {
                entry,
                key,
                until_ms,
            } => {
                self.hold_outbound(context, entry, request, key, arrived_ms, until_ms, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hold_outbound(
        &mut self,
        context: u32,
        entry: usize,
        request: &Request<'_>,
        key: CacheKey,
        arrived_ms: u64,
        deadline_ms: u64,
        out: &mut Effects,
    ) {
        let until = Until::Outbound { key, arrived_ms };
        if !self.hold(context, request, deadline_ms, until, out) {
            let reason = Refusal::HeldRequestsFull;
            let response = outbound_refusal(reason.status(), Some(1), reason);
            self.refuse_outbound(context, entry, response, reason, request, out);
        }
    }

    fn refuse_outbound(
        &mut self,
        context: u32,
        entry: usize,
        response: Response,
        reason: Refusal,
        request: &Request<'_>,
        out: &mut Effects,
    ) {
        let name = self.outbound_name(entry);
        self.count_outbound(&name, &format!("refused.{}", reason.name()), out);
        if self.audited(true) {
            let line = serde_json::json!({
                "decision": "outbound",
                "outbound": name,
                "status": response.status,
                "reason": reason.name(),
                "destination": clipped(request.authority),
            });
            self.audit_outbound(line, request, out);
        }
        out.push(Effect::Answer { context, response });
    }

    /// A token call to dispatch from the root context: the root is woken for it.
    fn queue_outbound(&mut self, call: outbound::Call, out: &mut Effects) {
        if let Some(state) = self.outbound.as_mut() {
            state.queued.push(call);
            out.push(Effect::SetTickPeriod { ms: WAKE_MS });
        }
    }

    /// At each pump: dispatch the queued calls, and ask again about the held requests whose
    /// token call answered or whose deadline passed.
    pub(super) fn pump_outbound(&mut self, reconfigured: bool, host: Host<'_>, out: &mut Effects) {
        let Some(state) = self.outbound.as_mut() else {
            if reconfigured {
                self.orphaned_outbound(out);
            }
            return;
        };
        state.tally.flush(out);
        let queued = std::mem::take(&mut state.queued);
        for call in queued {
            self.dispatch_outbound(call, out);
        }
        self.wake_outbound(reconfigured, host, out);
    }

    /// A push took the outbound entries away while requests waited for a token: it will not
    /// come, so they are answered 503 (never sent on without it).
    fn orphaned_outbound(&mut self, out: &mut Effects) {
        let waiting = self.held.take_outbound(|_| true, &mut self.metrics, out);
        for waiter in waiting {
            let reason = Refusal::TokenUnavailable;
            out.push(Effect::Answer {
                context: waiter.context,
                response: outbound_refusal(reason.status(), Some(1), reason),
            });
        }
    }

    fn dispatch_outbound(&mut self, call: outbound::Call, out: &mut Effects) {
        let Some(state) = self.outbound.as_mut() else {
            return;
        };
        let id = state.next_id;
        state.next_id += 1;
        let entry = call.pending.entry();
        let outbound::Call {
            target,
            headers,
            body,
            timeout_ms,
            pending,
        } = call;
        state.pending.insert(id, pending);
        let mut all_headers = vec![
            (":method".to_owned(), "POST".to_owned()),
            (":path".to_owned(), target.path),
            (":authority".to_owned(), target.authority),
            ("user-agent".to_owned(), "mesh-oauth".to_owned()),
        ];
        all_headers.extend(headers.into_iter().map(|(n, v)| (n.to_owned(), v)));
        let request = Call {
            cluster: target.cluster,
            headers: all_headers,
            body: Some(body.into_bytes()),
            timeout_ms,
        };
        let name = self.outbound_name(entry);
        self.count_outbound(&name, "token_requests", out);
        self.dispatch(Purpose::Outbound { id }, request, out);
    }

    fn wake_outbound(&mut self, everyone: bool, host: Host<'_>, out: &mut Effects) {
        let Some(state) = self.outbound.as_mut() else {
            return;
        };
        let answered = std::mem::take(&mut state.answered);
        let now = host.now_ms;
        let due = |h: &held::Held| {
            everyone
                || now >= h.deadline_ms
                || matches!(&h.until, Until::Outbound { key, .. } if answered.contains(key))
        };
        let waiting = self.held.take_outbound(due, &mut self.metrics, out);
        for waiter in waiting {
            let Until::Outbound { key, arrived_ms } = waiter.until else {
                continue;
            };
            let fetched = answered.contains(&key);
            let headers = waiter.request.header_pairs();
            let request = waiter.request.view(&headers);
            self.ask_outbound(
                waiter.context,
                &request,
                Some(arrived_ms),
                fetched,
                host,
                out,
            );
        }
    }

    /// An outbound call's answer (`status: None`: it failed, or could not be dispatched).
    pub(super) fn outbound_answered(
        &mut self,
        in_root: bool,
        id: u64,
        status: Option<u32>,
        body: &[u8],
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let jitter = self.rng.sample();
        let now = host.now_ms;
        let jti = || fresh_jti(now, jitter);
        let Some(state) = self.outbound.as_mut() else {
            return;
        };
        let Some(pending) = state.pending.remove(&id) else {
            return;
        };
        let key = pending.key();
        let entry = pending.entry();
        let keys = &self.keys;
        let endpoint = |provider: usize| keys.token_endpoint(provider);
        let cx = Context {
            store: &host.shared,
            now_ms: host.now_ms,
            token_endpoint: &endpoint,
            jti: &jti,
            jitter,
        };
        let step = state
            .flow
            .on_token_answer(pending, &TokenAnswer { status, body }, &cx);
        match step {
            Step::Call(next) => {
                // The actor token is in: now the exchange (the held requests wait on).
                if in_root {
                    self.dispatch_outbound(next, out);
                } else {
                    self.queue_outbound(next, out);
                }
            }
            Step::Respond {
                status,
                retry_after_seconds,
                reason,
                ..
            } => {
                let name = self.outbound_name(entry);
                log(
                    out,
                    Level::Warn,
                    &format!("outbound \"{name}\": no token: {reason}"),
                );
                // Every request held for this token waited for the call that failed.
                let waiting = self.held.take_outbound(
                    |h| matches!(&h.until, Until::Outbound { key: k, .. } if *k == key),
                    &mut self.metrics,
                    out,
                );
                for waiter in waiting {
                    let headers = waiter.request.header_pairs();
                    let request = waiter.request.view(&headers);
                    let response = outbound_refusal(status, retry_after_seconds, reason);
                    self.refuse_outbound(waiter.context, entry, response, reason, &request, out);
                }
            }
            Step::RenewalFailed { entry, reason } => {
                self.renewal_failed(entry, reason, out);
                // No request waits on a renewal; any held for its key are asked again.
                if let Some(state) = self.outbound.as_mut() {
                    state.answered.push(key);
                }
                self.wake_outbound(false, host, out);
            }
            Step::Continue { .. } | Step::Done | Step::Untouched | Step::Wait { .. } => {
                if let Some(state) = self.outbound.as_mut() {
                    state.answered.push(key);
                }
                self.wake_outbound(false, host, out);
            }
        }
    }

    /// A background renewal got no token: counted (`outbound.<name>.renewal_failed`) and
    /// logged with its reason, never the token or the secret. The cached token goes on until
    /// it expires; this is the warning before requests start failing.
    fn renewal_failed(&mut self, entry: usize, reason: Refusal, out: &mut Effects) {
        let name = self.outbound_name(entry);
        self.count_outbound(&name, "renewal_failed", out);
        log(
            out,
            Level::Warn,
            &format!(
                "outbound \"{name}\": renewal failed: {reason}; the cached token is used until it expires"
            ),
        );
    }

    pub(super) fn outbound_answer_cap(&self) -> usize {
        MAX_ANSWER_BYTES
    }

    fn outbound_name(&self, entry: usize) -> String {
        let name = self
            .outbound
            .as_ref()
            .and_then(|s| s.flow.entry_name(entry))
            .unwrap_or("unknown");
        config::metric_label(name)
    }

    /// `mesh_oauth.outbound.<entry>.<what>`.
    fn count_outbound(&mut self, name: &str, what: &str, out: &mut Effects) {
        self.metrics.add(
            MetricKind::Counter,
            &format!("mesh_oauth.outbound.{name}.{what}"),
            1,
            out,
        );
    }

    /// Whether an outbound request's audit line is written (`always`: a refusal or a request
    /// sent on without a token; else the allowed requests' sample): asked before the line is
    /// made, which a request the sample leaves out does without.
    fn audited(&mut self, always: bool) -> bool {
        self.config.audit.level != AuditLevel::Off
            && (always || self.rng.sample() < self.config.audit.allowed_sample_rate)
    }

    /// Writes the audit line of an outbound request: never the token, the secret or the
    /// assertion.
    fn audit_outbound(
        &mut self,
        mut line: serde_json::Value,
        request: &Request<'_>,
        out: &mut Effects,
    ) {
        let level = match self.config.audit.level {
            AuditLevel::Off => return,
            AuditLevel::Debug => Level::Debug,
            AuditLevel::Info => Level::Info,
            AuditLevel::Warn => Level::Warn,
        };
        if let (Some(map), Some(id)) = (
            line.as_object_mut(),
            request
                .headers
                .iter()
                .find(|(n, _)| *n == "x-request-id")
                .map(|(_, v)| *v),
        ) {
            map.insert("request_id".to_owned(), id.into());
        }
        out.push(Effect::Log {
            level,
            line: line.to_string(),
        });
    }
}

/// At most 256 characters of a value from the request (a destination, an unverified `sub`).
fn clipped(text: &str) -> String {
    text.chars().take(256).collect()
}

/// 403 (the subject token) or 503 with `Retry-After` (no token could be had), with the reason.
fn outbound_refusal(status: u16, retry_after_seconds: Option<u64>, reason: Refusal) -> Response {
    let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    if let Some(seconds) = retry_after_seconds {
        headers.push(("retry-after".to_owned(), seconds.to_string()));
    }
    Response {
        status: u32::from(status),
        headers,
        body: serde_json::json!({"error": "outbound_credentials", "reason": reason.name()})
            .to_string(),
        grpc_status: None,
    }
}

/// A `jti` for a client assertion: the CSPRNG (WASI `random_get` in the VM), else the time
/// and the jitter source, which keep it unique if not secret.
fn fresh_jti(now_ms: u64, jitter: f64) -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut jti = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut jti).is_err() {
        jti[..8].copy_from_slice(&now_ms.to_be_bytes());
        jti[8..].copy_from_slice(&jitter.to_bits().to_be_bytes());
    }
    jti
}
