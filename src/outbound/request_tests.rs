use super::*;
use crate::config::ClientAuth;
use crate::outbound::testing::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

fn client_of(entries: Value) -> OutboundClient {
    configure(entries).1.entries[0].grant.client().clone()
}

fn decode_segment(segment: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).unwrap()).unwrap()
}

#[test]
fn client_credentials_with_basic_auth_form_encodes_id_and_secret_first() {
    let client = client_of(entry(
        "clientCredentials",
        json!({"clientId": "orders svc", "audience": ["payments", "ledger"],
               "resource": "https://payments.internal/", "scopes": ["pay:read", "pay:write"]}),
        json!({}),
    ));
    let grant = Grant::ClientCredentials { narrowed: true };
    let request = token_request(
        &client,
        None,
        ISSUER,
        TOKEN_ENDPOINT,
        &grant,
        1_000,
        [7; 16],
    )
    .unwrap();
    let basic = request
        .headers
        .iter()
        .find(|(n, _)| *n == "authorization")
        .map(|(_, v)| v.clone())
        .unwrap();
    let decoded = STANDARD
        .decode(basic.strip_prefix("Basic ").unwrap())
        .unwrap();
    // RFC 6749 §2.3.1: "orders svc" and "s3cr:et +%" form-encoded before base64.
    assert_eq!(decoded, b"orders+svc:s3cr%3Aet+%2B%25");
    let pairs = form_pairs(&request.body);
    assert_eq!(form_value(&pairs, "grant_type"), ["client_credentials"]);
    assert_eq!(form_value(&pairs, "audience"), ["payments", "ledger"]);
    assert_eq!(
        form_value(&pairs, "resource"),
        ["https://payments.internal/"]
    );
    assert_eq!(form_value(&pairs, "scope"), ["pay:read pay:write"]);
    assert!(form_value(&pairs, "client_secret").is_empty());
    assert!(form_value(&pairs, "client_id").is_empty());
    assert!(request.headers.contains(&(
        "content-type",
        "application/x-www-form-urlencoded".to_owned()
    )));
    assert!(!format!("{request:?}").contains("s3cr"));
}

#[test]
fn client_secret_post_puts_the_credentials_in_the_body() {
    let client = client_of(entry(
        "clientCredentials",
        json!({"clientAuth": "client_secret_post"}),
        json!({}),
    ));
    let grant = Grant::ClientCredentials { narrowed: true };
    let request = token_request(
        &client,
        None,
        ISSUER,
        TOKEN_ENDPOINT,
        &grant,
        1_000,
        [7; 16],
    )
    .unwrap();
    let pairs = form_pairs(&request.body);
    assert_eq!(form_value(&pairs, "client_id"), ["orders"]);
    assert_eq!(form_value(&pairs, "client_secret"), [SECRET]);
    assert!(!request.headers.iter().any(|(n, _)| *n == "authorization"));
}

#[test]
fn an_actor_token_request_is_not_narrowed() {
    let client = client_of(entry(
        "tokenExchange",
        json!({"audience": "payments", "scopes": ["pay:read"]}),
        json!({}),
    ));
    let grant = Grant::ClientCredentials { narrowed: false };
    let request = token_request(
        &client,
        None,
        ISSUER,
        TOKEN_ENDPOINT,
        &grant,
        1_000,
        [7; 16],
    )
    .unwrap();
    let pairs = form_pairs(&request.body);
    assert_eq!(pairs.len(), 1, "grant_type only: {pairs:?}");
}

#[test]
fn token_exchange_sends_subject_actor_and_narrowing() {
    let client = client_of(entry(
        "tokenExchange",
        json!({"audience": "payments", "resource": "https://payments.internal/",
               "scopes": ["pay:read"], "actor": "clientCredentials"}),
        json!({}),
    ));
    let grant = Grant::Exchange {
        subject_token: "user.token.sig",
        actor_token: Some("agent.token.sig"),
        requested_token_type: ACCESS_TOKEN_TYPE,
    };
    let request = token_request(
        &client,
        None,
        ISSUER,
        TOKEN_ENDPOINT,
        &grant,
        1_000,
        [7; 16],
    )
    .unwrap();
    let pairs = form_pairs(&request.body);
    let one = |name: &str| form_value(&pairs, name).join(",");
    assert_eq!(one("grant_type"), TOKEN_EXCHANGE_GRANT);
    assert_eq!(one("subject_token"), "user.token.sig");
    assert_eq!(one("subject_token_type"), ACCESS_TOKEN_TYPE);
    assert_eq!(one("actor_token"), "agent.token.sig");
    assert_eq!(one("actor_token_type"), ACCESS_TOKEN_TYPE);
    assert_eq!(one("requested_token_type"), ACCESS_TOKEN_TYPE);
    assert_eq!(one("audience"), "payments");
    assert_eq!(one("resource"), "https://payments.internal/");
    assert_eq!(one("scope"), "pay:read");

    let without_actor = Grant::Exchange {
        subject_token: "user.token.sig",
        actor_token: None,
        requested_token_type: TXN_TOKEN_TYPE,
    };
    let request = token_request(
        &client,
        None,
        ISSUER,
        TOKEN_ENDPOINT,
        &without_actor,
        1_000,
        [7; 16],
    )
    .unwrap();
    let pairs = form_pairs(&request.body);
    assert!(form_value(&pairs, "actor_token").is_empty());
    assert!(form_value(&pairs, "actor_token_type").is_empty());
    assert_eq!(form_value(&pairs, "requested_token_type"), [TXN_TOKEN_TYPE]);
}

