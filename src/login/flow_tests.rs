//! The login state machine, driven as a browser, the OP and the runtime would drive it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::client_auth::form_encode;
use crate::config::{self, HttpTarget};
use crate::login::testing::{Op, CLIENT, ISSUER, NOW};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeMap;

const HOST: &str = "app.example.com";
const COOKIE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn flow_with(patch: Value) -> Flow {
    let cfg = config::parse(&json!({"providers": [{"name": "op", "issuer": ISSUER}]}).to_string())
        .unwrap();
    let mut login = json!({
        "provider": "op", "clientId": CLIENT, "clientSecretEnv": "SECRET",
        "cookieKeysEnv": "KEYS", "hosts": [HOST],
        "postLogoutRedirectUri": "https://app.example.com/bye",
        "sessionRecheckSeconds": 600
    });
    crate::login::testing::merge(&mut login, patch);
    let env = |name: &str| match name {
        "SECRET" => Some("s3cret&:".to_owned()),
        "KEYS" => Some(COOKIE_KEY.to_owned()),
        "OTHER_KEYS" => Some(URL_SAFE_NO_PAD.encode([5u8; 32])),
        "CLIENT_KEY" => Some(STANDARD.encode(crate::keys::testing::RSA_A)),
        _ => None,
    };
    let login = config::parse_login_section(&login, &cfg.providers, &env)
        .unwrap()
        .remove(0);
    Flow::new(&login, &cfg.providers[0], &cfg.limits).unwrap()
}

fn flow() -> Flow {
    flow_with(json!({}))
}

fn endpoints(iss_supported: bool) -> Endpoints {
    Endpoints {
        authorization: "https://op.example.com/auth".to_owned(),
        token: HttpTarget {
            url: "https://op.example.com/token".to_owned(),
            cluster: "outbound|443||op.example.com".to_owned(),
            authority: "op.example.com".to_owned(),
            path: "/token".to_owned(),
        },
        end_session: Some("https://op.example.com/session/end".to_owned()),
        iss_parameter_supported: iss_supported,
    }
}

/// A deterministic "CSPRNG": a counter, so two draws differ.
struct Dice(u8);

impl Dice {
    fn roll(&mut self, buf: &mut [u8]) {
        for byte in buf.iter_mut() {
            self.0 = self.0.wrapping_add(1);
            *byte = self.0.wrapping_mul(167);
        }
    }
}

