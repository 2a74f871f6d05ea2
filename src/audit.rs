//! What operators see of each decision: the audit line and the metric names. Nothing secret
//! ever reaches either: no token, no signature, no query string.

use crate::authorize::{Decision, Outcome, Request};
use crate::config::Config;
use crate::reason::Reason;
use serde_json::{json, Map, Value};

/// How a decision is counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed with a verified token.
    Allowed,
    /// Allowed without a token (anonymous route, CORS preflight).
    Anonymous,
    Denied(Reason),
    /// `report` mode: allowed, but enforcement would have refused for this reason.
    WouldDeny(Reason),
    /// Held while keys load; counted once it is decided.
    Held,
    /// Answered by the filter itself (protected resource metadata).
    Served,
}

impl Verdict {
    pub fn of(decision: &Decision) -> Verdict {
        match &decision.outcome {
            Outcome::Allow(allowed) => match &allowed.would_deny {
                Some(denial) => Verdict::WouldDeny(denial.reason()),
                None if decision.trace.claims.is_some() => Verdict::Allowed,
                None => Verdict::Anonymous,
            },
            Outcome::Deny(denial) => Verdict::Denied(denial.reason()),
            Outcome::Wait { .. } => Verdict::Held,
            Outcome::Answer(_) => Verdict::Served,
        }
    }

    /// Denials are always logged; allowed requests only when sampled.
    pub fn always_logged(self) -> bool {
        matches!(self, Verdict::Denied(_) | Verdict::WouldDeny(_))
    }
}

/// The counter a decision increments: `mesh_oauth.<provider>.<outcome>`, `none` where no
/// provider was selected. Envoy shows it as `wasmcustom.mesh_oauth...` in `/stats` and
/// without that prefix in Prometheus output.
pub fn request_metric(config: &Config, decision: &Decision) -> Option<String> {
    let provider = provider_label(config, decision.trace.provider);
    let outcome = match Verdict::of(decision) {
        Verdict::Allowed => "allowed".to_string(),
        Verdict::Anonymous => "anonymous".to_string(),
        Verdict::Denied(reason) => format!("denied.{reason}"),
        Verdict::WouldDeny(reason) => format!("would_deny.{reason}"),
        Verdict::Held => return None,
        Verdict::Served => "metadata".to_string(),
    };
    Some(format!("mesh_oauth.{provider}.{outcome}"))
}

/// A provider's name as one metric-name segment.
pub fn provider_label(config: &Config, provider: Option<usize>) -> String {
    match provider.and_then(|i| config.providers.get(i)) {
        Some(p) => crate::config::metric_label(&p.name),
        None => "none".to_string(),
    }
}

