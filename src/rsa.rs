//! RSA signature verification (RFC 8017: RSASSA-PKCS1-v1_5 and RSASSA-PSS) on a public key
//! prepared once, when its key set is parsed.
//!
//! ring 0.17 rebuilds its Montgomery setup (R² mod n) at every verification; here the modulus
//! is decoded into limbs and its Montgomery constants (−n⁻¹ mod 2ʷ, R² mod n) are computed
//! once and kept with the key. Limbs are 28 bits (26 for the largest keys) in u32s with
//! 64-bit products: wasm32 has no 64×64→128 multiplication, and narrow limbs let a column
//! of products be summed without carries (see `Modulus`). Only public data goes through here
//! (a public key and a signature), so nothing needs to be constant-time. Hashes are ring's.
//!
//! Acceptance is ring's exactly (`RSA_PKCS1_2048_8192_SHA*`, `RSA_PSS_2048_8192_SHA*`): a
//! modulus of 2048 to 8192 bits, odd; an odd exponent from 3 to 2³³ − 1; a signature exactly
//! as long as the modulus, below it and not zero; PSS with MGF1 over the message hash and a
//! salt as long as the hash (what JOSE's PS algorithms are, RFC 7518 §3.5).
//! `fuzz/fuzz_targets/rsa.rs` keeps that true against ring.

use ring::digest;

pub const MIN_MODULUS_BITS: usize = 2048;
/// ring's limit; beyond it ring refuses every signature.
pub const MAX_MODULUS_BITS: usize = 8192;
/// ring refuses exponents above 2^33 − 1 (it bounds the cost of a verification).
pub const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// The hash and padding of a JOSE RS or PS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    Pkcs1(Hash),
    Pss(Hash),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha384 => &digest::SHA384,
            Hash::Sha512 => &digest::SHA512,
        }
    }

    /// The DER DigestInfo before the hash (RFC 8017 §9.2, note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x01, 0x05, 0x00, 0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x02, 0x05, 0x00, 0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
                0x03, 0x05, 0x00, 0x04, 0x40,
            ],
        }
    }
}

/// An RSA public key with its Montgomery setup.
pub struct PublicKey {
    /// Unsigned big-endian, no leading zero: what the key's SPKI and ring take.
    n_bytes: Box<[u8]>,
    e_bytes: Box<[u8]>,
    e: u64,
    bits: usize,
    modulus: Modulus,
    /// R² mod n, R = 2^(w·limbs).
    rr: Box<[u32]>,
}

/// The modulus in little-endian limbs of `w` bits (28, or 26 above 3,360 bits) held in u32s,
/// with −n⁻¹ mod 2ʷ. Limbs narrower than the word leave room in a u64 for a whole column of
/// products (2·limbs products below 2^2w), so a column is summed with no carry handling: one
/// multiply and one add per product, independent of each other, where 32-bit limbs need a
/// carry chain through every step.
struct Modulus {
    n: Box<[u32]>,
    n0_inv: u32,
    w: u32,
    mask: u32,
}

/// Products of two 28-bit limbs are below 2^56: a column of 2·limbs of them, plus the carry
/// from the column before, stays below 2^64 up to 120 limbs (3,360 bits) — 2⁸ products with
/// margin; 26 bits allow 2¹² (8192 bits is 316 limbs).
const WIDE_LIMB_MAX_LIMBS: usize = 120;
const MAX_LIMBS: usize = MAX_MODULUS_BITS.div_ceil(26);

