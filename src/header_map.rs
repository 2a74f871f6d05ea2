//! A header map as the proxy-wasm host hands it over in one buffer: a little-endian u32
//! count, then a (name length, value length) pair of u32s per header, then every name and
//! value in that order, each followed by a NUL. Reading spans of that one buffer, instead of
//! a `String` and a `Vec` per header, keeps a request's header read to one allocation.

use std::ops::Range;

/// Where each header's name and value lie in `buffer`; `None` when the buffer does not hold
/// what its counts announce (a host bug: the caller refuses the request).
pub fn spans(buffer: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    let word = |at: usize| -> Option<usize> {
        let bytes: [u8; 4] = buffer.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    let count = word(0)?;
    // Each header takes at least 10 bytes (two lengths, two NULs): bounds the allocation
    // by the buffer's real size, whatever the count claims.
    if count > buffer.len() / 10 {
        return None;
    }
    let mut spans = Vec::with_capacity(count);
    let mut data = 4 + count * 8;
    for index in 0..count {
        let name_len = word(4 + index * 8)?;
        let value_len = word(8 + index * 8)?;
        let name = data..data.checked_add(name_len)?;
        if buffer.get(name.end) != Some(&0) {
            return None;
        }
        // Below the buffer's length, so one more cannot overflow.
        let value = name.end + 1..(name.end + 1).checked_add(value_len)?;
        if buffer.get(value.end) != Some(&0) {
            return None;
        }
        data = value.end + 1;
        spans.push((name, value));
    }
    Some(spans)
}

/// A header map in that layout, for the host to read (a local response's headers). Lengths
/// past `u32::MAX` cannot occur: every header here is a few hundred bytes.
pub fn serialize(pairs: &[(&str, &str)]) -> Vec<u8> {
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = len(pairs.len()).to_vec();
    for (name, value) in pairs {
        out.extend(len(name.len()));
        out.extend(len(value.len()));
    }
    for (name, value) in pairs {
        out.extend(name.as_bytes());
        out.push(0);
        out.extend(value.as_bytes());
        out.push(0);
    }
    out
}

/// Owned pairs as the host calls take them.
pub fn borrowed(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

/// A header map (the request's, or a call's answer): the host's one buffer, that every name
/// and value borrows from. Names are lower-cased in place.
pub struct HeaderBlock {
    raw: Vec<u8>,
    spans: Vec<(Range<usize>, Range<usize>)>,
}

/// The request as the core sees it, borrowing from a [`HeaderBlock`].
#[derive(Default)]
pub struct RequestFields<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
}

impl HeaderBlock {
    /// `None` when the buffer breaks its own counts.
    pub fn new(mut raw: Vec<u8>) -> Option<HeaderBlock> {
        let spans = spans(&raw)?;
        for (name, _) in &spans {
            if let Some(name) = raw.get_mut(name.clone()) {
                name.make_ascii_lowercase();
            }
        }
        Some(HeaderBlock { raw, spans })
    }

    /// Every name and value, lossy where it is not UTF-8 (a call's answer).
    pub fn pairs(&self) -> Vec<(String, String)> {
        let text = |span: &Range<usize>| {
            String::from_utf8_lossy(self.raw.get(span.clone()).unwrap_or_default()).into_owned()
        };
        self.spans
            .iter()
            .map(|(name, value)| (text(name), text(value)))
            .collect()
    }

    /// Lossy copies of the names and values that are not UTF-8 (rare), in header order.
    pub fn repairs(&self) -> Vec<String> {
        self.spans
            .iter()
            .flat_map(|(name, value)| [name, value])
            .filter_map(|span| {
                let bytes = self.raw.get(span.clone()).unwrap_or_default();
                std::str::from_utf8(bytes)
                    .is_err()
                    .then(|| String::from_utf8_lossy(bytes).into_owned())
            })
            .collect()
    }

    /// The request's fields; `None` when a name or value is not UTF-8 and `repairs` (from
    /// [`HeaderBlock::repairs`]) has no copy for it. Each piece is checked once here: the
    /// common request, all UTF-8, needs no `repairs` pass at all.
    pub fn fields<'a>(&'a self, repairs: &'a [String]) -> Option<RequestFields<'a>> {
        let mut repaired = repairs.iter();
        let mut text = |span: &Range<usize>| -> Option<&'a str> {
            let bytes = self.raw.get(span.clone()).unwrap_or_default();
            match std::str::from_utf8(bytes) {
                Ok(text) => Some(text),
                Err(_) => repaired.next().map(String::as_str),
            }
        };
        let mut fields = RequestFields {
            method: "",
            scheme: "",
            path: "",
            authority: "",
            headers: Vec::with_capacity(self.spans.len()),
        };
        for (name, value) in &self.spans {
            let (name, value) = (text(name)?, text(value)?);
            match name {
                ":method" => fields.method = value,
                ":scheme" => fields.scheme = value,
                ":path" => fields.path = value,
                ":authority" => fields.authority = value,
                _ => fields.headers.push((name, value)),
            }
        }
        Some(fields)
    }
}

