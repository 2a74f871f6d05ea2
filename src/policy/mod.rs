//! Authorization: which rule applies to a request, and whether a verified token's claims meet
//! what the rule requires. Pure functions over the configuration model.

use crate::config::{ClaimCondition, ClaimPath, ClaimTest, HostPattern, PathPattern, Requirement};
use serde_json::{Map, Number, Value};

mod index;
mod request_match;
pub use index::{Candidates, RuleIndex};
pub use request_match::{
    check_rule, describe_pattern, observe, pattern_matches, select, select_seen, text_matches,
    Applies, Miss, MissReason, MissSeen, Observed, RequestFacts, RuleTried, Selection, TokenClaims,
};

/// Istio path semantics ([`PathPattern::matches`]).
pub fn path_matches(pattern: &PathPattern, path: &str) -> bool {
    pattern.matches(path)
}

/// Matches an `:authority` against a (lower-case) host pattern: the port is ignored, case is
/// not significant, and one trailing dot (`example.com.`, the same DNS name) is ignored.
/// An IPv6 literal keeps its brackets: `[::1]:8443` is the host `[::1]`.
/// `*.example.com` matches any name under `example.com`, at any depth, but not `example.com`.
pub fn host_matches(pattern: &HostPattern, authority: &str) -> bool {
    let host = strip_port(authority);
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    pattern.matches_host(&host)
}

/// A path pattern as written in the configuration.
pub fn describe_path(pattern: &PathPattern) -> String {
    match pattern {
        PathPattern::Any => "*".to_string(),
        PathPattern::Exact(path) => path.clone(),
        PathPattern::Prefix(prefix) => format!("{prefix}*"),
        PathPattern::Suffix(suffix) => format!("*{suffix}"),
    }
}

/// A host pattern as written in the configuration.
pub fn describe_host(pattern: &HostPattern) -> String {
    match pattern {
        HostPattern::Any => "*".to_string(),
        HostPattern::Exact(host) => host.clone(),
        HostPattern::WildcardSuffix(suffix) => format!("*{suffix}"),
    }
}

fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(close) => authority.get(..=close).unwrap_or(authority),
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, _port)) => host,
        None => authority,
    }
}

/// The scopes the token grants: from every claim path in `scope_claims`, each a space-separated
/// string or a list of strings (non-strings in a list are ignored, any other value contributes
/// nothing). Merged in order of first appearance, without duplicates.
pub fn granted_scopes(claims: &Map<String, Value>, scope_claims: &[ClaimPath]) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    let mut add = |scope: &str| {
        if !scope.is_empty() && !scopes.iter().any(|known| known == scope) {
            scopes.push(scope.to_string());
        }
    };
    for path in scope_claims {
        match path.lookup(claims) {
            Some(Value::String(text)) => text.split(' ').for_each(&mut add),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).for_each(&mut add),
            _ => {}
        }
    }
    scopes
}

/// Why a verified token does not meet a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmet {
    /// The token's provider is not among the requirement's providers.
    WrongProvider,
    /// Required scopes the token lacks, in the order the rule lists them.
    MissingScopes(Vec<String>),
    /// The first claim condition that failed, named by its claim path.
    ClaimFailed(String),
    /// The token's `aud` names none of the requirement's `audiences`.
    Audience,
    /// The token's tenant (`tid`) is none of the requirement's `tenants`.
    Tenant,
    /// The client or the actor chain is not one the requirement accepts (named here).
    Delegation(&'static str),
    /// RFC 9470: the user must authenticate again, with one of `acr_values` and/or within
    /// `max_age` seconds (the requirement's own values, for the challenge).
    StepUp {
        acr_values: Option<Vec<String>>,
        max_age: Option<u64>,
    },
}

/// `aud`, a string or a list of strings, names one of `accepted`.
fn audience_named(claims: &Map<String, Value>, accepted: &[String]) -> bool {
    let named = |aud: &str| accepted.iter().any(|a| a == aud);
    match claims.get("aud") {
        Some(Value::String(aud)) => named(aud),
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).any(named),
        _ => false,
    }
}

/// RFC 8693 §4.1: the outermost `act` is the current actor, nested ones are prior actors;
/// RFC 9068 §2.2: `client_id` names the client (`azp` where an IdP uses that).
fn delegation_refusal(req: &Requirement, claims: &Map<String, Value>) -> Option<&'static str> {
    fn text(value: Option<&Value>) -> Option<&str> {
        value.and_then(Value::as_str)
    }
    if let Some(clients) = &req.clients {
        let client = text(claims.get("client_id")).or(text(claims.get("azp")));
        if !client.is_some_and(|c| clients.iter().any(|known| known == c)) {
            return Some("the token's client is not accepted here");
        }
    }
    let act = claims.get("act");
    if req.delegation_forbidden && act.is_some() {
        return Some("delegated tokens (act) are not accepted here");
    }
    if let Some(actors) = &req.actors {
        let actor = text(act.and_then(|a| a.get("sub")));
        if !actor.is_some_and(|a| actors.iter().any(|known| known == a)) {
            return Some("the token's actor is not accepted here");
        }
    }
    if let Some(max_depth) = req.max_delegation_depth {
        if delegation_depth(act) > max_depth {
            return Some("the token's delegation chain is too deep");
        }
    }
    None
}

/// How many `act` levels a token carries (0: none); an `act` that is not an object ends it.
pub fn delegation_depth(act: Option<&Value>) -> u64 {
    let mut depth = 0;
    let mut current = act;
    while let Some(Value::Object(level)) = current {
        depth += 1;
        current = level.get("act");
    }
    depth
}

/// `acrValues`: the token's `acr` is one of them; `maxAuthAgeSeconds`: its `auth_time` is no
/// older. A token without the claim does not meet the requirement. (acr met, age met).
fn step_up_met(req: &Requirement, claims: &Map<String, Value>, now_s: u64) -> (bool, bool) {
    let acr_met = req.acr_values.as_ref().is_none_or(|accepted| {
        claims
            .get("acr")
            .and_then(Value::as_str)
            .is_some_and(|acr| accepted.iter().any(|a| a == acr))
    });
    let age_met = req
        .max_auth_age_seconds
        .is_none_or(|max_age| auth_age(claims, now_s).is_some_and(|age| age <= max_age as f64));
    (acr_met, age_met)
}