fn assertion_of(key_env: &str, jti: [u8; 16]) -> (String, OutboundClient) {
    assertion_with(json!({"clientKeyEnv": key_env}), jti)
}

fn assertion_with(fields: Value, jti: [u8; 16]) -> (String, OutboundClient) {
    let mut client = json!({"clientAuth": "private_key_jwt", "clientSecretEnv": null});
    client
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    let client = client_of(entry("clientCredentials", client, json!({})));
    let ClientAuth::PrivateKeyJwt(key) = &client.auth else {
        panic!("private_key_jwt")
    };
    let signer = Signer::new(key).unwrap();
    let grant = Grant::ClientCredentials { narrowed: true };
    let request = token_request(
        &client,
        Some(&signer),
        ISSUER,
        TOKEN_ENDPOINT,
        &grant,
        1_000,
        jti,
    )
    .unwrap();
    let pairs = form_pairs(&request.body);
    assert_eq!(form_value(&pairs, "client_id"), ["orders"]);
    assert_eq!(
        form_value(&pairs, "client_assertion_type"),
        [ASSERTION_TYPE]
    );
    assert!(!request.headers.iter().any(|(n, _)| *n == "authorization"));
    (form_value(&pairs, "client_assertion")[0].to_owned(), client)
}

#[test]
fn private_key_jwt_with_assertion_audience_token_endpoint_names_the_endpoint_called() {
    let (assertion, _) = assertion_with(
        json!({"clientKeyEnv": "EC_KEY", "assertionAudience": "tokenEndpoint"}),
        [1; 16],
    );
    let claims = decode_segment(assertion.split('.').nth(1).unwrap());
    assert_eq!(claims["aud"], TOKEN_ENDPOINT);
    assert_eq!(
        (&claims["iss"], &claims["sub"]),
        (&json!("orders"), &json!("orders"))
    );
}

#[test]
fn private_key_jwt_signs_an_es256_assertion_for_the_issuer() {
    let (assertion, _) = assertion_of("EC_KEY", [0xab; 16]);
    let parts: Vec<&str> = assertion.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(
        decode_segment(parts[0]),
        json!({"alg": "ES256", "typ": "JWT"})
    );
    let claims = decode_segment(parts[1]);
    assert_eq!(claims["iss"], "orders");
    assert_eq!(claims["sub"], "orders");
    assert_eq!(claims["aud"], ISSUER);
    assert_eq!(claims["jti"], "ab".repeat(16));
    assert_eq!(claims["iat"], 1_000);
    assert_eq!(claims["exp"], 1_060);
    // Verified with the public half of the configured key.
    let public = EC_KEY.with(|der| {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
            .unwrap()
            .public_key()
            .as_ref()
            .to_vec()
    });
    use ring::signature::KeyPair;
    let verifier =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, public);
    let signed = format!("{}.{}", parts[0], parts[1]);
    verifier
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
        .unwrap();
}

#[test]
fn private_key_jwt_signs_rs256_with_an_rsa_key_and_a_fresh_jti_each_time() {
    let (first, _) = assertion_of("RSA_KEY", [1; 16]);
    let (second, _) = assertion_of("RSA_KEY", [2; 16]);
    let parts: Vec<&str> = first.split('.').collect();
    assert_eq!(decode_segment(parts[0])["alg"], "RS256");
    assert_ne!(
        decode_segment(parts[1])["jti"],
        decode_segment(second.split('.').nth(1).unwrap())["jti"]
    );
    use ring::signature::KeyPair;
    let pair = RsaKeyPair::from_pkcs8(crate::keys::testing::RSA_A).unwrap();
    let verifier = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        pair.public_key().as_ref().to_vec(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    verifier
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        )
        .unwrap();
}

#[test]
fn form_encoding_follows_the_urlencoded_byte_set() {
    assert_eq!(form_encode("aZ09*-._"), "aZ09*-._");
    assert_eq!(form_encode("a b+c/d:é~"), "a+b%2Bc%2Fd%3A%C3%A9%7E");
}
