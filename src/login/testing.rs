//! Test helpers: tokens signed with the test keys of `keys::testing`, as an OP would mint them.
#![allow(clippy::unwrap_used)]

use crate::alg::Alg;
use crate::keys::testing::{b64, jwks, TestKey, LIMITS, RSA_A};
use crate::keys::{parse_jwks, KeySet};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://op.example.com";
pub const CLIENT: &str = "web-app";
pub const NOW: u64 = 1_700_000_000;

pub struct Op {
    pub key: TestKey,
    pub keys: KeySet,
}

impl Op {
    pub fn new() -> Op {
        let key = TestKey::rsa(RSA_A);
        let keys = parse_jwks(&jwks(&[key.jwk(Some("op-1"))]), &LIMITS, false).unwrap();
        Op { key, keys }
    }

    /// A compact JWS with this header and payload, signed by the OP's key with `alg`.
    pub fn sign(&self, header: &Value, payload: &Value) -> String {
        let alg = Alg::from_name(header["alg"].as_str().unwrap_or("RS256")).unwrap_or(Alg::RS256);
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(payload.to_string().as_bytes())
        );
        let signature = self.key.sign(alg, input.as_bytes());
        format!("{input}.{}", b64(&signature))
    }

    pub fn id_token(&self, patch: Value) -> String {
        let mut claims = json!({
            "iss": ISSUER, "aud": CLIENT, "sub": "alice", "sid": "op-session-1",
            "nonce": "the-nonce", "iat": NOW, "exp": NOW + 300,
        });
        merge(&mut claims, patch);
        self.sign(&json!({"alg": "RS256", "kid": "op-1"}), &claims)
    }

    pub fn logout_token(&self, patch: Value, typ: Option<&str>) -> String {
        let mut claims = json!({
            "iss": ISSUER, "aud": CLIENT, "sub": "alice", "sid": "op-session-1",
            "iat": NOW, "exp": NOW + 120, "jti": "logout-1",
            "events": {super::id_token::BACKCHANNEL_LOGOUT_EVENT: {}},
        });
        merge(&mut claims, patch);
        let mut header = json!({"alg": "RS256", "kid": "op-1"});
        if let Some(typ) = typ {
            header["typ"] = json!(typ);
        }
        self.sign(&header, &claims)
    }
}

/// Sets each member of `patch` on `target`; a null removes it.
pub fn merge(target: &mut Value, patch: Value) {
    let Value::Object(patch) = patch else { return };
    let target = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
        } else {
            target.insert(key, value);
        }
    }
}
