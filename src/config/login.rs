//! `login`: browser login (issue 28), one relying party or a list of them, each for its own
//! `hosts`. Parsed into plain data; the secrets it names are read from the VM's environment
//! through the function the caller passes, so a missing or malformed variable is a
//! configuration error that names the variable (never its value).

use super::*;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

pub(super) const LOGIN_FIELDS: &[&str] = &[
    "provider",
    "clientId",
    "clientAuth",
    "clientSecretEnv",
    "clientKeyEnv",
    "clientKeyId",
    "clientCertEnv",
    "assertionAudience",
    "cookieKeysEnv",
    "scopes",
    "authorizationParams",
    "hosts",
    "callbackPath",
    "logoutPath",
    "backchannelLogoutPath",
    "postLogoutRedirectUri",
    "sessionMaxAgeSeconds",
    "sessionRecheckSeconds",
    "forward",
    "logoutHint",
];

pub const DEFAULT_CALLBACK_PATH: &str = "/oauth2/callback";
pub const DEFAULT_LOGOUT_PATH: &str = "/oauth2/logout";
pub const DEFAULT_BACKCHANNEL_LOGOUT_PATH: &str = "/oauth2/backchannel-logout";
pub const DEFAULT_SESSION_MAX_AGE_SECONDS: u64 = 24 * 3600;
pub const DEFAULT_SESSION_RECHECK_SECONDS: u64 = 300;
/// Cookie keys in one ring: enough for a rotation or two, few enough to try.
pub const MAX_COOKIE_KEYS: usize = 8;

/// Authorization request parameters the flow sets itself: `authorizationParams` may not
/// override them.
const RESERVED_AUTHORIZATION_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "response_mode",
    "request",
    "request_uri",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// `provider`: index into `Config::providers`.
    pub provider: usize,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// From `cookieKeysEnv`: the first seals, all open.
    pub cookie_keys: Secret<Vec<[u8; 32]>>,
    /// `scopes`, default `["openid"]`; always includes `openid`.
    pub scopes: Vec<String>,
    pub authorization_params: Vec<(String, String)>,
    /// `hosts`: the origins this login serves, its redirect URIs and return targets.
    pub hosts: Vec<Origin>,
    pub callback_path: String,
    pub logout_path: String,
    pub backchannel_logout_path: String,
    pub post_logout_redirect_uri: Option<String>,
    pub session_max_age_seconds: u64,
    pub session_recheck_seconds: u64,
    pub forward: Forward,
    /// `logoutHint`: what the end-session redirect names the session by.
    pub logout_hint: LogoutHint,
}

impl Login {
    /// Whether the session keeps the ID token beside the forwarded token, for `id_token_hint`.
    pub fn keeps_id_token(&self) -> bool {
        self.logout_hint == LogoutHint::IdToken && self.forward == Forward::AccessToken
    }

    /// The origin of `authority` (`:authority` as received) when this login serves it.
    pub fn origin_for(&self, authority: &str) -> Option<&Origin> {
        let authority = authority.to_ascii_lowercase();
        self.hosts.iter().find(|origin| origin.serves(&authority))
    }
}

/// An origin a login serves: `https://app.example.com` (a bare host means `https`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `https` or `http`.
    pub scheme: String,
    /// Lower-cased `host[:port]`, without the scheme's default port.
    pub authority: String,
}

impl Origin {
    /// `scheme://authority`, as a browser sends it in `Origin`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// Whether a lower-cased `:authority` names this origin (the default port may be given).
    fn serves(&self, authority: &str) -> bool {
        let default_port = if self.scheme == "https" {
            ":443"
        } else {
            ":80"
        };
        let authority = authority.strip_suffix(default_port).unwrap_or(authority);
        authority == self.authority
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    AccessToken,
    IdToken,
}

/// RP-Initiated Logout 1.0 §2: `client_id`, or `id_token_hint` (which some OPs require, Okta
/// among them) at the cost of the ID token's bytes in the session cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutHint {
    ClientId,
    IdToken,
}

/// Parses `login` (an object or a list of them) against the parsed `providers`.
pub fn parse_login_section(
    value: &Value,
    providers: &[Provider],
    env: Env<'_>,
) -> Result<Vec<Login>, ConfigError> {
    parse_logins(value, &At::Top.field("login"), providers, env)
}