/// Logouts (kind, id, time); a version when `.1` is `Some`; reads of the entries counted.
struct Ledger(
    Vec<(&'static str, String, u64)>,
    Option<u64>,
    std::cell::Cell<u32>,
);

/// Refreshes as the sidecar's shared data would keep them.
#[derive(Default)]
struct Refreshes(std::cell::RefCell<BTreeMap<String, (u64, String)>>);

impl RecentRefreshes for Refreshes {
    fn recent(&self, key: &str, now: u64) -> Option<String> {
        let map = self.0.borrow();
        let (at, sealed) = map.get(key)?;
        (now <= at + REFRESH_SHARED_SECONDS).then(|| sealed.clone())
    }
}

impl LogoutLedger for Ledger {
    fn version(&self) -> Option<LedgerVersion> {
        self.1.map(|count| LedgerVersion {
            cas: Some(1),
            count,
        })
    }
    fn sid_logged_out_at(&self, sid: &str) -> Option<u64> {
        self.2.set(self.2.get() + 1);
        self.0
            .iter()
            .find(|(k, v, _)| *k == "sid" && v == sid)
            .map(|e| e.2)
    }
    fn sub_logged_out_at(&self, sub: &str) -> Option<u64> {
        self.2.set(self.2.get() + 1);
        self.0
            .iter()
            .find(|(k, v, _)| *k == "sub" && v == sub)
            .map(|e| e.2)
    }
}

/// The world around one flow: the time, the OP and a browser's cookie jar.
struct World {
    flow: Flow,
    op: Op,
    endpoints: Endpoints,
    now: u64,
    dice: Dice,
    ledger: Ledger,
    refreshes: Refreshes,
    jar: BTreeMap<String, String>,
}

impl World {
    fn new() -> World {
        World::with(flow())
    }

    fn with(flow: Flow) -> World {
        World {
            flow,
            op: Op::new(),
            endpoints: endpoints(true),
            now: NOW,
            dice: Dice(0),
            ledger: Ledger(Vec::new(), None, std::cell::Cell::new(0)),
            refreshes: Refreshes::default(),
            jar: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Applies the `set-cookie` headers as a browser would.
    fn store(&mut self, set_cookies: &[String]) {
        for set in set_cookies {
            let (pair, attributes) = set.split_once(';').unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            assert!(attributes.contains("Secure") && attributes.contains("HttpOnly"));
            assert!(attributes.contains("SameSite=Lax") && attributes.contains("Path=/"));
            assert!(name.starts_with("__Host-") && !attributes.contains("Domain"));
            if attributes.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    fn step(&mut self, method: &str, path: &str, extra: &[(&str, &str)]) -> Step {
        let cookie = self.cookie_header();
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if !cookie.is_empty() {
            headers.push(("cookie", &cookie));
        }
        let request = Request {
            method,
            authority: HOST,
            path,
            headers: &headers,
        };
        let dice = &mut self.dice;
        let mut random = |buf: &mut [u8]| dice.roll(buf);
        let mut ctx = Context {
            now: self.now,
            endpoints: Some(&self.endpoints),
            keys: Some(&self.op.keys),
            logouts: &self.ledger,
            refreshes: &self.refreshes,
            random: &mut random,
        };
        self.flow.on_request(&request, &mut ctx)
    }

    fn navigate(&mut self, path: &str) -> Step {
        self.step(
            "GET",
            path,
            &[("sec-fetch-mode", "navigate"), ("accept", "text/html")],
        )
    }

    fn start_login(&mut self, path: &str) -> Answer {
        let cookie = self.cookie_header();
        let headers = [("sec-fetch-mode", "navigate"), ("cookie", cookie.as_str())];
        let request = Request {
            method: "GET",
            authority: HOST,
            path,
            headers: &headers,
        };
        let dice = &mut self.dice;
        let mut random = |buf: &mut [u8]| dice.roll(buf);
        let mut ctx = Context {
            now: self.now,
            endpoints: Some(&self.endpoints),
            keys: Some(&self.op.keys),
            logouts: &self.ledger,
            refreshes: &self.refreshes,
            random: &mut random,
        };
        let answer = self.flow.start_login(&request, &mut ctx).expect("a login");
        self.store(&set_cookies(&answer));
        answer
    }

    fn answer(&mut self, pending: Pending, status: Option<u32>, body: &Value) -> Step {
        let dice = &mut self.dice;
        let mut random = |buf: &mut [u8]| dice.roll(buf);
        let mut ctx = Context {
            now: self.now,
            endpoints: Some(&self.endpoints),
            keys: Some(&self.op.keys),
            logouts: &self.ledger,
            refreshes: &self.refreshes,
            random: &mut random,
        };
        let step =
            self.flow
                .on_token_answer(pending, status, body.to_string().as_bytes(), &mut ctx);
        // The runtime records a refresh for the session's other requests.
        if let Step::Continue(Continue {
            refreshed: Some((key, sealed)),
            ..
        }) = &step
        {
            self.refreshes
                .0
                .borrow_mut()
                .insert(key.clone(), (self.now, sealed.clone()));
        }
        step
    }

    /// Start a login at `path`; return the authorization request's parameters.
    fn authorize(&mut self, path: &str) -> BTreeMap<String, String> {
        let answer = self.start_login(path);
        let location = header(&answer, "location").unwrap();
        let query = location
            .strip_prefix("https://op.example.com/auth?")
            .unwrap();
        form_params(query)
    }

    /// The whole login: authorize, callback, token answer with `id_patch` on the ID token.
    fn login(&mut self, path: &str, id_patch: Value, answer_patch: Value) -> Answer {
        let params = self.authorize(path);
        let callback = format!(
            "/oauth2/callback?code=the-code&state={}&iss={}",
            params["state"],
            form_encode(ISSUER)
        );
        let Step::Call(call) = self.navigate(&callback) else {
            panic!("no token call")
        };
        let mut id_patch_full = json!({"nonce": params["nonce"]});
        crate::login::testing::merge(&mut id_patch_full, id_patch);
        let mut body = json!({
            "access_token": "the-access-token", "token_type": "Bearer", "expires_in": 300,
            "refresh_token": "the-refresh-token",
            "id_token": self.op.id_token(id_patch_full),
        });
        crate::login::testing::merge(&mut body, answer_patch);
        let Step::Respond(answer) = self.answer(call.pending, Some(200), &body) else {
            panic!("no answer")
        };
        self.store(&set_cookies(&answer));
        answer
    }
}

/// The OP's redirect back, with code `c`, for the login whose authorization request had
/// `params`.
fn callback_uri(params: &BTreeMap<String, String>) -> String {
    format!(
        "/oauth2/callback?code=c&state={}&iss={}",
        params["state"],
        form_encode(ISSUER)
    )
}

/// A query or form body's parameters.
fn form_params(text: &str) -> BTreeMap<String, String> {
    form::decode(text).unwrap().into_iter().collect()
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

fn set_cookies(answer: &Answer) -> Vec<String> {
    answer
        .headers
        .iter()
        .filter(|(key, _)| key == "set-cookie")
        .map(|(_, value)| value.clone())
        .collect()
}

fn continued(step: Step) -> Continue {
    match step {
        Step::Continue(next) => next,
        Step::Respond(answer) => panic!("answered {} {:?}", answer.status, answer.event),
        Step::Call(_) => panic!("called the token endpoint"),
        Step::ReadBody => panic!("asked for the body"),
    }
}

fn responded(step: Step) -> Answer {
    match step {
        Step::Respond(answer) => answer,
        _ => panic!("no answer"),
    }
}

fn bearer_of(next: &Continue) -> Option<&str> {
    next.edits.iter().find_map(|edit| match edit {
        HeaderEdit::Set(name, value) if name == "authorization" => value.strip_prefix("Bearer "),
        _ => None,
    })
}

fn cookie_edit(next: &Continue) -> Option<&HeaderEdit> {
    next.edits.iter().find(|edit| match edit {
        HeaderEdit::Set(name, _) | HeaderEdit::Add(name, _) | HeaderEdit::Remove(name) => {
            name == "cookie"
        }
    })
}

#[test]
fn only_top_level_navigations_may_log_in() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
    let cases: [Case; 9] = [
        ("GET", &[("sec-fetch-mode", "navigate")], true),
        ("HEAD", &[("sec-fetch-mode", "navigate")], true),
        (
            "GET",
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")],
            false,
        ),
        ("POST", &[("sec-fetch-mode", "navigate")], false),
        (
            "GET",
            &[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")],
            true,
        ),
        (
            "GET",
            &[("accept", "application/json, text/html;q=0.5")],
            false,
        ),
        ("GET", &[("accept", "*/*")], false),
        ("GET", &[("accept", "text/html;q=0")], false),
        ("GET", &[], false),
    ];
    for (method, headers, expected) in cases {
        let request = Request {
            method,
            authority: HOST,
            path: "/",
            headers,
        };
        assert_eq!(request.is_navigation(), expected, "{method} {headers:?}");
    }
}

#[test]
fn a_navigation_without_session_is_sent_to_the_op_with_pkce_nonce_and_state() {
    let mut world = World::new();
    let next = continued(world.navigate("/orders?page=2"));
    assert!(next.may_login && next.edits.is_empty());
    let answer = world.start_login("/orders?page=2");
    assert_eq!(answer.status, 302);
    assert_eq!(answer.event, Some(Event::LoginStarted));
    assert_eq!(header(&answer, "cache-control"), Some("no-store"));
    let location = header(&answer, "location").unwrap();
    let params = form_params(location.split_once('?').unwrap().1);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT);
    assert_eq!(
        params["redirect_uri"],
        "https://app.example.com/oauth2/callback"
    );
    assert_eq!(params["scope"], "openid");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert!(URL_SAFE_NO_PAD.decode(&params["state"]).unwrap().len() >= 16);
    assert!(params["nonce"].len() >= 22 && params["nonce"] != params["state"]);
    // The transaction cookie holds the secrets, sealed.
    let cookies = set_cookies(&answer);
    assert_eq!(cookies.len(), 1);
    assert!(cookies[0].starts_with("__Host-mesh-tx.") && cookies[0].contains("Max-Age=600"));
    for secret in [&params["state"], &params["nonce"]] {
        assert!(!cookies[0].contains(secret.as_str()));
    }
}

#[test]
fn api_requests_and_other_hosts_never_start_a_login() {
    let mut world = World::new();
    let next = continued(world.step("GET", "/api", &[("sec-fetch-mode", "cors")]));
    assert!(!next.may_login);
    let request = Request {
        method: "GET",
        authority: "other.example.com",
        path: "/",
        headers: &[("sec-fetch-mode", "navigate")],
    };
    let mut random = |_: &mut [u8]| {};
    let endpoints = endpoints(true);
    let mut ctx = Context {
        now: NOW,
        endpoints: Some(&endpoints),
        keys: None,
        logouts: &NoLogouts,
        refreshes: &NoRefreshes,
        random: &mut random,
    };
    assert!(world.flow.start_login(&request, &mut ctx).is_none());
    assert!(!continued(world.flow.on_request(&request, &mut ctx)).may_login);
}

#[test]
fn the_whole_login_lands_on_the_page_with_a_session_that_becomes_a_bearer_token() {
    let mut world = World::new();
    let answer = world.login("/orders?page=2", json!({}), json!({}));
    assert_eq!(answer.status, 302);
    assert_eq!(answer.event, Some(Event::LoginCompleted));
    assert_eq!(header(&answer, "location"), Some("/orders?page=2"));
    assert_eq!(header(&answer, "cache-control"), Some("no-store"));
    assert_eq!(header(&answer, "referrer-policy"), Some("no-referrer"));
    // The transaction is over; the session is in.
    assert!(world
        .jar
        .keys()
        .all(|name| !name.starts_with("__Host-mesh-tx.")));
    assert!(world.jar.contains_key("__Host-mesh-session.0"));
    for value in world.jar.values() {
        assert!(!value.contains("the-access-token") && !value.contains("the-refresh-token"));
    }
    world.jar.insert("theme".to_owned(), "dark".to_owned());
    let next = continued(world.navigate("/orders"));
    assert_eq!(bearer_of(&next), Some("the-access-token"));
    assert!(!next.may_login && next.set_cookies.is_empty());
    // The login cookies never reach the upstream; the others do.
    assert_eq!(
        cookie_edit(&next),
        Some(&HeaderEdit::Set(
            "cookie".to_owned(),
            "theme=dark".to_owned()
        ))
    );
}

#[test]
fn the_code_is_redeemed_with_pkce_and_client_secret_basic() {
    let mut world = World::new();
    let params = world.authorize("/");
    let callback = format!(
        "/oauth2/callback?code=c%2Fd&state={}&iss={}",
        params["state"],
        form_encode(ISSUER)
    );
    let Step::Call(call) = world.navigate(&callback) else {
        panic!("no call")
    };
    let request = &call.request;
    assert_eq!(request.target.path, "/token");
    let body = form_params(&request.body);
    assert_eq!(body["grant_type"], "authorization_code");
    assert_eq!(body["code"], "c/d");
    assert_eq!(
        body["redirect_uri"],
        "https://app.example.com/oauth2/callback"
    );
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        body["code_verifier"].as_bytes(),
    ));
    assert_eq!(challenge, params["code_challenge"]);
    assert!(!body.contains_key("client_secret"));
    let basic = request
        .headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .unwrap();
    // "web-app:s3cret&:" with the secret form-encoded first.
    assert_eq!(
        basic.1,
        format!("Basic {}", STANDARD.encode("web-app:s3cret%26%3A"))
    );
}

#[test]
fn client_secret_post_and_private_key_jwt() {
    let mut world = World::with(flow_with(json!({"clientAuth": "client_secret_post"})));
    let params = world.authorize("/");
    let callback = callback_uri(&params);
    let Step::Call(call) = world.navigate(&callback) else {
        panic!("no call")
    };
    let body = form_params(&call.request.body);
    assert_eq!(
        (body["client_id"].as_str(), body["client_secret"].as_str()),
        (CLIENT, "s3cret&:")
    );
    assert!(call
        .request
        .headers
        .iter()
        .all(|(k, _)| k != "authorization"));

    let mut world = World::with(flow_with(json!({
        "clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "CLIENT_KEY"
    })));
    let mut assertions = Vec::new();
    for _ in 0..2 {
        let params = world.authorize("/");
        let callback = callback_uri(&params);
        let Step::Call(call) = world.navigate(&callback) else {
            panic!("no call")
        };
        let body = form_params(&call.request.body);
        assert_eq!(
            body["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        assertions.push(body["client_assertion"].clone());
    }
    // Signed with the client key (the OP's test key here), aud = issuer, 60 s, fresh jti.
    let mut jtis = Vec::new();
    for assertion in &assertions {
        let jws = crate::token::parse(assertion, &world.flow.expected().limits).unwrap();
        crate::verify::verify(
            jws.header.alg,
            None,
            jws.signing_input,
            &jws.signature,
            &world.op.keys,
            crate::alg::AlgSet::all(),
        )
        .unwrap();
        let claims = Value::Object(jws.claims);
        assert_eq!(claims["iss"], CLIENT);
        assert_eq!(claims["sub"], CLIENT);
        assert_eq!(claims["aud"], ISSUER);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_ne!(jtis[0], jtis[1]);
}

#[test]
fn an_assertion_for_the_token_endpoint_names_the_url_the_code_is_redeemed_at() {
    let mut world = World::with(flow_with(json!({
        "clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "CLIENT_KEY",
        "assertionAudience": "tokenEndpoint"
    })));
    let params = world.authorize("/");
    let Step::Call(call) = world.navigate(&callback_uri(&params)) else {
        panic!("no call")
    };
    let body = form_params(&call.request.body);
    let jws =
        crate::token::parse(&body["client_assertion"], &world.flow.expected().limits).unwrap();
    let claims = Value::Object(jws.claims);
    assert_eq!(claims["aud"], call.request.target.url.as_str());
    assert_eq!(claims["aud"], "https://op.example.com/token");
    assert_ne!(claims["aud"], ISSUER);
}

#[test]
fn several_tabs_log_in_at_once_and_old_transactions_do_not_pile_up() {
    let mut world = World::new();
    let first = world.authorize("/a");
    world.now += 1;
    let second = world.authorize("/b");
    let count = |world: &World| {
        world
            .jar
            .keys()
            .filter(|n| n.starts_with("__Host-mesh-tx."))
            .count()
    };
    assert_eq!(count(&world), 2);
    for _ in 0..5 {
        world.now += 1;
        world.authorize("/c");
    }
    assert_eq!(count(&world), transaction::MAX_TRANSACTIONS);
    // The first two were the oldest and are gone; a fresh pair both complete.
    assert_eq!(
        responded(world.navigate(&callback_uri(&first))).event,
        Some(Event::LoginFailed(lr("state")))
    );
    assert_eq!(
        responded(world.navigate(&callback_uri(&second))).event,
        Some(Event::LoginFailed(lr("state")))
    );
    let tab_a = world.authorize("/a");
    let tab_b = world.authorize("/b");
    assert!(matches!(
        world.navigate(&callback_uri(&tab_b)),
        Step::Call(_)
    ));
    assert!(matches!(
        world.navigate(&callback_uri(&tab_a)),
        Step::Call(_)
    ));
}

#[test]
fn callback_attacks_end_in_a_4xx_page_never_a_redirect() {
    let mut world = World::new();
    let params = world.authorize("/");
    let iss = form_encode(ISSUER);
    let state = params["state"].clone();
    let cases = [
        (format!("/oauth2/callback?code=c&iss={iss}"), "state"),
        (
            format!("/oauth2/callback?code=c&state=forged&iss={iss}"),
            "state",
        ),
        (
            format!("/oauth2/callback?code=c&state={state}&iss=https%3A%2F%2Fevil.example"),
            "iss",
        ),
        (format!("/oauth2/callback?code=c&state={state}"), "iss"),
        (format!("/oauth2/callback?state={state}&iss={iss}"), "code"),
        (
            format!("/oauth2/callback?code=a&code=b&state={state}&iss={iss}"),
            "parameters",
        ),
    ];
    for (path, reason) in cases {
        let mut attempt = World::new();
        attempt.jar = world.jar.clone();
        let answer = responded(attempt.navigate(&path));
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(answer.event, Some(Event::LoginFailed(lr(reason))), "{path}");
        assert!(header(&answer, "location").is_none());
        assert_eq!(
            header(&answer, "content-type"),
            Some("text/plain; charset=utf-8")
        );
    }
    // Another browser's transaction cookie: this browser has none of its own.
    let mut other_browser = World::new();
    let answer = responded(
        other_browser.navigate(&format!("/oauth2/callback?code=c&state={state}&iss={iss}")),
    );
    assert_eq!(answer.event, Some(Event::LoginFailed(lr("state"))));
    // Without iss when the OP does not advertise it: accepted.
    let mut lenient = World::new();
    lenient.endpoints = endpoints(false);
    lenient.jar = world.jar.clone();
    assert!(matches!(
        lenient.navigate(&format!("/oauth2/callback?code=c&state={state}")),
        Step::Call(_)
    ));
    // The callback is GET only.
    assert_eq!(
        responded(world.step("POST", "/oauth2/callback", &[])).status,
        405
    );
}

#[test]
fn a_replayed_state_finds_no_transaction() {
    let mut world = World::new();
    let params = world.authorize("/");
    let callback = callback_uri(&params);
    let Step::Call(call) = world.navigate(&callback) else {
        panic!("no call")
    };
    let body = json!({"access_token": "a", "token_type": "Bearer", "id_token": world.op.id_token(json!({"nonce": params["nonce"]}))});
    let answer = responded(world.answer(call.pending, Some(200), &body));
    world.store(&set_cookies(&answer));
    assert_eq!(answer.status, 302);
    let replay = responded(world.navigate(&callback));
    assert_eq!(
        (replay.status, replay.event),
        (400, Some(Event::LoginFailed(lr("state"))))
    );
}

#[test]
fn an_op_error_is_shown_once_not_looped() {
    let mut world = World::new();
    let params = world.authorize("/");
    let answer = responded(world.navigate(&format!(
        "/oauth2/callback?error=access_denied&error_description=%3Cscript%3E&state={}",
        params["state"]
    )));
    assert_eq!(answer.status, 403);
    assert_eq!(answer.event, Some(Event::LoginFailed(lr("provider_error"))));
    assert!(answer.body.contains("access_denied") && !answer.body.contains("script"));
    assert!(header(&answer, "location").is_none());
    world.store(&set_cookies(&answer));
    assert!(world.jar.is_empty(), "the transaction is cleared");
    let odd = responded(world.navigate("/oauth2/callback?error=%3Cb%3E"));
    assert!(odd.body.contains("answered error.") && !odd.body.contains("<b>"));
}

#[test]
fn bad_id_tokens_and_token_answers_fail_the_login() {
    let cases = [
        (json!({"nonce": "wrong"}), json!({}), "id_token_nonce"),
        (json!({"aud": "other"}), json!({}), "id_token_audience"),
        (
            json!({"iss": "https://evil.example"}),
            json!({}),
            "id_token_issuer",
        ),
        (json!({"exp": NOW - 3600}), json!({}), "id_token_expired"),
        (
            json!({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}),
            json!({}),
            "id_token_at_hash",
        ),
        (json!({}), json!({"id_token": null}), "id_token_missing"),
        (json!({}), json!({"token_type": "DPoP"}), "token_type"),
        (
            json!({}),
            json!({"access_token": null, "token_type": null}),
            "access_token_missing",
        ),
        (json!({}), json!({"access_token": 5}), "token_answer"),
    ];
    for (id_patch, answer_patch, reason) in cases {
        let mut world = World::new();
        let answer = world.login("/", id_patch.clone(), answer_patch.clone());
        assert_eq!(
            (answer.status, answer.event.clone()),
            (400, Some(Event::LoginFailed(lr(reason)))),
            "{id_patch} {answer_patch}"
        );
        assert!(!world.jar.contains_key("__Host-mesh-session.0"));
        assert!(
            world.jar.keys().all(|n| !n.starts_with("__Host-mesh-tx.")),
            "transaction cleared"
        );
    }
    // The OP refusing the code (replayed, expired) and the OP not answering.
    for (status, expected) in [(Some(400), 400), (Some(503), 502), (None, 502)] {
        let mut world = World::new();
        let params = world.authorize("/");
        let callback = callback_uri(&params);
        let Step::Call(call) = world.navigate(&callback) else {
            panic!("no call")
        };
        let answer =
            responded(world.answer(call.pending, status, &json!({"error": "invalid_grant"})));
        assert_eq!(answer.status, expected, "{status:?}");
    }
}

#[test]
fn a_tampered_or_foreign_session_cookie_is_refused_and_cleared() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    let good = world.jar["__Host-mesh-session.0"].clone();
    let (id, body) = good.split_once('.').unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
    let mut flipped = bytes.clone();
    flipped[20] ^= 1;
    let flipped = format!("{id}.{}", URL_SAFE_NO_PAD.encode(&flipped));
    let truncated = format!("{id}.{}", URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - 6]));
    for (value, reason) in [
        (flipped, "tampered"),
        (truncated, "tampered"),
        ("garbage".to_owned(), "malformed"),
    ] {
        let mut attempt = World::new();
        attempt
            .jar
            .insert("__Host-mesh-session.0".to_owned(), value);
        let next = continued(attempt.navigate("/"));
        assert_eq!(bearer_of(&next), None);
        assert!(next.may_login);
        assert_eq!(next.event, Some(Event::SessionRefused(lr(reason))));
        assert_eq!(
            next.set_cookies,
            vec![cookies::clear_cookie("__Host-mesh-session.0")]
        );
    }
    // Expired: the sealed expiry is the session's maximum age.
    let mut late = World::new();
    late.jar = world.jar.clone();
    late.now = NOW + 86_400;
    assert_eq!(
        continued(late.navigate("/")).event,
        Some(Event::SessionRefused(lr("expired")))
    );
    // Another host's login, with the same keys, does not accept it.
    let mut other_host = World::with(flow_with(json!({"hosts": ["other.example.com"]})));
    other_host.jar = world.jar.clone();
    let request = Request {
        method: "GET",
        authority: "other.example.com",
        path: "/",
        headers: &[("cookie", &world.cookie_header())],
    };
    let mut random = |_: &mut [u8]| {};
    let mut ctx = Context {
        now: NOW,
        endpoints: None,
        keys: None,
        logouts: &NoLogouts,
        refreshes: &NoRefreshes,
        random: &mut random,
    };
    let next = continued(other_host.flow.on_request(&request, &mut ctx));
    assert_eq!(next.event, Some(Event::SessionRefused(lr("tampered"))));
    // A retired key: the ring no longer has it.
    let mut rotated = World::with(flow_with(json!({"cookieKeysEnv": "OTHER_KEYS"})));
    rotated.jar = world.jar.clone();
    assert_eq!(
        continued(rotated.navigate("/")).event,
        Some(Event::SessionRefused(lr("unknown_key")))
    );
    // A request with its own token is an API request: the session is not looked at.
    let mut api = World::new();
    api.jar = world.jar.clone();
    let next = continued(api.step("GET", "/", &[("authorization", "Bearer other")]));
    assert_eq!(bearer_of(&next), None);
    assert_eq!(
        cookie_edit(&next),
        Some(&HeaderEdit::Remove("cookie".to_owned()))
    );
}

#[test]
fn a_large_session_is_chunked_and_reordered_chunks_still_join_but_a_missing_one_does_not() {
    let mut world = World::new();
    let big = "x".repeat(6000);
    world.login("/", json!({}), json!({"access_token": big}));
    assert!(world.jar.contains_key("__Host-mesh-session.1"));
    let next = continued(world.navigate("/"));
    assert_eq!(bearer_of(&next).map(str::len), Some(6000));
    let mut missing = World::new();
    missing.jar = world.jar.clone();
    missing.jar.remove("__Host-mesh-session.1");
    let next = continued(missing.navigate("/"));
    assert_eq!(bearer_of(&next), None);
    // Chunks swapped between names do not open.
    let mut swapped = World::new();
    swapped.jar = world.jar.clone();
    let zero = swapped.jar["__Host-mesh-session.0"].clone();
    let one = swapped.jar["__Host-mesh-session.1"].clone();
    swapped.jar.insert("__Host-mesh-session.0".to_owned(), one);
    swapped.jar.insert("__Host-mesh-session.1".to_owned(), zero);
    assert_eq!(bearer_of(&continued(swapped.navigate("/"))), None);
    // Too large for the cap: refused, not sent.
    let mut huge = World::new();
    let answer = huge.login("/", json!({}), json!({"access_token": "x".repeat(20_000)}));
    assert_eq!(
        answer.event,
        Some(Event::LoginFailed(lr("session_too_large")))
    );
    // A shorter session after a longer one clears the leftover chunk.
    world.login("/", json!({}), json!({}));
    assert!(!world.jar.contains_key("__Host-mesh-session.1"));
    assert_eq!(
        bearer_of(&continued(world.navigate("/"))),
        Some("the-access-token")
    );
}

#[test]
fn an_expired_token_is_refreshed_while_the_request_waits() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    world.now = NOW + 295;
    let Step::Call(call) = world.step("GET", "/api", &[("sec-fetch-mode", "cors")]) else {
        panic!("no refresh")
    };
    let body = form_params(&call.request.body);
    assert_eq!(body["grant_type"], "refresh_token");
    assert_eq!(body["refresh_token"], "the-refresh-token");
    let answer = json!({"access_token": "new-access", "token_type": "bearer", "expires_in": 300, "refresh_token": "new-refresh"});
    let next = continued(world.answer(call.pending, Some(200), &answer));
    assert_eq!(bearer_of(&next), Some("new-access"));
    assert_eq!(next.event, Some(Event::SessionRefreshed));
    assert_eq!(
        cookie_edit(&next),
        Some(&HeaderEdit::Remove("cookie".to_owned()))
    );
    world.store(&next.set_cookies);
    let next = continued(world.step("GET", "/api", &[]));
    assert_eq!(bearer_of(&next), Some("new-access"));
    // The next refresh uses the rotated refresh token.
    world.now += 300;
    let Step::Call(call) = world.step("GET", "/api", &[]) else {
        panic!("no refresh")
    };
    assert!(call.request.body.contains("refresh_token=new-refresh"));
}

#[test]
fn a_request_with_the_replaced_cookie_uses_the_refresh_already_made() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    let old_jar = world.jar.clone();
    world.now = NOW + 295;
    let Step::Call(call) = world.step("GET", "/api", &[]) else {
        panic!("no refresh")
    };
    let answer = json!({"access_token": "new-access", "token_type": "Bearer", "expires_in": 300,
                        "refresh_token": "rotated"});
    let next = continued(world.answer(call.pending, Some(200), &answer));
    assert!(next.refreshed.is_some());
    // A request sent before the browser had the new cookie: no second refresh with the spent
    // refresh token, the new session instead.
    world.jar = old_jar.clone();
    world.now += 2;
    let next = continued(world.step("GET", "/api", &[]));
    assert_eq!(bearer_of(&next), Some("new-access"));
    assert!(next
        .set_cookies
        .iter()
        .any(|c| c.starts_with("__Host-mesh-session.0=")));
    world.store(&next.set_cookies);
    assert_eq!(
        bearer_of(&continued(world.step("GET", "/api", &[]))),
        Some("new-access")
    );
    // After a minute the old cookie refreshes on its own again (and the OP decides).
    world.jar = old_jar;
    world.now += REFRESH_SHARED_SECONDS;
    assert!(matches!(world.step("GET", "/api", &[]), Step::Call(_)));
}

#[test]
fn a_session_is_rechecked_after_session_recheck_seconds_even_with_a_valid_token() {
    let mut world = World::with(flow_with(json!({"sessionRecheckSeconds": 60})));
    world.login("/", json!({}), json!({"expires_in": 3600}));
    world.now = NOW + 59;
    assert!(matches!(world.navigate("/"), Step::Continue(_)));
    world.now = NOW + 60;
    let Step::Call(call) = world.navigate("/") else {
        panic!("no recheck")
    };
    // The OP says the grant is gone (logged out, disabled): the session ends, a navigation logs in.
    let next = continued(world.answer(call.pending, Some(400), &json!({"error": "invalid_grant"})));
    assert_eq!(bearer_of(&next), None);
    assert!(next.may_login);
    assert_eq!(
        next.event,
        Some(Event::SessionRefreshFailed(lr("token_refused")))
    );
    world.store(&next.set_cookies);
    assert!(world.jar.is_empty());
}

#[test]
fn an_unreachable_op_keeps_a_still_valid_session_but_not_an_expired_one() {
    let mut world = World::with(flow_with(json!({"sessionRecheckSeconds": 60})));
    world.login("/", json!({}), json!({"expires_in": 3600}));
    world.now = NOW + 120;
    let Step::Call(call) = world.navigate("/") else {
        panic!("no recheck")
    };
    let next = continued(world.answer(call.pending, None, &json!({})));
    assert_eq!(bearer_of(&next), Some("the-access-token"));
    assert_eq!(
        next.event,
        Some(Event::SessionRefreshFailed(lr("token_endpoint")))
    );
    world.now = NOW + 3600;
    let Step::Call(call) = world.navigate("/") else {
        panic!("no refresh")
    };
    let next = continued(world.answer(call.pending, Some(502), &json!({})));
    assert_eq!(bearer_of(&next), None);
}

#[test]
fn a_refreshed_id_token_must_be_about_the_same_subject() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    world.now = NOW + 300;
    let Step::Call(call) = world.navigate("/") else {
        panic!("no refresh")
    };
    let other = world
        .op
        .id_token(json!({"sub": "mallory", "nonce": null, "iat": NOW + 300, "exp": NOW + 600}));
    let answer = json!({"access_token": "x", "token_type": "Bearer", "id_token": other});
    let next = continued(world.answer(call.pending, Some(200), &answer));
    assert_eq!(
        next.event,
        Some(Event::SessionRefreshFailed(lr("id_token_sub")))
    );
    assert_eq!(bearer_of(&next), None);
}

