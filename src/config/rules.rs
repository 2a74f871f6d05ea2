//! The `rules` part of the configuration: which rule a request meets, and what it must show.

use super::*;

pub(super) fn parse_rules(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
) -> Parsed<Vec<Rule>> {
    let mut rules: Vec<Rule> = Vec::new();
    // A gateway may have thousands of rules: names are looked up, not compared pairwise.
    let mut names: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (index, item) in list(value, path)?.iter().enumerate() {
        let item_path = path.item(index);
        let rule = Object::new(
            item,
            &item_path,
            &[
                "name",
                "match",
                "allowAnonymous",
                "deny",
                "requires",
                "requiresAny",
                "mode",
                "denyWith",
                "invalidToken",
            ],
        )?;
        let given_name = rule.optional("name", non_empty_string)?;
        let name_given = given_name.is_some();
        let name = given_name.unwrap_or_else(|| item_path.to_string());
        if let Some(&index) = names.get(name.as_str()) {
            let at = if name_given {
                rule.path_of("name")
            } else {
                item_path
            };
            return Err(error(
                at,
                format!("rules[{index}] already has the name \"{name}\""),
            ));
        }
        names.insert(name.clone(), rules.len());
        rules.push(Rule {
            name,
            matcher: rule
                .optional("match", parse_rule_match)?
                .unwrap_or_default(),
            action: parse_action(&rule, providers)?,
            mode: rule.optional("mode", parse_mode)?,
            deny_with: rule.optional("denyWith", parse_deny_with)?,
            ignore_invalid_token: parse_invalid_token(&rule)?,
        });
    }
    Ok(rules)
}

/// `invalidToken`: `"refuse"` (the default) or `"ignore"`, which only a public rule may say:
/// elsewhere a token that does not verify must never pass for no token.
fn parse_invalid_token(rule: &Object<'_, '_>) -> Parsed<bool> {
    let ignore = rule.optional("invalidToken", |value, path| match value.as_str() {
        Some("refuse") => Ok(false),
        Some("ignore") => Ok(true),
        _ => Err(error(path, "must be \"refuse\" or \"ignore\"")),
    })?;
    if ignore == Some(true) && rule.optional("allowAnonymous", boolean)? != Some(true) {
        return Err(error(
            rule.path_of("invalidToken"),
            "\"ignore\" is only for a rule with allowAnonymous: true",
        ));
    }
    Ok(ignore.unwrap_or(false))
}

pub(super) fn parse_action(rule: &Object<'_, '_>, providers: &[Provider]) -> Parsed<Action> {
    let mut actions: Vec<(&str, Action)> = Vec::new();
    for (key, action) in [
        ("allowAnonymous", Action::AllowAnonymous),
        ("deny", Action::Deny),
    ] {
        match rule.optional(key, boolean)? {
            Some(true) => actions.push((key, action)),
            Some(false) => {
                return Err(error(
                    rule.path_of(key),
                    "false has no meaning; leave the field out",
                ))
            }
            None => {}
        }
    }
    if let Some(requirement) = rule.optional("requires", |value, path| {
        parse_requirement(value, path, providers)
    })? {
        actions.push(("requires", Action::Requires(requirement)));
    }
    if let Some(requirements) = rule.optional("requiresAny", |value, path| {
        non_empty_items(value, path, |value, path| {
            parse_requirement(value, path, providers)
        })
    })? {
        actions.push(("requiresAny", Action::RequiresAny(requirements)));
    }
    let mut actions = actions.into_iter();
    match (actions.next(), actions.next()) {
        (Some((_, action)), None) => Ok(action),
        (None, _) => Err(error(
            rule.path,
            "needs one of allowAnonymous: true, deny: true, requires or requiresAny",
        )),
        (Some((first, _)), Some((second, _))) => Err(error(
            rule.path,
            format!("has both {first} and {second}; give exactly one"),
        )),
    }
}