impl PublicKey {
    /// The key from its unsigned big-endian modulus and exponent (leading zeros allowed);
    /// `None` for a key ring would refuse.
    pub fn new(n: &[u8], e: &[u8]) -> Option<PublicKey> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let &top = n.first()?;
        let bits = n.len() * 8 - top.leading_zeros() as usize;
        let odd = n.last().is_some_and(|low| low & 1 == 1);
        if !(MIN_MODULUS_BITS..=MAX_MODULUS_BITS).contains(&bits) || !odd || e.len() > 5 {
            return None;
        }
        let exponent = e
            .iter()
            .fold(0u64, |value, &byte| (value << 8) | u64::from(byte));
        if !(3..=MAX_EXPONENT).contains(&exponent) || exponent & 1 == 0 {
            return None;
        }
        let w = if bits.div_ceil(28) <= WIDE_LIMB_MAX_LIMBS {
            28
        } else {
            26
        };
        let limbs = from_be_bytes(n, w, bits.div_ceil(w as usize));
        let mask = (1u32 << w) - 1;
        let modulus = Modulus {
            n0_inv: neg_inverse(limbs[0]) & mask,
            n: limbs.into(),
            w,
            mask,
        };
        let rr = modulus.r_squared(bits);
        Some(PublicKey {
            n_bytes: n.into(),
            e_bytes: e.into(),
            e: exponent,
            bits,
            modulus,
            rr: rr.into(),
        })
    }

    /// The modulus, unsigned big-endian without leading zeros.
    pub fn n(&self) -> &[u8] {
        &self.n_bytes
    }

    /// The exponent, unsigned big-endian without leading zeros.
    pub fn e(&self) -> &[u8] {
        &self.e_bytes
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Whether `signature` is a valid signature of `message` under this key.
    pub fn verify(&self, padding: Padding, message: &[u8], signature: &[u8]) -> bool {
        let mut em = [0u8; MAX_MODULUS_BITS / 8];
        let Some(em) = self.public_operation(signature, &mut em) else {
            return false;
        };
        match padding {
            Padding::Pkcs1(hash) => pkcs1_matches(em, hash, message),
            Padding::Pss(hash) => pss_matches(em, self.bits, hash, message),
        }
    }

    /// RSAVP1 (RFC 8017 §5.2.2): sᵉ mod n, big-endian, as long as the modulus, into `out`.
    /// `None` when the signature is not as long as the modulus, or is zero or not below it.
    fn public_operation<'o>(&self, signature: &[u8], out: &'o mut [u8]) -> Option<&'o [u8]> {
        let len = self.bits.div_ceil(8);
        if signature.len() != len {
            return None;
        }
        // Compared as bytes (both as long as the modulus): limbs could drop bits above them.
        if signature >= &self.n_bytes[..] || signature.iter().all(|&byte| byte == 0) {
            return None;
        }
        let modulus = &self.modulus;
        let l = modulus.n.len();
        let s = from_be_bytes(signature, modulus.w, l);
        let mut scratch = [0u32; MAX_LIMBS];
        // s·R mod n: s in Montgomery form.
        let mut s_mont = [0u32; MAX_LIMBS];
        let s_mont = &mut s_mont[..l];
        modulus.mont_mul(&s, &self.rr, s_mont, &mut scratch);
        let mut acc = [0u32; MAX_LIMBS];
        let acc = &mut acc[..l];
        acc.copy_from_slice(s_mont);
        // Left to right over the exponent's bits after the top one. The exponent is odd, so
        // the last step multiplies by s itself, not by s·R, which leaves Montgomery form:
        // (sᵉ⁻¹·R)·s·R⁻¹ = sᵉ.
        let top = 63 - self.e.leading_zeros();
        let mut tmp = [0u32; MAX_LIMBS];
        let tmp = &mut tmp[..l];
        for bit in (0..top).rev() {
            modulus.mont_square(acc, tmp, &mut scratch);
            let factor: &[u32] = if bit == 0 {
                &s
            } else if self.e >> bit & 1 == 1 {
                s_mont
            } else {
                acc.copy_from_slice(tmp);
                continue;
            };
            modulus.mont_mul(tmp, factor, acc, &mut scratch);
        }
        let out = &mut out[..len];
        to_be_bytes(acc, modulus.w, out);
        Some(out)
    }
}

impl Modulus {
    /// R² mod n: R mod n by doublings from 2^(bits−1), then 7·`l` more doublings give
    /// 2^(7l)·R, and two Montgomery squarings (each takes 2ᵏ·R to 2²ᵏ·R) give
    /// 2^(28l)·R = R² mod n for 28-bit limbs; for 26-bit limbs 13·`l` doublings and one
    /// squaring give 2^(26l)·R.
    fn r_squared(&self, bits: usize) -> Vec<u32> {
        let l = self.n.len();
        let w = self.w as usize;
        let mut x = vec![0u32; l];
        // 2^(bits−1) < n.
        x[(bits - 1) / w] = 1 << ((bits - 1) % w);
        let (doublings, squarings) = if w == 28 { (7 * l, 2) } else { (13 * l, 1) };
        for _ in 0..(w * l - (bits - 1)) + doublings {
            self.double_mod(&mut x);
        }
        let mut scratch = [0u32; MAX_LIMBS];
        let mut squared = vec![0u32; l];
        for _ in 0..squarings {
            self.mont_square(&x, &mut squared, &mut scratch);
            x.copy_from_slice(&squared);
        }
        x
    }