#[test]
fn without_a_refresh_token_the_session_ends_with_its_token() {
    let mut world = World::new();
    world.login("/", json!({}), json!({"refresh_token": null}));
    world.now = NOW + 200;
    assert_eq!(
        bearer_of(&continued(world.navigate("/"))),
        Some("the-access-token")
    );
    world.now = NOW + 300;
    let next = continued(world.navigate("/"));
    assert_eq!(next.event, Some(Event::SessionRefused(lr("expired"))));
    assert!(next.may_login);
}

#[test]
fn logout_is_same_origin_post_only_and_goes_to_the_op() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    for headers in [
        vec![("origin", "https://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![
            ("sec-fetch-site", "same-site"),
            ("origin", "https://app.example.com"),
        ],
        vec![],
    ] {
        let answer = responded(world.step("POST", "/oauth2/logout", &headers));
        assert_eq!(answer.status, 403, "{headers:?}");
        assert!(set_cookies(&answer).is_empty());
    }
    assert_eq!(responded(world.navigate("/oauth2/logout")).status, 405);
    let answer = responded(world.step(
        "POST",
        "/oauth2/logout",
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://app.example.com"),
        ],
    ));
    assert_eq!(answer.status, 302);
    assert_eq!(
        answer.event,
        Some(Event::Logout {
            sid: Some("op-session-1".to_owned())
        })
    );
    let location = header(&answer, "location").unwrap();
    let (endpoint, query) = location.split_once('?').unwrap();
    assert_eq!(endpoint, "https://op.example.com/session/end");
    let params = form_params(query);
    assert_eq!(params["client_id"], CLIENT);
    assert_eq!(
        params["post_logout_redirect_uri"],
        "https://app.example.com/bye"
    );
    assert!(params["state"].len() >= 22);
    world.store(&set_cookies(&answer));
    assert!(world.jar.is_empty());
    assert!(continued(world.navigate("/")).may_login);
}

