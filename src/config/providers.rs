//! The `providers` part of the configuration: issuers, where their keys come from, where
//! their tokens arrive, and the claims they forward.

use super::*;

pub(super) const PROVIDER_FIELDS: &[&str] = &[
    "issuer",
    "issuerPattern",
    "tenants",
    "audiences",
    "jwksUri",
    "jwks",
    "jwksCluster",
    "fromHeaders",
    "fromParams",
    "fromCookies",
    "outputPayloadToHeader",
    "outputClaimToHeaders",
    "forwardOriginalToken",
    "timeout",
    "name",
    "clockSkewSeconds",
    "maxLifetimeSeconds",
    "jwksCacheSeconds",
    "scopeClaims",
    "algorithms",
    "jwksMinRefetchSeconds",
    "jwksMaxStaleSeconds",
    "revoked",
    "revocationUri",
    "revocationCluster",
    "revocationRefreshSeconds",
    "dpop",
    "certificateBound",
];

pub(super) const DEFAULT_TIMEOUT_MS: u64 = 5_000;
pub(super) const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;
pub(super) const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 7 * 24 * 3600;
pub(super) const DEFAULT_JWKS_CACHE_SECONDS: u64 = 600;
pub(super) const DEFAULT_JWKS_MIN_REFETCH_SECONDS: u64 = 30;
pub(super) const DEFAULT_JWKS_MAX_STALE_SECONDS: u64 = 24 * 3600;
pub(super) const DEFAULT_SCOPE_CLAIMS: [&str; 2] = ["scope", "scp"];

pub(super) fn parse_providers(value: &Value, path: &At<'_>) -> Parsed<Vec<Provider>> {
    let items = list(value, path)?;
    let mut providers: Vec<Provider> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = path.item(index);
        let (provider, name_given) = parse_provider(item, &item_path)?;
        // A token's `iss` selects its provider, so two providers may not claim the same issuer.
        if let Some((index, problem)) = issuer_conflict(&providers, &provider) {
            let field = if provider.tenancy.is_some() {
                "issuerPattern"
            } else {
                "issuer"
            };
            return Err(error(
                item_path.field(field),
                format!("{problem} providers[{index}]"),
            ));
        }
        if let Some(index) = providers.iter().position(|p| p.name == provider.name) {
            let (field, problem) = if name_given {
                ("name", format!("providers[{index}] already has this name"))
            } else {
                (
                    "issuer",
                    format!("the name defaults to the issuer, which providers[{index}] already has as its name"),
                )
            };
            return Err(error(item_path.field(field), problem));
        }
        // Metrics name providers by label: two that share one would share their counters.
        let label = metric_label(&provider.name);
        if let Some(index) = providers
            .iter()
            .position(|p| metric_label(&p.name) == label)
        {
            let field = if name_given { "name" } else { "issuer" };
            return Err(error(
                item_path.field(field),
                format!(
                    "the name \"{}\" and the name of providers[{index}] are both \"{label}\" in metric names: rename one",
                    provider.name
                ),
            ));
        }
        providers.push(provider);
    }
    Ok(providers)
}

/// `issuer`, or `issuerPattern` with its `tenants`: exactly one of the two. A pattern
/// provider's `issuer` is the pattern itself (its default name, and its keys' identity).
fn parse_issuer(provider: &Object<'_, '_>) -> Parsed<(String, Option<Tenancy>)> {
    let issuer = provider.optional("issuer", non_empty_string)?;
    let pattern = provider.optional("issuerPattern", parse_issuer_pattern)?;
    let tenants = provider.optional("tenants", parse_tenants)?;
    match (issuer, pattern, tenants) {
        (Some(issuer), None, None) => Ok((issuer, None)),
        (Some(_), Some(_), _) => Err(error(
            provider.path_of("issuerPattern"),
            "give either issuer or issuerPattern, not both",
        )),
        (Some(_), None, Some(_)) => Err(error(
            provider.path_of("tenants"),
            "is only for an issuerPattern",
        )),
        (None, Some(_), None) => Err(error(
            provider.path_of("tenants"),
            "required with issuerPattern: list the tenant ids, or \"*\" for any tenant",
        )),
        (None, Some((prefix, suffix)), Some(tenants)) => Ok((
            format!("{prefix}{{tenant}}{suffix}"),
            Some(Tenancy {
                prefix,
                suffix,
                tenants,
            }),
        )),
        (None, None, _) => Err(error(provider.path_of("issuer"), "required")),
    }
}

