//! `mesh-oauth explain` on a configuration with `login` (issue 28): session cookies sealed with
//! the module's own code (what the filter sets), opened by explain with the key ring from its
//! environment; callbacks; navigations without a token. Nothing secret in what it prints.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::{rs256, rsa_jwks, rsa_key, run_command, scratch, Run, BIN, NOW};
use mesh_oauth::login::seal::KeyRing;
use mesh_oauth::login::session::Session;
use mesh_oauth::login::transaction::{Transaction, TRANSACTION_RANDOM_LEN};
use serde_json::{json, Value};
use std::process::Command;

const ISSUER: &str = "https://op.example.com";
/// The OP's signing key's id.
const OP_KID: &str = "op-1";
const APP: &str = "app.example.com";
const OTHER: &str = "other.example.com";
const KEY_A: [u8; 32] = [1; 32];
const KEY_B: [u8; 32] = [2; 32];
const NAVIGATE: &[&str] = &["--request-header", "sec-fetch-mode: navigate"];
const API: &[&str] = &["--request-header", "accept: application/json"];

/// explain with `COOKIE_KEYS` set to `keys` (none: unset) and `stdin`.
fn run(args: &[&str], keys: &[[u8; 32]], stdin: &str) -> Run {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("COOKIE_KEYS");
    if !keys.is_empty() {
        let ring: Vec<String> = keys.iter().map(|k| STANDARD.encode(k)).collect();
        command.env("COOKIE_KEYS", ring.join(","));
    }
    run_command(&mut command, stdin)
}

fn jwks() -> String {
    rsa_jwks(&rsa_key(), OP_KID)
}

/// An access token as the OP would mint it, valid until `exp`.
fn access_token(exp: u64) -> String {
    let claims = json!({"iss": ISSUER, "aud": "web-api", "sub": "alice", "iat": NOW - 60,
        "exp": exp, "scope": "orders:read"});
    rs256(&rsa_key(), OP_KID, &claims)
}

fn config(login: Value) -> Value {
    let mut login_entry = json!({
        "provider": "op", "clientId": "web-app", "clientSecretEnv": "CLIENT_SECRET",
        "cookieKeysEnv": "COOKIE_KEYS",
        "hosts": [format!("https://{APP}"), format!("https://{OTHER}")],
        "sessionRecheckSeconds": 900
    });
    for (name, value) in login.as_object().unwrap() {
        login_entry[name] = value.clone();
    }
    json!({
        "providers": [{"name": "op", "issuer": ISSUER, "audiences": ["web-api"]}],
        "rules": [
            {"name": "public", "match": {"paths": ["/public/*"]}, "allowAnonymous": true},
            {"name": "orders", "match": {"paths": ["/orders/*"]}, "requires": {"scopes": ["orders:read"]}}
        ],
        "login": login_entry
    })
}

/// A session as the filter seals it after a login at `NOW - 60`.
struct Sealed {
    token: String,
    refresh_token: String,
    cookie: String,
}

fn session(keys: &[[u8; 32]], host: &str, token_exp: u64, cookie_exp: u64) -> Sealed {
    let token = access_token(token_exp);
    let refresh_token = "the-refresh-token-value".to_owned();
    let session = Session {
        token: token.clone(),
        refresh_token: Some(refresh_token.clone()),
        sub: "alice".to_owned(),
        sid: Some("op-session-1".to_owned()),
        token_expires_at: token_exp,
        authenticated_at: NOW - 60,
        refreshed_at: NOW - 60,
        id_token_hint: None,
    };
    let ring = KeyRing::new(keys).unwrap();
    let chunks = session.seal(&ring, host, cookie_exp, [3; 12]).unwrap();
    let cookie: Vec<String> = chunks.iter().map(|(n, v)| format!("{n}={v}")).collect();
    Sealed {
        token,
        refresh_token,
        cookie: format!("theme=dark; {}", cookie.join("; ")),
    }
}

fn key_id(key: [u8; 32]) -> String {
    KeyRing::new(&[key]).unwrap().sealing_key_id().to_owned()
}

