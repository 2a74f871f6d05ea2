//! `outbound` (issue 29): on a workload's outbound side, which requests get a token, from
//! which client and grant, and in which header. Plain data; the flow is `crate::outbound`.
//!
//! Secrets and client keys come from the VM's environment, read through the function the
//! caller passes (`std::env::var` in the filter), never from the configuration itself.

use super::*;

/// `limits.maxOutboundTokens` when not given.
pub const DEFAULT_MAX_OUTBOUND_TOKENS: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct Outbound {
    /// First match wins.
    pub entries: Vec<OutboundEntry>,
}

#[derive(Debug, Clone)]
pub struct OutboundEntry {
    /// `name`: also the metric label (`outbound.<name>.…`).
    pub name: String,
    /// `match`: the operation part of the rule vocabulary.
    pub matcher: RuleMatch,
    /// `header`, lower-cased (default `authorization`).
    pub header: String,
    pub grant: Grant,
    pub on_failure: OnFailure,
}

impl OutboundEntry {
    /// The token goes in `Authorization` (as `Bearer`), replacing what the app sent.
    pub fn in_authorization(&self) -> bool {
        self.header == "authorization"
    }
}

#[derive(Debug, Clone)]
pub enum Grant {
    /// `clientCredentials`
    ClientCredentials(OutboundClient),
    /// `tokenExchange` (RFC 8693)
    TokenExchange(Exchange),
}

