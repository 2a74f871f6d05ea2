//! Ed25519 signature verification (RFC 8032), accepting exactly what ring's `ED25519` (BoringSSL's
//! `ED25519_verify`) accepts, with the public key prepared once when the key set is parsed.
//!
//! ring decodes and decompresses the public key on every verification (a square root, ~10 % of
//! the work) and runs one 253-step double-and-add. Here the key is decompressed once, and its
//! negation −A and the base point B are each split into eight points 2^(32·i)·P with a table of
//! odd multiples per point (for a key ~7.7 KB, for B ~31 KB once per VM), so that one
//! verification is a 33-step joint wNAF over sixteen 32-bit scalar chunks: an eighth of the
//! doublings for about the same number of additions.
//!
//! What ring accepts, and so do we: the cofactorless equation (the encoding of [S]B − [k]A,
//! k = SHA-512(R ‖ A ‖ M) mod L, must equal R byte for byte, so a non-canonical R never verifies);
//! S must be below the group order L; A must decode, as leniently as BoringSSL decodes it: a y at
//! or above p is taken mod p, x = 0 with the sign bit set is taken as x = 0, and small-order keys
//! are not refused. The key's bytes as published are what is hashed.
//! Everything here handles public data only, so nothing is constant-time.

use ring::digest;
use std::sync::OnceLock;

/// A field element mod p = 2^255 − 19 in radix 2^25.5: limb i holds bits from ⌈25.5·i⌉, 26 bits
/// for even i and 25 for odd. Limbs are signed and kept small enough (|limb| < 2^27 after
/// at most a few additions of carried values) that a product's 64-bit sums cannot overflow:
/// wasm32 has 64-bit multiplication but no 64×64→128, so 32-bit limbs with 64-bit products are
/// its natural size. The bounds and the order of carries are those of ref10 (SUPERCOP), the
/// code BoringSSL's is derived from.
#[derive(Clone, Copy, Debug)]
struct Fe([i64; 10]);

const LIMB_BITS: [u32; 10] = [26, 25, 26, 25, 26, 25, 26, 25, 26, 25];

