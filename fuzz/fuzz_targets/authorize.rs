//! The whole decision for one request, as the filter calls it, with the fixed configuration.
//! Input is text: the method, `:path` and `:authority` on the first three lines, then one
//! `name: value` header per line, so seeds are readable requests carrying real tokens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::alg::AlgSet;
use mesh_oauth::authorize::{self, HeaderEdit, Outcome, Request};
use mesh_oauth::cache::TokenCache;
use mesh_oauth::keystore::KeyStore;
use mesh_oauth::token::{self, TokenLimits};
use mesh_oauth::{path, verify};
use mesh_oauth_fuzz::{config, key_set, NOW};
use std::cell::RefCell;
use std::sync::OnceLock;

thread_local! {
    /// Warm across inputs, so the cached path is fuzzed too.
    static CACHE: RefCell<TokenCache> = RefCell::new(TokenCache::new(64));
}

fn store() -> &'static KeyStore {
    static STORE: OnceLock<KeyStore> = OnceLock::new();
    STORE.get_or_init(|| KeyStore::new(config(), None, 1))
}

/// Whether any whitespace-separated piece of the token headers is a token our keys signed:
/// what must be true of every request allowed on a route that needs a token.
fn carries_signed_token(headers: &[(String, String)]) -> bool {
    let limits = TokenLimits::from(&config().limits);
    headers
        .iter()
        .filter(|(name, _)| name == "authorization" || name == "x-jwt")
        .flat_map(|(_, value)| value.split_ascii_whitespace())
        .filter_map(|piece| token::parse(piece, &limits).ok())
        .any(|jws| {
            verify::verify(
                jws.header.alg,
                jws.header.kid.as_deref(),
                jws.signing_input,
                &jws.signature,
                key_set(),
                AlgSet::all(),
            )
            .is_ok()
        })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let (Some(method), Some(raw_path), Some(authority)) =
        (lines.next(), lines.next(), lines.next())
    else {
        return;
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim_start().to_string()))
        .collect();
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let request = Request {
        method,
        scheme: "https",
        path: raw_path,
        authority,
        headers: &header_refs,
        peer: &mesh_oauth::peer::NoPeer,
    };
    let outcome = CACHE.with_borrow_mut(|cache| {
        authorize::authorize(config(), store(), cache, &request, NOW * 1000).outcome
    });
    let Outcome::Allow(allowed) = outcome else {
        return;
    };
    assert_eq!(
        allowed.would_deny, None,
        "enforce mode reported a would-be denial"
    );
    // Identity headers are cleared first, whatever else happens.
    assert_eq!(
        allowed.edits.get(..2),
        Some(
            &[
                HeaderEdit::Remove("x-jwt-payload".to_string()),
                HeaderEdit::Remove("x-sub".to_string()),
            ][..]
        )
    );
    for edit in &allowed.edits {
        if let HeaderEdit::Set(name, value) = edit {
            assert!(
                !value.bytes().any(|b| b.is_ascii_control()),
                "control character in {name}"
            );
        }
    }
    let preflight = method == "OPTIONS"
        && headers.iter().any(|(n, _)| n == "origin")
        && headers
            .iter()
            .any(|(n, _)| n == "access-control-request-method");
    let anonymous = path::normalize(raw_path).is_ok_and(|p| p.starts_with("/public/"));
    if !preflight && !anonymous {
        assert!(
            carries_signed_token(&headers),
            "allowed without a signed token"
        );
    }
});
