//! The parser's unit tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use serde_json::json;

const ISSUER: &str = "https://idp.example.com";
const JWKS_URI: &str = "https://idp.example.com/jwks";
const INLINE_JWKS: &str =
    r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE"}]}"#;

fn ok(json: &str) -> Config {
    parse(json).unwrap_or_else(|e| panic!("config rejected: {e}"))
}

fn problem(json: &str) -> String {
    match parse(json) {
        Ok(_) => panic!("config accepted: {json}"),
        Err(e) => e.to_string(),
    }
}

fn assert_problem(json: &str, expected: &str) {
    assert_eq!(problem(json), expected, "config: {json}");
}

/// A config with one provider: the minimal valid one, with `patch` applied (null removes a field).
fn provider_config(patch: Value) -> String {
    let mut provider = json!({"issuer": ISSUER, "jwksUri": JWKS_URI});
    for (key, value) in patch.as_object().unwrap() {
        if value.is_null() {
            provider.as_object_mut().unwrap().remove(key);
        } else {
            provider[key] = value.clone();
        }
    }
    json!({ "providers": [provider] }).to_string()
}

fn provider(patch: Value) -> Provider {
    ok(&provider_config(patch)).providers.remove(0)
}

/// A config with providers `idp` and `other`, and the given rules.
fn rules_config(rules: Value) -> String {
    json!({
        "providers": [
            {"name": "idp", "issuer": ISSUER, "jwksUri": JWKS_URI},
            {"name": "other", "issuer": "https://other.example.com", "jwks": INLINE_JWKS}
        ],
        "rules": rules
    })
    .to_string()
}

fn rule_config(rule: Value) -> String {
    rules_config(json!([rule]))
}

fn rule(rule: Value) -> Rule {
    ok(&rule_config(rule)).rules.remove(0)
}

// --- the whole document -------------------------------------------------------------------

#[test]
fn empty_config_is_refused() {
    assert_problem("", "(config): empty; expected a JSON object");
    assert_problem(" \n\t", "(config): empty; expected a JSON object");
}

