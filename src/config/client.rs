//! How a client authenticates at a token endpoint (`clientAuth`, `clientSecretEnv`,
//! `clientKeyEnv`, `clientKeyId`, `clientCertEnv`, `assertionAudience`), shared by browser login
//! and outbound credentials. The secret or key is
//! read from the VM's environment; a missing or malformed variable is a configuration error
//! that names the variable, never its value.

use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// A value from the environment that must never be printed: its `Debug` says only that it is
/// there.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic` (the default), the secret from `clientSecretEnv`.
    SecretBasic(Secret<String>),
    /// `client_secret_post`.
    SecretPost(Secret<String>),
    /// `private_key_jwt` (RFC 7523 §2.2), the key from `clientKeyEnv`.
    PrivateKeyJwt(ClientKey),
}

impl ClientAuth {
    pub fn name(&self) -> &'static str {
        match self {
            ClientAuth::SecretBasic(_) => "client_secret_basic",
            ClientAuth::SecretPost(_) => "client_secret_post",
            ClientAuth::PrivateKeyJwt(_) => "private_key_jwt",
        }
    }

    /// The method as `explain` shows it: its name, and for private_key_jwt what the
    /// assertion's `aud` names.
    pub fn summary(&self) -> String {
        match self {
            ClientAuth::PrivateKeyJwt(key) => format!(
                "private_key_jwt, assertion aud = the {}",
                match key.audience {
                    AssertionAudience::Issuer => "issuer",
                    AssertionAudience::TokenEndpoint => "token endpoint URL",
                }
            ),
            _ => self.name().to_owned(),
        }
    }
}

/// `assertionAudience`: what a private_key_jwt assertion names as its `aud`. RFC 7523 §3 lets
/// the authorization server choose; servers differ in what they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAudience {
    /// The provider's issuer identifier (draft-ietf-oauth-rfc7523bis and FAPI 2.0 settle on it).
    #[default]
    Issuer,
    /// The token endpoint URL of the provider's discovery document, where the call goes
    /// (OpenID Connect Core §9's SHOULD; Okta and Microsoft Entra ID require it).
    TokenEndpoint,
}

/// A client's signing key: PKCS#8 DER, checked by `ring` while parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// RS256 for an RSA key, ES256 for a P-256 key, EdDSA for an Ed25519 key.
    pub alg: Alg,
    pub pkcs8: Secret<Vec<u8>>,
    /// `clientKeyId`: the assertion's `kid`, for an authorization server that picks the
    /// client's key by it (Okta, Keycloak with several keys registered).
    pub key_id: Option<String>,
    /// `clientCertEnv`: the thumbprints of the key's certificate, for an authorization server
    /// that picks the key by `x5t` (Microsoft Entra ID).
    pub certificate: Option<CertificateThumbprints>,
    /// `assertionAudience`: the assertion's `aud`.
    pub audience: AssertionAudience,
}

/// RFC 7515 §4.1.7–4.1.8: base64url of the SHA-1 and SHA-256 digests of a certificate's DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateThumbprints {
    pub x5t: String,
    pub x5t_s256: String,
}

/// What a client key may sign for browser login.
pub const LOGIN_KEY_ALGS: &[Alg] = &[Alg::RS256, Alg::ES256, Alg::EdDSA];
/// What a client key may sign for outbound credentials.
pub const OUTBOUND_KEY_ALGS: &[Alg] = &[Alg::ES256, Alg::RS256];