#[test]
fn logout_with_forwarded_id_tokens_sends_the_hint() {
    let mut world = World::with(flow_with(json!({"forward": "id_token"})));
    world.login("/", json!({}), json!({}));
    let next = continued(world.navigate("/"));
    let id_token = bearer_of(&next).unwrap().to_owned();
    assert_eq!(id_token.split('.').count(), 3);
    let answer = responded(world.step(
        "POST",
        "/oauth2/logout",
        &[("origin", "https://app.example.com")],
    ));
    let location = header(&answer, "location").unwrap();
    let params = form_params(location.split_once('?').unwrap().1);
    assert_eq!(params["id_token_hint"], id_token);
    assert!(!params.contains_key("client_id"));
}

/// `logoutHint: "id_token"` while access tokens are forwarded: the session keeps the ID token
/// (through a refresh that brings none) and the end-session redirect names it.
#[test]
fn logout_hint_id_token_keeps_the_id_token_for_the_end_session_redirect() {
    let logout_hint = |world: &mut World| {
        let answer = responded(world.step(
            "POST",
            "/oauth2/logout",
            &[("origin", "https://app.example.com")],
        ));
        let location = header(&answer, "location").unwrap().to_owned();
        let params = form_params(location.split_once('?').unwrap().1);
        params
    };
    let mut world = World::with(flow_with(json!({"logoutHint": "id_token"})));
    let login = world.login("/", json!({"marker": "first"}), json!({}));
    let cookie_bytes = set_cookies(&login).iter().map(String::len).sum::<usize>();
    assert_eq!(
        bearer_of(&continued(world.navigate("/"))),
        Some("the-access-token")
    );
    // A refresh without a new ID token keeps the login's.
    world.now = NOW + 295;
    let Step::Call(call) = world.step("GET", "/api", &[("sec-fetch-mode", "cors")]) else {
        panic!("no refresh")
    };
    let refreshed =
        json!({"access_token": "new-access", "token_type": "bearer", "expires_in": 300});
    let next = continued(world.answer(call.pending, Some(200), &refreshed));
    world.store(&next.set_cookies);
    let mut with_hint = world;
    let params = logout_hint(&mut with_hint);
    let hint = &params["id_token_hint"];
    assert!(!params.contains_key("client_id"));
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(hint.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (claims["aud"].clone(), claims["marker"].clone()),
        (json!(CLIENT), json!("first"))
    );

    // The default names the client, and its cookie is smaller by the ID token.
    let mut world = World::new();
    let login = world.login("/", json!({"marker": "first"}), json!({}));
    assert!(set_cookies(&login).iter().map(String::len).sum::<usize>() + 200 < cookie_bytes);
    let params = logout_hint(&mut world);
    assert_eq!(params["client_id"], CLIENT);
    assert!(!params.contains_key("id_token_hint"));
}