/// explain of a request to `path` on `host` with the Cookie header `cookie` (given on stdin).
fn explain(
    case: &str,
    login: Value,
    host: &str,
    path: &str,
    cookie: &str,
    keys: &[[u8; 32]],
    extra: &[&str],
) -> Run {
    let config = scratch(&format!("{case}.json"), &config(login).to_string());
    let jwks = scratch(&format!("{case}.jwks.json"), &jwks());
    let now = NOW.to_string();
    let mut args = vec![
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
        "--now",
        &now,
        "--host",
        host,
        "--path",
        path,
    ];
    if !cookie.is_empty() {
        args.extend(["--cookie", "-"]);
    }
    args.extend_from_slice(extra);
    run(&args, keys, cookie)
}

/// Nothing of the session, its tokens or its cookie values is printed.
fn assert_secret_free(out: &Run, sealed: &Sealed) {
    let text = format!("{}{}", out.stdout, out.stderr);
    let signature = sealed.token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature), "the token was printed:\n{text}");
    assert!(
        !text.contains(&sealed.refresh_token),
        "the refresh token was printed:\n{text}"
    );
    for pair in sealed
        .cookie
        .split("; ")
        .filter(|p| p.starts_with("__Host-"))
    {
        let value = pair.split_once('=').unwrap().1;
        let body = value.split_once('.').unwrap().1;
        assert!(
            !text.contains(&body[..16.min(body.len())]),
            "a cookie value was printed:\n{text}"
        );
    }
    assert!(
        !text.contains("op-session-1"),
        "the sid was printed:\n{text}"
    );
}

