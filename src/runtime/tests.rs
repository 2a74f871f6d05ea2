//! The runtime driven as the shell drives it, against a fake Envoy that carries out its
//! effects (shared data with Envoy's compare-and-swap semantics, metrics by name, local
//! answers, resumed requests, dispatched calls), with tokens signed by ring.

use super::*;
use crate::alg::Alg;
use crate::keys::testing::{b64, TestKey};
use crate::keystore::tests::Shared;
use crate::peer::NoPeer;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.com";
const OTHER_ISSUER: &str = "https://other.example.com";
const KEYS_CLUSTER: &str = "outbound|443||idp.example.com";
/// Milliseconds: tokens are issued at `NOW_S`.
const T0: u64 = 1_700_000_000_000;
const NOW_S: u64 = T0 / 1000;
const ROOT: u32 = 1;

/// What Envoy would have done with the effects so far.
#[derive(Default)]
pub(super) struct Envoy {
    pub(super) shared: Shared,
    pub(super) now: u64,
    /// Metric name → kind and value, as Envoy's stats show them.
    pub(super) metrics: HashMap<String, (MetricKind, i64)>,
    pub(super) metric_names: HashMap<MetricId, String>,
    pub(super) logs: Vec<(Level, String)>,
    pub(super) answered: Vec<(u32, Response)>,
    pub(super) resumed: Vec<(u32, Vec<HeaderEdit>)>,
    /// Request-header edits made before a request goes on.
    pub(super) request_edits: Vec<(u32, Vec<HeaderEdit>)>,
    pub(super) response_edits: Vec<(u32, Vec<HeaderEdit>)>,
    /// Calls in flight: token and request.
    pub(super) calls: Vec<(u32, Call)>,
    pub(super) next_token: u32,
    /// The host refuses every dispatch (an unknown cluster).
    pub(super) refuse_dispatch: bool,
    pub(super) tick_ms: Option<u64>,
}

impl Envoy {
    pub(super) fn host(&self) -> Host<'_> {
        Host {
            now_ms: self.now,
            shared: &self.shared,
        }
    }

    /// Carries out effects in order, as the shell does (a refused dispatch is reported back
    /// and its effects carried out at once).
    pub(super) fn run(&mut self, runtime: &mut Runtime, effects: Effects) {
        let mut queue = std::collections::VecDeque::from(effects);
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Dispatch { call, request } => {
                    if self.refuse_dispatch {
                        let mut more = Vec::new();
                        runtime.not_dispatched(call, "BadArgument", self.host(), &mut more);
                        for effect in more.into_iter().rev() {
                            queue.push_front(effect);
                        }
                    } else {
                        self.next_token += 1;
                        runtime.dispatched(call, self.next_token);
                        self.calls.push((self.next_token, request));
                    }
                }
                Effect::Resume { context, edits } => self.resumed.push((context, edits)),
                Effect::EditRequest { context, edits } => self.request_edits.push((context, edits)),
                Effect::Answer { context, response } => self.answered.push((context, response)),
                Effect::EditResponse { context, edits } => {
                    self.response_edits.push((context, edits))
                }
                Effect::DefineMetric { id, kind, name } => {
                    assert!(
                        !self.metric_names.contains_key(&id),
                        "{name}: id defined twice"
                    );
                    self.metric_names.insert(id, name.clone());
                    self.metrics.entry(name).or_insert((kind, 0));
                }
                Effect::IncrementMetric { id, delta } => {
                    let name = &self.metric_names[&id];
                    self.metrics.get_mut(name).unwrap().1 += delta;
                }
                Effect::RecordMetric { id, value } => {
                    let name = &self.metric_names[&id];
                    let metric = self.metrics.get_mut(name).unwrap();
                    assert_eq!(metric.0, MetricKind::Gauge, "{name} recorded");
                    metric.1 = value as i64;
                }
                Effect::Log { level, line } => self.logs.push((level, line)),
                Effect::SetTickPeriod { ms } => self.tick_ms = Some(ms),
            }
        }
    }

    pub(super) fn metric(&self, name: &str) -> Option<i64> {
        self.metrics.get(name).map(|(_, value)| *value)
    }

    pub(super) fn logged(&self, text: &str) -> bool {
        self.logs.iter().any(|(_, line)| line.contains(text))
    }

    pub(super) fn answer_for(&self, context: u32) -> Option<&Response> {
        self.answered
            .iter()
            .find(|(c, _)| *c == context)
            .map(|(_, r)| r)
    }

    pub(super) fn was_resumed(&self, context: u32) -> bool {
        self.resumed.iter().any(|(c, _)| *c == context)
    }

    /// The call in flight to `cluster`, taken.
    pub(super) fn take_call(&mut self, cluster: &str) -> Option<(u32, Call)> {
        let at = self.calls.iter().position(|(_, c)| c.cluster == cluster)?;
        Some(self.calls.remove(at))
    }

    /// A metric's value, 0 before it is defined.
    pub(super) fn count(&self, name: &str) -> i64 {
        self.metric(name).unwrap_or(0)
    }

    /// The log lines, without their levels.
    pub(super) fn log_lines(&self) -> impl Iterator<Item = &String> {
        self.logs.iter().map(|(_, line)| line)
    }

    /// The header edits `context` went on with.
    pub(super) fn edits_of(&self, context: u32) -> Option<&Vec<HeaderEdit>> {
        self.resumed
            .iter()
            .find(|(c, _)| *c == context)
            .map(|(_, e)| e)
    }

    /// The call in flight to `path`, taken.
    pub(super) fn take_call_to(&mut self, path: &str) -> Option<(u32, Call)> {
        let at = self.calls.iter().position(|(_, c)| {
            c.headers
                .iter()
                .any(|(n, v)| n == ":path" && v.as_str() == path)
        })?;
        Some(self.calls.remove(at))
    }
}

