//! Signature verification by the host: Envoy's `verify_signature` foreign function, which
//! verifies with BoringSSL natively, several times faster than ring inside the Wasm VM.
//!
//! Plain Rust (the proxy-wasm call itself is in `host.rs`): the protobuf of the call, written
//! by hand because a protobuf crate would not fit the module's size budget; JOSE's raw ECDSA
//! signature turned into the DER form the host reads; public keys as DER
//! SubjectPublicKeyInfo; and the known-answer test a host must pass before it is used.
//!
//! The host does RSA PKCS#1 v1.5 (RS256/384/512) and ECDSA (ES256/384) only: it offers no
//! PSS padding, Ed25519 in BoringSSL needs a null digest, and HMAC is no public-key algorithm.
//! Those stay in the module (ring).

use crate::alg::Alg;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostHash {
    Sha256,
    Sha384,
    Sha512,
}

impl HostHash {
    /// The host's name for it (Envoy's `hash_function`).
    pub fn name(self) -> &'static str {
        match self {
            HostHash::Sha256 => "sha256",
            HostHash::Sha384 => "sha384",
            HostHash::Sha512 => "sha512",
        }
    }

    /// The hash the host verifies `alg` with; `None`: the host cannot verify `alg`.
    pub fn for_alg(alg: Alg) -> Option<HostHash> {
        match alg {
            Alg::RS256 | Alg::ES256 => Some(HostHash::Sha256),
            Alg::RS384 | Alg::ES384 => Some(HostHash::Sha384),
            Alg::RS512 => Some(HostHash::Sha512),
            _ => None,
        }
    }
}

/// What the host said about one signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostAnswer {
    Valid,
    /// Final for that key: the module does not ask ring again.
    Invalid,
    /// No answer (an error status, or an answer that does not decode): the module verifies
    /// with ring instead.
    Unavailable,
}

/// Whatever verifies for the module: Envoy in the filter, fakes in tests. `Sync` so that what
/// carries a host (the key store) stays shareable across threads natively.
pub trait SignatureHost: Sync {
    /// `spki`: DER SubjectPublicKeyInfo; `signature`: PKCS#1 v1.5 for an RSA key, a DER
    /// ECDSA-Sig-Value for an EC key; `message`: what was signed (the host hashes it).
    fn verify(&self, hash: HostHash, spki: &[u8], message: &[u8], signature: &[u8]) -> HostAnswer;
}

/// A host that answered the known-answer test right. Verification only ever reaches a host
/// through one, so a host that failed the test is never asked about a token.
#[derive(Clone, Copy)]
pub struct TrustedHost<'h>(&'h dyn SignatureHost);

impl<'h> TrustedHost<'h> {
    pub fn check(host: &'h dyn SignatureHost) -> Result<TrustedHost<'h>, SelfTestFailure> {
        self_test(host)?;
        Ok(TrustedHost(host))
    }

    pub fn verify(
        &self,
        hash: HostHash,
        spki: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> HostAnswer {
        self.0.verify(hash, spki, message, signature)
    }
}

impl fmt::Debug for TrustedHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrustedHost")
    }
}

// ------------------------------------------------------------------------------- the protobuf