pub(super) fn parse_logins(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
    env: Env<'_>,
) -> Parsed<Vec<Login>> {
    let logins = match value {
        Value::Array(_) => non_empty_items(value, path, |v, p| parse_login(v, p, providers, env))?,
        _ => vec![parse_login(value, path, providers, env)?],
    };
    // A request's host picks its login: two logins may not both claim one.
    for (index, login) in logins.iter().enumerate() {
        for earlier in &logins[..index] {
            if let Some(origin) = login.hosts.iter().find(|origin| {
                earlier
                    .hosts
                    .iter()
                    .any(|e| e.authority == origin.authority)
            }) {
                let at = path.item(index);
                return Err(error(
                    at.field("hosts"),
                    format!("{} is already served by another login", origin.authority),
                ));
            }
        }
    }
    Ok(logins)
}

fn parse_login(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
    env: Env<'_>,
) -> Parsed<Login> {
    let login = Object::new(value, path, LOGIN_FIELDS)?;
    let provider = login.required("provider", |value, path| {
        let name = non_empty_string(value, path)?;
        let index = providers
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| error(path, format!("no provider is named \"{name}\"")))?;
        let provider = &providers[index];
        if provider.tenancy.is_some() {
            return Err(error(path, "a login needs a provider with one issuer, not an issuerPattern"));
        }
        if !matches!(provider.keys, KeySource::Discovery(_)) {
            return Err(error(
                path,
                "a login needs the provider's discovery document (its endpoints): remove its jwksUri or jwks",
            ));
        }
        Ok(index)
    })?;
    let client_id = login.required("clientId", non_empty_string)?;
    let client_auth = parse_client_auth(&login, env, LOGIN_KEY_ALGS)?;
    let cookie_keys = login.required("cookieKeysEnv", |value, path| {
        let name = env_name(value, path)?;
        let text = env(&name).ok_or_else(|| unset(path, &name))?;
        parse_cookie_keys(&text)
            .map_err(|problem| error(path, format!("environment variable {name} {problem}")))
    })?;
    let scopes = login
        .optional("scopes", parse_scopes)?
        .unwrap_or_else(|| vec!["openid".to_owned()]);
    let authorization_params = login
        .optional("authorizationParams", parse_authorization_params)?
        .unwrap_or_default();
    let hosts = login.required("hosts", |value, path| {
        let hosts = non_empty_items(value, path, parse_origin)?;
        reject_duplicates(&hosts, path)?;
        Ok(hosts)
    })?;
    let login_path = |key: &str, default: &str| -> Parsed<String> {
        Ok(login
            .optional(key, parse_endpoint_path)?
            .unwrap_or_else(|| default.to_owned()))
    };
    let callback_path = login_path("callbackPath", DEFAULT_CALLBACK_PATH)?;
    let logout_path = login_path("logoutPath", DEFAULT_LOGOUT_PATH)?;
    let backchannel_logout_path =
        login_path("backchannelLogoutPath", DEFAULT_BACKCHANNEL_LOGOUT_PATH)?;
    if logout_path == callback_path {
        return Err(error(
            login.path_of("logoutPath"),
            "is the same as callbackPath",
        ));
    }
    if backchannel_logout_path == callback_path || backchannel_logout_path == logout_path {
        return Err(error(
            login.path_of("backchannelLogoutPath"),
            "is the same as callbackPath or logoutPath",
        ));
    }
    let post_logout_redirect_uri = login.optional("postLogoutRedirectUri", |value, path| {
        let url = string(value, path)?;
        HttpUrl::parse(url.clone(), path)?;
        Ok(url)
    })?;
    let forward = login.choice(
        "forward",
        &[
            ("access_token", Forward::AccessToken),
            ("id_token", Forward::IdToken),
        ],
        Forward::AccessToken,
    )?;
    let logout_hint = login.choice(
        "logoutHint",
        &[
            ("client_id", LogoutHint::ClientId),
            ("id_token", LogoutHint::IdToken),
        ],
        LogoutHint::ClientId,
    )?;
    Ok(Login {
        provider,
        client_id,
        client_auth,
        cookie_keys: Secret(cookie_keys),
        scopes,
        authorization_params,
        hosts,
        callback_path,
        logout_path,
        backchannel_logout_path,
        post_logout_redirect_uri,
        session_max_age_seconds: login
            .optional("sessionMaxAgeSeconds", positive_integer)?
            .unwrap_or(DEFAULT_SESSION_MAX_AGE_SECONDS),
        session_recheck_seconds: login
            .optional("sessionRecheckSeconds", positive_integer)?
            .unwrap_or(DEFAULT_SESSION_RECHECK_SECONDS),
        forward,
        logout_hint,
    })
}

