//! The login cookies on the wire: `__Host-` names (RFC 6265bis §4.1.3.2: `Secure`, `Path=/`,
//! no `Domain`, so no sibling host can set or read them), values split into numbered chunks
//! that each stay under the 4,096 bytes a browser keeps per cookie, with a hard cap on their
//! number; reading them back from the `Cookie` header, and removing them from it so they never
//! reach the upstream.

/// The session cookie's name; its chunks are `<name>.0`, `<name>.1`, …
pub const SESSION_COOKIE: &str = "__Host-mesh-session";
/// Transaction cookies are `<prefix><id>`, one per login in flight.
pub const TRANSACTION_PREFIX: &str = "__Host-mesh-tx.";
/// Every login cookie's name starts with this; the upstream never sees one.
pub const LOGIN_COOKIE_PREFIX: &str = "__Host-mesh-";
/// Name, `=` and value of one chunk stay under this (browsers cap name + value at 4,096).
pub const MAX_CHUNK_BYTES: usize = 4000;
/// At most this many chunks: a session that needs more is refused, not sent.
pub const MAX_CHUNKS: usize = 4;

/// The name of a session chunk.
pub fn chunk_name(index: usize) -> String {
    format!("{SESSION_COOKIE}.{index}")
}

/// Splits a sealed value into `(name, value)` chunks, or `None` when it needs more than
/// [`MAX_CHUNKS`]. Sealed values are base64url and `.`: any split point is safe.
pub fn chunk(value: &str) -> Option<Vec<(String, String)>> {
    let room = chunk_room();
    let pieces: Vec<&str> = value
        .as_bytes()
        .chunks(room)
        .filter_map(|piece| std::str::from_utf8(piece).ok())
        .collect();
    if pieces.is_empty() || pieces.len() > MAX_CHUNKS || pieces.concat().len() != value.len() {
        return None;
    }
    Some(
        pieces
            .into_iter()
            .enumerate()
            .map(|(index, piece)| (chunk_name(index), piece.to_owned()))
            .collect(),
    )
}

/// Value bytes one chunk holds: name, `=` and value stay strictly under the limit.
fn chunk_room() -> usize {
    MAX_CHUNK_BYTES - chunk_name(MAX_CHUNKS).len() - 2
}

/// The `Set-Cookie` value for a login cookie that lives `max_age` seconds.
pub fn set_cookie(name: &str, value: &str, max_age: u64) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}")
}

/// The `Set-Cookie` value that removes a login cookie.
pub fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// The `name=value` pairs of a `Cookie` header (RFC 6265 §5.4 form: `; `-separated).
/// Pairs without `=` are skipped, as browsers send none.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        (!name.is_empty()).then_some((name, value.trim()))
    })
}

/// Why the session cookie could not be put back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A chunk name appears twice, or a chunk past the cap.
    Ambiguous,
    /// The chunks are not numbered 0..n without a gap.
    Gap,
}

/// The session chunks found in `header`, joined in order: `Ok(None)` when there are none.
pub fn session_value(header: Option<&str>) -> Result<Option<String>, ChunkError> {
    let Some(header) = header else {
        return Ok(None);
    };
    let mut found: [Option<&str>; MAX_CHUNKS] = [None; MAX_CHUNKS];
    let mut any = false;
    for (name, value) in pairs(header) {
        let Some(index) = name
            .strip_prefix(SESSION_COOKIE)
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            continue;
        };
        any = true;
        let slot = index
            .parse::<usize>()
            .ok()
            .filter(|i| index == i.to_string())
            .and_then(|i| found.get_mut(i))
            .ok_or(ChunkError::Ambiguous)?;
        if slot.replace(value).is_some() {
            return Err(ChunkError::Ambiguous);
        }
    }
    if !any {
        return Ok(None);
    }
    let count = found.iter().take_while(|chunk| chunk.is_some()).count();
    if found[count..].iter().any(Option::is_some) {
        return Err(ChunkError::Gap);
    }
    Ok(Some(found.iter().flatten().copied().collect()))
}