/// `envoy.source.extensions.common.wasm.VerifySignatureArguments`: `hash_function` (1),
/// `public_key` (2, DER), `signature` (3), `text` (4). Field 5 (PEM) stays unset: the host
/// refuses a call with both key forms.
pub fn encode_arguments(hash: HostHash, spki: &[u8], signature: &[u8], message: &[u8]) -> Vec<u8> {
    let name = hash.name().as_bytes();
    let mut out =
        Vec::with_capacity(name.len() + spki.len() + signature.len() + message.len() + 16);
    for (field, bytes) in [(1, name), (2, spki), (3, signature), (4, message)] {
        // Wire type 2, length-delimited.
        out.push(field << 3 | 2);
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `VerifySignatureResult`: `result` (1, bool), `error` (2, string, never read: it says
/// nothing the answer does not). Unknown fields are skipped as protobuf requires; anything
/// malformed (truncated, a wire type that does not fit, a bool other than 0 or 1) is
/// `Unavailable`. No bytes at all is a valid message whose `result` is false.
pub fn decode_result(mut bytes: &[u8]) -> HostAnswer {
    let mut valid = false;
    while !bytes.is_empty() {
        let Some(key) = read_varint(&mut bytes) else {
            return HostAnswer::Unavailable;
        };
        let skipped = match (key >> 3, key & 7) {
            (1, 0) => match read_varint(&mut bytes) {
                Some(value @ (0 | 1)) => {
                    valid = value == 1;
                    Some(())
                }
                _ => None,
            },
            (0 | 1, _) | (2, 0 | 1 | 5) => None,
            (_, 0) => read_varint(&mut bytes).map(drop),
            (_, 1) => skip(&mut bytes, 8),
            (_, 2) => read_varint(&mut bytes)
                .and_then(|len| usize::try_from(len).ok())
                .and_then(|len| skip(&mut bytes, len)),
            (_, 5) => skip(&mut bytes, 4),
            // Groups (3, 4) are long obsolete; 6 and 7 are no wire types.
            _ => None,
        };
        if skipped.is_none() {
            return HostAnswer::Unavailable;
        }
    }
    if valid {
        HostAnswer::Valid
    } else {
        HostAnswer::Invalid
    }
}

/// At most ten bytes (64 bits), as protobuf writes them.
fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn skip(bytes: &mut &[u8], len: usize) -> Option<()> {
    *bytes = bytes.get(len..)?;
    Some(())
}

// ------------------------------------------------------------------------------------ DER

/// JOSE's ECDSA signature, raw `r‖s` of exactly `2 * scalar_len` bytes (RFC 7518 §3.4), as
/// the DER `ECDSA-Sig-Value` the host reads. `None` for a wrong length or a zero `r` or `s`:
/// no valid signature has one, so it is refused without asking the host. Whether `r` and `s`
/// are below the group order is the host's to check.
pub fn ecdsa_der(raw: &[u8], scalar_len: usize) -> Option<Vec<u8>> {
    if raw.len() != 2 * scalar_len {
        return None;
    }
    let (r, s) = raw.split_at(scalar_len);
    let mut integers = Vec::with_capacity(raw.len() + 6);
    put_unsigned(&mut integers, r)?;
    put_unsigned(&mut integers, s)?;
    Some(tlv(0x30, &integers))
}

/// A minimal DER INTEGER of an unsigned big-endian number: no leading zero bytes but one
/// before a top bit that would otherwise read as a sign. `None` for zero.
fn put_unsigned(out: &mut Vec<u8>, mut bytes: &[u8]) -> Option<()> {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    let top = *bytes.first()?;
    let pad = top >= 0x80;
    out.push(0x02);
    put_len(out, bytes.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(bytes);
    Some(())
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let significant = &bytes[len.leading_zeros() as usize / 8..];
    out.push(0x80 | significant.len() as u8);
    out.extend_from_slice(significant);
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 4);
    out.push(tag);
    put_len(&mut out, content.len());
    out.extend_from_slice(content);
    out
}

/// AlgorithmIdentifier rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
const RSA_ALGORITHM: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// id-ecPublicKey (1.2.840.10045.2.1) on prime256v1 (1.2.840.10045.3.1.7).
const P256_ALGORITHM: [u8; 21] = [
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
/// id-ecPublicKey on secp384r1 (1.3.132.0.34).
const P384_ALGORITHM: [u8; 18] = [
    0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05, 0x2b, 0x81, 0x04,
    0x00, 0x22,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
}

/// SubjectPublicKeyInfo of an RSA key (RFC 3279 §2.3.1) from its unsigned big-endian modulus
/// and exponent; `None` if either is zero.
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Option<Vec<u8>> {
    let mut integers = Vec::with_capacity(n.len() + e.len() + 12);
    put_unsigned(&mut integers, n)?;
    put_unsigned(&mut integers, e)?;
    Some(spki(&RSA_ALGORITHM, &tlv(0x30, &integers)))
}

/// SubjectPublicKeyInfo of an EC key (RFC 5480) from its uncompressed point `0x04‖x‖y`.
pub fn ec_spki(curve: Curve, point: &[u8]) -> Vec<u8> {
    let algorithm: &[u8] = match curve {
        Curve::P256 => &P256_ALGORITHM,
        Curve::P384 => &P384_ALGORITHM,
    };
    spki(algorithm, point)
}

fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = algorithm.to_vec();
    body.extend_from_slice(&tlv(0x03, &bits));
    tlv(0x30, &body)
}

// ------------------------------------------------------------------- the known-answer test

/// A check of the known-answer test the host got wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfTestFailure {
    pub check: &'static str,
    pub expected: HostAnswer,
    pub answered: HostAnswer,
}

impl fmt::Display for SelfTestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "host known-answer test \"{}\": expected {:?}, the host answered {:?}",
            self.check, self.expected, self.answered
        )
    }
}

