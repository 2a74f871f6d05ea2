#![allow(clippy::unwrap_used)]

use super::*;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair, RsaKeyPair, RsaPublicKeyComponents};

const RSA_A: &[u8] = include_bytes!("../tests/fixtures/rsa2048-a.pk8.der");
const RSA_B: &[u8] = include_bytes!("../tests/fixtures/rsa2048-b.pk8.der");
const MESSAGE: &[u8] = b"eyJhbGciOiJQUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

const PADDINGS: [Padding; 6] = [
    Padding::Pkcs1(Hash::Sha256),
    Padding::Pkcs1(Hash::Sha384),
    Padding::Pkcs1(Hash::Sha512),
    Padding::Pss(Hash::Sha256),
    Padding::Pss(Hash::Sha384),
    Padding::Pss(Hash::Sha512),
];

fn ring_params(
    padding: Padding,
) -> (
    &'static signature::RsaParameters,
    &'static dyn signature::RsaEncoding,
) {
    match padding {
        Padding::Pkcs1(Hash::Sha256) => (
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &signature::RSA_PKCS1_SHA256,
        ),
        Padding::Pkcs1(Hash::Sha384) => (
            &signature::RSA_PKCS1_2048_8192_SHA384,
            &signature::RSA_PKCS1_SHA384,
        ),
        Padding::Pkcs1(Hash::Sha512) => (
            &signature::RSA_PKCS1_2048_8192_SHA512,
            &signature::RSA_PKCS1_SHA512,
        ),
        Padding::Pss(Hash::Sha256) => (
            &signature::RSA_PSS_2048_8192_SHA256,
            &signature::RSA_PSS_SHA256,
        ),
        Padding::Pss(Hash::Sha384) => (
            &signature::RSA_PSS_2048_8192_SHA384,
            &signature::RSA_PSS_SHA384,
        ),
        Padding::Pss(Hash::Sha512) => (
            &signature::RSA_PSS_2048_8192_SHA512,
            &signature::RSA_PSS_SHA512,
        ),
    }
}

fn pair(pkcs8: &[u8]) -> (RsaKeyPair, PublicKey) {
    let pair = RsaKeyPair::from_pkcs8(pkcs8).unwrap();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    let key = PublicKey::new(&public.n, &public.e).unwrap();
    (pair, key)
}

fn sign(pair: &RsaKeyPair, padding: Padding, message: &[u8]) -> Vec<u8> {
    let mut out = vec![0; pair.public().modulus_len()];
    pair.sign(
        ring_params(padding).1,
        &SystemRandom::new(),
        message,
        &mut out,
    )
    .unwrap();
    out
}

fn ring_verifies(key: &PublicKey, padding: Padding, message: &[u8], signature: &[u8]) -> bool {
    let components = RsaPublicKeyComponents {
        n: key.n(),
        e: key.e(),
    };
    components
        .verify(ring_params(padding).0, message, signature)
        .is_ok()
}

/// A deterministic stream of pseudo-random words (xorshift64*), for test numbers.
struct Words(u64);

impl Words {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// An odd number of exactly `bits` bits, big-endian.
    fn odd_modulus(&mut self, bits: usize) -> Vec<u8> {
        let mut n = self.bytes(bits.div_ceil(8));
        let top_bits = bits - 8 * (n.len() - 1);
        n[0] &= 0xff >> (8 - top_bits);
        n[0] |= 1 << (top_bits - 1);
        *n.last_mut().unwrap() |= 1;
        n
    }
}

/// The reference's numbers: 32-bit limbs, little-endian, sharing nothing with the code under
/// test.
fn limbs32(bytes: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (index, chunk) in bytes.rchunks(4).enumerate() {
        out[index] = chunk
            .iter()
            .fold(0, |value, &byte| (value << 8) | u32::from(byte));
    }
    out
}

fn bytes32(limbs: &[u32], len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = limbs
        .iter()
        .rev()
        .flat_map(|limb| limb.to_be_bytes())
        .collect();
    let extra = bytes.len() - len;
    assert!(bytes[..extra].iter().all(|&byte| byte == 0));
    bytes[extra..].to_vec()
}

