use super::*;
use crate::keystore::tests::Shared;
use crate::outbound::refusal::Refusal;
use crate::outbound::testing::*;
use crate::peer::NoPeer;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

const NOW: u64 = 1_700_000_000_000;

fn endpoint(_: usize) -> Option<HttpTarget> {
    Some(HttpTarget {
        url: "https://idp.example.com/token".into(),
        cluster: "outbound|443||idp.example.com".into(),
        authority: "idp.example.com".into(),
        path: "/token".into(),
    })
}

fn no_endpoint(_: usize) -> Option<HttpTarget> {
    None
}

fn flow(entries: Value) -> Flow {
    let (config, outbound) = configure(entries);
    Flow::new(&config, &outbound, 64, None)
}

fn cx(store: &Shared, now_ms: u64) -> Context<'_, Shared> {
    Context {
        store,
        now_ms,
        token_endpoint: &endpoint,
        jti: &|| [9; 16],
        jitter: 0.5,
    }
}

fn jwt(claims: Value) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

struct Req {
    host: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    /// `None`: it arrives when asked about.
    arrived_ms: Option<u64>,
}

fn req(host: &'static str) -> Req {
    Req {
        host,
        path: "/pay",
        headers: vec![],
        arrived_ms: None,
    }
}

fn with_bearer(mut r: Req, token: &str) -> Req {
    r.headers.push(("authorization", format!("Bearer {token}")));
    r
}

fn ask(flow: &mut Flow, store: &Shared, r: &Req, now_ms: u64) -> Step {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let request = OutboundRequest {
        method: "POST",
        path: r.path,
        authority: r.host,
        headers: &headers,
        peer: &NoPeer,
        arrived_ms: r.arrived_ms.unwrap_or(now_ms),
    };
    flow.on_request(&request, &cx(store, now_ms))
}

fn ok(token: &str, expires_in: u64) -> Vec<u8> {
    json!({"access_token": token, "token_type": "Bearer", "expires_in": expires_in})
        .to_string()
        .into_bytes()
}

fn exchanged(token: &str, expires_in: u64, kind: &str, token_type: &str) -> Vec<u8> {
    json!({"access_token": token, "token_type": token_type, "expires_in": expires_in,
           "issued_token_type": kind})
    .to_string()
    .into_bytes()
}

fn answer(flow: &mut Flow, store: &Shared, call: Call, status: u32, body: &[u8], now: u64) -> Step {
    flow.on_token_answer(
        call.pending,
        &TokenAnswer {
            status: Some(status),
            body,
        },
        &cx(store, now),
    )
}

fn expect_call(step: Step) -> Call {
    match step {
        Step::Call(call) => call,
        other => panic!("expected a call, got {}", describe(&other)),
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Untouched => "untouched".into(),
        Step::Continue { edits, audit, .. } => format!("continue {edits:?} {audit:?}"),
        Step::Respond { status, reason, .. } => format!("respond {status} {reason}"),
        Step::Call(call) => format!("{call:?}"),
        Step::Wait { .. } => "wait".into(),
        Step::Done => "done".into(),
        Step::RenewalFailed { reason, .. } => format!("renewal failed {reason}"),
    }
}

fn attached(step: &Step) -> (Vec<HeaderEdit>, Source) {
    match step {
        Step::Continue { edits, audit, .. } => (edits.clone(), audit.source),
        other => panic!("expected continue, got {}", describe(other)),
    }
}

fn bearer_edit(token: &str) -> Vec<HeaderEdit> {
    vec![HeaderEdit::Set(
        "authorization".into(),
        format!("Bearer {token}"),
    )]
}

fn cc_flow() -> Flow {
    flow(entry(
        "clientCredentials",
        json!({"audience": "payments"}),
        json!({}),
    ))
}