/// The names of the session chunks in `header` (to clear the ones a new session leaves over).
pub fn session_chunk_names(header: Option<&str>) -> Vec<String> {
    header
        .map(|header| {
            pairs(header)
                .filter(|(name, _)| name.starts_with(SESSION_COOKIE))
                .map(|(name, _)| name.to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The transaction cookies in `header`: `(name, value)`.
pub fn transactions(header: Option<&str>) -> Vec<(&str, &str)> {
    header
        .map(|header| {
            pairs(header)
                .filter(|(name, _)| name.starts_with(TRANSACTION_PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// `header` without any login cookie; `None` when nothing else is left (remove the header).
pub fn without_login_cookies(header: &str) -> Option<String> {
    let kept: Vec<&str> = header
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(name, _)| name).trim();
            !name.starts_with(LOGIN_COOKIE_PREFIX)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_small_value_is_one_chunk_and_a_large_one_several_under_the_limit() {
        assert_eq!(
            chunk("abc"),
            Some(vec![("__Host-mesh-session.0".to_owned(), "abc".to_owned())])
        );
        let large = "x".repeat(9_000);
        let chunks = chunk(&large).unwrap();
        assert_eq!(chunks.len(), 3);
        for (name, value) in &chunks {
            assert!(name.len() + 1 + value.len() < MAX_CHUNK_BYTES, "{name}");
        }
        let header: Vec<String> = chunks.iter().map(|(n, v)| format!("{n}={v}")).collect();
        assert_eq!(
            session_value(Some(&header.join("; "))),
            Ok(Some(large.clone()))
        );
    }

    #[test]
    fn a_value_past_the_cap_is_refused() {
        let room = chunk_room();
        assert!(chunk(&"x".repeat(room * MAX_CHUNKS)).is_some());
        assert_eq!(chunk(&"x".repeat(room * MAX_CHUNKS + 1)), None);
        assert_eq!(chunk(""), None);
    }

    #[test]
    fn cookies_are_host_only_secure_httponly_lax() {
        let set = set_cookie("__Host-mesh-session.0", "v", 60);
        assert_eq!(
            set,
            "__Host-mesh-session.0=v; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=60"
        );
        assert!(!set.contains("Domain"));
        assert!(clear_cookie("__Host-mesh-tx.a").ends_with("Max-Age=0"));
    }

    #[test]
    fn reordered_chunks_join_by_number_and_gaps_or_duplicates_are_refused() {
        assert_eq!(
            session_value(Some(
                "a=1; __Host-mesh-session.1=BB; __Host-mesh-session.0=AA"
            )),
            Ok(Some("AABB".to_owned()))
        );
        assert_eq!(
            session_value(Some("__Host-mesh-session.0=AA; __Host-mesh-session.2=CC")),
            Err(ChunkError::Gap)
        );
        assert_eq!(
            session_value(Some("__Host-mesh-session.1=BB")),
            Err(ChunkError::Gap)
        );
        for header in [
            "__Host-mesh-session.0=AA; __Host-mesh-session.0=BB",
            "__Host-mesh-session.4=AA",
            "__Host-mesh-session.01=AA",
            "__Host-mesh-session.x=AA",
            "__Host-mesh-session.=AA",
        ] {
            assert_eq!(
                session_value(Some(header)),
                Err(ChunkError::Ambiguous),
                "{header}"
            );
        }
        assert_eq!(session_value(Some("a=1; b=2")), Ok(None));
        assert_eq!(session_value(None), Ok(None));
        // A cookie that only starts like ours is not one of ours.
        assert_eq!(session_value(Some("__Host-mesh-sessionX=1")), Ok(None));
    }

    #[test]
    fn login_cookies_never_stay_in_the_header() {
        assert_eq!(
            without_login_cookies(
                "a=1; __Host-mesh-session.0=AA;__Host-mesh-tx.k=v ; b=2; __Host-mesh-session.1=BB"
            ),
            Some("a=1; b=2".to_owned())
        );
        assert_eq!(
            without_login_cookies("__Host-mesh-session.0=AA; __Host-mesh-odd"),
            None
        );
        assert_eq!(without_login_cookies("a=1"), Some("a=1".to_owned()));
    }

    #[test]
    fn transactions_and_chunk_names_are_found() {
        let header = "__Host-mesh-tx.a=1; x=2; __Host-mesh-tx.b=3; __Host-mesh-session.0=s";
        assert_eq!(
            transactions(Some(header)),
            vec![("__Host-mesh-tx.a", "1"), ("__Host-mesh-tx.b", "3")]
        );
        assert_eq!(
            session_chunk_names(Some(header)),
            vec!["__Host-mesh-session.0"]
        );
    }
}