/// One worker VM: the runtime, the fake host, a signing key.
struct Vm {
    runtime: Option<Runtime>,
    envoy: Envoy,
    key: TestKey,
}

fn provider(extra: Value) -> Value {
    let mut p = json!({"name": "idp", "issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks",
                       "audiences": ["orders"], "timeout": "2s"});
    for (k, v) in extra.as_object().unwrap() {
        match v {
            Value::Null => {
                p.as_object_mut().unwrap().remove(k);
            }
            _ => p[k] = v.clone(),
        }
    }
    p
}

impl Vm {
    fn new(config: Value) -> Vm {
        let mut vm = Vm {
            runtime: None,
            envoy: Envoy {
                now: T0,
                ..Envoy::default()
            },
            key: TestKey::ed25519(),
        };
        assert!(vm.configure(ROOT, config), "configured");
        vm
    }

    fn jwks(&self) -> String {
        json!({"keys": [self.key.jwk(Some("k1"))]}).to_string()
    }

    /// A push, or the first configuration, in root context `root`.
    fn configure(&mut self, root: u32, config: Value) -> bool {
        let mut out = Vec::new();
        let raw = config.to_string();
        let Some(checked) = Runtime::check(&raw, root, self.envoy.now, 42, &mut out) else {
            self.envoy.run_without_runtime(out);
            return false;
        };
        let previous = self.runtime.take();
        let facts = TakeOver {
            root_id: root,
            plugin: "mesh-oauth",
            new_in_vm: previous.is_none(),
            signature_host: None,
        };
        let mut runtime = Runtime::take_over(checked, previous, facts, self.envoy.host(), &mut out);
        self.envoy.run(&mut runtime, out);
        self.runtime = Some(runtime);
        true
    }

