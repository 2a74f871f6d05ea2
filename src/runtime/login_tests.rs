//! Browser login through the runtime: discovery, the redirect, the callback's token call, the
//! session on later requests, back-channel logout.

use super::*;
use crate::client_auth::form_encode;
use crate::login::form;

const APP: &str = "app.example.com";
const TOKEN_CLUSTER: &str = "outbound|443||idp.example.com";

fn login_config() -> Value {
    // Names only this test uses: tests run in parallel threads of one process.
    std::env::set_var("MESH_OAUTH_RUNTIME_TEST_COOKIE_KEYS", b64(&[4u8; 32]));
    std::env::set_var("MESH_OAUTH_RUNTIME_TEST_SECRET", "s3cret");
    json!({
        "providers": [{"name": "idp", "issuer": ISSUER, "audiences": ["orders"]}],
        "audit": {"allowedSampleRate": 0},
        "login": {
            "provider": "idp", "clientId": "web", "hosts": [APP],
            "clientSecretEnv": "MESH_OAUTH_RUNTIME_TEST_SECRET",
            "cookieKeysEnv": "MESH_OAUTH_RUNTIME_TEST_COOKIE_KEYS"
        }
    })
}

impl Vm {
    /// Discovery, then the keys.
    fn discover(&mut self) {
        self.tick(ROOT);
        let (token, call) = self.envoy.take_call(KEYS_CLUSTER).expect("discovery");
        assert!(call
            .headers
            .contains(&(":path".into(), "/.well-known/openid-configuration".into())));
        let doc = json!({
            "issuer": ISSUER, "jwks_uri": "https://idp.example.com/jwks",
            "authorization_endpoint": "https://idp.example.com/authorize",
            "token_endpoint": "https://idp.example.com/token",
            "end_session_endpoint": "https://idp.example.com/logout",
            "authorization_response_iss_parameter_supported": true
        })
        .to_string();
        self.answer(ROOT, token, 200, &doc);
        let (token, _) = self.envoy.take_call(KEYS_CLUSTER).expect("keys");
        let jwks = self.jwks();
        self.answer(ROOT, token, 200, &jwks);
    }

    fn browse(&mut self, context: u32, method: &str, path: &str, headers: &[(&str, &str)]) {
        let request = Request {
            method,
            scheme: "https",
            path,
            authority: APP,
            headers,
            peer: &NoPeer,
        };
        self.event(|runtime, host, out| runtime.on_request(context, &request, host, out));
    }

