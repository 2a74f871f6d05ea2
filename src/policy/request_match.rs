//! Which rule applies: each rule's `match` conditions against the request, its connection and,
//! only for rules that name token facts, the verified token.

use super::{host_matches, path_matches, RuleIndex};
use crate::config::{
    Action, Condition, Config, Fact, IpBlock, Pattern, Rule, TextPattern, Unmatched,
};
use crate::peer::{self, Peer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::net::IpAddr;
use std::rc::Rc;

/// What rule selection looks at.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    pub method: &'a str,
    /// Already normalised by [`crate::path::normalize`].
    pub path: &'a str,
    /// The raw `:authority`, port included.
    pub host: &'a str,
    /// Lower-case names, pseudo-headers excluded; repeated headers are separate entries.
    pub headers: &'a [(&'a str, &'a str)],
    /// Read only for conditions on the connection.
    pub peer: &'a dyn Peer,
}

/// The verified token's claims, `None` when the request carries no token.
pub type TokenClaims = Option<Rc<Map<String, Value>>>;

/// What decides a request: its first matching rule, or the configured fallback.
#[derive(Debug, Clone, Copy)]
pub enum Applies<'c> {
    Rule(&'c Rule),
    Unmatched(Unmatched),
}

#[derive(Debug, Clone, Copy)]
pub struct Selection<'c> {
    pub applies: Applies<'c>,
    /// The request had no token and a rule that would have let it in missed only for want
    /// of one: a refusal should ask for a token (401), not forbid (403).
    pub token_would_help: bool,
}

/// Why a rule's `match` does not hold: the first condition that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// Index into the rule's `match` conditions.
    pub condition: usize,
    pub why: MissReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissReason {
    /// The value is there and does not meet the patterns.
    Unmet,
    /// The request has no such value (no mTLS, no token, no header …), named here.
    Absent(&'static str),
    /// The value cannot be known, named here; only a `deny` rule treats it as matching.
    Unknown(&'static str),
}

/// The first rule whose `match` holds; else `unmatched`. `rule_index` is the one compiled
/// from `config.rules` ([`crate::compile::Compiled`] holds both). `token` is asked for only
/// when a rule names token facts, at most once per request by the caller's own memo; its
/// error (a token that does not verify) stops selection.
pub fn select<'c, E>(
    config: &'c Config,
    rule_index: &RuleIndex,
    request: &RequestFacts<'_>,
    token: &mut dyn FnMut() -> Result<TokenClaims, E>,
) -> Result<Selection<'c>, E> {
    select_seen(config, rule_index, request, token, None)
}

/// A rule selection tried, for `explain`: the rule's index and, if it missed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleTried {
    pub rule: usize,
    pub missed: Option<MissSeen>,
}

/// Why a tried rule missed, with what its failing condition read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissSeen {
    pub miss: Miss,
    /// The value a condition whose value is there (`MissReason::Unmet`) read.
    pub observed: Option<Observed<'static>>,
    /// That value met the condition's values (so its notValues refused it).
    pub listed: bool,
}

