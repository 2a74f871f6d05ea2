use super::*;
use base64::Engine as _;
use serde_json::json;

/// An RSA-2048 PKCS#8 key (the fixture the key tests sign with).
const RSA_A: &[u8] = include_bytes!("../../tests/fixtures/rsa2048-a.pk8.der");

const ISSUER: &str = "https://idp.example.com";

fn providers() -> Vec<Provider> {
    let config = json!({"providers": [
        {"issuer": ISSUER, "name": "idp"},
        {"issuer": "https://other.example.com", "jwksUri": "https://other.example.com/keys"},
    ]});
    crate::config::parse(&config.to_string()).unwrap().providers
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn ec_pkcs8() -> Vec<u8> {
    let rng = ring::rand::SystemRandom::new();
    ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap()
    .as_ref()
    .to_vec()
}

fn env(name: &str) -> Option<String> {
    match name {
        "SECRET" => Some("s3cr:et/+".to_owned()),
        "NEWLINE" => Some("secret\n".to_owned()),
        "EMPTY" => Some(String::new()),
        "EC_KEY" => Some(pem(&ec_pkcs8())),
        "RSA_KEY" => Some(pem(RSA_A)),
        "RSA_B64" => Some(base64::engine::general_purpose::STANDARD.encode(RSA_A)),
        "NOT_A_KEY" => Some(pem(b"not a key at all")),
        "COOKIE_KEYS" => Some(base64::engine::general_purpose::STANDARD.encode([7u8; 32])),
        _ => None,
    }
}

fn parse(entries: serde_json::Value) -> Result<Outbound, ConfigError> {
    parse_outbound_list(&entries, &providers(), &env)
}

fn problem(entries: serde_json::Value) -> String {
    parse(entries).unwrap_err().to_string()
}

fn cc(extra: serde_json::Value) -> serde_json::Value {
    let mut client = json!({"provider": "idp", "clientId": "orders", "clientSecretEnv": "SECRET"});
    client
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    client
}

fn entry(grant: &str, client: serde_json::Value) -> serde_json::Value {
    json!([{"name": "payments", "match": {"hosts": ["payments.internal"]}, grant: client}])
}

#[test]
fn a_client_credentials_entry_reads_every_field() {
    let outbound = parse(json!([{
        "name": "payments",
        "match": {"hosts": ["payments.internal", "*.pay.internal"], "paths": ["/v1/*"],
                  "methods": ["POST"], "ports": ["8443"]},
        "header": "Txn-Token",
        "onFailure": "passThrough",
        "clientCredentials": cc(json!({"audience": "payments", "resource": ["https://payments.internal/"],
                                       "scopes": ["pay:write", "pay:read"]})),
    }]))
    .unwrap();
    let entry = &outbound.entries[0];
    assert_eq!(entry.name, "payments");
    assert_eq!(entry.header, "txn-token");
    assert!(!entry.in_authorization());
    assert_eq!(entry.on_failure, OnFailure::PassThrough);
    assert_eq!(entry.matcher.conditions.len(), 4);
    let Grant::ClientCredentials(client) = &entry.grant else {
        panic!("client credentials")
    };
    assert_eq!(client.provider, 0);
    assert_eq!(client.client_id, "orders");
    assert_eq!(
        client.auth,
        ClientAuth::SecretBasic(Secret("s3cr:et/+".into()))
    );
    assert_eq!(client.audiences, ["payments"]);
    assert_eq!(client.resources, ["https://payments.internal/"]);
    assert_eq!(client.scopes, ["pay:write", "pay:read"]);
}

#[test]
fn defaults_are_authorization_basic_and_refuse() {
    let outbound = parse(entry("clientCredentials", cc(json!({})))).unwrap();
    let entry = &outbound.entries[0];
    assert_eq!(entry.header, "authorization");
    assert_eq!(entry.on_failure, OnFailure::Refuse);
    assert_eq!(entry.grant.client().auth.name(), "client_secret_basic");
    assert!(entry.grant.client().audiences.is_empty());
}

#[test]
fn a_token_exchange_entry_reads_actor_and_missing_subject() {
    let outbound = parse(entry(
        "tokenExchange",
        cc(
            json!({"actor": "clientCredentials", "missingSubject": "clientCredentials",
                  "clientAuth": "client_secret_post"}),
        ),
    ))
    .unwrap();
    let Grant::TokenExchange(exchange) = &outbound.entries[0].grant else {
        panic!("token exchange")
    };
    assert!(exchange.actor_client_credentials);
    assert_eq!(exchange.missing_subject, MissingSubject::ClientCredentials);
    assert_eq!(exchange.client.auth.name(), "client_secret_post");

    let plain = parse(entry("tokenExchange", cc(json!({})))).unwrap();
    let Grant::TokenExchange(exchange) = &plain.entries[0].grant else {
        panic!("token exchange")
    };
    assert!(!exchange.actor_client_credentials);
    assert_eq!(exchange.missing_subject, MissingSubject::Refuse);
}

#[test]
fn exchange_fields_are_unknown_in_client_credentials() {
    assert_eq!(
        problem(entry(
            "clientCredentials",
            cc(json!({"actor": "clientCredentials"}))
        )),
        "outbound[0].clientCredentials.actor: unknown field"
    );
}

#[test]
fn private_key_jwt_reads_ec_and_rsa_keys_from_the_environment() {
    for (variable, alg) in [
        ("EC_KEY", Alg::ES256),
        ("RSA_KEY", Alg::RS256),
        ("RSA_B64", Alg::RS256),
    ] {
        let client = json!({"provider": "idp", "clientId": "agent",
                            "clientAuth": "private_key_jwt", "clientKeyEnv": variable});
        let outbound = parse(entry("clientCredentials", client)).unwrap();
        let ClientAuth::PrivateKeyJwt(key) = &outbound.entries[0].grant.client().auth else {
            panic!("private_key_jwt")
        };
        assert_eq!(key.alg, alg, "{variable}");
        assert!(!format!("{key:?}").contains(&format!("{:?}", &key.pkcs8.0[..4])));
    }
}

#[test]
fn secrets_never_show_in_debug_output() {
    let outbound = parse(entry("clientCredentials", cc(json!({})))).unwrap();
    let shown = format!("{outbound:?}");
    assert!(!shown.contains("s3cr"), "{shown}");
    assert!(shown.contains("<secret>"));
}

#[test]
fn missing_or_malformed_variables_are_named() {
    let key = |variable: &str| {
        json!({"provider": "idp", "clientId": "a", "clientAuth": "private_key_jwt",
               "clientKeyEnv": variable})
    };
    let cases = [
        (
            cc(json!({"clientSecretEnv": "UNSET"})),
            "outbound[0].clientCredentials.clientSecretEnv: environment variable UNSET is not set",
        ),
        (
            cc(json!({"clientSecretEnv": "EMPTY"})),
            "outbound[0].clientCredentials.clientSecretEnv: environment variable EMPTY is empty",
        ),
        (
            cc(json!({"clientSecretEnv": "NEWLINE"})),
            "outbound[0].clientCredentials.clientSecretEnv: environment variable NEWLINE holds a control character",
        ),
        (
            key("UNSET"),
            "outbound[0].clientCredentials.clientKeyEnv: environment variable UNSET is not set",
        ),
        (
            key("NOT_A_KEY"),
            "outbound[0].clientCredentials.clientKeyEnv: environment variable NOT_A_KEY is not a usable PKCS#8 private key (P-256 or RSA",
        ),
        (
            key("SECRET"),
            "outbound[0].clientCredentials.clientKeyEnv: environment variable SECRET is not a PEM or base64 PKCS#8 private key",
        ),
        (
            cc(json!({"clientSecretEnv": "lower-case"})),
            "outbound[0].clientCredentials.clientSecretEnv: not an environment variable name",
        ),
    ];
    for (client, expected) in cases {
        let got = problem(entry("clientCredentials", client));
        assert!(got.starts_with(expected), "{got}");
        assert!(!got.contains("s3cr") && !got.contains("BEGIN"), "{got}");
    }
}

#[test]
fn client_auth_and_its_credential_must_agree() {
    let cases = [
        (
            json!({"provider": "idp", "clientId": "a"}),
            "outbound[0].clientCredentials.clientSecretEnv: required with clientAuth client_secret_basic",
        ),
        (
            cc(json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "EC_KEY"})),
            "outbound[0].clientCredentials.clientSecretEnv: private_key_jwt signs with the key in clientKeyEnv, not a secret",
        ),
        (
            json!({"provider": "idp", "clientId": "a", "clientAuth": "private_key_jwt"}),
            "outbound[0].clientCredentials.clientKeyEnv: required with clientAuth private_key_jwt",
        ),
        (
            cc(json!({"clientKeyEnv": "EC_KEY"})),
            "outbound[0].clientCredentials.clientKeyEnv: client_secret_basic authenticates with clientSecretEnv, not a key",
        ),
        (
            cc(json!({"clientAuth": "tls_client_auth"})),
            "outbound[0].clientCredentials.clientAuth: must be",
        ),
    ];
    for (client, expected) in cases {
        let got = problem(entry("clientCredentials", client));
        assert!(got.starts_with(expected), "{got}");
    }
}