    /// `out = a·b·R⁻¹ mod n` (fully reduced), for `a`, `b` below n: coarsely integrated
    /// product scanning, column by column, the digits m of the multiple of n kept in `m`.
    fn mont_mul(&self, a: &[u32], b: &[u32], out: &mut [u32], m: &mut [u32; MAX_LIMBS]) {
        let l = self.n.len();
        let (n, a, b, m) = (&self.n[..l], &a[..l], &b[..l], &mut m[..l]);
        let mut acc = 0u64;
        for k in 0..l {
            acc += dot(&a[..=k], &b[..=k]);
            acc += dot(&m[..k], &n[1..=k]);
            let digit = (acc as u32).wrapping_mul(self.n0_inv) & self.mask;
            m[k] = digit;
            acc += u64::from(digit) * u64::from(n[0]);
            acc >>= self.w;
        }
        for k in l..2 * l - 1 {
            let from = k + 1 - l;
            acc += dot(&a[from..], &b[from..]);
            acc += dot(&m[from..], &n[from..]);
            out[k - l] = acc as u32 & self.mask;
            acc >>= self.w;
        }
        out[l - 1] = acc as u32 & self.mask;
        self.reduce_once(out, acc >> self.w);
    }

    /// `out = a²·R⁻¹ mod n` (fully reduced), for `a` below n: as `mont_mul`, each product
    /// below the diagonal once, doubled.
    fn mont_square(&self, a: &[u32], out: &mut [u32], m: &mut [u32; MAX_LIMBS]) {
        let l = self.n.len();
        let (n, a, m) = (&self.n[..l], &a[..l], &mut m[..l]);
        let mut acc = 0u64;
        for k in 0..l {
            acc += square_column(&a[..=k]);
            acc += dot(&m[..k], &n[1..=k]);
            let digit = (acc as u32).wrapping_mul(self.n0_inv) & self.mask;
            m[k] = digit;
            acc += u64::from(digit) * u64::from(n[0]);
            acc >>= self.w;
        }
        for k in l..2 * l - 1 {
            let from = k + 1 - l;
            acc += square_column(&a[from..]);
            acc += dot(&m[from..], &n[from..]);
            out[k - l] = acc as u32 & self.mask;
            acc >>= self.w;
        }
        out[l - 1] = acc as u32 & self.mask;
        self.reduce_once(out, acc >> self.w);
    }

    /// `x` (with `overflow` above its top limb) is below 2n: less n if it is not below n.
    fn reduce_once(&self, x: &mut [u32], overflow: u64) {
        if overflow != 0 || !less_than(x, &self.n) {
            self.sub_assign(x);
        }
    }

    /// `x -= n` modulo 2^(w·limbs).
    fn sub_assign(&self, x: &mut [u32]) {
        let mut borrow = 0u32;
        for (x, &n) in x.iter_mut().zip(self.n.iter()) {
            let d = x.wrapping_sub(n).wrapping_sub(borrow);
            borrow = d >> 31;
            *x = d & self.mask;
        }
    }

    /// `x = 2x mod n`, for `x` below n.
    fn double_mod(&self, x: &mut [u32]) {
        let mut shifted_out = 0u32;
        for limb in x.iter_mut() {
            let doubled = (*limb << 1) | shifted_out;
            shifted_out = doubled >> self.w;
            *limb = doubled & self.mask;
        }
        self.reduce_once(x, u64::from(shifted_out));
    }
}

/// Σ xᵢ·y_(len−1−i): one column of a product, `y` read backwards.
#[inline(always)]
fn dot(x: &[u32], y: &[u32]) -> u64 {
    x.iter()
        .zip(y.iter().rev())
        .map(|(&x, &y)| u64::from(x) * u64::from(y))
        .sum()
}

/// One column of a square: Σ xᵢ·x_(len−1−i), each pair once doubled, the middle once.
#[inline(always)]
fn square_column(x: &[u32]) -> u64 {
    let half = x.len() / 2;
    let pairs = dot(&x[..half], &x[x.len() - half..]);
    let middle = match x.len() % 2 {
        1 => u64::from(x[half]) * u64::from(x[half]),
        _ => 0,
    };
    2 * pairs + middle
}

fn strip_leading_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

/// Big-endian bytes as `limbs` little-endian limbs of `w` bits (the value fits: callers check
/// lengths).
fn from_be_bytes(bytes: &[u8], w: u32, limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    let (mut buffer, mut held, mut index) = (0u64, 0u32, 0usize);
    for &byte in bytes.iter().rev() {
        buffer |= u64::from(byte) << held;
        held += 8;
        if held >= w {
            if let Some(limb) = out.get_mut(index) {
                *limb = buffer as u32 & ((1 << w) - 1);
            }
            buffer >>= w;
            held -= w;
            index += 1;
        }
    }
    if let Some(limb) = out.get_mut(index) {
        *limb = buffer as u32;
    }
    out
}