// Made once with Python `cryptography` (tests/fixtures/make_host_fixtures.py self-test): an
// RSA-2048 key (e = 65537) and a P-256 key, each with a signature over SELF_TEST_MESSAGE
// (RS256; ES256 as raw r‖s, r with its top bit set and s without). Checked with ring by a
// unit test below.
const SELF_TEST_MESSAGE: &[u8] = b"mesh-oauth known-answer test";
const RSA_E: [u8; 3] = [0x01, 0x00, 0x01];
const RSA_N: [u8; 256] = [
    0xba, 0xcc, 0xdf, 0x3c, 0xcf, 0xd8, 0x52, 0x5f, 0x17, 0xdb, 0x68, 0x39, 0xf1, 0xb0, 0xec, 0x2d,
    0x6e, 0x75, 0x83, 0xfb, 0xe9, 0xad, 0x23, 0x40, 0xa3, 0x52, 0x0e, 0x93, 0x1f, 0x4b, 0xf2, 0x99,
    0x43, 0xed, 0x7c, 0xc9, 0x3c, 0xcd, 0x00, 0x5e, 0xdc, 0x2f, 0xc6, 0x67, 0x9c, 0xb0, 0xcf, 0x39,
    0x7a, 0x8b, 0xc6, 0xc0, 0xb7, 0x74, 0xa0, 0xf6, 0x6f, 0x81, 0x91, 0x39, 0xe0, 0xbe, 0xe2, 0x39,
    0x48, 0x7d, 0x13, 0x25, 0xcb, 0xdd, 0x53, 0x59, 0xf3, 0xc2, 0xdb, 0xad, 0x1b, 0x28, 0x08, 0xe1,
    0xbe, 0x06, 0x80, 0x8a, 0xec, 0xcb, 0x09, 0xd9, 0x4f, 0x11, 0xdc, 0x0b, 0x62, 0xae, 0xea, 0x61,
    0x50, 0x2c, 0xf7, 0x09, 0xa5, 0x6c, 0x13, 0x70, 0x15, 0x24, 0x8a, 0xff, 0x19, 0x76, 0x13, 0xc9,
    0x2f, 0x8b, 0x3d, 0xf3, 0xd0, 0xd4, 0x3f, 0x56, 0x65, 0x03, 0x6a, 0xb4, 0x9b, 0x6d, 0xfe, 0x69,
    0x5c, 0x77, 0xf1, 0x23, 0xd5, 0x4a, 0x42, 0x1c, 0x5b, 0x55, 0x5b, 0xcc, 0xd5, 0x2f, 0x40, 0xbf,
    0xa9, 0xc4, 0x46, 0x80, 0x62, 0xf8, 0x61, 0x1d, 0x36, 0x9a, 0xdd, 0xe5, 0x7c, 0x38, 0x20, 0x84,
    0x21, 0x0c, 0xca, 0xec, 0xae, 0x6f, 0xc8, 0x4e, 0xfa, 0x20, 0xa2, 0xb6, 0x9a, 0x5a, 0xd2, 0xaf,
    0x1c, 0x8a, 0xdb, 0x0e, 0x7e, 0xe4, 0x4c, 0xd7, 0xc2, 0x8a, 0xd2, 0x07, 0x3e, 0x71, 0x53, 0x31,
    0x68, 0x91, 0x2a, 0xf1, 0xed, 0xc6, 0x7c, 0x61, 0xd1, 0x61, 0xd6, 0xb7, 0x35, 0xdb, 0x77, 0x23,
    0xba, 0x46, 0xc0, 0x2b, 0x46, 0x0c, 0x32, 0xe0, 0xf9, 0x00, 0xaf, 0xa2, 0x99, 0x30, 0x37, 0xe2,
    0xb2, 0x4b, 0x2d, 0x35, 0x93, 0xad, 0x7f, 0x7f, 0x23, 0x45, 0x0a, 0x42, 0xe5, 0x6c, 0x92, 0xfb,
    0x7e, 0x78, 0xb0, 0x5b, 0xe8, 0x2f, 0x40, 0x9d, 0xb4, 0x63, 0xac, 0xc3, 0x4c, 0xa9, 0x77, 0x7f,
];
const RSA_SIGNATURE: [u8; 256] = [
    0x30, 0x9f, 0x7a, 0x84, 0xed, 0x07, 0xd3, 0x63, 0xa0, 0x29, 0x68, 0xc9, 0xed, 0xb0, 0xa3, 0x35,
    0x5f, 0xf0, 0x4f, 0x13, 0xee, 0x48, 0xe2, 0x20, 0x4f, 0x39, 0x30, 0x80, 0xdf, 0x2c, 0x1d, 0xd5,
    0x51, 0xa2, 0x83, 0xb0, 0xf3, 0x7b, 0x7b, 0x6d, 0x61, 0xe3, 0xd1, 0x6d, 0xf1, 0x86, 0xf5, 0x1a,
    0x59, 0xf1, 0x0a, 0x5a, 0x24, 0xaa, 0x1a, 0x95, 0xfb, 0x15, 0xf6, 0x9d, 0x1b, 0x85, 0x34, 0xd8,
    0xd6, 0x67, 0x58, 0x84, 0xbc, 0x86, 0xcb, 0xfd, 0xaf, 0xd3, 0x35, 0x2a, 0xcc, 0x39, 0x7f, 0x0a,
    0xb9, 0x5d, 0xb1, 0x15, 0xc0, 0x5f, 0x9c, 0xaf, 0x4d, 0x0a, 0x87, 0xfb, 0x64, 0xc6, 0x5d, 0x8b,
    0xf8, 0x54, 0xa7, 0x82, 0x72, 0x03, 0x03, 0x56, 0xe3, 0x47, 0x3b, 0x43, 0xa1, 0xbe, 0x47, 0x56,
    0x61, 0x28, 0x0c, 0x1f, 0x45, 0x7f, 0x50, 0xb7, 0xfd, 0x92, 0xd7, 0x8b, 0xba, 0x1e, 0x93, 0x31,
    0x7c, 0x8b, 0x75, 0xd0, 0x82, 0x10, 0xbc, 0x7c, 0x73, 0x4b, 0x92, 0x7d, 0xc2, 0x2b, 0xda, 0x59,
    0xaa, 0xd4, 0x0d, 0xd6, 0x79, 0x82, 0xaf, 0x86, 0x9f, 0x91, 0xe9, 0x46, 0xf3, 0x03, 0x9c, 0x60,
    0xb2, 0x72, 0xe8, 0x68, 0xe2, 0x5f, 0xc3, 0xaf, 0x34, 0x6b, 0x90, 0xe9, 0x52, 0xb5, 0xf6, 0x78,
    0xa7, 0x07, 0x68, 0xfd, 0xfb, 0x1b, 0x13, 0xb0, 0x22, 0x0a, 0xae, 0x21, 0x6f, 0x5b, 0xa8, 0x78,
    0xaf, 0xeb, 0x14, 0xb7, 0xf0, 0x7f, 0xfb, 0x77, 0x36, 0x0a, 0x50, 0xaa, 0x1f, 0xf7, 0xba, 0xd0,
    0x9a, 0xb9, 0xc6, 0x95, 0x21, 0x19, 0xee, 0x5b, 0xf1, 0xb1, 0x7f, 0xc7, 0x18, 0x8f, 0xac, 0x1d,
    0xb3, 0x84, 0xc2, 0x43, 0x98, 0x8c, 0xaa, 0x28, 0x40, 0x41, 0xcd, 0xcc, 0xf7, 0xcd, 0x6f, 0x38,
    0xf3, 0x21, 0xf8, 0x30, 0x00, 0x1c, 0x90, 0xf3, 0xcb, 0xe9, 0x13, 0xf2, 0x00, 0x3f, 0xc3, 0x9e,
];
const P256_X: [u8; 32] = [
    0xa3, 0x3c, 0x49, 0xd3, 0xef, 0x25, 0x51, 0x91, 0xe2, 0x54, 0x2e, 0xcb, 0xaf, 0xc6, 0x3c, 0x4d,
    0xb1, 0x90, 0xcb, 0xaf, 0x56, 0xfa, 0xc2, 0x28, 0x1b, 0xf1, 0x67, 0xc8, 0x66, 0xac, 0x31, 0x75,
];
const P256_Y: [u8; 32] = [
    0x66, 0xc6, 0xab, 0x34, 0xb6, 0xeb, 0xf3, 0xc1, 0xcc, 0x84, 0x13, 0xd0, 0x58, 0x11, 0x71, 0x03,
    0xce, 0xe1, 0x61, 0xc6, 0x1e, 0xaa, 0x50, 0x29, 0xc6, 0xb2, 0x89, 0x6d, 0x75, 0xa5, 0x42, 0x92,
];
const P256_SIGNATURE: [u8; 64] = [
    0x98, 0x26, 0x8f, 0x92, 0x58, 0x9f, 0x07, 0xe6, 0xf3, 0x61, 0xae, 0xc7, 0x17, 0x06, 0xe1, 0x6a,
    0x74, 0xc2, 0x05, 0xe6, 0x54, 0x40, 0xcf, 0x95, 0xdc, 0xcd, 0x2d, 0x43, 0x15, 0xdf, 0xb2, 0xdc,
    0x29, 0x6b, 0xe3, 0x43, 0x6e, 0x04, 0x8b, 0x5e, 0x3a, 0x6c, 0x00, 0xc6, 0x6b, 0x08, 0xa6, 0x47,
    0x56, 0x76, 0x2e, 0xa0, 0xaa, 0xc5, 0xe3, 0x85, 0x51, 0x6f, 0xee, 0x3d, 0xba, 0x74, 0xf6, 0xea,
];