#[test]
fn a_request_no_entry_matches_is_untouched() {
    let store = Shared::default();
    let mut f = cc_flow();
    assert!(matches!(
        ask(&mut f, &store, &req("other.internal"), NOW),
        Step::Untouched
    ));
    let mut odd = req("payments.internal");
    odd.path = "/a/%2F";
    assert!(matches!(ask(&mut f, &store, &odd, NOW), Step::Untouched));
    assert!(store.0.borrow().is_empty(), "nothing looked up");
}

#[test]
fn the_first_matching_entry_applies() {
    let mut entries = entry(
        "clientCredentials",
        json!({}),
        json!({"match": {"hosts": ["*.internal"], "paths": ["/admin/*"]}}),
    );
    let second = entry(
        "clientCredentials",
        json!({"clientId": "second"}),
        json!({"name": "second"}),
    );
    entries.as_array_mut().unwrap().push(second[0].clone());
    let f = flow(entries);
    let headers: Vec<(&str, &str)> = vec![];
    let selected = |path: &str| {
        f.select(&OutboundRequest {
            method: "GET",
            path,
            authority: "payments.internal:8080",
            headers: &headers,
            peer: &NoPeer,
            arrived_ms: NOW,
        })
    };
    assert_eq!(selected("/admin/x"), Some(0));
    assert_eq!(selected("/pay"), Some(1));
    assert_eq!(
        selected("/public/../admin/x"),
        Some(0),
        "matched after normalisation"
    );
}

#[test]
fn client_credentials_are_fetched_once_then_attached_from_the_cache() {
    let store = Shared::default();
    let mut f = cc_flow();
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    assert_eq!(call.target.cluster, "outbound|443||idp.example.com");
    assert_eq!(call.target.path, "/token");
    assert_eq!(call.timeout_ms, 5_000);
    let pairs = form_pairs(&call.body);
    assert_eq!(form_value(&pairs, "grant_type"), ["client_credentials"]);
    assert_eq!(form_value(&pairs, "audience"), ["payments"]);
    assert!(call
        .headers
        .iter()
        .any(|(n, v)| *n == "authorization" && v.starts_with("Basic ")));
    assert!(!format!("{call:?}").contains("Basic"));
    let step = answer(&mut f, &store, call, 200, &ok("cc-1", 300), NOW + 50);
    assert_eq!(attached(&step), (bearer_edit("cc-1"), Source::Fetched));
    let again = ask(&mut f, &store, &req("payments.internal"), NOW + 1_000);
    assert_eq!(attached(&again), (bearer_edit("cc-1"), Source::Cached));
}

#[test]
fn one_token_request_for_concurrent_requests_on_four_workers() {
    let store = Shared::default();
    let mut workers: Vec<Flow> = (0..4).map(|_| cc_flow()).collect();
    let mut calls = Vec::new();
    let mut waiting = 0;
    for i in 0..40u64 {
        let worker = &mut workers[(i % 4) as usize];
        match ask(worker, &store, &req("payments.internal"), NOW + i) {
            Step::Call(call) => calls.push(((i % 4) as usize, call)),
            Step::Wait { .. } => waiting += 1,
            other => panic!("{}", describe(&other)),
        }
    }
    assert_eq!((calls.len(), waiting), (1, 39));
    let (owner, call) = calls.pop().unwrap();
    answer(
        &mut workers[owner],
        &store,
        call,
        200,
        &ok("cc-1", 300),
        NOW + 100,
    );
    for worker in workers.iter_mut() {
        let step = ask(worker, &store, &req("payments.internal"), NOW + 101);
        assert_eq!(attached(&step).0, bearer_edit("cc-1"));
    }
}