/// Little-endian limbs of `w` bits as big-endian bytes filling `out` (the value fits).
fn to_be_bytes(limbs: &[u32], w: u32, out: &mut [u8]) {
    let (mut buffer, mut held) = (0u64, 0u32);
    let mut limbs = limbs.iter();
    for byte in out.iter_mut().rev() {
        if held < 8 {
            buffer |= u64::from(limbs.next().copied().unwrap_or(0)) << held;
            held += w;
        }
        *byte = buffer as u8;
        buffer >>= 8;
        held -= 8;
    }
}

/// `a < b`, both of the same number of limbs.
fn less_than(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

/// −x⁻¹ mod 2³² for odd x (Newton's iteration: each step doubles the correct bits).
fn neg_inverse(x: u32) -> u32 {
    let mut inverse = x; // correct to 3 bits: x·x ≡ 1 mod 8 for odd x
    for _ in 0..4 {
        inverse = inverse.wrapping_mul(2u32.wrapping_sub(x.wrapping_mul(inverse)));
    }
    inverse.wrapping_neg()
}

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2): the one encoding of the message's hash is compared whole.
fn pkcs1_matches(em: &[u8], hash: Hash, message: &[u8]) -> bool {
    let digest = digest::digest(hash.algorithm(), message);
    let prefix = hash.digest_info_prefix();
    let t_len = prefix.len() + digest.as_ref().len();
    let Some(padding_len) = em.len().checked_sub(t_len + 3) else {
        return false;
    };
    let (head, rest) = em.split_at(2);
    let (ones, rest) = rest.split_at(padding_len);
    let (separator, t) = rest.split_at(1);
    let (t_prefix, t_digest) = t.split_at(prefix.len());
    padding_len >= 8
        && head == [0x00, 0x01]
        && ones.iter().all(|&byte| byte == 0xff)
        && separator == [0x00]
        && t_prefix == prefix
        && t_digest == digest.as_ref()
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with MGF1 over the same hash and a salt as long as the
/// hash; `em` is the whole public-operation output (as long as the modulus).
fn pss_matches(em: &[u8], modulus_bits: usize, hash: Hash, message: &[u8]) -> bool {
    let algorithm = hash.algorithm();
    let h_len = algorithm.output_len();
    let em_bits = modulus_bits - 1;
    let em_len = em_bits.div_ceil(8);
    // With emBits a multiple of 8, the output has one more byte than EM, and it must be 0.
    let em = match em.len() - em_len {
        0 => em,
        _ => match em.split_first() {
            Some((0, rest)) => rest,
            _ => return false,
        },
    };
    // Step 3: emLen ≥ hLen + sLen + 2.
    let Some(db_len) = em_len.checked_sub(h_len + 1) else {
        return false;
    };
    let Some(ps_len) = db_len.checked_sub(h_len + 1) else {
        return false;
    };
    // Step 4.
    if em.last() != Some(&0xbc) {
        return false;
    }
    let (masked_db, h) = em[..em_len - 1].split_at(db_len);
    // Step 6: the bits above emBits are zero.
    let top_mask = 0xffu8 >> (8 * em_len - em_bits);
    if masked_db[0] & !top_mask != 0 {
        return false;
    }
    // Steps 7 to 9.
    let mut db = [0u8; MAX_MODULUS_BITS / 8];
    let db = &mut db[..db_len];
    mgf1_xor(algorithm, h, masked_db, db);
    db[0] &= top_mask;
    // Step 10: PS is zeros, then 0x01.
    if db[..ps_len].iter().any(|&byte| byte != 0) || db[ps_len] != 0x01 {
        return false;
    }
    // Steps 11 to 14.
    let salt = &db[ps_len + 1..];
    let m_hash = digest::digest(algorithm, message);
    let mut context = digest::Context::new(algorithm);
    context.update(&[0; 8]);
    context.update(m_hash.as_ref());
    context.update(salt);
    context.finish().as_ref() == h
}

/// `out = masked ⊕ MGF1(seed)` (RFC 8017 §B.2.1), `out` as long as `masked`.
fn mgf1_xor(algorithm: &'static digest::Algorithm, seed: &[u8], masked: &[u8], out: &mut [u8]) {
    let h_len = algorithm.output_len();
    for (counter, (out, masked)) in out.chunks_mut(h_len).zip(masked.chunks(h_len)).enumerate() {
        let mut context = digest::Context::new(algorithm);
        context.update(seed);
        context.update(&(counter as u32).to_be_bytes());
        let mask = context.finish();
        for ((out, &masked), &mask) in out.iter_mut().zip(masked).zip(mask.as_ref()) {
            *out = masked ^ mask;
        }
    }
}

#[cfg(test)]
#[path = "rsa_tests.rs"]
mod tests;
