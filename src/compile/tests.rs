//! Compiling: what only a stage can check, and derived state that follows its configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::keystore::KeyStore;
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example.com";
const INLINE_JWKS: &str =
    r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE"}]}"#;

fn problem(json: &str) -> String {
    match configure(json) {
        Ok(_) => panic!("config accepted: {json}"),
        Err(e) => e.to_string(),
    }
}

fn assert_problem(json: &str, expected: &str) {
    assert_eq!(problem(json), expected, "config: {json}");
}

fn provider_config(provider: Value) -> String {
    let mut base = json!({"issuer": ISSUER});
    for (key, value) in provider.as_object().unwrap() {
        base[key] = value.clone();
    }
    json!({ "providers": [base] }).to_string()
}

fn inline_jwks(jwks: Value) -> String {
    provider_config(json!({"jwks": jwks}))
}

#[test]
fn inline_jwks_that_is_not_a_key_set_is_refused() {
    assert_problem(
        &inline_jwks(json!("{\"keys\": [")),
        "providers[0].jwks: key set document is not JSON",
    );
    assert_problem(
        &inline_jwks(json!("[]")),
        "providers[0].jwks: key set document has no keys array",
    );
    assert_problem(
        &inline_jwks(json!("{\"kty\": \"oct\"}")),
        "providers[0].jwks: key set document has no keys array",
    );
    assert_problem(
        &inline_jwks(json!("{\"keys\": {}}")),
        "providers[0].jwks: key set document has no keys array",
    );
    assert_problem(
        &inline_jwks(json!(
            "{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}"
        )),
        "providers[0].jwks: key set document has no usable signing key",
    );
}

#[test]
fn errors_never_quote_inline_keys() {
    let secret = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE";
    let broken = format!("{{\"keys\": [{{\"kty\": \"oct\", \"k\": \"{secret}\"");
    let message = problem(&inline_jwks(json!(broken)));
    assert!(!message.contains(secret), "{message}");
}

#[test]
fn dpop_origins_are_compiled_to_their_normal_form() {
    let compiled = configure(&provider_config(json!({
        "jwksUri": "https://idp.example.com/jwks",
        "dpop": {"mode": "allowed",
                 "origins": ["HTTPS://API.example.com:443", "http://localhost:8080"]}
    })))
    .unwrap();
    assert_eq!(
        compiled.providers[0].dpop.origins,
        Some(vec![
            "https://api.example.com".to_owned(),
            "http://localhost:8080".to_owned()
        ])
    );
    let got = problem(&provider_config(json!({
        "jwksUri": "https://idp.example.com/jwks",
        "dpop": {"origins": ["https://api.example.com/v1"]}
    })));
    assert!(
        got.starts_with("providers[0].dpop.origins[0]: expected an origin"),
        "{got}"
    );
    let got = problem(&provider_config(json!({
        "jwksUri": "https://idp.example.com/jwks",
        "dpop": {"origins": ["https://ok.example.com", "https://api.example.com/v1"]}
    })));
    assert!(
        got.starts_with("providers[0].dpop.origins[1]: expected an origin"),
        "{got}"
    );
}

#[test]
fn inline_keys_are_parsed_once_and_shared_with_the_key_store() {
    let compiled = configure(&inline_jwks(json!(INLINE_JWKS))).unwrap();
    let Some(Some(set)) = compiled.inline_keys.first() else {
        panic!("no inline key set compiled");
    };
    assert_eq!(set.len(), 1);
    let _store = KeyStore::new(&compiled, None, 1);
    assert_eq!(
        Arc::strong_count(set),
        2,
        "the store holds the compiled set"
    );
}

#[test]
fn derived_state_follows_the_configuration_it_is_compiled_from() {
    let rules: Vec<Value> = (0..20)
        .map(|i| {
            json!({"match": {"paths": [format!("/svc{i}/*")]},
                   "requires": {"scopes": [format!("svc{i}")]}})
        })
        .collect();
    let compiled = configure(
        &json!({
            "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks"}],
            "rules": rules,
            "protectedResource": {"resource": "https://api.example.com"}
        })
        .to_string(),
    )
    .unwrap();
    let resource = compiled.resource_for("api.example.com").unwrap();
    assert_eq!(resource.scopes_supported.len(), 20);
    assert_eq!(resource.authorization_servers, [ISSUER]);
    assert_eq!(compiled.rule_index.candidates(20, "/svc3/a").count(), 1);

    // A configuration changed by hand (as `explain` probes one without rules) compiles anew:
    // nothing of the rules it no longer has remains.
    let without_rules = compile(Config {
        rules: Vec::new(),
        ..compiled.config.clone()
    })
    .unwrap();
    let resource = without_rules.resource_for("api.example.com").unwrap();
    assert!(resource.scopes_supported.is_empty());
    assert_eq!(without_rules.rule_index.candidates(0, "/svc3/a").count(), 0);
}

#[test]
fn resources_are_chosen_by_host_else_the_default() {
    let compiled = configure(
        &json!({
            "providers": [{"issuer": ISSUER, "jwksUri": "https://idp.example.com/jwks"}],
            "protectedResource": [
                {"resource": "https://a.example.com", "hosts": ["a.example.com", "*.a.example.com"]},
                {"resource": "https://default.example.com"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let resource_of = |authority| compiled.resource_for(authority).unwrap().resource.as_str();
    assert_eq!(resource_of("a.example.com:8443"), "https://a.example.com");
    assert_eq!(resource_of("x.a.example.com"), "https://a.example.com");
    assert_eq!(resource_of("b.example.com"), "https://default.example.com");
}
