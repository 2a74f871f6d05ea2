//! The outbound flow driven through the runtime as the shell drives it, against the fake Envoy
//! of the runtime's tests.

use super::*;
use std::ops::{Deref, DerefMut};

const IDP_CLUSTER: &str = "outbound|443||idp.example.com";
/// Set once for the process: the runtime reads secrets from the environment.
const SECRET_ENV: &str = "MESH_OAUTH_RUNTIME_TEST_OUTBOUND_SECRET";
const SECRET: &str = "runtime-test-secret";

/// The runtime tests' VM, on a workload's outbound side: after every event, no request was
/// edited in place (the outbound side resumes with its edits).
struct Sidecar(Vm);

impl Deref for Sidecar {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.0
    }
}

impl DerefMut for Sidecar {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.0
    }
}

fn outbound_config(entries: Value) -> Value {
    static ENV: std::sync::Once = std::sync::Once::new();
    // A name no other test reads; set before any runtime parses a configuration.
    ENV.call_once(|| std::env::set_var(SECRET_ENV, SECRET));
    json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "timeout": "2s"}],
        "outbound": entries,
        "audit": {"allowedSampleRate": 1},
    })
}

fn cc_entry(extra: Value) -> Value {
    let mut entry = json!({
        "name": "payments",
        "match": {"hosts": ["payments.internal"]},
        "clientCredentials": {"provider": "idp", "clientId": "orders", "clientSecretEnv": SECRET_ENV,
                              "resource": "https://payments.example.com"},
    });
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!([entry])
}

impl Sidecar {
    fn new(config: Value) -> Sidecar {
        Sidecar(Vm::new(config))
    }

    /// A push; the configuration must be accepted.
    fn configure(&mut self, root: u32, config: Value) {
        assert!(
            self.0.configure(root, config),
            "refused: {:?}",
            self.envoy.logs
        );
    }

    fn event(&mut self, run: impl FnOnce(&mut Runtime, Host<'_>, &mut Effects)) {
        self.0.event(run);
        assert!(
            self.envoy.request_edits.is_empty(),
            "the outbound side edits no request in place"
        );
    }

    fn tick(&mut self) {
        self.event(|runtime, host, out| runtime.on_tick(ROOT, host, out));
    }

    fn answer(&mut self, token: u32, status: u32, body: &str) {
        self.0.answer(ROOT, token, status, body);
        assert!(self.envoy.request_edits.is_empty());
    }

    /// The first tick's discovery, answered: the token endpoint is known.
    fn discover(&mut self) {
        self.tick();
        let (token, _) = self
            .envoy
            .take_call_to("/.well-known/openid-configuration")
            .expect("discovery");
        let doc = json!({"issuer": ISSUER, "jwks_uri": "https://idp.example.com/jwks",
                         "token_endpoint": "https://idp.example.com/token"});
        self.answer(token, 200, &doc.to_string());
    }

    fn request(&mut self, context: u32, host: &str, headers: &[(&str, &str)]) {
        let request = Request {
            method: "POST",
            scheme: "http",
            path: "/pay",
            authority: host,
            headers,
            peer: &NoPeer,
        };
        self.event(|runtime, host, out| runtime.on_request(context, &request, host, out));
    }
}

fn token_answer(token: &str) -> String {
    json!({"access_token": token, "token_type": "Bearer", "expires_in": 300}).to_string()
}

fn bearer(token: &str) -> Vec<HeaderEdit> {
    vec![HeaderEdit::Set(
        "authorization".into(),
        format!("Bearer {token}"),
    )]
}

#[test]
fn a_request_waits_for_its_token_which_is_then_attached_and_cached() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.discover();
    vm.request(
        7,
        "payments.internal",
        &[("authorization", "Bearer app-token")],
    );
    assert_eq!(vm.held(), 1, "held for the token");
    assert!(vm.envoy.resumed.is_empty());
    vm.tick();
    let (token, call) = vm
        .envoy
        .take_call_to("/token")
        .expect("a token call from the root");
    assert_eq!(call.cluster, IDP_CLUSTER);
    assert!(call.headers.contains(&(":method".into(), "POST".into())));
    assert!(call
        .headers
        .iter()
        .any(|(n, v)| n == "authorization" && v.starts_with("Basic ")));
    let body = String::from_utf8(call.body.clone().unwrap()).unwrap();
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(
        body.contains("resource=https%3A%2F%2Fpayments.example.com"),
        "{body}"
    );
    vm.answer(token, 200, &token_answer("cc-1"));
    assert_eq!(vm.envoy.edits_of(7), Some(&bearer("cc-1")));
    assert_eq!(vm.held(), 0);