impl Fe {
    const ZERO: Fe = Fe([0; 10]);
    const ONE: Fe = Fe([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

    fn small(value: i64) -> Fe {
        Fe([value, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// The low 255 bits, little-endian (bit 255 is ignored); values from p to 2^255 − 1 are
    /// taken mod p, as BoringSSL's `fe_frombytes` does.
    fn from_bytes(bytes: &[u8; 32]) -> Fe {
        let mut padded = [0u8; 40];
        padded[..32].copy_from_slice(bytes);
        padded[31] &= 0x7f;
        let mut limbs = [0i64; 10];
        let mut offset = 0u32;
        for (limb, bits) in limbs.iter_mut().zip(LIMB_BITS) {
            let at = (offset / 8) as usize;
            let mut word = [0u8; 8];
            word.copy_from_slice(&padded[at..at + 8]);
            let value = u64::from_le_bytes(word) >> (offset % 8);
            *limb = (value & ((1 << bits) - 1)) as i64;
            offset += bits;
        }
        carry(limbs)
    }

    /// The canonical encoding (fully reduced mod p), little-endian.
    fn encode(&self) -> [u8; 32] {
        let mut h = carry(self.0).0;
        // q = 1 exactly when the value is at least p (adding 19 reaches 2^255).
        let mut q = (19 * h[9] + (1 << 24)) >> 25;
        for (limb, bits) in h.iter().zip(LIMB_BITS) {
            q = (limb + q) >> bits;
        }
        h[0] += 19 * q;
        for i in 0..9 {
            let c = h[i] >> LIMB_BITS[i];
            h[i + 1] += c;
            h[i] -= c << LIMB_BITS[i];
        }
        h[9] &= (1 << 25) - 1;
        let mut out = [0u8; 32];
        let (mut acc, mut filled, mut at) = (0u64, 0u32, 0usize);
        for (limb, bits) in h.iter().zip(LIMB_BITS) {
            acc |= (*limb as u64) << filled;
            filled += bits;
            while filled >= 8 {
                out[at] = acc as u8;
                acc >>= 8;
                filled -= 8;
                at += 1;
            }
        }
        // The last 7 bits: bit 255 stays clear.
        out[31] = acc as u8;
        out
    }

    fn is_negative(&self) -> bool {
        self.encode()[0] & 1 == 1
    }

    fn is_zero(&self) -> bool {
        self.encode() == [0; 32]
    }

    fn add(&self, other: &Fe) -> Fe {
        Fe(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }

    fn sub(&self, other: &Fe) -> Fe {
        Fe(std::array::from_fn(|i| self.0[i] - other.0[i]))
    }

    fn neg(&self) -> Fe {
        Fe(self.0.map(|limb| -limb))
    }

    fn mul(&self, other: &Fe) -> Fe {
        mul(self, other)
    }

    fn square(&self) -> Fe {
        square(self)
    }

    fn square_times(&self, times: u32) -> Fe {
        let mut out = *self;
        for _ in 0..times {
            out = square(&out);
        }
        out
    }

    /// (z^(2^250 − 1), z^11): the common part of ref10's chains for z^(p − 2) and z^((p − 5)/8).
    fn pow_2_250_minus_1(&self) -> (Fe, Fe) {
        let z2 = self.square();
        let z9 = z2.square_times(2).mul(self);
        let z11 = z9.mul(&z2);
        let z_5_0 = z11.square().mul(&z9); // 2^5 − 1
        let z_10_0 = z_5_0.square_times(5).mul(&z_5_0);
        let z_20_0 = z_10_0.square_times(10).mul(&z_10_0);
        let z_40_0 = z_20_0.square_times(20).mul(&z_20_0);
        let z_50_0 = z_40_0.square_times(10).mul(&z_10_0);
        let z_100_0 = z_50_0.square_times(50).mul(&z_50_0);
        let z_200_0 = z_100_0.square_times(100).mul(&z_100_0);
        let z_250_0 = z_200_0.square_times(50).mul(&z_50_0);
        (z_250_0, z11)
    }

    /// 1/z (0 for 0).
    fn invert(&self) -> Fe {
        let (z_250_0, z11) = self.pow_2_250_minus_1();
        z_250_0.square_times(5).mul(&z11)
    }

    /// z^((p − 5)/8) = z^(2^252 − 3).
    fn pow22523(&self) -> Fe {
        let (z_250_0, _) = self.pow_2_250_minus_1();
        z_250_0.square_times(2).mul(self)
    }
}

/// Carries a product's (or a sum's) limbs back to ±2^25 (even) / ±2^24 (odd), in ref10's order.
#[inline(always)]
fn carry(h: [i64; 10]) -> Fe {
    let [mut h0, mut h1, mut h2, mut h3, mut h4, mut h5, mut h6, mut h7, mut h8, mut h9] = h;
    let mut c;
    c = (h0 + (1 << 25)) >> 26;
    h1 += c;
    h0 -= c << 26;
    c = (h4 + (1 << 25)) >> 26;
    h5 += c;
    h4 -= c << 26;
    c = (h1 + (1 << 24)) >> 25;
    h2 += c;
    h1 -= c << 25;
    c = (h5 + (1 << 24)) >> 25;
    h6 += c;
    h5 -= c << 25;
    c = (h2 + (1 << 25)) >> 26;
    h3 += c;
    h2 -= c << 26;
    c = (h6 + (1 << 25)) >> 26;
    h7 += c;
    h6 -= c << 26;
    c = (h3 + (1 << 24)) >> 25;
    h4 += c;
    h3 -= c << 25;
    c = (h7 + (1 << 24)) >> 25;
    h8 += c;
    h7 -= c << 25;
    c = (h4 + (1 << 25)) >> 26;
    h5 += c;
    h4 -= c << 26;
    c = (h8 + (1 << 25)) >> 26;
    h9 += c;
    h8 -= c << 26;
    c = (h9 + (1 << 24)) >> 25;
    h0 += c * 19;
    h9 -= c << 25;
    c = (h0 + (1 << 25)) >> 26;
    h1 += c;
    h0 -= c << 26;
    Fe([h0, h1, h2, h3, h4, h5, h6, h7, h8, h9])
}

fn mul(f: &Fe, g: &Fe) -> Fe {
    let [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = f.0;
    let [g0, g1, g2, g3, g4, g5, g6, g7, g8, g9] = g.0;
    let g1_19 = 19 * g1;
    let g2_19 = 19 * g2;
    let g3_19 = 19 * g3;
    let g4_19 = 19 * g4;
    let g5_19 = 19 * g5;
    let g6_19 = 19 * g6;
    let g7_19 = 19 * g7;
    let g8_19 = 19 * g8;
    let g9_19 = 19 * g9;
    let f1_2 = 2 * f1;
    let f3_2 = 2 * f3;
    let f5_2 = 2 * f5;
    let f7_2 = 2 * f7;
    let f9_2 = 2 * f9;
    let h0 = f0 * g0
        + f1_2 * g9_19
        + f2 * g8_19
        + f3_2 * g7_19
        + f4 * g6_19
        + f5_2 * g5_19
        + f6 * g4_19
        + f7_2 * g3_19
        + f8 * g2_19
        + f9_2 * g1_19;
    let h1 = f0 * g1
        + f1 * g0
        + f2 * g9_19
        + f3 * g8_19
        + f4 * g7_19
        + f5 * g6_19
        + f6 * g5_19
        + f7 * g4_19
        + f8 * g3_19
        + f9 * g2_19;
    let h2 = f0 * g2
        + f1_2 * g1
        + f2 * g0
        + f3_2 * g9_19
        + f4 * g8_19
        + f5_2 * g7_19
        + f6 * g6_19
        + f7_2 * g5_19
        + f8 * g4_19
        + f9_2 * g3_19;
    let h3 = f0 * g3
        + f1 * g2
        + f2 * g1
        + f3 * g0
        + f4 * g9_19
        + f5 * g8_19
        + f6 * g7_19
        + f7 * g6_19
        + f8 * g5_19
        + f9 * g4_19;
    let h4 = f0 * g4
        + f1_2 * g3
        + f2 * g2
        + f3_2 * g1
        + f4 * g0
        + f5_2 * g9_19
        + f6 * g8_19
        + f7_2 * g7_19
        + f8 * g6_19
        + f9_2 * g5_19;
    let h5 = f0 * g5
        + f1 * g4
        + f2 * g3
        + f3 * g2
        + f4 * g1
        + f5 * g0
        + f6 * g9_19
        + f7 * g8_19
        + f8 * g7_19
        + f9 * g6_19;
    let h6 = f0 * g6
        + f1_2 * g5
        + f2 * g4
        + f3_2 * g3
        + f4 * g2
        + f5_2 * g1
        + f6 * g0
        + f7_2 * g9_19
        + f8 * g8_19
        + f9_2 * g7_19;
    let h7 = f0 * g7
        + f1 * g6
        + f2 * g5
        + f3 * g4
        + f4 * g3
        + f5 * g2
        + f6 * g1
        + f7 * g0
        + f8 * g9_19
        + f9 * g8_19;
    let h8 = f0 * g8
        + f1_2 * g7
        + f2 * g6
        + f3_2 * g5
        + f4 * g4
        + f5_2 * g3
        + f6 * g2
        + f7_2 * g1
        + f8 * g0
        + f9_2 * g9_19;
    let h9 = f0 * g9
        + f1 * g8
        + f2 * g7
        + f3 * g6
        + f4 * g5
        + f5 * g4
        + f6 * g3
        + f7 * g2
        + f8 * g1
        + f9 * g0;
    carry([h0, h1, h2, h3, h4, h5, h6, h7, h8, h9])
}

fn square(f: &Fe) -> Fe {
    let [f0, f1, f2, f3, f4, f5, f6, f7, f8, f9] = f.0;
    let h0 = f0 * f0 + 76 * f1 * f9 + 38 * f2 * f8 + 76 * f3 * f7 + 38 * f4 * f6 + 38 * f5 * f5;
    let h1 = 2 * f0 * f1 + 38 * f2 * f9 + 38 * f3 * f8 + 38 * f4 * f7 + 38 * f5 * f6;
    let h2 = 2 * f0 * f2 + 2 * f1 * f1 + 76 * f3 * f9 + 38 * f4 * f8 + 76 * f5 * f7 + 19 * f6 * f6;
    let h3 = 2 * f0 * f3 + 2 * f1 * f2 + 38 * f4 * f9 + 38 * f5 * f8 + 38 * f6 * f7;
    let h4 = 2 * f0 * f4 + 4 * f1 * f3 + f2 * f2 + 76 * f5 * f9 + 38 * f6 * f8 + 38 * f7 * f7;
    let h5 = 2 * f0 * f5 + 2 * f1 * f4 + 2 * f2 * f3 + 38 * f6 * f9 + 38 * f7 * f8;
    let h6 = 2 * f0 * f6 + 4 * f1 * f5 + 2 * f2 * f4 + 2 * f3 * f3 + 76 * f7 * f9 + 19 * f8 * f8;
    let h7 = 2 * f0 * f7 + 2 * f1 * f6 + 2 * f2 * f5 + 2 * f3 * f4 + 38 * f8 * f9;
    let h8 = 2 * f0 * f8 + 4 * f1 * f7 + 2 * f2 * f6 + 4 * f3 * f5 + f4 * f4 + 38 * f9 * f9;
    let h9 = 2 * f0 * f9 + 2 * f1 * f8 + 2 * f2 * f7 + 2 * f3 * f6 + 2 * f4 * f5;
    carry([h0, h1, h2, h3, h4, h5, h6, h7, h8, h9])
}

/// Projective (X:Y:Z), x = X/Z, y = Y/Z: what a doubling starts from.
#[derive(Clone)]
struct P2 {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// Extended (X:Y:Z:T), T = XY/Z: what an addition starts from.
#[derive(Clone)]
struct P3 {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// ((X:Z), (Y:T)): a sum or doubling before its last multiplications.
#[derive(Clone)]
struct P1P1 {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// A point ready to be added to a P3: (Y + X, Y − X, Z, 2d·T).
#[derive(Clone)]
struct Cached {
    y_plus_x: Fe,
    y_minus_x: Fe,
    z: Fe,
    t2d: Fe,
}

/// An affine point ready for a mixed addition: (y + x, y − x, 2d·x·y), each carried, so its
/// limbs fit 32 bits: tables of these are half the size, and widening on load costs nothing.
#[derive(Clone, Copy, Debug)]
struct Affine {
    y_plus_x: Compact,
    y_minus_x: Compact,
    xy2d: Compact,
}

impl Affine {
    const IDENTITY: Affine = Affine {
        y_plus_x: Compact([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        y_minus_x: Compact([1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        xy2d: Compact([0; 10]),
    };
}

/// A carried field element (limbs within ±2^26) stored in 32-bit limbs.
#[derive(Clone, Copy, Debug)]
struct Compact([i32; 10]);

impl Compact {
    fn new(carried: &Fe) -> Compact {
        Compact(carried.0.map(|limb| limb as i32))
    }

    fn fe(&self) -> Fe {
        Fe(self.0.map(i64::from))
    }
}

impl P2 {
    const IDENTITY: P2 = P2 {
        x: Fe::ZERO,
        y: Fe::ONE,
        z: Fe::ONE,
    };

    fn double(&self) -> P1P1 {
        let xx = self.x.square();
        let yy = self.y.square();
        let zz = self.z.square();
        let zz2 = zz.add(&zz);
        let sum = self.x.add(&self.y).square();
        let y = yy.add(&xx);
        let z = yy.sub(&xx);
        P1P1 {
            x: sum.sub(&y),
            y,
            z,
            t: zz2.sub(&z),
        }
    }

    /// The encoding of (X/Z, Y/Z): y with x's sign in bit 255.
    fn encode(&self) -> [u8; 32] {
        let z_inverse = self.z.invert();
        let x = self.x.mul(&z_inverse);
        let y = self.y.mul(&z_inverse);
        let mut out = y.encode();
        out[31] |= u8::from(x.is_negative()) << 7;
        out
    }
}

impl P3 {
    fn to_p2(&self) -> P2 {
        P2 {
            x: self.x,
            y: self.y,
            z: self.z,
        }
    }

    fn to_cached(&self, d2: &Fe) -> Cached {
        Cached {
            y_plus_x: self.y.add(&self.x),
            y_minus_x: self.y.sub(&self.x),
            z: self.z,
            t2d: self.t.mul(d2),
        }
    }

    fn add(&self, q: &Cached) -> P1P1 {
        let a = self.y.add(&self.x).mul(&q.y_plus_x);
        let b = self.y.sub(&self.x).mul(&q.y_minus_x);
        let c = q.t2d.mul(&self.t);
        let zz = self.z.mul(&q.z);
        let d = zz.add(&zz);
        P1P1 {
            x: a.sub(&b),
            y: a.add(&b),
            z: d.add(&c),
            t: d.sub(&c),
        }
    }

    fn add_affine(&self, q: &Affine) -> P1P1 {
        let a = self.y.add(&self.x).mul(&q.y_plus_x.fe());
        let b = self.y.sub(&self.x).mul(&q.y_minus_x.fe());
        let c = q.xy2d.fe().mul(&self.t);
        let d = self.z.add(&self.z);
        P1P1 {
            x: a.sub(&b),
            y: a.add(&b),
            z: d.add(&c),
            t: d.sub(&c),
        }
    }

    fn sub_affine(&self, q: &Affine) -> P1P1 {
        let a = self.y.add(&self.x).mul(&q.y_minus_x.fe());
        let b = self.y.sub(&self.x).mul(&q.y_plus_x.fe());
        let c = q.xy2d.fe().mul(&self.t);
        let d = self.z.add(&self.z);
        P1P1 {
            x: a.sub(&b),
            y: a.add(&b),
            z: d.sub(&c),
            t: d.add(&c),
        }
    }

    /// BoringSSL's `x25519_ge_frombytes_vartime`: `None` when no x fits y.
    fn decompress(encoded: &[u8; 32], constants: &Constants) -> Option<P3> {
        let y = Fe::from_bytes(encoded);
        let yy = y.square();
        let u = yy.sub(&Fe::ONE); // y² − 1
        let u = carry(u.0);
        let v = yy.mul(&constants.d).add(&Fe::ONE); // d·y² + 1
        let w = u.mul(&v);
        let mut x = w.pow22523().mul(&u); // u·(uv)^((p − 5)/8)
        let vxx = x.square().mul(&v);
        if !vxx.sub(&u).is_zero() {
            if !vxx.add(&u).is_zero() {
                return None;
            }
            x = x.mul(&constants.sqrt_m1);
        }
        if x.is_negative() != (encoded[31] >> 7 == 1) {
            x = carry(x.neg().0);
        }
        Some(P3 {
            x,
            y,
            z: Fe::ONE,
            t: x.mul(&y),
        })
    }

    fn negate(&self) -> P3 {
        P3 {
            x: carry(self.x.neg().0),
            y: self.y,
            z: self.z,
            t: carry(self.t.neg().0),
        }
    }
}

impl P1P1 {
    fn to_p2(&self) -> P2 {
        P2 {
            x: self.x.mul(&self.t),
            y: self.y.mul(&self.z),
            z: self.z.mul(&self.t),
        }
    }

    fn to_p3(&self) -> P3 {
        P3 {
            x: self.x.mul(&self.t),
            y: self.y.mul(&self.z),
            z: self.z.mul(&self.t),
            t: self.x.mul(&self.y),
        }
    }
}

/// Scalars are split into this many chunks of `CHUNK_BITS`, one table per chunk.
const CHUNKS: usize = 8;
const CHUNK_BITS: usize = 256 / CHUNKS;
/// wNAF digits of a chunk: one more than its bits (a carry out of the top bit).
const DIGITS: usize = CHUNK_BITS + 1;
/// Window of the key's tables: odd multiples up to 15 (8 points per chunk, ~7.7 KB per key).
const KEY_WINDOW: u32 = 5;
/// Window of the base point's tables, built once: odd multiples up to 63.
const BASE_WINDOW: u32 = 7;
const KEY_TABLE: usize = 1 << (KEY_WINDOW - 2);
const BASE_TABLE: usize = 1 << (BASE_WINDOW - 2);

/// For a point P: for each chunk i, the odd multiples P_i, 3·P_i, … of P_i = 2^(CHUNK_BITS·i)·P.
struct Tables<const N: usize>([[Affine; N]; CHUNKS]);

impl<const N: usize> Tables<N> {
    fn new(point: &P3, d2: &Fe) -> Box<Tables<N>> {
        let mut projective = Vec::with_capacity(CHUNKS * N);
        let mut chunk_point = point.clone();
        for chunk in 0..CHUNKS {
            if chunk > 0 {
                let mut doubled = chunk_point.to_p2();
                for _ in 1..CHUNK_BITS {
                    doubled = doubled.double().to_p2();
                }
                chunk_point = doubled.double().to_p3();
            }
            let twice = chunk_point.to_p2().double().to_p3().to_cached(d2);
            let mut multiple = chunk_point.clone();
            for _ in 1..N {
                let next = multiple.add(&twice).to_p3();
                projective.push(multiple);
                multiple = next;
            }
            projective.push(multiple);
        }
        // One inversion for all of them (Montgomery's trick).
        let mut prefix = Vec::with_capacity(projective.len());
        let mut product = Fe::ONE;
        for point in &projective {
            prefix.push(product);
            product = product.mul(&point.z);
        }
        let mut inverse = product.invert();
        let mut affine = vec![Affine::IDENTITY; projective.len()];
        for ((point, before), out) in projective.iter().zip(&prefix).zip(&mut affine).rev() {
            let z_inverse = inverse.mul(before);
            inverse = inverse.mul(&point.z);
            let x = point.x.mul(&z_inverse);
            let y = point.y.mul(&z_inverse);
            *out = Affine {
                y_plus_x: Compact::new(&carry(y.add(&x).0)),
                y_minus_x: Compact::new(&carry(y.sub(&x).0)),
                xy2d: Compact::new(&x.mul(&y).mul(d2)),
            };
        }
        let mut tables = Box::new(Tables([[Affine::IDENTITY; N]; CHUNKS]));
        for (table, points) in tables.0.iter_mut().zip(affine.chunks_exact(N)) {
            table.copy_from_slice(points);
        }
        tables
    }
}

struct Constants {
    d: Fe,
    d2: Fe,
    sqrt_m1: Fe,
    base: Box<Tables<BASE_TABLE>>,
}

/// The curve's constants and the base point's tables, computed on first use (~a few hundred
/// microseconds, once per VM) rather than pasted in as limbs.
fn constants() -> &'static Constants {
    static CONSTANTS: OnceLock<Constants> = OnceLock::new();
    CONSTANTS.get_or_init(|| {
        // d = −121665/121666.
        let d = carry(Fe::small(-121_665).0).mul(&Fe::small(121_666).invert());
        let d2 = carry(d.add(&d).0);
        // √−1 = 2^((p − 1)/4), exponent 2^253 − 5.
        let mut exponent = [0xffu8; 32];
        exponent[0] = 0xfb;
        exponent[31] = 0x1f;
        let sqrt_m1 = pow(&Fe::small(2), &exponent);
        let mut constants = Constants {
            d,
            d2,
            sqrt_m1,
            base: Box::new(Tables([[Affine::IDENTITY; BASE_TABLE]; CHUNKS])),
        };
        // B = (x, 4/5) with x positive: the encoding 0x58 followed by 0x66s.
        let mut encoded = [0x66u8; 32];
        encoded[0] = 0x58;
        if let Some(base) = P3::decompress(&encoded, &constants) {
            constants.base = Tables::new(&base, &d2);
        }
        constants
    })
}

/// base^exponent (exponent little-endian), square and multiply: used only for a constant.
fn pow(base: &Fe, exponent: &[u8; 32]) -> Fe {
    let mut out = Fe::ONE;
    for byte in exponent.iter().rev() {
        for bit in (0..8).rev() {
            out = out.square();
            if (byte >> bit) & 1 == 1 {
                out = out.mul(base);
            }
        }
    }
    out
}

/// The group order L = 2^252 + c, as little-endian 32-bit words.
const ORDER: [u32; 8] = [
    0x5cf5_d3ed,
    0x5812_631a,
    0xa2f7_9cd6,
    0x14de_f9de,
    0,
    0,
    0,
    0x1000_0000,
];

/// S in chunks, when it is below L (RFC 8032 §5.1.7; ring refuses the rest).
fn scalar_below_order(bytes: &[u8; 32]) -> Option<[u64; CHUNKS]> {
    let words = words_le(bytes);
    for (word, order) in words.iter().zip(ORDER).rev() {
        if *word != order {
            return (*word < order).then(|| chunks(&words));
        }
    }
    None
}

fn words_le(bytes: &[u8; 32]) -> [u32; 8] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    })
}

fn chunks(words: &[u32; 8]) -> [u64; CHUNKS] {
    let per_chunk = CHUNK_BITS / 32;
    std::array::from_fn(|i| {
        words[i * per_chunk..(i + 1) * per_chunk]
            .iter()
            .rev()
            .fold(0, |chunk, word| (chunk << 32) | u64::from(*word))
    })
}

/// A 512-bit little-endian number mod L, 16 bits at a time from the top: with r < L,
/// X = r·2^16 + next < 2^269; q = ⌊X / 2^252⌋ is ⌊X / L⌋ or one more (q·c < 2^142 ≪ L), and
/// X − q·L = (X mod 2^252) − q·c, so one conditional addition of L finishes each step.
fn reduce_mod_order(bytes: &[u8; 64]) -> [u64; CHUNKS] {
    let mut r = [0u32; 8];
    for pair in bytes.chunks_exact(2).rev() {
        let next = u64::from(pair[0]) | (u64::from(pair[1]) << 8);
        // x = r·2^16 + next, in nine words.
        let mut x = [0u64; 9];
        let mut carried = next;
        for (out, word) in x.iter_mut().zip(r) {
            let value = (u64::from(word) << 16) + carried;
            *out = value & 0xffff_ffff;
            carried = value >> 32;
        }
        x[8] = carried;
        let q = (x[8] << 4) | (x[7] >> 28);
        x[7] &= 0x0fff_ffff;
        // x − q·c, c the low four words of L.
        let mut borrow = 0i64;
        for (i, out) in r.iter_mut().enumerate() {
            let subtract = if i < 4 { q * u64::from(ORDER[i]) } else { 0 };
            let value = x[i] as i64 - subtract as i64 + borrow;
            *out = value as u32;
            borrow = value >> 32;
        }
        if borrow < 0 {
            let mut carried = 0u64;
            for (out, order) in r.iter_mut().zip(ORDER) {
                let value = u64::from(*out) + u64::from(order) + carried;
                *out = value as u32;
                carried = value >> 32;
            }
        }
    }
    chunks(&r)
}

/// The width-`window` NAF of a chunk: odd digits below 2^(window − 1) in magnitude, at
/// least `window` positions apart.
fn wnaf(chunk: u64, window: u32) -> [i8; DIGITS] {
    let mut digits = [0i8; DIGITS];
    let mut rest = u128::from(chunk);
    for digit in digits.iter_mut() {
        if rest == 0 {
            break;
        }
        if rest & 1 == 1 {
            let low = (rest & ((1 << window) - 1)) as i32;
            let value = if low >= 1 << (window - 1) {
                low - (1 << window)
            } else {
                low
            };
            *digit = value as i8;
            if value < 0 {
                rest += u128::from(value.unsigned_abs());
            } else {
                rest -= u128::from(value.unsigned_abs());
            }
        }
        rest >>= 1;
    }
    digits
}

/// [k]·P + [s]·B, P given by its tables (for a key: P = −A).
fn double_scalar_mul(
    k: &[u64; CHUNKS],
    point: &Tables<KEY_TABLE>,
    s: &[u64; CHUNKS],
    base: &Tables<BASE_TABLE>,
) -> P2 {
    let k_digits = k.map(|chunk| wnaf(chunk, KEY_WINDOW));
    let s_digits = s.map(|chunk| wnaf(chunk, BASE_WINDOW));
    let top = (0..DIGITS).rev().find(|&i| {
        k_digits.iter().any(|digits| digits[i] != 0) || s_digits.iter().any(|digits| digits[i] != 0)
    });
    let mut r = P2::IDENTITY;
    let Some(top) = top else {
        return r;
    };
    for i in (0..=top).rev() {
        let mut t = r.double();
        for (digits, table) in k_digits.iter().zip(&point.0) {
            t = add_digit(t, digits[i], table);
        }
        for (digits, table) in s_digits.iter().zip(&base.0) {
            t = add_digit(t, digits[i], table);
        }
        r = t.to_p2();
    }
    r
}

fn add_digit(t: P1P1, digit: i8, table: &[Affine]) -> P1P1 {
    let index = usize::from(digit.unsigned_abs() / 2);
    match (digit.signum(), table.get(index)) {
        (1, Some(point)) => t.to_p3().add_affine(point),
        (-1, Some(point)) => t.to_p3().sub_affine(point),
        _ => t,
    }
}

/// An Ed25519 public key as published, with what verifying with it needs, computed once.
pub struct VerifyingKey {
    encoded: [u8; 32],
    /// Tables of −A; `None` when the encoding is no point (every signature then fails, as
    /// with ring).
    negated: Option<Box<Tables<KEY_TABLE>>>,
}

impl VerifyingKey {
    pub fn new(encoded: [u8; 32]) -> VerifyingKey {
        let constants = constants();
        let negated = P3::decompress(&encoded, constants)
            .map(|point| Tables::new(&point.negate(), &constants.d2));
        VerifyingKey { encoded, negated }
    }

    pub fn encoded(&self) -> &[u8; 32] {
        &self.encoded
    }

    /// Whether `signature` (R ‖ S, 64 bytes) is this key's signature of `message`, exactly as
    /// ring's `ED25519` decides it.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Some(negated) = &self.negated else {
            return false;
        };
        let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        let (r, s) = signature.split_at(32);
        let (Ok(r), Ok(s)) = (<&[u8; 32]>::try_from(r), <&[u8; 32]>::try_from(s)) else {
            return false;
        };
        let Some(s) = scalar_below_order(s) else {
            return false;
        };
        let mut hash = digest::Context::new(&digest::SHA512);
        hash.update(r);
        hash.update(&self.encoded);
        hash.update(message);
        let digest = hash.finish();
        let Ok(digest) = <&[u8; 64]>::try_from(digest.as_ref()) else {
            return false;
        };
        let k = reduce_mod_order(digest);
        double_scalar_mul(&k, negated, &s, &constants().base).encode() == *r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ring::rand::{SecureRandom, SystemRandom};
    use ring::signature::{self, Ed25519KeyPair, KeyPair};

    fn random<const N: usize>() -> [u8; N] {
        let mut bytes = [0u8; N];
        SystemRandom::new().fill(&mut bytes).unwrap();
        bytes
    }

    fn ring_accepts(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(message, signature)
            .is_ok()
    }

    #[track_caller]
    fn assert_as_ring(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
        let expected = ring_accepts(public_key, message, signature);
        let got = VerifyingKey::new(*public_key).verify(message, signature);
        assert_eq!(
            got, expected,
            "key {public_key:02x?} signature {signature:02x?}"
        );
        got
    }

    /// [s]B − [t]A encoded, for a key that decodes: a signature R that verifies when t is k.
    fn commitment(key: &VerifyingKey, t: &[u8; 32], s: &[u8; 32]) -> [u8; 32] {
        let (Some(negated), Some(s)) = (&key.negated, scalar_below_order(s)) else {
            panic!("key must decode and s be below L");
        };
        let t = chunks(&words_le(t));
        double_scalar_mul(&t, negated, &s, &constants().base).encode()
    }

    fn scalar_mod_order(bytes: &[u8; 32]) -> [u8; 32] {
        let mut wide = [0u8; 64];
        wide[..32].copy_from_slice(bytes);
        chunk_bytes(&reduce_mod_order(&wide))
    }

    fn chunk_bytes(chunks: &[u64; CHUNKS]) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (bytes, chunk) in out.chunks_exact_mut(CHUNK_BITS / 8).zip(chunks) {
            bytes.copy_from_slice(&chunk.to_le_bytes()[..CHUNK_BITS / 8]);
        }
        out
    }

    #[test]
    fn field_encoding_round_trips_and_reduces() {
        for _ in 0..200 {
            let mut bytes: [u8; 32] = random();
            bytes[31] &= 0x7f;
            let fe = Fe::from_bytes(&bytes);
            let canonical = fe.encode();
            // Values from p up to 2^255 − 1 come back minus p; the rest unchanged.
            let at_least_p =
                bytes[31] == 0x7f && bytes[1..31].iter().all(|b| *b == 0xff) && bytes[0] >= 0xed;
            assert_eq!(canonical == bytes, !at_least_p);
            assert_eq!(Fe::from_bytes(&canonical).encode(), canonical);
            let inverse = fe.invert();
            if !fe.is_zero() {
                assert_eq!(fe.mul(&inverse).encode(), Fe::ONE.encode());
            }
            assert_eq!(fe.square().encode(), fe.mul(&fe).encode());
        }
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        assert_eq!(Fe::from_bytes(&p).encode(), [0; 32]);
        let minus_one = carry(Fe::ONE.neg().0).encode();
        p[0] = 0xec;
        assert_eq!(minus_one, p);
        assert_eq!(
            constants().sqrt_m1.square().encode(),
            minus_one,
            "√−1 squared"
        );
    }

    #[test]
    fn reduction_mod_order() {
        let order: [u8; 32] = std::array::from_fn(|i| (ORDER[i / 4] >> (8 * (i % 4))) as u8);
        assert_eq!(scalar_mod_order(&order), [0; 32]);
        let mut order_plus_one = order;
        order_plus_one[0] += 1;
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(scalar_mod_order(&order_plus_one), one);
        assert!(scalar_below_order(&order).is_none());
        assert!(scalar_below_order(&order_plus_one).is_none());
        let mut order_minus_one = order;
        order_minus_one[0] -= 1;
        assert!(scalar_below_order(&order_minus_one).is_some());
        assert_eq!(scalar_mod_order(&order_minus_one), order_minus_one);
        // 2^512 − 1 mod L, from Python: format((2**512 - 1) % L, "064x").
        let expected = "0x0399411b7c309a3dceec73d217f5be65d00e1ba768859347a40611e3449c0f00";
        let all_ones = chunk_bytes(&reduce_mod_order(&[0xff; 64]));
        let hex: String = all_ones.iter().rev().map(|b| format!("{b:02x}")).collect();
        assert_eq!(format!("0x{hex}"), expected);
    }

    #[test]
    fn wnaf_digits_sum_to_the_chunk() {
        for chunk in [
            0,
            1,
            15,
            16,
            31,
            u64::MAX,
            u64::MAX - 7,
            1 << 63,
            0x5555_5555_5555_5555,
        ]
        .into_iter()
        .chain((0..200).map(|_| u64::from_le_bytes(random())))
        .map(|chunk| chunk >> (64 - CHUNK_BITS))
        {
            for window in [KEY_WINDOW, BASE_WINDOW] {
                let digits = wnaf(chunk, window);
                let sum: i128 = digits
                    .iter()
                    .enumerate()
                    .map(|(i, d)| i128::from(*d) << i)
                    .sum();
                assert_eq!(sum, i128::from(chunk));
                assert!(digits
                    .iter()
                    .all(|d| d % 2 != 0 && d.unsigned_abs() < 1 << (window - 1) || *d == 0));
            }
        }
    }

    #[test]
    fn signatures_by_ring_verify_and_altered_ones_do_not_as_with_ring() {
        for round in 0..64 {
            let pair = Ed25519KeyPair::from_seed_unchecked(&random::<32>()).unwrap();
            let public_key: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
            let message = vec![round as u8; round * 7];
            let signature = pair.sign(&message);
            assert!(assert_as_ring(&public_key, &message, signature.as_ref()));
            let mut altered = signature.as_ref().to_vec();
            altered[usize::from(random::<1>()[0]) % 64] ^= 1 << (round % 8);
            assert!(!assert_as_ring(&public_key, &message, &altered));
            assert!(!assert_as_ring(&public_key, b"other", signature.as_ref()));
            assert!(!assert_as_ring(
                &public_key,
                &message,
                &signature.as_ref()[..63]
            ));
        }
    }

    #[test]
    fn s_at_or_above_the_order_is_refused_as_with_ring() {
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        let public_key: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        let signature = pair.sign(b"m");
        // S + L is the same scalar mod L: the equation holds, and both refuse it.
        let mut s_plus_order = [0u8; 32];
        let mut carried = 0u64;
        for (i, out) in s_plus_order.chunks_exact_mut(4).enumerate() {
            let s = u32::from_le_bytes(
                signature.as_ref()[32 + 4 * i..36 + 4 * i]
                    .try_into()
                    .unwrap(),
            );
            let value = u64::from(s) + u64::from(ORDER[i]) + carried;
            out.copy_from_slice(&(value as u32).to_le_bytes());
            carried = value >> 32;
        }
        let forged = [&signature.as_ref()[..32], &s_plus_order].concat();
        assert!(!assert_as_ring(&public_key, b"m", &forged));
    }

    /// Public keys ring decodes leniently, or not at all, with R made so that some signatures
    /// verify: small-order and identity keys (then [k]A is one of at most eight points),
    /// non-canonical y, x = 0 with the sign bit set, and points off the curve.
    #[test]
    fn unusual_public_keys_decide_as_with_ring() {
        let hex = |s: &str| -> [u8; 32] {
            std::array::from_fn(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        };
        let mut keys = vec![
            hex("0100000000000000000000000000000000000000000000000000000000000000"),
            hex("0100000000000000000000000000000000000000000000000000000000000080"),
            hex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"),
            hex("0000000000000000000000000000000000000000000000000000000000000000"),
            hex("0000000000000000000000000000000000000000000000000000000000000080"),
            hex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
            hex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
            hex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
            hex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
            hex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
            hex("0200000000000000000000000000000000000000000000000000000000000000"),
        ];
        keys.extend((0..16).map(|_| random::<32>()));
        let mut accepted = 0;
        for public_key in keys {
            let key = VerifyingKey::new(public_key);
            for round in 0u8..24 {
                let message = [round; 5];
                let mut s: [u8; 32] = random();
                s[31] &= 0x0f;
                let mut t = [0u8; 32];
                t[0] = round % 8;
                let r = match key.negated {
                    Some(_) => commitment(&key, &t, &s),
                    None => random(),
                };
                let signature = [&r[..], &s].concat();
                if assert_as_ring(&public_key, &message, &signature) {
                    accepted += 1;
                }
            }
        }
        assert!(accepted > 24, "only {accepted} accepted");
    }

    #[test]
    fn the_commitment_of_a_ring_signature_is_its_r() {
        // [S]B − [k]A, with k hashed from R, A and the message here, is R itself.
        let pair = Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
        let public_key: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        let key = VerifyingKey::new(public_key);
        let signature = pair.sign(b"known");
        let (r, s) = signature.as_ref().split_at(32);
        let mut hash = digest::Context::new(&digest::SHA512);
        hash.update(r);
        hash.update(&public_key);
        hash.update(b"known");
        let k = reduce_mod_order(hash.finish().as_ref().try_into().unwrap());
        let k_bytes = chunk_bytes(&k);
        assert_eq!(commitment(&key, &k_bytes, s.try_into().unwrap()), r);
    }
}