fn ref_less(a: &[u32], b: &[u32]) -> bool {
    a.iter().rev().cmp(b.iter().rev()) == std::cmp::Ordering::Less
}

/// `x = x + y mod n` for `x`, `y` below n.
fn ref_add_mod(x: &mut [u32], y: &[u32], n: &[u32]) {
    let mut carry = 0u64;
    for (xi, &yi) in x.iter_mut().zip(y) {
        let sum = u64::from(*xi) + u64::from(yi) + carry;
        *xi = sum as u32;
        carry = sum >> 32;
    }
    if carry != 0 || !ref_less(x, n) {
        let mut borrow = 0i64;
        for (xi, &ni) in x.iter_mut().zip(n) {
            let d = i64::from(*xi) - i64::from(ni) - borrow;
            *xi = d as u32;
            borrow = i64::from(d < 0);
        }
    }
}

/// a·b mod n by doublings and additions only.
fn reference_mul(a: &[u32], b: &[u32], n: &[u32]) -> Vec<u32> {
    let mut x = vec![0u32; n.len()];
    for bit in (0..32 * n.len()).rev() {
        let copy = x.clone();
        ref_add_mod(&mut x, &copy, n);
        if b[bit / 32] >> (bit % 32) & 1 == 1 {
            ref_add_mod(&mut x, a, n);
        }
    }
    x
}

fn reference_pow(s: &[u32], e: u64, n: &[u32]) -> Vec<u32> {
    let mut acc = s.to_vec();
    for bit in (0..63 - e.leading_zeros()).rev() {
        acc = reference_mul(&acc, &acc, n);
        if e >> bit & 1 == 1 {
            acc = reference_mul(&acc, s, n);
        }
    }
    acc
}

fn exponent_bytes(e: u64) -> Vec<u8> {
    strip_leading_zeros(&e.to_be_bytes()).to_vec()
}

#[test]
fn ring_signatures_verify_and_altered_ones_do_not() {
    for pkcs8 in [RSA_A, RSA_B] {
        let (pair, key) = pair(pkcs8);
        assert_eq!(key.bits(), 2048);
        for padding in PADDINGS {
            let signature = sign(&pair, padding, MESSAGE);
            assert!(key.verify(padding, MESSAGE, &signature), "{padding:?}");
            for index in [0, 1, 100, 255] {
                let mut altered = signature.clone();
                altered[index] ^= 0x10;
                assert!(
                    !key.verify(padding, MESSAGE, &altered),
                    "{padding:?} byte {index}"
                );
                assert!(!ring_verifies(&key, padding, MESSAGE, &altered));
            }
            assert!(
                !key.verify(padding, b"another message", &signature),
                "{padding:?}"
            );
            // Same hash, the other padding; same padding, another hash.
            for other in PADDINGS.into_iter().filter(|other| *other != padding) {
                assert!(
                    !key.verify(other, MESSAGE, &signature),
                    "{padding:?} as {other:?}"
                );
            }
        }
    }
}

#[test]
fn another_keys_signature_is_refused() {
    let (pair_a, _) = pair(RSA_A);
    let (_, key_b) = pair(RSA_B);
    for padding in PADDINGS {
        assert!(!key_b.verify(padding, MESSAGE, &sign(&pair_a, padding, MESSAGE)));
    }
}

#[test]
fn signature_not_below_the_modulus_or_zero_is_refused() {
    let (_, key) = pair(RSA_A);
    let n = key.n().to_vec();
    let mut out = [0u8; MAX_MODULUS_BITS / 8];
    assert!(key.public_operation(&n, &mut out).is_none(), "s = n");
    let mut above = n.clone();
    *above.last_mut().unwrap() += 2; // n is odd: no carry
    assert!(
        key.public_operation(&above, &mut out).is_none(),
        "s = n + 2"
    );
    assert!(
        key.public_operation(&[0xff; 256], &mut out).is_none(),
        "s = 2^2048 - 1"
    );
    assert!(key.public_operation(&[0; 256], &mut out).is_none(), "s = 0");
    let mut below = n.clone();
    *below.last_mut().unwrap() -= 1;
    assert!(
        key.public_operation(&below, &mut out).is_some(),
        "s = n - 1"
    );
    let mut one = [0u8; 256];
    one[255] = 1;
    assert_eq!(
        key.public_operation(&one, &mut out).unwrap(),
        one,
        "1^e = 1"
    );
    for padding in PADDINGS {
        for signature in [&n, &above, &[0; 256][..]] {
            assert!(!key.verify(padding, MESSAGE, signature));
        }
    }
}

