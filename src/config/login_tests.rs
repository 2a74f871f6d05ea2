//! The `login` section's parser.
#![allow(clippy::unwrap_used, clippy::panic)]

use super::*;
use serde_json::json;

/// An RSA-2048 PKCS#8 key (the fixture the key tests sign with).
const RSA_A: &[u8] = include_bytes!("../../tests/fixtures/rsa2048-a.pk8.der");
const COOKIE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn providers() -> Vec<Provider> {
    parse(
        &json!({"providers": [
            {"name": "op", "issuer": "https://op.example.com"},
            {"name": "static", "issuer": "https://static.example.com", "jwksUri": "https://static.example.com/jwks"}
        ]})
        .to_string(),
    )
    .unwrap()
    .providers
}

fn env(name: &str) -> Option<String> {
    match name {
        "COOKIE_KEYS" => Some(COOKIE_KEY.to_owned()),
        "CLIENT_SECRET" => Some("s3cret".to_owned()),
        "EMPTY" => Some(String::new()),
        "BAD_KEYS" => Some("c2hvcnQ=".to_owned()),
        "CLIENT_KEY" => Some(pem(RSA_A)),
        _ => None,
    }
}

fn pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn base() -> Value {
    json!({
        "provider": "op",
        "clientId": "web-app",
        "clientSecretEnv": "CLIENT_SECRET",
        "cookieKeysEnv": "COOKIE_KEYS",
        "hosts": ["app.example.com"]
    })
}

fn with(patch: Value) -> Value {
    let mut login = base();
    for (key, value) in patch.as_object().unwrap() {
        if value.is_null() {
            login.as_object_mut().unwrap().remove(key);
        } else {
            login[key] = value.clone();
        }
    }
    login
}

fn ok(value: Value) -> Vec<Login> {
    parse_login_section(&value, &providers(), &env).unwrap_or_else(|e| panic!("refused: {e}"))
}

