//! Rule selection and requirement checks on structured input: claims as JSON, scope claims,
//! requirements and rules built from a small vocabulary, so that names and values collide
//! often enough to reach every branch.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mesh_oauth::config::{
    Action, ClaimCondition, ClaimPath, ClaimTest, Condition, Config, Fact, HostPattern, Limits,
    Mode, PathPattern, Pattern, Requirement, Rule, RuleMatch, Unmatched,
};
use mesh_oauth::peer::NoPeer;
use mesh_oauth::policy::{self, Applies, RequestFacts, TokenClaims, Unmet};
use serde_json::{Map, Number, Value};

#[derive(Arbitrary, Debug)]
enum Word {
    Read,
    Write,
    Admin,
    Scope,
    Scp,
    Roles,
    Realm,
    Empty,
    TwoScopes,
    Other(String),
}

impl Word {
    fn text(&self) -> String {
        match self {
            Word::Read => "read",
            Word::Write => "write",
            Word::Admin => "admin",
            Word::Scope => "scope",
            Word::Scp => "scp",
            Word::Roles => "roles",
            Word::Realm => "realm",
            Word::Empty => "",
            Word::TwoScopes => "read write",
            Word::Other(text) => text,
        }
        .to_string()
    }
}

#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Word),
    List(Vec<Json>),
    Object(Vec<(Word, Json)>),
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::from(*i),
            Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Json::Str(word) => Value::String(word.text()),
            Json::List(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Object(members) => Value::Object(object(members)),
        }
    }
}

fn object(members: &[(Word, Json)]) -> Map<String, Value> {
    members.iter().map(|(k, v)| (k.text(), v.value())).collect()
}

#[derive(Arbitrary, Debug)]
enum Test {
    AnyOf(Vec<Json>),
    AllOf(Vec<Json>),
    Present,
}

#[derive(Arbitrary, Debug)]
struct Req {
    providers: Option<Vec<u8>>,
    scopes: Vec<Word>,
    claims: Vec<(Vec<Word>, Test)>,
}

impl Req {
    fn requirement(&self) -> Requirement {
        Requirement {
            providers: self
                .providers
                .as_ref()
                .map(|p| p.iter().map(|i| usize::from(*i % 4)).collect()),
            scopes: self.scopes.iter().map(Word::text).collect(),
            claims: self
                .claims
                .iter()
                .map(|(path, test)| ClaimCondition {
                    claim: claim_path(path),
                    test: match test {
                        Test::AnyOf(values) => {
                            ClaimTest::AnyOf(values.iter().map(Json::value).collect())
                        }
                        Test::AllOf(values) => {
                            ClaimTest::AllOf(values.iter().map(Json::value).collect())
                        }
                        Test::Present => ClaimTest::Present,
                    },
                })
                .collect(),
            acr_values: None,
            max_auth_age_seconds: None,
            clients: None,
            actors: None,
            max_delegation_depth: None,
            delegation_forbidden: false,
            audiences: None,
            tenants: None,
        }
    }
}

fn claim_path(words: &[Word]) -> ClaimPath {
    ClaimPath(words.iter().map(Word::text).collect())
}