#[test]
fn the_provider_must_exist_and_be_discovered() {
    assert_eq!(
        problem(entry("clientCredentials", cc(json!({"provider": "nope"})))),
        "outbound[0].clientCredentials.provider: no provider is named \"nope\""
    );
    let got = problem(entry(
        "clientCredentials",
        cc(json!({"provider": "https://other.example.com"})),
    ));
    assert!(
        got.starts_with(
            "outbound[0].clientCredentials.provider: providers[1] gives jwks or jwksUri"
        ),
        "{got}"
    );
}

#[test]
fn entry_shape_errors_name_their_path() {
    let client = cc(json!({}));
    let cases = [
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}}]),
            "outbound[0]: needs clientCredentials or tokenExchange",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}, "clientCredentials": client,
                    "tokenExchange": client}]),
            "outbound[0].tokenExchange: give either clientCredentials or tokenExchange, not both",
        ),
        (
            json!([{"name": "a", "match": {"paths": ["/x"]}, "clientCredentials": client}]),
            "outbound[0].match.hosts: required",
        ),
        (
            json!([{"name": "a", "clientCredentials": client}]),
            "outbound[0].match: required",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"], "principals": ["p"]},
                    "clientCredentials": client}]),
            "outbound[0].match.principals: unknown field",
        ),
        (
            json!([{"name": "a b", "match": {"hosts": ["x"]}, "clientCredentials": client}]),
            "outbound[0].name: up to 64 ASCII letters",
        ),
        (
            json!([{"match": {"hosts": ["x"]}, "clientCredentials": client}]),
            "outbound[0].name: required",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}, "clientCredentials": client},
                   {"name": "a", "match": {"hosts": ["y"]}, "clientCredentials": client}]),
            "outbound[1].name: \"a\" is used by an earlier entry",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}, "header": "Host",
                    "clientCredentials": client}]),
            "outbound[0].header: \"host\" frames or routes the request",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}, "header": "bad header",
                    "clientCredentials": client}]),
            "outbound[0].header: not a header name",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}, "onFailure": "ignore",
                    "clientCredentials": client}]),
            "outbound[0].onFailure: must be \"refuse\" or \"passThrough\"",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]}, "tokenExchange": cc(json!({"actor": "self"}))}]),
            "outbound[0].tokenExchange.actor: must be \"clientCredentials\"",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]},
                    "tokenExchange": cc(json!({"missingSubject": "anonymous"}))}]),
            "outbound[0].tokenExchange.missingSubject: must be \"refuse\" or \"clientCredentials\"",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]},
                    "clientCredentials": cc(json!({"resource": "payments"}))}]),
            "outbound[0].clientCredentials.resource: not an absolute URI",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]},
                    "clientCredentials": cc(json!({"resource": ["https://a/#f"]}))}]),
            "outbound[0].clientCredentials.resource[0]: not an absolute URI",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]},
                    "clientCredentials": cc(json!({"scopes": ["a b"]}))}]),
            "outbound[0].clientCredentials.scopes[0]: not a scope",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]},
                    "clientCredentials": cc(json!({"audience": ["a", "a"]}))}]),
            "outbound[0].clientCredentials.audience[1]: listed twice",
        ),
        (
            json!([{"name": "a", "match": {"hosts": ["x"]},
                    "clientCredentials": cc(json!({"clientId": ""}))}]),
            "outbound[0].clientCredentials.clientId: must not be empty",
        ),
    ];
    for (entries, expected) in cases {
        let got = problem(entries);
        assert!(got.starts_with(expected), "{got}\nexpected {expected}");
    }
}