#[test]
fn invalid_json_is_refused_with_its_position() {
    let message = problem(r#"{"providers": [}"#);
    assert!(
        message.starts_with("(config): not valid JSON: "),
        "{message}"
    );
    assert!(message.contains("line 1"), "{message}");
}

#[test]
fn non_object_config_is_refused() {
    assert_problem("[]", "(config): expected an object");
    assert_problem("\"x\"", "(config): expected an object");
}

#[test]
fn unknown_top_level_field_is_refused() {
    let mut config: Value = serde_json::from_str(&provider_config(json!({}))).unwrap();
    config["realms"] = json!("orders");
    assert_problem(&config.to_string(), "realms: unknown field");
}

#[test]
fn providers_are_required() {
    assert_problem("{}", "providers: required");
    assert_problem(
        r#"{"providers": []}"#,
        "providers: is empty, and unmatched (authenticated, the default) needs a token; list at least one provider",
    );
    assert_problem(
        r#"{"providers": [], "unmatched": "deny", "rules": [{"match": {"paths": ["/a"]}, "allowAnonymous": true}, {"requires": {}}]}"#,
        "providers: is empty, and rules[1] needs a token; list at least one provider",
    );
    assert_problem(
        r#"{"providers": [], "unmatched": "deny", "rules": [{"match": {"requestPrincipals": ["*"]}, "allowAnonymous": true}]}"#,
        "providers: is empty, and rules[0] needs a token; list at least one provider",
    );
    // Request and connection only: a converted AuthorizationPolicy without RequestAuthentication.
    let policy_only = ok(
        r#"{"providers": [], "unmatched": "deny", "rules": [{"match": {"namespaces": ["shop"]}, "allowAnonymous": true}]}"#,
    );
    assert!(policy_only.providers.is_empty());
    assert_problem(r#"{"providers": {}}"#, "providers: expected a list");
}

fn top_level(field: &str, value: Value) -> String {
    let mut config: Value = serde_json::from_str(&provider_config(json!({}))).unwrap();
    config[field] = value;
    config.to_string()
}

#[test]
fn top_level_values_are_read() {
    let config = ok(&top_level("unmatched", json!("anonymous")));
    assert_eq!(config.unmatched, Unmatched::Anonymous);
    let config = ok(&top_level("unmatched", json!("deny")));
    assert_eq!(config.unmatched, Unmatched::Deny);
    let config = ok(&top_level("mode", json!("report")));
    assert_eq!(config.mode, Mode::Report);
    let config = ok(&top_level("realm", json!("orders api")));
    assert_eq!(config.realm.as_deref(), Some("orders api"));
    let config = ok(&top_level("bypassCorsPreflight", json!(false)));
    assert!(!config.bypass_cors_preflight);
}

#[test]
fn unknown_unmatched_is_refused() {
    assert_problem(
        &top_level("unmatched", json!("allow")),
        "unmatched: must be \"authenticated\", \"anonymous\" or \"deny\"",
    );
}

#[test]
fn unknown_mode_is_refused() {
    assert_problem(
        &top_level("mode", json!("Enforce")),
        "mode: must be \"enforce\" or \"report\"",
    );
}

#[test]
fn realm_that_could_break_the_challenge_is_refused() {
    let expected =
        "realm: must be printable ASCII without '\"' or '\\' (it is sent in WWW-Authenticate)";
    assert_problem(&top_level("realm", json!("a\"b")), expected);
    assert_problem(&top_level("realm", json!("a\\b")), expected);
    assert_problem(&top_level("realm", json!("a\r\nb")), expected);
    assert_problem(&top_level("realm", json!("ünï")), expected);
    assert_problem(&top_level("realm", json!(" ")), "realm: must not be empty");
    assert_problem(&top_level("realm", json!(1)), "realm: expected a string");
}

#[test]
fn non_boolean_flag_is_refused() {
    assert_problem(
        &top_level("bypassCorsPreflight", json!("true")),
        "bypassCorsPreflight: expected true or false",
    );
}

#[test]
fn limits_are_read_and_default_individually() {
    let config = ok(&top_level(
        "limits",
        json!({"maxTokenBytes": 8192, "maxJwksKeys": 8}),
    ));
    let expected = Limits {
        max_token_bytes: 8192,
        max_jwks_keys: 8,
        ..Limits::default()
    };
    assert_eq!(config.limits, expected);
}

#[test]
fn cache_sizes_may_be_zero_but_not_negative() {
    let config = ok(&top_level(
        "limits",
        json!({"maxCachedTokens": 0, "maxCachedSessions": 0}),
    ));
    assert_eq!(
        (
            config.limits.max_cached_tokens,
            config.limits.max_cached_sessions
        ),
        (0, 0)
    );
    assert_eq!(
        ok(&top_level("limits", json!({"maxCachedSessions": 64}))).limits,
        Limits {
            max_cached_sessions: 64,
            ..Limits::default()
        }
    );
    assert_problem(
        &top_level("limits", json!({"maxCachedSessions": -1})),
        "limits.maxCachedSessions: must not be negative",
    );
}

#[test]
fn zero_limit_is_refused() {
    assert_problem(
        &top_level("limits", json!({"maxTokenBytes": 0})),
        "limits.maxTokenBytes: must be greater than zero",
    );
}

#[test]
fn negative_or_fractional_limit_is_refused() {
    assert_problem(
        &top_level("limits", json!({"maxJsonDepth": -1})),
        "limits.maxJsonDepth: must not be negative",
    );
    assert_problem(
        &top_level("limits", json!({"maxJwksBytes": 1.5})),
        "limits.maxJwksBytes: expected an integer",
    );
}

#[test]
fn unknown_limit_is_refused() {
    assert_problem(
        &top_level("limits", json!({"maxTokenSize": 10})),
        "limits.maxTokenSize: unknown field",
    );
    assert_problem(
        &top_level("limits", json!(10)),
        "limits: expected an object",
    );
}

// --- defaults -----------------------------------------------------------------------------

#[test]
fn minimal_config_yields_every_default() {
    let config = ok(
        r#"{"providers":[{"issuer":"https://idp.example.com","jwksUri":"https://idp.example.com/jwks"}]}"#,
    );
    assert!(config.rules.is_empty());
    assert_eq!(config.unmatched, Unmatched::Authenticated);
    assert_eq!(config.realm, None);
    assert!(config.bypass_cors_preflight);
    assert_eq!(config.mode, Mode::Enforce);
    assert_eq!(config.limits, Limits::default());

    let provider = &config.providers[0];
    assert_eq!(provider.name, ISSUER);
    assert_eq!(provider.issuer, ISSUER);
    assert!(provider.audiences.is_empty());
    assert_eq!(
        provider.keys,
        KeySource::Remote(HttpTarget {
            url: JWKS_URI.to_owned(),
            cluster: "outbound|443||idp.example.com".to_owned(),
            authority: "idp.example.com".to_owned(),
            path: "/jwks".to_owned(),
        })
    );
    assert_eq!(
        provider.from_headers,
        vec![HeaderLocation {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned()
        }]
    );
    assert!(provider.from_params.is_empty());
    assert!(provider.from_cookies.is_empty());
    assert_eq!(provider.output_payload_to_header, None);
    assert!(provider.output_claim_to_headers.is_empty());
    assert!(!provider.forward_original_token);
    assert_eq!(provider.timeout_ms, 5_000);
    assert_eq!(provider.clock_skew_seconds, 60);
    assert_eq!(
        provider.max_lifetime_seconds,
        Some(DEFAULT_MAX_LIFETIME_SECONDS)
    );
    assert_eq!(provider.jwks_cache_seconds, 600);
    assert_eq!(
        provider.scope_claims,
        vec![
            ClaimPath(vec!["scope".to_owned()]),
            ClaimPath(vec!["scp".to_owned()])
        ]
    );
}

#[test]
fn fetched_keys_default_to_every_asymmetric_algorithm() {
    let algorithms = provider(json!({})).algorithms;
    for alg in Alg::ALL {
        assert_eq!(
            algorithms.contains(alg),
            alg.key_family() != KeyFamily::Oct,
            "{alg}"
        );
    }
}

#[test]
fn inline_keys_default_to_every_algorithm() {
    let provider = provider(json!({"jwksUri": null, "jwks": INLINE_JWKS}));
    assert_eq!(provider.algorithms, AlgSet::all());
    assert_eq!(provider.keys, KeySource::Inline(INLINE_JWKS.to_owned()));
}

// --- key sources --------------------------------------------------------------------------

#[test]
fn explicit_port_names_cluster_and_authority() {
    let provider = provider(json!({"jwksUri": "http://127.0.0.1:8081/keys"}));
    assert_eq!(
        provider.keys,
        KeySource::Remote(HttpTarget {
            url: "http://127.0.0.1:8081/keys".to_owned(),
            cluster: "outbound|8081||127.0.0.1".to_owned(),
            authority: "127.0.0.1:8081".to_owned(),
            path: "/keys".to_owned(),
        })
    );
}

fn remote(provider: Provider) -> HttpTarget {
    match provider.keys {
        KeySource::Remote(target) => target,
        other => panic!("expected remote keys, got {other:?}"),
    }
}

#[test]
fn default_port_is_left_out_of_the_authority() {
    let target = remote(provider(json!({"jwksUri": "https://IdP.Example.com:443"})));
    assert_eq!(target.cluster, "outbound|443||idp.example.com");
    assert_eq!(target.authority, "idp.example.com");
    assert_eq!(target.path, "/");
    let target = remote(provider(
        json!({"jwksUri": "http://keys.internal?tenant=a"}),
    ));
    assert_eq!(target.cluster, "outbound|80||keys.internal");
    assert_eq!(target.authority, "keys.internal");
    assert_eq!(target.path, "/?tenant=a");
}

#[test]
fn query_is_kept_in_the_path() {
    let target = remote(provider(
        json!({"jwksUri": "https://idp.example.com/certs?v=2"}),
    ));
    assert_eq!(target.path, "/certs?v=2");
}

#[test]
fn ipv6_literal_is_accepted() {
    let target = remote(provider(json!({"jwksUri": "http://[::1]:8081/keys"})));
    assert_eq!(target.authority, "[::1]:8081");
    assert_eq!(target.cluster, "outbound|8081||::1");
}

#[test]
fn jwks_cluster_overrides_the_derived_name() {
    let target = remote(provider(json!({"jwksCluster": "idp-cluster"})));
    assert_eq!(target.cluster, "idp-cluster");
    assert_eq!(target.authority, "idp.example.com");
}

fn jwks_uri(uri: &str) -> String {
    provider_config(json!({ "jwksUri": uri }))
}

#[test]
fn non_http_jwks_uri_is_refused() {
    let expected = "providers[0].jwksUri: not an http(s) URL";
    assert_problem(&jwks_uri("ftp://idp.example.com/jwks"), expected);
    assert_problem(&jwks_uri("idp.example.com/jwks"), expected);
    assert_problem(&jwks_uri(""), expected);
}

#[test]
fn jwks_uri_without_host_is_refused() {
    assert_problem(
        &jwks_uri("https:///jwks"),
        "providers[0].jwksUri: has no host",
    );
    assert_problem(
        &jwks_uri("https://:443/jwks"),
        "providers[0].jwksUri: has no host",
    );
}

#[test]
fn jwks_uri_with_userinfo_is_refused() {
    assert_problem(
        &jwks_uri("https://user:pw@idp.example.com/jwks"),
        "providers[0].jwksUri: must not contain userinfo",
    );
}

#[test]
fn jwks_uri_with_fragment_is_refused() {
    assert_problem(
        &jwks_uri("https://idp.example.com/jwks#keys"),
        "providers[0].jwksUri: must not have a fragment",
    );
}

#[test]
fn jwks_uri_with_bad_port_is_refused() {
    let expected = "providers[0].jwksUri: port must be 1-65535";
    for uri in [
        "https://idp.example.com:0/jwks",
        "https://idp.example.com:65536/jwks",
        "https://idp.example.com:/jwks",
        "https://idp.example.com:+443/jwks",
        "https://idp.example.com:https/jwks",
    ] {
        assert_problem(&jwks_uri(uri), expected);
    }
}

#[test]
fn jwks_uri_with_bad_host_is_refused() {
    assert_problem(
        &jwks_uri("https://idp%2eexample.com/jwks"),
        "providers[0].jwksUri: has an invalid host",
    );
    assert_problem(
        &jwks_uri("http://[::1/keys"),
        "providers[0].jwksUri: has an unterminated IPv6 address",
    );
    assert_problem(
        &jwks_uri("http://[example]/keys"),
        "providers[0].jwksUri: has an invalid IPv6 address",
    );
    assert_problem(
        &jwks_uri("http://[::1]x/keys"),
        "providers[0].jwksUri: has something other than a port after the IPv6 address",
    );
}

#[test]
fn jwks_uri_with_unsendable_characters_is_refused() {
    let expected = "providers[0].jwksUri: contains a character that is not allowed in a URL (space, control, non-ASCII or '\\')";
    assert_problem(&jwks_uri("https://idp.example.com/my keys"), expected);
    assert_problem(&jwks_uri("https://idp.example.com/\\keys"), expected);
}

#[test]
fn jwks_and_jwks_uri_together_are_refused() {
    assert_problem(
        &provider_config(json!({ "jwks": INLINE_JWKS })),
        "providers[0].jwksUri: give either jwks or jwksUri, not both",
    );
}

#[test]
fn jwks_cluster_with_inline_jwks_is_refused() {
    assert_problem(
        &provider_config(json!({"jwksUri": null, "jwks": INLINE_JWKS, "jwksCluster": "x"})),
        "providers[0].jwksCluster: keys are never fetched for a provider with inline jwks",
    );
}

fn inline_jwks(jwks: Value) -> String {
    provider_config(json!({"jwksUri": null, "jwks": jwks}))
}

#[test]
fn revocations_are_read_and_checked() {
    let p = provider(json!({"revoked": {"jtis": ["a"], "subjects": ["b"],
                                        "subjectsIssuedBefore": {"c": 1700000000}}}));
    assert!(p.revoked.jtis.contains("a"));
    assert!(p.revoked.subjects.contains("b"));
    assert_eq!(
        p.revoked.subjects_issued_before.get("c"),
        Some(&1_700_000_000)
    );
    assert_problem(
        &provider_config(json!({"revoked": {"subjectsIssuedBefore": {"c": -1}}})),
        "providers[0].revoked.subjectsIssuedBefore.c: must not be negative",
    );
    assert_problem(
        &provider_config(json!({"revoked": {"jti": ["a"]}})),
        "providers[0].revoked.jti: unknown field",
    );
}

#[test]
fn duplicate_member_names_are_refused() {
    assert_problem(
        r#"{"providers":[{"issuer":"https://a","issuer":"https://b","jwksUri":"https://a/k"}]}"#,
        "(config): duplicate member name",
    );
}

#[test]
fn inline_jwks_as_an_object_instead_of_a_string_is_refused() {
    assert_problem(
        &inline_jwks(json!({"keys": []})),
        "providers[0].jwks: expected a string",
    );
}

#[test]
fn discovery_is_used_without_jwks_or_jwks_uri() {
    let provider = provider(json!({
        "issuer": "https://sso.example.com:8443/realms/shop/",
        "jwksUri": null
    }));
    assert_eq!(
        provider.keys,
        KeySource::Discovery(HttpTarget {
            url: "https://sso.example.com:8443/realms/shop/.well-known/openid-configuration"
                .to_owned(),
            cluster: "outbound|8443||sso.example.com".to_owned(),
            authority: "sso.example.com:8443".to_owned(),
            path: "/realms/shop/.well-known/openid-configuration".to_owned(),
        })
    );
}

#[test]
fn discovery_honours_jwks_cluster() {
    let provider = provider(json!({"jwksUri": null, "jwksCluster": "sso"}));
    match provider.keys {
        KeySource::Discovery(target) => assert_eq!(target.cluster, "sso"),
        other => panic!("expected discovery, got {other:?}"),
    }
}

#[test]
fn discovery_needs_an_http_issuer() {
    let expected =
        "providers[0]: no jwks or jwksUri, and issuer is not an http(s) URL to discover keys from";
    assert_problem(
        &provider_config(json!({"issuer": "acme", "jwksUri": null})),
        expected,
    );
    assert_problem(
        &provider_config(json!({"issuer": "https://idp.example.com?tenant=a", "jwksUri": null})),
        expected,
    );
}

// --- provider fields ----------------------------------------------------------------------

#[test]
fn unknown_provider_field_is_refused() {
    assert_problem(
        &provider_config(json!({"jwks_uri": JWKS_URI})),
        "providers[0].jwks_uri: unknown field",
    );
}

#[test]
fn issuer_is_required_and_not_empty() {
    assert_problem(
        &provider_config(json!({"issuer": null})),
        "providers[0].issuer: required",
    );
    assert_problem(
        &provider_config(json!({"issuer": ""})),
        "providers[0].issuer: must not be empty",
    );
    assert_problem(
        &provider_config(json!({"issuer": 7})),
        "providers[0].issuer: expected a string",
    );
}

#[test]
fn provider_that_is_not_an_object_is_refused() {
    assert_problem(
        r#"{"providers": ["https://idp.example.com"]}"#,
        "providers[0]: expected an object",
    );
}

#[test]
fn duplicate_provider_name_is_refused() {
    let config = json!({"providers": [
        {"name": "idp", "issuer": ISSUER, "jwksUri": JWKS_URI},
        {"name": "idp", "issuer": "https://other.example.com", "jwksUri": JWKS_URI}
    ]});
    assert_problem(
        &config.to_string(),
        "providers[1].name: providers[0] already has this name",
    );
}

#[test]
fn provider_names_alike_in_metric_names_are_refused() {
    let config = json!({"providers": [
        {"name": "a-b", "issuer": ISSUER, "jwksUri": JWKS_URI},
        {"name": "a.b", "issuer": "https://other.example.com", "jwksUri": JWKS_URI}
    ]});
    assert_problem(
        &config.to_string(),
        "providers[1].name: the name \"a.b\" and the name of providers[0] are both \"a_b\" in metric names: rename one",
    );
    let defaulted = json!({"providers": [
        {"name": "https_//other_example_com", "issuer": ISSUER, "jwksUri": JWKS_URI},
        {"issuer": "https://other.example.com", "jwksUri": JWKS_URI}
    ]});
    let problem = crate::config::parse(&defaulted.to_string()).unwrap_err();
    assert_eq!(problem.path, "providers[1].issuer", "{problem}");
}

#[test]
fn duplicate_defaulted_provider_name_is_reported_on_the_issuer() {
    let config = json!({"providers": [
        {"name": "https://other.example.com", "issuer": ISSUER, "jwksUri": JWKS_URI},
        {"issuer": "https://other.example.com", "jwksUri": JWKS_URI}
    ]});
    assert_problem(
        &config.to_string(),
        "providers[1].issuer: the name defaults to the issuer, which providers[0] already has as its name",
    );
}

#[test]
fn duplicate_issuer_is_refused() {
    let config = json!({"providers": [
        {"name": "a", "issuer": ISSUER, "jwksUri": JWKS_URI},
        {"name": "b", "issuer": ISSUER, "jwksUri": JWKS_URI}
    ]});
    assert_problem(
        &config.to_string(),
        "providers[1].issuer: same issuer as providers[0]",
    );
}

#[test]
fn empty_audience_is_refused() {
    assert_problem(
        &provider_config(json!({"audiences": ["api", ""]})),
        "providers[0].audiences[1]: must not be empty",
    );
    assert_problem(
        &provider_config(json!({"audiences": "api"})),
        "providers[0].audiences: expected a list",
    );
}

#[test]
fn header_locations_are_lower_cased_with_prefix_default_empty() {
    let provider = provider(json!({"fromHeaders": [
        {"name": "X-Jwt-Assertion"},
        {"name": "Authorization", "prefix": "Bearer "}
    ]}));
    assert_eq!(
        provider.from_headers,
        vec![
            HeaderLocation {
                name: "x-jwt-assertion".to_owned(),
                prefix: String::new()
            },
            HeaderLocation {
                name: "authorization".to_owned(),
                prefix: "Bearer ".to_owned()
            },
        ]
    );
}

#[test]
fn header_location_needs_a_valid_name() {
    assert_problem(
        &provider_config(json!({"fromHeaders": [{"prefix": "Bearer "}]})),
        "providers[0].fromHeaders[0].name: required",
    );
    assert_problem(
        &provider_config(json!({"fromHeaders": [{"name": "x token"}]})),
        "providers[0].fromHeaders[0].name: not a valid HTTP header name",
    );
    assert_problem(
        &provider_config(json!({"fromHeaders": [{"name": "x", "scheme": "Bearer"}]})),
        "providers[0].fromHeaders[0].scheme: unknown field",
    );
}

#[test]
fn provider_without_any_token_location_is_refused() {
    assert_problem(
        &provider_config(json!({"fromHeaders": []})),
        "providers[0].fromHeaders: is empty and there are no fromParams or fromCookies: a token could never be found",
    );
}

#[test]
fn params_or_cookies_alone_replace_the_default_header() {
    // Istio/Envoy: the Authorization default applies only when no location is configured.
    let param_provider = provider(json!({"fromParams": ["access_token"]}));
    assert!(param_provider.from_headers.is_empty());
    assert_eq!(param_provider.from_params, vec!["access_token".to_owned()]);
    let cookie_provider = provider(json!({"fromHeaders": [], "fromCookies": ["session"]}));
    assert!(cookie_provider.from_headers.is_empty());
    assert_eq!(cookie_provider.from_cookies, vec!["session".to_owned()]);
}

#[test]
fn empty_param_or_cookie_name_is_refused() {
    assert_problem(
        &provider_config(json!({"fromParams": [""]})),
        "providers[0].fromParams[0]: must not be empty",
    );
    assert_problem(
        &provider_config(json!({"fromCookies": ["a", 1]})),
        "providers[0].fromCookies[1]: expected a string",
    );
}

#[test]
fn output_headers_must_be_settable_header_names() {
    assert_problem(
        &provider_config(json!({"outputPayloadToHeader": ":path"})),
        "providers[0].outputPayloadToHeader: pseudo-headers cannot be used",
    );
    assert_problem(
        &provider_config(json!({"outputPayloadToHeader": "x payload"})),
        "providers[0].outputPayloadToHeader: not a valid HTTP header name",
    );
    assert_problem(
        &provider_config(json!({"outputClaimToHeaders": [{"header": "x-sub:", "claim": "sub"}]})),
        "providers[0].outputClaimToHeaders[0].header: not a valid HTTP header name",
    );
}

#[test]
fn output_claim_needs_a_claim_path() {
    assert_problem(
        &provider_config(json!({"outputClaimToHeaders": [{"header": "x-sub"}]})),
        "providers[0].outputClaimToHeaders[0].claim: required",
    );
    assert_problem(
        &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": "a..b"}]})),
        "providers[0].outputClaimToHeaders[0].claim: has an empty name between dots (for names with dots, use a list of names)",
    );
    assert_problem(
        &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": []}]})),
        "providers[0].outputClaimToHeaders[0].claim: must not be empty",
    );
    assert_problem(
        &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": ["a", ""]}]})),
        "providers[0].outputClaimToHeaders[0].claim[1]: must not be empty",
    );
    assert_problem(
        &provider_config(json!({"outputClaimToHeaders": [{"header": "x-r", "claim": 1}]})),
        "providers[0].outputClaimToHeaders[0].claim: expected a claim path: a dotted string or a list of names",
    );
}

fn timeout(value: Value) -> Result<u64, String> {
    parse(&provider_config(json!({ "timeout": value })))
        .map(|mut config| config.providers.remove(0).timeout_ms)
        .map_err(|e| e.to_string())
}

#[test]
fn timeouts_are_read_in_milliseconds() {
    assert_eq!(timeout(json!("5s")), Ok(5_000));
    assert_eq!(timeout(json!("500ms")), Ok(500));
    assert_eq!(timeout(json!("1.5s")), Ok(1_500));
    assert_eq!(timeout(json!("0.250s")), Ok(250));
    assert_eq!(timeout(json!("2m")), Ok(120_000));
    assert_eq!(timeout(json!("1h")), Ok(3_600_000));
    assert_eq!(timeout(json!("1.000s")), Ok(1_000));
}

#[test]
fn malformed_timeout_is_refused() {
    let expected =
        "providers[0].timeout: not a duration like \"5s\", \"500ms\" or \"1.5s\"".to_owned();
    for text in [
        "5", "s", ".5s", "5.s", "1.5.2s", "5 s", "5sec", "+5s", "1e3ms", "",
    ] {
        assert_eq!(timeout(json!(text)), Err(expected.clone()), "{text:?}");
    }
    assert_eq!(
        timeout(json!(5)),
        Err("providers[0].timeout: expected a string".to_owned())
    );
}

#[test]
fn negative_timeout_is_refused() {
    assert_eq!(
        timeout(json!("-5s")),
        Err("providers[0].timeout: must not be negative".to_owned())
    );
}

#[test]
fn zero_timeout_is_refused() {
    for text in ["0s", "0ms", "0.000s"] {
        assert_eq!(
            timeout(json!(text)),
            Err("providers[0].timeout: must be greater than zero".to_owned())
        );
    }
}

#[test]
fn sub_millisecond_timeout_is_refused() {
    let expected = "providers[0].timeout: must be a whole number of milliseconds".to_owned();
    assert_eq!(timeout(json!("1.5ms")), Err(expected.clone()));
    assert_eq!(timeout(json!("0.0001s")), Err(expected.clone()));
    assert_eq!(timeout(json!("1.0000000001h")), Err(expected));
}

#[test]
fn huge_timeout_is_refused_not_wrapped() {
    let expected = "providers[0].timeout: is too large".to_owned();
    assert_eq!(
        timeout(json!("99999999999999999999ms")),
        Err(expected.clone())
    );
    assert_eq!(timeout(json!("18446744073709551615h")), Err(expected));
}

#[test]
fn negative_seconds_are_refused() {
    assert_problem(
        &provider_config(json!({"clockSkewSeconds": -1})),
        "providers[0].clockSkewSeconds: must not be negative",
    );
    assert_problem(
        &provider_config(json!({"maxLifetimeSeconds": -3600})),
        "providers[0].maxLifetimeSeconds: must not be negative",
    );
}

#[test]
fn fractional_or_textual_seconds_are_refused() {
    assert_problem(
        &provider_config(json!({"clockSkewSeconds": 1.5})),
        "providers[0].clockSkewSeconds: expected an integer",
    );
    assert_problem(
        &provider_config(json!({"jwksCacheSeconds": "600"})),
        "providers[0].jwksCacheSeconds: expected an integer",
    );
}

#[test]
fn zero_cache_time_is_refused_but_zero_skew_or_lifetime_is_fine() {
    assert_problem(
        &provider_config(json!({"jwksCacheSeconds": 0})),
        "providers[0].jwksCacheSeconds: must be greater than zero",
    );
    assert_eq!(
        provider(json!({"clockSkewSeconds": 0})).clock_skew_seconds,
        0
    );
}

#[test]
fn empty_scope_claims_are_refused() {
    assert_problem(
        &provider_config(json!({"scopeClaims": []})),
        "providers[0].scopeClaims: must not be empty",
    );
}

#[test]
fn none_algorithm_is_refused() {
    assert_problem(
        &provider_config(json!({"algorithms": ["RS256", "none"]})),
        "providers[0].algorithms[1]: unsecured tokens cannot be allowed",
    );
}

#[test]
fn unknown_algorithm_is_refused() {
    assert_problem(
        &provider_config(json!({"algorithms": ["rs256"]})),
        "providers[0].algorithms[0]: unknown algorithm (supported: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA, HS256, HS384, HS512; names are case-sensitive)",
    );
}

#[test]
fn empty_or_repeated_algorithms_are_refused() {
    assert_problem(
        &provider_config(json!({"algorithms": []})),
        "providers[0].algorithms: must not be empty",
    );
    assert_problem(
        &provider_config(json!({"algorithms": ["ES256", "RS256", "ES256"]})),
        "providers[0].algorithms[2]: listed twice",
    );
}

#[test]
fn hmac_needs_inline_keys() {
    assert_problem(
        &provider_config(json!({"algorithms": ["RS256", "HS256"]})),
        "providers[0].algorithms[1]: HS256 needs the HMAC key inline in jwks",
    );
    assert_problem(
        &provider_config(json!({"jwksUri": null, "algorithms": ["HS512"]})),
        "providers[0].algorithms[0]: HS512 needs the HMAC key inline in jwks",
    );
    let provider = provider(json!({"jwksUri": null, "jwks": INLINE_JWKS, "algorithms": ["HS256"]}));
    assert!(provider.algorithms.iter().eq([Alg::HS256]));
}

// --- rules --------------------------------------------------------------------------------

#[test]
fn rule_names_default_to_their_position() {
    let config = ok(&rules_config(
        json!([{"deny": true}, {"name": "open", "allowAnonymous": true}]),
    ));
    assert_eq!(config.rules[0].name, "rules[0]");
    assert_eq!(config.rules[1].name, "open");
    assert!(matches!(config.rules[0].action, Action::Deny));
    assert!(matches!(config.rules[1].action, Action::AllowAnonymous));
}

#[test]
fn duplicate_rule_name_is_refused() {
    assert_problem(
        &rules_config(json!([{"name": "a", "deny": true}, {"name": "a", "deny": true}])),
        "rules[1].name: rules[0] already has the name \"a\"",
    );
    assert_problem(
        &rules_config(json!([{"name": "rules[1]", "deny": true}, {"deny": true}])),
        "rules[1]: rules[0] already has the name \"rules[1]\"",
    );
}

#[test]
fn unknown_rule_field_is_refused() {
    assert_problem(
        &rule_config(json!({"deny": true, "when": {}})),
        "rules[0].when: unknown field",
    );
    assert_problem(
        &rule_config(json!({"deny": true, "match": {"path": ["/a"]}})),
        "rules[0].match.path: unknown field",
    );
    assert_problem(&rules_config(json!({})), "rules: expected a list");
}

#[test]
fn rule_without_action_is_refused() {
    assert_problem(
        &rule_config(json!({"match": {"paths": ["/a"]}})),
        "rules[0]: needs one of allowAnonymous: true, deny: true, requires or requiresAny",
    );
}

#[test]
fn rule_with_two_actions_is_refused() {
    assert_problem(
        &rule_config(json!({"allowAnonymous": true, "requires": {}})),
        "rules[0]: has both allowAnonymous and requires; give exactly one",
    );
    assert_problem(
        &rule_config(json!({"deny": true, "requiresAny": [{}]})),
        "rules[0]: has both deny and requiresAny; give exactly one",
    );
}

#[test]
fn false_action_flags_are_refused() {
    assert_problem(
        &rule_config(json!({"allowAnonymous": false, "requires": {}})),
        "rules[0].allowAnonymous: false has no meaning; leave the field out",
    );
    assert_problem(
        &rule_config(json!({"deny": false})),
        "rules[0].deny: false has no meaning; leave the field out",
    );
}

#[test]
fn absent_match_matches_everything() {
    for parsed in [
        rule(json!({"deny": true})),
        rule(json!({"match": {}, "deny": true})),
    ] {
        assert!(parsed.matcher.conditions.is_empty());
    }
}

#[test]
fn empty_match_list_is_refused() {
    for key in ["paths", "methods", "hosts"] {
        assert_problem(
            &rule_config(json!({"match": {key: []}, "deny": true})),
            &format!("rules[0].match.{key}: is empty and would match nothing; leave it out to match everything"),
        );
    }
}

/// The patterns of one `match` field, as parsed.
fn listed<'a>(matcher: &'a RuleMatch, field: &str) -> Vec<&'a Pattern> {
    matcher
        .conditions
        .iter()
        .filter(|c| c.field == field)
        .flat_map(|c| c.any_of.iter().chain(c.none_of.iter()).flatten())
        .collect()
}

