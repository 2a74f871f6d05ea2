//! Finding the bearer token in a request: configured headers (prefix matched
//! case-insensitively), query parameters and cookies of every provider.

use crate::config::{Binding, Provider};
use std::borrow::Cow;

/// Where a token was found; the provider that verifies it must list this location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// Lower-case header name and the prefix that matched.
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found<'r> {
    /// Borrowed from the request, but for a query parameter (percent-decoded).
    pub token: Cow<'r, str>,
    pub location: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtractError {
    /// Two locations, or one location twice, carried a token (RFC 6750 §2: one method only).
    MultipleTokens,
}

/// RFC 9449 §7.1: a DPoP-bound token arrives as `Authorization: DPoP <token>`.
pub const DPOP_PREFIX: &str = "DPoP ";

/// The header locations a provider reads: its `fromHeaders`, and the DPoP scheme when it
/// accepts DPoP.
fn header_locations(provider: &Provider) -> impl Iterator<Item = (&str, &str)> {
    let dpop = (provider.dpop.mode != Binding::Off).then_some(("authorization", DPOP_PREFIX));
    provider
        .from_headers
        .iter()
        .map(|h| (h.name.as_str(), h.prefix.as_str()))
        .chain(dpop)
}

impl Location {
    /// Whether the token came with the DPoP scheme.
    pub fn is_dpop(&self) -> bool {
        matches!(self, Location::Header { name, prefix }
            if name == "authorization" && prefix.eq_ignore_ascii_case(DPOP_PREFIX))
    }

    pub fn is_listed_by(&self, provider: &Provider) -> bool {
        match self {
            Location::Header { name, prefix } => {
                header_locations(provider).any(|(n, p)| n == name && p.eq_ignore_ascii_case(prefix))
            }
            Location::Param(name) => provider.from_params.contains(name),
            Location::Cookie(name) => provider.from_cookies.contains(name),
        }
    }
}

/// The request pieces extraction needs. `headers` holds every header the request carries,
/// names lower-case, repeated names as separate entries.
pub struct RequestParts<'a> {
    pub headers: &'a [(&'a str, &'a str)],
    /// The raw `:path`, query included.
    pub path: &'a str,
}

impl<'r> RequestParts<'r> {
    pub fn header_values<'h>(&'h self, name: &'h str) -> impl Iterator<Item = &'r str> + 'h {
        self.headers
            .iter()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| *v)
    }

    pub fn query(&self) -> Option<&str> {
        let without_fragment = self.path.split('#').next().unwrap_or_default();
        without_fragment.split_once('?').map(|(_, q)| q)
    }
}

/// Looks in every location any provider lists. None found: `Ok(None)`.
pub fn find_token<'r>(
    providers: &[Provider],
    request: &RequestParts<'r>,
) -> Result<Option<Found<'r>>, ExtractError> {
    let mut found: Option<Found<'r>> = None;
    let mut record = |token: Cow<'r, str>, location: Location| -> Result<(), ExtractError> {
        match &found {
            // The same location listed by two providers is one location, not two tokens.
            Some(first) if first.location == location && first.token == token => Ok(()),
            Some(_) => Err(ExtractError::MultipleTokens),
            None => {
                found = Some(Found { token, location });
                Ok(())
            }
        }
    };

    // A location several providers (or one twice) list is read once: at its first listing.
    // Looked up among the earlier ones rather than kept in a list: no allocation per request.
    for (index, provider) in providers.iter().enumerate() {
        let earlier = providers.get(..index).unwrap_or_default();
        for (position, key) in header_locations(provider).enumerate() {
            let (name, prefix) = key;
            let same = |(n, p): (&str, &str)| n == name && p.eq_ignore_ascii_case(prefix);
            if earlier.iter().flat_map(header_locations).any(same)
                || header_locations(provider).take(position).any(same)
            {
                continue;
            }
            for value in request.header_values(name) {
                // Envoy folds repeated headers into one value joined by commas; a JWT never
                // holds a comma, so two prefixed pieces are two tokens.
                // Any scheme counts: `DPoP <a>, Bearer <b>` is two tokens, not one odd one.
                let prefixed = value
                    .split(',')
                    .filter(|piece| {
                        providers
                            .iter()
                            .flat_map(header_locations)
                            .filter(|(n, _)| *n == name)
                            .any(|(_, p)| strip_prefix_ignore_case(piece.trim_start(), p).is_some())
                    })
                    .count();
                if prefixed > 1 {
                    return Err(ExtractError::MultipleTokens);
                }
                if let Some(token) = strip_prefix_ignore_case(value, prefix) {
                    record(
                        Cow::Borrowed(token),
                        Location::Header {
                            name: name.to_owned(),
                            prefix: prefix.to_owned(),
                        },
                    )?;
                }
            }
        }
        for (position, name) in provider.from_params.iter().enumerate() {
            if listed_earlier(earlier, provider, position, |p| &p.from_params) {
                continue;
            }
            for value in query_values(request.query(), name) {
                record(Cow::Owned(value), Location::Param(name.clone()))?;
            }
        }
        for (position, name) in provider.from_cookies.iter().enumerate() {
            if listed_earlier(earlier, provider, position, |p| &p.from_cookies) {
                continue;
            }
            for header in request.header_values("cookie") {
                for value in cookie_values(header, name) {
                    record(Cow::Borrowed(value), Location::Cookie(name.clone()))?;
                }
            }
        }
    }
    Ok(found)
}

