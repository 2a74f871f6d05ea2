//! A rule's `match`: the vocabulary of Istio's AuthorizationPolicy (operation, source and
//! `when` conditions), each field parsed into a [`Condition`] on one [`Fact`].

use super::*;

/// `match` field → what it reads, whether it is the negated form, and its patterns' kind.
const MATCH_FIELDS: &[(&str, Fact, bool, Kind)] = &[
    ("paths", Fact::Path, false, Kind::Path),
    ("notPaths", Fact::Path, true, Kind::Path),
    ("methods", Fact::Method, false, Kind::Method),
    ("notMethods", Fact::Method, true, Kind::Method),
    ("hosts", Fact::Host, false, Kind::Host),
    ("notHosts", Fact::Host, true, Kind::Host),
    ("ports", Fact::DestinationPort, false, Kind::Port),
    ("notPorts", Fact::DestinationPort, true, Kind::Port),
    ("principals", Fact::Principal, false, Kind::Principal),
    ("notPrincipals", Fact::Principal, true, Kind::Principal),
    ("namespaces", Fact::Namespace, false, Kind::Text),
    ("notNamespaces", Fact::Namespace, true, Kind::Text),
    ("ipBlocks", Fact::DirectIp, false, Kind::Ip),
    ("notIpBlocks", Fact::DirectIp, true, Kind::Ip),
    ("remoteIpBlocks", Fact::RemoteIp, false, Kind::Ip),
    ("notRemoteIpBlocks", Fact::RemoteIp, true, Kind::Ip),
    (
        "requestPrincipals",
        Fact::RequestPrincipal,
        false,
        Kind::Text,
    ),
    (
        "notRequestPrincipals",
        Fact::RequestPrincipal,
        true,
        Kind::Text,
    ),
];

/// `when` keys other than `request.headers[…]` and `request.auth.claims[…]`.
const WHEN_KEYS: &[(&str, Fact, Kind)] = &[
    ("source.ip", Fact::DirectIp, Kind::Ip),
    ("remote.ip", Fact::RemoteIp, Kind::Ip),
    ("source.namespace", Fact::Namespace, Kind::Text),
    ("source.principal", Fact::Principal, Kind::Principal),
    ("destination.ip", Fact::DestinationIp, Kind::Ip),
    ("destination.port", Fact::DestinationPort, Kind::Port),
    ("connection.sni", Fact::Sni, Kind::Text),
    ("request.auth.principal", Fact::RequestPrincipal, Kind::Text),
    ("request.auth.audiences", Fact::Audiences, Kind::Text),
    ("request.auth.presenter", Fact::Presenter, Kind::Text),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Path,
    Method,
    Host,
    Port,
    Text,
    /// A text pattern over SPIFFE IDs, written as Istio writes them (no `spiffe://`).
    Principal,
    Ip,
}

impl Kind {
    fn parse(self, value: &Value, path: &At<'_>) -> Parsed<Pattern> {
        Ok(match self {
            Kind::Path => Pattern::Path(parse_path_pattern(value, path)?),
            Kind::Method => Pattern::Method(parse_method(value, path)?),
            Kind::Host => Pattern::Host(parse_host_pattern(value, path)?),
            Kind::Port => Pattern::Port(parse_port(value, path)?),
            Kind::Text => Pattern::Text(parse_text_pattern(value, path)?),
            Kind::Principal => {
                let pattern = parse_text_pattern(value, path)?;
                if let TextPattern::Exact(text) | TextPattern::Prefix(text) = &pattern {
                    if text.starts_with("spiffe://") {
                        return Err(error(
                            path,
                            "write principals as Istio does, without \"spiffe://\" (cluster.local/ns/NS/sa/SA)",
                        ));
                    }
                }
                Pattern::Text(pattern)
            }
            Kind::Ip => Pattern::Ip(parse_ip_block(value, path)?),
        })
    }
}

pub(super) fn parse_rule_match(value: &Value, path: &At<'_>) -> Parsed<RuleMatch> {
    let matcher = Object::new(value, path, &with_when(MATCH_FIELDS))?;
    let mut conditions = field_conditions(&matcher, MATCH_FIELDS.iter())?;
    if let Some(when) = matcher.optional("when", |value, path| items(value, path, parse_when))? {
        conditions.extend(when);
    }
    // Cheap facts first: the request's own, then the connection's, then the token's.
    conditions.sort_by_key(|condition| stage(&condition.fact));
    Ok(RuleMatch { conditions })
}

/// An outbound entry's `match`: the operation part of the vocabulary only; an outbound
/// request has no token or peer facts worth matching.
const OPERATION_FIELDS: &[&str] = &[
    "paths",
    "notPaths",
    "methods",
    "notMethods",
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
];