/// Asks the host about known signatures through the same encoding a token's takes: each valid
/// one must verify, each altered one must not. Any other answer, `Unavailable` included,
/// fails the test.
pub fn self_test(host: &dyn SignatureHost) -> Result<(), SelfTestFailure> {
    use HostAnswer::{Invalid, Valid};
    // The constants always convert (a unit test checks); were they not to, the empty key or
    // signature would fail the test.
    let rsa_key = rsa_spki(&RSA_N, &RSA_E).unwrap_or_default();
    let ec_key = ec_spki(Curve::P256, &[&[0x04][..], &P256_X, &P256_Y].concat());
    let flip = |signature: &[u8]| {
        let mut flipped = signature.to_vec();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        flipped
    };
    let rsa_flipped = flip(&RSA_SIGNATURE);
    let ec_signature = ecdsa_der(&P256_SIGNATURE, 32).unwrap_or_default();
    let ec_flipped = ecdsa_der(&flip(&P256_SIGNATURE), 32).unwrap_or_default();
    let checks = [
        (
            "RS256",
            HostHash::Sha256,
            &rsa_key,
            &RSA_SIGNATURE[..],
            Valid,
        ),
        (
            "RS256 altered",
            HostHash::Sha256,
            &rsa_key,
            &rsa_flipped,
            Invalid,
        ),
        (
            "RS256 as RS384",
            HostHash::Sha384,
            &rsa_key,
            &RSA_SIGNATURE,
            Invalid,
        ),
        ("ES256", HostHash::Sha256, &ec_key, &ec_signature, Valid),
        (
            "ES256 altered",
            HostHash::Sha256,
            &ec_key,
            &ec_flipped,
            Invalid,
        ),
    ];
    for (check, hash, key, signature, expected) in checks {
        let answered = host.verify(hash, key, SELF_TEST_MESSAGE, signature);
        if answered != expected {
            return Err(SelfTestFailure {
                check,
                expected,
                answered,
            });
        }
    }
    Ok(())
}