/// [`select`], telling `tried` each rule it tries when given (rules the index rules out by
/// path are not tried).
pub fn select_seen<'c, E>(
    config: &'c Config,
    rule_index: &RuleIndex,
    request: &RequestFacts<'_>,
    token: &mut dyn FnMut() -> Result<TokenClaims, E>,
    mut tried: Option<&mut dyn FnMut(RuleTried)>,
) -> Result<Selection<'c>, E> {
    let mut token_would_help = false;
    for at in rule_index.candidates(config.rules.len(), request.path) {
        let Some(rule) = config.rules.get(at) else {
            continue;
        };
        let checked = check_rule(rule, request, token)?;
        if let Some(tried) = tried.as_deref_mut() {
            let missed = checked.as_ref().err().map(|miss| {
                let condition = (miss.why == MissReason::Unmet)
                    .then(|| rule.matcher.conditions.get(miss.condition))
                    .flatten();
                let observed = condition.map(|condition| {
                    // The token was read for this rule already: the caller remembers it.
                    let claims = condition
                        .fact
                        .needs_token()
                        .then(|| token().ok().flatten())
                        .flatten();
                    owned(observe(&condition.fact, request, claims.as_ref()))
                });
                let listed = condition
                    .zip(observed.as_ref())
                    .is_some_and(|(c, observed)| {
                        c.any_of
                            .as_ref()
                            .is_none_or(|ps| ps.iter().any(|p| pattern_matches(p, observed)))
                    });
                MissSeen {
                    miss: miss.clone(),
                    observed,
                    listed,
                }
            });
            tried(RuleTried { rule: at, missed });
        }
        match checked {
            Ok(()) => {
                return Ok(Selection {
                    applies: Applies::Rule(rule),
                    token_would_help: false,
                })
            }
            Err(miss) => {
                let condition = rule.matcher.conditions.get(miss.condition);
                token_would_help |= !matches!(rule.action, Action::Deny)
                    && miss.why == MissReason::Absent(NO_TOKEN)
                    && condition.is_some_and(|c| c.any_of.is_some());
            }
        }
    }
    Ok(Selection {
        applies: Applies::Unmatched(config.unmatched),
        token_would_help,
    })
}

const NO_TOKEN: &str = "the request has no token";

/// The claims Istio matches word by word.
const SPACE_DELIMITED: [&str; 2] = ["scope", "permission"];

/// Whether one rule's `match` holds, and if not, why (the outer error is the token's).
pub fn check_rule<E>(
    rule: &Rule,
    request: &RequestFacts<'_>,
    token: &mut dyn FnMut() -> Result<TokenClaims, E>,
) -> Result<Result<(), Miss>, E> {
    let deny_rule = matches!(rule.action, Action::Deny);
    let mut claims: Option<TokenClaims> = None;
    for (index, condition) in rule.matcher.conditions.iter().enumerate() {
        if condition.fact.needs_token() && claims.is_none() {
            claims = Some(token()?);
        }
        let observed = observe(
            &condition.fact,
            request,
            claims.as_ref().and_then(Option::as_ref),
        );
        let why = match condition_holds(condition, &observed) {
            Verdict::Holds => continue,
            Verdict::Unknown(_) if deny_rule => continue,
            Verdict::Unknown(what) => MissReason::Unknown(what),
            Verdict::Fails => match observed {
                Observed::Absent(what) => MissReason::Absent(what),
                _ => MissReason::Unmet,
            },
        };
        return Ok(Err(Miss {
            condition: index,
            why,
        }));
    }
    Ok(Ok(()))
}