pub(super) fn parse_operation_match(value: &Value, path: &At<'_>) -> Parsed<RuleMatch> {
    let matcher = Object::new(value, path, OPERATION_FIELDS)?;
    let fields = MATCH_FIELDS
        .iter()
        .filter(|(name, ..)| OPERATION_FIELDS.contains(name));
    let conditions = field_conditions(&matcher, fields)?;
    Ok(RuleMatch { conditions })
}

/// The conditions of `fields` that `matcher` gives: a `not…` field's patterns must all miss.
fn field_conditions<'f>(
    matcher: &Object<'_, '_>,
    fields: impl Iterator<Item = &'f (&'static str, Fact, bool, Kind)>,
) -> Parsed<Vec<Condition>> {
    let mut conditions = Vec::new();
    for (name, fact, negated, kind) in fields {
        if let Some(patterns) = match_list(matcher, name, |value, path| kind.parse(value, path))? {
            let (any_of, none_of) = if *negated {
                (None, Some(patterns))
            } else {
                (Some(patterns), None)
            };
            conditions.push(Condition {
                field: std::borrow::Cow::Borrowed(name),
                fact: fact.clone(),
                any_of,
                none_of,
            });
        }
    }
    Ok(conditions)
}

fn with_when(fields: &[(&'static str, Fact, bool, Kind)]) -> Vec<&'static str> {
    let names = fields.iter().map(|(name, ..)| *name);
    names.chain(["when"]).collect()
}

fn stage(fact: &Fact) -> u8 {
    if fact.needs_token() {
        2
    } else if fact.needs_peer() {
        1
    } else {
        0
    }
}

/// One `when` entry, as Istio writes it: `{key, values, notValues}`.
fn parse_when(value: &Value, path: &At<'_>) -> Parsed<Condition> {
    let entry = Object::new(value, path, &["key", "values", "notValues"])?;
    let key = entry.required("key", non_empty_string)?;
    let (fact, kind) = when_key(&key).ok_or_else(|| {
        let known: Vec<&str> = WHEN_KEYS.iter().map(|(name, ..)| *name).collect();
        error(
            entry.path_of("key"),
            format!(
                "unknown key \"{key}\"; known: request.headers[NAME], request.auth.claims[NAME]…, {}",
                known.join(", ")
            ),
        )
    })?;
    let parse = |value: &Value, path: &At<'_>| kind.parse(value, path);
    let any_of = match_list(&entry, "values", parse)?;
    let none_of = match_list(&entry, "notValues", parse)?;
    if any_of.is_none() && none_of.is_none() {
        return Err(error(path, "needs values, notValues or both"));
    }
    Ok(Condition {
        field: format!("when {key}").into(),
        fact,
        any_of,
        none_of,
    })
}

fn when_key(key: &str) -> Option<(Fact, Kind)> {
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return is_token(name).then(|| (Fact::Header(name.to_ascii_lowercase()), Kind::Text));
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims") {
        return claim_brackets(rest).map(|path| (Fact::Claim(path), Kind::Text));
    }
    WHEN_KEYS
        .iter()
        .find(|(name, ..)| *name == key)
        .map(|(_, fact, kind)| (fact.clone(), *kind))
}

/// `[a][b]` → the claim path `a.b` (Istio's form for nested claims).
fn claim_brackets(mut rest: &str) -> Option<ClaimPath> {
    let mut names = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let (name, after) = inner.split_once(']')?;
        if name.is_empty() || name.contains('[') {
            return None;
        }
        names.push(name.to_owned());
        rest = after;
    }
    (!names.is_empty()).then_some(ClaimPath(names))
}

/// An empty list would match no request at all, which is never what a rule means.
pub(super) fn match_list<T>(
    matcher: &Object<'_, '_>,
    key: &str,
    item: impl FnMut(&Value, &At<'_>) -> Parsed<T>,
) -> Parsed<Option<Vec<T>>> {
    matcher.optional(key, |value, path| {
        let list = items(value, path, item)?;
        if list.is_empty() {
            return Err(error(
                path,
                "is empty and would match nothing; leave it out to match everything",
            ));
        }
        Ok(list)
    })
}

/// Istio writes ports as strings (`"8080"`); a JSON number is taken too.
fn parse_port(value: &Value, path: &At<'_>) -> Parsed<u16> {
    let port = match value {
        Value::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse::<u64>().ok()
        }
        Value::Number(number) => number.as_u64(),
        _ => None,
    };
    port.and_then(|port| u16::try_from(port).ok())
        .filter(|port| *port != 0)
        .ok_or_else(|| error(path, "not a port: 1 to 65535"))
}

pub(super) fn parse_text_pattern(value: &Value, path: &At<'_>) -> Parsed<TextPattern> {
    let text = non_empty_string(value, path)?;
    if text == "*" {
        return Ok(TextPattern::Any);
    }
    let pattern = if let Some(suffix) = text.strip_prefix('*') {
        TextPattern::Suffix(suffix.to_owned())
    } else if let Some(prefix) = text.strip_suffix('*') {
        TextPattern::Prefix(prefix.to_owned())
    } else {
        TextPattern::Exact(text.clone())
    };
    match &pattern {
        TextPattern::Exact(rest) | TextPattern::Prefix(rest) | TextPattern::Suffix(rest)
            if rest.contains('*') =>
        {
            Err(error(
                path,
                "'*' is only allowed alone, at the start (suffix) or at the end (prefix)",
            ))
        }
        _ => Ok(pattern),
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address. Bits after the prefix must be zero: a
/// block written `10.1.2.3/8` is more likely a typo than a wish for all of `10.0.0.0/8`.
pub(super) fn parse_ip_block(value: &Value, path: &At<'_>) -> Parsed<IpBlock> {
    let text = non_empty_string(value, path)?;
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text.as_str(), None),
    };
    let network: std::net::IpAddr = address
        .parse()
        .map_err(|_| error(path, "not an IP address or CIDR block"))?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(prefix) => prefix
            .parse::<u8>()
            .ok()
            .filter(|len| *len <= max && prefix.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| error(path, format!("the prefix length must be 0 to {max}")))?,
    };
    let block = IpBlock {
        network,
        prefix_len,
    };
    if block.masked() != network {
        return Err(error(
            path,
            format!(
                "has bits set after the prefix length; the block is {}/{prefix_len}",
                block.masked()
            ),
        ));
    }
    Ok(block)
}

