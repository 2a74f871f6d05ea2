//! Token endpoint requests (RFC 6749 §4.4, RFC 8693 §2.1) and client authentication
//! (RFC 6749 §2.3.1, RFC 7523 §2.2, from `crate::client_auth`). Built here, dispatched by the
//! shell.

use crate::client_auth::{self, Credentials};
pub use crate::client_auth::{client_assertion, form_encode, Signer, ASSERTION_TYPE};
use crate::config::OutboundClient;

pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// draft-ietf-oauth-transaction-tokens: what a `Txn-Token` header carries.
pub const TXN_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:txn_token";

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

/// The token request for `grant` by `client` of the authorization server `issuer`, sent to
/// its `token_endpoint` URL. `jti` is fresh randomness from the caller; `now_s` the time in
/// seconds.
pub fn token_request(
    client: &OutboundClient,
    signer: Option<&Signer>,
    issuer: &str,
    token_endpoint: &str,
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
    let Credentials {
        authorization,
        params,
    } = client_auth::credentials(
        &client.auth,
        &client.client_id,
        signer,
        issuer,
        token_endpoint,
        now_s,
        jti,
    )
    .map_err(|_| RequestError::Signing)?;
    if let Some(authorization) = authorization {
        headers.push(("authorization", authorization));
    }
    for (name, value) in &params {
        form.add(name, value);
    }
    Ok(FormRequest {
        headers,
        body: form.0,
    })
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

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