#[test]
fn signature_bits_above_the_limbs_are_not_dropped() {
    // 2,100 bits: 75 limbs of 28 bits hold exactly 2,100 bits, the signature's 263 bytes 2,104.
    let mut words = Words(21);
    for bits in [2100, 2097, 4100] {
        let n = words.odd_modulus(bits);
        let key = PublicKey::new(&n, &[1, 0, 1]).unwrap();
        let mut out = [0u8; MAX_MODULUS_BITS / 8];
        let mut above = n.clone();
        above[0] |= 0x80;
        assert!(
            key.public_operation(&above, &mut out).is_none(),
            "{bits} bits"
        );
        let mut below = n.clone();
        below[0] = 0;
        assert!(
            key.public_operation(&below, &mut out).is_some(),
            "{bits} bits"
        );
    }
}

#[test]
fn signature_must_be_exactly_as_long_as_the_modulus() {
    let (pair, key) = pair(RSA_A);
    for padding in PADDINGS {
        let signature = sign(&pair, padding, MESSAGE);
        let with_leading_zero = [&[0][..], &signature].concat();
        assert!(
            !key.verify(padding, MESSAGE, &with_leading_zero),
            "{padding:?}"
        );
        assert!(!ring_verifies(&key, padding, MESSAGE, &with_leading_zero));
        assert!(!key.verify(padding, MESSAGE, &signature[1..]));
        assert!(!key.verify(padding, MESSAGE, &[]));
    }
    // A signature whose top byte is zero keeps it: the length is the modulus's, not the value's.
    let mut out = [0u8; MAX_MODULUS_BITS / 8];
    let mut small = [0u8; 256];
    small[255] = 2;
    assert_eq!(
        key.public_operation(&small, &mut out).map(<[u8]>::len),
        Some(256)
    );
    assert!(key.public_operation(&small[1..], &mut out).is_none());
}

#[test]
fn public_operation_matches_a_shift_and_add_reference() {
    let mut words = Words(0x9e37_79b9_7f4a_7c15);
    for (bits, e) in [
        (2048, 65537),
        (2048, 3),
        (2049, 65537),
        (2055, 5),
        (2056, 17),
        (2057, 65537),
        (3072, 65537),
        (3071, (1 << 33) - 1),
        (4096, 0x1_0000_0001),
        (4097, 257),
        (3360, 65537),
        (3361, 3),
        (2100, 65537),
    ] {
        let n_bytes = words.odd_modulus(bits);
        let key = PublicKey::new(&n_bytes, &exponent_bytes(e)).unwrap();
        assert_eq!(key.bits(), bits);
        let n = limbs32(&n_bytes, bits.div_ceil(32));
        for _ in 0..2 {
            let mut s_bytes = words.bytes(n_bytes.len());
            s_bytes[0] &= n_bytes[0] >> 1;
            let s = limbs32(&s_bytes, n.len());
            let expected = bytes32(&reference_pow(&s, e, &n), n_bytes.len());
            let mut out = [0u8; MAX_MODULUS_BITS / 8];
            let got = key.public_operation(&s_bytes, &mut out).unwrap();
            assert_eq!(got, expected, "{bits} bits, e = {e}");
        }
    }
}