fn listed_paths(matcher: &RuleMatch) -> Vec<PathPattern> {
    listed(matcher, "paths")
        .into_iter()
        .filter_map(|p| match p {
            Pattern::Path(path) => Some(path.clone()),
            _ => None,
        })
        .collect()
}

fn listed_hosts(matcher: &RuleMatch) -> Vec<HostPattern> {
    listed(matcher, "hosts")
        .into_iter()
        .filter_map(|p| match p {
            Pattern::Host(host) => Some(host.clone()),
            _ => None,
        })
        .collect()
}

fn paths(patterns: Value) -> Result<Vec<PathPattern>, String> {
    parse(&rule_config(
        json!({"match": {"paths": patterns}, "deny": true}),
    ))
    .map(|mut config| listed_paths(&config.rules.remove(0).matcher))
    .map_err(|e| e.to_string())
}

#[test]
fn path_patterns_follow_istio_syntax() {
    assert_eq!(
        paths(json!(["*", "/a/b", "/a/*", "*.png", "/api*"])),
        Ok(vec![
            PathPattern::Any,
            PathPattern::Exact("/a/b".to_owned()),
            PathPattern::Prefix("/a/".to_owned()),
            PathPattern::Suffix(".png".to_owned()),
            PathPattern::Prefix("/api".to_owned()),
        ])
    );
}