/// A provider's name as one metric-name segment: anything but ASCII letters and digits
/// becomes `_`.
pub fn metric_label(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Returns the provider and whether its `name` was given (rather than defaulted to the issuer).
pub(super) fn parse_provider(value: &Value, path: &At<'_>) -> Parsed<(Provider, bool)> {
    let provider = Object::new(value, path, PROVIDER_FIELDS)?;
    let (issuer, tenancy) = parse_issuer(&provider)?;
    let name = provider.optional("name", non_empty_string)?;
    let name_given = name.is_some();
    let keys = parse_key_source(&provider, &issuer)?;
    if tenancy.is_some() && matches!(keys, KeySource::Discovery(_)) {
        return Err(error(
            provider.path,
            "an issuerPattern needs jwksUri or jwks: discovery needs one issuer",
        ));
    }
    let (from_headers, from_params, from_cookies) = parse_token_locations(&provider)?;
    let algorithms = provider
        .optional("algorithms", |value, path| {
            parse_algorithms(value, path, matches!(keys, KeySource::Inline(_)))
        })?
        .unwrap_or_else(|| default_algorithms(&keys));
    let parsed = Provider {
        name: name.unwrap_or_else(|| issuer.clone()),
        issuer,
        tenancy,
        audiences: provider
            .optional("audiences", |value, path| {
                items(value, path, non_empty_string)
            })?
            .unwrap_or_default(),
        keys,
        from_headers,
        from_params,
        from_cookies,
        output_payload_to_header: provider.optional("outputPayloadToHeader", header_name)?,
        output_claim_to_headers: provider
            .optional("outputClaimToHeaders", |value, path| {
                items(value, path, parse_claim_to_header)
            })?
            .unwrap_or_default(),
        forward_original_token: provider
            .optional("forwardOriginalToken", boolean)?
            .unwrap_or(false),
        timeout_ms: provider
            .optional("timeout", parse_duration_ms)?
            .unwrap_or(DEFAULT_TIMEOUT_MS),
        clock_skew_seconds: provider
            .optional("clockSkewSeconds", non_negative_integer)?
            .unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS),
        // Access tokens are short-lived: 7 days covers every major IdP's default; 0: off.
        max_lifetime_seconds: match provider.optional("maxLifetimeSeconds", non_negative_integer)? {
            None => Some(DEFAULT_MAX_LIFETIME_SECONDS),
            Some(0) => None,
            seconds => seconds,
        },
        jwks_cache_seconds: provider
            .optional("jwksCacheSeconds", positive_integer)?
            .unwrap_or(DEFAULT_JWKS_CACHE_SECONDS),
        scope_claims: provider
            .optional("scopeClaims", |value, path| {
                non_empty_items(value, path, parse_claim_path)
            })?
            .unwrap_or_else(|| {
                DEFAULT_SCOPE_CLAIMS
                    .iter()
                    .map(|name| ClaimPath(vec![(*name).to_owned()]))
                    .collect()
            }),
        algorithms,
        jwks_cluster: provider.optional("jwksCluster", non_empty_string)?,
        jwks_min_refetch_seconds: provider
            .optional("jwksMinRefetchSeconds", non_negative_integer)?
            .unwrap_or(DEFAULT_JWKS_MIN_REFETCH_SECONDS),
        jwks_max_stale_seconds: provider
            .optional("jwksMaxStaleSeconds", non_negative_integer)?
            .unwrap_or(DEFAULT_JWKS_MAX_STALE_SECONDS),
        revoked: provider
            .optional("revoked", parse_revoked)?
            .unwrap_or_default(),
        revocation: parse_remote_revocation(&provider)?,
        dpop: match provider.optional("dpop", parse_dpop)? {
            Some(dpop) => dpop,
            None => parse_dpop(&serde_json::json!({}), &provider.path_of("dpop"))?,
        },
        certificate_bound: provider
            .optional("certificateBound", parse_binding)?
            .unwrap_or(Binding::Off),
    };
    Ok((parsed, name_given))
}