    fn event(&mut self, run: impl FnOnce(&mut Runtime, Host<'_>, &mut Effects)) {
        let mut runtime = self.runtime.take().unwrap();
        let mut out = Vec::new();
        run(&mut runtime, self.envoy.host(), &mut out);
        self.envoy.run(&mut runtime, out);
        self.runtime = Some(runtime);
    }

    fn token(&self, claims: Value) -> String {
        let header = b64(json!({"alg": "EdDSA", "kid": "k1"}).to_string().as_bytes());
        let payload = b64(claims.to_string().as_bytes());
        let input = format!("{header}.{payload}");
        let signature = b64(&self.key.sign(Alg::EdDSA, input.as_bytes()));
        format!("{input}.{signature}")
    }

    /// A token signed by `key` under `kid`.
    fn token_by(key: &TestKey, kid: &str) -> String {
        let header = b64(json!({"alg": "EdDSA", "kid": kid}).to_string().as_bytes());
        let claims = json!({"iss": ISSUER, "aud": "orders", "sub": "bob",
                            "exp": NOW_S + 3600, "iat": NOW_S});
        let input = format!("{header}.{}", b64(claims.to_string().as_bytes()));
        let signature = b64(&key.sign(Alg::EdDSA, input.as_bytes()));
        format!("{input}.{signature}")
    }

    fn good_token(&self, issuer: &str) -> String {
        self.token(json!({"iss": issuer, "aud": "orders", "sub": "alice",
                          "exp": NOW_S + 3600, "iat": NOW_S}))
    }

    fn request(&mut self, context: u32, token: &str) {
        let authorization = format!("Bearer {token}");
        let headers = [("authorization", authorization.as_str())];
        let request = Request {
            method: "GET",
            scheme: "https",
            path: "/orders",
            authority: "orders.example.com",
            headers: &headers,
            peer: &NoPeer,
        };
        self.event(|runtime, host, out| runtime.on_request(context, &request, host, out));
    }

    fn tick(&mut self, root: u32) {
        self.event(|runtime, host, out| runtime.on_tick(root, host, out));
    }

    /// Answers call `token` with `status` and `body`, in root context `root`.
    fn answer(&mut self, root: u32, token: u32, status: u32, body: &str) {
        let headers = vec![(":status".to_string(), status.to_string())];
        let cap = self.runtime.as_ref().unwrap().answer_cap(token);
        let body = &body.as_bytes()[..cap.map_or(0, |cap| body.len().min(cap))];
        let answer = CallAnswer {
            headers: &headers,
            body,
        };
        self.event(|runtime, host, out| {
            runtime.on_call_answer(Some(root), token, &answer, host, out)
        });
    }

    /// The first tick's key fetch, answered with the key set.
    fn load_keys(&mut self) {
        self.tick(ROOT);
        let (token, _) = self.envoy.take_call(KEYS_CLUSTER).expect("a key fetch");
        let jwks = self.jwks();
        self.answer(ROOT, token, 200, &jwks);
    }

    fn held(&self) -> usize {
        self.runtime.as_ref().unwrap().held.len()
    }
}

impl Envoy {
    fn run_without_runtime(&mut self, effects: Effects) {
        for effect in effects {
            if let Effect::Log { level, line } = effect {
                self.logs.push((level, line));
            }
        }
    }
}

fn config(providers: Vec<Value>) -> Value {
    json!({"providers": providers, "audit": {"allowedSampleRate": 0}})
}

fn status(response: Option<&Response>) -> Option<u32> {
    response.map(|r| r.status)
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_request_waits_for_the_first_keys_and_goes_on_once_they_come() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    assert_eq!(
        vm.envoy.tick_ms,
        Some(WAKE_MS),
        "configuring wakes the root"
    );
    assert!(vm.envoy.calls.is_empty(), "no fetch before the first tick");
    let token = vm.good_token(ISSUER);
    vm.request(7, &token);
    assert!(vm.envoy.answered.is_empty() && vm.envoy.resumed.is_empty());
    assert_eq!(vm.held(), 1);
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(1));
    assert_eq!(
        vm.envoy.tick_ms,
        Some(WAKE_MS),
        "a held request wakes the root"
    );

    vm.tick(ROOT);
    assert_eq!(vm.envoy.tick_ms, Some(TICK_MS));
    let (token_id, call) = vm.envoy.take_call(KEYS_CLUSTER).expect("a key fetch");
    assert_eq!(call.timeout_ms, 2_000);
    assert!(call.headers.contains(&(":path".into(), "/jwks".into())));
    assert!(call.headers.contains(&(":method".into(), "GET".into())));
    let jwks = vm.jwks();
    vm.answer(ROOT, token_id, 200, &jwks);

    assert!(vm.envoy.was_resumed(7), "resumed once the keys are in");
    assert_eq!(vm.held(), 0);
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(0));
    assert_eq!(vm.envoy.metric("mesh_oauth.idp.key_fetch.success"), Some(1));
    assert_eq!(vm.envoy.metric("mesh_oauth.idp.keys_loaded"), Some(1));
    assert!(vm
        .envoy
        .logged("mesh-oauth: provider \"idp\": 1 signing keys loaded"));
}

#[test]
fn past_max_held_requests_a_request_is_answered_at_once() {
    let limits = json!({"maxHeldRequests": 2});
    let mut vm = Vm::new(json!({"providers": [provider(json!({}))], "limits": limits}));
    let token = vm.good_token(ISSUER);
    for context in [10, 11, 12] {
        vm.request(context, &token);
    }
    assert_eq!(vm.held(), 2);
    let refused = vm
        .envoy
        .answer_for(12)
        .expect("the third is answered at once");
    assert_eq!(refused.status, 503);
    assert!(header(refused, "retry-after").is_some());
    assert!(vm.envoy.answer_for(10).is_none() && vm.envoy.answer_for(11).is_none());
    assert!(vm
        .envoy
        .logged("mesh-oauth: held requests at their limit: answering at once"));
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(2));
}

#[test]
fn a_held_request_past_its_deadline_is_refused_with_retry_after() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    let token = vm.good_token(ISSUER);
    vm.request(7, &token);
    vm.tick(ROOT); // the fetch starts and is never answered
    vm.envoy.now += 1_999;
    vm.tick(ROOT);
    assert!(
        vm.envoy.answer_for(7).is_none(),
        "still within the provider's timeout"
    );
    vm.envoy.now += 1;
    vm.tick(ROOT);
    let refused = vm.envoy.answer_for(7).expect("answered at its deadline");
    assert_eq!(refused.status, 503);
    assert!(header(refused, "retry-after").is_some());
    assert_eq!(vm.held(), 0);
    vm.tick(ROOT);
    assert_eq!(
        vm.envoy.metric("mesh_oauth.idp.denied.keys_unavailable"),
        Some(1)
    );
    assert!(
        vm.envoy.logged("\"keys_unavailable\""),
        "the refusal's audit line"
    );
}