#[test]
fn largest_modulus_matches_the_reference() {
    let mut words = Words(7);
    let n_bytes = words.odd_modulus(8192);
    let key = PublicKey::new(&n_bytes, &[1, 0, 1]).unwrap();
    let n = limbs32(&n_bytes, 256);
    let mut s_bytes = words.bytes(1024);
    s_bytes[0] &= 0x7f;
    let s = limbs32(&s_bytes, 256);
    let expected = bytes32(&reference_pow(&s, 65537, &n), 1024);
    let mut out = [0u8; MAX_MODULUS_BITS / 8];
    assert_eq!(key.public_operation(&s_bytes, &mut out).unwrap(), expected);
}

#[test]
fn montgomery_constants() {
    for x in [1u32, 3, 0xffff_ffff, 0x8000_0001, 0x1234_5677] {
        assert_eq!(x.wrapping_mul(neg_inverse(x)), u32::MAX, "{x:#x}");
    }
    let mut words = Words(5);
    for bits in [2048, 2100, 3360, 3361, 8192] {
        let n_bytes = words.odd_modulus(bits);
        let key = PublicKey::new(&n_bytes, &[3]).unwrap();
        let modulus = &key.modulus;
        let (w, l) = (modulus.w as usize, modulus.n.len());
        assert_eq!(
            (w, l),
            if bits <= 3360 {
                (28, bits.div_ceil(28))
            } else {
                (26, bits.div_ceil(26))
            }
        );
        assert_eq!(
            modulus.n[0].wrapping_mul(modulus.n0_inv) & modulus.mask,
            modulus.mask
        );
        // R² mod n, checked as the reference's (R mod n)·(R mod n) mod n, R = 2^(w·l).
        let n = limbs32(&n_bytes, bits.div_ceil(32));
        let mut r = vec![0u32; n.len()];
        r[0] = 1;
        for _ in 0..w * l {
            let copy = r.clone();
            ref_add_mod(&mut r, &copy, &n);
        }
        let mut rr = vec![0u8; n_bytes.len()];
        to_be_bytes(&key.rr, modulus.w, &mut rr);
        assert_eq!(
            rr,
            bytes32(&reference_mul(&r, &r, &n), n_bytes.len()),
            "{bits} bits"
        );
    }
}

#[test]
fn modulus_sizes_and_exponents_are_rings() {
    let mut words = Words(11);
    let e = [1, 0, 1];
    for (bits, accepted) in [
        (2047, false),
        (2048, true),
        (4095, true),
        (8192, true),
        (8193, false),
        (1024, false),
    ] {
        let n = words.odd_modulus(bits);
        assert_eq!(PublicKey::new(&n, &e).is_some(), accepted, "{bits} bits");
    }
    let n = words.odd_modulus(2048);
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    assert!(PublicKey::new(&even, &e).is_none(), "even modulus");
    assert!(PublicKey::new(&[], &e).is_none());
    // Leading zeros of either are stripped, as JWKs sometimes carry them.
    let padded = PublicKey::new(&[&[0, 0][..], &n].concat(), &[0, 1, 0, 1]).unwrap();
    assert_eq!(
        (padded.n(), padded.e(), padded.bits()),
        (&n[..], &e[..], 2048)
    );
    for (exponent, accepted) in [
        (&[3u8][..], true),
        (&[1], false),
        (&[0], false),
        (&[], false),
        (&[1, 0, 0], false),
        (&[1, 0xff, 0xff, 0xff, 0xff], true),
        (&[2, 0, 0, 0, 1], false),
        (&[1, 0, 0, 0, 0, 1], false),
    ] {
        assert_eq!(
            PublicKey::new(&n, exponent).is_some(),
            accepted,
            "e = {exponent:?}"
        );
    }
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) with a fixed salt, to reach the decoder directly.
fn pss_encode(modulus_bits: usize, hash: Hash, message: &[u8], salt: &[u8]) -> Vec<u8> {
    let algorithm = hash.algorithm();
    let h_len = algorithm.output_len();
    let em_bits = modulus_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let m_hash = digest::digest(algorithm, message);
    let mut context = digest::Context::new(algorithm);
    context.update(&[0; 8]);
    context.update(m_hash.as_ref());
    context.update(salt);
    let h = context.finish();
    let db_len = em_len - h_len - 1;
    let mut db = vec![0u8; db_len];
    db[db_len - salt.len() - 1] = 1;
    db[db_len - salt.len()..].copy_from_slice(salt);
    let mut masked = vec![0u8; db_len];
    mgf1_xor(algorithm, h.as_ref(), &db, &mut masked);
    masked[0] &= 0xff >> (8 * em_len - em_bits);
    let mut em = masked;
    em.extend_from_slice(h.as_ref());
    em.push(0xbc);
    let k = modulus_bits.div_ceil(8);
    [vec![0; k - em_len], em].concat()
}

