//! Token endpoint requests (RFC 6749 §4.4, RFC 8693 §2.1) and client authentication
//! (RFC 6749 §2.3.1, RFC 7523 §2.2). Built here, dispatched by the shell.

use crate::alg::Alg;
use crate::config::{ClientAuth, ClientKey, OutboundClient};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};

pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// draft-ietf-oauth-transaction-tokens: what a `Txn-Token` header carries.
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// An assertion is used at once: a short life bounds what a leaked one is worth.
const ASSERTION_LIFETIME_SECONDS: u64 = 60;

/// A client's signing key, parsed once per configuration.
pub struct Signer {
    alg: Alg,
    key: SignerKey,
}

enum SignerKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer {
    /// `None` only if the key changed under us: configuration parsing already checked it.
    pub fn new(key: &ClientKey) -> Option<Signer> {
        let parsed = match key.alg {
            Alg::ES256 => SignerKey::Ec(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &key.pkcs8.0,
                    &SystemRandom::new(),
                )
                .ok()?,
            ),
            Alg::RS256 => SignerKey::Rsa(RsaKeyPair::from_pkcs8(&key.pkcs8.0).ok()?),
            _ => return None,
        };
        Some(Signer {
            alg: key.alg,
            key: parsed,
        })
    }

    fn sign(&self, input: &[u8]) -> Option<Vec<u8>> {
        let rng = SystemRandom::new();
        match &self.key {
            SignerKey::Ec(pair) => pair.sign(&rng, input).ok().map(|s| s.as_ref().to_vec()),
            SignerKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input, &mut signature)
                    .ok()?;
                Some(signature)
            }
        }
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.alg.name())
    }
}

/// What is asked for.
pub enum Grant<'a> {
    /// `narrowed`: with the entry's `audience`, `resource` and `scopes`; an actor token is
    /// asked for without them (it is shown to the authorization server only).
    ClientCredentials { narrowed: bool },
    Exchange {
        subject_token: &'a str,
        actor_token: Option<&'a str>,
        requested_token_type: &'static str,
    },
}

/// A POST to the token endpoint: headers to add to the call and its form body. Deliberately
/// not `Debug`-printable beyond its shape: it carries secrets, assertions and tokens.
pub struct FormRequest {
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl std::fmt::Debug for FormRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FormRequest({} bytes, redacted)", self.body.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// private_key_jwt: the key would not sign.
    Signing,
}

/// The token request for `grant` by `client` of the authorization server `issuer`.
/// `jti` is fresh randomness from the caller; `now_s` the time in seconds.
pub fn token_request(
    client: &OutboundClient,
    signer: Option<&Signer>,
    issuer: &str,
    grant: &Grant<'_>,
    now_s: u64,
    jti: [u8; 16],
) -> Result<FormRequest, RequestError> {
    let mut form = Form::default();
    let narrowed = match grant {
        Grant::ClientCredentials { narrowed } => {
            form.add("grant_type", "client_credentials");
            *narrowed
        }
        Grant::Exchange {
            subject_token,
            actor_token,
            requested_token_type,
        } => {
            form.add("grant_type", TOKEN_EXCHANGE_GRANT);
            form.add("subject_token", subject_token);
            form.add("subject_token_type", ACCESS_TOKEN_TYPE);
            if let Some(actor) = actor_token {
                form.add("actor_token", actor);
                form.add("actor_token_type", ACCESS_TOKEN_TYPE);
            }
            form.add("requested_token_type", requested_token_type);
            true
        }
    };
    if narrowed {
        for audience in &client.audiences {
            form.add("audience", audience);
        }
        for resource in &client.resources {
            form.add("resource", resource);
        }
        if !client.scopes.is_empty() {
            form.add("scope", &client.scopes.join(" "));
        }
    }
    let mut headers = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept", "application/json".to_owned()),
    ];
    match &client.auth {
        ClientAuth::SecretBasic(secret) => {
            // RFC 6749 §2.3.1: each part form-encoded, then joined and base64-encoded.
            let pair = format!(
                "{}:{}",
                form_encode(&client.client_id),
                form_encode(&secret.0)
            );
            headers.push(("authorization", format!("Basic {}", STANDARD.encode(pair))));
        }
        ClientAuth::SecretPost(secret) => {
            form.add("client_id", &client.client_id);
            form.add("client_secret", &secret.0);
        }
        ClientAuth::PrivateKeyJwt(_) => {
            let signer = signer.ok_or(RequestError::Signing)?;
            let assertion = client_assertion(signer, &client.client_id, issuer, now_s, jti)?;
            form.add("client_id", &client.client_id);
            form.add("client_assertion_type", ASSERTION_TYPE);
            form.add("client_assertion", &assertion);
        }
    }
    Ok(FormRequest {
        headers,
        body: form.0,
    })
}

/// RFC 7523 §3 as updated for private_key_jwt: `iss` = `sub` = the client, `aud` = the
/// authorization server's issuer identifier (not the endpoint URL), a fresh `jti`, a short
/// `exp`.
pub fn client_assertion(
    signer: &Signer,
    client_id: &str,
    issuer: &str,
    now_s: u64,
    jti: [u8; 16],
) -> Result<String, RequestError> {
    let header = serde_json::json!({"alg": signer.alg.name(), "typ": "JWT"});
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": issuer,
        "jti": jti,
        "iat": now_s,
        "exp": now_s.saturating_add(ASSERTION_LIFETIME_SECONDS),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signer.sign(input.as_bytes()).ok_or(RequestError::Signing)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

#[derive(Default)]
struct Form(String);

impl Form {
    fn add(&mut self, name: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(&form_encode(name));
        self.0.push('=');
        self.0.push_str(&form_encode(value));
    }
}

/// `application/x-www-form-urlencoded` (the WHATWG URL serializer's byte set): letters,
/// digits and `*-._` stay, space becomes `+`, every other byte `%XX`.
pub fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