#[test]
fn a_failing_token_endpoint_is_503_with_retry_after_or_passes_through() {
    let store = Shared::default();
    let mut f = cc_flow();
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    let step = answer(&mut f, &store, call, 500, b"oops", NOW + 10);
    let Step::Respond {
        status,
        retry_after_seconds,
        reason,
        ..
    } = step
    else {
        panic!("{}", describe(&step))
    };
    assert_eq!(
        (status, retry_after_seconds, reason),
        (503, Some(1), Refusal::TokenEndpointStatus)
    );
    // During the backoff, no new call: 503 at once.
    let step = ask(&mut f, &store, &req("payments.internal"), NOW + 20);
    assert!(matches!(
        step,
        Step::Respond {
            status: 503,
            reason: Refusal::TokenEndpointFailing,
            ..
        }
    ));

    let store = Shared::default();
    let mut lenient = flow(entry(
        "clientCredentials",
        json!({}),
        json!({"onFailure": "passThrough"}),
    ));
    let call = expect_call(ask(&mut lenient, &store, &req("payments.internal"), NOW));
    let garbage = answer(&mut lenient, &store, call, 200, b"<html>", NOW + 10);
    assert_eq!(attached(&garbage), (vec![], Source::PassedThrough));
}

#[test]
fn a_token_is_kept_through_a_failed_renewal_and_dropped_once_expired() {
    let store = Shared::default();
    let mut f = cc_flow();
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    answer(&mut f, &store, call, 200, &ok("cc-1", 100), NOW);
    // Usable 90 s; renewal due from 85.5 s at this jitter.
    let step = ask(&mut f, &store, &req("payments.internal"), NOW + 86_000);
    let Step::Continue {
        edits,
        renewal: Some(renewal),
        ..
    } = step
    else {
        panic!("{}", describe(&step))
    };
    assert_eq!(edits, bearer_edit("cc-1"));
    // Shown (the runtime counts and logs it), with the reason; nothing to resume.
    assert!(matches!(
        answer(&mut f, &store, renewal, 503, b"", NOW + 86_100),
        Step::RenewalFailed {
            entry: 0,
            reason: Refusal::TokenEndpointStatus
        }
    ));
    let still = ask(&mut f, &store, &req("payments.internal"), NOW + 89_000);
    assert_eq!(attached(&still).0, bearer_edit("cc-1"));
    let expired = ask(&mut f, &store, &req("payments.internal"), NOW + 90_001);
    assert!(
        matches!(
            expired,
            Step::Call(_) | Step::Wait { .. } | Step::Respond { status: 503, .. }
        ),
        "{}",
        describe(&expired)
    );
}

#[test]
fn a_renewal_replaces_the_token_for_every_request() {
    let store = Shared::default();
    let mut f = cc_flow();
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    answer(&mut f, &store, call, 200, &ok("cc-1", 100), NOW);
    let Step::Continue {
        renewal: Some(renewal),
        ..
    } = ask(&mut f, &store, &req("payments.internal"), NOW + 86_000)
    else {
        panic!()
    };
    assert!(matches!(
        answer(&mut f, &store, renewal, 200, &ok("cc-2", 100), NOW + 86_100),
        Step::Done
    ));
    let step = ask(&mut f, &store, &req("payments.internal"), NOW + 86_200);
    assert_eq!(attached(&step), (bearer_edit("cc-2"), Source::Cached));
}

fn exchange_flow(extra_client: Value, extra: Value) -> Flow {
    flow(entry(
        "tokenExchange",
        {
            let mut client = json!({"audience": "payments", "scopes": ["pay:read"]});
            client
                .as_object_mut()
                .unwrap()
                .extend(extra_client.as_object().unwrap().clone());
            client
        },
        extra,
    ))
}

#[test]
fn a_subject_that_is_missing_expired_or_not_for_this_actor_is_refused_before_any_call() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({}), json!({}));
    let cases = [
        (req("payments.internal"), "missing_subject"),
        (
            with_bearer(
                req("payments.internal"),
                &jwt(json!({"sub": "alice", "exp": NOW / 1000 - 1})),
            ),
            "subject_expired",
        ),
        (
            with_bearer(
                req("payments.internal"),
                &jwt(json!({"sub": "alice", "exp": NOW / 1000 + 60, "may_act": {"sub": "other"}})),
            ),
            "may_act",
        ),
    ];
    for (request, expected) in cases {
        let step = ask(&mut f, &store, &request, NOW);
        assert!(
            matches!(step, Step::Respond { status: 403, reason, retry_after_seconds: None, .. } if reason.name() == expected),
            "{}",
            describe(&step)
        );
    }
    assert!(store.0.borrow().is_empty(), "no token was even looked up");
}