/// `clientAuth` with its `clientSecretEnv` or `clientKeyEnv` in `client`; a key must sign
/// one of `key_algs`.
pub(super) fn parse_client_auth(
    client: &Object<'_, '_>,
    env: Env<'_>,
    key_algs: &[Alg],
) -> Parsed<ClientAuth> {
    let method = client
        .optional("clientAuth", string)?
        .unwrap_or_else(|| "client_secret_basic".to_owned());
    let secret_env = client.optional("clientSecretEnv", env_name)?;
    let key_env = client.optional("clientKeyEnv", env_name)?;
    let key_id = client.optional("clientKeyId", non_empty_string)?;
    let cert_env = client.optional("clientCertEnv", env_name)?;
    let audience = client.optional("assertionAudience", |value, path| {
        one_of(
            value,
            path,
            &[
                ("issuer", AssertionAudience::Issuer),
                ("tokenEndpoint", AssertionAudience::TokenEndpoint),
            ],
        )
    })?;
    let read_secret = || -> Parsed<Secret<String>> {
        for (field, present) in [
            ("clientKeyEnv", key_env.is_some()),
            ("clientKeyId", key_id.is_some()),
            ("clientCertEnv", cert_env.is_some()),
        ] {
            if present {
                return Err(error(
                    client.path_of(field),
                    format!("{method} authenticates with clientSecretEnv, not a key"),
                ));
            }
        }
        if audience.is_some() {
            return Err(error(
                client.path_of("assertionAudience"),
                format!("{method} sends no assertion: assertionAudience is for private_key_jwt"),
            ));
        }
        let path = client.path_of("clientSecretEnv");
        let name = secret_env.clone().ok_or_else(|| {
            error(
                client.path_of("clientSecretEnv"),
                format!("required with clientAuth {method}"),
            )
        })?;
        let secret = read_variable(&name, &path, env)?;
        // Never the value itself in the message: only where it is wrong.
        if secret.chars().any(char::is_control) {
            return Err(error(
                path,
                format!(
                    "environment variable {name} holds a control character (a trailing newline?)"
                ),
            ));
        }
        Ok(Secret(secret))
    };
    match method.as_str() {
        "client_secret_basic" => Ok(ClientAuth::SecretBasic(read_secret()?)),
        "client_secret_post" => Ok(ClientAuth::SecretPost(read_secret()?)),
        "private_key_jwt" => {
            if secret_env.is_some() {
                return Err(error(
                    client.path_of("clientSecretEnv"),
                    "private_key_jwt signs with the key in clientKeyEnv, not a secret",
                ));
            }
            let path = client.path_of("clientKeyEnv");
            let name = key_env.clone().ok_or_else(|| {
                error(
                    client.path_of("clientKeyEnv"),
                    "required with clientAuth private_key_jwt",
                )
            })?;
            let text = read_variable(&name, &path, env)?;
            let (mut key, public_key) = parse_client_key(&text, key_algs)
                .map_err(|problem| error(path, format!("environment variable {name} {problem}")))?;
            key.key_id = key_id;
            key.audience = audience.unwrap_or_default();
            if let Some(cert_name) = cert_env {
                let cert_path = client.path_of("clientCertEnv");
                let pem = read_variable(&cert_name, &cert_path, env)?;
                key.certificate = Some(certificate_thumbprints(&pem, &public_key).map_err(
                    |problem| {
                        error(
                            cert_path,
                            format!("environment variable {cert_name} {problem}"),
                        )
                    },
                )?);
            }
            Ok(ClientAuth::PrivateKeyJwt(key))
        }
        _ => Err(error(
            client.path_of("clientAuth"),
            "must be \"client_secret_basic\", \"client_secret_post\" or \"private_key_jwt\"",
        )),
    }
}

/// An environment variable's name (POSIX: letters, digits, `_`, not starting with a digit).
pub(super) fn env_name(value: &Value, path: &At<'_>) -> Parsed<String> {
    let name = non_empty_string(value, path)?;
    let valid = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(error(
            path,
            "not an environment variable name (letters, digits and _)",
        ));
    }
    Ok(name)
}

/// The value of the environment variable `name`, which must be set and not empty.
pub(super) fn read_variable(name: &str, path: &At<'_>, env: Env<'_>) -> Parsed<String> {
    let value = env(name).ok_or_else(|| unset(path, name))?;
    if value.is_empty() {
        return Err(error(path, format!("environment variable {name} is empty")));
    }
    Ok(value)
}

/// The variable `name` is not in the VM's environment.
pub(super) fn unset(path: &At<'_>, name: &str) -> ConfigError {
    error(
        path,
        format!(
            "environment variable {name} is not set in the VM (vmConfig.env / \
             vm_config.environment_variables)"
        ),
    )
}

/// The DER inside a PEM block labelled `label`, or bare base64 DER; `None` when neither.
fn pem_or_base64_der(text: &str, label: &str) -> Option<Vec<u8>> {
    let body: String = if text.contains("-----BEGIN") {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        text.split_once(begin.as_str())
            .and_then(|(_, rest)| rest.split_once(end.as_str()))
            .map(|(inner, _)| inner.chars().filter(|c| !c.is_whitespace()).collect())?
    } else {
        text.chars().filter(|c| !c.is_whitespace()).collect()
    };
    STANDARD.decode(body.as_bytes()).ok()
}