fn owned(observed: Observed<'_>) -> Observed<'static> {
    match observed {
        Observed::Absent(what) => Observed::Absent(what),
        Observed::Unknown(what) => Observed::Unknown(what),
        Observed::Text(values) => Observed::Text(
            values
                .into_iter()
                .map(|value| Cow::Owned(value.into_owned()))
                .collect(),
        ),
        Observed::Ip(ip) => Observed::Ip(ip),
        Observed::Port(port) => Observed::Port(port),
    }
}

/// A fact's value(s) for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed<'a> {
    Absent(&'static str),
    Unknown(&'static str),
    Text(Vec<Cow<'a, str>>),
    Ip(IpAddr),
    Port(u16),
}

enum Verdict {
    Holds,
    Fails,
    Unknown(&'static str),
}

fn condition_holds(condition: &Condition, observed: &Observed<'_>) -> Verdict {
    if let Observed::Unknown(what) = observed {
        return Verdict::Unknown(what);
    }
    let any_holds = condition
        .any_of
        .as_ref()
        .is_none_or(|patterns| patterns.iter().any(|p| pattern_matches(p, observed)));
    let none_holds = condition
        .none_of
        .as_ref()
        .is_none_or(|patterns| !patterns.iter().any(|p| pattern_matches(p, observed)));
    if any_holds && none_holds {
        Verdict::Holds
    } else {
        Verdict::Fails
    }
}

/// Whether one pattern matches one of the observed values; nothing matches an absent value.
pub fn pattern_matches(pattern: &Pattern, observed: &Observed<'_>) -> bool {
    match (pattern, observed) {
        (Pattern::Ip(block), Observed::Ip(ip)) => block.contains(*ip),
        (Pattern::Port(port), Observed::Port(actual)) => port == actual,
        (_, Observed::Text(values)) => values.iter().any(|value| match pattern {
            Pattern::Path(p) => path_matches(p, value),
            // HTTP methods are case-sensitive tokens, but servers that accept `delete` as
            // DELETE exist; matching case-insensitively keeps a rule from being sidestepped.
            Pattern::Method(m) => m.eq_ignore_ascii_case(value),
            Pattern::Host(h) => host_matches(h, value),
            Pattern::Text(t) => text_matches(t, value),
            Pattern::Port(_) | Pattern::Ip(_) => false,
        }),
        _ => false,
    }
}

/// Istio's string match; `*` is "present", whatever the value.
pub fn text_matches(pattern: &TextPattern, value: &str) -> bool {
    match pattern {
        TextPattern::Any => true,
        TextPattern::Exact(exact) => value == exact,
        TextPattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
        TextPattern::Suffix(suffix) => value.ends_with(suffix.as_str()),
    }
}

/// Reads a fact; `claims`: the verified token's, `None` without a token.
pub fn observe<'a>(
    fact: &Fact,
    request: &RequestFacts<'a>,
    claims: Option<&'a Rc<Map<String, Value>>>,
) -> Observed<'a> {
    let one = |value: &'a str| Observed::Text(vec![Cow::Borrowed(value)]);
    match fact {
        Fact::Path => one(request.path),
        Fact::Method => one(request.method),
        Fact::Host => one(request.host),
        Fact::Header(name) => {
            let mut values = request
                .headers
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| *v);
            match values.next() {
                None => Observed::Absent("the request has no such header"),
                Some(first) => {
                    let rest: Vec<&str> = values.collect();
                    if rest.is_empty() {
                        one(first)
                    } else {
                        // Envoy's header matchers see repeated headers joined with ",".
                        let joined = std::iter::once(first).chain(rest).collect::<Vec<_>>();
                        Observed::Text(vec![Cow::Owned(joined.join(","))])
                    }
                }
            }
        }
        Fact::Principal | Fact::Namespace => {
            let Some(uri_san) = request.peer.uri_san() else {
                return Observed::Absent("no mTLS: the connection has no peer certificate");
            };
            let Some(principal) = peer::principal(uri_san) else {
                return Observed::Absent("the peer certificate has no SPIFFE ID");
            };
            if *fact == Fact::Principal {
                return one(principal);
            }
            match peer::namespace(principal) {
                Some(namespace) => one(namespace),
                None => Observed::Absent("the peer's SPIFFE ID names no namespace"),
            }
        }
        Fact::DirectIp => {
            // Envoy gives a Wasm filter only its remote address, which it takes from
            // `x-forwarded-for` when the listener trusts that header: with the header there,
            // the directly connected peer cannot be told apart from what a client wrote.
            if request.headers.iter().any(|(n, _)| *n == "x-forwarded-for") {
                return Observed::Unknown(
                    "the direct peer address is not visible to the filter when the request has x-forwarded-for",
                );
            }
            address_ip(request.peer.source_address(), "the source address")
        }
        Fact::RemoteIp => address_ip(request.peer.source_address(), "the source address"),
        Fact::DestinationIp => address_ip(
            request.peer.destination_address(),
            "the destination address",
        ),
        Fact::DestinationPort => match request
            .peer
            .destination_address()
            .and_then(peer::parse_address)
            .and_then(|(_, port)| port)
        {
            Some(port) => Observed::Port(port),
            None => Observed::Unknown("the destination port"),
        },
        Fact::Sni => match request.peer.sni().filter(|sni| !sni.is_empty()) {
            Some(sni) => one(sni),
            None => Observed::Absent("the connection sent no SNI"),
        },
        Fact::RequestPrincipal | Fact::Audiences | Fact::Presenter | Fact::Claim(_) => {
            let Some(claims) = claims else {
                return Observed::Absent(NO_TOKEN);
            };
            token_fact(fact, claims)
        }
    }
}

fn address_ip<'a>(address: Option<&str>, what: &'static str) -> Observed<'a> {
    match address.and_then(peer::parse_address) {
        Some((ip, _)) => Observed::Ip(ip),
        None => Observed::Unknown(what),
    }
}