fn top(extra: serde_json::Value) -> Result<crate::config::Config, ConfigError> {
    let mut config = json!({"providers": [{"issuer": ISSUER, "name": "idp"}],
                            "outbound": entry("clientCredentials", cc(json!({})))});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    crate::config::parse_with_env(&config.to_string(), &env)
}

#[test]
fn the_top_level_reads_outbound_and_its_limit() {
    let config = top(json!({"limits": {"maxOutboundTokens": 16}})).unwrap();
    assert_eq!(config.outbound.entries[0].name, "payments");
    assert_eq!(config.limits.max_outbound_tokens, 16);
    let default = top(json!({})).unwrap();
    assert_eq!(
        default.limits.max_outbound_tokens,
        DEFAULT_MAX_OUTBOUND_TOKENS
    );
    assert_eq!(
        top(json!({"limits": {"maxOutboundTokens": 0}}))
            .unwrap_err()
            .to_string(),
        "limits.maxOutboundTokens: must be greater than zero"
    );
}

#[test]
fn an_outbound_configuration_has_no_login() {
    // A browser login answers the requests coming in; on the outbound side it would never run.
    let login = json!({"provider": "idp", "clientId": "web", "clientSecretEnv": "SECRET",
                       "cookieKeysEnv": "COOKIE_KEYS", "hosts": ["app.example.com"]});
    let got = top(json!({ "login": login })).unwrap_err().to_string();
    assert!(
        got.starts_with("login: belongs to the inbound plugin"),
        "{got}"
    );
    let inbound = json!({"providers": [{"issuer": ISSUER, "name": "idp"}], "login": login});
    assert!(crate::config::parse_with_env(&inbound.to_string(), &env).is_ok());
}