    /// A back-channel logout token of the OP session `sid`, signed by the provider's key.
    fn logout_token(&self, sid: &str) -> String {
        let header_b64 = b64(json!({"alg": "EdDSA", "kid": "k1", "typ": "logout+jwt"})
            .to_string()
            .as_bytes());
        let claims = json!({"iss": ISSUER, "aud": "web", "sid": sid, "iat": NOW_S, "exp": NOW_S + 60,
                            "jti": "j-1", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
        let input = format!("{header_b64}.{}", b64(claims.to_string().as_bytes()));
        format!(
            "{input}.{}",
            b64(&self.key.sign(Alg::EdDSA, input.as_bytes()))
        )
    }

    fn id_token(&self, nonce: &str) -> String {
        self.token(
            json!({"iss": ISSUER, "aud": "web", "sub": "alice", "sid": "s-1",
                          "nonce": nonce, "exp": NOW_S + 300, "iat": NOW_S}),
        )
    }
}

fn set_cookies(response: &Response) -> Vec<String> {
    response
        .headers
        .iter()
        .filter(|(n, _)| n == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_browser_logs_in_and_its_session_becomes_a_bearer_token_until_a_backchannel_logout() {
    let mut vm = Vm::new(login_config());
    vm.discover();
    let navigate = [("sec-fetch-mode", "navigate"), ("accept", "text/html")];

    // An API call without a token keeps its 401; a navigation is sent to log in.
    vm.browse(1, "GET", "/orders", &[("sec-fetch-mode", "cors")]);
    assert_eq!(status(vm.envoy.answer_for(1)), Some(401));
    vm.browse(2, "GET", "/orders?page=2", &navigate);
    let redirect = vm.envoy.answer_for(2).expect("answered").clone();
    assert_eq!(redirect.status, 302);
    let location = header(&redirect, "location").unwrap();
    let (endpoint, query) = location.split_once('?').unwrap();
    assert_eq!(endpoint, "https://idp.example.com/authorize");
    let params: HashMap<String, String> = form::decode(query).unwrap().into_iter().collect();
    assert_eq!(
        params["redirect_uri"],
        "https://app.example.com/oauth2/callback"
    );
    let tx_cookie = set_cookies(&redirect).remove(0);
    assert!(tx_cookie.starts_with("__Host-mesh-tx."));
    assert_eq!(vm.envoy.metric("mesh_oauth.login.started"), Some(1));

    // The callback: one call to the token endpoint, the request held until it answers.
    let callback = format!(
        "/oauth2/callback?code=the-code&state={}&iss={}",
        params["state"],
        form_encode(ISSUER)
    );
    vm.browse(3, "GET", &callback, &[("cookie", &tx_cookie)]);
    assert!(vm.envoy.answer_for(3).is_none());
    assert_eq!(vm.held(), 1);
    let (token_id, call) = vm.envoy.take_call(TOKEN_CLUSTER).expect("a token call");
    assert!(call.headers.contains(&(":method".into(), "POST".into())));
    assert!(call.headers.contains(&(":path".into(), "/token".into())));
    let body = String::from_utf8(call.body.clone().unwrap()).unwrap();
    assert!(body.contains("grant_type=authorization_code") && body.contains("code=the-code"));
    let access = vm.good_token(ISSUER);
    let answer = json!({"access_token": access, "token_type": "Bearer", "expires_in": 300,
                        "id_token": vm.id_token(&params["nonce"])})
    .to_string();
    vm.answer(ROOT, token_id, 200, &answer);
    let landed = vm.envoy.answer_for(3).expect("answered").clone();
    assert_eq!(landed.status, 302, "{}", landed.body);
    assert_eq!(header(&landed, "location"), Some("/orders?page=2"));
    assert_eq!(vm.held(), 0);
    assert_eq!(vm.envoy.metric("mesh_oauth.login.completed"), Some(1));
    let session: Vec<String> = set_cookies(&landed)
        .into_iter()
        .filter(|c| c.starts_with("__Host-mesh-session.") && !c.ends_with('='))
        .collect();
    assert_eq!(session.len(), 1);

    // The session: the token goes upstream as a bearer token, the login cookies do not.
    let cookie = format!("{}; theme=dark", session[0]);
    vm.browse(4, "GET", "/api/orders", &[("cookie", &cookie)]);
    assert!(vm.envoy.was_resumed(4), "{:?}", vm.envoy.answer_for(4));
    let edits: Vec<&HeaderEdit> = vm
        .envoy
        .request_edits
        .iter()
        .filter(|(c, _)| *c == 4)
        .flat_map(|(_, e)| e)
        .collect();
    assert!(edits.contains(&&HeaderEdit::Set(
        "authorization".into(),
        format!("Bearer {access}")
    )));
    assert!(edits.contains(&&HeaderEdit::Set("cookie".into(), "theme=dark".into())));

    // A back-channel logout from the OP: the next request has no session.
    vm.browse(5, "POST", "/oauth2/backchannel-logout", &[]);
    assert!(vm.runtime.as_ref().unwrap().wants_body(5));
    assert!(vm.envoy.request_edits.contains(&(
        5,
        vec![
            HeaderEdit::Remove("authorization".into()),
            HeaderEdit::Remove("cookie".into())
        ]
    )));
    let logout_token = vm.logout_token("s-1");
    let body = format!("logout_token={logout_token}");
    vm.event(|runtime, host, out| runtime.on_request_body(5, body.as_bytes(), host, out));
    assert_eq!(status(vm.envoy.answer_for(5)), Some(200));
    assert_eq!(
        vm.envoy.metric("mesh_oauth.session.backchannel_logout"),
        Some(1)
    );
    vm.browse(6, "GET", "/api/orders", &[("cookie", &cookie)]);
    assert_eq!(status(vm.envoy.answer_for(6)), Some(401));
    vm.browse(7, "GET", "/orders", &[("cookie", &cookie), navigate[0]]);
    assert_eq!(status(vm.envoy.answer_for(7)), Some(302));
    // Nothing secret in the log.
    for (_, line) in &vm.envoy.logs {
        for secret in [
            access.as_str(),
            "the-code",
            &params["state"],
            "s3cret",
            &logout_token,
        ] {
            assert!(!line.contains(secret), "{line}");
        }
    }
}

#[test]
fn login_cookies_never_reach_the_upstream_of_another_host() {
    let mut vm = Vm::new(login_config());
    vm.discover();
    let token = vm.good_token(ISSUER);
    let authorization = format!("Bearer {token}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("cookie", "__Host-mesh-session.0=x; a=1"),
    ];
    let request = Request {
        method: "GET",
        scheme: "https",
        path: "/orders",
        authority: "orders.example.com",
        headers: &headers,
        peer: &NoPeer,
    };
    vm.event(|runtime, host, out| runtime.on_request(9, &request, host, out));
    assert!(vm.envoy.was_resumed(9));
    assert!(vm
        .envoy
        .request_edits
        .contains(&(9, vec![HeaderEdit::Set("cookie".into(), "a=1".into())])));
}

/// Logs in through the runtime; returns the session cookie header.
fn logged_in(vm: &mut Vm, expires_in: u64) -> String {
    let navigate = [("sec-fetch-mode", "navigate")];
    vm.browse(100, "GET", "/", &navigate);
    let redirect = vm.envoy.answer_for(100).expect("redirect").clone();
    let location = header(&redirect, "location").unwrap();
    let params: HashMap<String, String> = form::decode(location.split_once('?').unwrap().1)
        .unwrap()
        .into_iter()
        .collect();
    let tx_cookie = set_cookies(&redirect).remove(0);
    let callback = format!(
        "/oauth2/callback?code=c&state={}&iss={}",
        params["state"],
        form_encode(ISSUER)
    );
    vm.browse(101, "GET", &callback, &[("cookie", &tx_cookie)]);
    let (token_id, _) = vm.envoy.take_call(TOKEN_CLUSTER).expect("a token call");
    let answer = json!({"access_token": vm.good_token(ISSUER), "token_type": "Bearer",
                        "expires_in": expires_in, "refresh_token": "rt-1",
                        "id_token": vm.id_token(&params["nonce"])})
    .to_string();
    vm.answer(ROOT, token_id, 200, &answer);
    let landed = vm.envoy.answer_for(101).expect("landed").clone();
    set_cookies(&landed)
        .into_iter()
        .filter(|c| c.starts_with("__Host-mesh-session.") && !c.ends_with('='))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn requests_of_one_session_share_one_refresh() {
    let mut vm = Vm::new(login_config());
    vm.discover();
    let session = logged_in(&mut vm, 20);
    vm.envoy.now += 15_000;
    let with_theme = format!("{session}; theme=dark");
    vm.browse(20, "GET", "/api/a", &[("cookie", &session)]);
    vm.browse(21, "GET", "/api/b", &[("cookie", &with_theme)]);
    let (token_id, call) = vm.envoy.take_call(TOKEN_CLUSTER).expect("a refresh");
    assert!(
        vm.envoy.take_call(TOKEN_CLUSTER).is_none(),
        "one refresh for both"
    );
    let body = String::from_utf8(call.body.unwrap()).unwrap();
    assert!(body.contains("grant_type=refresh_token") && body.contains("refresh_token=rt-1"));
    assert_eq!(vm.held(), 2);
    let fresh = vm.token(
        json!({"iss": ISSUER, "aud": "orders", "sub": "alice", "jti": "fresh",
                                "exp": NOW_S + 3600, "iat": NOW_S}),
    );
    let answer = json!({"access_token": fresh, "token_type": "Bearer", "expires_in": 300,
                        "refresh_token": "rt-2"})
    .to_string();
    vm.answer(ROOT, token_id, 200, &answer);
    assert_eq!(vm.held(), 0);
    for (context, cookie_edit) in [
        (20, HeaderEdit::Remove("cookie".into())),
        (21, HeaderEdit::Set("cookie".into(), "theme=dark".into())),
    ] {
        assert!(
            vm.envoy.was_resumed(context),
            "{context}: {:?}",
            vm.envoy.answer_for(context)
        );
        let edits: Vec<&HeaderEdit> = vm
            .envoy
            .request_edits
            .iter()
            .filter(|(c, _)| *c == context)
            .flat_map(|(_, e)| e)
            .collect();
        assert!(edits.contains(&&HeaderEdit::Set(
            "authorization".into(),
            format!("Bearer {fresh}")
        )));
        assert!(edits.contains(&&cookie_edit), "{context}: {edits:?}");
        let set_cookie = vm
            .envoy
            .response_edits
            .iter()
            .chain(vm.runtime.as_ref().unwrap().response_edits.iter())
            .any(|(c, e)| {
                *c == context
                    && e.iter()
                        .any(|e| matches!(e, HeaderEdit::Add(n, _) if n == "set-cookie"))
            });
        assert!(
            set_cookie,
            "{context}: the new session goes back to the browser"
        );
    }
    assert_eq!(vm.envoy.metric("mesh_oauth.session.refreshed"), Some(1));
}

#[test]
fn another_worker_uses_a_refresh_already_made_for_the_old_cookie() {
    let mut first = Vm::new(login_config());
    first.discover();
    let session = logged_in(&mut first, 20);
    first.envoy.now += 15_000;
    first.browse(30, "GET", "/api/a", &[("cookie", &session)]);
    let (token_id, _) = first.envoy.take_call(TOKEN_CLUSTER).expect("a refresh");
    let fresh = first.token(
        json!({"iss": ISSUER, "aud": "orders", "sub": "alice", "jti": "fresh",
                                   "exp": NOW_S + 3600, "iat": NOW_S}),
    );
    let answer = json!({"access_token": fresh, "token_type": "Bearer", "expires_in": 300,
                        "refresh_token": "rt-rotated"})
    .to_string();
    first.answer(ROOT, token_id, 200, &answer);
    assert!(first.envoy.was_resumed(30));

    // Another worker of the same sidecar: the same shared data, its own state.
    let mut second = Vm::new(login_config());
    // The same provider, so the same signing key.
    std::mem::swap(&mut second.key, &mut first.key);
    second.discover();
    let shared: Vec<(String, (Vec<u8>, u32))> = first
        .envoy
        .shared
        .0
        .borrow()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    second.envoy.shared.0.borrow_mut().extend(shared);
    second.envoy.now = first.envoy.now + 1_000;
    second.browse(31, "GET", "/api/b", &[("cookie", &session)]);
    assert!(
        second.envoy.take_call(TOKEN_CLUSTER).is_none(),
        "the spent refresh token is not used again"
    );
    assert!(
        second.envoy.was_resumed(31),
        "{:?}",
        second.envoy.answer_for(31)
    );
    let edits: Vec<&HeaderEdit> = second
        .envoy
        .request_edits
        .iter()
        .filter(|(c, _)| *c == 31)
        .flat_map(|(_, e)| e)
        .collect();
    assert!(edits.contains(&&HeaderEdit::Set(
        "authorization".into(),
        format!("Bearer {fresh}")
    )));
}

/// Two workers of one sidecar: `first` logged in, `second` with the same signing key and
/// endpoints. Their shared data is one store, copied across at each hand-over (the tests run
/// one worker at a time).
fn two_workers() -> (Vm, Vm, String) {
    let mut first = Vm::new(login_config());
    first.discover();
    let session = logged_in(&mut first, 20);
    let mut second = Vm::new(login_config());
    // The same provider, so the same signing key.
    std::mem::swap(&mut second.key, &mut first.key);
    second.discover();
    std::mem::swap(&mut second.key, &mut first.key);
    share(&first, &second);
    (first, second, session)
}

fn share(from: &Vm, to: &Vm) {
    let records = from.envoy.shared.0.borrow().clone();
    to.envoy.shared.0.replace(records);
}

fn request_edits(vm: &Vm, context: u32) -> Vec<HeaderEdit> {
    vm.envoy
        .request_edits
        .iter()
        .chain(vm.envoy.resumed.iter())
        .filter(|(c, _)| *c == context)
        .flat_map(|(_, e)| e.clone())
        .collect()
}

fn response_cookies(vm: &Vm, context: u32) -> Vec<String> {
    vm.envoy
        .response_edits
        .iter()
        .chain(vm.runtime.as_ref().unwrap().response_edits.iter())
        .filter(|(c, _)| *c == context)
        .flat_map(|(_, e)| e.clone())
        .filter_map(|e| match e {
            HeaderEdit::Add(n, v) if n == "set-cookie" => Some(v),
            _ => None,
        })
        .collect()
}

#[test]
fn a_backchannel_logout_in_one_worker_ends_at_once_a_session_another_worker_found_good() {
    let (mut first, mut second, session) = two_workers();
    // The first worker serves the session, the second time on what it found the first.
    for context in [10, 11] {
        first.browse(context, "GET", "/api/orders", &[("cookie", &session)]);
        assert!(first.envoy.was_resumed(context), "{context}");
    }
    // The OP's back-channel logout reaches the second worker.
    share(&first, &second);
    second.browse(20, "POST", "/oauth2/backchannel-logout", &[]);
    // Signed by the provider's key (the first worker's test key, see `two_workers`).
    let body = format!("logout_token={}", first.logout_token("s-1"));
    second.event(|runtime, host, out| runtime.on_request_body(20, body.as_bytes(), host, out));
    assert_eq!(status(second.envoy.answer_for(20)), Some(200));
    share(&second, &first);
    // The same instant: the first worker refuses the session.
    first.browse(12, "GET", "/api/orders", &[("cookie", &session)]);
    assert_eq!(status(first.envoy.answer_for(12)), Some(401));
    assert_eq!(
        first.envoy.metric("mesh_oauth.session.refused.logged_out"),
        Some(1)
    );
}

#[test]
fn a_refresh_in_one_worker_serves_the_requests_another_worker_holds() {
    let (mut first, mut second, session) = two_workers();
    first.envoy.now += 15_000;
    second.envoy.now = first.envoy.now;
    first.browse(30, "GET", "/api/a", &[("cookie", &session)]);
    let (token_id, _) = first.envoy.take_call(TOKEN_CLUSTER).expect("a refresh");

    // The other worker, while the call is under way: it waits rather than spend the token.
    share(&first, &second);
    let with_theme = format!("{session}; theme=dark");
    second.browse(31, "GET", "/api/b", &[("cookie", &session)]);
    second.browse(32, "GET", "/api/c", &[("cookie", &with_theme)]);
    assert!(
        second.envoy.take_call(TOKEN_CLUSTER).is_none(),
        "one refresh in the sidecar"
    );
    assert_eq!(second.held(), 2);
    assert_eq!(second.envoy.tick_ms, Some(LOGIN_REFRESH_POLL_MS));
    second.envoy.now += LOGIN_REFRESH_POLL_MS;
    second.tick(ROOT);
    assert_eq!(second.held(), 2, "nothing to use yet");
    assert_eq!(second.envoy.tick_ms, Some(LOGIN_REFRESH_POLL_MS));

    let fresh = first.token(
        json!({"iss": ISSUER, "aud": "orders", "sub": "alice", "jti": "fresh",
                                   "exp": NOW_S + 3600, "iat": NOW_S}),
    );
    let answer = json!({"access_token": fresh, "token_type": "Bearer", "expires_in": 300,
                        "refresh_token": "rt-rotated"})
    .to_string();
    first.answer(ROOT, token_id, 200, &answer);
    assert!(first.envoy.was_resumed(30));
    let winner_cookies = response_cookies(&first, 30);
    assert!(!winner_cookies.is_empty());

    // At its next tick the other worker passes the result on: the new token upstream, the
    // new session to each browser, each request with its own cookie header.
    share(&first, &second);
    second.envoy.now += LOGIN_REFRESH_POLL_MS;
    second.tick(ROOT);
    assert_eq!(second.held(), 0);
    assert!(second.envoy.take_call(TOKEN_CLUSTER).is_none());
    for (context, cookie_edit) in [
        (31, HeaderEdit::Remove("cookie".into())),
        (32, HeaderEdit::Set("cookie".into(), "theme=dark".into())),
    ] {
        assert!(
            second.envoy.was_resumed(context),
            "{context}: {:?}",
            second.envoy.answer_for(context)
        );
        let edits = request_edits(&second, context);
        assert!(edits.contains(&HeaderEdit::Set(
            "authorization".into(),
            format!("Bearer {fresh}")
        )));
        assert!(edits.contains(&cookie_edit), "{context}: {edits:?}");
        let cookies = response_cookies(&second, context);
        assert!(
            cookies
                .iter()
                .any(|c| c.starts_with("__Host-mesh-session.") && !c.contains("Max-Age=0")),
            "{context}: the new session goes back to this browser too: {cookies:?}"
        );
        // The same session the winner's browser got (sealed once, shared sealed).
        let value = |c: &String| c.split(';').next().unwrap_or("").to_owned();
        assert_eq!(
            cookies.iter().map(value).collect::<Vec<_>>(),
            winner_cookies.iter().map(value).collect::<Vec<_>>()
        );
    }
    assert_eq!(first.envoy.metric("mesh_oauth.session.refreshed"), Some(1));
    assert_eq!(second.envoy.count("mesh_oauth.session.refreshed"), 0);
    // The tick slows down again once nobody waits.
    assert_eq!(second.envoy.tick_ms, Some(TICK_MS));
}

#[test]
fn a_refresh_that_failed_in_one_worker_ends_the_session_in_another_without_a_second_call() {
    let (mut first, mut second, session) = two_workers();
    // Past the token's life: a failed refresh ends the session.
    first.envoy.now += 25_000;
    second.envoy.now = first.envoy.now;
    first.browse(40, "GET", "/api/a", &[("cookie", &session)]);
    let (token_id, _) = first.envoy.take_call(TOKEN_CLUSTER).expect("a refresh");
    share(&first, &second);
    second.browse(41, "GET", "/api/b", &[("cookie", &session)]);
    assert_eq!(second.held(), 1);
    first.answer(ROOT, token_id, 400, r#"{"error":"invalid_grant"}"#);
    assert_eq!(status(first.envoy.answer_for(40)), Some(401));
    share(&first, &second);
    second.envoy.now += LOGIN_REFRESH_POLL_MS;
    second.tick(ROOT);
    assert!(
        second.envoy.take_call(TOKEN_CLUSTER).is_none(),
        "no second call"
    );
    assert_eq!(status(second.envoy.answer_for(41)), Some(401));
    let cleared = second
        .envoy
        .answer_for(41)
        .map(|r| {
            r.headers
                .iter()
                .any(|(n, v)| n == "set-cookie" && v.contains("Max-Age=0"))
        })
        .unwrap_or(false)
        || response_cookies(&second, 41)
            .iter()
            .any(|c| c.contains("Max-Age=0"));
    assert!(cleared, "the session cookie is cleared");
    assert_eq!(first.envoy.count("mesh_oauth.session.refresh_failed"), 1);
    // The audit line says why, with a name from the one list of login reasons.
    assert!(first
        .envoy
        .logged(r#"{"login":"session.refresh_failed","reason":"token_refused"}"#));
    assert_eq!(second.envoy.count("mesh_oauth.session.refresh_failed"), 0);
}

#[test]
fn a_worker_that_never_answers_leaves_the_refresh_to_another_after_its_lease() {
    let (mut first, mut second, session) = two_workers();
    first.envoy.now += 15_000;
    second.envoy.now = first.envoy.now;
    first.browse(50, "GET", "/api/a", &[("cookie", &session)]);
    assert!(first.envoy.take_call(TOKEN_CLUSTER).is_some());
    // `first` is gone (its VM restarted, say): its call never answers.
    share(&first, &second);
    second.browse(51, "GET", "/api/b", &[("cookie", &session)]);
    assert_eq!(second.held(), 1);
    let mut ticks = 0u64;
    while second.envoy.take_call(TOKEN_CLUSTER).is_none() {
        ticks += 1;
        assert!(ticks < 1_000, "never refreshed");
        second.envoy.now += LOGIN_REFRESH_POLL_MS;
        second.tick(ROOT);
    }
    // Not before the lease (the call's timeout and a margin) ran out.
    assert!(ticks * LOGIN_REFRESH_POLL_MS >= 2_000, "{ticks}");
    assert!(
        second.envoy.answer_for(51).is_none(),
        "held for its own call"
    );
}