#[test]
fn a_missing_subject_may_fall_back_to_the_workloads_own_token() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({"missingSubject": "clientCredentials"}), json!({}));
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    let pairs = form_pairs(&call.body);
    assert_eq!(form_value(&pairs, "grant_type"), ["client_credentials"]);
    assert_eq!(form_value(&pairs, "audience"), ["payments"]);
}

#[test]
fn an_exchange_with_an_actor_fetches_the_actor_token_first() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({"actor": "clientCredentials"}), json!({}));
    let user = jwt(json!({"sub": "alice", "exp": NOW / 1000 + 600, "may_act": {"sub": "orders"}}));
    let request = with_bearer(req("payments.internal"), &user);
    let actor_call = expect_call(ask(&mut f, &store, &request, NOW));
    let pairs = form_pairs(&actor_call.body);
    assert_eq!(
        pairs,
        vec![("grant_type".to_owned(), "client_credentials".to_owned())]
    );
    let exchange_call = expect_call(answer(
        &mut f,
        &store,
        actor_call,
        200,
        &ok("agent-tok", 600),
        NOW + 10,
    ));
    let pairs = form_pairs(&exchange_call.body);
    assert_eq!(form_value(&pairs, "subject_token"), [user.as_str()]);
    assert_eq!(form_value(&pairs, "actor_token"), ["agent-tok"]);
    assert_eq!(form_value(&pairs, "audience"), ["payments"]);
    assert_eq!(form_value(&pairs, "scope"), ["pay:read"]);
    assert_eq!(
        form_value(&pairs, "requested_token_type"),
        [ACCESS_TOKEN_TYPE]
    );
    let step = answer(
        &mut f,
        &store,
        exchange_call,
        200,
        &exchanged("narrow-1", 300, ACCESS_TOKEN_TYPE, "Bearer"),
        NOW + 20,
    );
    let Step::Continue { edits, audit, .. } = step else {
        panic!("{}", describe(&step))
    };
    assert_eq!(edits, bearer_edit("narrow-1"));
    assert_eq!(audit.subject.as_deref(), Some("alice"));
    assert_eq!(audit.actor.as_deref(), Some("orders"));
    assert_eq!(audit.destination, "payments.internal");
    assert_eq!(audit.source, Source::Fetched);
    // Another user's token is another exchange; the actor token is reused.
    let bob = jwt(json!({"sub": "bob", "exp": NOW / 1000 + 600}));
    let call = expect_call(ask(
        &mut f,
        &store,
        &with_bearer(req("payments.internal"), &bob),
        NOW + 30,
    ));
    assert_eq!(
        form_value(&form_pairs(&call.body), "actor_token"),
        ["agent-tok"]
    );
    // Alice again: from the cache.
    let again = ask(&mut f, &store, &request, NOW + 40);
    assert_eq!(attached(&again), (bearer_edit("narrow-1"), Source::Cached));
}