#[test]
fn a_push_decides_held_requests_with_the_new_configuration() {
    let mut vm = Vm::new(config(vec![
        provider(json!({})),
        provider(json!({"name": "other", "issuer": OTHER_ISSUER,
                        "jwksUri": "https://other.example.com/jwks"})),
    ]));
    let token = vm.good_token(ISSUER);
    let other_token = vm.good_token(OTHER_ISSUER);
    vm.request(7, &token);
    vm.request(8, &other_token);
    assert_eq!(vm.held(), 2);
    // The new configuration has the first provider's keys inline, at another index, and no
    // longer has the other provider.
    let inline = provider(json!({"jwks": vm.jwks(), "jwksUri": null}));
    assert!(vm.configure(
        2,
        config(vec![
            provider(json!({"name": "extra", "issuer": "https://extra.example.com"})),
            inline
        ])
    ));
    assert_eq!(vm.held(), 2, "held across the push");
    vm.tick(2);
    assert!(vm.envoy.was_resumed(7), "decided with the pushed keys");
    let refused = vm.envoy.answer_for(8).expect("its provider is gone");
    assert_eq!(refused.status, 401);
    vm.tick(2);
    assert_eq!(
        vm.envoy.metric("mesh_oauth.none.denied.provider_removed"),
        Some(1)
    );
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(0));
}

#[test]
fn an_answer_to_a_call_from_before_a_push_is_ignored_and_its_lease_freed() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    let token = vm.good_token(ISSUER);
    vm.request(7, &token);
    vm.tick(ROOT);
    let (old_call, _) = vm.envoy.take_call(KEYS_CLUSTER).expect("a key fetch");
    assert!(vm.configure(
        2,
        config(vec![provider(json!({"audiences": ["orders", "more"]}))])
    ));
    // Envoy drops the old root's calls: the new root fetches again at once rather than
    // after the old fetch's lease.
    vm.tick(2);
    let (new_call, _) = vm
        .envoy
        .take_call(KEYS_CLUSTER)
        .expect("fetched again at once");
    assert_ne!(new_call, old_call);
    let jwks = vm.jwks();
    assert_eq!(vm.runtime.as_ref().unwrap().answer_cap(old_call), None);
    let logs = vm.envoy.logs.len();
    vm.answer(ROOT, old_call, 200, &jwks);
    assert_eq!(vm.envoy.logs.len(), logs, "nothing done with it");
    assert!(!vm.envoy.was_resumed(7));
    vm.answer(2, new_call, 200, &jwks);
    assert!(vm.envoy.was_resumed(7));
}

#[test]
fn an_answer_for_a_provider_a_push_removed_is_ignored() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.tick(ROOT);
    let (call, _) = vm.envoy.take_call(KEYS_CLUSTER).expect("a key fetch");
    let other = provider(json!({"name": "other", "issuer": OTHER_ISSUER,
                                "jwksUri": "https://other.example.com/jwks"}));
    assert!(vm.configure(2, config(vec![other])));
    let jwks = vm.jwks();
    vm.answer(2, call, 200, &jwks);
    assert_eq!(vm.envoy.metric("mesh_oauth.idp.key_fetch.success"), None);
    assert_eq!(vm.envoy.metric("mesh_oauth.other.key_fetch.success"), None);
    assert!(!vm.envoy.logged("signing keys loaded"));
}

#[test]
fn a_silent_owner_root_is_taken_over_after_owner_silent_ms() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    // A push makes root 2 the owner; Envoy never runs it.
    assert!(vm.configure(
        2,
        config(vec![provider(json!({"audiences": ["orders", "more"]}))])
    ));
    let token = vm.good_token(ISSUER);
    vm.request(7, &token);
    vm.tick(ROOT);
    assert!(
        vm.envoy.calls.is_empty(),
        "the old root does not pump while the owner may"
    );
    vm.envoy.now += OWNER_SILENT_MS - 1;
    vm.tick(ROOT);
    assert!(vm.envoy.calls.is_empty());
    vm.envoy.now += 1;
    vm.tick(ROOT);
    let (call, _) = vm.envoy.take_call(KEYS_CLUSTER).expect("root 1 took over");
    let jwks = vm.jwks();
    vm.answer(ROOT, call, 200, &jwks);
    assert!(vm.envoy.was_resumed(7));
    // Root 1 owns the state now: root 2 waits its turn in the same way.
    vm.tick(2);
    assert!(vm.envoy.calls.is_empty());
}