#[test]
fn misplaced_star_in_path_is_refused() {
    let expected =
        "rules[0].match.paths[1]: '*' is only allowed alone, at the start (suffix) or at the end (prefix)"
            .to_owned();
    for pattern in ["/a/*/b", "**", "*.p*", "/a**"] {
        assert_eq!(
            paths(json!(["/ok", pattern])),
            Err(expected.clone()),
            "{pattern}"
        );
    }
}

#[test]
fn relative_path_is_refused() {
    assert_eq!(
        paths(json!(["orders/*"])),
        Err("rules[0].match.paths[0]: must start with '/' (or '*' for a suffix)".to_owned())
    );
}

#[test]
fn path_with_query_is_refused() {
    assert_eq!(
        paths(json!(["/a?b=c"])),
        Err("rules[0].match.paths[0]: must not contain '?' or '#': paths are matched without the query string".to_owned())
    );
}

#[test]
fn path_that_normalisation_rules_out_is_refused() {
    let expected = "rules[0].match.paths[0]: never matches: request paths are normalised (no '//', '.' or '..' segments)".to_owned();
    for pattern in ["/a//b", "/a/../b", "/./a", "/a/..*"] {
        assert_eq!(paths(json!([pattern])), Err(expected.clone()), "{pattern}");
    }
}