/// A renewal whose actor token cannot be had fails visibly: as the actor call's answer
/// (`RenewalFailed`), or, while that failure backs off, on the request that found the renewal
/// due (`renewal_failed`); the still-valid exchanged token goes on either way.
#[test]
fn a_renewal_without_its_actor_token_is_reported_as_failed() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({"actor": "clientCredentials"}), json!({}));
    let user = jwt(json!({"sub": "alice", "exp": NOW / 1000 + 600, "may_act": {"sub": "orders"}}));
    let request = with_bearer(req("payments.internal"), &user);
    let actor_call = expect_call(ask(&mut f, &store, &request, NOW));
    // The actor token lives 10 s, the exchanged one 100 s (renewal due from 85.5 s).
    let exchange_call = expect_call(answer(
        &mut f,
        &store,
        actor_call,
        200,
        &ok("agent-tok", 10),
        NOW,
    ));
    let exchanged_token = exchanged("narrow-1", 100, ACCESS_TOKEN_TYPE, "Bearer");
    answer(&mut f, &store, exchange_call, 200, &exchanged_token, NOW);
    let step = ask(&mut f, &store, &request, NOW + 86_000);
    let Step::Continue {
        edits,
        renewal: Some(renewal),
        renewal_failed: None,
        ..
    } = step
    else {
        panic!("{}", describe(&step))
    };
    assert_eq!(edits, bearer_edit("narrow-1"));
    assert_eq!(
        form_pairs(&renewal.body),
        vec![("grant_type".to_owned(), "client_credentials".to_owned())],
        "the expired actor token first"
    );
    let failed = answer(&mut f, &store, renewal, 500, b"{}", NOW + 86_100);
    assert!(
        matches!(
            failed,
            Step::RenewalFailed {
                entry: 0,
                reason: Refusal::TokenEndpointStatus
            }
        ),
        "{}",
        describe(&failed)
    );
    let step = ask(&mut f, &store, &request, NOW + 86_200);
    let Step::Continue {
        edits,
        renewal: None,
        renewal_failed: Some(Refusal::ActorToken),
        ..
    } = step
    else {
        panic!("{}", describe(&step))
    };
    assert_eq!(edits, bearer_edit("narrow-1"));
}

#[test]
fn an_exchanged_token_never_outlives_its_subject() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({}), json!({}));
    let user = jwt(json!({"sub": "alice", "exp": NOW / 1000 + 20}));
    let request = with_bearer(req("payments.internal"), &user);
    let call = expect_call(ask(&mut f, &store, &request, NOW));
    answer(
        &mut f,
        &store,
        call,
        200,
        &exchanged("narrow-1", 3600, ACCESS_TOKEN_TYPE, "Bearer"),
        NOW,
    );
    // Renewal is due from 15.3 s; this one fails, and the token is still attached.
    let step = ask(&mut f, &store, &request, NOW + 17_000);
    let Step::Continue {
        edits,
        renewal: Some(renewal),
        ..
    } = step
    else {
        panic!("{}", describe(&step))
    };
    assert_eq!(edits, bearer_edit("narrow-1"));
    answer(&mut f, &store, renewal, 500, b"", NOW + 17_000);
    // 20 s of subject life, a tenth off: gone at 18 s, whatever expires_in said.
    let late = ask(&mut f, &store, &request, NOW + 18_500);
    assert!(matches!(late, Step::Call(_)), "{}", describe(&late));
    let expired = ask(&mut f, &store, &request, NOW + 20_000);
    assert!(matches!(
        expired,
        Step::Respond {
            status: 403,
            reason: Refusal::SubjectExpired,
            ..
        }
    ));
}

#[test]
fn a_transaction_token_goes_in_its_own_header_and_the_subject_stays_behind() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({}), json!({"header": "txn-token"}));
    let user = jwt(json!({"sub": "alice"}));
    let call = expect_call(ask(
        &mut f,
        &store,
        &with_bearer(req("payments.internal"), &user),
        NOW,
    ));
    assert_eq!(
        form_value(&form_pairs(&call.body), "requested_token_type"),
        [TXN_TOKEN_TYPE]
    );
    let step = answer(
        &mut f,
        &store,
        call,
        200,
        &exchanged("txn-1", 60, TXN_TOKEN_TYPE, "N_A"),
        NOW,
    );
    assert_eq!(
        attached(&step).0,
        vec![
            HeaderEdit::Set("txn-token".into(), "txn-1".into()),
            HeaderEdit::Remove("authorization".into()),
        ]
    );
}