fn token_fact<'a>(fact: &Fact, claims: &'a Map<String, Value>) -> Observed<'a> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    match fact {
        Fact::RequestPrincipal => match (text("iss"), text("sub")) {
            (Some(iss), Some(sub)) => Observed::Text(vec![Cow::Owned(format!("{iss}/{sub}"))]),
            _ => Observed::Absent("the token has no sub"),
        },
        Fact::Presenter => match text("azp") {
            Some(azp) => Observed::Text(vec![Cow::Borrowed(azp)]),
            None => Observed::Absent("the token has no azp"),
        },
        Fact::Audiences => strings(claims.get("aud"), "the token has no aud"),
        Fact::Claim(path) => {
            let observed = strings(path.lookup(claims), "the token has no such claim");
            match (&observed, path.0.as_slice()) {
                // Istio has Envoy split these on spaces before matching (jwt_authn's
                // `space_delimited_claims`): `scope: "a b"` meets `values: [a]`.
                (Observed::Text(values), [name]) if SPACE_DELIMITED.contains(&name.as_str()) => {
                    Observed::Text(
                        values
                            .iter()
                            .flat_map(|v| v.split(' ').filter(|part| !part.is_empty()))
                            .map(|part| Cow::Owned(part.to_owned()))
                            .collect(),
                    )
                }
                _ => observed,
            }
        }
        _ => Observed::Absent(NO_TOKEN),
    }
}

/// A string claim, or the strings of a list claim (Istio matches a list when one entry does).
fn strings<'a>(claim: Option<&'a Value>, absent: &'static str) -> Observed<'a> {
    match claim {
        None | Some(Value::Null) => Observed::Absent(absent),
        Some(Value::String(s)) => Observed::Text(vec![Cow::Borrowed(s.as_str())]),
        Some(Value::Array(items)) => Observed::Text(
            items
                .iter()
                .filter_map(Value::as_str)
                .map(Cow::Borrowed)
                .collect(),
        ),
        Some(_) => Observed::Text(Vec::new()),
    }
}

