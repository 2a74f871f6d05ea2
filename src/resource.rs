//! The protected resource metadata document (RFC 9728), answered by the filter itself: it
//! never reaches upstream and needs no token, so clients (MCP clients among them) can discover
//! how to get one.

use crate::compile::Compiled;
use crate::config::{Binding, Config, ProtectedResource};
use crate::response::Response;
use serde_json::{json, Map, Value};

/// The answer for a request to one of the metadata paths; `None` for every other request.
pub fn metadata_answer(
    config: &Compiled,
    method: &str,
    raw_path: &str,
    authority: &str,
) -> Option<Response> {
    let resource = config.resource_for(authority)?;
    let path = raw_path.split(['?', '#']).next().unwrap_or_default();
    if !resource.metadata_paths.iter().any(|p| p == path) {
        return None;
    }
    // Browser clients read it cross-origin; it holds nothing secret.
    let mut headers = vec![
        ("access-control-allow-origin".to_string(), "*".to_string()),
        (
            "access-control-allow-methods".to_string(),
            "GET, HEAD, OPTIONS".to_string(),
        ),
    ];
    Some(match method {
        "GET" | "HEAD" => {
            headers.push(("content-type".to_string(), "application/json".to_string()));
            headers.push((
                "cache-control".to_string(),
                "public, max-age=3600".to_string(),
            ));
            let body = if method == "GET" {
                document(config, resource).to_string()
            } else {
                String::new()
            };
            Response {
                status: 200,
                headers,
                body,
                grpc_status: None,
            }
        }
        "OPTIONS" => {
            headers.push(("access-control-max-age".to_string(), "86400".to_string()));
            Response {
                status: 204,
                headers,
                body: String::new(),
                grpc_status: None,
            }
        }
        _ => {
            headers.push(("allow".to_string(), "GET, HEAD, OPTIONS".to_string()));
            Response {
                status: 405,
                headers,
                body: String::new(),
                grpc_status: None,
            }
        }
    })
}