#[test]
fn backchannel_logout_verifies_the_token_and_ends_sessions() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    assert!(matches!(
        world.step("POST", "/oauth2/backchannel-logout", &[]),
        Step::ReadBody
    ));
    assert_eq!(
        responded(world.step("GET", "/oauth2/backchannel-logout", &[])).status,
        405
    );
    let ctx_answer = |world: &World, body: &str| {
        let mut random = |_: &mut [u8]| {};
        let ctx = Context {
            now: world.now,
            endpoints: Some(&world.endpoints),
            keys: Some(&world.op.keys),
            logouts: &NoLogouts,
            refreshes: &NoRefreshes,
            random: &mut random,
        };
        world.flow.on_backchannel_logout(body.as_bytes(), &ctx)
    };
    for (body, reason) in [
        ("".to_owned(), "malformed"),
        ("logout_token=a&logout_token=b".to_owned(), "malformed"),
        (
            format!("logout_token={}", world.op.logout_token(json!({}), None)),
            "logout_token_typ",
        ),
        (
            format!(
                "logout_token={}",
                world
                    .op
                    .logout_token(json!({"nonce": "n"}), Some("logout+jwt"))
            ),
            "logout_token_nonce",
        ),
        (
            format!("logout_token={}", world.op.id_token(json!({}))),
            "logout_token_typ",
        ),
    ] {
        let answer = ctx_answer(&world, &body);
        assert_eq!(answer.status, 400, "{reason}");
        assert_eq!(
            answer.event,
            Some(Event::BackchannelLogoutRefused(lr(reason)))
        );
        assert_eq!(header(&answer, "cache-control"), Some("no-store"));
    }
    let answer = ctx_answer(
        &world,
        &format!(
            "logout_token={}",
            world.op.logout_token(json!({}), Some("logout+jwt"))
        ),
    );
    assert_eq!(answer.status, 200);
    assert_eq!(header(&answer, "cache-control"), Some("no-store"));
    assert_eq!(
        answer.event,
        Some(Event::BackchannelLogout {
            sid: Some("op-session-1".to_owned()),
            sub: Some("alice".to_owned())
        })
    );
    // The session served before: its cookie opened once, then taken from the worker's cache.
    for _ in 0..2 {
        assert!(bearer_of(&continued(world.navigate("/"))).is_some());
    }
    assert_eq!(world.flow.sessions.opens(), 1);
    // Recorded by the runtime: the session is refused on its next request, cached as it is.
    world.ledger.0.push(("sid", "op-session-1".to_owned(), NOW));
    let next = continued(world.navigate("/"));
    assert_eq!(next.event, Some(Event::SessionRefused(lr("logged_out"))));
    assert_eq!(bearer_of(&next), None);
    assert_eq!(world.flow.sessions.opens(), 1);
    // A logout of every session of the subject ends sessions from before it, not later ones.
    let mut by_sub = World::new();
    by_sub.login("/", json!({"sid": null}), json!({}));
    by_sub.ledger.0.push(("sub", "alice".to_owned(), NOW - 1));
    assert!(bearer_of(&continued(by_sub.navigate("/"))).is_some());
    by_sub.ledger.0[0].2 = NOW;
    assert!(bearer_of(&continued(by_sub.navigate("/"))).is_none());
}