/// A rule's conditions, described for humans (`explain`, `check-config`).
pub fn describe_pattern(pattern: &Pattern) -> String {
    match pattern {
        Pattern::Path(p) => super::describe_path(p),
        Pattern::Method(m) => m.clone(),
        Pattern::Host(h) => super::describe_host(h),
        Pattern::Port(port) => port.to_string(),
        Pattern::Text(TextPattern::Any) => "*".to_owned(),
        Pattern::Text(TextPattern::Exact(text)) => text.clone(),
        Pattern::Text(TextPattern::Prefix(text)) => format!("{text}*"),
        Pattern::Text(TextPattern::Suffix(text)) => format!("*{text}"),
        Pattern::Ip(IpBlock {
            network,
            prefix_len,
        }) => format!("{network}/{prefix_len}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::{self, Mode, Unmatched};
    use crate::peer::FixedPeer;
    use serde_json::json;

    /// A configuration with these rules (as the user writes them) and no provider.
    fn rules(rules: Value, unmatched: &str) -> Config {
        let provider =
            json!({"issuer": "https://idp.example.com", "jwksUri": "https://idp.example.com/jwks"});
        let config = json!({"providers": [provider], "rules": rules, "unmatched": unmatched});
        config::parse(&config.to_string()).unwrap()
    }

    struct Req {
        method: &'static str,
        path: &'static str,
        host: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        peer: FixedPeer,
        claims: Option<Value>,
    }

    fn get(path: &'static str) -> Req {
        Req {
            method: "GET",
            path,
            host: "api.example.com",
            headers: Vec::new(),
            peer: FixedPeer {
                source_address: Some("10.1.2.3:40000".into()),
                destination_address: Some("10.9.9.9:8080".into()),
                ..FixedPeer::default()
            },
            claims: None,
        }
    }

    impl Req {
        fn from(mut self, spiffe: &str) -> Self {
            self.peer.uri_san = Some(spiffe.to_string());
            self
        }
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.push((name, value));
            self
        }
        fn source(mut self, address: &str) -> Self {
            self.peer.source_address = Some(address.to_string());
            self
        }
        fn token(mut self, claims: Value) -> Self {
            self.claims = Some(claims);
            self
        }
        fn method(mut self, method: &'static str) -> Self {
            self.method = method;
            self
        }

        /// The selected rule's name (or `unmatched`, with `+401` when a token would help),
        /// and how often the token was asked for.
        fn select(&self, config: &Config) -> (String, usize) {
            let facts = RequestFacts {
                method: self.method,
                path: self.path,
                host: self.host,
                headers: &self.headers,
                peer: &self.peer,
            };
            let mut asked = 0;
            let claims: TokenClaims = self
                .claims
                .as_ref()
                .map(|c| Rc::new(c.as_object().unwrap().clone()));
            let mut token = || {
                asked += 1;
                Ok::<TokenClaims, ()>(claims.clone())
            };
            let selection =
                select(config, &RuleIndex::build(&config.rules), &facts, &mut token).unwrap();
            let name = match selection.applies {
                Applies::Rule(rule) => rule.name.clone(),
                Applies::Unmatched(_) if selection.token_would_help => "unmatched+401".into(),
                Applies::Unmatched(_) => "unmatched".into(),
            };
            (name, asked)
        }

        fn selects(&self, config: &Config) -> String {
            self.select(config).0
        }
    }

    #[test]
    fn negated_operation_fields_match_what_is_not_listed() {
        let config = rules(
            json!([{"name": "writes", "match": {"notMethods": ["GET", "HEAD"], "notPaths": ["/healthz", "/public/*"]}, "deny": true}]),
            "anonymous",
        );
        assert_eq!(get("/orders").method("POST").selects(&config), "writes");
        assert_eq!(get("/orders").method("delete").selects(&config), "writes");
        assert_eq!(get("/orders").selects(&config), "unmatched");
        assert_eq!(
            get("/public/a").method("POST").selects(&config),
            "unmatched"
        );
        assert_eq!(get("/healthz").method("POST").selects(&config), "unmatched");
    }

    #[test]
    fn ports_and_hosts_with_their_negations() {
        let config = rules(
            json!([
                {"name": "admin-port", "match": {"ports": ["9090", 15000]}, "deny": true},
                {"name": "not-api", "match": {"notHosts": ["api.example.com"]}, "deny": true},
                {"name": "rest", "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(get("/").selects(&config), "rest");
        let mut on_admin_port = get("/");
        on_admin_port.peer.destination_address = Some("10.9.9.9:9090".into());
        assert_eq!(on_admin_port.selects(&config), "admin-port");
        let mut other_host = get("/");
        other_host.host = "other.example.com:8080";
        assert_eq!(other_host.selects(&config), "not-api");
    }

    #[test]
    fn principals_need_mtls_and_negations_match_without_it() {
        let config = rules(
            json!([
                {"name": "sleep", "match": {"principals": ["cluster.local/ns/foo/sa/sleep"]}, "allowAnonymous": true},
                {"name": "any-in-bar", "match": {"namespaces": ["bar"]}, "allowAnonymous": true},
                {"name": "plaintext", "match": {"notPrincipals": ["*"]}, "deny": true}
            ]),
            "deny",
        );
        let sleep = "spiffe://cluster.local/ns/foo/sa/sleep";
        assert_eq!(get("/").from(sleep).selects(&config), "sleep");
        assert_eq!(
            get("/")
                .from("spiffe://cluster.local/ns/bar/sa/x")
                .selects(&config),
            "any-in-bar"
        );
        assert_eq!(
            get("/")
                .from("spiffe://cluster.local/ns/foo/sa/other")
                .selects(&config),
            "unmatched"
        );
        // No peer certificate: no principal, no namespace; only the negation matches.
        assert_eq!(get("/").selects(&config), "plaintext");
        // A certificate without a SPIFFE ID names no principal either.
        assert_eq!(
            get("/").from("https://example.com/client").selects(&config),
            "plaintext"
        );
    }

    #[test]
    fn principal_patterns_take_istio_prefix_and_suffix_stars() {
        let config = rules(
            json!([
                {"name": "prefix", "match": {"principals": ["cluster.local/ns/prod/*"]}, "allowAnonymous": true},
                {"name": "suffix", "match": {"principals": ["*/sa/ingress"]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(
            get("/")
                .from("spiffe://cluster.local/ns/prod/sa/a")
                .selects(&config),
            "prefix"
        );
        assert_eq!(
            get("/")
                .from("spiffe://other.td/ns/x/sa/ingress")
                .selects(&config),
            "suffix"
        );
        assert_eq!(
            get("/")
                .from("spiffe://cluster.local/ns/dev/sa/a")
                .selects(&config),
            "unmatched"
        );
    }

    #[test]
    fn ip_blocks_read_the_peer_and_remote_blocks_the_forwarded_client() {
        let config = rules(
            json!([
                {"name": "office", "match": {"remoteIpBlocks": ["203.0.113.0/24"]}, "allowAnonymous": true},
                {"name": "pods", "match": {"ipBlocks": ["10.0.0.0/8", "2001:db8::/32"]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(get("/").selects(&config), "pods");
        assert_eq!(
            get("/").source("[2001:db8::7]:5000").selects(&config),
            "pods"
        );
        assert_eq!(
            get("/").source("[::ffff:10.0.0.1]:5000").selects(&config),
            "pods"
        );
        assert_eq!(
            get("/").source("192.0.2.1:5000").selects(&config),
            "unmatched"
        );
        assert_eq!(
            get("/").source("203.0.113.9:5000").selects(&config),
            "office"
        );
    }

    #[test]
    fn with_x_forwarded_for_the_direct_peer_is_unknown_and_fails_closed() {
        let config = rules(
            json!([
                {"name": "blocked", "match": {"ipBlocks": ["192.0.2.0/24"]}, "deny": true},
                {"name": "pods", "match": {"ipBlocks": ["10.0.0.0/8"]}, "allowAnonymous": true}
            ]),
            "anonymous",
        );
        let forwarded = get("/").header("x-forwarded-for", "10.0.0.1");
        // Envoy may have taken the source address from the header: a deny rule counts the
        // unknown peer as matching, an allow rule does not.
        assert_eq!(forwarded.selects(&config), "blocked");
        let allow_only = rules(
            json!([{"name": "pods", "match": {"ipBlocks": ["10.0.0.0/8"]}, "allowAnonymous": true}]),
            "deny",
        );
        assert_eq!(forwarded.selects(&allow_only), "unmatched");
        assert_eq!(get("/").selects(&allow_only), "pods");
    }

    #[test]
    fn header_conditions_with_values_and_not_values() {
        let config = rules(
            json!([
                {"name": "bot-suffix", "match": {"when": [{"key": "request.headers[User-Agent]", "values": ["*bot"]}]}, "deny": true},
                {"name": "versioned", "match": {"when": [{"key": "request.headers[x-version]", "values": ["v*"], "notValues": ["v0*"]}]}, "allowAnonymous": true},
                {"name": "no-debug", "match": {"when": [{"key": "request.headers[x-debug]", "notValues": ["*"]}]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(
            get("/").header("user-agent", "crawlerbot").selects(&config),
            "bot-suffix"
        );
        assert_eq!(
            get("/").header("x-version", "v2").selects(&config),
            "versioned"
        );
        assert_eq!(
            get("/")
                .header("x-version", "v0.9")
                .header("x-debug", "1")
                .selects(&config),
            "unmatched"
        );
        // An absent header meets notValues: it has no value that is listed.
        assert_eq!(get("/").selects(&config), "no-debug");
        // Repeated headers are matched joined, as Envoy's header matcher sees them.
        assert_eq!(
            get("/")
                .header("x-version", "v1")
                .header("x-version", "v0")
                .header("x-debug", "1")
                .selects(&config),
            "versioned"
        );
    }

    #[test]
    fn token_facts_are_read_only_by_rules_that_name_them() {
        let config = rules(
            json!([
                {"name": "health", "match": {"paths": ["/healthz"]}, "allowAnonymous": true},
                {"name": "alice", "match": {"requestPrincipals": ["https://idp.example.com/alice"]}, "allowAnonymous": true},
                {"name": "admins", "match": {"when": [{"key": "request.auth.claims[realm][roles]", "values": ["admin"]}]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(get("/healthz").select(&config), ("health".into(), 0));
        let alice = json!({"iss": "https://idp.example.com", "sub": "alice"});
        assert_eq!(get("/x").token(alice).select(&config), ("alice".into(), 1));
        let admin = json!({"iss": "https://idp.example.com", "sub": "bob", "realm": {"roles": ["user", "admin"]}});
        // Asked once per rule that needs it; the caller remembers the verification.
        assert_eq!(get("/x").token(admin).select(&config), ("admins".into(), 2));
        let user =
            json!({"iss": "https://idp.example.com", "sub": "bob", "realm": {"roles": "user"}});
        assert_eq!(get("/x").token(user).selects(&config), "unmatched");
    }

    #[test]
    fn a_missing_token_that_a_rule_needed_asks_for_one() {
        let config = rules(
            json!([
                {"name": "blocked", "match": {"requestPrincipals": ["*/mallory"]}, "deny": true},
                {"name": "users", "match": {"paths": ["/api/*"], "requestPrincipals": ["*"]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(get("/api/x").selects(&config), "unmatched+401");
        // Not where no rule could have matched, token or not.
        assert_eq!(get("/other").selects(&config), "unmatched");
        let mallory = json!({"iss": "https://idp.example.com", "sub": "mallory"});
        assert_eq!(get("/api/x").token(mallory).selects(&config), "blocked");
        // A DENY on notRequestPrincipals (Istio's "require a token") matches without one.
        let require = rules(
            json!([{"name": "need-token", "match": {"notRequestPrincipals": ["*"]}, "deny": true}]),
            "anonymous",
        );
        assert_eq!(get("/").selects(&require), "need-token");
        let anyone = json!({"iss": "https://idp.example.com", "sub": "x"});
        assert_eq!(get("/").token(anyone).selects(&require), "unmatched");
    }

    #[test]
    fn audiences_presenter_and_list_claims() {
        let config = rules(
            json!([
                {"name": "aud", "match": {"when": [{"key": "request.auth.audiences", "values": ["orders"]}]}, "allowAnonymous": true},
                {"name": "azp", "match": {"when": [{"key": "request.auth.presenter", "values": ["web-*"]}]}, "allowAnonymous": true},
                {"name": "groups", "match": {"when": [{"key": "request.auth.claims[groups]", "values": ["dev"]}]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        assert_eq!(
            get("/")
                .token(json!({"aud": ["x", "orders"]}))
                .selects(&config),
            "aud"
        );
        assert_eq!(
            get("/").token(json!({"aud": "orders"})).selects(&config),
            "aud"
        );
        assert_eq!(
            get("/")
                .token(json!({"aud": "x", "azp": "web-app"}))
                .selects(&config),
            "azp"
        );
        assert_eq!(
            get("/")
                .token(json!({"groups": ["ops", "dev"]}))
                .selects(&config),
            "groups"
        );
        assert_eq!(
            get("/").token(json!({"groups": "dev"})).selects(&config),
            "groups"
        );
        assert_eq!(
            get("/")
                .token(json!({"groups": [1, true]}))
                .selects(&config),
            "unmatched"
        );
    }

    #[test]
    fn sni_and_destination_ip() {
        let config = rules(
            json!([
                {"name": "sni", "match": {"when": [{"key": "connection.sni", "values": ["*.internal"]}]}, "allowAnonymous": true},
                {"name": "dest", "match": {"when": [{"key": "destination.ip", "values": ["10.9.0.0/16"]}, {"key": "destination.port", "values": ["8080"]}]}, "allowAnonymous": true}
            ]),
            "deny",
        );
        let mut with_sni = get("/");
        with_sni.peer.sni = Some("orders.internal".into());
        with_sni.peer.destination_address = Some("192.0.2.1:80".into());
        assert_eq!(with_sni.selects(&config), "sni");
        assert_eq!(get("/").selects(&config), "dest");
        let mut elsewhere = get("/");
        elsewhere.peer.destination_address = Some("10.9.9.9:8081".into());
        assert_eq!(elsewhere.selects(&config), "unmatched");
    }

    /// A peer that counts what it is asked: each read is a host call in the filter.
    #[derive(Default)]
    struct CountingPeer(std::cell::Cell<usize>);

    impl Peer for CountingPeer {
        fn uri_san(&self) -> Option<&str> {
            self.0.set(self.0.get() + 1);
            None
        }
        fn source_address(&self) -> Option<&str> {
            self.0.set(self.0.get() + 1);
            None
        }
        fn destination_address(&self) -> Option<&str> {
            self.0.set(self.0.get() + 1);
            None
        }
        fn sni(&self) -> Option<&str> {
            self.0.set(self.0.get() + 1);
            None
        }
        fn certificate_digest(&self) -> Option<&str> {
            self.0.set(self.0.get() + 1);
            None
        }
    }

    #[test]
    fn the_connection_is_read_only_for_rules_that_ask_about_it() {
        let peer = CountingPeer::default();
        let select_with = |config: &Config, path: &str| {
            let facts = RequestFacts {
                method: "GET",
                path,
                host: "h",
                headers: &[],
                peer: &peer,
            };
            let no_token = &mut || Ok::<TokenClaims, ()>(None);
            matches!(
                select(config, &RuleIndex::build(&config.rules), &facts, no_token)
                    .unwrap()
                    .applies,
                Applies::Rule(_)
            )
        };
        let request_only = rules(
            json!([{"match": {"paths": ["/a"], "notMethods": ["POST"]}, "allowAnonymous": true}]),
            "deny",
        );
        assert!(select_with(&request_only, "/a"));
        assert!(!select_with(&request_only, "/b"));
        assert_eq!(peer.0.get(), 0);
        // The request's own conditions come first: a rule that misses on the path reads nothing.
        let with_peer = rules(
            json!([{"match": {"principals": ["*"], "paths": ["/a"]}, "allowAnonymous": true}]),
            "deny",
        );
        assert!(!select_with(&with_peer, "/b"));
        assert_eq!(peer.0.get(), 0);
        assert!(!select_with(&with_peer, "/a"));
        assert_eq!(peer.0.get(), 1);
    }

    #[test]
    fn report_mode_rules_are_still_selected_by_the_new_fields() {
        let config = rules(
            json!([{"name": "r", "mode": "report", "match": {"notPrincipals": ["*"]}, "deny": true}]),
            "anonymous",
        );
        assert_eq!(config.rules[0].mode, Some(Mode::Report));
        assert_eq!(config.unmatched, Unmatched::Anonymous);
        assert_eq!(get("/").selects(&config), "r");
    }
}
