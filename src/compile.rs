//! What configuring means, in one place: the configuration as the contract gives it
//! ([`config`], plain data) compiled into what the filter runs — the rule index, the key sets
//! of inline `jwks`, the protected resources with their defaults, normalised DPoP origins.
//! The filter's `on_configure` and every command of the `mesh-oauth` tool configure through
//! [`configure`], so they accept and refuse the same configurations with the same words.
//!
//! Everything here is derived from the configuration and built anew with it: nothing can
//! go stale, and a configuration made by hand runs once it is compiled.

use crate::config::{
    self, Action, Config, ConfigError, KeySource, ProtectedResource, Requirement, Rule,
};
use crate::keys::{self, JwksLimits, KeySet};
use crate::path::normalize_origin;
use crate::policy::{self, RuleIndex};
use std::sync::Arc;

/// A configuration ready to run. Reads as the [`Config`] it was compiled from (`Deref`), so a
/// stage that needs only the contract takes `&Config` and is handed `&Compiled` as it is.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// As parsed, but for `providers[].dpop.origins`, normalised (`scheme://host[:port]`).
    pub config: Config,
    /// The rules each path can match (default: every rule, in order).
    pub rule_index: RuleIndex,
    /// `config.protected_resources` with their defaults: the providers' issuers as
    /// authorization servers, the rules' scopes as the scopes supported.
    pub resources: Vec<ProtectedResource>,
    /// Per provider, the key set of its inline `jwks`, parsed here once (the key store shares it).
    pub inline_keys: Vec<Option<Arc<KeySet>>>,
}

impl std::ops::Deref for Compiled {
    type Target = Config;

    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Compiled {
    /// The protected resource a request to `authority` is for: the first whose `hosts` match,
    /// else the one without `hosts`.
    pub fn resource_for(&self, authority: &str) -> Option<&ProtectedResource> {
        let listed = self.resources.iter().find(|r| {
            r.hosts
                .as_ref()
                .is_some_and(|hosts| hosts.iter().any(|h| policy::host_matches(h, authority)))
        });
        listed.or_else(|| self.resources.iter().find(|r| r.hosts.is_none()))
    }
}

/// Parses, validates and compiles the plugin configuration JSON: what the filter does when
/// Envoy configures it.
pub fn configure(json: &str) -> Result<Compiled, ConfigError> {
    compile(config::parse(json)?)
}

/// Builds what runs from a parsed (or hand-made) configuration. Refuses what only a stage's
/// own parser can tell: an inline `jwks` without a usable key, a DPoP origin that is none.
pub fn compile(mut config: Config) -> Result<Compiled, ConfigError> {
    // Compared with a proof's `htu` as RFC 9449 §4.3 asks (RFC 3986 §6.2.2, §6.2.3:
    // case-insensitive scheme and host, default port dropped), so normalised alike.
    for (i, provider) in config.providers.iter_mut().enumerate() {
        for (j, origin) in provider.dpop.origins.iter_mut().flatten().enumerate() {
            *origin = normalize_origin(origin).ok_or_else(|| ConfigError {
                path: format!("providers[{i}].dpop.origins[{j}]"),
                problem:
                    "expected an origin: http(s)://host[:port], without path, query or fragment"
                        .to_owned(),
            })?;
        }
    }
    let jwks_limits = JwksLimits::from(&config.limits);
    let inline_keys = config
        .providers
        .iter()
        .enumerate()
        .map(|(i, provider)| match &provider.keys {
            KeySource::Inline(jwks) => keys::parse_jwks(jwks.as_bytes(), &jwks_limits, true)
                .map(|set| Some(Arc::new(set)))
                .map_err(|e| ConfigError {
                    path: format!("providers[{i}].jwks"),
                    problem: e.describe().to_owned(),
                }),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Compiled {
        rule_index: RuleIndex::build(&config.rules),
        resources: resolved_resources(&config),
        inline_keys,
        config,
    })
}

fn resolved_resources(config: &Config) -> Vec<ProtectedResource> {
    let mut resources = config.protected_resources.clone();
    for resource in &mut resources {
        if resource.authorization_servers.is_empty() {
            // A pattern is no issuer identifier: its tenants' issuers are listed explicitly.
            resource.authorization_servers = config
                .providers
                .iter()
                .filter(|p| p.tenancy.is_none())
                .map(|p| p.issuer.clone())
                .collect();
        }
        if resource.scopes_supported.is_empty() {
            resource.scopes_supported = rule_scopes(&config.rules);
        }
    }
    resources
}

/// Every scope a rule requires, in first-appearance order.
fn rule_scopes(rules: &[Rule]) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for rule in rules {
        let requirements: &[Requirement] = match &rule.action {
            Action::Requires(requirement) => std::slice::from_ref(requirement),
            Action::RequiresAny(requirements) => requirements,
            _ => &[],
        };
        for scope in requirements.iter().flat_map(|r| &r.scopes) {
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
    }
    scopes
}

#[cfg(test)]
mod tests;
