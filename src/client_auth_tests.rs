//! `clientKeyId` and `clientCertEnv`: what the assertion's header carries, and the
//! configuration errors around them. The certificates are fixtures made by `openssl req -x509`
//! for the fixture keys; the expected thumbprints are `openssl x509 -fingerprint` in base64url.

use super::*;
use crate::config::{ClientAuth, ConfigError};
use serde_json::json;

const RSA_A: &[u8] = include_bytes!("../tests/fixtures/rsa2048-a.pk8.der");
const CERT_A: &str = include_str!("../tests/fixtures/rsa2048-a.cert.pem");
const CERT_B: &str = include_str!("../tests/fixtures/rsa2048-b.cert.pem");
/// `openssl x509 -in rsa2048-a.cert.pem -noout -fingerprint -sha1` (and `-sha256`), base64url.
const CERT_A_X5T: &str = "EpVAyuvMqR6MNZ2OsZvcumdx3xY";
const CERT_A_X5T_S256: &str = "wp4Q_HicgPhfo2BcbYbl0zab5RQ9YjFnBhctFsofZ-A";

fn env(name: &str) -> Option<String> {
    match name {
        "KEY" => Some(STANDARD.encode(RSA_A)),
        "CERT" => Some(CERT_A.to_owned()),
        "CERT_DER" => Some(
            CERT_A
                .lines()
                .filter(|line| !line.starts_with("-----"))
                .collect(),
        ),
        "OTHER_CERT" => Some(CERT_B.to_owned()),
        "GARBAGE" => Some(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----".to_owned(),
        ),
        "SECRET" => Some("s3cret".to_owned()),
        // A PKCS#8 key holds its public key too, but is no certificate.
        "KEY_AS_CERT" => Some(STANDARD.encode(RSA_A)),
        _ => None,
    }
}

fn parse(client: serde_json::Value) -> Result<ClientAuth, ConfigError> {
    let config = json!({"providers": [{"issuer": "https://idp.example.com", "name": "idp"}]});
    let providers = crate::config::parse(&config.to_string()).unwrap().providers;
    let mut fields = json!({"provider": "idp", "clientId": "agent"});
    fields
        .as_object_mut()
        .unwrap()
        .extend(client.as_object().unwrap().clone());
    let entries = json!([{"name": "tools", "match": {"hosts": ["tools.internal"]},
                          "clientCredentials": fields}]);
    crate::config::parse_outbound_list(&entries, &providers, &env)
        .map(|outbound| outbound.entries[0].grant.client().auth.clone())
}

fn assertion_header(auth: &ClientAuth) -> serde_json::Value {
    let ClientAuth::PrivateKeyJwt(key) = auth else {
        panic!("private_key_jwt")
    };
    let signer = Signer::new(key).unwrap();
    let assertion =
        client_assertion(&signer, "agent", "https://idp.example.com", 1_000, [9; 16]).unwrap();
    let header = assertion.split('.').next().unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap()
}

#[test]
fn the_assertion_names_its_key_by_kid_and_certificate_thumbprints() {
    let auth = parse(
        json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY",
                            "clientKeyId": "agent-2026", "clientCertEnv": "CERT"}),
    )
    .unwrap();
    assert_eq!(
        assertion_header(&auth),
        json!({"alg": "RS256", "typ": "JWT", "kid": "agent-2026",
               "x5t": CERT_A_X5T, "x5t#S256": CERT_A_X5T_S256})
    );
    // A bare base64 DER certificate reads the same.
    let bare = parse(
        json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY",
                            "clientCertEnv": "CERT_DER"}),
    )
    .unwrap();
    assert_eq!(assertion_header(&bare)["x5t"], CERT_A_X5T);
}

