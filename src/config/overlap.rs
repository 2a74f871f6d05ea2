//! Whether a `match` can ever be the first to match a request, after the matches listed
//! before it (outbound entries: first match wins). Semantic, over what the patterns accept —
//! hosts with wildcards, path prefixes and suffixes, methods, ports, and their `not…` forms —
//! and sound: an entry is called unreachable only when that is certain. Where two patterns'
//! relation is not simple (a path prefix against a path suffix), it assumes they overlap.

use super::*;

/// Past this many combinations of a match's listed values the check gives up (reachable).
const MAX_CELLS: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reach {
    /// Some request it matches is matched by none of the earlier ones.
    Reachable,
    /// No request matches it at all: its `not…` fields exclude all its others allow.
    Empty,
    /// Every request it matches is matched first by these earlier ones (indexes, ascending).
    Shadowed(Vec<usize>),
}

/// What a match says of one fact: the patterns it lists (`None`: any value) and those it
/// excludes (`not…`).
struct Constraint<'m> {
    fact: &'m Fact,
    listed: Option<&'m [Pattern]>,
    excluded: Vec<&'m Pattern>,
}

/// One fact of a cell: a single listed pattern (`None`: any value), less the exclusions.
struct Slice<'c> {
    fact: &'c Fact,
    pattern: Option<&'c Pattern>,
    excluded: &'c [&'c Pattern],
}

/// Where `later` stands behind `earlier`. `later` is split into cells, one listed pattern per
/// fact (hosts × paths × methods × ports); each cell must lie inside one earlier match.
pub(super) fn reach(later: &RuleMatch, earlier: &[&RuleMatch]) -> Reach {
    let mut facts: Vec<Constraint<'_>> = Vec::new();
    for condition in &later.conditions {
        let at = match facts.iter().position(|c| c.fact == &condition.fact) {
            Some(at) => at,
            None => {
                facts.push(Constraint {
                    fact: &condition.fact,
                    listed: None,
                    excluded: Vec::new(),
                });
                facts.len() - 1
            }
        };
        let constraint = &mut facts[at];
        // A second list for the same fact only narrows what matches; keeping the first is
        // sound (a larger set to cover).
        if constraint.listed.is_none() {
            constraint.listed = condition.any_of.as_deref();
        }
        constraint
            .excluded
            .extend(condition.none_of.iter().flatten());
    }
    let cells = facts.iter().try_fold(1usize, |product, c| {
        product
            .checked_mul(c.listed.map_or(1, <[Pattern]>::len))
            .filter(|n| *n <= MAX_CELLS)
    });
    let Some(cells) = cells else {
        return Reach::Reachable;
    };
    let mut covering = Vec::new();
    let mut any_cell = false;
    for number in 0..cells {
        // Cell `number`: one pattern per fact (mixed radix over the lists' lengths).
        let mut rest = number;
        let cell: Vec<Slice<'_>> = facts
            .iter()
            .map(|c| Slice {
                fact: c.fact,
                pattern: c.listed.map(|patterns| {
                    let pattern = &patterns[rest % patterns.len()];
                    rest /= patterns.len();
                    pattern
                }),
                excluded: &c.excluded,
            })
            .collect();
        let empty = cell
            .iter()
            .any(|slice| slice.excluded.iter().any(|out| covers(out, slice.pattern)));
        if empty {
            continue;
        }
        any_cell = true;
        match earlier.iter().position(|first| inside(&cell, first)) {
            Some(index) => covering.push(index),
            None => return Reach::Reachable,
        }
    }
    if !any_cell {
        return Reach::Empty;
    }
    covering.sort_unstable();
    covering.dedup();
    Reach::Shadowed(covering)
}

/// Whether every request in `cell` meets each of `first`'s conditions.
fn inside(cell: &[Slice<'_>], first: &RuleMatch) -> bool {
    first.conditions.iter().all(|condition| {
        let (pattern, excluded) = cell
            .iter()
            .find(|slice| *slice.fact == condition.fact)
            .map_or((None, &[][..]), |slice| (slice.pattern, slice.excluded));
        let listed = condition
            .any_of
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|q| covers(q, pattern)));
        // What `first` excludes is outside the cell, or excluded from it too.
        let not_excluded = condition.none_of.as_ref().is_none_or(|patterns| {
            patterns.iter().all(|out| {
                disjoint(pattern, out) || excluded.iter().any(|own| covers(own, Some(out)))
            })
        });
        listed && not_excluded
    })
}

