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
}
