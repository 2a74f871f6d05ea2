//! The provider's endpoints a login uses, from its discovery document (OpenID Connect
//! Discovery 1.0 §3): authorization, token, end-session, and whether it sends RFC 9207 `iss`.

use crate::config::{self, HttpTarget};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Where browsers are sent (`authorization_endpoint`).
    pub authorization: String,
    /// Where codes and refresh tokens are redeemed (`token_endpoint`), as a dispatch target.
    pub token: HttpTarget,
    /// RP-initiated logout (`end_session_endpoint`), when the OP has one.
    pub end_session: Option<String>,
    /// `authorization_response_iss_parameter_supported` (RFC 9207 §3): a callback without
    /// `iss` is then refused.
    pub iss_parameter_supported: bool,
}

/// Reads the endpoints from a discovery document whose `issuer` is `issuer`; `cluster` is the
/// provider's configured `jwksCluster`, which its token calls go through too.
pub fn from_discovery(
    document: &[u8],
    issuer: &str,
    cluster: Option<&str>,
) -> Result<Endpoints, String> {
    let doc: Value =
        serde_json::from_slice(document).map_err(|_| "discovery document is not JSON")?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err("discovery document names a different issuer".to_owned());
    }
    let url = |name: &str| -> Result<Option<String>, String> {
        match doc.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(url)) => {
                config::http_target(url, None)
                    .map_err(|problem| format!("discovery {name}: {problem}"))?;
                Ok(Some(url.clone()))
            }
            Some(_) => Err(format!("discovery {name} is not a string")),
        }
    };
    let authorization =
        url("authorization_endpoint")?.ok_or("discovery document has no authorization_endpoint")?;
    if authorization.contains('#') {
        return Err("discovery authorization_endpoint has a fragment".to_owned());
    }
    let token_url = url("token_endpoint")?.ok_or("discovery document has no token_endpoint")?;
    let token = config::http_target(&token_url, cluster)
        .map_err(|problem| format!("discovery token_endpoint: {problem}"))?;
    Ok(Endpoints {
        authorization,
        token,
        end_session: url("end_session_endpoint")?,
        iss_parameter_supported: doc
            .get("authorization_response_iss_parameter_supported")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const ISSUER: &str = "https://op.example.com";

    fn parse(doc: Value) -> Result<Endpoints, String> {
        from_discovery(doc.to_string().as_bytes(), ISSUER, None)
    }

    fn doc() -> Value {
        json!({
            "issuer": ISSUER,
            "authorization_endpoint": "https://op.example.com/auth",
            "token_endpoint": "https://op.example.com:8443/token",
            "end_session_endpoint": "https://op.example.com/session/end",
            "authorization_response_iss_parameter_supported": true,
            "jwks_uri": "https://op.example.com/jwks"
        })
    }

    #[test]
    fn endpoints_are_read() {
        let endpoints = parse(doc()).unwrap();
        assert_eq!(endpoints.authorization, "https://op.example.com/auth");
        assert_eq!(endpoints.token.cluster, "outbound|8443||op.example.com");
        assert_eq!(endpoints.token.path, "/token");
        assert_eq!(endpoints.token.authority, "op.example.com:8443");
        assert_eq!(
            endpoints.end_session.as_deref(),
            Some("https://op.example.com/session/end")
        );
        assert!(endpoints.iss_parameter_supported);
        let cluster = from_discovery(doc().to_string().as_bytes(), ISSUER, Some("op")).unwrap();
        assert_eq!(cluster.token.cluster, "op");
    }

    #[test]
    fn optional_members_may_be_absent() {
        let mut minimal = doc();
        let map = minimal.as_object_mut().unwrap();
        map.remove("end_session_endpoint");
        map.remove("authorization_response_iss_parameter_supported");
        let endpoints = parse(minimal).unwrap();
        assert_eq!(endpoints.end_session, None);
        assert!(!endpoints.iss_parameter_supported);
    }

    #[test]
    fn a_wrong_document_is_refused() {
        let mut other_issuer = doc();
        other_issuer["issuer"] = json!("https://evil.example.com");
        assert_eq!(
            parse(other_issuer).unwrap_err(),
            "discovery document names a different issuer"
        );
        let mut no_token = doc();
        no_token.as_object_mut().unwrap().remove("token_endpoint");
        assert_eq!(
            parse(no_token).unwrap_err(),
            "discovery document has no token_endpoint"
        );
        let mut bad = doc();
        bad["authorization_endpoint"] = json!("javascript:alert(1)");
        assert_eq!(
            parse(bad).unwrap_err(),
            "discovery authorization_endpoint: not an http(s) URL"
        );
        assert!(from_discovery(b"not json", ISSUER, None).is_err());
    }
}
