//! The rules a request's path can match, found without looking at every rule: built once per
//! configuration from each rule's `paths` (exact, prefix, suffix), so a gateway with thousands
//! of rules checks only the few whose paths could match. First-match order is kept: the
//! candidates are checked in rule order, and a rule left out could only have missed on its path,
//! a request condition that comes before any token condition (so leaving it out changes neither
//! the rule chosen nor whether a token would have helped).

use crate::config::{Condition, Fact, PathPattern, Pattern, Rule};
use std::collections::HashMap;

/// Below this many rules a plain scan is as fast as an index lookup.
const INDEXED_FROM: usize = 16;

#[derive(Debug, Clone, Default)]
pub struct RuleIndex {
    /// `None`: not built (few rules, or a configuration made by hand): every rule is a candidate.
    paths: Option<PathIndex>,
}

#[derive(Debug, Clone, Default)]
struct PathIndex {
    /// Rules whose path the index cannot rule out: no `paths`, or `*` among them.
    always: Vec<u32>,
    exact: HashMap<String, Vec<u32>>,
    prefixes: HashMap<String, Vec<u32>>,
    /// The distinct lengths of `prefixes`' keys, ascending: a path is looked up at each.
    prefix_lengths: Vec<usize>,
    suffixes: HashMap<String, Vec<u32>>,
    suffix_lengths: Vec<usize>,
}

/// Rule indexes to check, ascending.
pub enum Candidates {
    All(std::ops::Range<usize>),
    Some(std::vec::IntoIter<u32>),
}

impl Iterator for Candidates {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        match self {
            Candidates::All(range) => range.next(),
            Candidates::Some(indexes) => indexes.next().map(|i| i as usize),
        }
    }
}

impl RuleIndex {
    pub fn build(rules: &[Rule]) -> RuleIndex {
        if rules.len() < INDEXED_FROM || u32::try_from(rules.len()).is_err() {
            return RuleIndex::default();
        }
        let mut index = PathIndex::default();
        for (at, rule) in rules.iter().enumerate() {
            let at = at as u32;
            let patterns = rule
                .matcher
                .conditions
                .iter()
                .find(|c| c.fact == Fact::Path && c.any_of.is_some())
                .and_then(path_patterns);
            let Some(patterns) = patterns.filter(|p| !p.iter().any(|p| **p == PathPattern::Any))
            else {
                index.always.push(at);
                continue;
            };
            for pattern in patterns {
                let (map, key) = match pattern {
                    PathPattern::Exact(path) => (&mut index.exact, path),
                    PathPattern::Prefix(prefix) => (&mut index.prefixes, prefix),
                    PathPattern::Suffix(suffix) => (&mut index.suffixes, suffix),
                    PathPattern::Any => continue,
                };
                let entry = map.entry(key.clone()).or_default();
                if entry.last() != Some(&at) {
                    entry.push(at);
                }
            }
        }
        index.prefix_lengths = distinct_lengths(&index.prefixes);
        index.suffix_lengths = distinct_lengths(&index.suffixes);
        RuleIndex { paths: Some(index) }
    }

    /// The rules that can match a request with this (normalised) path, in rule order.
    pub fn candidates(&self, rules: usize, path: &str) -> Candidates {
        let Some(index) = &self.paths else {
            return Candidates::All(0..rules);
        };
        let mut found: Vec<u32> = index.always.clone();
        if let Some(hits) = index.exact.get(path) {
            found.extend_from_slice(hits);
        }
        for &len in index
            .prefix_lengths
            .iter()
            .take_while(|&&len| len <= path.len())
        {
            if let Some(hits) = path.get(..len).and_then(|p| index.prefixes.get(p)) {
                found.extend_from_slice(hits);
            }
        }
        for &len in index
            .suffix_lengths
            .iter()
            .take_while(|&&len| len <= path.len())
        {
            if let Some(hits) = path
                .get(path.len() - len..)
                .and_then(|s| index.suffixes.get(s))
            {
                found.extend_from_slice(hits);
            }
        }
        found.sort_unstable();
        found.dedup();
        Candidates::Some(found.into_iter())
    }
}

fn path_patterns(condition: &Condition) -> Option<Vec<&PathPattern>> {
    condition
        .any_of
        .as_ref()?
        .iter()
        .map(|pattern| match pattern {
            Pattern::Path(path) => Some(path),
            _ => None,
        })
        .collect()
}