/// Seconds since `auth_time`; `None` without a usable one.
fn auth_age(claims: &Map<String, Value>, now_s: u64) -> Option<f64> {
    claims
        .get("auth_time")
        .and_then(Value::as_f64)
        .filter(|t| t.is_finite())
        .map(|auth_time| now_s as f64 - auth_time)
}

/// One part of a requirement as [`check_requirement_seen`] checked it, in its order.
#[derive(Debug, Clone, PartialEq)]
pub enum RequirementSeen {
    Providers {
        held: bool,
    },
    Audiences {
        aud: Option<Value>,
        held: bool,
    },
    Tenants {
        tid: Option<String>,
        held: bool,
    },
    /// The client and actor checks; `refusal` says which failed.
    Delegation {
        refusal: Option<&'static str>,
    },
    Acr {
        acr: Option<String>,
        held: bool,
    },
    /// Seconds since `auth_time`, `None` without one.
    AuthAge {
        age: Option<f64>,
        held: bool,
    },
    Scopes {
        granted: Vec<String>,
        missing: Vec<String>,
    },
    /// `claims[index]` of the requirement, with the value the token has.
    Claim {
        index: usize,
        value: Option<Value>,
        held: bool,
    },
}

/// Checks one requirement against a token verified by `config.providers[provider]`.
/// Order: provider, then scopes (all missing ones are reported), then claims (the first failing).
pub fn check_requirement(
    req: &Requirement,
    provider: usize,
    claims: &Map<String, Value>,
    scope_claims: &[ClaimPath],
    now_s: u64,
) -> Result<(), Unmet> {
    check_requirement_seen(req, provider, claims, scope_claims, now_s, None)
}

/// [`check_requirement`], noting each part it checks in `seen` when given.
pub fn check_requirement_seen(
    req: &Requirement,
    provider: usize,
    claims: &Map<String, Value>,
    scope_claims: &[ClaimPath],
    now_s: u64,
    mut seen: Option<&mut Vec<RequirementSeen>>,
) -> Result<(), Unmet> {
    let mut note = |part: &dyn Fn() -> RequirementSeen| {
        if let Some(seen) = seen.as_deref_mut() {
            seen.push(part());
        }
    };
    if let Some(providers) = &req.providers {
        let held = providers.contains(&provider);
        note(&|| RequirementSeen::Providers { held });
        if !held {
            return Err(Unmet::WrongProvider);
        }
    }
    // One issuer, several services: a token for one cannot cross to another.
    if let Some(accepted) = &req.audiences {
        let held = audience_named(claims, accepted);
        note(&|| RequirementSeen::Audiences {
            aud: claims.get("aud").cloned(),
            held,
        });
        if !held {
            return Err(Unmet::Audience);
        }
    }
    // A multi-tenant provider's tenant is `tid`, checked against its issuer already.
    if let Some(tenants) = &req.tenants {
        let tid = claims.get("tid").and_then(Value::as_str);
        let held = tid.is_some_and(|tid| tenants.iter().any(|t| t == tid));
        note(&|| RequirementSeen::Tenants {
            tid: tid.map(str::to_string),
            held,
        });
        if !held {
            return Err(Unmet::Tenant);
        }
    }
    let refusal = delegation_refusal(req, claims);
    if req.clients.is_some()
        || req.actors.is_some()
        || req.delegation_forbidden
        || req.max_delegation_depth.is_some()
    {
        note(&|| RequirementSeen::Delegation { refusal });
    }
    if let Some(refusal) = refusal {
        return Err(Unmet::Delegation(refusal));
    }
    // Who authenticated, and how, before what they may do: a new login may also bring scopes.
    let (acr_met, age_met) = step_up_met(req, claims, now_s);
    if req.acr_values.is_some() {
        note(&|| RequirementSeen::Acr {
            acr: claims
                .get("acr")
                .and_then(Value::as_str)
                .map(str::to_string),
            held: acr_met,
        });
    }
    if req.max_auth_age_seconds.is_some() {
        note(&|| RequirementSeen::AuthAge {
            age: auth_age(claims, now_s),
            held: age_met,
        });
    }
    if !(acr_met && age_met) {
        return Err(Unmet::StepUp {
            acr_values: req.acr_values.clone(),
            max_age: req.max_auth_age_seconds,
        });
    }
    if !req.scopes.is_empty() {
        let granted = granted_scopes(claims, scope_claims);
        let mut missing: Vec<String> = Vec::new();
        for scope in &req.scopes {
            if !granted.contains(scope) && !missing.contains(scope) {
                missing.push(scope.clone());
            }
        }
        note(&|| RequirementSeen::Scopes {
            granted: granted.clone(),
            missing: missing.clone(),
        });
        if !missing.is_empty() {
            return Err(Unmet::MissingScopes(missing));
        }
    }
    for (index, condition) in req.claims.iter().enumerate() {
        let held = condition_holds(condition, claims);
        note(&|| RequirementSeen::Claim {
            index,
            value: condition.claim.lookup(claims).cloned(),
            held,
        });
        if !held {
            return Err(Unmet::ClaimFailed(condition.claim.display()));
        }
    }
    Ok(())
}

/// `requiresAny`: Ok when any requirement holds. Otherwise the most useful refusal:
/// missing scopes (fewest missing, then the earliest requirement) because the client can act
/// on them (RFC 6750 `scope=`), then the first failed claim, then the wrong provider.
/// Missing scopes are only ever reported for a requirement whose provider matched, because
/// the provider is checked first. An empty list holds for no token (fail closed).
pub fn check_any(
    reqs: &[Requirement],
    provider: usize,
    claims: &Map<String, Value>,
    scope_claims: &[ClaimPath],
    now_s: u64,
) -> Result<(), Unmet> {
    check_any_seen(reqs, provider, claims, scope_claims, now_s, None)
}