/// A PKCS#8 private key, PEM (`-----BEGIN PRIVATE KEY-----`) or bare base64 DER, that signs
/// one of `algs`, with its public key as a certificate carries it (the RSAPublicKey DER, the
/// uncompressed P-256 point, the Ed25519 bytes). The problem never quotes the value.
pub(super) fn parse_client_key(text: &str, algs: &[Alg]) -> Result<(ClientKey, Vec<u8>), String> {
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
    let der = pem_or_base64_der(text, "PRIVATE KEY").ok_or_else(|| {
        if text.contains("-----BEGIN") {
            "is not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----); convert it with `openssl pkcs8 -topk8 -nocrypt`"
                .to_owned()
        } else {
            "is not a PEM or base64 PKCS#8 private key".to_owned()
        }
    })?;
    let public_key = |alg: Alg| -> Option<Vec<u8>> {
        match alg {
            Alg::RS256 => RsaKeyPair::from_pkcs8(&der)
                .ok()
                .map(|pair| pair.public_key().as_ref().to_vec()),
            Alg::ES256 => EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &der,
                &ring::rand::SystemRandom::new(),
            )
            .ok()
            .map(|pair| pair.public_key().as_ref().to_vec()),
            Alg::EdDSA => Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
                .ok()
                .map(|pair| pair.public_key().as_ref().to_vec()),
            _ => None,
        }
    };
    let Some((alg, public_key)) = algs
        .iter()
        .find_map(|&alg| public_key(alg).map(|public_key| (alg, public_key)))
    else {
        return Err(format!(
            "is not a usable PKCS#8 private key ({})",
            key_kinds(algs)
        ));
    };
    let key = ClientKey {
        alg,
        pkcs8: Secret(der),
        key_id: None,
        certificate: None,
        audience: AssertionAudience::Issuer,
    };
    Ok((key, public_key))
}

/// The thumbprints of an X.509 certificate (PEM `-----BEGIN CERTIFICATE-----` or bare base64
/// DER) that must carry `public_key`: a certificate of another key would name a key the
/// authorization server then fails to match, at every token call instead of at configuration.
pub(super) fn certificate_thumbprints(
    text: &str,
    public_key: &[u8],
) -> Result<CertificateThumbprints, String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::digest::{digest, SHA1_FOR_LEGACY_USE_ONLY, SHA256};
    let der = pem_or_base64_der(text, "CERTIFICATE")
        .ok_or_else(|| "is not a PEM or base64 DER X.509 certificate".to_owned())?;
    let tbs = to_be_signed(&der)
        .ok_or_else(|| "is not an X.509 certificate (RFC 5280 §4.1)".to_owned())?;
    // The subjectPublicKeyInfo holds the key's bytes verbatim (RFC 5280 §4.1, RFC 3279,
    // RFC 8410): finding them in the signed part is the match, without a full X.509 parser.
    if public_key.is_empty() || !tbs.windows(public_key.len()).any(|w| w == public_key) {
        return Err("is a certificate for another key than clientKeyEnv's".to_owned());
    }
    Ok(CertificateThumbprints {
        x5t: URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, &der)),
        x5t_s256: URL_SAFE_NO_PAD.encode(digest(&SHA256, &der)),
    })
}

/// The tbsCertificate of a DER X.509 certificate: the outline of RFC 5280 §4.1 (one SEQUENCE
/// of tbsCertificate SEQUENCE, signatureAlgorithm SEQUENCE and signatureValue BIT STRING, with
/// nothing after), so a private key (PKCS#8 starts with an INTEGER) is never taken for one.
fn to_be_signed(der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const BIT_STRING: u8 = 0x03;
    let (SEQUENCE, certificate, []) = der_element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, rest) = der_element(certificate)? else {
        return None;
    };
    let (SEQUENCE, _, rest) = der_element(rest)? else {
        return None;
    };
    let (BIT_STRING, _, []) = der_element(rest)? else {
        return None;
    };
    Some(tbs)
}

/// The DER element at the start of `der`: its tag, its contents and what follows it.
fn der_element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |len, &byte| (len << 8) | usize::from(byte));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((tag, contents, rest))
}

/// `algs` as the keys that sign them: "RSA of 2048 to 4096 bits, P-256 or Ed25519".
fn key_kinds(algs: &[Alg]) -> String {
    let kinds: Vec<&str> = algs
        .iter()
        .map(|alg| match alg {
            Alg::RS256 => "RSA of 2048 to 4096 bits",
            Alg::ES256 => "P-256",
            Alg::EdDSA => "Ed25519",
            _ => alg.name(),
        })
        .collect();
    match kinds.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
