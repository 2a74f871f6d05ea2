//! Normalisation of the request's `:path` before rules are matched against it, so that one
//! resource cannot be reached under a spelling that a rule does not recognise; and of an
//! origin (`scheme://host[:port]`), as a DPoP proof's `htu` and the configured `origins` are
//! compared.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%2F` or `%5C` (or a literal `\`): servers disagree on whether it separates segments,
    /// so the request is refused (400) rather than guessed at.
    EncodedSlash,
    /// Not an origin-form path, invalid percent-encoding, or control characters.
    Malformed,
}

/// Normalises `raw` (the `:path` header) for rule matching:
/// - query (`?…`) and fragment (`#…`) are removed;
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
///   percent-encoding is kept with upper-case hex;
/// - an encoded `/` or `\`, or a literal `\`, is [`PathError::EncodedSlash`];
/// - invalid percent-encoding, control characters (literal or encoded) and paths that do not
///   start with `/` are [`PathError::Malformed`];
/// - repeated slashes are merged and dot segments resolved (RFC 3986 5.2.4; `..` above the
///   root stays at the root), after decoding so that `%2e%2e` counts as `..`.
///
/// Case is preserved; a trailing slash is kept.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let path = raw.get(..end).ok_or(PathError::Malformed)?;
    if !path.starts_with('/') {
        return Err(PathError::Malformed);
    }
    // The common request's path is already normal: borrowed, none of the passes below.
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    normalize_spelled(path).map(Cow::Owned)
}

/// Whether `path` (starting with '/') is its own normal form: nothing to decode, refuse or
/// merge (no `%`, `\`, control character, empty segment but a trailing one, dot segment).
fn is_normal(path: &str) -> bool {
    if path
        .bytes()
        .any(|b| b == b'%' || b == b'\\' || b.is_ascii_control())
    {
        return false;
    }
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// [`normalize`] of a path that starts with '/', without its shortcut.
fn normalize_spelled(path: &str) -> Result<String, PathError> {
    let decoded = decode_unreserved(path.as_bytes())?;
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::Malformed)?;
    Ok(remove_dot_segments(&decoded))
}

fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'\\' => return Err(PathError::EncodedSlash),
            b'%' => {
                let (hex, tail) = rest.split_at_checked(2).ok_or(PathError::Malformed)?;
                rest = tail;
                let decoded = match hex {
                    [high, low] => (hex_value(*high)? << 4) | hex_value(*low)?,
                    _ => return Err(PathError::Malformed),
                };
                match decoded {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    _ if decoded.is_ascii_control() => return Err(PathError::Malformed),
                    _ if is_unreserved(decoded) => out.push(decoded),
                    _ => {
                        out.push(b'%');
                        out.extend_from_slice(hex.to_ascii_uppercase().as_slice());
                    }
                }
            }
            _ if byte.is_ascii_control() => return Err(PathError::Malformed),
            _ => out.push(byte),
        }
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Result<u8, PathError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(PathError::Malformed),
    }
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// `path` starts with '/'. Empty segments are dropped, which merges repeated slashes.
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        // A path ending in "/", "/." or "/.." names a directory: RFC 3986 keeps the slash.
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