/// Whether every value `inner` accepts (`None`: any value) `outer` accepts too.
fn covers(outer: &Pattern, inner: Option<&Pattern>) -> bool {
    let Some(inner) = inner else {
        return matches!(
            outer,
            Pattern::Path(PathPattern::Any) | Pattern::Host(HostPattern::Any)
        );
    };
    match (outer, inner) {
        (Pattern::Path(outer), Pattern::Path(inner)) => match (outer, inner) {
            (PathPattern::Any, _) => true,
            (_, PathPattern::Any) => false,
            (outer, PathPattern::Exact(path)) => outer.matches(path),
            (PathPattern::Prefix(outer), PathPattern::Prefix(inner)) => inner.starts_with(outer),
            (PathPattern::Suffix(outer), PathPattern::Suffix(inner)) => inner.ends_with(outer),
            _ => false,
        },
        (Pattern::Host(outer), Pattern::Host(inner)) => match (outer, inner) {
            (HostPattern::Any, _) => true,
            (_, HostPattern::Any) => false,
            (outer, HostPattern::Exact(host)) => outer.matches_host(host),
            // `*.a.example.com` lies inside `*.example.com`.
            (HostPattern::WildcardSuffix(outer), HostPattern::WildcardSuffix(inner)) => {
                inner.ends_with(outer.as_str())
            }
            _ => false,
        },
        (Pattern::Method(outer), Pattern::Method(inner)) => outer.eq_ignore_ascii_case(inner),
        (Pattern::Port(outer), Pattern::Port(inner)) => outer == inner,
        _ => false,
    }
}

