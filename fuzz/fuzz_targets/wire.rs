//! The byte parsers fed by the host or by tokens: the host's `VerifySignatureResult`
//! protobuf, JOSE's raw ECDSA signature turned into DER, and the header map buffer. The first
//! byte picks the parser (modulo 3: 0 the protobuf, 1 the signature, 2 the header map); the
//! rest is its input, read as is and also as a recipe for a well-formed input whose meaning
//! the documentation fixes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::header_map;
use mesh_oauth::host_verify::{decode_result, ecdsa_der, HostAnswer};
use std::ops::Range;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => result(rest),
        1 => signature(rest),
        _ => headers(rest),
    }
});

// ------------------------------------------------------------------------------- the protobuf

/// Documented: unknown fields are skipped, the last `result` counts, no `result` is false.
fn result(bytes: &[u8]) {
    let answer = decode_result(bytes);
    if answer != HostAnswer::Unavailable {
        // It decoded to its end, field by field: one more `result` field is the last one.
        let then = |field: &[u8]| decode_result(&[bytes, field].concat());
        assert_eq!(then(&[0x08, 0x01]), HostAnswer::Valid, "true appended");
        assert_eq!(then(&[0x08, 0x00]), HostAnswer::Invalid, "false appended");
    }

    let unknown = unknown_fields(bytes);
    let with = |prefix: &[u8], suffix: &[u8]| decode_result(&[prefix, &unknown, suffix].concat());
    assert_eq!(with(&[], &[]), HostAnswer::Invalid, "unknown fields only");
    assert_eq!(with(&[0x08, 0x01], &[]), HostAnswer::Valid, "true, unknown");
    assert_eq!(
        with(&[0x08, 0x00], &[]),
        HostAnswer::Invalid,
        "false, unknown"
    );
    assert_eq!(with(&[], &[0x08, 0x01]), HostAnswer::Valid, "unknown, true");
    assert_eq!(with(&[0x08, 0x01], &[0x08, 0x00]), HostAnswer::Invalid);
}

/// Well-formed fields other than `result`, as the input's bytes describe them: per field a
/// control byte (wire type and field number), then its value. `error` (2, a string) is one.
fn unknown_fields(mut recipe: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some((&control, rest)) = recipe.split_first() {
        recipe = rest;
        let wire = [0u64, 1, 2, 5][usize::from(control & 3)];
        let field = match control >> 2 {
            // `error`, the one known field besides `result`.
            0 => 2,
            // Up to the largest field number protobuf allows.
            1 => (u64::from(take_u32(&mut recipe)) % ((1 << 29) - 3)) + 3,
            small => u64::from(small) + 2,
        };
        let wire = if field == 2 { 2 } else { wire };
        put_varint(&mut out, field << 3 | wire);
        match wire {
            0 => {
                let value =
                    u64::from(take_u32(&mut recipe)) << 32 | u64::from(take_u32(&mut recipe));
                put_varint(&mut out, value);
            }
            1 | 5 => {
                // Fixed width, zero-filled at the input's end.
                let width = if wire == 1 { 8 } else { 4 };
                let value = take(&mut recipe, width);
                out.extend_from_slice(value);
                out.resize(out.len() + width - value.len(), 0);
            }
            _ => {
                let len = recipe.first().map_or(0, |&len| usize::from(len));
                recipe = recipe.get(1..).unwrap_or_default();
                let value = take(&mut recipe, len);
                put_varint(&mut out, value.len() as u64);
                out.extend_from_slice(value);
            }
        }
    }
    out
}

/// Up to `len` bytes, fewer at the input's end.
fn take<'a>(recipe: &mut &'a [u8], len: usize) -> &'a [u8] {
    let (taken, rest) = recipe.split_at(len.min(recipe.len()));
    *recipe = rest;
    taken
}