#[derive(Arbitrary, Debug)]
enum PathIn {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

#[derive(Arbitrary, Debug)]
enum HostIn {
    Any,
    Exact(String),
    Wildcard(String),
}

#[derive(Arbitrary, Debug)]
enum ActionIn {
    Anonymous,
    Deny,
    Requires(Req),
    RequiresAny(Vec<Req>),
}

#[derive(Arbitrary, Debug)]
struct RuleIn {
    paths: Option<Vec<PathIn>>,
    methods: Option<Vec<String>>,
    hosts: Option<Vec<HostIn>>,
    action: ActionIn,
}

#[derive(Arbitrary, Debug)]
struct Input {
    claims: Vec<(Word, Json)>,
    scope_claims: Vec<Vec<Word>>,
    provider: u8,
    requirements: Vec<Req>,
    rules: Vec<RuleIn>,
    unmatched: u8,
    method: String,
    path: String,
    host: String,
}

/// The rule's `match` lists as the configuration would hold them.
type Lists = (
    Option<Vec<PathPattern>>,
    Option<Vec<String>>,
    Option<Vec<HostPattern>>,
);

fn lists(input: &RuleIn) -> Lists {
    let paths = input.paths.as_ref().map(|paths| {
        paths
            .iter()
            .map(|p| match p {
                PathIn::Any => PathPattern::Any,
                PathIn::Exact(s) => PathPattern::Exact(s.clone()),
                PathIn::Prefix(s) => PathPattern::Prefix(s.clone()),
                PathIn::Suffix(s) => PathPattern::Suffix(s.clone()),
            })
            .collect()
    });
    let hosts = input.hosts.as_ref().map(|hosts| {
        hosts
            .iter()
            .map(|h| match h {
                HostIn::Any => HostPattern::Any,
                HostIn::Exact(s) => HostPattern::Exact(s.to_ascii_lowercase()),
                HostIn::Wildcard(s) => {
                    HostPattern::WildcardSuffix(format!(".{}", s.to_ascii_lowercase()))
                }
            })
            .collect()
    });
    (paths, input.methods.clone(), hosts)
}

fn rule(index: usize, input: &RuleIn) -> Rule {
    let (paths, methods, hosts) = lists(input);
    let mut conditions = Vec::new();
    if let Some(paths) = paths {
        conditions.push(Condition::any_of(
            "paths",
            Fact::Path,
            paths.into_iter().map(Pattern::Path),
        ));
    }
    if let Some(methods) = methods {
        let methods = methods.into_iter().map(Pattern::Method);
        conditions.push(Condition::any_of("methods", Fact::Method, methods));
    }
    if let Some(hosts) = hosts {
        conditions.push(Condition::any_of(
            "hosts",
            Fact::Host,
            hosts.into_iter().map(Pattern::Host),
        ));
    }
    let action = match &input.action {
        ActionIn::Anonymous => Action::AllowAnonymous,
        ActionIn::Deny => Action::Deny,
        ActionIn::Requires(req) => Action::Requires(req.requirement()),
        ActionIn::RequiresAny(reqs) => {
            Action::RequiresAny(reqs.iter().map(Req::requirement).collect())
        }
    };
    Rule {
        name: format!("rules[{index}]"),
        matcher: RuleMatch { conditions },
        action,
        mode: None,
        deny_with: None,
        ignore_invalid_token: false,
    }
}

/// The documented meaning of a rule's `match`, from the public matchers.
fn matches(input: &RuleIn, facts: &RequestFacts) -> bool {
    let (paths, methods, hosts) = lists(input);
    paths.is_none_or(|p| p.iter().any(|p| policy::path_matches(p, facts.path)))
        && methods.is_none_or(|m| m.iter().any(|m| m.eq_ignore_ascii_case(facts.method)))
        && hosts.is_none_or(|h| h.iter().any(|h| policy::host_matches(h, facts.host)))
}

fuzz_target!(|input: Input| {
    let claims = object(&input.claims);
    let scope_claims: Vec<ClaimPath> = input.scope_claims.iter().map(|p| claim_path(p)).collect();
    let provider = usize::from(input.provider % 4);

    let granted = policy::granted_scopes(&claims, &scope_claims);
    for (i, scope) in granted.iter().enumerate() {
        assert!(!scope.is_empty(), "empty scope granted");
        assert!(!granted[..i].contains(scope), "scope granted twice");
    }

    let requirements: Vec<Requirement> = input.requirements.iter().map(Req::requirement).collect();
    let mut any_holds = false;
    for req in &requirements {
        match policy::check_requirement(req, provider, &claims, &scope_claims, 0) {
            Ok(()) => {
                any_holds = true;
                assert!(
                    req.scopes.iter().all(|s| granted.contains(s)),
                    "held without a scope"
                );
                assert!(req.providers.as_ref().is_none_or(|p| p.contains(&provider)));
            }
            Err(Unmet::MissingScopes(missing)) => {
                assert!(!missing.is_empty(), "no scope named as missing");
                for (i, scope) in missing.iter().enumerate() {
                    assert!(
                        req.scopes.contains(scope),
                        "missing scope the rule does not list"
                    );
                    assert!(!granted.contains(scope), "granted scope reported missing");
                    assert!(!missing[..i].contains(scope), "missing scope named twice");
                }
            }
            Err(Unmet::WrongProvider) => {
                assert!(req
                    .providers
                    .as_ref()
                    .is_some_and(|p| !p.contains(&provider)));
            }
            Err(Unmet::ClaimFailed(_)) => {}
            Err(Unmet::StepUp { .. }) => panic!("step-up reported without step-up conditions"),
            Err(Unmet::Delegation(_)) => panic!("delegation refused without delegation conditions"),
            Err(Unmet::Audience) => panic!("audience refused without audiences"),
            Err(Unmet::Tenant) => panic!("tenant refused without tenants"),
        }
    }
    let any = policy::check_any(&requirements, provider, &claims, &scope_claims, 0);
    assert_eq!(
        any.is_ok(),
        any_holds,
        "requiresAny disagrees with its requirements"
    );

    let config = Config {
        providers: Vec::new(),
        rules: input
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule(i, r))
            .collect(),
        unmatched: match input.unmatched % 3 {
            0 => Unmatched::Authenticated,
            1 => Unmatched::Anonymous,
            _ => Unmatched::Deny,
        },
        realm: None,
        bypass_cors_preflight: false,
        mode: Mode::Enforce,
        audit: Default::default(),
        protected_resources: Vec::new(),
        answers: Default::default(),
        deny_with: None,
        limits: Limits::default(),
        logins: Vec::new(),
        outbound: Default::default(),
    };
    let facts = RequestFacts {
        method: &input.method,
        path: &input.path,
        host: &input.host,
        headers: &[],
        peer: &NoPeer,
    };
    let first_match = input
        .rules
        .iter()
        .position(|r| matches(r, &facts))
        .and_then(|i| config.rules.get(i));
    let no_token = &mut || Ok::<TokenClaims, ()>(None);
    let rule_index = policy::RuleIndex::build(&config.rules);
    let selected = policy::select(&config, &rule_index, &facts, no_token).map(|s| s.applies);
    match (selected.expect("no token is ever asked for"), first_match) {
        (Applies::Rule(selected), Some(first)) => {
            assert!(std::ptr::eq(selected, first), "not the first matching rule")
        }
        (Applies::Unmatched(unmatched), None) => assert_eq!(unmatched, config.unmatched),
        (selected, first) => panic!("select gave {selected:?}, first match {first:?}"),
    }
});