/// [`check_any`], noting the parts of each alternative it checks in `seen` when given.
pub fn check_any_seen(
    reqs: &[Requirement],
    provider: usize,
    claims: &Map<String, Value>,
    scope_claims: &[ClaimPath],
    now_s: u64,
    mut seen: Option<&mut Vec<Vec<RequirementSeen>>>,
) -> Result<(), Unmet> {
    let mut best = Unmet::WrongProvider;
    for req in reqs {
        let parts = seen.as_deref_mut().map(|seen| {
            seen.push(Vec::new());
            seen.last_mut()
        });
        let parts = parts.flatten();
        let checked = check_requirement_seen(req, provider, claims, scope_claims, now_s, parts);
        let unmet = match checked {
            Ok(()) => return Ok(()),
            Err(unmet) => unmet,
        };
        if more_useful(&unmet, &best) {
            best = unmet;
        }
    }
    Err(best)
}

/// What the client can act on comes first: scopes it can ask for, then a new login.
fn more_useful(candidate: &Unmet, current: &Unmet) -> bool {
    match (candidate, current) {
        (Unmet::MissingScopes(new), Unmet::MissingScopes(old)) => new.len() < old.len(),
        (Unmet::MissingScopes(_), _) => true,
        (
            Unmet::StepUp { .. },
            Unmet::ClaimFailed(_) | Unmet::Delegation(_) | Unmet::WrongProvider,
        ) => true,
        (Unmet::Delegation(_), Unmet::WrongProvider | Unmet::Audience | Unmet::Tenant) => true,
        (Unmet::ClaimFailed(_), Unmet::Audience | Unmet::Tenant) => true,
        (Unmet::StepUp { .. }, Unmet::Audience | Unmet::Tenant) => true,
        (Unmet::Audience, Unmet::Tenant) => true,
        (Unmet::ClaimFailed(_), Unmet::WrongProvider) => true,
        _ => false,
    }
}

/// `present`: the claim exists and is not null (an empty string or list is present).
/// `anyOf`/`allOf` with an empty value list never hold (fail closed).
fn condition_holds(condition: &ClaimCondition, claims: &Map<String, Value>) -> bool {
    let Some(claim) = condition.claim.lookup(claims) else {
        return false;
    };
    match &condition.test {
        ClaimTest::Present => !claim.is_null(),
        ClaimTest::AnyOf(values) => match claim {
            Value::Array(items) => items
                .iter()
                .any(|item| values.iter().any(|value| json_equal(item, value))),
            _ => values.iter().any(|value| json_equal(claim, value)),
        },
        ClaimTest::AllOf(values) => {
            !values.is_empty()
                && match claim {
                    Value::Array(items) => values
                        .iter()
                        .all(|value| items.iter().any(|item| json_equal(item, value))),
                    _ => values.iter().all(|value| json_equal(claim, value)),
                }
        }
    }
}

/// Equality by JSON type (`"1"` is not `1`, `"true"` is not `true`), except that numbers compare
/// by value: a token may carry `1.0` where the rule says `1`.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        _ => a == b,
    }
}

