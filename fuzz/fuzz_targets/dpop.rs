//! DPoP proofs whose header and claims come from the fuzzer, signed with a fixed key, so the
//! checks after the signature are reached: none may panic, and a proof that passes names the
//! request's method and URI and the token's hash, and binds the key that signed it.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mesh_oauth::authorize::Request;
use mesh_oauth::config;
use mesh_oauth::peer::NoPeer;
use mesh_oauth::sender::dpop::{check_proof, thumbprint};
use mesh_oauth::token::TokenLimits;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Map, Value};

const NOW: u64 = 1_700_000_000;
const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("fixed seed");
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key().as_ref())});
    let (header_part, claims_part) = match data.iter().position(|b| *b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&[][..], data),
    };
    let mut header: Map<String, Value> = serde_json::from_slice(header_part)
        .ok()
        .and_then(|v: Value| v.as_object().cloned())
        .unwrap_or_default();
    header.entry("typ").or_insert(json!("dpop+jwt"));
    header.entry("alg").or_insert(json!("EdDSA"));
    header.entry("jwk").or_insert(jwk.clone());
    let input = format!(
        "{}.{}",
        b64(Value::Object(header).to_string().as_bytes()),
        b64(claims_part)
    );
    let proof = format!("{input}.{}", b64(key.sign(input.as_bytes()).as_ref()));

    let settings = config::parse(
        &json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/jwks",
                               "dpop": {"mode": "required"}}]})
        .to_string(),
    )
    .expect("valid config")
    .providers[0]
        .dpop
        .clone();
    let headers = [("dpop", proof.as_str())];
    let request = Request {
        method: "POST",
        scheme: "https",
        authority: "api.example.com",
        path: "/orders/7",
        headers: &headers,
        peer: &NoPeer,
    };
    let limits = TokenLimits::from(&config::Limits::default());
    let Ok(checked) = check_proof(
        &proof,
        TOKEN,
        &settings,
        60,
        &request,
        NOW,
        &limits,
        None,
        &mut Vec::new(),
    ) else {
        return;
    };
    let claims: Value =
        serde_json::from_slice(claims_part).expect("a passing proof has JSON claims");
    assert_eq!(claims["htm"], "POST");
    assert!(claims["htu"].as_str().is_some_and(|htu| !htu.contains('?')));
    assert_eq!(
        claims["ath"].as_str(),
        Some(b64(ring::digest::digest(&ring::digest::SHA256, TOKEN.as_bytes()).as_ref()).as_str())
    );
    assert_eq!(
        Some(checked.jkt),
        thumbprint(jwk.as_object().expect("object"))
    );
    assert!(checked.expires_s >= NOW.saturating_sub(120));
});