/// RFC 9728 §2: what is configured, and what the filter knows of itself.
pub fn document(config: &Config, resource: &ProtectedResource) -> Value {
    let mut doc = Map::new();
    doc.insert("resource".into(), json!(resource.resource));
    doc.insert(
        "authorization_servers".into(),
        json!(resource.authorization_servers),
    );
    if !resource.scopes_supported.is_empty() {
        doc.insert("scopes_supported".into(), json!(resource.scopes_supported));
    }
    let mut methods: Vec<&str> = Vec::new();
    for provider in &config.providers {
        if !provider.from_headers.is_empty() || provider.dpop.mode != Binding::Off {
            methods.push("header");
        }
        if !provider.from_params.is_empty() {
            methods.push("query");
        }
    }
    methods.sort_unstable();
    methods.dedup();
    doc.insert("bearer_methods_supported".into(), json!(methods));
    if let Some(name) = &resource.resource_name {
        doc.insert("resource_name".into(), json!(name));
    }
    if let Some(url) = &resource.resource_documentation {
        doc.insert("resource_documentation".into(), json!(url));
    }
    let dpop: Vec<_> = config
        .providers
        .iter()
        .filter(|p| p.dpop.mode != Binding::Off)
        .collect();
    if !dpop.is_empty() {
        let required = config
            .providers
            .iter()
            .all(|p| p.dpop.mode == Binding::Required);
        doc.insert("dpop_bound_access_tokens_required".into(), json!(required));
        let mut algs = crate::alg::AlgSet::EMPTY;
        for alg in dpop.iter().flat_map(|p| p.dpop.algorithms.iter()) {
            algs.insert(alg);
        }
        let names: Vec<&str> = algs.iter().map(|a| a.name()).collect();
        doc.insert("dpop_signing_alg_values_supported".into(), json!(names));
    }
    let certificate_bound = config
        .providers
        .iter()
        .any(|p| p.certificate_bound != Binding::Off);
    doc.insert(
        "tls_client_certificate_bound_access_tokens".into(),
        json!(certificate_bound),
    );
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::compile;

    fn mcp() -> Compiled {
        compile::configure(
            &json!({
                "providers": [{"issuer": "https://as.example.com", "jwksUri": "https://as.example.com/jwks",
                               "dpop": {"mode": "allowed", "algorithms": ["ES256"]}}],
                "rules": [{"match": {"paths": ["/mcp"]}, "requires": {"scopes": ["tools:call"]}},
                          {"match": {"paths": ["/mcp/admin"]}, "requires": {"scopes": ["admin", "tools:call"]}}],
                "protectedResource": {"resource": "https://h.example.com/mcp", "resourceName": "Tools"}
            })
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn metadata_is_served_at_the_path_inserted_and_root_urls() {
        let config = mcp();
        let resource = config.resource_for("h.example.com").unwrap();
        assert_eq!(
            resource.metadata_url,
            "https://h.example.com/.well-known/oauth-protected-resource/mcp"
        );
        for path in [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource?x=1",
        ] {
            let answer = metadata_answer(&config, "GET", path, "h.example.com").unwrap();
            assert_eq!(answer.status, 200, "{path}");
            let doc: Value = serde_json::from_str(&answer.body).unwrap();
            assert_eq!(
                doc,
                json!({
                    "resource": "https://h.example.com/mcp",
                    "authorization_servers": ["https://as.example.com"],
                    "scopes_supported": ["tools:call", "admin"],
                    "bearer_methods_supported": ["header"],
                    "resource_name": "Tools",
                    "dpop_bound_access_tokens_required": false,
                    "dpop_signing_alg_values_supported": ["ES256"],
                    "tls_client_certificate_bound_access_tokens": false
                })
            );
        }
        let head = metadata_answer(
            &config,
            "HEAD",
            "/.well-known/oauth-protected-resource",
            "h.example.com",
        )
        .unwrap();
        assert_eq!((head.status, head.body.as_str()), (200, ""));
        assert_eq!(
            metadata_answer(
                &config,
                "OPTIONS",
                "/.well-known/oauth-protected-resource",
                "h.example.com"
            )
            .unwrap()
            .status,
            204
        );
        let post = metadata_answer(
            &config,
            "POST",
            "/.well-known/oauth-protected-resource",
            "h.example.com",
        )
        .unwrap();
        assert_eq!(post.status, 405);
        assert!(post
            .headers
            .contains(&("allow".into(), "GET, HEAD, OPTIONS".into())));
        assert!(metadata_answer(
            &config,
            "GET",
            "/.well-known/oauth-protected-resource/other",
            "h"
        )
        .is_none());
        assert!(metadata_answer(&config, "GET", "/mcp", "h").is_none());
    }

    #[test]
    fn a_gateway_serves_one_resource_per_host() {
        let config = compile::configure(
            &json!({"providers": [{"issuer": "https://as", "jwksUri": "https://as/jwks"}],
            "protectedResource": [
                {"hosts": ["tools.example.com"], "resource": "https://tools.example.com/mcp"},
                {"resource": "https://api.example.com"}
            ]})
            .to_string(),
        )
        .unwrap();
        let doc = |host: &str| {
            let answer = metadata_answer(
                &config,
                "GET",
                "/.well-known/oauth-protected-resource",
                host,
            )
            .unwrap();
            serde_json::from_str::<Value>(&answer.body).unwrap()["resource"].clone()
        };
        assert_eq!(
            doc("tools.example.com:443"),
            json!("https://tools.example.com/mcp")
        );
        assert_eq!(doc("api.example.com"), json!("https://api.example.com"));
        assert_eq!(
            config
                .resource_for("api.example.com")
                .unwrap()
                .metadata_paths,
            ["/.well-known/oauth-protected-resource"]
        );
        let two_defaults = compile::configure(
            &json!({"providers": [{"issuer": "https://as", "jwksUri": "https://as/jwks"}],
                    "protectedResource": [{"resource": "https://a"}, {"resource": "https://b"}]})
            .to_string(),
        );
        assert_eq!(
            two_defaults.unwrap_err().to_string(),
            "protectedResource: more than one resource without hosts: give each but one its hosts"
        );
    }
}