#[test]
fn waiting_for_discovery_or_another_worker_ends_in_503_after_the_timeout() {
    let store = Shared::default();
    let mut f = cc_flow();
    let undiscovered = |now| Context {
        store: &store,
        now_ms: now,
        token_endpoint: &no_endpoint,
        jti: &|| [0; 16],
        jitter: 0.5,
    };
    let headers: Vec<(&str, &str)> = vec![];
    let request = OutboundRequest {
        method: "GET",
        path: "/",
        authority: "payments.internal",
        headers: &headers,
        peer: &NoPeer,
        arrived_ms: NOW,
    };
    let Step::Wait { until_ms, .. } = f.on_request(&request, &undiscovered(NOW)) else {
        panic!()
    };
    assert!(until_ms > NOW && until_ms <= NOW + 6_000);
    let late = f.on_request(&request, &undiscovered(NOW + 6_001));
    assert!(
        matches!(
            late,
            Step::Respond {
                status: 503,
                reason: Refusal::TokenEndpointUnknown,
                ..
            }
        ),
        "{}",
        describe(&late)
    );

    // Another worker holds the call and never answers.
    let store = Shared::default();
    let mut owner = cc_flow();
    let mut other = cc_flow();
    let _lost = expect_call(ask(&mut owner, &store, &req("payments.internal"), NOW));
    assert!(matches!(
        ask(&mut other, &store, &req("payments.internal"), NOW + 10),
        Step::Wait { .. }
    ));
    let mut held = req("payments.internal");
    held.arrived_ms = Some(NOW - 2_000);
    assert!(matches!(
        ask(&mut other, &store, &held, NOW + 3_999),
        Step::Wait { .. }
    ));
    let late = ask(&mut other, &store, &held, NOW + 4_000);
    assert!(
        matches!(
            late,
            Step::Respond {
                status: 503,
                reason: Refusal::TokenUnavailable,
                ..
            }
        ),
        "{}",
        describe(&late)
    );
    // Once the silent worker's lease ends, a new request makes the call itself.
    assert!(matches!(
        ask(&mut other, &store, &req("payments.internal"), NOW + 6_000),
        Step::Call(_)
    ));
}

#[test]
fn a_configuration_push_keeps_the_cached_tokens() {
    let store = Shared::default();
    let mut f = cc_flow();
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    answer(&mut f, &store, call, 200, &ok("cc-1", 300), NOW);
    let (config, outbound) = configure(entry(
        "clientCredentials",
        json!({"audience": "payments"}),
        json!({}),
    ));
    let mut pushed = Flow::new(&config, &outbound, 64, Some(f));
    let step = ask(&mut pushed, &store, &req("payments.internal"), NOW + 1_000);
    assert_eq!(attached(&step), (bearer_edit("cc-1"), Source::Cached));
    // A changed entry (another audience) is another token.
    let mut changed = flow(entry(
        "clientCredentials",
        json!({"audience": "ledger"}),
        json!({}),
    ));
    assert!(matches!(
        ask(&mut changed, &store, &req("payments.internal"), NOW + 1_000),
        Step::Call(_)
    ));
}

#[test]
fn private_key_jwt_calls_carry_a_signed_assertion() {
    let store = Shared::default();
    let mut f = flow(entry(
        "clientCredentials",
        json!({"clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "EC_KEY"}),
        json!({}),
    ));
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    let pairs = form_pairs(&call.body);
    let assertion = form_value(&pairs, "client_assertion")[0];
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(assertion.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], ISSUER);
    assert_eq!(claims["jti"], "09".repeat(16));
    assert_eq!(claims["iat"], NOW / 1000);
}

#[test]
fn an_assertion_for_the_token_endpoint_names_the_url_the_call_goes_to() {
    let store = Shared::default();
    let mut f = flow(entry(
        "clientCredentials",
        json!({"clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "EC_KEY",
               "assertionAudience": "tokenEndpoint"}),
        json!({}),
    ));
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    let pairs = form_pairs(&call.body);
    let assertion = form_value(&pairs, "client_assertion")[0];
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(assertion.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], call.target.url);
    assert_eq!(claims["aud"], "https://idp.example.com/token");
}