fn distinct_lengths(keys: &HashMap<String, Vec<u32>>) -> Vec<usize> {
    let mut lengths: Vec<usize> = keys.keys().map(String::len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    lengths
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::NoPeer;
    use crate::policy::{select, Applies, RequestFacts, TokenClaims};
    use serde_json::{json, Value};
    use std::rc::Rc;

    /// xorshift64*: the same cases on every run.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const SEGMENTS: &[&str] = &["a", "ab", "b", "orders", "v1", "x.png", "api"];

    fn path(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(3);
        (0..depth)
            .map(|_| format!("/{}", rng.pick(SEGMENTS)))
            .collect()
    }

    fn path_pattern(rng: &mut Rng) -> String {
        match rng.below(6) {
            0 => "*".to_string(),
            1 => format!("*{}", rng.pick(&[".png", "b", "/v1", "s"])),
            2 | 3 => {
                let base = path(rng);
                let cut = 1 + rng.below(base.len());
                format!("{}*", &base[..cut])
            }
            _ => path(rng),
        }
    }

    fn random_rule(rng: &mut Rng, at: usize) -> Value {
        let mut matcher = serde_json::Map::new();
        if rng.below(5) != 0 {
            let n = 1 + rng.below(3);
            matcher.insert(
                "paths".into(),
                json!((0..n).map(|_| path_pattern(rng)).collect::<Vec<_>>()),
            );
        }
        if rng.below(4) == 0 {
            matcher.insert("notPaths".into(), json!([path_pattern(rng)]));
        }
        if rng.below(3) == 0 {
            matcher.insert("methods".into(), json!([rng.pick(&["GET", "POST"])]));
        }
        if rng.below(4) == 0 {
            matcher.insert(
                "hosts".into(),
                json!([rng.pick(&["a.example.com", "*.example.com"])]),
            );
        }
        if rng.below(5) == 0 {
            matcher.insert(
                "requestPrincipals".into(),
                json!([rng.pick(&["https://idp/alice", "*"])]),
            );
        }
        let mut rule = json!({"name": format!("r{at}"), "match": matcher});
        match rng.below(3) {
            0 => rule["deny"] = json!(true),
            1 => rule["allowAnonymous"] = json!(true),
            _ => rule["requires"] = json!({}),
        }
        rule
    }

    #[test]
    fn the_index_chooses_what_checking_every_rule_in_order_chooses() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut compared = 0;
        let mut indexed_matches = 0;
        for round in 0..300 {
            let count = INDEXED_FROM + rng.below(60);
            let rules: Vec<Value> = (0..count).map(|at| random_rule(&mut rng, at)).collect();
            let text = json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/k"}],
                              "rules": rules, "unmatched": "deny"})
            .to_string();
            let config = crate::config::parse(&text).unwrap();
            let indexed = RuleIndex::build(&config.rules);
            assert!(indexed.paths.is_some(), "round {round}: not indexed");
            let linear = RuleIndex::default();
            for _ in 0..40 {
                let path = path(&mut rng);
                let method = rng.pick(&["GET", "POST"]);
                let host = rng.pick(&["a.example.com", "b.example.com", "other"]);
                let claims: TokenClaims = match rng.below(3) {
                    0 => None,
                    _ => Some(Rc::new(
                        json!({"iss": "https://idp", "sub": rng.pick(&["alice", "bob"])})
                            .as_object()
                            .cloned()
                            .unwrap(),
                    )),
                };
                let facts = RequestFacts {
                    method,
                    path: &path,
                    host,
                    headers: &[],
                    peer: &NoPeer,
                };
                let outcome = |rule_index: &RuleIndex| {
                    let mut asked = 0;
                    let selection = select(&config, rule_index, &facts, &mut || {
                        asked += 1;
                        Ok::<TokenClaims, ()>(claims.clone())
                    })
                    .unwrap();
                    let chosen = match selection.applies {
                        Applies::Rule(rule) => Some(rule.name.clone()),
                        Applies::Unmatched(_) => None,
                    };
                    (chosen, selection.token_would_help, asked > 0)
                };
                let (by_index, by_scan) = (outcome(&indexed), outcome(&linear));
                assert_eq!(
                    by_index, by_scan,
                    "{method} {host} {path} with rules {text}"
                );
                compared += 1;
                indexed_matches += usize::from(by_index.0.is_some());
            }
        }
        assert_eq!(compared, 300 * 40);
        assert!(
            indexed_matches > compared / 4,
            "the cases must reach rules: {indexed_matches}"
        );
    }

    #[test]
    fn only_rules_whose_paths_can_match_are_candidates() {
        let mut rules: Vec<Value> = (0..20)
            .map(|i| json!({"match": {"paths": [format!("/svc{i}/*")]}, "requires": {}}))
            .collect();
        rules.push(json!({"match": {"paths": ["/exact"]}, "deny": true}));
        rules.push(json!({"match": {"paths": ["*.png"]}, "allowAnonymous": true}));
        rules.push(json!({"match": {"methods": ["POST"]}, "deny": true}));
        let config = crate::config::parse(
            &json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/k"}], "rules": rules})
                .to_string(),
        )
        .unwrap();
        let rule_index = RuleIndex::build(&config.rules);
        let candidates = |path: &str| -> Vec<usize> {
            rule_index.candidates(config.rules.len(), path).collect()
        };
        assert_eq!(candidates("/svc7/orders"), [7, 22]);
        assert_eq!(candidates("/svc1/logo.png"), [1, 21, 22]);
        assert_eq!(candidates("/exact"), [20, 22]);
        assert_eq!(
            candidates("/nothing"),
            [22],
            "the rule without paths is always checked"
        );
    }
}