    vm.request(8, "payments.internal", &[]);
    assert_eq!(
        vm.envoy.edits_of(8),
        Some(&bearer("cc-1")),
        "from the cache at once"
    );
    vm.tick();
    assert!(vm.envoy.take_call_to("/token").is_none());
    assert_eq!(
        vm.envoy
            .count("mesh_oauth.outbound.payments.token_requests"),
        1
    );
    assert_eq!(vm.envoy.count("mesh_oauth.outbound.payments.attached"), 2);
    assert_eq!(vm.envoy.count("mesh_oauth.outbound.payments.cache_hit"), 1);
    let audits: Vec<&String> = vm
        .envoy
        .log_lines()
        .filter(|l| l.contains("\"decision\":\"outbound\""))
        .collect();
    assert_eq!(audits.len(), 2, "{:?}", vm.envoy.logs);
    assert!(
        audits[0].contains("\"token\":\"fetched\"") && audits[1].contains("\"token\":\"cached\"")
    );
    for line in vm.envoy.log_lines() {
        assert!(
            !line.contains("cc-1") && !line.contains(SECRET) && !line.contains("Basic"),
            "{line}"
        );
    }
}

#[test]
fn concurrent_requests_make_one_token_call() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.discover();
    for context in 10..30 {
        vm.request(context, "payments.internal", &[]);
    }
    assert_eq!(vm.held(), 20);
    vm.tick();
    let (token, _) = vm.envoy.take_call_to("/token").unwrap();
    assert!(vm.envoy.take_call_to("/token").is_none(), "one call");
    vm.answer(token, 200, &token_answer("cc-1"));
    for context in 10..30 {
        assert_eq!(
            vm.envoy.edits_of(context),
            Some(&bearer("cc-1")),
            "{context}"
        );
    }
    assert_eq!(vm.held(), 0);
}

#[test]
fn a_failed_call_answers_its_waiting_requests_503_with_retry_after() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.discover();
    vm.request(7, "payments.internal", &[]);
    vm.request(8, "payments.internal", &[]);
    vm.tick();
    let (token, _) = vm.envoy.take_call_to("/token").unwrap();
    vm.answer(token, 500, "{}");
    for context in [7, 8] {
        let refused = vm.envoy.answer_for(context).expect("answered");
        assert_eq!(refused.status, 503);
        assert!(refused.headers.iter().any(|(n, _)| n == "retry-after"));
        assert!(refused.body.contains("token_endpoint_status"));
    }
    assert_eq!(
        vm.envoy
            .count("mesh_oauth.outbound.payments.refused.token_endpoint_status"),
        2
    );
    assert!(vm
        .envoy
        .log_lines()
        .any(|l| l.contains("outbound \"payments\": no token")));

    let mut lenient = Sidecar::new(outbound_config(cc_entry(
        json!({"onFailure": "passThrough"}),
    )));
    lenient.discover();
    lenient.envoy.refuse_dispatch = true;
    lenient.request(7, "payments.internal", &[("authorization", "Bearer app")]);
    lenient.tick();
    assert_eq!(
        lenient.envoy.edits_of(7),
        Some(&Vec::new()),
        "on as the app sent it"
    );
}

#[test]
fn requests_no_entry_matches_go_on_untouched_without_any_token() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.request(7, "elsewhere.internal", &[]);
    assert_eq!(vm.envoy.edits_of(7), Some(&Vec::new()));
    assert!(vm.envoy.answered.is_empty());
}