#[test]
fn a_fetch_the_host_refuses_to_dispatch_is_retried_with_backoff_until_the_deadline() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.envoy.refuse_dispatch = true;
    let token = vm.good_token(ISSUER);
    vm.request(7, &token);
    vm.tick(ROOT);
    let refusal = "mesh-oauth: provider \"idp\": key fetch could not start through cluster \"outbound|443||idp.example.com\": BadArgument";
    let refusals = |vm: &Vm| vm.envoy.logs.iter().filter(|(_, l)| l == refusal).count();
    assert_eq!(refusals(&vm), 1);
    vm.tick(ROOT);
    assert_eq!(refusals(&vm), 1, "not again before its backoff");
    assert_eq!(vm.held(), 1, "still within the provider's timeout");
    vm.envoy.now += 1_000;
    vm.tick(ROOT);
    assert_eq!(refusals(&vm), 2, "tried again after its backoff");
    vm.envoy.now += 1_000;
    vm.tick(ROOT);
    let refused = vm.envoy.answer_for(7).expect("answered at its deadline");
    assert_eq!(refused.status, 503);
    assert!(header(refused, "retry-after").is_some());
    assert_eq!(vm.held(), 0);
}

#[test]
fn a_refused_dispatch_answers_held_requests_at_once_when_no_fetch_can_come_in_time() {
    // The first retry comes after at least 250 ms: past this provider's timeout.
    let mut vm = Vm::new(config(vec![provider(json!({"timeout": "100ms"}))]));
    vm.envoy.refuse_dispatch = true;
    vm.request(7, &vm.good_token(ISSUER));
    vm.tick(ROOT);
    let refused = vm
        .envoy
        .answer_for(7)
        .expect("answered in the tick that failed");
    assert_eq!(refused.status, 503);
    assert_eq!(vm.held(), 0);
}

#[test]
fn an_unknown_kid_waits_for_one_refetch_and_is_decided_with_what_it_brings() {
    let mut vm = Vm::new(config(vec![provider(json!({"jwksMinRefetchSeconds": 0}))]));
    vm.load_keys();
    vm.envoy.now += 10;
    let rotated = TestKey::ed25519();
    vm.request(7, &Vm::token_by(&rotated, "k2"));
    vm.request(8, &Vm::token_by(&rotated, "k3"));
    assert_eq!(vm.held(), 2, "held for a refetch");
    vm.tick(ROOT);
    let (call, _) = vm.envoy.take_call(KEYS_CLUSTER).expect("the refetch");
    let jwks = json!({"keys": [vm.key.jwk(Some("k1")), rotated.jwk(Some("k2"))]}).to_string();
    vm.answer(ROOT, call, 200, &jwks);
    assert!(vm.envoy.was_resumed(7), "the refetch brought its key");
    // k3 is not in the keys fetched since it started waiting: refused at once, not held
    // for another fetch.
    assert_eq!(status(vm.envoy.answer_for(8)), Some(401));
    assert_eq!(vm.held(), 0);
    assert!(vm.envoy.calls.is_empty());
}

#[test]
fn a_push_takes_the_cached_tokens_off_the_gauge() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.load_keys();
    vm.request(7, &vm.good_token(ISSUER));
    vm.tick(ROOT);
    assert_eq!(vm.envoy.metric("mesh_oauth.cached_tokens"), Some(1));
    assert!(vm.configure(
        2,
        config(vec![provider(json!({"audiences": ["orders", "more"]}))])
    ));
    vm.tick(2);
    assert_eq!(
        vm.envoy.metric("mesh_oauth.cached_tokens"),
        Some(0),
        "the new configuration starts with an empty cache"
    );
}

/// A hit re-checks only the claims that depend on the clock: a push must not let a token
/// admitted under the old configuration past checks the new one makes.
#[test]
fn a_push_decides_a_cached_token_by_the_new_configuration() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    let inline = |extra: Value| {
        let mut p = provider(json!({"jwks": vm.jwks(), "jwksUri": null}));
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let (orders, billing, alice_revoked) = (
        inline(json!({})),
        inline(json!({"audiences": ["billing"]})),
        inline(json!({"revoked": {"subjects": ["alice"]}})),
    );
    assert!(vm.configure(2, config(vec![orders.clone()])));
    let token = vm.good_token(ISSUER);
    vm.request(7, &token);
    vm.request(8, &token);
    assert!(vm.envoy.was_resumed(7) && vm.envoy.was_resumed(8));
    for (context, pushed) in [(9, billing), (10, alice_revoked)] {
        assert!(vm.configure(3, config(vec![orders.clone()])));
        vm.request(context - 2, &token);
        assert!(vm.configure(4, config(vec![pushed])));
        vm.request(context, &token);
        let refused = vm.envoy.answer_for(context).expect("refused");
        assert_eq!(refused.status, 401);
    }
}