fn problem(value: Value) -> String {
    match parse_login_section(&value, &providers(), &env) {
        Ok(_) => panic!("accepted: {value}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults() {
    let login = ok(base()).remove(0);
    assert_eq!(login.provider, 0);
    assert_eq!(login.client_id, "web-app");
    assert_eq!(
        login.client_auth,
        ClientAuth::SecretBasic(Secret("s3cret".to_owned()))
    );
    assert_eq!(
        login.cookie_keys.0,
        vec![core::array::from_fn::<u8, 32, _>(|i| i as u8)]
    );
    assert_eq!(login.scopes, ["openid"]);
    assert_eq!(login.callback_path, "/oauth2/callback");
    assert_eq!(login.logout_path, "/oauth2/logout");
    assert_eq!(login.backchannel_logout_path, "/oauth2/backchannel-logout");
    assert_eq!(login.session_max_age_seconds, 86_400);
    assert_eq!(login.session_recheck_seconds, 300);
    assert_eq!(login.forward, Forward::AccessToken);
    assert_eq!(
        login.hosts,
        [Origin {
            scheme: "https".into(),
            authority: "app.example.com".into()
        }]
    );
}

#[test]
fn every_field_is_read() {
    let login = ok(with(json!({
        "clientAuth": "client_secret_post",
        "scopes": ["openid", "profile", "offline_access"],
        "authorizationParams": {"prompt": "consent", "acr_values": "mfa"},
        "hosts": ["https://App.example.com:443/", "http://localhost:8080", "b.example.com:8443"],
        "callbackPath": "/cb", "logoutPath": "/bye", "backchannelLogoutPath": "/bc",
        "postLogoutRedirectUri": "https://app.example.com/goodbye",
        "sessionMaxAgeSeconds": 3600, "sessionRecheckSeconds": 60, "forward": "id_token"
    })))
    .remove(0);
    assert_eq!(
        login.client_auth,
        ClientAuth::SecretPost(Secret("s3cret".to_owned()))
    );
    assert_eq!(login.scopes, ["openid", "profile", "offline_access"]);
    assert_eq!(
        login.authorization_params,
        [
            ("acr_values".to_owned(), "mfa".to_owned()),
            ("prompt".to_owned(), "consent".to_owned())
        ]
    );
    let origins: Vec<String> = login.hosts.iter().map(Origin::url).collect();
    assert_eq!(
        origins,
        [
            "https://app.example.com",
            "http://localhost:8080",
            "https://b.example.com:8443"
        ]
    );
    assert_eq!(
        login
            .origin_for("APP.example.com:443")
            .map(Origin::url)
            .as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(
        login
            .origin_for("localhost:8080")
            .map(Origin::url)
            .as_deref(),
        Some("http://localhost:8080")
    );
    assert_eq!(login.origin_for("localhost"), None);
    assert_eq!(login.origin_for("evil.example.com"), None);
    assert_eq!(
        (login.callback_path.as_str(), login.logout_path.as_str()),
        ("/cb", "/bye")
    );
    assert_eq!(login.backchannel_logout_path, "/bc");
    assert_eq!(
        login.post_logout_redirect_uri.as_deref(),
        Some("https://app.example.com/goodbye")
    );
    assert_eq!(
        (login.session_max_age_seconds, login.session_recheck_seconds),
        (3600, 60)
    );
    assert_eq!(login.forward, Forward::IdToken);
}

#[test]
fn private_key_jwt_reads_a_pem_key() {
    let login = ok(with(json!({
        "clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "CLIENT_KEY"
    })))
    .remove(0);
    let ClientAuth::PrivateKeyJwt(key) = login.client_auth else {
        panic!("not a key")
    };
    assert_eq!(key.alg, Alg::RS256);
    assert_eq!(key.pkcs8.0, RSA_A);
    assert_eq!(key.audience, AssertionAudience::Issuer);
}

#[test]
fn assertion_audience_is_read_for_private_key_jwt_only() {
    let key_jwt = json!({
        "clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "CLIENT_KEY",
        "assertionAudience": "tokenEndpoint"
    });
    let login = ok(with(key_jwt)).remove(0);
    let ClientAuth::PrivateKeyJwt(key) = login.client_auth else {
        panic!("not a key")
    };
    assert_eq!(key.audience, AssertionAudience::TokenEndpoint);
    assert_eq!(
        problem(with(json!({"assertionAudience": "tokenEndpoint"}))),
        "login.assertionAudience: client_secret_basic sends no assertion: assertionAudience is for private_key_jwt"
    );
    assert_eq!(
        problem(with(json!({
            "clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "CLIENT_KEY",
            "assertionAudience": "token_endpoint_url"
        }))),
        "login.assertionAudience: must be \"issuer\" or \"tokenEndpoint\""
    );
}

#[test]
fn a_list_gives_one_login_per_host_set() {
    let logins = ok(json!([
        base(),
        with(json!({"hosts": ["other.example.com"]}))
    ]));
    assert_eq!(logins.len(), 2);
    assert_eq!(
        problem(json!([
            base(),
            with(json!({"hosts": ["b.example.com", "APP.example.com"]}))
        ])),
        "login[1].hosts: app.example.com is already served by another login"
    );
    assert_eq!(problem(json!([])), "login: must not be empty");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let login = ok(base()).remove(0);
    let shown = format!("{login:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("<secret>"));
}

#[test]
fn environment_problems_name_the_variable_never_its_value() {
    for (patch, expected) in [
        (json!({"cookieKeysEnv": "MISSING"}), "login.cookieKeysEnv: environment variable MISSING is not set in the VM (vmConfig.env / vm_config.environment_variables)"),
        (json!({"cookieKeysEnv": "BAD_KEYS"}), "login.cookieKeysEnv: environment variable BAD_KEYS has a key (number 1) that is not 32 bytes (make one with: openssl rand -base64 32)"),
        (json!({"cookieKeysEnv": "EMPTY"}), "login.cookieKeysEnv: environment variable EMPTY holds no key (make one with: openssl rand -base64 32)"),
        (json!({"clientSecretEnv": "MISSING"}), "login.clientSecretEnv: environment variable MISSING is not set in the VM (vmConfig.env / vm_config.environment_variables)"),
        (json!({"clientSecretEnv": "EMPTY"}), "login.clientSecretEnv: environment variable EMPTY is empty"),
        (json!({"clientSecretEnv": null}), "login.clientSecretEnv: required with clientAuth client_secret_basic"),
        (json!({"clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "CLIENT_SECRET"}),
            "login.clientKeyEnv: environment variable CLIENT_SECRET is not a PEM or base64 PKCS#8 private key"),
        (json!({"clientAuth": "private_key_jwt", "clientSecretEnv": null, "clientKeyEnv": "COOKIE_KEYS"}),
            "login.clientKeyEnv: environment variable COOKIE_KEYS is not a usable PKCS#8 private key (RSA of 2048 to 4096 bits, P-256 or Ed25519)"),
        (json!({"clientAuth": "private_key_jwt", "clientSecretEnv": null}), "login.clientKeyEnv: required with clientAuth private_key_jwt"),
        (json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "CLIENT_KEY"}), "login.clientSecretEnv: private_key_jwt signs with the key in clientKeyEnv, not a secret"),
        (json!({"clientKeyEnv": "CLIENT_KEY"}), "login.clientKeyEnv: client_secret_basic authenticates with clientSecretEnv, not a key"),
        (json!({"cookieKeysEnv": "1X"}), "login.cookieKeysEnv: not an environment variable name (letters, digits and _)"),
    ] {
        let got = problem(with(patch.clone()));
        assert_eq!(got, expected, "{patch}");
        assert!(!got.contains("s3cret") && !got.contains(COOKIE_KEY));
    }
}

#[test]
fn cookie_keys_rotate_as_a_ring() {
    let second = URL_SAFE_NO_PAD.encode([7u8; 32]);
    assert_eq!(
        parse_cookie_keys(&format!("{second}, {COOKIE_KEY}"))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        parse_cookie_keys(&format!("{second}\n{second}")),
        Err("lists a key twice (number 2)".to_owned())
    );
    assert_eq!(
        parse_cookie_keys("!!!"),
        Err("has a key (number 1) that is not base64".to_owned())
    );
    let nine = [COOKIE_KEY; 9].join(",");
    assert!(parse_cookie_keys(&nine).is_err());
}

#[test]
fn field_problems_name_their_path() {
    for (patch, expected) in [
        (json!({"provider": "nobody"}), "login.provider: no provider is named \"nobody\""),
        (json!({"provider": "static"}), "login.provider: a login needs the provider's discovery document (its endpoints): remove its jwksUri or jwks"),
        (json!({"clientId": ""}), "login.clientId: must not be empty"),
        (json!({"clientId": null}), "login.clientId: required"),
        (json!({"clientAuth": "none"}), "login.clientAuth: must be \"client_secret_basic\", \"client_secret_post\" or \"private_key_jwt\""),
        (json!({"scopes": ["profile"]}), "login.scopes: must include \"openid\": a login is an OpenID Connect request"),
        (json!({"scopes": ["openid", "a b"]}), "login.scopes[1]: not a scope token (no spaces, quotes or backslashes)"),
        (json!({"scopes": ["openid", "openid"]}), "login.scopes[1]: listed twice"),
        (json!({"authorizationParams": {"state": "x"}}), "login.authorizationParams.state: is set by the login itself"),
        (json!({"authorizationParams": {"prompt": 1}}), "login.authorizationParams.prompt: expected a string"),
        (json!({"hosts": []}), "login.hosts: must not be empty"),
        (json!({"hosts": null}), "login.hosts: required"),
        (json!({"hosts": ["*.example.com"]}), "login.hosts[0]: must be a host or an origin, without path, user or wildcard"),
        (json!({"hosts": ["ftp://a.example.com"]}), "login.hosts[0]: must be a host or an http(s) origin"),
        (json!({"hosts": ["https://a.example.com/app"]}), "login.hosts[0]: must be a host or an origin, without path, user or wildcard"),
        (json!({"hosts": ["a.example.com", "https://A.example.com"]}), "login.hosts[1]: listed twice"),
        (json!({"callbackPath": "cb"}), "login.callbackPath: must be an absolute path without query or fragment"),
        (json!({"callbackPath": "/cb?x=1"}), "login.callbackPath: must be an absolute path without query or fragment"),
        (json!({"logoutPath": "/oauth2/callback"}), "login.logoutPath: is the same as callbackPath"),
        (json!({"backchannelLogoutPath": "/oauth2/logout"}), "login.backchannelLogoutPath: is the same as callbackPath or logoutPath"),
        (json!({"postLogoutRedirectUri": "/bye"}), "login.postLogoutRedirectUri: not an http(s) URL"),
        (json!({"sessionMaxAgeSeconds": 0}), "login.sessionMaxAgeSeconds: must be greater than zero"),
        (json!({"sessionRecheckSeconds": -1}), "login.sessionRecheckSeconds: must not be negative"),
        (json!({"forward": "cookie"}), "login.forward: must be \"access_token\" or \"id_token\""),
        (json!({"logoutHint": "sid"}), "login.logoutHint: must be \"client_id\" or \"id_token\""),
        (json!({"cookieName": "x"}), "login.cookieName: unknown field"),
    ] {
        assert_eq!(problem(with(patch.clone())), expected, "{patch}");
    }
}

#[test]
fn the_top_level_reads_login_with_the_environment() {
    let config = json!({
        "providers": [{"name": "op", "issuer": "https://op.example.com"}],
        "login": base()
    })
    .to_string();
    let parsed = parse_with_env(&config, &env).unwrap();
    assert_eq!(parsed.logins.len(), 1);
    assert_eq!(parsed.logins[0].client_id, "web-app");
    // Without the environment the configuration fails, naming the variable.
    let missing = parse_with_env(&config, &|_| None).unwrap_err().to_string();
    assert_eq!(
        missing,
        "login.clientSecretEnv: environment variable CLIENT_SECRET is not set in the VM (vmConfig.env / vm_config.environment_variables)"
    );
    let none = parse(&json!({"providers": [{"issuer": "https://op.example.com"}]}).to_string());
    assert!(none.unwrap().logins.is_empty());
}