fn has(out: &Run, needle: &str) {
    assert!(
        out.stdout.contains(needle),
        "no {needle:?} in:\n{}{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn a_valid_session_is_opened_and_its_token_decided_by_the_rules() {
    let sealed = session(&[KEY_A], APP, NOW + 240, NOW + 3600);
    let out = explain(
        "valid",
        json!({}),
        APP,
        "/orders/7",
        &sealed.cookie,
        &[KEY_A],
        API,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    has(
        &out,
        &format!(
            "opens with key {} (the sealing key), bound to host {APP}: authentic",
            key_id(KEY_A)
        ),
    );
    has(
        &out,
        "cookie keys: 1 from COOKIE_KEYS in explain's environment",
    );
    has(&out, "refresh: not due");
    has(
        &out,
        "the filter: forwards the session's token to the pipeline",
    );
    has(
        &out,
        "upstream: cookie header without the login cookies (keeps theme)",
    );
    has(&out, "token: the session's, ");
    has(&out, "final: allowed: the request goes on upstream");
    assert_secret_free(&out, &sealed);
}

#[test]
fn a_tampered_session_is_refused_and_a_navigation_sent_to_log_in() {
    let sealed = session(&[KEY_A], APP, NOW + 240, NOW + 3600);
    // Flip one character of the sealed value (after the key id).
    let at = sealed.cookie.find("__Host-mesh-session.0=").unwrap() + 40;
    let mut tampered = sealed.cookie.clone().into_bytes();
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let api = explain(
        "tampered-api",
        json!({}),
        APP,
        "/orders/7",
        &tampered,
        &[KEY_A],
        API,
    );
    assert_eq!(api.code, 0, "{}", api.stderr);
    has(
        &api,
        "its tag does not verify: tampered, truncated or chunks reordered",
    );
    has(&api, "login event: session.refused.tampered");
    has(&api, "response: set-cookie clears __Host-mesh-session.0");
    has(
        &api,
        "navigation: no (Accept \"application/json\" does not prefer text/html)",
    );
    has(&api, "final: 401 Unauthorized (missing)");
    let nav = explain(
        "tampered-nav",
        json!({}),
        APP,
        "/orders/7?page=2",
        &tampered,
        &[KEY_A],
        NAVIGATE,
    );
    assert_eq!(nav.code, 0, "{}", nav.stderr);
    has(&nav, "navigation: yes (GET with Sec-Fetch-Mode: navigate)");
    has(&nav, "final: 302 Found: sent to log in");
    has(&nav, "state=<fresh, 256 random bits>");
    has(&nav, "code_challenge_method=S256");
    has(&nav, "redirect_uri=https://app.example.com/oauth2/callback");
    has(&nav, "login event: login.started");
    has(
        &nav,
        "after the login the browser comes back to /orders/7?page=2",
    );
    // The audit line keeps the pipeline's refusal, as the filter's does.
    has(&nav, r#""decision":"deny""#);
    assert_secret_free(&nav, &sealed);
}

#[test]
fn an_expired_session_says_when_it_ended() {
    let sealed = session(&[KEY_A], APP, NOW - 100, NOW - 30);
    let out = explain(
        "expired",
        json!({}),
        APP,
        "/orders/7",
        &sealed.cookie,
        &[KEY_A],
        API,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    has(&out, "cookie expired at 2023-11-14T22:12:50Z (30 s ago)");
    has(&out, "login event: session.refused.expired");
    has(&out, "final: 401 Unauthorized (missing)");
    assert_secret_free(&out, &sealed);
}

#[test]
fn a_retired_key_and_an_older_key_of_the_ring() {
    let sealed = session(&[KEY_A], APP, NOW + 240, NOW + 3600);
    let retired = explain(
        "retired",
        json!({}),
        APP,
        "/orders/7",
        &sealed.cookie,
        &[KEY_B],
        API,
    );
    assert_eq!(retired.code, 0, "{}", retired.stderr);
    has(
        &retired,
        &format!(
            "key id \"{}\" is not in the ring: a retired key",
            key_id(KEY_A)
        ),
    );
    has(&retired, "login event: session.refused.unknown_key");
    let rotated = explain(
        "rotated",
        json!({}),
        APP,
        "/orders/7",
        &sealed.cookie,
        &[KEY_B, KEY_A],
        API,
    );
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    has(&rotated, &format!("opens with key {}, an older key of the ring (still opens; renewed cookies are sealed by {})", key_id(KEY_A), key_id(KEY_B)));
    has(&rotated, "final: allowed");
    assert_secret_free(&rotated, &sealed);
}

#[test]
fn a_session_from_another_host_is_named_as_such() {
    let sealed = session(&[KEY_A], OTHER, NOW + 240, NOW + 3600);
    let out = explain(
        "cross-host",
        json!({}),
        APP,
        "/orders/7",
        &sealed.cookie,
        &[KEY_A],
        API,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    has(&out, "sealed for host other.example.com, not app.example.com: a cookie carried to another host (cross-host): refused");
    has(&out, "login event: session.refused.tampered");
    assert_secret_free(&out, &sealed);
}

#[test]
fn a_due_refresh_or_recheck_is_shown_and_not_made() {
    let expiring = session(&[KEY_A], APP, NOW + 5, NOW + 3600);
    let out = explain(
        "refresh",
        json!({}),
        APP,
        "/orders/7",
        &expiring.cookie,
        &[KEY_A],
        API,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    has(&out, "refresh: due: the token expires within 10 s");
    has(
        &out,
        "POSTs the session's refresh token to the token endpoint",
    );
    has(&out, "explain does not call it");
    has(
        &out,
        "if the OP refuses it (invalid_grant): the session ends (session.refresh_failed)",
    );
    has(
        &out,
        "if the OP does not answer: the session's current token is still valid",
    );
    has(&out, "final: allowed");
    assert_secret_free(&out, &expiring);
    let recheck = session(&[KEY_A], APP, NOW + 240, NOW + 3600);
    let out = explain(
        "recheck",
        json!({"sessionRecheckSeconds": 30}),
        APP,
        "/orders/7",
        &recheck.cookie,
        &[KEY_A],
        API,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    has(
        &out,
        "recheck: due: sessionRecheckSeconds (30 s) have passed",
    );
    assert_secret_free(&out, &recheck);
}

#[test]
fn no_token_on_a_login_host_a_navigation_logs_in_anything_else_gets_the_401() {
    let nav = explain(
        "nav",
        json!({}),
        APP,
        "/orders/7",
        "",
        &[KEY_A],
        &[
            "--request-header",
            "accept: text/html,application/xhtml+xml",
        ],
    );
    assert_eq!(nav.code, 0, "{}", nav.stderr);
    has(&nav, "session: no session cookie");
    has(
        &nav,
        "navigation: yes (GET with Accept preferring text/html, no Fetch Metadata)",
    );
    has(&nav, "final: 302 Found: sent to log in");
    let post = explain(
        "post",
        json!({}),
        APP,
        "/orders/7",
        "",
        &[KEY_A],
        &[
            "--method",
            "POST",
            "--request-header",
            "sec-fetch-mode: navigate",
        ],
    );
    has(
        &post,
        "navigation: no (method POST: only GET and HEAD navigate)",
    );
    has(&post, "final: 401 Unauthorized (missing)");
    let fetch = explain(
        "fetch",
        json!({}),
        APP,
        "/orders/7",
        "",
        &[KEY_A],
        &["--request-header", "sec-fetch-mode: cors"],
    );
    has(
        &fetch,
        "navigation: no (Sec-Fetch-Mode: cors, not navigate)",
    );
    // An open-redirect target comes back to the root.
    let evil = explain(
        "evil",
        json!({}),
        APP,
        "//evil.example/x",
        "",
        &[KEY_A],
        NAVIGATE,
    );
    has(&evil, "final: 302 Found: sent to log in");
    has(
        &evil,
        "after the login the browser comes back to / (same-origin paths only",
    );
    // A public page needs no token: nobody is sent to log in.
    let public = explain(
        "public",
        json!({}),
        APP,
        "/public/x",
        "",
        &[KEY_A],
        NAVIGATE,
    );
    has(&public, "final: allowed");
}

/// A login this browser started: its transaction cookie and `state`.
fn transaction(keys: &[[u8; 32]], return_path: &str) -> (String, String) {
    let ring = KeyRing::new(keys).unwrap();
    let random = [9u8; TRANSACTION_RANDOM_LEN];
    let (tx, name, sealed) =
        Transaction::start(return_path.to_owned(), NOW - 30, &random, &ring, APP);
    (tx.state, format!("{name}={sealed}"))
}

fn callback(case: &str, query: &str, cookie: &str, extra: &[&str]) -> Run {
    let discovery = scratch(
        &format!("{case}.discovery.json"),
        &json!({
            "issuer": ISSUER, "authorization_endpoint": format!("{ISSUER}/authorize"),
            "token_endpoint": format!("{ISSUER}/token"), "jwks_uri": format!("{ISSUER}/jwks"),
            "authorization_response_iss_parameter_supported": true
        })
        .to_string(),
    );
    let path = format!("/oauth2/callback?{query}");
    let mut args = vec!["--discovery", discovery.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = explain(case, json!({}), APP, &path, cookie, &[KEY_A], &args);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out
}

#[test]
fn a_callback_shows_each_check_before_the_token_call() {
    let (state, cookie) = transaction(&[KEY_A], "/orders/7");
    let code = "the-authorization-code-value";
    let iss = "https%3A%2F%2Fop.example.com";
    let good = callback(
        "cb-good",
        &format!("code={code}&state={state}&iss={iss}"),
        &cookie,
        &[],
    );
    has(
        &good,
        "request: GET /oauth2/callback?code=<28 chars>&state=<43 chars>&iss=<28 chars>",
    );
    has(&good, "state: matches this browser's transaction");
    has(&good, "it returns to /orders/7");
    has(&good, "iss (RFC 9207): the provider's issuer: pass");
    has(
        &good,
        "next: the filter redeems the code: POST to https://op.example.com/token",
    );
    has(&good, "explain cannot redeem it");
    has(&good, "client authentication client_secret_basic");
    {
        let out = &good;
        assert!(
            !out.stdout.contains(code) && !out.stdout.contains(&state),
            "{}",
            out.stdout
        );
        assert!(
            !out.stdout.contains(cookie.split_once('=').unwrap().1),
            "{}",
            out.stdout
        );
    }
    let missing_iss = callback(
        "cb-no-iss",
        &format!("code={code}&state={state}"),
        &cookie,
        &[],
    );
    has(&missing_iss, "absent, but the OP advertises authorization_response_iss_parameter_supported: refused (iss)");
    has(&missing_iss, "final: 400 Bad Request");
    has(&missing_iss, "login event: login.failed.iss");
    let wrong_iss = callback(
        "cb-wrong-iss",
        &format!("code={code}&state={state}&iss=https%3A%2F%2Fevil.example"),
        &cookie,
        &[],
    );
    has(
        &wrong_iss,
        "\"https://evil.example\" is not the provider's issuer: refused (iss)",
    );
    let stranger = callback(
        "cb-stranger",
        &format!("code={code}&state={state}&iss={iss}"),
        "theme=dark",
        &[],
    );
    has(
        &stranger,
        "state: no transaction cookie of this browser is for it (0 other transaction cookies)",
    );
    has(&stranger, "login event: login.failed.state");
    let denied = callback(
        "cb-error",
        &format!("error=access_denied&state={state}&iss={iss}"),
        &cookie,
        &[],
    );
    has(
        &denied,
        "error: the OP answered access_denied: shown as a page, never a redirect",
    );
    has(&denied, "final: 403 Forbidden");
    has(&denied, "login event: login.failed.provider_error");
    has(&denied, "response: set-cookie clears __Host-mesh-tx.");
}

#[test]
fn the_cookie_header_comes_from_stdin_a_file_or_argv_and_the_keys_from_the_environment() {
    let sealed = session(&[KEY_A], APP, NOW + 240, NOW + 3600);
    let config = scratch("forms.json", &config(json!({})).to_string());
    let file = scratch("forms.cookie", &format!("Cookie: {}\n", sealed.cookie));
    let now = NOW.to_string();
    let base = [
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--now",
        &now,
        "--host",
        APP,
        "--path",
        "/public/x",
    ];
    let at_file = format!("@{}", file.to_str().unwrap());
    for (cookie, stdin) in [
        (at_file.as_str(), ""),
        ("-", sealed.cookie.as_str()),
        (sealed.cookie.as_str(), ""),
    ] {
        let mut args = base.to_vec();
        args.extend(["--cookie", cookie]);
        let out = run(&args, &[KEY_A], stdin);
        assert_eq!(out.code, 0, "{}", out.stderr);
        has(
            &out,
            "(the sealing key), bound to host app.example.com: authentic",
        );
    }
    // Without the keys, a login cookie cannot be opened: said, naming the variable.
    let mut args = base.to_vec();
    args.extend(["--cookie", "-"]);
    let out = run(&args, &[], &sealed.cookie);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("set COOKIE_KEYS in explain's environment"),
        "{}",
        out.stderr
    );
    // Both from standard input: refused.
    args.extend(["--token", "-"]);
    assert_eq!(run(&args, &[KEY_A], "").code, 2);
    // `--cookie NAME` still places the token in a cookie.
    let mut args = base.to_vec();
    args.extend(["--cookie", "session", "--token", "abc.def.ghi"]);
    let out = run(&args, &[KEY_A], "");
    has(&out, "sent as cookie `session=<token>`");
}

#[test]
fn a_logout_names_the_id_token_hint_without_showing_it() {
    let sealed = session(&[KEY_A], APP, NOW + 240, NOW + 3600);
    let discovery = scratch("logout.discovery.json", &json!({
        "issuer": ISSUER, "authorization_endpoint": format!("{ISSUER}/authorize"),
        "token_endpoint": format!("{ISSUER}/token"), "end_session_endpoint": format!("{ISSUER}/logout")
    }).to_string());
    let out = explain(
        "logout",
        json!({"forward": "id_token"}),
        APP,
        "/oauth2/logout",
        &sealed.cookie,
        &[KEY_A],
        &[
            "--method",
            "POST",
            "--request-header",
            "origin: https://app.example.com",
            "--discovery",
            discovery.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    has(&out, "final: 302 Found");
    has(&out, "location: https://op.example.com/logout");
    has(&out, "id_token_hint=<the session's ID token>");
    has(&out, "login event: session.logout");
    assert_secret_free(&out, &sealed);
}