pub(super) fn parse_key_source(provider: &Object<'_, '_>, issuer: &str) -> Parsed<KeySource> {
    let inline = provider.optional("jwks", parse_inline_jwks)?;
    let uri = provider.optional("jwksUri", |value, path| {
        HttpUrl::parse(string(value, path)?, path)
    })?;
    let cluster = provider.optional("jwksCluster", non_empty_string)?;
    match (inline, uri) {
        (Some(_), Some(_)) => Err(error(
            provider.path_of("jwksUri"),
            "give either jwks or jwksUri, not both",
        )),
        (Some(jwks), None) => match cluster {
            Some(_) => Err(error(
                provider.path_of("jwksCluster"),
                "keys are never fetched for a provider with inline jwks",
            )),
            None => Ok(KeySource::Inline(jwks)),
        },
        (None, Some(url)) => Ok(KeySource::Remote(url.target(cluster))),
        (None, None) => {
            let url = discovery_url(issuer).ok_or_else(|| {
                error(
                    provider.path,
                    "no jwks or jwksUri, and issuer is not an http(s) URL to discover keys from",
                )
            })?;
            Ok(KeySource::Discovery(url.target(cluster)))
        }
    }
}

/// OpenID Connect Discovery 1.0 §4: `/.well-known/openid-configuration` appended to the
/// issuer after removing one terminating `/`. An issuer with a query cannot be discovered.
pub(super) fn discovery_url(issuer: &str) -> Option<HttpUrl> {
    let base = issuer.strip_suffix('/').unwrap_or(issuer);
    let issuer_url = HttpUrl::parse(base.to_owned(), &At::Top).ok()?;
    if issuer_url.path_and_query.contains('?') {
        return None;
    }
    let url = format!("{base}/.well-known/openid-configuration");
    HttpUrl::parse(url, &At::Top).ok()
}

/// Only the type here: the key set itself is checked once `limits` are known.
pub(super) fn parse_inline_jwks(value: &Value, path: &At<'_>) -> Parsed<String> {
    string(value, path)
}

/// A URL learnt at run time (a discovered `jwks_uri`) as a fetch target; `cluster` is the
/// configured `jwksCluster`, if any.
pub fn http_target(url: &str, cluster: Option<&str>) -> Result<HttpTarget, String> {
    HttpUrl::parse(url.to_owned(), &At::Top)
        .map(|parsed| parsed.target(cluster.map(str::to_owned)))
        .map_err(|e| e.problem)
}

/// An `http` or `https` URL, split the way a dispatched call needs it.
pub(super) struct HttpUrl {
    url: String,
    /// Lower-cased; an IPv6 literal keeps its brackets.
    host: String,
    explicit_port: Option<u16>,
    default_port: u16,
    /// Never empty: `/` when the URL has no path.
    path_and_query: String,
}

impl HttpUrl {
    pub(super) fn parse(url: String, path: &At<'_>) -> Parsed<HttpUrl> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| error(path, "not an http(s) URL"))?;
        let default_port = if scheme.eq_ignore_ascii_case("https") {
            443
        } else if scheme.eq_ignore_ascii_case("http") {
            80
        } else {
            return Err(error(path, "not an http(s) URL"));
        };
        // It becomes `:path` and `:authority` of a request, so only plain visible ASCII will do.
        if !rest
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\')
        {
            return Err(error(
                path,
                "contains a character that is not allowed in a URL (space, control, non-ASCII or '\\')",
            ));
        }
        if rest.contains('#') {
            return Err(error(path, "must not have a fragment"));
        }
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err(error(path, "must not contain userinfo"));
        }
        let (host, explicit_port) = split_host_port(authority, path)?;
        let path_and_query = if path_and_query.starts_with('/') {
            path_and_query.to_owned()
        } else {
            format!("/{path_and_query}")
        };
        Ok(HttpUrl {
            url,
            host,
            explicit_port,
            default_port,
            path_and_query,
        })
    }

    /// Where calls to this URL go; without a `cluster` override, Istio's name for the host's cluster.
    pub(super) fn target(self, cluster: Option<String>) -> HttpTarget {
        let port = self.explicit_port.unwrap_or(self.default_port);
        let cluster = cluster.unwrap_or_else(|| {
            // Istio names clusters after service hosts, which are never bracketed.
            let host = self.host.trim_start_matches('[').trim_end_matches(']');
            format!("outbound|{port}||{host}")
        });
        let authority = match self.explicit_port {
            Some(port) if port != self.default_port => format!("{}:{port}", self.host),
            _ => self.host,
        };
        HttpTarget {
            url: self.url,
            cluster,
            authority,
            path: self.path_and_query,
        }
    }
}