fn strip_prefix_ignore_case<'v>(value: &'v str, prefix: &str) -> Option<&'v str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| value.get(prefix.len()..))
        .flatten()
}

fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| is_param(pair, name))
        .map(|pair| {
            let (_, value) = split_pair(pair);
            // An undecodable value still counts as a token: it is refused later as malformed.
            percent_decode(value).unwrap_or_else(|| value.to_string())
        })
        .collect()
}

/// A query pair at its first `=`; without one, the value is empty.
fn split_pair(pair: &str) -> (&str, &str) {
    pair.split_once('=').unwrap_or((pair, ""))
}

/// Whether a query pair is the parameter `name` (compared after percent-decoding its key).
/// Whether entry `position` of `list` of `provider` was listed before: by an `earlier`
/// provider, or earlier in the same list.
fn listed_earlier(
    earlier: &[Provider],
    provider: &Provider,
    position: usize,
    list: fn(&Provider) -> &Vec<String>,
) -> bool {
    let own = list(provider);
    own.get(position).is_some_and(|name| {
        earlier.iter().any(|p| list(p).contains(name))
            || own
                .get(..position)
                .is_some_and(|before| before.contains(name))
    })
}

fn is_param(pair: &str, name: &str) -> bool {
    percent_decode(split_pair(pair).0).as_deref() == Some(name)
}

