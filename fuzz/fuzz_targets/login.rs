//! Browser login's inputs from the browser: the `Cookie` header and the callback's query, and
//! the return path. The first byte picks the case (modulo 3):
//! 0 — the rest is `<callback query>\n<cookie header>`: the callback must answer with a 4xx
//!     page (no transaction can be forged without the cookie key), a page request must never
//!     get a bearer token from a forged session, and no login cookie may stay in the header;
//! 1 — the rest is a request target: its return path stays on this origin and is stable;
//! 2 — the rest flips bits of a sealed session cookie: any change must fail to open.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use mesh_oauth::authorize::HeaderEdit;
use mesh_oauth::config;
use mesh_oauth::login::endpoints::Endpoints;
use mesh_oauth::login::flow::{Context, Flow, NoLogouts, NoRefreshes, Request, Step};
use mesh_oauth::login::seal::{Binding, KeyRing};
use mesh_oauth::login::{cookies, return_path};

const HOST: &str = "app.example.com";
const NOW: u64 = 1_700_000_000;

/// One flow per thread (libFuzzer runs one): a flow keeps its opened sessions in a `RefCell`.
fn flow() -> &'static Flow {
    thread_local! {
        static FLOW: &'static Flow = Box::leak(Box::new(make_flow()));
    }
    FLOW.with(|flow| *flow)
}

fn make_flow() -> Flow {
    {
        let cfg =
            config::parse(r#"{"providers":[{"name":"op","issuer":"https://op.example.com"}]}"#)
                .expect("config");
        let login = serde_json::json!({
            "provider": "op", "clientId": "app", "clientSecretEnv": "S",
            "cookieKeysEnv": "K", "hosts": [HOST]
        });
        let env = |name: &str| match name {
            "S" => Some("secret".to_owned()),
            "K" => Some(URL_SAFE_NO_PAD.encode([3u8; 32])),
            _ => None,
        };
        let login = config::parse_login_section(&login, &cfg.providers, &env)
            .expect("login")
            .remove(0);
        Flow::new(&login, &cfg.providers[0], &cfg.limits).expect("flow")
    }
}

fn endpoints() -> Endpoints {
    Endpoints {
        authorization: "https://op.example.com/auth".to_owned(),
        token: config::http_target("https://op.example.com/token", None).expect("target"),
        end_session: None,
        iss_parameter_supported: true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => browser_input(rest),
        1 => return_target(rest),
        _ => tampered_session(rest),
    }
});

fn browser_input(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    let (query, cookie) = text.split_once('\n').unwrap_or((text, ""));
    let callback = format!("/oauth2/callback?{query}");
    let headers = [("cookie", cookie), ("sec-fetch-mode", "navigate")];
    let endpoints = endpoints();
    let mut counter = 0u8;
    let mut random = |buf: &mut [u8]| {
        for byte in buf {
            counter = counter.wrapping_add(1);
            *byte = counter;
        }
    };
    let mut ctx = Context {
        now: NOW,
        endpoints: Some(&endpoints),
        keys: None,
        logouts: &NoLogouts,
        refreshes: &NoRefreshes,
        random: &mut random,
    };
    let request = |path| Request {
        method: "GET",
        authority: HOST,
        path,
        headers: &headers,
    };
    match flow().on_request(&request(&callback), &mut ctx) {
        Step::Respond(answer) => {
            assert!(
                (400..500).contains(&answer.status),
                "callback answered {}",
                answer.status
            );
            assert!(answer.headers.iter().all(|(name, _)| name != "location"));
        }
        _ => panic!("a forged callback went further than a 4xx page"),
    }
    match flow().on_request(&request("/page"), &mut ctx) {
        Step::Continue(next) => {
            for edit in &next.edits {
                match edit {
                    HeaderEdit::Set(name, value) => {
                        assert_ne!(name, "authorization", "a forged session gave a token");
                        // What goes upstream names no login cookie (a value may hold the text).
                        for pair in value.split(';') {
                            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
                            assert!(!name.trim().starts_with(cookies::LOGIN_COOKIE_PREFIX));
                        }
                    }
                    HeaderEdit::Remove(_) | HeaderEdit::Add(..) => {}
                }
            }
            if next.edits.is_empty() {
                assert!(
                    !cookie.contains(cookies::LOGIN_COOKIE_PREFIX),
                    "login cookie left in"
                );
            }
        }
        _ => panic!("a page request was not continued"),
    }
}

fn return_target(bytes: &[u8]) {
    let Ok(raw) = std::str::from_utf8(bytes) else {
        return;
    };
    let path = return_path::sanitize(raw);
    assert!(path.starts_with('/'), "{path:?}");
    assert!(
        !path.starts_with("//") && !path.starts_with("/\\"),
        "{path:?}"
    );
    assert!(path.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{path:?}");
    assert_eq!(return_path::sanitize(&path), path, "not stable");
}

fn tampered_session(mask: &[u8]) {
    let keys = KeyRing::new(&[[3u8; 32]]).expect("ring");
    let binding = Binding {
        host: HOST,
        cookie: cookies::SESSION_COOKIE,
    };
    let sealed = keys.seal(br#"{"t":"token"}"#, NOW + 60, binding, [9; 12]);
    let (id, body) = sealed.split_once('.').expect("sealed");
    let mut bytes = URL_SAFE_NO_PAD.decode(body).expect("base64url");
    let mut changed = false;
    for (byte, flip) in bytes.iter_mut().zip(mask) {
        *byte ^= flip;
        changed |= *flip != 0;
    }
    let tampered = format!("{id}.{}", URL_SAFE_NO_PAD.encode(&bytes));
    assert_eq!(keys.open(&tampered, binding, NOW).is_ok(), !changed);
}