#[test]
fn path_with_unsendable_characters_is_refused() {
    assert_eq!(
        paths(json!(["/my orders"])),
        Err("rules[0].match.paths[0]: contains a character a request path cannot have (space, control or non-ASCII)".to_owned())
    );
    assert_eq!(
        paths(json!([""])),
        Err("rules[0].match.paths[0]: must not be empty".to_owned())
    );
}

#[test]
fn lower_case_method_is_refused() {
    assert_problem(
        &rule_config(json!({"match": {"methods": ["GET", "post"]}, "deny": true})),
        "rules[0].match.methods[1]: methods must be upper-case",
    );
    assert_problem(
        &rule_config(json!({"match": {"methods": ["GE T"]}, "deny": true})),
        "rules[0].match.methods[0]: not an HTTP method",
    );
}

fn hosts(patterns: Value) -> Result<Vec<HostPattern>, String> {
    parse(&rule_config(
        json!({"match": {"hosts": patterns}, "deny": true}),
    ))
    .map(|mut config| listed_hosts(&config.rules.remove(0).matcher))
    .map_err(|e| e.to_string())
}

#[test]
fn host_patterns_are_lower_cased() {
    assert_eq!(
        hosts(json!(["Orders.Example.com", "*.Example.com", "*", "[::1]"])),
        Ok(vec![
            HostPattern::Exact("orders.example.com".to_owned()),
            HostPattern::WildcardSuffix(".example.com".to_owned()),
            HostPattern::Any,
            HostPattern::Exact("[::1]".to_owned()),
        ])
    );
}

#[test]
fn host_with_port_is_refused() {
    assert_eq!(
        hosts(json!(["orders.example.com:443"])),
        Err(
            "rules[0].match.hosts[0]: must not include a port: hosts are matched without it"
                .to_owned()
        )
    );
}

#[test]
fn misplaced_host_wildcard_is_refused() {
    let expected =
        "rules[0].match.hosts[0]: not a host name, \"*\" or \"*.\" followed by a domain".to_owned();
    for pattern in ["orders.*.com", "*example.com", "*.", "exa mple.com"] {
        assert_eq!(hosts(json!([pattern])), Err(expected.clone()), "{pattern}");
    }
}

#[test]
fn requirement_names_providers_by_index() {
    let rule =
        rule(json!({"requires": {"providers": ["other", "idp"], "scopes": ["orders:write"]}}));
    let Action::Requires(requirement) = rule.action else {
        panic!("expected requires");
    };
    assert_eq!(requirement.providers, Some(vec![1, 0]));
    assert_eq!(requirement.scopes, vec!["orders:write".to_owned()]);
}

#[test]
fn empty_requirement_accepts_any_valid_token() {
    let rule = rule(json!({"requires": {}}));
    let Action::Requires(requirement) = rule.action else {
        panic!("expected requires");
    };
    assert_eq!(requirement.providers, None);
    assert!(requirement.scopes.is_empty());
    assert!(requirement.claims.is_empty());
}

#[test]
fn unknown_required_provider_is_refused() {
    assert_problem(
        &rule_config(json!({"requires": {"providers": ["idp", "keycloak"]}})),
        "rules[0].requires.providers[1]: no provider is named \"keycloak\"",
    );
}

#[test]
fn empty_or_repeated_required_providers_are_refused() {
    assert_problem(
        &rule_config(json!({"requires": {"providers": []}})),
        "rules[0].requires.providers: must not be empty",
    );
    assert_problem(
        &rule_config(json!({"requires": {"providers": ["idp", "idp"]}})),
        "rules[0].requires.providers[1]: listed twice",
    );
}

#[test]
fn invalid_scope_is_refused() {
    let expected =
        "rules[0].requires.scopes[0]: not a scope: printable ASCII without spaces, '\"' or '\\'";
    for scope in ["orders write", "a\"b", "a\\b"] {
        assert_problem(
            &rule_config(json!({"requires": {"scopes": [scope]}})),
            expected,
        );
    }
    assert_problem(
        &rule_config(json!({"requires": {"scopes": [""]}})),
        "rules[0].requires.scopes[0]: must not be empty",
    );
}

fn claim_condition(condition: Value) -> String {
    rule_config(json!({"requires": {"claims": [condition]}}))
}

#[test]
fn claim_conditions_are_read() {
    let rule = rule(json!({"requires": {"claims": [
        {"claim": "realm_access.roles", "anyOf": ["editor", 3, true]},
        {"claim": ["https://example.com/groups"], "allOf": ["a"]},
        {"claim": "email_verified", "present": true}
    ]}}));
    let Action::Requires(requirement) = rule.action else {
        panic!("expected requires");
    };
    let [roles, groups, verified] = &requirement.claims[..] else {
        panic!("expected three conditions");
    };
    assert_eq!(roles.claim.0, vec!["realm_access", "roles"]);
    assert!(
        matches!(&roles.test, ClaimTest::AnyOf(v) if v == &vec![json!("editor"), json!(3), json!(true)])
    );
    assert_eq!(groups.claim.0, vec!["https://example.com/groups"]);
    assert!(matches!(&groups.test, ClaimTest::AllOf(v) if v == &vec![json!("a")]));
    assert!(matches!(verified.test, ClaimTest::Present));
}

#[test]
fn claim_condition_needs_a_claim() {
    assert_problem(
        &claim_condition(json!({"anyOf": ["a"]})),
        "rules[0].requires.claims[0].claim: required",
    );
}

#[test]
fn empty_claim_values_are_refused() {
    assert_problem(
        &claim_condition(json!({"claim": "roles", "anyOf": []})),
        "rules[0].requires.claims[0].anyOf: must not be empty",
    );
    assert_problem(
        &claim_condition(json!({"claim": "roles", "allOf": []})),
        "rules[0].requires.claims[0].allOf: must not be empty",
    );
}

#[test]
fn structured_claim_values_are_refused() {
    assert_problem(
        &claim_condition(json!({"claim": "roles", "anyOf": ["a", null]})),
        "rules[0].requires.claims[0].anyOf[1]: expected a string, number or boolean",
    );
    assert_problem(
        &claim_condition(json!({"claim": "roles", "allOf": [["a"]]})),
        "rules[0].requires.claims[0].allOf[0]: expected a string, number or boolean",
    );
}

#[test]
fn claim_condition_needs_exactly_one_test() {
    assert_problem(
        &claim_condition(json!({"claim": "roles"})),
        "rules[0].requires.claims[0]: needs one of anyOf, allOf or present: true",
    );
    assert_problem(
        &claim_condition(json!({"claim": "roles", "anyOf": ["a"], "allOf": ["b"]})),
        "rules[0].requires.claims[0]: give only one of anyOf, allOf or present",
    );
    assert_problem(
        &claim_condition(json!({"claim": "roles", "present": false})),
        "rules[0].requires.claims[0].present: only true is supported; leave it out otherwise",
    );
    assert_problem(
        &claim_condition(json!({"claim": "roles", "noneOf": ["a"]})),
        "rules[0].requires.claims[0].noneOf: unknown field",
    );
}

#[test]
fn requires_any_lists_requirements() {
    let rule = rule(json!({"requiresAny": [{"scopes": ["a"]}, {"providers": ["other"]}]}));
    let Action::RequiresAny(requirements) = rule.action else {
        panic!("expected requiresAny");
    };
    assert_eq!(requirements.len(), 2);
    assert_eq!(requirements[1].providers, Some(vec![1]));
}

#[test]
fn empty_requires_any_is_refused() {
    assert_problem(
        &rule_config(json!({"requiresAny": []})),
        "rules[0].requiresAny: must not be empty",
    );
    assert_problem(
        &rule_config(json!({"requiresAny": [{"scopes": ["a b"]}]})),
        "rules[0].requiresAny[0].scopes[0]: not a scope: printable ASCII without spaces, '\"' or '\\'",
    );
}

// --- whole configurations -----------------------------------------------------------------