pub(super) fn split_host_port(authority: &str, path: &At<'_>) -> Parsed<(String, Option<u16>)> {
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        let (address, after) = literal
            .split_once(']')
            .ok_or_else(|| error(path, "has an unterminated IPv6 address"))?;
        let is_ipv6 = address.contains(':')
            && address
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !is_ipv6 {
            return Err(error(path, "has an invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| {
                error(
                    path,
                    "has something other than a port after the IPv6 address",
                )
            })?),
        };
        (format!("[{}]", address.to_ascii_lowercase()), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty() {
            return Err(error(path, "has no host"));
        }
        if !is_host_name(host) {
            return Err(error(path, "has an invalid host"));
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(digits) => {
            let number = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse::<u16>().ok())
                .flatten()
                .filter(|port| *port != 0);
            Some(number.ok_or_else(|| error(path, "port must be 1-65535"))?)
        }
    };
    Ok((host, port))
}

/// Returns `(fromHeaders, fromParams, fromCookies)`. As in Istio and Envoy, the default
/// `Authorization: Bearer` location applies only when no other location is configured.
pub(super) fn parse_token_locations(
    provider: &Object<'_, '_>,
) -> Parsed<(Vec<HeaderLocation>, Vec<String>, Vec<String>)> {
    let params = provider
        .optional("fromParams", |value, path| {
            items(value, path, non_empty_string)
        })?
        .unwrap_or_default();
    let cookies = provider
        .optional("fromCookies", |value, path| {
            items(value, path, non_empty_string)
        })?
        .unwrap_or_default();
    let headers = provider.optional("fromHeaders", |value, path| {
        items(value, path, parse_header_location)
    })?;
    let headers = match headers {
        Some(headers) => headers,
        None if params.is_empty() && cookies.is_empty() => vec![HeaderLocation {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        }],
        None => Vec::new(),
    };
    if headers.is_empty() && params.is_empty() && cookies.is_empty() {
        return Err(error(
            provider.path_of("fromHeaders"),
            "is empty and there are no fromParams or fromCookies: a token could never be found",
        ));
    }
    Ok((headers, params, cookies))
}

pub(super) fn parse_header_location(value: &Value, path: &At<'_>) -> Parsed<HeaderLocation> {
    let location = Object::new(value, path, &["name", "prefix"])?;
    Ok(HeaderLocation {
        name: location.required("name", header_name)?,
        prefix: location.optional("prefix", string)?.unwrap_or_default(),
    })
}

pub(super) fn parse_claim_to_header(value: &Value, path: &At<'_>) -> Parsed<ClaimToHeader> {
    let output = Object::new(value, path, &["header", "claim"])?;
    Ok(ClaimToHeader {
        header: output.required("header", header_name)?,
        claim: output.required("claim", parse_claim_path)?,
    })
}

