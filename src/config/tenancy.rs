//! `issuerPattern` and `tenants`: one provider for the many tenants of a multi-tenant IdP
//! (Microsoft Entra ID: `https://login.microsoftonline.com/{tenant}/v2.0`), whose tenants
//! share one key set.

use super::*;

/// A multi-tenant issuer: `iss` is `prefix` + a tenant + `suffix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenancy {
    pub prefix: String,
    pub suffix: String,
    /// `tenants`; `None`: `"*"`, any tenant.
    pub tenants: Option<Vec<String>>,
}

const PLACEHOLDER: &str = "{tenant}";

impl Tenancy {
    /// The tenant part of `iss`, listed or not: one whole path segment, never empty.
    pub fn tenant_in<'a>(&self, iss: &'a str) -> Option<&'a str> {
        let tenant = iss.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        (!tenant.is_empty() && !tenant.contains('/')).then_some(tenant)
    }

    pub fn admits(&self, tenant: &str) -> bool {
        self.tenants
            .as_ref()
            .is_none_or(|tenants| tenants.iter().any(|t| t == tenant))
    }

    /// Whether some `iss` could match both: unless their fixed parts differ where both have
    /// one, a string can be built that each reads with its own tenant. (Two patterns of one
    /// shape are one provider with both tenant lists.)
    fn could_overlap(&self, other: &Tenancy) -> bool {
        let prefixes_agree =
            self.prefix.starts_with(&other.prefix) || other.prefix.starts_with(&self.prefix);
        let suffixes_agree =
            self.suffix.ends_with(&other.suffix) || other.suffix.ends_with(&self.suffix);
        prefixes_agree && suffixes_agree
    }
}

impl Provider {
    /// Whether a token with this `iss` is this provider's: equal to `issuer`, or of the
    /// shape of `issuerPattern` (whether its tenant is listed is checked apart, so that an
    /// unlisted tenant is refused as such).
    pub fn issues(&self, iss: &str) -> bool {
        match &self.tenancy {
            None => self.issuer == iss,
            Some(tenancy) => tenancy.tenant_in(iss).is_some(),
        }
    }

    /// The tenant of a multi-tenant provider's token.
    pub fn tenant_of<'a>(&self, iss: &'a str) -> Option<&'a str> {
        self.tenancy.as_ref()?.tenant_in(iss)
    }
}

impl Config {
    /// The provider whose issuer a token names. Configuration makes it unique.
    pub fn provider_for(&self, iss: &str) -> Option<(usize, &Provider)> {
        self.providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.issues(iss))
    }
}

/// `issuerPattern`: an http(s) issuer with `{tenant}` as one whole path segment.
pub(super) fn parse_issuer_pattern(value: &Value, path: &At<'_>) -> Parsed<(String, String)> {
    let pattern = non_empty_string(value, path)?;
    let (prefix, suffix) = pattern
        .split_once(PLACEHOLDER)
        .ok_or_else(|| error(path, "has no {tenant}; use issuer for a single issuer"))?;
    if suffix.contains(PLACEHOLDER) {
        return Err(error(path, "has {tenant} more than once"));
    }
    let whole_segment = prefix.ends_with('/')
        && prefix
            .split_once("://")
            .is_some_and(|(_, rest)| rest.contains('/'))
        && (suffix.is_empty() || suffix.starts_with('/'));
    if !whole_segment {
        return Err(error(
            path,
            "{tenant} must be a whole path segment, as in https://login.microsoftonline.com/{tenant}/v2.0",
        ));
    }
    // The rest must read as a URL, with a stand-in tenant.
    HttpUrl::parse(format!("{prefix}tenant{suffix}"), path)?;
    Ok((prefix.to_string(), suffix.to_string()))
}

/// `tenants`: `"*"` or a non-empty list of tenant ids.
pub(super) fn parse_tenants(value: &Value, path: &At<'_>) -> Parsed<Option<Vec<String>>> {
    if value.as_str() == Some("*") {
        return Ok(None);
    }
    let tenants = non_empty_items(value, path, |value, path| {
        let tenant = non_empty_string(value, path)?;
        if tenant.contains('/') || tenant == "*" {
            return Err(error(
                path,
                "must be a tenant id (no '/'), or the whole field \"*\"",
            ));
        }
        Ok(tenant)
    })?;
    reject_duplicates(&tenants, path)?;
    Ok(Some(tenants))
}

/// A token's `iss` selects its provider, so no `iss` may be claimed by two providers.
pub(super) fn issuer_conflict(providers: &[Provider], new: &Provider) -> Option<(usize, String)> {
    providers.iter().enumerate().find_map(|(index, old)| {
        let problem = match (&old.tenancy, &new.tenancy) {
            (None, None) => (old.issuer == new.issuer).then(|| "same issuer as".to_string()),
            (Some(_), None) => old
                .issues(&new.issuer)
                .then(|| "is an issuer the issuerPattern of".to_string()),
            (None, Some(tenancy)) => tenancy
                .tenant_in(&old.issuer)
                .is_some()
                .then(|| "matches the issuer of".to_string()),
            (Some(a), Some(b)) => a
                .could_overlap(b)
                .then(|| "could match the same issuers as the issuerPattern of".to_string()),
        }?;
        Some((index, problem))
    })
}