fn take_u32(recipe: &mut &[u8]) -> u32 {
    let mut word = [0; 4];
    let taken = take(recipe, 4);
    word[..taken.len()].copy_from_slice(taken);
    u32::from_le_bytes(word)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

// ------------------------------------------------------------------------------------ DER

/// The input as a raw signature for P-256 and P-384, and also cut or zero-padded to each
/// one's exact length, so that most inputs reach the conversion.
fn signature(raw: &[u8]) {
    for scalar_len in [32, 48] {
        let mut sized = raw.to_vec();
        sized.resize(2 * scalar_len, 0);
        for raw in [raw, sized.as_slice()] {
            check_signature(raw, scalar_len);
        }
    }
}

/// Documented: `None` exactly for a length other than `2 * scalar_len` or a zero `r` or `s`;
/// otherwise a DER `SEQUENCE { INTEGER r, INTEGER s }` of the two unsigned halves.
fn check_signature(raw: &[u8], scalar_len: usize) {
    let der = ecdsa_der(raw, scalar_len);
    let refused = raw.len() != 2 * scalar_len || {
        let (r, s) = raw.split_at(scalar_len);
        is_zero(r) || is_zero(s)
    };
    let Some(der) = der else {
        assert!(refused, "refused r‖s of {} bytes: {raw:02x?}", raw.len());
        return;
    };
    assert!(!refused, "converted r‖s of {} bytes: {raw:02x?}", raw.len());
    let (r, s) = raw.split_at(scalar_len);
    let mut reader = &der[..];
    let mut sequence = read_tlv(&mut reader, 0x30);
    assert!(reader.is_empty(), "bytes after the SEQUENCE: {der:02x?}");
    let der_r = read_integer(&mut sequence);
    let der_s = read_integer(&mut sequence);
    assert!(sequence.is_empty(), "more than two INTEGERs: {der:02x?}");
    assert_eq!(der_r, strip_zeros(r), "r: {der:02x?}");
    assert_eq!(der_s, strip_zeros(s), "s: {der:02x?}");
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

fn strip_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// One strict DER TLV with `tag`: a definite length in its shortest form, its content whole.
fn read_tlv<'a>(der: &mut &'a [u8], tag: u8) -> &'a [u8] {
    let &[found, first, ref rest @ ..] = *der else {
        panic!("TLV cut short: {der:02x?}");
    };
    assert_eq!(found, tag, "tag");
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        assert!((1..=8).contains(&count), "length of {count} bytes");
        assert!(rest.len() >= count, "length cut short");
        let (bytes, rest) = rest.split_at(count);
        assert_ne!(bytes[0], 0, "length with a leading zero");
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| len << 8 | usize::from(b));
        assert!(len >= 0x80, "long form for a short length {len}");
        (len, rest)
    };
    assert!(
        rest.len() >= len,
        "content cut short: {len} announced, {} left",
        rest.len()
    );
    let (content, rest) = rest.split_at(len);
    *der = rest;
    content
}

/// A minimal DER INTEGER that is positive; its unsigned magnitude.
fn read_integer<'a>(der: &mut &'a [u8]) -> &'a [u8] {
    let content = read_tlv(der, 0x02);
    match content {
        [] => panic!("empty INTEGER"),
        [top, ..] if *top >= 0x80 => panic!("negative INTEGER: {content:02x?}"),
        [0] => panic!("zero INTEGER"),
        [0, next, ..] if *next < 0x80 => panic!("INTEGER not minimal: {content:02x?}"),
        [0, magnitude @ ..] => magnitude,
        magnitude => magnitude,
    }
}

// ----------------------------------------------------------------------------- header map

/// Documented layout: a u32 count, a (name length, value length) pair per header, then names
/// and values in order, each followed by a NUL. The input read as such a buffer, and a
/// buffer built from the input's bytes.
fn headers(buffer: &[u8]) {
    if let Some(spans) = header_map::spans(buffer) {
        check_spans(buffer, &spans);
    }
    let (built, pairs) = serialize(buffer);
    let Some(spans) = header_map::spans(&built) else {
        panic!("refused a well-formed buffer: {built:02x?}");
    };
    check_spans(&built, &spans);
    let read: Headers = spans
        .iter()
        .map(|(name, value)| (&built[name.clone()], &built[value.clone()]))
        .collect();
    assert_eq!(read, pairs, "read back other headers");
}

fn check_spans(buffer: &[u8], spans: &[(Range<usize>, Range<usize>)]) {
    let word = |at: usize| {
        let bytes: [u8; 4] = buffer[at..at + 4].try_into().unwrap_or_default();
        u32::from_le_bytes(bytes) as usize
    };
    assert_eq!(spans.len(), word(0), "header count");
    // Names and values follow one another from the end of the length table, each after the
    // previous one's NUL: in order, apart, and inside the buffer.
    let mut next = 4 + 8 * spans.len();
    for (index, (name, value)) in spans.iter().enumerate() {
        for (span, len, what) in [
            (name, word(4 + index * 8), "name"),
            (value, word(8 + index * 8), "value"),
        ] {
            assert_eq!(
                span.start, next,
                "header {index}: {what} not where it follows"
            );
            assert!(
                span.start <= span.end,
                "header {index}: {what} {span:?} reversed"
            );
            assert_eq!(span.len(), len, "header {index}: {what} of another length");
            assert_eq!(
                buffer.get(span.end),
                Some(&0),
                "header {index}: {what} {span:?} not followed by a NUL in {} bytes",
                buffer.len()
            );
            next = span.end + 1;
        }
    }
    assert!(next <= buffer.len());
}

type Headers<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Headers from the input: per header a name length byte and a value length byte, then their
/// bytes (any bytes, NULs included: lengths delimit them).
fn serialize(mut recipe: &[u8]) -> (Vec<u8>, Headers<'_>) {
    let mut pairs = Vec::new();
    while let [name_len, value_len, rest @ ..] = recipe {
        recipe = rest;
        let name = take(&mut recipe, usize::from(*name_len));
        let value = take(&mut recipe, usize::from(*value_len));
        pairs.push((name, value));
    }
    let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
    for (name, value) in &pairs {
        out.extend((name.len() as u32).to_le_bytes());
        out.extend((value.len() as u32).to_le_bytes());
    }
    for (name, value) in &pairs {
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    (out, pairs)
}