#[test]
fn a_held_request_keeps_its_deadline_across_a_push() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.request(7, &vm.good_token(ISSUER));
    vm.tick(ROOT);
    vm.envoy.now += 1_000;
    let longer = provider(json!({"timeout": "10s", "audiences": ["orders", "more"]}));
    assert!(vm.configure(2, config(vec![longer])));
    vm.tick(2);
    assert_eq!(vm.held(), 1, "still waiting for the keys after the push");
    vm.envoy.now += 1_000;
    vm.tick(2);
    let refused = vm
        .envoy
        .answer_for(7)
        .expect("answered at the deadline it had");
    assert_eq!(refused.status, 503);
    // A request that arrives now waits for the new timeout.
    vm.request(8, &vm.good_token(ISSUER));
    vm.envoy.now += 9_999;
    vm.tick(2);
    assert!(vm.envoy.answer_for(8).is_none());
}

#[test]
fn report_mode_lets_a_refusal_through_and_says_what_it_would_have_been() {
    let mut vm = Vm::new(json!({"providers": [provider(json!({}))], "mode": "report",
                                "audit": {"allowedSampleRate": 0}}));
    vm.request(7, "not-a-token");
    assert!(vm.envoy.was_resumed(7));
    assert!(vm
        .envoy
        .logged("mesh-oauth: report mode: would refuse with 401 (malformed)"));
    vm.tick(ROOT);
    assert_eq!(
        vm.envoy.metric("mesh_oauth.none.would_deny.malformed"),
        Some(1)
    );
}

#[test]
fn a_held_request_is_decided_again_with_the_connection_it_came_on() {
    let rules = json!([{"match": {"notRemoteIpBlocks": ["10.0.0.0/8"]}, "deny": true}]);
    let mut vm = Vm::new(json!({"providers": [provider(json!({}))], "rules": rules}));
    let token = vm.good_token(ISSUER);
    let authorization = format!("Bearer {token}");
    let headers = [("authorization", authorization.as_str())];
    let peer = crate::peer::FixedPeer {
        source_address: Some("10.1.2.3:40000".into()),
        ..Default::default()
    };
    let request = Request {
        method: "GET",
        scheme: "https",
        path: "/orders",
        authority: "orders.example.com",
        headers: &headers,
        peer: &peer,
    };
    vm.event(|runtime, host, out| runtime.on_request(7, &request, host, out));
    assert_eq!(vm.held(), 1);
    vm.load_keys();
    assert!(vm.envoy.was_resumed(7), "{:?}", vm.envoy.answered);
    // The same request from outside 10.0.0.0/8 is refused by the first rule.
    let outside = crate::peer::FixedPeer {
        source_address: Some("192.0.2.1:40000".into()),
        ..Default::default()
    };
    let request = Request {
        peer: &outside,
        ..request
    };
    vm.event(|runtime, host, out| runtime.on_request(8, &request, host, out));
    assert_eq!(status(vm.envoy.answer_for(8)), Some(403));
}

#[test]
fn per_request_counts_reach_the_host_at_the_next_tick() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.load_keys();
    let token = vm.good_token(ISSUER);
    for context in 20..23 {
        vm.request(context, &token);
    }
    vm.request(23, "not-a-token");
    assert_eq!(vm.envoy.resumed.len(), 3);
    let allowed = "mesh_oauth.idp.allowed";
    assert_eq!(
        vm.envoy.metric(allowed),
        Some(0),
        "defined at first use, not yet counted"
    );
    vm.tick(ROOT);
    assert_eq!(vm.envoy.metric(allowed), Some(3));
    assert_eq!(vm.envoy.metric("mesh_oauth.none.denied.malformed"), Some(1));
    assert_eq!(vm.envoy.metric("mesh_oauth.cache.miss"), Some(1));
    assert_eq!(vm.envoy.metric("mesh_oauth.cache.hit"), Some(2));
    assert_eq!(vm.envoy.metric("mesh_oauth.cached_tokens"), Some(1));
    vm.tick(ROOT);
    assert_eq!(vm.envoy.metric(allowed), Some(3), "counted once");
}

