//! Where a browser goes back to after its login: a path on the same origin, or `/`. No open
//! redirector (RFC 9700 §4.11): anything a browser could read as another origin — `//evil`,
//! `/\evil`, `https://evil`, `javascript:`, their percent-encoded or tab-split spellings — is
//! replaced by `/`, not repaired.

/// Longer return paths are dropped (they travel in a cookie).
pub const MAX_RETURN_PATH_BYTES: usize = 2048;
/// Percent-decoding rounds looked through: `%252F` is `%2F` is `/`.
const DECODE_ROUNDS: usize = 3;

/// The same-origin path to return to for a request target as received (`:path`).
pub fn sanitize(raw: &str) -> String {
    if is_safe(raw) {
        raw.to_owned()
    } else {
        "/".to_owned()
    }
}

fn is_safe(raw: &str) -> bool {
    if raw.is_empty() || raw.len() > MAX_RETURN_PATH_BYTES {
        return false;
    }
    // Visible ASCII only: browsers drop tabs and newlines inside URLs (`/\t/evil` is `//evil`)
    // and treat `\` as `/`.
    if !raw
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\')
    {
        return false;
    }
    let mut layer = raw.to_owned();
    for _ in 0..=DECODE_ROUNDS {
        if !layer_is_safe(&layer) {
            return false;
        }
        let decoded = percent_decode(&layer);
        if decoded == layer {
            return true;
        }
        layer = decoded;
    }
    // Still encoded after every round: nothing a user would follow; refuse.
    false
}

fn layer_is_safe(path: &str) -> bool {
    let mut bytes = path.bytes();
    if bytes.next() != Some(b'/') {
        return false;
    }
    if matches!(bytes.next(), Some(b'/' | b'\\')) {
        return false;
    }
    // Decoded control characters or backslashes mean the raw form hid them.
    path.bytes().all(|b| b >= 0x20 && b != 0x7f && b != b'\\')
}

/// Decodes `%XX` (invalid escapes stay as they are); bytes that are not UTF-8 become U+FFFD.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_origin_paths_are_kept() {
        for path in [
            "/",
            "/orders",
            "/orders/42?view=full&x=%20y",
            "/a/b%2Fc",
            "/search?q=https://example.com",
            "/%E2%9C%93",
        ] {
            assert_eq!(sanitize(path), path, "{path}");
        }
    }

    #[test]
    fn other_origins_and_schemes_become_the_root() {
        for path in [
            "",
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "http:evil.example",
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "evil.example",
            "/%2Fevil.example",
            "/%2fevil.example",
            "%2F%2Fevil.example",
            "/%5Cevil.example",
            "/%252Fevil.example",
            "/%25252F%25252Fevil.example",
            "/%09/evil.example",
            "/\t/evil.example",
            "/ /evil.example",
            "/a\\b",
            "/a%0d%0aSet-Cookie:x=1",
            "/é",
        ] {
            assert_eq!(sanitize(path), "/", "{path:?}");
        }
    }

    #[test]
    fn overlong_paths_become_the_root() {
        let long = format!("/{}", "a".repeat(MAX_RETURN_PATH_BYTES));
        assert_eq!(sanitize(&long), "/");
        let fits = format!("/{}", "a".repeat(MAX_RETURN_PATH_BYTES - 1));
        assert_eq!(sanitize(&fits), fits);
    }

    #[test]
    fn deeply_encoded_paths_are_refused() {
        assert_eq!(sanitize("/a%2525252541"), "/");
        assert_eq!(sanitize("/a%252541"), "/a%252541");
    }
}