pub(super) fn parse_path_pattern(value: &Value, path: &At<'_>) -> Parsed<PathPattern> {
    let pattern = non_empty_string(value, path)?;
    if !pattern.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(error(
            path,
            "contains a character a request path cannot have (space, control or non-ASCII)",
        ));
    }
    if pattern.contains(['?', '#']) {
        return Err(error(
            path,
            "must not contain '?' or '#': paths are matched without the query string",
        ));
    }
    if pattern == "*" {
        return Ok(PathPattern::Any);
    }
    let misplaced_star = || {
        error(
            path,
            "'*' is only allowed alone, at the start (suffix) or at the end (prefix)",
        )
    };
    if let Some(suffix) = pattern.strip_prefix('*') {
        if suffix.contains('*') {
            return Err(misplaced_star());
        }
        return Ok(PathPattern::Suffix(suffix.to_owned()));
    }
    let (pattern, is_prefix) = match pattern.strip_suffix('*') {
        Some(prefix) => (prefix, true),
        None => (pattern.as_str(), false),
    };
    if pattern.contains('*') {
        return Err(misplaced_star());
    }
    if !pattern.starts_with('/') {
        return Err(error(path, "must start with '/' (or '*' for a suffix)"));
    }
    // Requests are matched after normalisation, so these would silently never match.
    if pattern.contains("//")
        || pattern
            .split('/')
            .any(|segment| segment == "." || segment == "..")
    {
        return Err(error(
            path,
            "never matches: request paths are normalised (no '//', '.' or '..' segments)",
        ));
    }
    Ok(if is_prefix {
        PathPattern::Prefix(pattern.to_owned())
    } else {
        PathPattern::Exact(pattern.to_owned())
    })
}

pub(super) fn parse_method(value: &Value, path: &At<'_>) -> Parsed<String> {
    let method = non_empty_string(value, path)?;
    if !is_token(&method) {
        return Err(error(path, "not an HTTP method"));
    }
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(error(path, "methods must be upper-case"));
    }
    Ok(method)
}

pub(super) fn parse_host_pattern(value: &Value, path: &At<'_>) -> Parsed<HostPattern> {
    let host = non_empty_string(value, path)?.to_ascii_lowercase();
    if host == "*" {
        return Ok(HostPattern::Any);
    }
    if host.starts_with('[') && host.ends_with(']') {
        return Ok(HostPattern::Exact(host));
    }
    if host.contains(':') {
        return Err(error(
            path,
            "must not include a port: hosts are matched without it",
        ));
    }
    let (name, wildcard) = match host.strip_prefix("*.") {
        Some(name) => (name, true),
        None => (host.as_str(), false),
    };
    if !is_host_name(name) {
        return Err(error(
            path,
            "not a host name, \"*\" or \"*.\" followed by a domain",
        ));
    }
    Ok(if wildcard {
        HostPattern::WildcardSuffix(format!(".{name}"))
    } else {
        HostPattern::Exact(host)
    })
}