#[test]
fn a_configuration_push_keeps_the_cached_token() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.discover();
    vm.request(7, "payments.internal", &[]);
    vm.tick();
    let (token, _) = vm.envoy.take_call_to("/token").unwrap();
    vm.answer(token, 200, &token_answer("cc-1"));
    vm.configure(2, outbound_config(cc_entry(json!({}))));
    vm.request(8, "payments.internal", &[]);
    assert_eq!(vm.envoy.edits_of(8), Some(&bearer("cc-1")));
    vm.tick();
    assert!(vm.envoy.take_call_to("/token").is_none());
}

#[test]
fn an_exchange_without_a_subject_is_refused_403() {
    let entry = json!([{
        "name": "agent",
        "match": {"hosts": ["tools.internal"]},
        "tokenExchange": {"provider": "idp", "clientId": "agent", "clientSecretEnv": SECRET_ENV,
                          "audience": "tools"},
    }]);
    let mut vm = Sidecar::new(outbound_config(entry));
    vm.discover();
    vm.request(7, "tools.internal", &[]);
    let refused = vm.envoy.answer_for(7).expect("answered");
    assert_eq!(refused.status, 403);
    assert!(refused.body.contains("missing_subject"));
    assert_eq!(
        vm.envoy
            .count("mesh_oauth.outbound.agent.refused.missing_subject"),
        1
    );
    vm.tick();
    assert!(
        vm.envoy.take_call_to("/token").is_none(),
        "no call for a refused request"
    );
}

#[test]
fn a_push_without_outbound_entries_answers_the_requests_waiting_for_a_token() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.discover();
    vm.request(7, "payments.internal", &[]);
    assert_eq!(vm.held(), 1);
    vm.configure(
        2,
        json!({"providers": [{"name": "idp", "issuer": ISSUER}], "unmatched": "anonymous"}),
    );
    vm.event(|runtime, host, out| runtime.on_tick(2, host, out));
    let refused = vm.envoy.answer_for(7).expect("answered");
    assert_eq!(refused.status, 503);
    assert!(refused.body.contains("token_unavailable"));
    assert_eq!(vm.held(), 0);
}

#[test]
fn a_failed_renewal_is_counted_and_logged_with_its_reason_and_the_token_goes_on() {
    let mut vm = Sidecar::new(outbound_config(cc_entry(json!({}))));
    vm.discover();
    vm.request(7, "payments.internal", &[]);
    vm.tick();
    let (token, _) = vm.envoy.take_call_to("/token").unwrap();
    vm.answer(token, 200, &token_answer("cc-1"));
    // 300 s issued, 270 s usable: past 90 % of that a request starts the renewal.
    vm.envoy.now += 250_000;
    vm.request(8, "payments.internal", &[]);
    assert_eq!(vm.envoy.edits_of(8), Some(&bearer("cc-1")));
    vm.tick();
    let (renewal, _) = vm.envoy.take_call_to("/token").expect("a renewal");
    assert_eq!(
        vm.envoy
            .count("mesh_oauth.outbound.payments.renewal_failed"),
        0
    );
    vm.answer(renewal, 500, "{\"error\":\"server_error\"}");
    assert_eq!(
        vm.envoy.metrics["mesh_oauth.outbound.payments.renewal_failed"],
        (MetricKind::Counter, 1)
    );
    assert!(vm.envoy.log_lines().any(|l| l
        == "mesh-oauth: outbound \"payments\": renewal failed: token_endpoint_status; the cached token is used until it expires"));
    // Not a refusal: no request was answered for it, and the next one still gets the token.
    assert_eq!(
        vm.envoy
            .count("mesh_oauth.outbound.payments.refused.token_endpoint_status"),
        0
    );
    vm.request(9, "payments.internal", &[]);
    assert_eq!(vm.envoy.edits_of(9), Some(&bearer("cc-1")));
    for line in vm.envoy.log_lines() {
        assert!(!line.contains("cc-1") && !line.contains(SECRET), "{line}");
    }
}