#[test]
fn without_them_the_header_is_alg_and_typ_only() {
    let auth = parse(json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY"})).unwrap();
    assert_eq!(
        assertion_header(&auth),
        json!({"alg": "RS256", "typ": "JWT"})
    );
}

#[test]
fn a_wrong_certificate_or_a_secret_method_is_a_configuration_error() {
    let key = |extra: serde_json::Value| {
        let mut client = json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY"});
        client
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        client
    };
    let cases = [
        (
            key(json!({"clientCertEnv": "OTHER_CERT"})),
            "outbound[0].clientCredentials.clientCertEnv: environment variable OTHER_CERT is a certificate for another key than clientKeyEnv's",
        ),
        (
            key(json!({"clientCertEnv": "GARBAGE"})),
            "outbound[0].clientCredentials.clientCertEnv: environment variable GARBAGE is not an X.509 certificate",
        ),
        (
            key(json!({"clientCertEnv": "KEY_AS_CERT"})),
            "outbound[0].clientCredentials.clientCertEnv: environment variable KEY_AS_CERT is not an X.509 certificate",
        ),
        (
            key(json!({"clientCertEnv": "UNSET"})),
            "outbound[0].clientCredentials.clientCertEnv: environment variable UNSET is not set",
        ),
        (
            key(json!({"clientKeyId": ""})),
            "outbound[0].clientCredentials.clientKeyId:",
        ),
        (
            json!({"clientSecretEnv": "SECRET", "clientKeyId": "k1"}),
            "outbound[0].clientCredentials.clientKeyId: client_secret_basic authenticates with clientSecretEnv, not a key",
        ),
        (
            json!({"clientSecretEnv": "SECRET", "clientCertEnv": "CERT"}),
            "outbound[0].clientCredentials.clientCertEnv: client_secret_basic authenticates with clientSecretEnv, not a key",
        ),
    ];
    for (client, expected) in cases {
        let problem = parse(client).unwrap_err().to_string();
        assert!(problem.starts_with(expected), "{problem}");
        assert!(!problem.contains("BEGIN"), "{problem}");
    }
}

/// The `aud` of the assertion `auth` sends to the server `https://idp.example.com`, whose
/// discovered token endpoint is on another host (as Entra ID's is).
fn assertion_audience(auth: &ClientAuth) -> serde_json::Value {
    let ClientAuth::PrivateKeyJwt(key) = auth else {
        panic!("private_key_jwt")
    };
    let signer = Signer::new(key).unwrap();
    let sent = credentials(
        auth,
        "agent",
        Some(&signer),
        "https://idp.example.com",
        "https://login.idp.example.com/t1/oauth2/v2.0/token",
        1_000,
        [9; 16],
    )
    .unwrap();
    let (_, assertion) = sent
        .params
        .iter()
        .find(|(name, _)| *name == "client_assertion")
        .unwrap();
    let claims = assertion.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    claims["aud"].clone()
}

#[test]
fn the_assertion_audience_is_the_issuer_unless_the_token_endpoint_is_asked_for() {
    let key = |extra: serde_json::Value| {
        let mut client = json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY"});
        client
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        parse(client).unwrap()
    };
    assert_eq!(
        assertion_audience(&key(json!({}))),
        "https://idp.example.com"
    );
    assert_eq!(
        assertion_audience(&key(json!({"assertionAudience": "issuer"}))),
        "https://idp.example.com"
    );
    // The discovered URL as the call goes to it, not one built from the issuer.
    assert_eq!(
        assertion_audience(&key(json!({"assertionAudience": "tokenEndpoint"}))),
        "https://login.idp.example.com/t1/oauth2/v2.0/token"
    );
}

#[test]
fn an_assertion_audience_without_an_assertion_or_of_another_name_is_a_configuration_error() {
    let cases = [
        (
            json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY",
                   "assertionAudience": "token_endpoint"}),
            "outbound[0].clientCredentials.assertionAudience: must be \"issuer\" or \"tokenEndpoint\"",
        ),
        (
            json!({"clientAuth": "private_key_jwt", "clientKeyEnv": "KEY",
                   "assertionAudience": true}),
            "outbound[0].clientCredentials.assertionAudience: expected a string",
        ),
        (
            json!({"clientSecretEnv": "SECRET", "assertionAudience": "tokenEndpoint"}),
            "outbound[0].clientCredentials.assertionAudience: client_secret_basic sends no assertion: assertionAudience is for private_key_jwt",
        ),
        (
            json!({"clientAuth": "client_secret_post", "clientSecretEnv": "SECRET",
                   "assertionAudience": "issuer"}),
            "outbound[0].clientCredentials.assertionAudience: client_secret_post sends no assertion: assertionAudience is for private_key_jwt",
        ),
    ];
    for (client, expected) in cases {
        let problem = parse(client).unwrap_err().to_string();
        assert_eq!(problem, expected);
    }
}
