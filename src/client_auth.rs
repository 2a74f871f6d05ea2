//! Client authentication at a token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2), shared by
//! browser login's code and refresh calls and outbound credentials' token requests: what the
//! configured `clientAuth` adds to a request, built here, sent by the caller.

use crate::alg::Alg;
use crate::config::{AssertionAudience, ClientAuth, ClientKey};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// An assertion is used at once: a short life bounds what a leaked one is worth.
pub const ASSERTION_LIFETIME_SECONDS: u64 = 60;
/// Random bytes for an assertion's `jti`.
pub const JTI_LEN: usize = 16;

/// A client's signing key, parsed once per configuration.
pub struct Signer {
    alg: Alg,
    key: SignerKey,
    /// The assertion's JOSE header, the same for every assertion.
    header: String,
    audience: AssertionAudience,
}

enum SignerKey {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    /// `None` only if the key changed under us: configuration parsing already checked it.
    pub fn new(key: &ClientKey) -> Option<Signer> {
        let der = &key.pkcs8.0;
        let parsed = match key.alg {
            Alg::ES256 => SignerKey::Ec(
                EcdsaKeyPair::from_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &SystemRandom::new(),
                )
                .ok()?,
            ),
            Alg::RS256 => SignerKey::Rsa(RsaKeyPair::from_pkcs8(der).ok()?),
            Alg::EdDSA => SignerKey::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok()?),
            _ => return None,
        };
        let mut header = serde_json::json!({"alg": key.alg.name(), "typ": "JWT"});
        if let Some(kid) = &key.key_id {
            header["kid"] = kid.as_str().into();
        }
        if let Some(certificate) = &key.certificate {
            header["x5t"] = certificate.x5t.as_str().into();
            header["x5t#S256"] = certificate.x5t_s256.as_str().into();
        }
        Some(Signer {
            alg: key.alg,
            key: parsed,
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            audience: key.audience,
        })
    }

    /// The assertion's `aud` (`assertionAudience`): the authorization server's `issuer`, or
    /// the `token_endpoint` URL the call goes to.
    pub fn audience<'a>(&self, issuer: &'a str, token_endpoint: &'a str) -> &'a str {
        match self.audience {
            AssertionAudience::Issuer => issuer,
            AssertionAudience::TokenEndpoint => token_endpoint,
        }
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
            SignerKey::Ed25519(pair) => Some(pair.sign(input).as_ref().to_vec()),
        }
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.alg.name())
    }
}

/// private_key_jwt: the key would not sign (or there is none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SigningError;

/// What client authentication adds to a token request: an `authorization` header
/// (client_secret_basic) and form parameters, in order. Not `Debug`: it holds the secret or
/// the assertion.
pub struct Credentials {
    pub authorization: Option<String>,
    pub params: Vec<(&'static str, String)>,
}

/// The credentials `client_id` presents with `auth` to the authorization server `issuer` at
/// its `token_endpoint` (the URL the call goes to); `signer` is the key of private_key_jwt,
/// `jti` fresh randomness, `now_s` the time.
pub fn credentials(
    auth: &ClientAuth,
    client_id: &str,
    signer: Option<&Signer>,
    issuer: &str,
    token_endpoint: &str,
    now_s: u64,
    jti: [u8; JTI_LEN],
) -> Result<Credentials, SigningError> {
    Ok(match auth {
        ClientAuth::SecretBasic(secret) => {
            // RFC 6749 §2.3.1: each part form-encoded, then joined and base64-encoded.
            let pair = format!("{}:{}", form_encode(client_id), form_encode(&secret.0));
            Credentials {
                authorization: Some(format!("Basic {}", STANDARD.encode(pair))),
                params: Vec::new(),
            }
        }
        ClientAuth::SecretPost(secret) => Credentials {
            authorization: None,
            params: vec![
                ("client_id", client_id.to_owned()),
                ("client_secret", secret.0.clone()),
            ],
        },
        ClientAuth::PrivateKeyJwt(_) => {
            let signer = signer.ok_or(SigningError)?;
            let audience = signer.audience(issuer, token_endpoint);
            let assertion = client_assertion(signer, client_id, audience, now_s, jti)?;
            Credentials {
                authorization: None,
                params: vec![
                    ("client_id", client_id.to_owned()),
                    ("client_assertion_type", ASSERTION_TYPE.to_owned()),
                    ("client_assertion", assertion),
                ],
            }
        }
    })
}

/// RFC 7523 §3 as updated for private_key_jwt: `iss` = `sub` = the client, `aud` =
/// `audience` (the issuer identifier unless `assertionAudience` says the token endpoint), a
/// fresh `jti`, a short `exp`.
pub fn client_assertion(
    signer: &Signer,
    client_id: &str,
    audience: &str,
    now_s: u64,
    jti: [u8; JTI_LEN],
) -> Result<String, SigningError> {
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let claims = serde_json::json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": jti,
        "iat": now_s,
        "exp": now_s.saturating_add(ASSERTION_LIFETIME_SECONDS),
    });
    let input = format!(
        "{}.{}",
        signer.header,
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = signer.sign(input.as_bytes()).ok_or(SigningError)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
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
#[path = "client_auth_tests.rs"]
mod tests;