#[test]
fn metrics_have_their_kind_whatever_their_name() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.request(7, &vm.good_token(ISSUER));
    vm.envoy.now += 5_000;
    vm.load_keys();
    vm.request(8, &vm.good_token(ISSUER));
    vm.envoy.now += 3_000;
    vm.tick(ROOT);
    let kind = |name: &str| vm.envoy.metrics.get(name).map(|(kind, _)| *kind);
    use MetricKind::{Counter, Gauge};
    for (name, expected) in [
        ("mesh_oauth.vm_starts.mesh_oauth", Counter),
        ("mesh_oauth.host_signatures", Gauge),
        ("mesh_oauth.held_requests", Gauge),
        ("mesh_oauth.cached_tokens", Gauge),
        ("mesh_oauth.idp.keys_loaded", Gauge),
        ("mesh_oauth.idp.keys_age_seconds", Gauge),
        ("mesh_oauth.idp.key_fetch.success", Counter),
        ("mesh_oauth.idp.allowed", Counter),
        ("mesh_oauth.idp.denied.keys_unavailable", Counter),
        ("mesh_oauth.cache.miss", Counter),
    ] {
        assert_eq!(kind(name), Some(expected), "{name}");
    }
    assert_eq!(vm.envoy.metric("mesh_oauth.vm_starts.mesh_oauth"), Some(1));
    assert_eq!(vm.envoy.metric("mesh_oauth.host_signatures"), Some(0));
    assert_eq!(vm.envoy.metric("mesh_oauth.idp.keys_age_seconds"), Some(3));
}

#[test]
fn metric_ids_survive_a_push() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.load_keys();
    vm.request(7, &vm.good_token(ISSUER));
    assert!(vm.configure(
        2,
        config(vec![provider(json!({"audiences": ["orders", "more"]}))])
    ));
    // The count pending at the push reaches the host under the id it was defined with.
    assert_eq!(vm.envoy.metric("mesh_oauth.idp.allowed"), Some(1));
    assert_eq!(
        vm.envoy.metric("mesh_oauth.vm_starts.mesh_oauth"),
        Some(1),
        "one VM start"
    );
}

#[test]
fn a_refused_push_leaves_the_running_state_alone() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.request(7, &vm.good_token(ISSUER));
    assert!(!vm.configure(2, json!({"providers": [{"issuer": 5}]})));
    assert!(vm.envoy.logged("mesh-oauth: invalid configuration: "));
    let bad_inline = provider(json!({"jwks": "{\"keys\": 1}", "jwksUri": null}));
    assert!(!vm.configure(2, config(vec![bad_inline])));
    assert!(vm.envoy.logged("invalid configuration: providers[0].jwks"));
    assert_eq!(vm.held(), 1, "the running state is as it was");
}

#[test]
fn audit_lines_log_every_refusal_and_sample_allowed_requests() {
    let inline = provider(json!({"jwks": "", "jwksUri": null}));
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    let jwks = vm.jwks();
    let mut inline = inline;
    inline["jwks"] = json!(jwks);
    assert!(vm.configure(
        ROOT,
        json!({"providers": [inline.clone()],
        "audit": {"allowedSampleRate": 0, "level": "info"}})
    ));
    vm.request(7, &vm.good_token(ISSUER));
    vm.request(8, "not-a-token");
    let audit: Vec<&(Level, String)> = vm
        .envoy
        .logs
        .iter()
        .filter(|(_, l)| l.starts_with('{'))
        .collect();
    assert_eq!(audit.len(), 1, "only the refusal: {audit:?}");
    assert_eq!(audit[0].0, Level::Info);
    assert!(vm.configure(
        ROOT,
        json!({"providers": [inline],
        "audit": {"allowedSampleRate": 1}})
    ));
    vm.request(9, &vm.good_token(ISSUER));
    let last = vm.envoy.logs.last().unwrap();
    assert_eq!(last.0, Level::Warn);
    assert!(
        last.1.starts_with('{') && last.1.contains("\"decision\":\"allow\""),
        "{last:?}"
    );
}

#[test]
fn a_refusal_names_the_realm_and_renders_for_grpc() {
    let mut vm = Vm::new(json!({"providers": [provider(json!({}))], "realm": "orders-api"}));
    vm.request(7, "not-a-token");
    let refused = vm.envoy.answer_for(7).unwrap();
    assert_eq!(refused.status, 401);
    assert!(header(refused, "www-authenticate").is_some_and(|v| v.contains("realm=\"orders-api\"")));
    let headers = [
        ("content-type", "application/grpc"),
        ("authorization", "Bearer x"),
    ];
    let request = Request {
        method: "POST",
        scheme: "https",
        path: "/orders.Orders/List",
        authority: "orders.example.com",
        headers: &headers,
        peer: &NoPeer,
    };
    vm.event(|runtime, host, out| runtime.on_request(8, &request, host, out));
    let refused = vm.envoy.answer_for(8).unwrap();
    assert_eq!(refused.grpc_status, Some(16), "UNAUTHENTICATED");
}

#[test]
fn a_client_that_leaves_frees_its_place_among_held_requests() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.request(7, &vm.good_token(ISSUER));
    assert_eq!(vm.held(), 1);
    vm.event(|runtime, _, out| runtime.request_done(7, out));
    assert_eq!(vm.held(), 0);
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(0));
    vm.load_keys();
    assert!(!vm.envoy.was_resumed(7) && vm.envoy.answer_for(7).is_none());
}