fn numbers_equal(a: &Number, b: &Number) -> bool {
    if a.is_f64() || b.is_f64() {
        a.as_f64() == b.as_f64()
    } else {
        // Integers compare exactly, also beyond f64's 53-bit precision.
        a.as_i64() == b.as_i64() && a.as_u64() == b.as_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        Action, Condition, Config, Fact, Limits, Mode, Pattern, Rule, RuleMatch, Unmatched,
    };
    use serde_json::json;

    // ---- builders ----

    fn config(rules: Vec<Rule>, unmatched: Unmatched) -> Config {
        Config {
            providers: Vec::new(),
            rules,
            unmatched,
            realm: None,
            bypass_cors_preflight: true,
            mode: Mode::Enforce,
            limits: Limits::default(),
            audit: crate::config::Audit::default(),
            protected_resources: Vec::new(),
            answers: Default::default(),
            deny_with: None,
            logins: Vec::new(),
            outbound: Default::default(),
        }
    }

    fn rule(name: &str, matcher: RuleMatch) -> Rule {
        Rule {
            name: name.to_string(),
            matcher,
            action: Action::Deny,
            mode: None,
            deny_with: None,
            ignore_invalid_token: false,
        }
    }

    fn paths(patterns: &[PathPattern]) -> RuleMatch {
        matching(vec![paths_are(patterns)])
    }

    fn matching(conditions: Vec<Condition>) -> RuleMatch {
        RuleMatch { conditions }
    }

    fn paths_are(patterns: &[PathPattern]) -> Condition {
        Condition::any_of(
            "paths",
            Fact::Path,
            patterns.iter().cloned().map(Pattern::Path),
        )
    }

    fn methods_are(methods: &[&str]) -> Condition {
        let methods = methods.iter().map(|m| Pattern::Method(m.to_string()));
        Condition::any_of("methods", Fact::Method, methods)
    }

    fn hosts_are(hosts: &[&str]) -> Condition {
        Condition::any_of(
            "hosts",
            Fact::Host,
            hosts.iter().map(|h| Pattern::Host(host(h))),
        )
    }

    fn exact(path: &str) -> PathPattern {
        PathPattern::Exact(path.to_string())
    }

    fn prefix(path: &str) -> PathPattern {
        PathPattern::Prefix(path.to_string())
    }

    fn suffix(path: &str) -> PathPattern {
        PathPattern::Suffix(path.to_string())
    }

    fn host(pattern: &str) -> HostPattern {
        match pattern.strip_prefix('*') {
            Some("") => HostPattern::Any,
            Some(rest) => HostPattern::WildcardSuffix(rest.to_string()),
            None => HostPattern::Exact(pattern.to_string()),
        }
    }

    /// The name of the selected rule, or `unmatched:<fallback>`.
    fn selected(config: &Config, method: &str, path: &str, host: &str) -> String {
        let facts = RequestFacts {
            method,
            path,
            host,
            headers: &[],
            peer: &crate::peer::NoPeer,
        };
        let no_token = &mut || Ok::<TokenClaims, ()>(None);
        match select(config, &RuleIndex::build(&config.rules), &facts, no_token).map(|s| s.applies)
        {
            Ok(Applies::Rule(rule)) => rule.name.clone(),
            Ok(Applies::Unmatched(fallback)) => format!("unmatched:{fallback:?}"),
            Err(()) => "token error".to_string(),
        }
    }

    fn claim_path(dotted: &str) -> ClaimPath {
        ClaimPath(dotted.split('.').map(str::to_string).collect())
    }

    fn default_scope_claims() -> Vec<ClaimPath> {
        vec![claim_path("scope"), claim_path("scp")]
    }

    fn payload(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn scopes(names: &[&str]) -> Requirement {
        Requirement {
            scopes: names.iter().map(|s| s.to_string()).collect(),
            ..Requirement::default()
        }
    }

    fn condition(path: ClaimPath, test: ClaimTest) -> Requirement {
        Requirement {
            claims: vec![ClaimCondition { claim: path, test }],
            ..Requirement::default()
        }
    }

    fn any_of(values: Value) -> ClaimTest {
        ClaimTest::AnyOf(values.as_array().cloned().unwrap_or_default())
    }

    fn all_of(values: Value) -> ClaimTest {
        ClaimTest::AllOf(values.as_array().cloned().unwrap_or_default())
    }

    fn holds(req: &Requirement, claims: &Value) -> Result<(), Unmet> {
        check_requirement(req, 0, &payload(claims.clone()), &default_scope_claims(), 0)
    }

    fn missing(names: &[&str]) -> Result<(), Unmet> {
        Err(Unmet::MissingScopes(
            names.iter().map(|s| s.to_string()).collect(),
        ))
    }

    fn claim_failed(name: &str) -> Result<(), Unmet> {
        Err(Unmet::ClaimFailed(name.to_string()))
    }

    // ---- path matching ----

    #[test]
    fn exact_path_matches_only_itself() {
        assert!(path_matches(&exact("/a/b"), "/a/b"));
        assert!(!path_matches(&exact("/a/b"), "/a/b/"));
        assert!(!path_matches(&exact("/a/b"), "/a/bc"));
        assert!(!path_matches(&exact("/a/b"), "/a"));
    }

    #[test]
    fn prefix_path_follows_istio_and_does_not_match_the_bare_directory() {
        let orders = prefix("/orders/");
        assert!(path_matches(&orders, "/orders/"));
        assert!(path_matches(&orders, "/orders/42"));
        assert!(path_matches(&orders, "/orders/42/items"));
        assert!(!path_matches(&orders, "/orders"));
        assert!(!path_matches(&orders, "/ordersx"));
        assert!(!path_matches(&orders, "/other/orders/"));
    }

    #[test]
    fn suffix_path_matches_the_end() {
        assert!(path_matches(&suffix(".png"), "/img/a.png"));
        assert!(!path_matches(&suffix(".png"), "/img/a.png/x"));
        assert!(!path_matches(&suffix(".png"), "/img/a.PNG"));
    }

    #[test]
    fn any_path_matches_everything() {
        assert!(path_matches(&PathPattern::Any, "/"));
        assert!(path_matches(&PathPattern::Any, "/anything/at/all"));
    }

    #[test]
    fn paths_are_case_sensitive() {
        assert!(!path_matches(&exact("/admin"), "/Admin"));
        assert!(!path_matches(&prefix("/admin/"), "/ADMIN/x"));
    }

    // ---- host matching ----

    #[test]
    fn exact_host_ignores_port_and_case() {
        let orders = host("orders.example.com");
        assert!(host_matches(&orders, "orders.example.com"));
        assert!(host_matches(&orders, "orders.example.com:8080"));
        assert!(host_matches(&orders, "Orders.Example.COM"));
        assert!(host_matches(&orders, "ORDERS.example.com:443"));
        assert!(!host_matches(&orders, "orders.example.com.evil"));
        assert!(!host_matches(&orders, "xorders.example.com"));
    }

    #[test]
    fn trailing_dot_names_the_same_host() {
        assert!(host_matches(
            &host("orders.example.com"),
            "orders.example.com.:80"
        ));
    }

    #[test]
    fn wildcard_host_matches_subdomains_at_any_depth_but_not_the_apex() {
        let wildcard = host("*.example.com");
        assert!(host_matches(&wildcard, "a.example.com"));
        assert!(host_matches(&wildcard, "a.b.example.com"));
        assert!(host_matches(&wildcard, "A.Example.com:8443"));
        assert!(!host_matches(&wildcard, "example.com"));
        assert!(!host_matches(&wildcard, ".example.com"));
        assert!(!host_matches(&wildcard, "aexample.com"));
        assert!(!host_matches(&wildcard, "a.example.org"));
    }

    #[test]
    fn ipv6_authority_keeps_brackets_and_loses_port() {
        let loopback = host("[::1]");
        assert!(host_matches(&loopback, "[::1]:8443"));
        assert!(host_matches(&loopback, "[::1]"));
        assert!(!host_matches(&loopback, "[::2]:8443"));
    }

    #[test]
    fn any_host_matches_everything() {
        assert!(host_matches(&HostPattern::Any, "whatever:1"));
    }

    // ---- rule selection ----

    #[test]
    fn first_matching_rule_wins() {
        let cfg = config(
            vec![
                rule("health", paths(&[exact("/healthz")])),
                rule("orders", paths(&[prefix("/orders/")])),
                rule("everything", paths(&[PathPattern::Any])),
            ],
            Unmatched::Deny,
        );
        assert_eq!(selected(&cfg, "GET", "/healthz", "h"), "health");
        assert_eq!(selected(&cfg, "GET", "/orders/1", "h"), "orders");
        assert_eq!(selected(&cfg, "GET", "/orders", "h"), "everything");
    }

    #[test]
    fn earlier_broad_rule_shadows_later_specific_rule() {
        let cfg = config(
            vec![
                rule("broad", paths(&[PathPattern::Any])),
                rule("specific", paths(&[exact("/admin")])),
            ],
            Unmatched::Deny,
        );
        assert_eq!(selected(&cfg, "GET", "/admin", "h"), "broad");
    }

    #[test]
    fn no_matching_rule_falls_back_to_unmatched() {
        for fallback in [
            Unmatched::Authenticated,
            Unmatched::Anonymous,
            Unmatched::Deny,
        ] {
            let cfg = config(vec![rule("a", paths(&[exact("/a")]))], fallback);
            assert_eq!(
                selected(&cfg, "GET", "/b", "h"),
                format!("unmatched:{fallback:?}")
            );
        }
        let empty = config(Vec::new(), Unmatched::Anonymous);
        assert_eq!(selected(&empty, "GET", "/", "h"), "unmatched:Anonymous");
    }

    #[test]
    fn all_given_lists_must_match() {
        let write = matching(vec![
            paths_are(&[prefix("/orders/")]),
            methods_are(&["POST", "DELETE"]),
            hosts_are(&["orders.example.com"]),
        ]);
        let cfg = config(vec![rule("write", write)], Unmatched::Authenticated);
        assert_eq!(
            selected(&cfg, "POST", "/orders/1", "orders.example.com:443"),
            "write"
        );
        assert_eq!(
            selected(&cfg, "DELETE", "/orders/1", "orders.example.com"),
            "write"
        );
        assert_eq!(
            selected(&cfg, "GET", "/orders/1", "orders.example.com"),
            "unmatched:Authenticated"
        );
        assert_eq!(
            selected(&cfg, "POST", "/users/1", "orders.example.com"),
            "unmatched:Authenticated"
        );
        assert_eq!(
            selected(&cfg, "POST", "/orders/1", "users.example.com"),
            "unmatched:Authenticated"
        );
    }

    #[test]
    fn absent_lists_match_everything() {
        let cfg = config(vec![rule("all", RuleMatch::default())], Unmatched::Deny);
        assert_eq!(selected(&cfg, "PATCH", "/x/y", "any.host:1"), "all");
    }

    #[test]
    fn empty_given_list_matches_nothing() {
        let cfg = config(vec![rule("none", paths(&[]))], Unmatched::Deny);
        assert_eq!(selected(&cfg, "GET", "/", "h"), "unmatched:Deny");
    }

    #[test]
    fn methods_match_whatever_the_request_case() {
        let delete = matching(vec![methods_are(&["DELETE"])]);
        let cfg = config(vec![rule("delete", delete)], Unmatched::Anonymous);
        assert_eq!(selected(&cfg, "DELETE", "/", "h"), "delete");
        assert_eq!(selected(&cfg, "delete", "/", "h"), "delete");
        assert_eq!(selected(&cfg, "GET", "/", "h"), "unmatched:Anonymous");
    }

    #[test]
    fn any_entry_of_a_list_may_match() {
        let cfg = config(
            vec![rule(
                "static",
                matching(vec![
                    paths_are(&[suffix(".png"), suffix(".css")]),
                    hosts_are(&["cdn.example.com", "*.static.example.com"]),
                ]),
            )],
            Unmatched::Deny,
        );
        assert_eq!(
            selected(&cfg, "GET", "/a.css", "eu.static.example.com"),
            "static"
        );
        assert_eq!(selected(&cfg, "GET", "/a.png", "CDN.example.com"), "static");
        assert_eq!(
            selected(&cfg, "GET", "/a.js", "cdn.example.com"),
            "unmatched:Deny"
        );
    }

    // ---- scopes ----

    #[test]
    fn scopes_from_scope_string_and_scp_list_are_merged_without_duplicates() {
        let claims = payload(json!({
            "scope": "orders:read  orders:write",
            "scp": ["orders:write", "users:read", 7, null]
        }));
        assert_eq!(
            granted_scopes(&claims, &default_scope_claims()),
            vec!["orders:read", "orders:write", "users:read"]
        );
    }

    #[test]
    fn scope_claims_of_other_types_grant_nothing() {
        for value in [json!(42), json!(true), json!({"scope": "a"}), json!(null)] {
            let claims = payload(json!({ "scope": value }));
            assert!(granted_scopes(&claims, &default_scope_claims()).is_empty());
        }
    }

    #[test]
    fn scopes_only_come_from_configured_claims() {
        let claims = payload(json!({ "scope": "a", "permissions": ["b"] }));
        assert_eq!(
            granted_scopes(&claims, &[claim_path("permissions")]),
            vec!["b"]
        );
    }

    #[test]
    fn all_missing_scopes_are_reported_in_rule_order() {
        let req = scopes(&["orders:write", "orders:read", "orders:admin"]);
        assert_eq!(
            holds(&req, &json!({ "scope": "orders:read" })),
            missing(&["orders:write", "orders:admin"])
        );
        assert_eq!(
            holds(&req, &json!({})),
            missing(&["orders:write", "orders:read", "orders:admin"])
        );
        assert_eq!(
            holds(
                &req,
                &json!({ "scope": "orders:admin orders:read orders:write" })
            ),
            Ok(())
        );
    }

    #[test]
    fn scopes_compare_exactly() {
        let req = scopes(&["orders:read"]);
        assert_eq!(
            holds(&req, &json!({ "scope": "orders:reader Orders:read" })),
            missing(&["orders:read"])
        );
    }

    // ---- requirement order ----

    #[test]
    fn provider_is_checked_before_scopes_and_claims() {
        let req = Requirement {
            providers: Some(vec![1, 2]),
            scopes: vec!["s".to_string()],
            claims: vec![ClaimCondition {
                claim: claim_path("x"),
                test: ClaimTest::Present,
            }],
            ..Requirement::default()
        };
        let empty = payload(json!({}));
        let scopes = default_scope_claims();
        assert_eq!(
            check_requirement(&req, 0, &empty, &scopes, 0),
            Err(Unmet::WrongProvider)
        );
        assert_eq!(
            check_requirement(&req, 2, &empty, &scopes, 0),
            missing(&["s"])
        );
        let with_scope = payload(json!({ "scope": "s" }));
        assert_eq!(
            check_requirement(&req, 2, &with_scope, &scopes, 0),
            claim_failed("x")
        );
        let full = payload(json!({ "scope": "s", "x": 1 }));
        assert_eq!(check_requirement(&req, 1, &full, &scopes, 0), Ok(()));
    }

    #[test]
    fn no_providers_listed_means_any_provider() {
        assert_eq!(
            check_requirement(
                &Requirement::default(),
                5,
                &Map::new(),
                &default_scope_claims(),
                0
            ),
            Ok(())
        );
    }

    #[test]
    fn first_failing_claim_is_reported() {
        let req = Requirement {
            claims: vec![
                ClaimCondition {
                    claim: claim_path("a"),
                    test: ClaimTest::Present,
                },
                ClaimCondition {
                    claim: claim_path("b.c"),
                    test: any_of(json!(["x"])),
                },
                ClaimCondition {
                    claim: claim_path("d"),
                    test: ClaimTest::Present,
                },
            ],
            ..Requirement::default()
        };
        assert_eq!(
            holds(&req, &json!({ "a": 1, "b": { "c": "y" } })),
            claim_failed("b.c")
        );
        assert_eq!(
            holds(&req, &json!({ "a": 1, "b": { "c": "x" } })),
            claim_failed("d")
        );
    }

    // ---- claim conditions ----

    #[test]
    fn present_needs_a_non_null_value() {
        let req = condition(claim_path("tenant"), ClaimTest::Present);
        for value in [json!("t1"), json!(""), json!(0), json!(false), json!([])] {
            assert_eq!(holds(&req, &json!({ "tenant": value })), Ok(()), "{value}");
        }
        assert_eq!(
            holds(&req, &json!({ "tenant": null })),
            claim_failed("tenant")
        );
        assert_eq!(holds(&req, &json!({})), claim_failed("tenant"));
    }

    #[test]
    fn any_of_on_scalar_claims_compares_by_json_type() {
        let strings = condition(claim_path("v"), any_of(json!(["a", "b"])));
        assert_eq!(holds(&strings, &json!({ "v": "b" })), Ok(()));
        assert_eq!(holds(&strings, &json!({ "v": "c" })), claim_failed("v"));
        assert_eq!(holds(&strings, &json!({ "v": "B" })), claim_failed("v"));

        let boolean = condition(claim_path("v"), any_of(json!([true])));
        assert_eq!(holds(&boolean, &json!({ "v": true })), Ok(()));
        assert_eq!(holds(&boolean, &json!({ "v": "true" })), claim_failed("v"));
        assert_eq!(holds(&boolean, &json!({ "v": false })), claim_failed("v"));

        let number = condition(claim_path("v"), any_of(json!([1])));
        assert_eq!(holds(&number, &json!({ "v": 1 })), Ok(()));
        assert_eq!(holds(&number, &json!({ "v": "1" })), claim_failed("v"));
        assert_eq!(holds(&number, &json!({ "v": 2 })), claim_failed("v"));
        assert_eq!(holds(&number, &json!({ "v": true })), claim_failed("v"));

        let string_one = condition(claim_path("v"), any_of(json!(["1"])));
        assert_eq!(holds(&string_one, &json!({ "v": 1 })), claim_failed("v"));
    }

    #[test]
    fn numbers_compare_by_value() {
        let one = condition(claim_path("v"), any_of(json!([1])));
        assert_eq!(holds(&one, &json!({ "v": 1.0 })), Ok(()));
        assert_eq!(holds(&one, &json!({ "v": 1.5 })), claim_failed("v"));
        let negative = condition(claim_path("v"), any_of(json!([-3])));
        assert_eq!(holds(&negative, &json!({ "v": -3 })), Ok(()));
        assert_eq!(holds(&negative, &json!({ "v": 3 })), claim_failed("v"));
        // Exact beyond 2^53, where f64 would call these equal.
        let big = condition(claim_path("v"), any_of(json!([9007199254740993u64])));
        assert_eq!(holds(&big, &json!({ "v": 9007199254740993u64 })), Ok(()));
        assert_eq!(
            holds(&big, &json!({ "v": 9007199254740992u64 })),
            claim_failed("v")
        );
    }

    #[test]
    fn any_of_on_list_claims_needs_one_common_element() {
        let req = condition(claim_path("groups"), any_of(json!(["editor", "admin"])));
        assert_eq!(
            holds(&req, &json!({ "groups": ["viewer", "admin"] })),
            Ok(())
        );
        assert_eq!(
            holds(&req, &json!({ "groups": ["viewer"] })),
            claim_failed("groups")
        );
        assert_eq!(
            holds(&req, &json!({ "groups": [] })),
            claim_failed("groups")
        );
        let numbers = condition(claim_path("levels"), any_of(json!([3])));
        assert_eq!(holds(&numbers, &json!({ "levels": [1, 3.0] })), Ok(()));
        assert_eq!(
            holds(&numbers, &json!({ "levels": ["3"] })),
            claim_failed("levels")
        );
    }

    #[test]
    fn all_of_on_list_claims_needs_every_value() {
        let req = condition(claim_path("groups"), all_of(json!(["editor", "admin"])));
        assert_eq!(
            holds(&req, &json!({ "groups": ["admin", "viewer", "editor"] })),
            Ok(())
        );
        assert_eq!(
            holds(&req, &json!({ "groups": ["admin"] })),
            claim_failed("groups")
        );
        let flags = condition(claim_path("flags"), all_of(json!([true, 2])));
        assert_eq!(holds(&flags, &json!({ "flags": [2, true] })), Ok(()));
        assert_eq!(
            holds(&flags, &json!({ "flags": ["true", 2] })),
            claim_failed("flags")
        );
    }

    #[test]
    fn all_of_on_scalar_claims_holds_only_for_a_single_equal_value() {
        let single = condition(claim_path("tier"), all_of(json!(["gold"])));
        assert_eq!(holds(&single, &json!({ "tier": "gold" })), Ok(()));
        assert_eq!(
            holds(&single, &json!({ "tier": "silver" })),
            claim_failed("tier")
        );
        let two = condition(claim_path("tier"), all_of(json!(["gold", "silver"])));
        assert_eq!(
            holds(&two, &json!({ "tier": "gold" })),
            claim_failed("tier")
        );
        let number = condition(claim_path("tier"), all_of(json!([2])));
        assert_eq!(holds(&number, &json!({ "tier": 2.0 })), Ok(()));
    }

    #[test]
    fn empty_value_lists_never_hold() {
        for test in [any_of(json!([])), all_of(json!([]))] {
            let req = condition(claim_path("v"), test);
            assert_eq!(holds(&req, &json!({ "v": ["a"] })), claim_failed("v"));
            assert_eq!(holds(&req, &json!({ "v": "a" })), claim_failed("v"));
        }
    }

    #[test]
    fn missing_claims_fail_every_condition() {
        for test in [
            ClaimTest::Present,
            any_of(json!(["a"])),
            all_of(json!(["a"])),
        ] {
            let req = condition(claim_path("a.b"), test);
            assert_eq!(holds(&req, &json!({})), claim_failed("a.b"));
            assert_eq!(holds(&req, &json!({ "a": "b" })), claim_failed("a.b"));
            assert_eq!(
                holds(&req, &json!({ "a": { "c": "a" } })),
                claim_failed("a.b")
            );
        }
    }

    #[test]
    fn list_claim_paths_reach_names_containing_dots() {
        let roles = ClaimPath(vec!["https://example.com/roles".to_string()]);
        let req = condition(roles, any_of(json!(["admin"])));
        assert_eq!(
            holds(&req, &json!({ "https://example.com/roles": ["admin"] })),
            Ok(())
        );
        // The dotted reading of the same name must not be used.
        assert_eq!(
            holds(
                &req,
                &json!({ "https://example": { "com/roles": ["admin"] } })
            ),
            claim_failed("https://example.com/roles")
        );
    }

    // ---- requiresAny ----

    #[test]
    fn any_requirement_holding_is_enough() {
        let reqs = [scopes(&["a"]), scopes(&["b"])];
        let claims = payload(json!({ "scope": "b" }));
        assert_eq!(
            check_any(&reqs, 0, &claims, &default_scope_claims(), 0),
            Ok(())
        );
    }

    #[test]
    fn fewest_missing_scopes_are_reported_when_none_holds() {
        let reqs = [
            scopes(&["a", "b", "c"]),
            scopes(&["d", "e"]),
            scopes(&["f", "g"]),
        ];
        assert_eq!(
            check_any(&reqs, 0, &Map::new(), &default_scope_claims(), 0),
            missing(&["d", "e"])
        );
    }

    #[test]
    fn missing_scopes_beat_claim_failures_and_wrong_providers() {
        let wrong_provider = Requirement {
            providers: Some(vec![9]),
            ..Requirement::default()
        };
        let claim = condition(claim_path("x"), ClaimTest::Present);
        let scope = scopes(&["s"]);
        let claims = Map::new();
        let sc = default_scope_claims();
        assert_eq!(
            check_any(
                &[wrong_provider.clone(), claim.clone(), scope.clone()],
                0,
                &claims,
                &sc,
                0
            ),
            missing(&["s"])
        );
        assert_eq!(
            check_any(
                &[scope, claim.clone(), wrong_provider.clone()],
                0,
                &claims,
                &sc,
                0
            ),
            missing(&["s"])
        );
        assert_eq!(
            check_any(&[wrong_provider.clone(), claim], 0, &claims, &sc, 0),
            claim_failed("x")
        );
        assert_eq!(
            check_any(&[wrong_provider], 0, &claims, &sc, 0),
            Err(Unmet::WrongProvider)
        );
    }

    #[test]
    fn scopes_of_another_provider_are_not_reported() {
        let keycloak_only = Requirement {
            providers: Some(vec![1]),
            scopes: vec!["other".to_string()],
            ..Requirement::default()
        };
        let claim = condition(claim_path("x"), ClaimTest::Present);
        assert_eq!(
            check_any(
                &[keycloak_only, claim],
                0,
                &Map::new(),
                &default_scope_claims(),
                0
            ),
            claim_failed("x")
        );
    }

    #[test]
    fn empty_requires_any_holds_for_no_token() {
        assert_eq!(
            check_any(&[], 0, &Map::new(), &default_scope_claims(), 0),
            Err(Unmet::WrongProvider)
        );
    }

    // ---- identity-provider shaped payloads ----

    #[test]
    fn keycloak_payload() {
        let token = json!({
            "iss": "https://kc.example.com/realms/shop",
            "scope": "openid profile orders:write",
            "realm_access": { "roles": ["offline_access", "editor"] },
            "resource_access": { "orders-api": { "roles": ["writer"] } },
            "preferred_username": "alice"
        });
        let req = Requirement {
            providers: Some(vec![0]),
            scopes: vec!["orders:write".to_string()],
            claims: vec![
                ClaimCondition {
                    claim: claim_path("realm_access.roles"),
                    test: any_of(json!(["editor", "admin"])),
                },
                ClaimCondition {
                    claim: ClaimPath(vec![
                        "resource_access".to_string(),
                        "orders-api".to_string(),
                        "roles".to_string(),
                    ]),
                    test: all_of(json!(["writer"])),
                },
            ],
            ..Requirement::default()
        };
        assert_eq!(holds(&req, &token), Ok(()));
        let mut viewer = token.clone();
        viewer["realm_access"]["roles"] = json!(["viewer"]);
        assert_eq!(holds(&req, &viewer), claim_failed("realm_access.roles"));
    }

    #[test]
    fn auth0_payload() {
        let token = json!({
            "iss": "https://tenant.eu.auth0.com/",
            "scope": "read:orders",
            "permissions": ["read:orders", "write:orders"],
            "https://example.com/roles": ["admin"],
            "https://example.com/org": "acme"
        });
        let scope_claims = [claim_path("scope"), claim_path("permissions")];
        let req = Requirement {
            scopes: vec!["write:orders".to_string(), "read:orders".to_string()],
            claims: vec![
                ClaimCondition {
                    claim: ClaimPath(vec!["https://example.com/roles".to_string()]),
                    test: any_of(json!(["admin"])),
                },
                ClaimCondition {
                    claim: ClaimPath(vec!["https://example.com/org".to_string()]),
                    test: any_of(json!(["acme"])),
                },
            ],
            ..Requirement::default()
        };
        let claims = payload(token);
        assert_eq!(
            check_requirement(&req, 0, &claims, &scope_claims, 0),
            Ok(())
        );
        // With only the standard scope claims, `permissions` does not count.
        assert_eq!(
            check_requirement(&req, 0, &claims, &default_scope_claims(), 0),
            missing(&["write:orders"])
        );
    }

    #[test]
    fn entra_payload() {
        let delegated = json!({
            "iss": "https://login.microsoftonline.com/tid/v2.0",
            "scp": "Orders.Read Orders.Write",
            "roles": ["Orders.Admin"],
            "ver": "2.0"
        });
        let req = Requirement {
            scopes: vec!["Orders.Write".to_string()],
            claims: vec![ClaimCondition {
                claim: claim_path("roles"),
                test: any_of(json!(["Orders.Admin"])),
            }],
            ..Requirement::default()
        };
        assert_eq!(holds(&req, &delegated), Ok(()));
        // App-only token: roles but no scp.
        let app_only = json!({ "roles": ["Orders.Admin"], "ver": "2.0" });
        assert_eq!(holds(&req, &app_only), missing(&["Orders.Write"]));
        let roles_only = condition(claim_path("roles"), all_of(json!(["Orders.Admin"])));
        assert_eq!(holds(&roles_only, &app_only), Ok(()));
    }

    #[test]
    fn step_up_needs_the_acr_and_a_recent_authentication() {
        let req = Requirement {
            acr_values: Some(vec!["urn:mfa".into(), "phr".into()]),
            max_auth_age_seconds: Some(300),
            scopes: vec!["pay".into()],
            ..Requirement::default()
        };
        let now = 1_700_000_000;
        let check = |claims: Value| {
            check_requirement(&req, 0, &payload(claims), &default_scope_claims(), now)
        };
        let step_up = Err(Unmet::StepUp {
            acr_values: Some(vec!["urn:mfa".into(), "phr".into()]),
            max_age: Some(300),
        });
        assert_eq!(
            check(json!({"acr": "phr", "auth_time": now - 300, "scope": "pay"})),
            Ok(())
        );
        assert_eq!(
            check(json!({"acr": "pwd", "auth_time": now, "scope": "pay"})),
            step_up
        );
        assert_eq!(
            check(json!({"acr": "phr", "auth_time": now - 301, "scope": "pay"})),
            step_up
        );
        assert_eq!(check(json!({"acr": "phr", "scope": "pay"})), step_up);
        assert_eq!(check(json!({"auth_time": now, "scope": "pay"})), step_up);
        // A new login comes before scopes: it may bring them.
        assert_eq!(check(json!({"acr": "pwd", "auth_time": now})), step_up);
        assert_eq!(
            check(json!({"acr": "phr", "auth_time": now})),
            Err(Unmet::MissingScopes(vec!["pay".into()]))
        );
    }

    #[test]
    fn requires_any_prefers_scopes_then_step_up() {
        let mfa = Requirement {
            acr_values: Some(vec!["mfa".into()]),
            ..Requirement::default()
        };
        let claim = condition(claim_path("role"), ClaimTest::Present);
        let claims = payload(json!({"acr": "pwd"}));
        assert!(matches!(
            check_any(
                &[claim.clone(), mfa.clone()],
                0,
                &claims,
                &default_scope_claims(),
                0
            ),
            Err(Unmet::StepUp { .. })
        ));
        assert_eq!(
            check_any(
                &[mfa, scopes(&["x"])],
                0,
                &claims,
                &default_scope_claims(),
                0
            ),
            Err(Unmet::MissingScopes(vec!["x".into()]))
        );
    }

    #[test]
    fn delegation_rules_name_the_client_and_the_current_actor() {
        let req = Requirement {
            clients: Some(vec!["shop-agent".into()]),
            actors: Some(vec!["agent-7".into()]),
            max_delegation_depth: Some(1),
            ..Requirement::default()
        };
        let check = |claims: Value| check_requirement(&req, 0, &payload(claims), &[], 0);
        assert_eq!(
            check(json!({"client_id": "shop-agent", "act": {"sub": "agent-7"}})),
            Ok(())
        );
        assert_eq!(
            check(json!({"azp": "shop-agent", "act": {"sub": "agent-7"}})),
            Ok(())
        );
        // client_id wins over azp where both are there.
        assert!(
            check(json!({"client_id": "x", "azp": "shop-agent", "act": {"sub": "agent-7"}}))
                .is_err()
        );
        // Only the outermost act is the current actor (RFC 8693 §4.1).
        assert_eq!(
            check(
                json!({"client_id": "shop-agent", "act": {"sub": "planner", "act": {"sub": "agent-7"}}})
            ),
            Err(Unmet::Delegation("the token's actor is not accepted here"))
        );
        assert_eq!(
            check(
                json!({"client_id": "shop-agent", "act": {"sub": "agent-7", "act": {"sub": "p"}}})
            ),
            Err(Unmet::Delegation(
                "the token's delegation chain is too deep"
            ))
        );
        let forbidden = Requirement {
            delegation_forbidden: true,
            ..Requirement::default()
        };
        assert!(check_requirement(
            &forbidden,
            0,
            &payload(json!({"act": {"sub": "a"}})),
            &[],
            0
        )
        .is_err());
        assert_eq!(
            check_requirement(&forbidden, 0, &payload(json!({})), &[], 0),
            Ok(())
        );
        assert_eq!(
            delegation_depth(Some(&json!({"sub": "a", "act": {"sub": "b", "act": "x"}}))),
            2
        );
    }

    #[test]
    fn audiences_per_rule_keep_tokens_from_crossing_services() {
        let orders = Requirement {
            audiences: Some(vec!["orders".into(), "https://orders.example.com".into()]),
            ..Requirement::default()
        };
        let check =
            |aud: Value| check_requirement(&orders, 0, &payload(json!({"aud": aud})), &[], 0);
        assert_eq!(check(json!("orders")), Ok(()));
        assert_eq!(
            check(json!(["billing", "https://orders.example.com"])),
            Ok(())
        );
        assert_eq!(check(json!("billing")), Err(Unmet::Audience));
        assert_eq!(check(json!([1, "billing"])), Err(Unmet::Audience));
        assert_eq!(
            check_requirement(&orders, 0, &payload(json!({})), &[], 0),
            Err(Unmet::Audience)
        );
    }
}