/// `scheme://host[:port]` lower-cased, the default port dropped (RFC 3986 §6.2.2, §6.2.3);
/// `None` for anything else (a path, query, userinfo, another scheme).
pub fn normalize_origin(text: &str) -> Option<String> {
    let (scheme, authority) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority.as_str(), None),
    };
    if host.is_empty() {
        return None;
    }
    match port {
        None => Some(format!("{scheme}://{host}")),
        Some(port) if port == default_port => Some(format!("{scheme}://{host}")),
        Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some(format!("{scheme}://{host}:{port}"))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str) -> Result<Cow<'static, str>, PathError> {
        Ok(Cow::Owned(path.to_string()))
    }

    /// The shortcut for paths already normal decides as the full passes, on every path of up
    /// to five pieces that mix what those passes act on.
    #[test]
    fn the_shortcut_agrees_with_the_full_normalisation() {
        let pieces = ["/", "a", ".", "%2e", "%41", "%2F", "\\", "\u{1}", "é", "~"];
        let mut paths = vec![String::from("/")];
        let mut shortcuts = 0;
        for _ in 0..5 {
            let mut longer = Vec::new();
            for path in &paths {
                for piece in pieces {
                    let path = format!("{path}{piece}");
                    if is_normal(&path) {
                        shortcuts += 1;
                        assert_eq!(
                            normalize_spelled(&path).map(Cow::Owned),
                            ok(&path),
                            "{path:?}"
                        );
                    }
                    longer.push(path);
                }
            }
            paths = longer;
        }
        assert!(shortcuts > 1000, "only {shortcuts} paths took the shortcut");
    }

    #[test]
    fn dot_dot_cannot_escape_into_another_prefix() {
        assert_eq!(normalize("/public/../admin"), ok("/admin"));
        assert_eq!(normalize("/public/x/../../admin"), ok("/admin"));
    }

    #[test]
    fn repeated_slashes_are_merged() {
        assert_eq!(normalize("//admin"), ok("/admin"));
        assert_eq!(normalize("/admin//x///y"), ok("/admin/x/y"));
        assert_eq!(normalize("//"), ok("/"));
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded() {
        assert_eq!(normalize("/%61dmin"), ok("/admin"));
        assert_eq!(normalize("/%41%2d%2E%5f%7E%30"), ok("/A-._~0"));
    }

    #[test]
    fn encoded_slash_and_backslash_are_refused() {
        for raw in [
            "/admin%2Fx",
            "/admin%2fx",
            "/admin%5Cx",
            "/admin%5cx",
            "/admin\\x",
        ] {
            assert_eq!(normalize(raw), Err(PathError::EncodedSlash), "{raw}");
        }
    }

    #[test]
    fn single_dot_segments_are_removed() {
        assert_eq!(normalize("/admin/./x"), ok("/admin/x"));
        assert_eq!(normalize("/./admin"), ok("/admin"));
    }

    #[test]
    fn query_and_fragment_are_not_part_of_the_path() {
        assert_eq!(normalize("/admin?x=/public/"), ok("/admin"));
        assert_eq!(normalize("/admin#frag"), ok("/admin"));
        assert_eq!(normalize("/admin#frag?x"), ok("/admin"));
        assert_eq!(normalize("/admin?"), ok("/admin"));
    }

    #[test]
    fn dot_dot_above_root_stays_at_root() {
        assert_eq!(normalize("/a/b/../../.."), ok("/"));
        assert_eq!(normalize("/../../admin"), ok("/admin"));
    }

    #[test]
    fn dots_are_resolved_after_decoding() {
        assert_eq!(normalize("/%2e%2e/admin"), ok("/admin"));
        assert_eq!(normalize("/public/%2E%2e/admin"), ok("/admin"));
        assert_eq!(normalize("/public/.%2e/admin"), ok("/admin"));
        assert_eq!(normalize("/admin/%2e/x"), ok("/admin/x"));
    }

    #[test]
    fn other_percent_encodings_are_kept_with_upper_case_hex() {
        assert_eq!(normalize("/a%20b"), ok("/a%20b"));
        assert_eq!(normalize("/a%3fb"), ok("/a%3Fb"));
        assert_eq!(normalize("/caf%c3%a9"), ok("/caf%C3%A9"));
        // No double decoding: "%2561" is an encoded '%' followed by "61".
        assert_eq!(normalize("/%2561dmin"), ok("/%2561dmin"));
    }

    #[test]
    fn case_is_preserved() {
        assert_eq!(normalize("/A"), ok("/A"));
        assert_eq!(normalize("/Admin/X"), ok("/Admin/X"));
    }

    #[test]
    fn trailing_slash_is_kept() {
        assert_eq!(normalize("/a/"), ok("/a/"));
        assert_eq!(normalize("/a//"), ok("/a/"));
        assert_eq!(normalize("/a/b/.."), ok("/a/"));
        assert_eq!(normalize("/a/."), ok("/a/"));
        assert_eq!(normalize("/"), ok("/"));
    }

    #[test]
    fn invalid_percent_encoding_is_malformed() {
        for raw in ["/%zz", "/a%", "/a%4", "/a%g1", "/a%%41", "/a%\u{e9}1"] {
            assert_eq!(normalize(raw), Err(PathError::Malformed), "{raw:?}");
        }
    }

    #[test]
    fn paths_not_starting_with_a_slash_are_malformed() {
        for raw in ["", "*", "admin", "?x=/a", "http://host/admin"] {
            assert_eq!(normalize(raw), Err(PathError::Malformed), "{raw:?}");
        }
    }

    #[test]
    fn control_characters_are_malformed_literal_or_encoded() {
        for raw in ["/a\0b", "/a\nb", "/a\x7fb", "/a%00b", "/a%0Ab", "/a%7f"] {
            assert_eq!(normalize(raw), Err(PathError::Malformed), "{raw:?}");
        }
    }

    #[test]
    fn control_characters_after_the_query_do_not_matter() {
        assert_eq!(normalize("/a?%00\\"), ok("/a"));
    }

    #[test]
    fn non_ascii_characters_are_kept() {
        assert_eq!(normalize("/caf\u{e9}/./x"), ok("/caf\u{e9}/x"));
    }
}