/// Whether no value is accepted by both (`None`: any value).
fn disjoint(one: Option<&Pattern>, other: &Pattern) -> bool {
    let Some(one) = one else {
        return false;
    };
    match (one, other) {
        (Pattern::Path(one), Pattern::Path(other)) => match (one, other) {
            (PathPattern::Any, _) | (_, PathPattern::Any) => false,
            (PathPattern::Exact(path), pattern) | (pattern, PathPattern::Exact(path)) => {
                !pattern.matches(path)
            }
            (PathPattern::Prefix(a), PathPattern::Prefix(b)) => {
                !a.starts_with(b.as_str()) && !b.starts_with(a.as_str())
            }
            (PathPattern::Suffix(a), PathPattern::Suffix(b)) => {
                !a.ends_with(b.as_str()) && !b.ends_with(a.as_str())
            }
            // `/a/*` and `*.png` share `/a/x.png`.
            _ => false,
        },
        (Pattern::Host(one), Pattern::Host(other)) => match (one, other) {
            (HostPattern::Any, _) | (_, HostPattern::Any) => false,
            (HostPattern::Exact(host), pattern) | (pattern, HostPattern::Exact(host)) => {
                !pattern.matches_host(host)
            }
            (HostPattern::WildcardSuffix(a), HostPattern::WildcardSuffix(b)) => {
                !a.ends_with(b.as_str()) && !b.ends_with(a.as_str())
            }
        },
        (Pattern::Method(a), Pattern::Method(b)) => !a.eq_ignore_ascii_case(b),
        (Pattern::Port(a), Pattern::Port(b)) => a != b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(value: serde_json::Value) -> RuleMatch {
        request_match::parse_operation_match(&value, &At::Top.field("match")).unwrap()
    }

    fn reach_of(later: serde_json::Value, earlier: &[serde_json::Value]) -> Reach {
        let earlier: Vec<RuleMatch> = earlier.iter().cloned().map(parsed).collect();
        let refs: Vec<&RuleMatch> = earlier.iter().collect();
        reach(&parsed(later), &refs)
    }

    #[test]
    fn an_entry_inside_an_earlier_one_is_shadowed_by_it() {
        let cases = [
            (json!({"hosts": ["*"]}), json!({"hosts": ["a.internal"]})),
            (
                json!({"hosts": ["*.internal"]}),
                json!({"hosts": ["a.internal", "b.x.internal"]}),
            ),
            (
                json!({"hosts": ["*.internal"]}),
                json!({"hosts": ["*.pay.internal"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "paths": ["/api/*"]}),
                json!({"hosts": ["a.internal"], "paths": ["/api/v1/*", "/api/x"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "paths": ["*.json"]}),
                json!({"hosts": ["a.internal"], "paths": ["*/x.json", "/y.json"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "methods": ["GET", "POST"]}),
                json!({"hosts": ["a.internal"], "methods": ["POST"], "ports": ["8443"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "ports": ["443", "8443"]}),
                json!({"hosts": ["a.internal"], "ports": [8443]}),
            ),
            // What the earlier one excludes, the later one excludes or never asks for.
            (
                json!({"hosts": ["*.internal"], "notHosts": ["admin.internal"]}),
                json!({"hosts": ["pay.internal"]}),
            ),
            (
                json!({"hosts": ["*"], "notPaths": ["/health/*"]}),
                json!({"hosts": ["a.internal"], "paths": ["/api/*"]}),
            ),
            (
                json!({"hosts": ["*"], "notMethods": ["GET"]}),
                json!({"hosts": ["a.internal"], "notMethods": ["GET", "HEAD"]}),
            ),
        ];
        for (first, second) in cases {
            assert_eq!(
                reach_of(second.clone(), std::slice::from_ref(&first)),
                Reach::Shadowed(vec![0]),
                "{first} then {second}"
            );
        }
    }

    #[test]
    fn an_entry_that_reaches_requests_no_earlier_one_takes_is_reachable() {
        let cases = [
            (json!({"hosts": ["a.internal"]}), json!({"hosts": ["*"]})),
            // `*.internal` does not match `internal` itself.
            (
                json!({"hosts": ["*.internal"]}),
                json!({"hosts": ["internal"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "paths": ["/api/*"]}),
                json!({"hosts": ["a.internal"], "paths": ["/api"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "paths": ["/api/*"]}),
                json!({"hosts": ["a.internal"], "paths": ["*.json"]}),
            ),
            (
                json!({"hosts": ["*.internal"], "notHosts": ["admin.internal"]}),
                json!({"hosts": ["*.internal"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "methods": ["GET"]}),
                json!({"hosts": ["a.internal"]}),
            ),
            (
                json!({"hosts": ["a.internal"], "ports": ["443"]}),
                json!({"hosts": ["a.internal"], "ports": ["443", "8443"]}),
            ),
            (
                json!({"hosts": ["*"], "notPaths": ["/health/*"]}),
                json!({"hosts": ["a.internal"], "paths": ["/health/live"]}),
            ),
        ];
        for (first, second) in cases {
            assert_eq!(
                reach_of(second.clone(), std::slice::from_ref(&first)),
                Reach::Reachable,
                "{first} then {second}"
            );
        }
    }

    #[test]
    fn earlier_entries_together_can_shadow_one() {
        assert_eq!(
            reach_of(
                json!({"hosts": ["a.internal", "b.internal"], "methods": ["POST"]}),
                &[
                    json!({"hosts": ["c.internal"]}),
                    json!({"hosts": ["a.internal"]}),
                    json!({"hosts": ["b.internal"], "methods": ["POST", "PUT"]}),
                ]
            ),
            Reach::Shadowed(vec![1, 2])
        );
        assert_eq!(
            reach_of(
                json!({"hosts": ["a.internal", "b.internal"]}),
                &[
                    json!({"hosts": ["a.internal"]}),
                    json!({"hosts": ["b.internal"], "methods": ["POST"]}),
                ]
            ),
            Reach::Reachable,
            "GET to b.internal"
        );
    }

    #[test]
    fn an_entry_whose_exclusions_take_everything_matches_nothing() {
        assert_eq!(
            reach_of(
                json!({"hosts": ["a.internal", "b.a.internal"], "notHosts": ["*.internal"]}),
                &[]
            ),
            Reach::Empty
        );
        assert_eq!(
            reach_of(
                json!({"hosts": ["*"], "paths": ["/a/x"], "notPaths": ["/a/*"]}),
                &[]
            ),
            Reach::Empty
        );
        assert_eq!(
            reach_of(json!({"hosts": ["*"], "notPaths": ["/a/*"]}), &[]),
            Reach::Reachable
        );
    }
}