#[test]
fn istio_jwt_rules_paste_unchanged() {
    // `jwtRules` entries of a RequestAuthentication, as Istio's docs write them.
    let config = ok(r#"{
      "providers": [
        {
          "issuer": "https://accounts.google.com",
          "audiences": ["bookstore_android.apps.googleusercontent.com", "bookstore_web.apps.googleusercontent.com"],
          "jwksUri": "https://www.googleapis.com/oauth2/v1/certs",
          "fromHeaders": [{"name": "x-goog-iap-jwt-assertion"}, {"name": "Authorization", "prefix": "Bearer "}],
          "fromParams": ["my_token"],
          "outputPayloadToHeader": "x-jwt-payload",
          "outputClaimToHeaders": [{"header": "x-jwt-claim-group", "claim": "group"}],
          "forwardOriginalToken": true,
          "timeout": "10s"
        },
        {
          "issuer": "testing@secure.istio.io",
          "jwksUri": "https://raw.githubusercontent.com/istio/istio/release-1.22/security/tools/jwt/samples/jwks.json"
        }
      ]
    }"#);
    let google = &config.providers[0];
    assert_eq!(google.audiences.len(), 2);
    assert_eq!(google.from_headers[0].name, "x-goog-iap-jwt-assertion");
    assert_eq!(google.from_headers[0].prefix, "");
    assert_eq!(google.from_params, vec!["my_token".to_owned()]);
    assert_eq!(
        google.output_payload_to_header.as_deref(),
        Some("x-jwt-payload")
    );
    assert_eq!(google.output_claim_to_headers[0].claim.0, vec!["group"]);
    assert!(google.forward_original_token);
    assert_eq!(google.timeout_ms, 10_000);
    assert_eq!(
        remote(google.clone()).cluster,
        "outbound|443||www.googleapis.com"
    );
    assert_eq!(
        remote(config.providers[1].clone()).authority,
        "raw.githubusercontent.com"
    );
}

#[test]
fn full_config_with_every_field() {
    let config = ok(r#"{
      "providers": [
        {
          "name": "keycloak",
          "issuer": "https://sso.example.com/realms/shop",
          "audiences": ["orders"],
          "jwksUri": "https://sso.example.com/realms/shop/protocol/openid-connect/certs",
          "jwksCluster": "outbound|443||sso.example.com",
          "fromHeaders": [{"name": "Authorization", "prefix": "Bearer "}],
          "fromParams": ["access_token"],
          "fromCookies": ["session"],
          "outputPayloadToHeader": "X-Jwt-Payload",
          "outputClaimToHeaders": [
            {"header": "x-user", "claim": "preferred_username"},
            {"header": "x-roles", "claim": ["realm_access", "roles"]}
          ],
          "forwardOriginalToken": false,
          "timeout": "1.5s",
          "clockSkewSeconds": 30,
          "maxLifetimeSeconds": 3600,
          "jwksCacheSeconds": 300,
          "scopeClaims": ["scope", "authorization.permissions"],
          "algorithms": ["RS256", "PS256", "ES256", "EdDSA"]
        },
        {
          "name": "internal",
          "issuer": "internal-ci",
          "jwks": "{\"keys\": [{\"kty\": \"oct\", \"kid\": \"ci\", \"k\": \"c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1sZW5ndGghISE\"}]}",
          "algorithms": ["HS256"]
        }
      ],
      "rules": [
        {"name": "health", "match": {"paths": ["/healthz", "/metrics*"], "methods": ["GET"]}, "allowAnonymous": true},
        {"name": "admin", "match": {"paths": ["/admin/*"], "hosts": ["*.internal.example.com"]}, "deny": true},
        {"name": "orders-write",
         "match": {"paths": ["/orders/*"], "methods": ["POST", "PUT", "DELETE"], "hosts": ["orders.example.com"]},
         "requires": {"providers": ["keycloak"], "scopes": ["orders:write"],
                      "claims": [{"claim": "realm_access.roles", "anyOf": ["editor", "admin"]}]}},
        {"name": "reports",
         "match": {"paths": ["*.csv"]},
         "requiresAny": [{"providers": ["internal"]}, {"scopes": ["reports:read"]}]}
      ],
      "unmatched": "deny",
      "realm": "orders",
      "bypassCorsPreflight": false,
      "mode": "report",
      "limits": {"maxTokenBytes": 8192, "maxJsonDepth": 8, "maxJsonMembers": 128, "maxJwksBytes": 65536, "maxJwksKeys": 16, "maxHeldRequests": 10}
    }"#);
    assert_eq!(config.providers.len(), 2);
    assert_eq!(config.rules.len(), 4);
    assert_eq!(config.unmatched, Unmatched::Deny);
    assert_eq!(config.realm.as_deref(), Some("orders"));
    assert!(!config.bypass_cors_preflight);
    assert_eq!(config.mode, Mode::Report);
    assert_eq!(
        config.limits,
        Limits {
            max_token_bytes: 8192,
            max_json_depth: 8,
            max_json_members: 128,
            max_jwks_bytes: 65536,
            max_jwks_keys: 16,
            max_held_requests: 10,
            max_cached_tokens: 1024,
            max_cached_sessions: 1024,
            max_revocation_bytes: 1024 * 1024,
            max_dpop_proofs: 65536,
            max_outbound_tokens: 1024,
        }
    );

    let keycloak = &config.providers[0];
    assert_eq!(keycloak.name, "keycloak");
    assert_eq!(keycloak.audiences, vec!["orders".to_owned()]);
    assert_eq!(
        keycloak.keys,
        KeySource::Remote(HttpTarget {
            url: "https://sso.example.com/realms/shop/protocol/openid-connect/certs".to_owned(),
            cluster: "outbound|443||sso.example.com".to_owned(),
            authority: "sso.example.com".to_owned(),
            path: "/realms/shop/protocol/openid-connect/certs".to_owned(),
        })
    );
    assert_eq!(keycloak.from_headers[0].name, "authorization");
    assert_eq!(keycloak.from_params, vec!["access_token".to_owned()]);
    assert_eq!(keycloak.from_cookies, vec!["session".to_owned()]);
    assert_eq!(
        keycloak.output_payload_to_header.as_deref(),
        Some("x-jwt-payload")
    );
    assert_eq!(
        keycloak.output_claim_to_headers[1],
        ClaimToHeader {
            header: "x-roles".to_owned(),
            claim: ClaimPath(vec!["realm_access".to_owned(), "roles".to_owned()])
        }
    );
    assert!(!keycloak.forward_original_token);
    assert_eq!(keycloak.timeout_ms, 1_500);
    assert_eq!(keycloak.clock_skew_seconds, 30);
    assert_eq!(keycloak.max_lifetime_seconds, Some(3600));
    assert_eq!(keycloak.jwks_cache_seconds, 300);
    assert_eq!(
        keycloak.scope_claims[1].0,
        vec!["authorization", "permissions"]
    );
    assert!(keycloak
        .algorithms
        .iter()
        .eq([Alg::RS256, Alg::PS256, Alg::ES256, Alg::EdDSA]));

    let internal = &config.providers[1];
    assert!(matches!(internal.keys, KeySource::Inline(_)));
    assert!(internal.algorithms.iter().eq([Alg::HS256]));

    let health = &config.rules[0];
    assert_eq!(
        listed_paths(&health.matcher),
        (vec![
            PathPattern::Exact("/healthz".to_owned()),
            PathPattern::Prefix("/metrics".to_owned())
        ])
    );
    assert!(matches!(health.action, Action::AllowAnonymous));
    assert_eq!(
        listed_hosts(&config.rules[1].matcher),
        (vec![HostPattern::WildcardSuffix(
            ".internal.example.com".to_owned()
        )])
    );
    assert!(matches!(config.rules[1].action, Action::Deny));
    let orders = &config.rules[2];
    assert_eq!(
        listed(&orders.matcher, "methods"),
        [
            &Pattern::Method("POST".to_owned()),
            &Pattern::Method("PUT".to_owned()),
            &Pattern::Method("DELETE".to_owned())
        ]
    );
    let Action::Requires(requirement) = &orders.action else {
        panic!("expected requires");
    };
    assert_eq!(requirement.providers, Some(vec![0]));
    assert_eq!(requirement.claims[0].claim.display(), "realm_access.roles");
    let Action::RequiresAny(alternatives) = &config.rules[3].action else {
        panic!("expected requiresAny");
    };
    assert_eq!(alternatives[0].providers, Some(vec![1]));
    assert_eq!(alternatives[1].scopes, vec!["reports:read".to_owned()]);
}

#[test]
fn match_vocabulary_errors_name_the_field() {
    let cases = [
        (json!({"when": [{"key": "request.time", "values": ["x"]}]}), "rules[0].match.when[0].key: unknown key \"request.time\""),
        (json!({"when": [{"key": "request.headers[x-a]"}]}), "rules[0].match.when[0]: needs values, notValues or both"),
        (json!({"when": [{"key": "request.headers[bad name]", "values": ["x"]}]}), "rules[0].match.when[0].key: unknown key"),
        (json!({"when": [{"key": "request.auth.claims[]", "values": ["x"]}]}), "rules[0].match.when[0].key: unknown key"),
        (json!({"principals": ["spiffe://cluster.local/ns/a/sa/b"]}), "rules[0].match.principals[0]: write principals as Istio does, without \"spiffe://\""),
        (json!({"ipBlocks": ["10.1.2.3/8"]}), "rules[0].match.ipBlocks[0]: has bits set after the prefix length; the block is 10.0.0.0/8"),
        (json!({"ipBlocks": ["10.0.0.0/33"]}), "rules[0].match.ipBlocks[0]: the prefix length must be 0 to 32"),
        (json!({"remoteIpBlocks": ["example.com"]}), "rules[0].match.remoteIpBlocks[0]: not an IP address or CIDR block"),
        (json!({"ports": ["0"]}), "rules[0].match.ports[0]: not a port: 1 to 65535"),
        (json!({"notPorts": ["http"]}), "rules[0].match.notPorts[0]: not a port: 1 to 65535"),
        (json!({"namespaces": ["a*b"]}), "rules[0].match.namespaces[0]: '*' is only allowed alone"),
        (json!({"notPaths": []}), "rules[0].match.notPaths: is empty and would match nothing"),
        (json!({"requestPrincipals": [""]}), "rules[0].match.requestPrincipals[0]: must not be empty"),
    ];
    for (matcher, expected) in cases {
        let got = problem(&rule_config(json!({"match": matcher, "deny": true})));
        assert!(got.starts_with(expected), "{matcher}: {got}");
    }
}