#[test]
fn an_outbound_configuration_has_no_inbound_rules() {
    for field in ["rules", "unmatched", "protectedResource", "denyWith"] {
        let value = match field {
            "rules" => json!([]),
            "unmatched" => json!("anonymous"),
            "protectedResource" => json!({"resource": "https://a.example.com"}),
            _ => json!({"status": 403}),
        };
        let got = top(json!({ field: value })).unwrap_err().to_string();
        assert!(
            got.starts_with(&format!("{field}: belongs to the inbound plugin")),
            "{got}"
        );
    }
    // Without outbound entries the inbound fields are as before.
    let inbound =
        json!({"providers": [{"issuer": ISSUER}], "outbound": [], "unmatched": "anonymous"});
    assert!(crate::config::parse_with_env(&inbound.to_string(), &env).is_ok());
}

#[test]
fn a_missing_secret_refuses_the_whole_configuration_naming_the_variable() {
    let config = json!({"providers": [{"issuer": ISSUER, "name": "idp"}],
                        "outbound": entry("clientCredentials", cc(json!({"clientSecretEnv": "UNSET"})))});
    let got = crate::config::parse_with_env(&config.to_string(), &env).unwrap_err();
    assert_eq!(
        got.to_string(),
        "outbound[0].clientCredentials.clientSecretEnv: environment variable UNSET is not set in the VM (vmConfig.env / vm_config.environment_variables)"
    );
}

#[test]
fn an_entry_an_earlier_one_always_takes_first_is_refused() {
    let client = cc(json!({}));
    let two = |first: serde_json::Value, second: serde_json::Value| {
        json!([{"name": "a", "match": first, "clientCredentials": client},
               {"name": "b", "match": second, "clientCredentials": client}])
    };
    let shadowed = [
        (
            json!({"hosts": ["*"]}),
            json!({"hosts": ["x.internal"], "paths": ["/a"]}),
        ),
        (
            json!({"hosts": ["x.internal"]}),
            json!({"hosts": ["x.internal"], "methods": ["POST"]}),
        ),
        (
            json!({"hosts": ["x.internal"], "paths": ["*"]}),
            json!({"hosts": ["x.internal"]}),
        ),
    ];
    for (first, second) in shadowed {
        assert_eq!(
            problem(two(first.clone(), second.clone())),
            "outbound[1].match: never applies: every request it matches is taken by outbound[0] (\"a\"), which comes first (first match wins)",
            "{first} then {second}"
        );
    }
    let reachable = [
        (
            json!({"hosts": ["x.internal"], "paths": ["/a"]}),
            json!({"hosts": ["x.internal"]}),
        ),
        (
            json!({"hosts": ["x.internal"]}),
            json!({"hosts": ["y.internal"]}),
        ),
        (
            json!({"hosts": ["*"], "methods": ["GET"]}),
            json!({"hosts": ["x.internal"]}),
        ),
    ];
    for (first, second) in reachable {
        assert!(
            parse(two(first.clone(), second.clone())).is_ok(),
            "{first} then {second}"
        );
    }
}