#[test]
fn response_edits_wait_for_their_requests_response() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    let cookie = HeaderEdit::Set("set-cookie".into(), "session=1".into());
    vm.runtime
        .as_mut()
        .unwrap()
        .edit_response(7, vec![cookie.clone()]);
    vm.runtime
        .as_mut()
        .unwrap()
        .edit_response(8, vec![cookie.clone()]);
    vm.event(|runtime, _, out| runtime.on_response_headers(9, out));
    assert!(vm.envoy.response_edits.is_empty());
    vm.event(|runtime, _, out| runtime.on_response_headers(7, out));
    assert_eq!(vm.envoy.response_edits, vec![(7, vec![cookie])]);
    vm.event(|runtime, _, out| runtime.request_done(8, out));
    vm.event(|runtime, _, out| runtime.on_response_headers(8, out));
    assert_eq!(
        vm.envoy.response_edits.len(),
        1,
        "forgotten with its request"
    );
}

#[test]
fn a_request_held_for_a_call_is_taken_when_it_answers_or_answered_at_its_deadline() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    let request = Request {
        method: "GET",
        scheme: "https",
        path: "/callback?code=x",
        authority: "app.example.com",
        headers: &[],
        peer: &NoPeer,
    };
    let expiry = Response {
        status: 503,
        headers: vec![("retry-after".into(), "1".into())],
        body: String::new(),
        grpc_status: None,
    };
    let now = vm.envoy.now;
    let runtime = vm.runtime.as_mut().unwrap();
    let mut out = Vec::new();
    let call = CallId(77);
    let other = CallId(78);
    assert!(runtime.hold_for_call(7, &request, call, now + 1_000, expiry.clone(), &mut out));
    assert!(runtime.hold_for_call(8, &request, other, now + 1_000, expiry, &mut out));
    let taken = runtime.take_held_for_call(call, &mut out);
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].context, 7);
    assert_eq!(taken[0].request.path, "/callback?code=x");
    vm.envoy.run(vm.runtime.as_mut().unwrap(), out);
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(1));
    vm.envoy.now += 999;
    vm.tick(ROOT);
    assert!(vm.envoy.answer_for(8).is_none());
    vm.envoy.now += 1;
    vm.tick(ROOT);
    assert_eq!(status(vm.envoy.answer_for(8)), Some(503));
    assert_eq!(vm.envoy.metric("mesh_oauth.held_requests"), Some(0));
}

#[test]
fn keys_another_vm_fetched_are_reported_as_loaded() {
    let mut fetching = Vm::new(config(vec![provider(json!({}))]));
    fetching.load_keys();
    assert_eq!(fetching.envoy.metric("mesh_oauth.idp.keys_loaded"), Some(1));

    let mut adopting = Vm::new(config(vec![provider(json!({}))]));
    let records = fetching.envoy.shared.0.borrow().clone();
    adopting.envoy.shared.0.replace(records);
    adopting.tick(ROOT);
    assert!(
        adopting.envoy.calls.is_empty(),
        "the keys came through shared data"
    );
    assert_eq!(adopting.envoy.metric("mesh_oauth.idp.keys_loaded"), Some(1));
}

#[path = "login_tests.rs"]
mod login;

#[path = "outbound_tests.rs"]
mod outbound;

/// Heap allocations made on this thread (the test's own), for the cached request's budget.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    fn count() {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    pub(super) fn allocations() -> usize {
        ALLOCATIONS.with(Cell::get)
    }
}

/// A client resending its cached token is the common request: its work in the core is kept
/// to a few allocations (each one is dlmalloc's work and fresh cache lines in the VM).
#[test]
fn a_cached_request_makes_few_allocations() {
    let mut vm = Vm::new(config(vec![provider(json!({}))]));
    vm.load_keys();
    let token = vm.good_token(ISSUER);
    // The first miss and the first hit define their counters: later requests only count.
    vm.request(7, &token);
    vm.request(8, &token);
    assert!(vm.envoy.was_resumed(8));
    let authorization = format!("Bearer {token}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("user-agent", "client/1.0"),
        ("accept", "*/*"),
    ];
    let request = Request {
        method: "GET",
        scheme: "https",
        path: "/orders/42",
        authority: "orders.example.com",
        headers: &headers,
        peer: &NoPeer,
    };
    let mut runtime = vm.runtime.take().unwrap();
    let mut out = Vec::with_capacity(8);
    let before = counting::allocations();
    runtime.on_request(9, &request, vm.envoy.host(), &mut out);
    let made = counting::allocations() - before;
    vm.envoy.run(&mut runtime, out);
    assert!(vm.envoy.was_resumed(9));
    // The token's location (two strings), the token header's removal and the edit list:
    // 4 when this test was written.
    assert!(made <= 4, "{made} allocations on a cached request");
}