#[test]
fn pss_decoding_at_every_top_byte_alignment() {
    for bits in [2048, 2049, 2050, 2055, 2056, 2057] {
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let h_len = hash.algorithm().output_len();
            let em = pss_encode(bits, hash, MESSAGE, &vec![0x5a; h_len]);
            assert_eq!(em.len(), bits.div_ceil(8));
            assert!(pss_matches(&em, bits, hash, MESSAGE), "{bits} {hash:?}");
            assert!(!pss_matches(&em, bits, hash, b"other"), "{bits} {hash:?}");
            // A salt of another length is not JOSE's.
            let short_salt = pss_encode(bits, hash, MESSAGE, &vec![0x5a; h_len - 1]);
            assert!(!pss_matches(&short_salt, bits, hash, MESSAGE));
            let no_salt = pss_encode(bits, hash, MESSAGE, &[]);
            assert!(!pss_matches(&no_salt, bits, hash, MESSAGE));
            // The trailer, the bit above emBits, and the extra leading byte.
            let mut bad_trailer = em.clone();
            *bad_trailer.last_mut().unwrap() = 0xbd;
            assert!(!pss_matches(&bad_trailer, bits, hash, MESSAGE));
            let mut top_bit = em.clone();
            if (bits - 1) % 8 == 0 {
                // The output's extra leading byte must be zero.
                top_bit[0] = 1;
            } else {
                // The bits above emBits must be zero.
                top_bit[0] |= 0x80;
            }
            assert!(
                !pss_matches(&top_bit, bits, hash, MESSAGE),
                "{bits} {hash:?} top bit"
            );
        }
    }
}

#[test]
fn pkcs1_encoding_is_compared_whole() {
    let digest = digest::digest(&digest::SHA256, MESSAGE);
    let prefix = Hash::Sha256.digest_info_prefix();
    let t = [prefix, digest.as_ref()].concat();
    let em = |padding_len: usize| [&[0, 1][..], &vec![0xff; padding_len], &[0], &t].concat();
    let good = em(256 - 3 - t.len());
    assert!(pkcs1_matches(&good, Hash::Sha256, MESSAGE));
    assert!(!pkcs1_matches(&good, Hash::Sha384, MESSAGE));
    let mut bad = good.clone();
    bad[1] = 2;
    assert!(!pkcs1_matches(&bad, Hash::Sha256, MESSAGE));
    let mut bad = good.clone();
    bad[10] = 0xfe;
    assert!(!pkcs1_matches(&bad, Hash::Sha256, MESSAGE));
    // DigestInfo without the NULL parameters (Wycheproof's "MissingNull"): refused, as ring.
    let without_null = [
        &[0x30, 0x2f, 0x30, 0x0b][..],
        &prefix[4..15],
        &prefix[17..],
        digest.as_ref(),
    ]
    .concat();
    let other = [
        &[0, 1][..],
        &vec![0xff; 256 - 3 - without_null.len()],
        &[0],
        &without_null,
    ]
    .concat();
    assert_eq!(other.len(), 256);
    assert!(!pkcs1_matches(&other, Hash::Sha256, MESSAGE));
    // Too short to hold the encoding at all.
    assert!(!pkcs1_matches(&good[..t.len() + 2], Hash::Sha256, MESSAGE));
    assert!(!pkcs1_matches(&em(7)[..], Hash::Sha256, MESSAGE));
    assert!(pkcs1_matches(&em(8)[..], Hash::Sha256, MESSAGE));
}