#[test]
fn match_conditions_are_ordered_request_then_peer_then_token() {
    let parsed = rule(json!({"match": {
        "requestPrincipals": ["*"],
        "principals": ["cluster.local/ns/a/sa/b"],
        "when": [{"key": "request.auth.claims[org][id]", "values": ["7"]},
                 {"key": "request.headers[X-Tenant]", "notValues": ["test*"]}],
        "notPaths": ["/healthz"]
    }, "allowAnonymous": true}));
    let fields: Vec<&str> = parsed
        .matcher
        .conditions
        .iter()
        .map(|c| c.field.as_ref())
        .collect();
    assert_eq!(
        fields,
        [
            "notPaths",
            "when request.headers[X-Tenant]",
            "principals",
            "requestPrincipals",
            "when request.auth.claims[org][id]"
        ]
    );
    assert_eq!(
        parsed.matcher.conditions[1].fact,
        Fact::Header("x-tenant".into())
    );
    assert_eq!(
        parsed.matcher.conditions[4].fact,
        Fact::Claim(ClaimPath(vec!["org".into(), "id".into()]))
    );
}

#[test]
fn sender_binding_settings() {
    let config = ok(&provider_config(json!({
        "dpop": {"mode": "allowed", "algorithms": ["ES256"], "maxAgeSeconds": 30,
                 "origins": ["HTTPS://API.example.com:443", "http://localhost:8080"]},
        "certificateBound": "required"
    })));
    let provider = &config.providers[0];
    assert_eq!(provider.dpop.mode, Binding::Allowed);
    assert!(provider.dpop.algorithms.iter().eq([Alg::ES256]));
    assert_eq!(provider.dpop.max_age_seconds, 30);
    assert_eq!(provider.certificate_bound, Binding::Required);
    let plain = ok(&provider_config(json!({})));
    assert_eq!(plain.providers[0].dpop.mode, Binding::Off);
    let defaults = plain.providers[0].dpop.algorithms;
    assert_eq!(defaults.iter().count(), 5);
    for alg in [Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::PS256, Alg::RS256] {
        assert!(defaults.contains(alg), "{alg}");
    }
    for (patch, expected) in [
        (
            json!({"dpop": {"mode": "yes"}}),
            "providers[0].dpop.mode: expected \"required\", \"allowed\" or \"off\"",
        ),
        (
            json!({"dpop": {"algorithms": ["HS256"]}}),
            "providers[0].dpop.algorithms[0]: HS256 needs the HMAC key inline in jwks",
        ),
        (
            json!({"dpop": {"algorithms": ["none"]}}),
            "providers[0].dpop.algorithms[0]: unsecured tokens cannot be allowed",
        ),
        (
            json!({"dpop": {"maxAgeSeconds": 0}}),
            "providers[0].dpop.maxAgeSeconds: must be greater than zero",
        ),
        (
            json!({"dpop": {"maxAgeSeconds": 7200}}),
            "providers[0].dpop.maxAgeSeconds: at most 3600",
        ),
        (
            json!({"dpop": {"origins": []}}),
            "providers[0].dpop.origins: must not be empty",
        ),
        (
            json!({"dpop": {"nonce": true}}),
            "providers[0].dpop.nonce: unknown field",
        ),
        (
            json!({"certificateBound": true}),
            "providers[0].certificateBound: expected a string",
        ),
    ] {
        let got = problem(&provider_config(patch.clone()));
        assert!(got.starts_with(expected), "{patch}: {got}");
    }
}

#[test]
fn step_up_requirements() {
    let parsed =
        rule(json!({"requires": {"acrValues": ["urn:mfa", "phr"], "maxAuthAgeSeconds": 300}}));
    let Action::Requires(requirement) = parsed.action else {
        panic!("expected requires");
    };
    assert_eq!(
        requirement.acr_values,
        Some(vec!["urn:mfa".to_owned(), "phr".to_owned()])
    );
    assert_eq!(requirement.max_auth_age_seconds, Some(300));
    for (requires, expected) in [
        (
            json!({"acrValues": []}),
            "rules[0].requires.acrValues: must not be empty",
        ),
        (
            json!({"acrValues": ["a b"]}),
            "rules[0].requires.acrValues[0]: not an acr value",
        ),
        (
            json!({"acrValues": ["a", "a"]}),
            "rules[0].requires.acrValues[1]: listed twice",
        ),
        (
            json!({"maxAuthAgeSeconds": -1}),
            "rules[0].requires.maxAuthAgeSeconds: must not be negative",
        ),
    ] {
        let got = problem(&rule_config(json!({"requires": requires})));
        assert!(got.starts_with(expected), "{got}");
    }
}

#[test]
fn protected_resource_is_checked() {
    for (resource, expected) in [
        (json!({}), "protectedResource.resource: required"),
        (
            json!({"resource": "tools.example.com/mcp"}),
            "protectedResource.resource: expected an absolute http(s) URI",
        ),
        (
            json!({"resource": "https://h/mcp?x=1"}),
            "protectedResource.resource: expected an absolute http(s) URI",
        ),
        (
            json!({"resource": "https://h", "resourceDocumentation": "docs"}),
            "protectedResource.resourceDocumentation: expected an http(s) URL",
        ),
        (
            json!({"resource": "https://h", "authorizationServers": []}),
            "protectedResource.authorizationServers: must not be empty",
        ),
        (
            json!({"resource": "https://h", "scopes": []}),
            "protectedResource.scopes: unknown field",
        ),
    ] {
        let mut config: Value = serde_json::from_str(&provider_config(json!({}))).unwrap();
        config["protectedResource"] = resource.clone();
        let got = problem(&config.to_string());
        assert!(got.starts_with(expected), "{resource}: {got}");
    }
}

#[test]
fn delegation_requirements() {
    let parsed = rule(
        json!({"requires": {"clients": ["a"], "actor": ["agent-7"], "maxDelegationDepth": 2, "delegation": "allowed"}}),
    );
    let Action::Requires(requirement) = parsed.action else {
        panic!("expected requires");
    };
    assert_eq!(requirement.clients, Some(vec!["a".to_owned()]));
    assert_eq!(requirement.actors, Some(vec!["agent-7".to_owned()]));
    assert_eq!(requirement.max_delegation_depth, Some(2));
    assert!(!requirement.delegation_forbidden);
    assert_problem(
        &rule_config(json!({"requires": {"delegation": "never"}})),
        "rules[0].requires.delegation: expected \"allowed\" or \"forbidden\"",
    );
    assert_problem(
        &rule_config(json!({"requires": {"clients": []}})),
        "rules[0].requires.clients: must not be empty",
    );
}

#[test]
fn answers_and_deny_with_are_checked_before_any_request() {
    assert_eq!(
        ok(&with_fields(json!({"answers": "minimal"}))).answers,
        Answers::Minimal
    );
    assert_eq!(ok(&with_fields(json!({}))).answers, Answers::Full);
    for (fields, expected) in [
        (json!({"answers": "terse"}), "answers: must be \"full\" or \"minimal\""),
        (json!({"denyWith": {"status": 200}}), "denyWith.status: must be an error status from 400 to 599; it never lowers the refusal's own"),
        (json!({"denyWith": {"status": 302}}), "denyWith.status: must be an error status from 400 to 599; it never lowers the refusal's own"),
        (json!({"denyWith": {"headers": {"www-authenticate": "x"}}}), "denyWith.headers.www-authenticate: is set by the refusal itself and cannot be configured"),
        (json!({"denyWith": {"headers": {"Location": "https://x"}}}), "denyWith.headers.Location: is set by the refusal itself and cannot be configured"),
        (json!({"denyWith": {"headers": {"x-a": "1\r\nx-b: 2"}}}), "denyWith.headers.x-a: holds characters not allowed in a header value"),
        (json!({"denyWith": {"headers": {"bad name": "1"}}}), "denyWith.headers.bad name: not a valid HTTP header name"),
        (json!({"denyWith": {"body": "{sub}"}}), "denyWith.body: names {sub}; a body may use {error}, {status} and {request_id}"),
        (json!({"denyWith": {"body": "{error"}}), "denyWith.body: has a '{' without its '}'; write '{{' for a literal brace"),
        (json!({"denyWith": {"body": "a } b"}}), "denyWith.body: has a lone '}'; write '}}' for a literal brace"),
        (json!({"denyWith": {"contentType": "text/html"}}), "denyWith.contentType: has no body to describe; add body"),
        (json!({"denyWith": {"login": {"url": "//evil.example/login"}}}), "denyWith.login.url: a path must start with a single '/' and hold no spaces or '\\'"),
        (json!({"denyWith": {"login": {"url": "javascript:alert(1)"}}}), "denyWith.login.url: not an http(s) URL"),
        (json!({"denyWith": {"login": {"url": "https://l/#x"}}}), "denyWith.login.url: must not have a fragment"),
        (json!({"denyWith": {"login": {"url": "/login", "parameter": "a&b"}}}), "denyWith.login.parameter: may hold only letters, digits, '-', '_' and '.'"),
        (json!({"denyWith": {"redirect": "/login"}}), "denyWith.redirect: unknown field"),
    ] {
        let message = problem(&with_fields(fields.clone()));
        assert!(message.starts_with(expected), "{fields}: {message}");
    }
    let config = ok(&with_fields(
        json!({"denyWith": {"login": {"url": "/login"}, "body": "{{{error}}}"}}),
    ));
    let deny_with = config.deny_with.unwrap();
    assert_eq!(deny_with.login.unwrap().parameter, "return_to");
    assert_eq!(
        deny_with.body.unwrap().0,
        [
            BodyPiece::Text("{".into()),
            BodyPiece::Error,
            BodyPiece::Text("}".into())
        ]
    );
}