#[test]
fn a_session_found_not_logged_out_is_read_for_again_only_once_the_ledger_moved() {
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    world.ledger.1 = Some(0);
    let reads = |world: &World| world.ledger.2.get();
    assert!(bearer_of(&continued(world.navigate("/"))).is_some());
    let first = reads(&world);
    assert!(first > 0, "the entries were read");
    // The same version, the same second: what was found stands.
    for _ in 0..3 {
        assert!(bearer_of(&continued(world.navigate("/"))).is_some());
    }
    assert_eq!(reads(&world), first);
    // A logout recorded moves the version: refused at once, in the same second.
    world.ledger.0.push(("sid", "op-session-1".to_owned(), NOW));
    world.ledger.1 = Some(1);
    let next = continued(world.navigate("/"));
    assert_eq!(next.event, Some(Event::SessionRefused(lr("logged_out"))));
    assert!(bearer_of(&next).is_none());

    // An entry written while the version stood (a bump that lost, an earlier module): seen
    // within LEDGER_VERDICT_SECONDS all the same.
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    world.ledger.1 = Some(0);
    assert!(bearer_of(&continued(world.navigate("/"))).is_some());
    world.ledger.0.push(("sid", "op-session-1".to_owned(), NOW));
    world.now += crate::login::session_cache::LEDGER_VERDICT_SECONDS;
    assert!(bearer_of(&continued(world.navigate("/"))).is_none());

    // A ledger without a version is read on every request.
    let mut world = World::new();
    world.login("/", json!({}), json!({}));
    assert!(bearer_of(&continued(world.navigate("/"))).is_some());
    let once = reads(&world);
    assert!(bearer_of(&continued(world.navigate("/"))).is_some());
    assert_eq!(reads(&world), 2 * once);
}