#[test]
fn a_push_that_changes_the_entry_never_attaches_the_old_entrys_token() {
    let store = Shared::default();
    let mut f = cc_flow();
    let call = expect_call(ask(&mut f, &store, &req("payments.internal"), NOW));
    answer(&mut f, &store, call, 200, &ok("cc-1", 300), NOW);
    let (config, outbound) = configure(entry(
        "clientCredentials",
        json!({"audience": "ledger"}),
        json!({}),
    ));
    let mut pushed = Flow::new(&config, &outbound, 64, Some(f));
    let call = expect_call(ask(
        &mut pushed,
        &store,
        &req("payments.internal"),
        NOW + 1_000,
    ));
    assert_eq!(form_value(&form_pairs(&call.body), "audience"), ["ledger"]);
    let step = answer(
        &mut pushed,
        &store,
        call,
        200,
        &ok("cc-2", 300),
        NOW + 1_100,
    );
    assert_eq!(attached(&step), (bearer_edit("cc-2"), Source::Fetched));
    let again = ask(&mut pushed, &store, &req("payments.internal"), NOW + 2_000);
    assert_eq!(attached(&again), (bearer_edit("cc-2"), Source::Cached));
}

#[test]
fn a_subject_read_once_is_checked_for_expiry_at_every_request_and_each_subject_has_its_token() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({}), json!({}));
    let alice = with_bearer(
        req("payments.internal"),
        &jwt(json!({"sub": "alice", "exp": NOW / 1000 + 100})),
    );
    let bob = with_bearer(
        req("payments.internal"),
        &jwt(json!({"sub": "bob", "exp": NOW / 1000 + 3600})),
    );
    let call = expect_call(ask(&mut f, &store, &alice, NOW));
    let step = answer(
        &mut f,
        &store,
        call,
        200,
        &exchanged("for-alice", 3600, ACCESS_TOKEN_TYPE, "Bearer"),
        NOW,
    );
    assert_eq!(attached(&step).0, bearer_edit("for-alice"));
    let again = ask(&mut f, &store, &alice, NOW + 1_000);
    assert_eq!(attached(&again), (bearer_edit("for-alice"), Source::Cached));
    let Step::Continue { audit, .. } = &again else {
        panic!()
    };
    assert_eq!(
        audit.subject.as_deref(),
        Some("alice"),
        "read once, still named"
    );
    // Another subject is another exchange.
    let call = expect_call(ask(&mut f, &store, &bob, NOW + 1_000));
    let pairs = form_pairs(&call.body);
    assert_eq!(
        form_value(&pairs, "subject_token"),
        [bob.headers[0].1.trim_start_matches("Bearer ")]
    );
    answer(
        &mut f,
        &store,
        call,
        200,
        &exchanged("for-bob", 3600, ACCESS_TOKEN_TYPE, "Bearer"),
        NOW + 1_000,
    );
    let step = ask(&mut f, &store, &bob, NOW + 2_000);
    assert_eq!(attached(&step).0, bearer_edit("for-bob"));
    let step = ask(&mut f, &store, &alice, NOW + 2_000);
    assert_eq!(attached(&step).0, bearer_edit("for-alice"));
    // Alice's token has expired: refused, though it was read before.
    let expired = ask(&mut f, &store, &alice, NOW + 100_000);
    assert!(
        matches!(
            expired,
            Step::Respond {
                status: 403,
                reason: Refusal::SubjectExpired,
                ..
            }
        ),
        "{}",
        describe(&expired)
    );
}

#[test]
fn remembered_subjects_are_bounded() {
    let store = Shared::default();
    let mut f = exchange_flow(json!({}), json!({}));
    for n in 0..(MAX_REMEMBERED_SUBJECTS + 10) {
        let user = jwt(json!({"sub": format!("user-{n}"), "exp": NOW / 1000 + 3600}));
        expect_call(ask(
            &mut f,
            &store,
            &with_bearer(req("payments.internal"), &user),
            NOW,
        ));
    }
    assert_eq!(f.entries[0].subjects.len(), MAX_REMEMBERED_SUBJECTS);
}