#[test]
fn only_a_public_rule_may_ignore_invalid_tokens() {
    let rules = |rule: Value| with_fields(json!({"rules": [rule]}));
    let config = ok(&rules(
        json!({"match": {"paths": ["/public/*"]}, "allowAnonymous": true, "invalidToken": "ignore"}),
    ));
    assert!(config.rules[0].ignore_invalid_token);
    let strict = ok(&rules(
        json!({"allowAnonymous": true, "invalidToken": "refuse"}),
    ));
    assert!(!strict.rules[0].ignore_invalid_token);
    assert_problem(
        &rules(json!({"requires": {"scopes": ["a"]}, "invalidToken": "ignore"})),
        "rules[0].invalidToken: \"ignore\" is only for a rule with allowAnonymous: true",
    );
    assert_problem(
        &rules(json!({"allowAnonymous": true, "invalidToken": "skip"})),
        "rules[0].invalidToken: must be \"refuse\" or \"ignore\"",
    );
}

/// A one-provider configuration with these top-level fields.
fn with_fields(fields: Value) -> String {
    let mut config: Value = serde_json::from_str(&provider_config(json!({}))).unwrap();
    for (key, value) in fields.as_object().unwrap() {
        config[key] = value.clone();
    }
    config.to_string()
}

const ENTRA_V2: &str = "https://login.microsoftonline.com/{tenant}/v2.0";
const ENTRA_KEYS: &str = "https://login.microsoftonline.com/common/discovery/v2.0/keys";

fn providers_config(providers: Value) -> String {
    json!({ "providers": providers }).to_string()
}

#[test]
fn a_multi_tenant_provider_reads_the_tenant_from_its_issuer() {
    let config = ok(&providers_config(json!([
        {"name": "entra", "issuerPattern": ENTRA_V2, "tenants": ["t1", "t2"], "jwksUri": ENTRA_KEYS},
        {"name": "entra-v1", "issuerPattern": "https://sts.windows.net/{tenant}/", "tenants": "*",
         "jwksUri": "https://login.microsoftonline.com/common/discovery/keys"},
        {"issuer": "https://login.example.com", "jwksUri": JWKS_URI}])));
    let (index, entra) = config
        .provider_for("https://login.microsoftonline.com/t1/v2.0")
        .unwrap();
    assert_eq!(
        (
            index,
            entra.tenant_of("https://login.microsoftonline.com/t1/v2.0")
        ),
        (0, Some("t1"))
    );
    let tenancy = entra.tenancy.as_ref().unwrap();
    assert!(tenancy.admits("t2") && !tenancy.admits("t3"));
    // An unlisted tenant still selects the provider: it is refused as a tenant, not an issuer.
    assert_eq!(
        config
            .provider_for("https://login.microsoftonline.com/t3/v2.0")
            .unwrap()
            .0,
        0
    );
    let (v1, provider) = config.provider_for("https://sts.windows.net/t9/").unwrap();
    assert_eq!(
        (v1, provider.tenant_of("https://sts.windows.net/t9/")),
        (1, Some("t9"))
    );
    assert!(provider.tenancy.as_ref().unwrap().admits("anyone"));
    for iss in [
        "https://login.microsoftonline.com//v2.0",
        "https://login.microsoftonline.com/a/b/v2.0",
        "https://login.microsoftonline.com/t1/v2.0/",
        "https://sts.windows.net/t9",
    ] {
        assert!(config.provider_for(iss).is_none(), "{iss}");
    }
    assert_eq!(
        config.provider_for("https://login.example.com").unwrap().0,
        2
    );
    assert_eq!(entra.name, "entra");
    assert_eq!(
        config.providers[1].issuer,
        "https://sts.windows.net/{tenant}/"
    );
}

#[test]
fn issuer_patterns_are_checked_and_may_not_claim_anothers_issuers() {
    let pattern = |fields: Value| {
        let mut p = json!({"issuerPattern": ENTRA_V2, "tenants": "*", "jwksUri": ENTRA_KEYS});
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                p.as_object_mut().unwrap().remove(k);
            } else {
                p[k] = v.clone();
            }
        }
        p
    };
    for (providers, expected) in [
        (json!([pattern(json!({"issuerPattern": "https://login.example.com/v2.0"}))]), "providers[0].issuerPattern: has no {tenant}; use issuer for a single issuer"),
        (json!([pattern(json!({"issuerPattern": "https://{tenant}.example.com/"}))]), "providers[0].issuerPattern: {tenant} must be a whole path segment, as in https://login.microsoftonline.com/{tenant}/v2.0"),
        (json!([pattern(json!({"issuerPattern": "https://l.example.com/t-{tenant}/"}))]), "providers[0].issuerPattern: {tenant} must be a whole path segment, as in https://login.microsoftonline.com/{tenant}/v2.0"),
        (json!([pattern(json!({"issuerPattern": "https://l.example.com/{tenant}/{tenant}"}))]), "providers[0].issuerPattern: has {tenant} more than once"),
        (json!([pattern(json!({"tenants": null}))]), "providers[0].tenants: required with issuerPattern: list the tenant ids, or \"*\" for any tenant"),
        (json!([pattern(json!({"tenants": []}))]), "providers[0].tenants: must not be empty"),
        (json!([pattern(json!({"tenants": ["a", "a"]}))]), "providers[0].tenants[1]: listed twice"),
        (json!([pattern(json!({"tenants": ["a/b"]}))]), "providers[0].tenants[0]: must be a tenant id (no '/'), or the whole field \"*\""),
        (json!([pattern(json!({"issuer": "https://x"}))]), "providers[0].issuerPattern: give either issuer or issuerPattern, not both"),
        (json!([{"issuer": ISSUER, "jwksUri": JWKS_URI, "tenants": ["a"]}]), "providers[0].tenants: is only for an issuerPattern"),
        (json!([pattern(json!({"jwksUri": null}))]), "providers[0]: an issuerPattern needs jwksUri or jwks: discovery needs one issuer"),
        (json!([{"issuer": "https://login.microsoftonline.com/t1/v2.0", "jwksUri": JWKS_URI}, pattern(json!({}))]),
         "providers[1].issuerPattern: matches the issuer of providers[0]"),
        (json!([pattern(json!({})), {"issuer": "https://login.microsoftonline.com/t1/v2.0", "jwksUri": JWKS_URI}]),
         "providers[1].issuer: is an issuer the issuerPattern of providers[0]"),
        (json!([pattern(json!({"tenants": ["a"]})), pattern(json!({"name": "b", "tenants": ["b"]}))]),
         "providers[1].issuerPattern: could match the same issuers as the issuerPattern of providers[0]"),
        (json!([pattern(json!({})), pattern(json!({"name": "b", "issuerPattern": "https://login.microsoftonline.com/common/{tenant}"}))]),
         "providers[1].issuerPattern: could match the same issuers as the issuerPattern of providers[0]"),
    ] {
        assert_eq!(problem(&providers_config(providers.clone())), expected, "{providers}");
    }
    // Fixed parts that differ cannot meet.
    ok(&providers_config(json!([
        pattern(json!({})),
        pattern(json!({"name": "v1", "issuerPattern": "https://sts.windows.net/{tenant}/"}))
    ])));
    ok(&providers_config(json!([pattern(json!({})),
        {"issuer": "https://login.microsoftonline.com/t1/v1.0", "jwksUri": JWKS_URI}])));
}

#[test]
fn a_rule_can_require_tenants() {
    let config = ok(&json!({
        "providers": [{"issuerPattern": ENTRA_V2, "tenants": "*", "jwksUri": ENTRA_KEYS}],
        "rules": [{"requires": {"tenants": ["t1"]}}]})
    .to_string());
    let Action::Requires(requirement) = &config.rules[0].action else {
        panic!("requires");
    };
    assert_eq!(
        requirement.tenants.as_deref(),
        Some(&["t1".to_string()][..])
    );
    assert_problem(
        &json!({"providers": [{"issuer": ISSUER, "jwksUri": JWKS_URI}],
                "rules": [{"requires": {"tenants": []}}]})
        .to_string(),
        "rules[0].requires.tenants: must not be empty",
    );
}