fn cookie_values<'h: 'n, 'n>(header: &'h str, name: &'n str) -> impl Iterator<Item = &'h str> + 'n {
    header.split(';').filter_map(move |pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// Decodes `%XX` and `+` (form encoding) in a query component; invalid escapes → `None`.
fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = input.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The `:path` with every occurrence of the query parameter `name` removed, so a token carried
/// in the query does not travel upstream.
pub fn path_without_param(path: &str, name: &str) -> String {
    let (before_fragment, fragment) = match path.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (path, None),
    };
    let Some((base, query)) = before_fragment.split_once('?') else {
        return path.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !is_param(pair, name))
        .collect();
    let mut out = base.to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// A `cookie` header value without the cookie `name`; `None` when nothing is left.
pub fn cookie_header_without(header: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k).trim() != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers(extra: &str) -> Vec<Provider> {
        let json = format!(
            r#"{{"providers":[{{"issuer":"https://idp.example.com","jwksUri":"https://idp.example.com/jwks"{extra}}}]}}"#
        );
        crate::config::parse(&json).unwrap().providers
    }

    fn find<'r>(
        providers: &[Provider],
        pairs: &'r [(&'r str, &'r str)],
        path: &'r str,
    ) -> Result<Option<Found<'r>>, ExtractError> {
        find_token(
            providers,
            &RequestParts {
                headers: pairs,
                path,
            },
        )
    }

    #[test]
    fn default_is_an_authorization_bearer_header_any_case() {
        let p = providers("");
        for value in ["Bearer abc", "bearer abc", "BEARER abc"] {
            let pairs = [("authorization", value)];
            let found = find(&p, &pairs, "/").unwrap().unwrap();
            assert_eq!(found.token, "abc");
            assert!(found.location.is_listed_by(&p[0]));
        }
    }

    #[test]
    fn other_schemes_are_not_tokens() {
        let p = providers("");
        assert_eq!(
            find(&p, &[("authorization", "Basic dXNlcg==")], "/"),
            Ok(None)
        );
        assert_eq!(find(&p, &[], "/"), Ok(None));
    }

    #[test]
    fn extra_spaces_stay_in_the_token_and_make_it_malformed_later() {
        let p = providers("");
        let found = find(&p, &[("authorization", "Bearer  abc")], "/")
            .unwrap()
            .unwrap();
        assert_eq!(found.token, " abc");
    }

    #[test]
    fn two_authorization_headers_are_two_tokens() {
        let p = providers("");
        assert_eq!(
            find(
                &p,
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                "/"
            ),
            Err(ExtractError::MultipleTokens)
        );
    }

    #[test]
    fn two_authorization_headers_folded_by_envoy_are_two_tokens() {
        let p = providers("");
        assert_eq!(
            find(&p, &[("authorization", "Bearer a,Bearer b")], "/"),
            Err(ExtractError::MultipleTokens)
        );
        assert_eq!(
            find(&p, &[("authorization", "Bearer a, bearer b")], "/"),
            Err(ExtractError::MultipleTokens)
        );
    }

    #[test]
    fn a_dpop_token_and_a_bearer_token_folded_together_are_two_tokens() {
        let p = providers(r#","dpop":{"mode":"allowed"}"#);
        for value in ["DPoP a, Bearer b", "Bearer b, DPoP a", "DPoP a,DPoP b"] {
            assert_eq!(
                find(&p, &[("authorization", value)], "/"),
                Err(ExtractError::MultipleTokens),
                "{value}"
            );
        }
        let found = find(&p, &[("authorization", "DPoP a")], "/")
            .unwrap()
            .unwrap();
        assert!(found.location.is_dpop());
        assert_eq!(found.token, "a");
        // Without DPoP accepted, the scheme is not a token location at all.
        let bearer_only = providers("");
        assert_eq!(
            find(&bearer_only, &[("authorization", "DPoP a")], "/"),
            Ok(None)
        );
    }

    #[test]
    fn params_and_cookies_when_configured() {
        let p = providers(r#","fromParams":["access_token"],"fromCookies":["session"]"#);
        let found = find(&p, &[], "/x?a=1&access_token=tok%2Den")
            .unwrap()
            .unwrap();
        assert_eq!(found.token, "tok-en");
        assert_eq!(found.location, Location::Param("access_token".into()));
        let found = find(&p, &[("cookie", "a=1; session=tok; b=2")], "/")
            .unwrap()
            .unwrap();
        assert_eq!(found.token, "tok");
        assert_eq!(found.location, Location::Cookie("session".into()));
    }

    #[test]
    fn a_token_in_two_locations_is_refused() {
        let p = providers(
            r#","fromHeaders":[{"name":"Authorization","prefix":"Bearer "}],"fromParams":["access_token"],"fromCookies":["session"]"#,
        );
        assert_eq!(
            find(&p, &[("authorization", "Bearer a")], "/?access_token=a"),
            Err(ExtractError::MultipleTokens)
        );
        assert_eq!(
            find(&p, &[], "/?access_token=a&access_token=b"),
            Err(ExtractError::MultipleTokens)
        );
        assert_eq!(
            find(&p, &[("cookie", "session=a"), ("cookie", "session=b")], "/"),
            Err(ExtractError::MultipleTokens)
        );
    }

    #[test]
    fn unconfigured_locations_are_ignored() {
        let p = providers("");
        assert_eq!(
            find(&p, &[("cookie", "access_token=a")], "/?access_token=a"),
            Ok(None)
        );
    }

    #[test]
    fn a_location_is_listed_only_by_providers_that_name_it() {
        let json = r#"{"providers":[
            {"issuer":"https://a","jwksUri":"https://a/jwks"},
            {"issuer":"https://b","jwksUri":"https://b/jwks","fromHeaders":[{"name":"x-token"}]}]}"#;
        let p = crate::config::parse(json).unwrap().providers;
        let found = find(&p, &[("x-token", "abc")], "/").unwrap().unwrap();
        assert!(!found.location.is_listed_by(&p[0]));
        assert!(found.location.is_listed_by(&p[1]));
    }

    #[test]
    fn token_param_and_cookie_are_removed_for_upstream() {
        assert_eq!(
            path_without_param("/a?x=1&access_token=t&y=2", "access_token"),
            "/a?x=1&y=2"
        );
        assert_eq!(
            path_without_param("/a?access_token=t", "access_token"),
            "/a"
        );
        assert_eq!(path_without_param("/a", "access_token"), "/a");
        assert_eq!(
            cookie_header_without("a=1; session=t; b=2", "session"),
            Some("a=1; b=2".to_string())
        );
        assert_eq!(cookie_header_without("session=t", "session"), None);
    }
}
