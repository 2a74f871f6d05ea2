//! Shared by the outbound tests: configurations with secrets and keys in a fake environment.
#![allow(clippy::unwrap_used)]

use crate::config::{self, Config, Outbound};
use base64::Engine;
use serde_json::{json, Value};

pub const ISSUER: &str = "https://idp.example.com";
/// Not derivable from the issuer, as Entra ID's is not: an assertion `aud` equal to it came
/// from the discovered URL.
pub const TOKEN_ENDPOINT: &str = "https://login.idp.example.com/tenant-1/oauth2/v2.0/token";
pub const SECRET: &str = "s3cr:et +%";

pub fn ec_pkcs8() -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap()
    .as_ref()
    .to_vec()
}

thread_local! {
    pub static EC_KEY: Vec<u8> = ec_pkcs8();
}

pub fn env(name: &str) -> Option<String> {
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    match name {
        "SECRET" => Some(SECRET.to_owned()),
        "EC_KEY" => Some(EC_KEY.with(|key| b64(key))),
        "RSA_KEY" => Some(b64(crate::keys::testing::RSA_A)),
        _ => None,
    }
}

/// A configuration with one discovered provider `idp` and these `outbound` entries.
pub fn configure(entries: Value) -> (Config, Outbound) {
    let config =
        config::parse(&json!({"providers": [{"issuer": ISSUER, "name": "idp"}]}).to_string())
            .unwrap();
    let outbound = config::parse_outbound_list(&entries, &config.providers, &env).unwrap();
    (config, outbound)
}

/// One entry named `payments` for `payments.internal`, with `grant` set to `client` merged
/// over a secret-basic client of `idp`, and `extra` entry fields.
pub fn entry(grant: &str, client: Value, extra: Value) -> Value {
    let mut merged = json!({"provider": "idp", "clientId": "orders", "clientSecretEnv": "SECRET"});
    let merged_map = merged.as_object_mut().unwrap();
    for (k, v) in client.as_object().unwrap() {
        if v.is_null() {
            merged_map.remove(k);
        } else {
            merged_map.insert(k.clone(), v.clone());
        }
    }
    let mut entry = json!({"name": "payments", "match": {"hosts": ["payments.internal"]}});
    entry
        .as_object_mut()
        .unwrap()
        .insert(grant.to_owned(), merged);
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!([entry])
}

/// A form body back into its pairs (the test's own decoder, not the encoder run backwards).
pub fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap();
            (decode(name), decode(value))
        })
        .collect()
}

pub fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

pub fn form_value<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}