/// An HTTP field name (RFC 9110 token), returned lower-cased as HTTP/2 carries it.
pub(super) fn header_name(value: &Value, path: &At<'_>) -> Parsed<String> {
    let name = non_empty_string(value, path)?;
    if name.starts_with(':') {
        return Err(error(path, "pseudo-headers cannot be used"));
    }
    if !is_token(&name) {
        return Err(error(path, "not a valid HTTP header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// A DNS name or IPv4 address as it appears in a URL or `:authority` (no percent-encoding).
pub(super) fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// RFC 9110 `token`: header names and methods.
pub(super) fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `"5s"`, `"500ms"`, `"1.5s"`, `"2m"`, `"1h"` in milliseconds.
pub(super) fn parse_duration_ms(value: &Value, path: &At<'_>) -> Parsed<u64> {
    let text = string(value, path)?;
    if text.starts_with('-') {
        return Err(error(path, "must not be negative"));
    }
    let malformed = || error(path, "not a duration like \"5s\", \"500ms\" or \"1.5s\"");
    let (number, unit_ms) = if let Some(number) = text.strip_suffix("ms") {
        (number, 1)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1_000)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60_000)
    } else if let Some(number) = text.strip_suffix('h') {
        (number, 3_600_000)
    } else {
        return Err(malformed());
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) if !fraction.is_empty() => (whole, fraction),
        Some(_) => return Err(malformed()),
        None => (number, ""),
    };
    let all_digits = |digits: &str| digits.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(malformed());
    }
    let too_large = || error(path, "is too large");
    let not_whole_ms = || error(path, "must be a whole number of milliseconds");
    let whole_ms = whole
        .parse::<u64>()
        .ok()
        .and_then(|whole| whole.checked_mul(unit_ms))
        .ok_or_else(too_large)?;
    let fraction = fraction.trim_end_matches('0');
    // Nine decimals are enough for any whole number of milliseconds in these units.
    let fraction_ms = if fraction.is_empty() {
        0
    } else {
        let digits = u32::try_from(fraction.len())
            .ok()
            .filter(|digits| *digits <= 9)
            .ok_or_else(not_whole_ms)?;
        let denominator = 10u64.checked_pow(digits).ok_or_else(not_whole_ms)?;
        let scaled = fraction
            .parse::<u64>()
            .ok()
            .and_then(|numerator| numerator.checked_mul(unit_ms))
            .ok_or_else(too_large)?;
        if scaled % denominator != 0 {
            return Err(not_whole_ms());
        }
        scaled / denominator
    };
    let ms = whole_ms.checked_add(fraction_ms).ok_or_else(too_large)?;
    if ms == 0 {
        return Err(error(path, "must be greater than zero"));
    }
    Ok(ms)
}

pub(super) fn parse_algorithms(value: &Value, path: &At<'_>, inline_keys: bool) -> Parsed<AlgSet> {
    let algorithms = non_empty_items(value, path, |value, path| {
        let name = string(value, path)?;
        if name.eq_ignore_ascii_case("none") {
            return Err(error(path, "unsecured tokens cannot be allowed"));
        }
        let alg = Alg::from_name(&name).ok_or_else(|| {
            let supported: Vec<&str> = Alg::ALL.iter().map(|alg| alg.name()).collect();
            error(
                path,
                format!(
                    "unknown algorithm (supported: {}; names are case-sensitive)",
                    supported.join(", ")
                ),
            )
        })?;
        // An HMAC key is a shared secret: it can only be configured, never fetched.
        if alg.key_family() == KeyFamily::Oct && !inline_keys {
            return Err(error(
                path,
                format!("{alg} needs the HMAC key inline in jwks"),
            ));
        }
        Ok(alg)
    })?;
    reject_duplicates(&algorithms, path)?;
    Ok(algorithms.into_iter().collect())
}

/// All algorithms, except HMAC for fetched keys: an HMAC key is a secret and is never fetched.
pub(super) fn default_algorithms(keys: &KeySource) -> AlgSet {
    match keys {
        KeySource::Inline(_) => AlgSet::all(),
        KeySource::Remote(_) | KeySource::Discovery(_) => Alg::ALL
            .into_iter()
            .filter(|alg| alg.key_family() != KeyFamily::Oct)
            .collect(),
    }
}

pub(super) fn parse_claim_path(value: &Value, path: &At<'_>) -> Parsed<ClaimPath> {
    match value {
        Value::String(dotted) => {
            if dotted.is_empty() {
                return Err(error(path, "must not be empty"));
            }
            let names: Vec<String> = dotted.split('.').map(str::to_owned).collect();
            if names.iter().any(String::is_empty) {
                return Err(error(
                    path,
                    "has an empty name between dots (for names with dots, use a list of names)",
                ));
            }
            Ok(ClaimPath(names))
        }
        Value::Array(_) => Ok(ClaimPath(non_empty_items(value, path, non_empty_string)?)),
        _ => Err(error(
            path,
            "expected a claim path: a dotted string or a list of names",
        )),
    }
}