pub(super) fn parse_requirement(
    value: &Value,
    path: &At<'_>,
    providers: &[Provider],
) -> Parsed<Requirement> {
    let requirement = Object::new(
        value,
        path,
        &[
            "providers",
            "scopes",
            "claims",
            "acrValues",
            "maxAuthAgeSeconds",
            "audiences",
            "tenants",
            "clients",
            "actor",
            "maxDelegationDepth",
            "delegation",
        ],
    )?;
    let provider_indexes = requirement.optional("providers", |value, path| {
        let indexes = non_empty_items(value, path, |value, path| {
            let name = string(value, path)?;
            providers
                .iter()
                .position(|provider| provider.name == name)
                .ok_or_else(|| error(path, format!("no provider is named \"{name}\"")))
        })?;
        reject_duplicates(&indexes, path)?;
        Ok(indexes)
    })?;
    Ok(Requirement {
        providers: provider_indexes,
        scopes: requirement
            .optional("scopes", |value, path| items(value, path, parse_scope))?
            .unwrap_or_default(),
        claims: requirement
            .optional("claims", |value, path| {
                items(value, path, parse_claim_condition)
            })?
            .unwrap_or_default(),
        // Echoed space-separated inside the quoted `acr_values="…"` of the challenge.
        acr_values: requirement.optional("acrValues", |value, path| {
            let values = non_empty_items(value, path, parse_acr)?;
            reject_duplicates(&values, path)?;
            Ok(values)
        })?,
        max_auth_age_seconds: requirement.optional("maxAuthAgeSeconds", non_negative_integer)?,
        clients: requirement.optional("clients", |value, path| {
            non_empty_items(value, path, non_empty_string)
        })?,
        actors: requirement.optional("actor", |value, path| {
            non_empty_items(value, path, non_empty_string)
        })?,
        max_delegation_depth: requirement.optional("maxDelegationDepth", non_negative_integer)?,
        audiences: requirement.optional("audiences", |value, path| {
            non_empty_items(value, path, non_empty_string)
        })?,
        tenants: requirement.optional("tenants", |value, path| {
            let tenants = non_empty_items(value, path, non_empty_string)?;
            reject_duplicates(&tenants, path)?;
            Ok(tenants)
        })?,
        delegation_forbidden: match requirement.optional("delegation", string)?.as_deref() {
            None | Some("allowed") => false,
            Some("forbidden") => true,
            Some(_) => {
                return Err(error(
                    requirement.path_of("delegation"),
                    "expected \"allowed\" or \"forbidden\"",
                ))
            }
        },
    })
}

/// Printable ASCII that cannot end or escape an HTTP quoted-string (RFC 9110 §5.6.4).
pub(super) fn fits_quoted_string(text: &str) -> bool {
    text.bytes()
        .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\')
}

/// RFC 6749 §3.3 scope-token; it is also echoed inside the quoted `scope="…"` of `WWW-Authenticate`.
pub(super) fn parse_scope(value: &Value, path: &At<'_>) -> Parsed<String> {
    let scope = non_empty_string(value, path)?;
    if scope.contains(' ') || !fits_quoted_string(&scope) {
        return Err(error(
            path,
            "not a scope: printable ASCII without spaces, '\"' or '\\'",
        ));
    }
    Ok(scope)
}

/// An `acr` value; echoed space-separated in the quoted `acr_values="…"` of a challenge.
fn parse_acr(value: &Value, path: &At<'_>) -> Parsed<String> {
    let acr = non_empty_string(value, path)?;
    if acr.contains(' ') || !fits_quoted_string(&acr) {
        return Err(error(
            path,
            "not an acr value: printable ASCII without spaces, '\"' or '\\'",
        ));
    }
    Ok(acr)
}

pub(super) fn parse_claim_condition(value: &Value, path: &At<'_>) -> Parsed<ClaimCondition> {
    let condition = Object::new(value, path, &["claim", "anyOf", "allOf", "present"])?;
    let claim = condition.required("claim", parse_claim_path)?;
    let mut tests: Vec<ClaimTest> = Vec::new();
    if let Some(values) = condition.optional("anyOf", claim_values)? {
        tests.push(ClaimTest::AnyOf(values));
    }
    if let Some(values) = condition.optional("allOf", claim_values)? {
        tests.push(ClaimTest::AllOf(values));
    }
    match condition.optional("present", boolean)? {
        Some(true) => tests.push(ClaimTest::Present),
        Some(false) => {
            return Err(error(
                condition.path_of("present"),
                "only true is supported; leave it out otherwise",
            ))
        }
        None => {}
    }
    let mut tests = tests.into_iter();
    match (tests.next(), tests.next()) {
        (Some(test), None) => Ok(ClaimCondition { claim, test }),
        (None, _) => Err(error(path, "needs one of anyOf, allOf or present: true")),
        (Some(_), Some(_)) => Err(error(path, "give only one of anyOf, allOf or present")),
    }
}

pub(super) fn claim_values(value: &Value, path: &At<'_>) -> Parsed<Vec<Value>> {
    non_empty_items(value, path, |value, path| match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(value.clone()),
        _ => Err(error(path, "expected a string, number or boolean")),
    })
}