impl RequestFields<'_> {
    pub fn request<'a>(&'a self, peer: &'a dyn crate::peer::Peer) -> crate::authorize::Request<'a> {
        crate::authorize::Request {
            method: self.method,
            scheme: self.scheme,
            path: self.path,
            authority: self.authority,
            headers: &self.headers,
            peer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buffer: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
        Some(
            spans(buffer)?
                .into_iter()
                .map(|(n, v)| (&buffer[n], &buffer[v]))
                .collect(),
        )
    }

    #[test]
    fn reads_every_header_in_order_with_empty_values() {
        let buffer = serialize(&[
            (":path", "/a?b=c"),
            ("authorization", "Bearer x"),
            ("x-empty", ""),
        ]);
        let pairs = read(&buffer).unwrap();
        assert_eq!(
            pairs,
            vec![
                (&b":path"[..], &b"/a?b=c"[..]),
                (&b"authorization"[..], &b"Bearer x"[..]),
                (&b"x-empty"[..], &b""[..]),
            ]
        );
        assert_eq!(read(&serialize(&[])).unwrap(), vec![]);
    }

    #[test]
    fn a_buffer_that_breaks_its_own_counts_is_refused() {
        let good = serialize(&[("a", "1"), ("b", "2")]);
        assert!(read(&good[..good.len() - 1]).is_none(), "truncated");
        assert!(read(&[]).is_none(), "no count");
        let mut huge_count = good.clone();
        huge_count[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&huge_count).is_none());
        let mut long_name = good.clone();
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read(&long_name).is_none());
        let mut missing_nul = good.clone();
        let first_nul = 4 + 2 * 8 + 1;
        missing_nul[first_nul] = b'x';
        assert!(read(&missing_nul).is_none());
    }

    #[test]
    fn a_request_block_splits_pseudo_headers_lower_cases_names_and_repairs_non_utf8() {
        let mut raw = serialize(&[
            (":method", "GET"),
            (":path", "/a"),
            (":authority", "api"),
            (":scheme", "https"),
            ("X-Trace", "1"),
            ("x-bin", "?"),
        ]);
        let at = raw.len() - 2;
        raw[at] = 0xff; // the value of x-bin is not UTF-8
        let block = HeaderBlock::new(raw).unwrap();
        assert!(block.fields(&[]).is_none(), "a piece without its repair");
        let repairs = block.repairs();
        assert_eq!(repairs, ["\u{fffd}"]);
        let fields = block.fields(&repairs).unwrap();
        let request = fields.request(&crate::peer::NoPeer);
        assert_eq!(
            (
                request.method,
                request.path,
                request.authority,
                request.scheme
            ),
            ("GET", "/a", "api", "https")
        );
        assert_eq!(request.headers, [("x-trace", "1"), ("x-bin", "\u{fffd}")]);
        assert_eq!(block.pairs()[4], ("x-trace".to_string(), "1".to_string()));
        assert!(HeaderBlock::new(vec![1, 0, 0, 0]).is_none());
    }
}