#[test]
fn return_paths_stay_on_this_origin() {
    for (path, expected) in [
        ("//evil.example/x", "/"),
        ("/%2F%2Fevil.example", "/"),
        ("/oauth2/callback?code=x", "/"),
        ("/oauth2/logout", "/"),
        ("/fine?x=1", "/fine?x=1"),
    ] {
        let mut world = World::new();
        let answer = world.login(path, json!({}), json!({}));
        assert_eq!(header(&answer, "location"), Some(expected), "{path}");
    }
}

#[test]
fn events_name_their_metrics() {
    assert_eq!(Event::LoginStarted.metric(), "login.started");
    assert_eq!(Event::LoginCompleted.metric(), "login.completed");
    assert_eq!(
        Event::LoginFailed(lr("state")).metric(),
        "login.failed.state"
    );
    assert_eq!(Event::SessionRefreshed.metric(), "session.refreshed");
    assert_eq!(
        Event::SessionRefreshFailed(lr("token_refused")).metric(),
        "session.refresh_failed"
    );
    // The reason goes into the audit line, from the one list.
    assert_eq!(
        Event::SessionRefreshFailed(lr("token_refused"))
            .reason()
            .map(|r| r.name()),
        Some("token_refused")
    );
    assert_eq!(Event::LoginCompleted.reason(), None);
    assert_eq!(Event::Logout { sid: None }.metric(), "session.logout");
    assert_eq!(
        Event::BackchannelLogout {
            sid: None,
            sub: None
        }
        .metric(),
        "session.backchannel_logout"
    );
}

/// The login reason of this name (a test naming one that does not exist fails).
fn lr(name: &str) -> crate::reason::LoginReason {
    crate::reason::LoginReason::from_name(name).unwrap_or_else(|| panic!("no login reason {name}"))
}
