//! `application/x-www-form-urlencoded` (query strings, token request bodies), strictly: a
//! parameter given twice is refused (RFC 6749 §3.1: "parameters MUST NOT be included more
//! than once").

use crate::client_auth::form_encode;

/// Encodes `name=value` pairs with the one form encoding browser login and outbound
/// credentials share ([`form_encode`]: space as `+`, as the WHATWG URL serializer writes it).
pub fn encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("{}={}", form_encode(name), form_encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormError {
    /// A parameter appears twice.
    Repeated,
    /// A `%` escape that is not two hex digits, or bytes that are not UTF-8.
    Malformed,
    /// More parameters or bytes than a callback or logout token needs.
    TooLarge,
}

/// Bounds a hostile query or body.
const MAX_PARAMS: usize = 32;
const MAX_BYTES: usize = 64 * 1024;

/// Decodes a query or form body into `(name, value)` pairs.
pub fn decode(text: &str) -> Result<Vec<(String, String)>, FormError> {
    if text.len() > MAX_BYTES {
        return Err(FormError::TooLarge);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in text.split('&').filter(|part| !part.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = unescape(name)?;
        if pairs.iter().any(|(seen, _)| *seen == name) {
            return Err(FormError::Repeated);
        }
        if pairs.len() == MAX_PARAMS {
            return Err(FormError::TooLarge);
        }
        pairs.push((name, unescape(value)?));
    }
    Ok(pairs)
}

fn unescape(text: &str) -> Result<String, FormError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or(FormError::Malformed)?;
                out.push(hex);
                index += 2;
            }
            byte => out.push(byte),
        }
        index += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::Malformed)
}

/// The value of `name` among decoded pairs.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let encoded = encode(&[
            ("redirect_uri", "https://a.example/cb?x=1"),
            ("scope", "openid profile"),
        ]);
        assert_eq!(
            encoded,
            "redirect_uri=https%3A%2F%2Fa.example%2Fcb%3Fx%3D1&scope=openid+profile"
        );
        let decoded = decode(&encoded).unwrap();
        assert_eq!(get(&decoded, "scope"), Some("openid profile"));
        assert_eq!(
            get(&decoded, "redirect_uri"),
            Some("https://a.example/cb?x=1")
        );
        assert_eq!(
            decode("a=1+2&b&&c=").unwrap(),
            [
                ("a".into(), "1 2".into()),
                ("b".into(), String::new()),
                ("c".into(), String::new())
            ]
        );
    }

    #[test]
    fn repeated_or_malformed_parameters_are_refused() {
        assert_eq!(decode("state=a&state=b"), Err(FormError::Repeated));
        assert_eq!(decode("state=a&st%61te=b"), Err(FormError::Repeated));
        assert_eq!(decode("code=%zz"), Err(FormError::Malformed));
        assert_eq!(decode("code=%4"), Err(FormError::Malformed));
        assert_eq!(decode("code=%ff"), Err(FormError::Malformed));
        let many: Vec<String> = (0..33).map(|i| format!("p{i}=1")).collect();
        assert_eq!(decode(&many.join("&")), Err(FormError::TooLarge));
    }
}