/// Fake hosts for tests: one that verifies with ring exactly what the host would be asked
/// (reading back the SPKI and DER signature the module built), and can be told to answer
/// otherwise; it records every call.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
    use std::sync::{Mutex, MutexGuard};

    #[derive(Default)]
    pub struct FakeHost {
        /// `Some`: answer this instead of verifying.
        answer: Mutex<Option<HostAnswer>>,
        /// The hash and key of every call.
        calls: Mutex<Vec<(HostHash, Vec<u8>)>>,
    }

    fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    impl FakeHost {
        pub fn answering(answer: HostAnswer) -> FakeHost {
            let host = FakeHost::default();
            host.set_answer(Some(answer));
            host
        }

        pub fn set_answer(&self, answer: Option<HostAnswer>) {
            *locked(&self.answer) = answer;
        }

        pub fn calls(&self) -> usize {
            locked(&self.calls).len()
        }

        pub fn recorded(&self) -> Vec<(HostHash, Vec<u8>)> {
            locked(&self.calls).clone()
        }

        pub fn clear_calls(&self) {
            locked(&self.calls).clear();
        }
    }

    /// One DER element: its tag, its contents, what follows it.
    pub fn read_tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            let (bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            bytes.iter().fold(0, |len, &b| len << 8 | usize::from(b))
        };
        let (content, after) = rest.split_at_checked(len)?;
        Some((tag, content, after))
    }

    /// The AlgorithmIdentifier and the key bits of an SPKI.
    pub fn split_spki(spki: &[u8]) -> Option<(&[u8], &[u8])> {
        let (0x30, body, []) = read_tlv(spki)? else {
            return None;
        };
        let (0x30, _, after_algorithm) = read_tlv(body)? else {
            return None;
        };
        let algorithm = &body[..body.len() - after_algorithm.len()];
        let (0x03, [0, key @ ..], []) = read_tlv(after_algorithm)? else {
            return None;
        };
        Some((algorithm, key))
    }

    impl SignatureHost for FakeHost {
        fn verify(
            &self,
            hash: HostHash,
            spki: &[u8],
            message: &[u8],
            signature: &[u8],
        ) -> HostAnswer {
            locked(&self.calls).push((hash, spki.to_vec()));
            if let Some(answer) = *locked(&self.answer) {
                return answer;
            }
            let Some((algorithm, key)) = split_spki(spki) else {
                return HostAnswer::Unavailable;
            };
            let verification: &dyn VerificationAlgorithm = match (algorithm, hash) {
                (a, HostHash::Sha256) if a == RSA_ALGORITHM => {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                }
                (a, HostHash::Sha384) if a == RSA_ALGORITHM => {
                    &signature::RSA_PKCS1_2048_8192_SHA384
                }
                (a, HostHash::Sha512) if a == RSA_ALGORITHM => {
                    &signature::RSA_PKCS1_2048_8192_SHA512
                }
                (a, HostHash::Sha256) if a == P256_ALGORITHM => &signature::ECDSA_P256_SHA256_ASN1,
                (a, HostHash::Sha384) if a == P256_ALGORITHM => &signature::ECDSA_P256_SHA384_ASN1,
                (a, HostHash::Sha256) if a == P384_ALGORITHM => &signature::ECDSA_P384_SHA256_ASN1,
                (a, HostHash::Sha384) if a == P384_ALGORITHM => &signature::ECDSA_P384_SHA384_ASN1,
                _ => return HostAnswer::Unavailable,
            };
            match UnparsedPublicKey::new(verification, key).verify(message, signature) {
                Ok(()) => HostAnswer::Valid,
                Err(_) => HostAnswer::Invalid,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
    use serde_json::Value;

    #[test]
    fn arguments_are_the_four_fields_in_order() {
        let message = [b'a'; 200];
        let encoded = encode_arguments(HostHash::Sha256, &[1, 2, 3], &[4, 5], &message);
        let mut expected = vec![0x0a, 6];
        expected.extend_from_slice(b"sha256");
        expected.extend_from_slice(&[0x12, 3, 1, 2, 3, 0x1a, 2, 4, 5]);
        // 200 as a varint: 0xc8 0x01.
        expected.extend_from_slice(&[0x22, 0xc8, 0x01]);
        expected.extend_from_slice(&message);
        assert_eq!(encoded, expected);
    }

    #[test]
    fn empty_fields_and_long_lengths_are_encoded() {
        let message = vec![0; 16384 + 5];
        let encoded = encode_arguments(HostHash::Sha512, &[], &[], &message);
        let mut expected = vec![0x0a, 6];
        expected.extend_from_slice(b"sha512");
        // 16389 = 0b1_0000000_0000101: 0x85 0x80 0x01.
        expected.extend_from_slice(&[0x12, 0, 0x1a, 0, 0x22, 0x85, 0x80, 0x01]);
        assert_eq!(&encoded[..expected.len()], &expected[..]);
        assert_eq!(encoded.len(), expected.len() + message.len());
        assert_eq!(HostHash::Sha384.name(), "sha384");
    }

    #[test]
    fn result_decodes() {
        use HostAnswer::{Invalid, Unavailable, Valid};
        let cases: [(&[u8], HostAnswer); 17] = [
            (&[0x08, 0x01], Valid),
            (&[0x08, 0x00], Invalid),
            // What Envoy sends for a bad signature: `result` left out (false), an error string.
            (b"\x12\x05error", Invalid),
            (&[], Invalid),
            (b"\x12\x03abc\x08\x01", Valid),
            // The last `result` counts.
            (&[0x08, 0x01, 0x08, 0x00], Invalid),
            // Unknown fields of every wire type are skipped.
            (
                &[
                    0x08, 0x01, 0x18, 0x96, 0x01, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2a, 2, 9, 9,
                    0x35, 1, 2, 3, 4,
                ],
                Valid,
            ),
            // Truncated: a key without its value, a string shorter than its length, a varint
            // cut short, a fixed64 cut short.
            (&[0x08], Unavailable),
            (b"\x12\x05err", Unavailable),
            (&[0x08, 0x81], Unavailable),
            (&[0x08, 0x01, 0x21, 1, 2, 3], Unavailable),
            // `result` not 0 or 1, or with another wire type; `error` not length-delimited.
            (&[0x08, 0x02], Unavailable),
            (&[0x0a, 0x01, 0x01], Unavailable),
            (&[0x10, 0x01], Unavailable),
            // Field 0, a group, a varint longer than ten bytes.
            (&[0x00, 0x01], Unavailable),
            (&[0x1b, 0x1c], Unavailable),
            (
                &[
                    0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ],
                Unavailable,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_result(bytes), expected, "{bytes:02x?}");
        }
    }

    #[test]
    fn raw_ecdsa_signature_becomes_minimal_der() {
        let mut raw = [0u8; 64];
        raw[31] = 1;
        raw[63] = 1;
        assert_eq!(ecdsa_der(&raw, 32).unwrap(), [0x30, 6, 2, 1, 1, 2, 1, 1]);
        // A top bit set needs a zero byte; leading zeros go.
        let mut raw = [0u8; 64];
        raw[0] = 0x80;
        raw[34] = 0x7f;
        let der = ecdsa_der(&raw, 32).unwrap();
        assert_eq!(&der[..5], [0x30, 2 + 33 + 2 + 30, 2, 33, 0]);
        assert_eq!(der[5], 0x80);
        assert_eq!(&der[37..40], [2, 30, 0x7f]);
        assert_eq!(der.len(), 2 + 35 + 32);
        // P-384 at its largest: both padded, still a one-byte length.
        let der = ecdsa_der(&[0xff; 96], 48).unwrap();
        assert_eq!(&der[..5], [0x30, 102, 2, 49, 0]);
        assert_eq!(&der[53..56], [2, 49, 0]);
        assert_eq!(der.len(), 104);
    }

    #[test]
    fn raw_ecdsa_signature_of_the_wrong_length_or_with_a_zero_is_refused() {
        let good = [7u8; 64];
        assert!(ecdsa_der(&good, 32).is_some());
        for len in [0, 63, 65, 96] {
            assert_eq!(ecdsa_der(&vec![7; len], 32), None, "length {len}");
        }
        let mut zero_r = good;
        zero_r[..32].fill(0);
        let mut zero_s = good;
        zero_s[32..].fill(0);
        assert_eq!(ecdsa_der(&zero_r, 32), None);
        assert_eq!(ecdsa_der(&zero_s, 32), None);
        assert_eq!(ecdsa_der(&[0; 96], 48), None);
    }

    #[test]
    fn der_lengths_of_every_size() {
        for (len, expected) in [
            (0usize, &[0u8][..]),
            (127, &[127]),
            (128, &[0x81, 128]),
            (255, &[0x81, 255]),
            (256, &[0x82, 1, 0]),
            (1 << 16, &[0x83, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            put_len(&mut out, len);
            assert_eq!(out, expected, "{len}");
        }
    }

    /// tests/fixtures/spki.json: keys and their SPKI as Python `cryptography` writes them
    /// (tests/fixtures/make_host_fixtures.py spki).
    #[test]
    fn spki_matches_python_cryptography() {
        let cases: Value =
            serde_json::from_str(include_str!("../tests/fixtures/spki.json")).unwrap();
        let member =
            |jwk: &Value, name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let cases = cases.as_array().unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            let jwk = &case["jwk"];
            let built = match (jwk["kty"].as_str().unwrap(), jwk["crv"].as_str()) {
                ("RSA", None) => rsa_spki(&member(jwk, "n"), &member(jwk, "e")).unwrap(),
                ("EC", Some(crv)) => {
                    let curve = if crv == "P-256" {
                        Curve::P256
                    } else {
                        Curve::P384
                    };
                    let point = [&[4][..], &member(jwk, "x"), &member(jwk, "y")].concat();
                    ec_spki(curve, &point)
                }
                other => panic!("unexpected fixture {other:?}"),
            };
            let expected = STANDARD.decode(case["spki"].as_str().unwrap()).unwrap();
            assert_eq!(built, expected, "{}", case["name"]);
        }
    }

    #[test]
    fn rsa_spki_strips_leading_zeros_and_refuses_zero() {
        let plain = rsa_spki(&[0x80, 1], &[3]).unwrap();
        assert_eq!(rsa_spki(&[0, 0, 0x80, 1], &[0, 3]).unwrap(), plain);
        let (_, key) = split_spki(&plain).unwrap();
        assert_eq!(key, [0x30, 8, 2, 3, 0, 0x80, 1, 2, 1, 3]);
        assert_eq!(rsa_spki(&[0, 0], &[3]), None);
        assert_eq!(rsa_spki(&[0x80, 1], &[]), None);
    }

    #[test]
    fn self_test_constants_verify_with_ring() {
        let rsa = RsaPublicKeyComponents {
            n: &RSA_N[..],
            e: &RSA_E[..],
        };
        rsa.verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            SELF_TEST_MESSAGE,
            &RSA_SIGNATURE,
        )
        .unwrap();
        let point = [&[0x04][..], &P256_X, &P256_Y].concat();
        UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &point)
            .verify(SELF_TEST_MESSAGE, &P256_SIGNATURE)
            .unwrap();
        // The DER conversion meets both cases: r padded, s not.
        assert!(P256_SIGNATURE[0] >= 0x80 && P256_SIGNATURE[32] < 0x80);
        assert!(rsa_spki(&RSA_N, &RSA_E).is_some());
        assert!(ecdsa_der(&P256_SIGNATURE, 32).is_some());
    }

    #[test]
    fn a_host_that_verifies_passes_the_self_test() {
        let host = FakeHost::default();
        assert_eq!(self_test(&host), Ok(()));
        assert_eq!(host.calls(), 5);
        assert!(TrustedHost::check(&host).is_ok());
    }

    #[test]
    fn a_host_that_answers_wrongly_fails_the_self_test() {
        use HostAnswer::{Invalid, Unavailable, Valid};
        for (answer, check, expected) in [
            (Valid, "RS256 altered", Invalid),
            (Invalid, "RS256", Valid),
            (Unavailable, "RS256", Valid),
        ] {
            let host = FakeHost::answering(answer);
            let failure = TrustedHost::check(&host).unwrap_err();
            assert_eq!(
                failure,
                SelfTestFailure {
                    check,
                    expected,
                    answered: answer
                }
            );
        }
        let failure = SelfTestFailure {
            check: "ES256",
            expected: Valid,
            answered: Unavailable,
        };
        assert_eq!(
            failure.to_string(),
            "host known-answer test \"ES256\": expected Valid, the host answered Unavailable"
        );
    }

    /// A host that ignores the hash or mixes up the keys fails too.
    #[test]
    fn a_host_that_ignores_the_hash_fails_the_self_test() {
        struct IgnoresHash(FakeHost);
        impl SignatureHost for IgnoresHash {
            fn verify(&self, _: HostHash, spki: &[u8], m: &[u8], s: &[u8]) -> HostAnswer {
                self.0.verify(HostHash::Sha256, spki, m, s)
            }
        }
        let failure = self_test(&IgnoresHash(FakeHost::default())).unwrap_err();
        assert_eq!(failure.check, "RS256 as RS384");
    }

    #[test]
    fn host_hash_per_algorithm() {
        for alg in Alg::ALL {
            let expected = match alg {
                Alg::RS256 | Alg::ES256 => Some(HostHash::Sha256),
                Alg::RS384 | Alg::ES384 => Some(HostHash::Sha384),
                Alg::RS512 => Some(HostHash::Sha512),
                _ => None,
            };
            assert_eq!(HostHash::for_alg(alg), expected, "{alg}");
        }
    }
}