impl Grant {
    pub fn client(&self) -> &OutboundClient {
        match self {
            Grant::ClientCredentials(client) => client,
            Grant::TokenExchange(exchange) => &exchange.client,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Exchange {
    pub client: OutboundClient,
    /// `actor: "clientCredentials"`: the workload's own client-credentials token goes as
    /// `actor_token`.
    pub actor_client_credentials: bool,
    pub missing_subject: MissingSubject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingSubject {
    /// 403: never sent on unauthenticated (the default).
    Refuse,
    /// The workload's own client-credentials token instead.
    ClientCredentials,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// 503 with `Retry-After` (the default): fail closed.
    Refuse,
    /// The request goes on as the app sent it.
    PassThrough,
}

#[derive(Debug, Clone)]
pub struct OutboundClient {
    /// Index into `providers`: its issuer is the assertion's `aud`, its discovery document
    /// names the token endpoint.
    pub provider: usize,
    pub client_id: String,
    pub auth: ClientAuth,
    /// `audience`: one or more (RFC 8693 §2.1).
    pub audiences: Vec<String>,
    /// `resource`: absolute URIs (RFC 8707).
    pub resources: Vec<String>,
    pub scopes: Vec<String>,
}

const OUTBOUND_ENTRY_FIELDS: &[&str] = &[
    "name",
    "match",
    "header",
    "clientCredentials",
    "tokenExchange",
    "onFailure",
];
const OUTBOUND_CLIENT_FIELDS: &[&str] = &[
    "provider",
    "clientId",
    "clientAuth",
    "clientSecretEnv",
    "clientKeyEnv",
    "clientKeyId",
    "clientCertEnv",
    "assertionAudience",
    "audience",
    "resource",
    "scopes",
];
/// `tokenExchange`: the client's fields and two more.
const OUTBOUND_EXCHANGE_FIELDS: &[&str] = &[
    "provider",
    "clientId",
    "clientAuth",
    "clientSecretEnv",
    "clientKeyEnv",
    "clientKeyId",
    "clientCertEnv",
    "assertionAudience",
    "audience",
    "resource",
    "scopes",
    "actor",
    "missingSubject",
];

/// Headers a token must never be written into: they frame or route the request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "cookie",
];

/// The top-level `outbound` list, checked against the parsed `providers`.
pub fn parse_outbound_list(
    value: &Value,
    providers: &[Provider],
    env: Env<'_>,
) -> Result<Outbound, ConfigError> {
    parse_outbound(value, &At::Top.field("outbound"), providers, env)
}

/// `outbound`: the list, with names unique (they label metrics).
pub(super) fn parse_outbound(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
    env: Env<'_>,
) -> Parsed<Outbound> {
    let entries = items(value, path, |value, path| {
        parse_entry(value, path, providers, env)
    })?;
    for (index, entry) in entries.iter().enumerate() {
        if entries[..index].iter().any(|e| e.name == entry.name) {
            return Err(error(
                path.item(index).field("name"),
                format!("\"{}\" is used by an earlier entry", entry.name),
            ));
        }
    }
    // First match wins: an entry whose every request earlier ones take never applies.
    for (index, entry) in entries.iter().enumerate() {
        let earlier: Vec<&RuleMatch> = entries[..index].iter().map(|e| &e.matcher).collect();
        let problem = match overlap::reach(&entry.matcher, &earlier) {
            overlap::Reach::Reachable => continue,
            overlap::Reach::Empty => {
                "never applies: no request matches it (its not… fields exclude everything its \
                 other fields match)"
                    .to_owned()
            }
            overlap::Reach::Shadowed(by) => {
                let named: Vec<String> = by
                    .iter()
                    .map(|&i| format!("outbound[{i}] (\"{}\")", entries[i].name))
                    .collect();
                let (list, verb) = match named.split_last() {
                    Some((last, [])) => (last.clone(), "comes"),
                    Some((last, rest)) => (format!("{} and {last}", rest.join(", ")), "come"),
                    None => continue,
                };
                format!(
                    "never applies: every request it matches is taken by {list}, which {verb} \
                     first (first match wins)"
                )
            }
        };
        return Err(error(path.item(index).field("match"), problem));
    }
    Ok(Outbound { entries })
}

fn parse_entry(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
    env: Env<'_>,
) -> Parsed<OutboundEntry> {
    let entry = Object::new(value, path, OUTBOUND_ENTRY_FIELDS)?;
    let name = entry.required("name", parse_entry_name)?;
    let matcher = entry.required("match", parse_operation_match)?;
    if !matcher
        .conditions
        .iter()
        .any(|c| c.fact == Fact::Host && c.any_of.is_some())
    {
        return Err(error(
            entry.path_of("match").field("hosts"),
            "required: a token must go only to the destinations it is meant for (\"*\" if really any)",
        ));
    }
    let header = entry
        .optional("header", parse_header_name)?
        .unwrap_or_else(|| "authorization".to_owned());
    let credentials = entry.optional("clientCredentials", |value, path| {
        let client = Object::new(value, path, OUTBOUND_CLIENT_FIELDS)?;
        parse_client(&client, providers, env)
    })?;
    let exchange = entry.optional("tokenExchange", |value, path| {
        parse_exchange(value, path, providers, env)
    })?;
    let grant = match (credentials, exchange) {
        (Some(client), None) => Grant::ClientCredentials(client),
        (None, Some(exchange)) => Grant::TokenExchange(exchange),
        (Some(_), Some(_)) => {
            return Err(error(
                entry.path_of("tokenExchange"),
                "give either clientCredentials or tokenExchange, not both",
            ))
        }
        (None, None) => {
            return Err(error(
                path,
                "needs clientCredentials or tokenExchange: how the token is obtained",
            ))
        }
    };
    let on_failure = entry.choice(
        "onFailure",
        &[
            ("refuse", OnFailure::Refuse),
            ("passThrough", OnFailure::PassThrough),
        ],
        OnFailure::Refuse,
    )?;
    Ok(OutboundEntry {
        name,
        matcher,
        header,
        grant,
        on_failure,
    })
}

/// A metric-name segment as written: letters, digits, `_` and `-`.
fn parse_entry_name(value: &Value, path: &At<'_>) -> Parsed<String> {
    let name = non_empty_string(value, path)?;
    let fits = name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !fits {
        return Err(error(
            path,
            "up to 64 ASCII letters, digits, '_' or '-' (it names the entry's metrics)",
        ));
    }
    Ok(name)
}

fn parse_header_name(value: &Value, path: &At<'_>) -> Parsed<String> {
    let name = non_empty_string(value, path)?.to_ascii_lowercase();
    if !is_token(&name) {
        return Err(error(path, "not a header name"));
    }
    if RESERVED_HEADERS.contains(&name.as_str()) {
        return Err(error(
            path,
            format!("\"{name}\" frames or routes the request; a token cannot go there"),
        ));
    }
    Ok(name)
}

fn parse_exchange(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
    env: Env<'_>,
) -> Parsed<Exchange> {
    let exchange = Object::new(value, path, OUTBOUND_EXCHANGE_FIELDS)?;
    let client = parse_client(&exchange, providers, env)?;
    let actor_client_credentials = exchange
        .optional("actor", |value, path| match string(value, path)?.as_str() {
            "clientCredentials" => Ok(true),
            _ => Err(error(
                path,
                "must be \"clientCredentials\" (the workload's own token acts)",
            )),
        })?
        .unwrap_or(false);
    let missing_subject = exchange.choice(
        "missingSubject",
        &[
            ("refuse", MissingSubject::Refuse),
            ("clientCredentials", MissingSubject::ClientCredentials),
        ],
        MissingSubject::Refuse,
    )?;
    Ok(Exchange {
        client,
        actor_client_credentials,
        missing_subject,
    })
}

/// The client fields of `clientCredentials` or `tokenExchange`.
fn parse_client(
    client: &Object<'_, '_>,
    providers: &[Provider],
    env: Env<'_>,
) -> Parsed<OutboundClient> {
    let provider = client.required("provider", |value, path| {
        outbound_provider(value, path, providers)
    })?;
    let client_id = client.required("clientId", non_empty_string)?;
    let auth = parse_client_auth(client, env, OUTBOUND_KEY_ALGS)?;
    let audiences = client
        .optional("audience", |value, path| {
            one_or_more(value, path, non_empty_string)
        })?
        .unwrap_or_default();
    let resources = client
        .optional("resource", |value, path| {
            one_or_more(value, path, parse_resource)
        })?
        .unwrap_or_default();
    let scopes = client
        .optional("scopes", |value, path| {
            let scopes = non_empty_items(value, path, parse_scope)?;
            reject_duplicates(&scopes, path)?;
            Ok(scopes)
        })?
        .unwrap_or_default();
    Ok(OutboundClient {
        provider,
        client_id,
        auth,
        audiences,
        resources,
        scopes,
    })
}

/// The provider by `name` (which defaults to its issuer). Its token endpoint comes from its
/// discovery document, so it must be one that is discovered.
fn outbound_provider(value: &Value, path: &At<'_>, providers: &[Provider]) -> Parsed<usize> {
    let name = non_empty_string(value, path)?;
    let (index, provider) = providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.name == name)
        .ok_or_else(|| error(path, format!("no provider is named \"{name}\"")))?;
    if provider.tenancy.is_some() {
        return Err(error(
            path,
            "names a provider with issuerPattern: a client belongs to one issuer",
        ));
    }
    if !matches!(provider.keys, KeySource::Discovery(_)) {
        return Err(error(
            path,
            format!(
                "providers[{index}] gives jwks or jwksUri; its token endpoint is read from its \
                 discovery document, so leave both out"
            ),
        ));
    }
    Ok(index)
}

/// A string, or a non-empty list of them without repeats.
fn one_or_more(
    value: &Value,
    path: &At<'_>,
    item: impl Fn(&Value, &At<'_>) -> Parsed<String>,
) -> Parsed<Vec<String>> {
    if value.is_string() {
        return Ok(vec![item(value, path)?]);
    }
    let values = non_empty_items(value, path, item)?;
    reject_duplicates(&values, path)?;
    Ok(values)
}

/// RFC 8707 §2: an absolute URI without a fragment.
fn parse_resource(value: &Value, path: &At<'_>) -> Parsed<String> {
    let resource = non_empty_string(value, path)?;
    let scheme = resource.split_once(':').map(|(scheme, _)| scheme);
    let absolute = scheme.is_some_and(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if !absolute || resource.contains('#') || resource.chars().any(char::is_whitespace) {
        return Err(error(
            path,
            "not an absolute URI without a fragment (RFC 8707)",
        ));
    }
    Ok(resource)
}

#[cfg(test)]
#[path = "outbound_tests.rs"]
mod tests;