/// Keys separated by commas or white space, each 32 bytes in base64 (either alphabet,
/// padded or not). The problem never quotes the value.
pub(super) fn parse_cookie_keys(text: &str) -> Result<Vec<[u8; 32]>, String> {
    let mut keys = Vec::new();
    for (index, encoded) in text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|part| !part.is_empty())
        .enumerate()
    {
        let bytes = [&URL_SAFE_NO_PAD, &URL_SAFE, &STANDARD, &STANDARD_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(encoded).ok())
            .ok_or_else(|| format!("has a key (number {}) that is not base64", index + 1))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            format!(
                "has a key (number {}) that is not 32 bytes (make one with: openssl rand -base64 32)",
                index + 1
            )
        })?;
        if keys.contains(&key) {
            return Err(format!("lists a key twice (number {})", index + 1));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("holds no key (make one with: openssl rand -base64 32)".to_owned());
    }
    if keys.len() > MAX_COOKIE_KEYS {
        return Err(format!("holds more than {MAX_COOKIE_KEYS} keys"));
    }
    Ok(keys)
}

/// RFC 6749 §3.3: space-separated scope tokens of `%x21 / %x23-5B / %x5D-7E`.
fn parse_scopes(value: &Value, path: &At<'_>) -> Parsed<Vec<String>> {
    let scopes = non_empty_items(value, path, |value, path| {
        let scope = non_empty_string(value, path)?;
        let valid = scope
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if !valid {
            return Err(error(
                path,
                "not a scope token (no spaces, quotes or backslashes)",
            ));
        }
        Ok(scope)
    })?;
    reject_duplicates(&scopes, path)?;
    if !scopes.iter().any(|scope| scope == "openid") {
        return Err(error(
            path,
            "must include \"openid\": a login is an OpenID Connect request",
        ));
    }
    Ok(scopes)
}

fn parse_authorization_params(value: &Value, path: &At<'_>) -> Parsed<Vec<(String, String)>> {
    let map = value
        .as_object()
        .ok_or_else(|| error(path, "expected an object of parameter: value"))?;
    let mut params = Vec::with_capacity(map.len());
    for (name, value) in map {
        let at = path.field(name);
        if name.is_empty() {
            return Err(error(at, "a parameter needs a name"));
        }
        if RESERVED_AUTHORIZATION_PARAMS.contains(&name.as_str()) {
            return Err(error(at, "is set by the login itself"));
        }
        params.push((name.clone(), string(value, &at)?));
    }
    Ok(params)
}

/// `app.example.com`, `app.example.com:8443`, `https://app.example.com` or
/// `http://localhost:8080`: an origin, no path.
fn parse_origin(value: &Value, path: &At<'_>) -> Parsed<Origin> {
    let text = non_empty_string(value, path)?;
    let (scheme, authority) = match text.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("https".to_owned(), text.as_str()),
    };
    if scheme != "https" && scheme != "http" {
        return Err(error(path, "must be a host or an http(s) origin"));
    }
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains(['/', '?', '#', '@', '*']) {
        return Err(error(
            path,
            "must be a host or an origin, without path, user or wildcard",
        ));
    }
    let (host, port) = split_host_port(authority, path)?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    let authority = match port {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host,
    };
    Ok(Origin { scheme, authority })
}

/// A path the login answers itself: absolute, visible ASCII, no query or fragment.
fn parse_endpoint_path(value: &Value, path: &At<'_>) -> Parsed<String> {
    let text = non_empty_string(value, path)?;
    let valid = text.starts_with('/')
        && !text.starts_with("//")
        && text
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !b"?#\\".contains(&b));
    if !valid {
        return Err(error(
            path,
            "must be an absolute path without query or fragment",
        ));
    }
    Ok(text)
}

#[cfg(test)]
#[path = "login_tests.rs"]
mod tests;