/// One JSON line per decision.
pub fn audit_line(
    config: &Config,
    decision: &Decision,
    request: &Request<'_>,
    request_id: Option<&str>,
) -> String {
    let trace = &decision.trace;
    let (verdict, reason, status) = match Verdict::of(decision) {
        Verdict::Allowed => ("allow", "valid", 200),
        Verdict::Anonymous if trace.ignored.is_some() => ("allow", "token_ignored", 200),
        Verdict::Anonymous => ("allow", "anonymous", 200),
        Verdict::Denied(reason) => ("deny", reason.name(), status_of(&decision.outcome)),
        Verdict::WouldDeny(reason) => ("would_deny", reason.name(), 200),
        Verdict::Held => ("held", "keys_loading", 0),
        Verdict::Served => ("serve", "metadata", status_of(&decision.outcome)),
    };
    let claim = |name: &str| -> Value {
        trace
            .claims
            .as_ref()
            .and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .map_or(Value::Null, |s| Value::String(clipped(s)))
    };
    let mut line = Map::new();
    line.insert("decision".into(), json!(verdict));
    line.insert("status".into(), json!(status));
    line.insert("reason".into(), json!(reason));
    line.insert(
        "rule".into(),
        trace
            .rule
            .and_then(|i| config.rules.get(i))
            .map_or(json!(null), |r| json!(r.name)),
    );
    line.insert(
        "provider".into(),
        trace
            .provider
            .and_then(|i| config.providers.get(i))
            .map_or(json!(null), |p| json!(p.name)),
    );
    line.insert("iss".into(), claim("iss"));
    // A multi-tenant provider's tenant, from the issuer it matched.
    let tenant = trace
        .provider
        .and_then(|i| config.providers.get(i))
        .zip(trace.claims.as_ref().and_then(|c| crate::claims::issuer(c)))
        .and_then(|(provider, iss)| provider.tenant_of(iss))
        .map(clipped);
    line.insert("tenant".into(), json!(tenant));
    line.insert("sub".into(), claim("sub"));
    // Who acts for the subject: the client, and the actor chain (RFC 8693), subjects only.
    let client = match claim("client_id") {
        Value::Null => claim("azp"),
        client => client,
    };
    line.insert("client_id".into(), client);
    line.insert("actors".into(), actor_chain(trace.claims.as_deref()));
    line.insert("kid".into(), json!(trace.kid.as_deref()));
    line.insert("alg".into(), json!(trace.alg.map(|a| a.name())));
    line.insert("cached".into(), json!(trace.cached));
    if let Some(ignored) = trace.ignored {
        line.insert("ignored".into(), json!(ignored.name()));
    }
    line.insert("request_id".into(), json!(request_id));
    line.insert("method".into(), json!(request.method));
    // The query string may carry a token: never logged.
    let path = request.path.split(['?', '#']).next().unwrap_or_default();
    line.insert("path".into(), json!(path));
    Value::Object(line).to_string()
}

/// The `act` chain's subjects, current actor first; at most a few, each clipped.
fn actor_chain(claims: Option<&serde_json::Map<String, Value>>) -> Value {
    const MAX_ACTORS: usize = 8;
    let mut actors = Vec::new();
    let mut current = claims.and_then(|c| c.get("act"));
    while let Some(Value::Object(level)) = current {
        if actors.len() == MAX_ACTORS {
            actors.push(json!("…"));
            break;
        }
        actors.push(
            level
                .get("sub")
                .and_then(Value::as_str)
                .map_or(Value::Null, |s| Value::String(clipped(s))),
        );
        current = level.get("act");
    }
    if actors.is_empty() {
        Value::Null
    } else {
        Value::Array(actors)
    }
}

/// Claims of a refused token are the client's own words: a line stays bounded whatever it sent.
const MAX_CLAIM_CHARS: usize = 256;

