//! Turning a refusal into the answer OAuth clients expect (RFC 6750 §3).

use serde_json::json;

/// Why a request is refused. Descriptions are fixed strings: they never echo token contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 400: more than one token, or a path that cannot be matched safely.
    InvalidRequest(&'static str),
    /// 401 without an error code: a token was needed and none was sent.
    MissingToken,
    /// 401 `invalid_token`; `reason` is the short code for metrics and logs.
    InvalidToken {
        description: &'static str,
        reason: &'static str,
    },
    /// 403 `insufficient_scope` with the scopes that were missing.
    MissingScopes(Vec<String>),
    /// 403 `insufficient_scope` because a claim condition failed.
    ClaimFailed,
    /// 403 by a `deny` rule or `unmatched: deny`.
    Forbidden,
    /// 503: no signing keys could be had for the token's issuer.
    KeysUnavailable { retry_after_seconds: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Denial {
    /// Short code for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::InvalidRequest(_) => "invalid_request",
            Denial::MissingToken => "missing",
            Denial::InvalidToken { reason, .. } => reason,
            Denial::MissingScopes(_) => "scope",
            Denial::ClaimFailed => "claim",
            Denial::Forbidden => "deny_rule",
            Denial::KeysUnavailable { .. } => "keys_unavailable",
        }
    }

    pub fn render(&self, realm: &str) -> Response {
        let realm = quoted_safe(realm);
        let (status, challenge, error, description) = match self {
            Denial::InvalidRequest(description) => (400, None, "invalid_request", *description),
            Denial::MissingToken => (
                401,
                Some(format!("Bearer realm=\"{realm}\"")),
                // RFC 6750 §3.1: no error code in the challenge when no token was sent.
                "missing_token",
                "a bearer token is required",
            ),
            Denial::InvalidToken { description, .. } => (
                401,
                Some(format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\""
                )),
                "invalid_token",
                *description,
            ),
            Denial::MissingScopes(scopes) => {
                let scopes = scopes.join(" ");
                let challenge = format!(
                    "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                    quoted_safe(&scopes)
                );
                (403, Some(challenge), "insufficient_scope", "token lacks a required scope")
            }
            Denial::ClaimFailed => (
                403,
                Some(format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\"")),
                "insufficient_scope",
                "token lacks a required claim value",
            ),
            Denial::Forbidden => (403, None, "access_denied", "access to this resource is denied"),
            Denial::KeysUnavailable { .. } => (
                503,
                None,
                "temporarily_unavailable",
                "signing keys for the token issuer are not available",
            ),
        };
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(challenge) = challenge {
            headers.push(("www-authenticate".to_string(), challenge));
        }
        if let Denial::KeysUnavailable {
            retry_after_seconds,
        } = self
        {
            headers.push(("retry-after".to_string(), retry_after_seconds.to_string()));
        }
        let body = json!({ "error": error, "error_description": description }).to_string();
        Response {
            status,
            headers,
            body,
        }
    }
}

/// Keeps a value safe inside an RFC 7230 quoted-string: the realm may come from the request's
/// `:authority`, which a client controls.
fn quoted_safe(value: &str) -> String {
    value
        .chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
        response
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn missing_token_is_a_bare_challenge() {
        let r = Denial::MissingToken.render("orders");
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"orders\"")
        );
    }

    #[test]
    fn invalid_token_names_the_cause() {
        let r = Denial::InvalidToken {
            description: "token is expired",
            reason: "expired",
        }
        .render("orders");
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"token is expired\"")
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "token is expired");
    }

    #[test]
    fn missing_scopes_are_listed() {
        let r =
            Denial::MissingScopes(vec!["orders:read".into(), "orders:write".into()]).render("r");
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"insufficient_scope\", scope=\"orders:read orders:write\"")
        );
    }

    #[test]
    fn claim_failure_has_no_scope_parameter() {
        let r = Denial::ClaimFailed.render("r");
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"insufficient_scope\"")
        );
    }

    #[test]
    fn deny_and_bad_request_carry_no_challenge() {
        let deny = Denial::Forbidden.render("r");
        assert_eq!(deny.status, 403);
        assert_eq!(header(&deny, "www-authenticate"), None);
        let bad = Denial::InvalidRequest("more than one token in the request").render("r");
        assert_eq!(bad.status, 400);
        assert_eq!(header(&bad, "www-authenticate"), None);
        let body: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
    }

    #[test]
    fn unavailable_keys_ask_to_retry() {
        let r = Denial::KeysUnavailable {
            retry_after_seconds: 5,
        }
        .render("r");
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("5"));
    }

    #[test]
    fn client_controlled_realm_cannot_break_the_header() {
        let r = Denial::MissingToken.render("evil\"\r\nx: y");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"evilx: y\"")
        );
    }
}