fn clipped(text: &str) -> String {
    match text.char_indices().nth(MAX_CLAIM_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

fn status_of(outcome: &Outcome) -> u32 {
    match outcome {
        Outcome::Deny(denial) => denial.render("").status,
        Outcome::Allow(_) => 200,
        Outcome::Wait { .. } => 0,
        Outcome::Answer(answer) => answer.status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authorize::{Allowed, Trace};
    use crate::response::Denial;
    use serde_json::json;
    use std::rc::Rc;

    fn config() -> Config {
        crate::config::parse(
            &json!({"providers": [{"issuer": "https://idp.example.com", "name": "key cloak",
                                   "jwksUri": "https://idp.example.com/jwks"}],
                    "rules": [{"name": "orders", "match": {"paths": ["/orders/*"]},
                               "requires": {"scopes": ["orders:read"]}}]})
            .to_string(),
        )
        .unwrap()
    }

    fn token_trace() -> Trace {
        let claims = json!({"iss": "https://idp.example.com", "sub": "alice", "scope": "x",
                            "client_id": "agent-app",
                            "act": {"sub": "agent-7", "act": {"sub": "planner"}}});
        Trace {
            rule: Some(0),
            provider: Some(0),
            alg: Some(crate::alg::Alg::RS256),
            kid: Some(Rc::from("k1")),
            claims: Some(Rc::new(claims.as_object().unwrap().clone())),
            ..Trace::default()
        }
    }

    const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    fn request<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request {
            method: "GET",
            scheme: "https",
            path: "/orders/1?access_token=secret-in-query",
            authority: "orders.example.com",
            headers,
            peer: &crate::peer::NoPeer,
        }
    }

    #[test]
    fn a_refusal_names_decision_reason_rule_provider_and_token_facts() {
        let decision = Decision {
            outcome: Outcome::Deny(Denial::MissingScopes(vec!["orders:read".into()])),
            trace: token_trace(),
        };
        let bearer = format!("Bearer {TOKEN}");
        let headers = [("authorization", bearer.as_str())];
        let line = audit_line(&config(), &decision, &request(&headers), Some("req-1"));
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed,
            json!({"decision": "deny", "status": 403, "reason": "scope", "rule": "orders",
                   "provider": "key cloak", "iss": "https://idp.example.com", "tenant": null, "sub": "alice",
                   "client_id": "agent-app", "actors": ["agent-7", "planner"],
                   "kid": "k1", "alg": "RS256", "cached": false, "request_id": "req-1",
                   "method": "GET", "path": "/orders/1"})
        );
        assert!(!line.contains("secret-in-query"), "no query string");
        assert!(
            !line.contains(TOKEN) && !line.contains("c2lnbmF0dXJl"),
            "no token, no signature"
        );
        assert!(!line.contains(r#""scope":"x""#), "no other claims");
    }

    #[test]
    fn client_chosen_claims_are_clipped() {
        let long = "x".repeat(5000);
        let mut trace = token_trace();
        let claims = json!({"iss": long, "sub": "é".repeat(300)});
        trace.claims = Some(Rc::new(claims.as_object().unwrap().clone()));
        let decision = Decision {
            outcome: Outcome::Deny(Denial::MissingToken),
            trace,
        };
        let line = audit_line(&config(), &decision, &request(&[]), None);
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            parsed["iss"].as_str().unwrap().chars().count(),
            MAX_CLAIM_CHARS + 1
        );
        assert_eq!(
            parsed["sub"].as_str().unwrap().chars().count(),
            MAX_CLAIM_CHARS + 1
        );
    }

    #[test]
    fn verdicts_and_metric_names() {
        let c = config();
        let allowed = Decision {
            outcome: Outcome::Allow(Allowed::default()),
            trace: token_trace(),
        };
        assert_eq!(Verdict::of(&allowed), Verdict::Allowed);
        assert_eq!(
            request_metric(&c, &allowed).as_deref(),
            Some("mesh_oauth.key_cloak.allowed")
        );
        let anonymous = Decision {
            outcome: Outcome::Allow(Allowed::default()),
            trace: Trace::default(),
        };
        assert_eq!(
            request_metric(&c, &anonymous).as_deref(),
            Some("mesh_oauth.none.anonymous")
        );
        let missing = Decision {
            outcome: Outcome::Deny(Denial::MissingToken),
            trace: Trace::default(),
        };
        assert_eq!(
            request_metric(&c, &missing).as_deref(),
            Some("mesh_oauth.none.denied.missing")
        );
        let reported = Decision {
            outcome: Outcome::Allow(Allowed {
                would_deny: Some(Denial::Forbidden),
                ..Allowed::default()
            }),
            trace: token_trace(),
        };
        assert!(Verdict::of(&reported).always_logged());
        assert_eq!(
            request_metric(&c, &reported).as_deref(),
            Some("mesh_oauth.key_cloak.would_deny.deny_rule")
        );
        let held = Decision {
            outcome: Outcome::Wait {
                provider: 0,
                refetch: false,
            },
            trace: token_trace(),
        };
        assert_eq!(request_metric(&c, &held), None, "counted once decided");
        assert!(!Verdict::of(&allowed).always_logged());
    }
}
