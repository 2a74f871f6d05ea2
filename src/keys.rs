//! JWKS documents (RFC 7517) turned into keys ready for verification.
//!
//! A key that breaks a rule is skipped and counted, never fatal: one odd key in an identity
//! provider's document (an encryption key, an unsupported curve) must not take down the others.
//! Key material is decoded and checked once here, so verification does no parsing of its own.

use crate::alg::{Alg, KeyFamily};
use crate::ed25519;
use crate::host_verify::{self, Curve};
use crate::rsa;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use serde_json::{Map, Value};
use std::fmt;

/// Caps on a JWKS document (`limits.maxJwksBytes`, `limits.maxJwksKeys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksLimits {
    pub max_bytes: usize,
    pub max_keys: usize,
}

impl From<&crate::config::Limits> for JwksLimits {
    fn from(limits: &crate::config::Limits) -> Self {
        JwksLimits {
            max_bytes: limits.max_jwks_bytes,
            max_keys: limits.max_jwks_keys,
        }
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Jwk>,
    skipped: usize,
}

impl KeySet {
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// How many entries of the document were not usable (for logs and metrics).
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// One verification key.
pub struct Jwk {
    kid: Option<String>,
    alg: Option<Alg>,
    material: KeyMaterial,
    /// DER SubjectPublicKeyInfo of an RSA or EC key, the form the host verifies with; built
    /// here once, not per token.
    spki: Option<Box<[u8]>>,
}

/// Public key material in the form ring verifies with.
pub(crate) enum KeyMaterial {
    /// With its Montgomery setup done once here (`rsa`): ring 0.17 redoes it at every
    /// verification. Boxed: far larger than the other variants.
    Rsa(Box<rsa::PublicKey>),
    /// Uncompressed point 0x04‖x‖y; ring checks it lies on the curve at each verify, so a
    /// bogus point can only fail verification.
    EcP256(Vec<u8>),
    EcP384(Vec<u8>),
    /// Decompressed and tabulated here, once; a key that is no point is kept (as ring would
    /// have it) and verifies nothing.
    Ed25519(ed25519::VerifyingKey),
    /// Boxed: three prepared HMAC states are far larger than the other variants.
    Oct(Box<HmacKeys>),
}

/// One prepared HMAC key per HS algorithm the secret is long enough for (RFC 7518 §3.2:
/// the secret must be at least as long as the hash output).
pub(crate) struct HmacKeys {
    hs256: Option<hmac::Key>,
    hs384: Option<hmac::Key>,
    hs512: Option<hmac::Key>,
}

impl HmacKeys {
    fn new(secret: &[u8]) -> HmacKeys {
        let prepare = |algorithm, min_len| {
            (secret.len() >= min_len).then(|| hmac::Key::new(algorithm, secret))
        };
        HmacKeys {
            hs256: prepare(hmac::HMAC_SHA256, 32),
            hs384: prepare(hmac::HMAC_SHA384, 48),
            hs512: prepare(hmac::HMAC_SHA512, 64),
        }
    }

    pub(crate) fn for_alg(&self, alg: Alg) -> Option<&hmac::Key> {
        match alg {
            Alg::HS256 => self.hs256.as_ref(),
            Alg::HS384 => self.hs384.as_ref(),
            Alg::HS512 => self.hs512.as_ref(),
            _ => None,
        }
    }
}

impl Jwk {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Option<Alg> {
        self.alg
    }

    pub fn family(&self) -> KeyFamily {
        match self.material {
            KeyMaterial::Rsa(_) => KeyFamily::Rsa,
            KeyMaterial::EcP256(_) => KeyFamily::EcP256,
            KeyMaterial::EcP384(_) => KeyFamily::EcP384,
            KeyMaterial::Ed25519(_) => KeyFamily::Ed25519,
            KeyMaterial::Oct(_) => KeyFamily::Oct,
        }
    }

    /// The key type/curve agrees with `alg`'s family, and the key's own `alg` (if any) equals
    /// `alg`. A symmetric key fits only the HS algorithms its secret is long enough for.
    pub fn fits(&self, alg: Alg) -> bool {
        let family_fits = match &self.material {
            KeyMaterial::Oct(keys) => keys.for_alg(alg).is_some(),
            _ => self.family() == alg.key_family(),
        };
        family_fits && self.alg.is_none_or(|own| own == alg)
    }

    pub(crate) fn material(&self) -> &KeyMaterial {
        &self.material
    }

    pub(crate) fn spki(&self) -> Option<&[u8]> {
        self.spki.as_deref()
    }
}

/// Kid, alg and family only: key material stays out of logs.
impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwksError {
    TooLarge,
    NotJson,
    /// Not an object with a `keys` array.
    NotJwks,
    TooManyKeys,
    NoUsableKey,
}

impl JwksError {
    pub fn describe(&self) -> &'static str {
        match self {
            JwksError::TooLarge => "key set document is too large",
            JwksError::NotJson => "key set document is not JSON",
            JwksError::NotJwks => "key set document has no keys array",
            JwksError::TooManyKeys => "key set document has too many keys",
            JwksError::NoUsableKey => "key set document has no usable signing key",
        }
    }
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Parses a JWKS document. `allow_symmetric`: oct keys are accepted only from an inline `jwks`
/// in the config, never from a fetched document (anyone who can serve the document could
/// otherwise choose the secret).
pub fn parse_jwks(
    json: &[u8],
    limits: &JwksLimits,
    allow_symmetric: bool,
) -> Result<KeySet, JwksError> {
    if json.len() > limits.max_bytes {
        return Err(JwksError::TooLarge);
    }
    let document: Value = serde_json::from_slice(json).map_err(|_| JwksError::NotJson)?;
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NotJwks)?;
    if entries.len() > limits.max_keys {
        return Err(JwksError::TooManyKeys);
    }
    let keys: Vec<Jwk> = entries
        .iter()
        .filter_map(|entry| parse_jwk(entry.as_object()?, allow_symmetric))
        .collect();
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    let skipped = entries.len().saturating_sub(keys.len());
    Ok(KeySet { keys, skipped })
}

/// Why a DPoP proof's `jwk` cannot be the key it is verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofKeyError {
    /// Private members (or a symmetric `k`): RFC 9449 §4.3 check 7.
    Private,
    /// Not a public key of a supported kind, curve and size.
    Unusable,
}

/// The public key a DPoP proof carries in its header, as a set of one, with the same rules as
/// a provider's keys (sizes, curves, `alg`, `use`).
pub fn proof_key(jwk: &Map<String, Value>) -> Result<KeySet, ProofKeyError> {
    if PRIVATE_MEMBERS.iter().any(|name| jwk.contains_key(*name)) || jwk.contains_key("k") {
        return Err(ProofKeyError::Private);
    }
    let key = parse_jwk(jwk, false).ok_or(ProofKeyError::Unusable)?;
    Ok(KeySet {
        keys: vec![key],
        skipped: 0,
    })
}

/// Members that only a private key has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// `None`: the key is skipped.
fn parse_jwk(jwk: &Map<String, Value>, allow_symmetric: bool) -> Option<Jwk> {
    // A key set is public by definition; one carrying a private key is a leak we refuse to use.
    if PRIVATE_MEMBERS.iter().any(|name| jwk.contains_key(*name)) {
        return None;
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(kid) => Some(kid.as_str()?.to_owned()),
    };
    if let Some(key_use) = jwk.get("use") {
        if key_use.as_str()? != "sig" {
            return None;
        }
    }
    if let Some(key_ops) = jwk.get("key_ops") {
        if !key_ops.as_array()?.iter().any(|op| op == "verify") {
            return None;
        }
    }
    let alg = match jwk.get("alg") {
        None => None,
        Some(alg) => Some(Alg::from_name(alg.as_str()?)?),
    };
    let material = match jwk.get("kty")?.as_str()? {
        "RSA" => rsa_material(jwk)?,
        "EC" => ec_material(jwk)?,
        "OKP" => okp_material(jwk)?,
        "oct" if allow_symmetric => oct_material(jwk)?,
        _ => return None,
    };
    let spki = match &material {
        KeyMaterial::Rsa(key) => host_verify::rsa_spki(key.n(), key.e()),
        KeyMaterial::EcP256(point) => Some(host_verify::ec_spki(Curve::P256, point)),
        KeyMaterial::EcP384(point) => Some(host_verify::ec_spki(Curve::P384, point)),
        KeyMaterial::Ed25519(_) | KeyMaterial::Oct(_) => None,
    };
    let mut key = Jwk {
        kid,
        alg: None,
        material,
        spki: spki.map(Vec::into_boxed_slice),
    };
    // Checked before `alg` is recorded, so `fits` compares only key type, curve and length.
    if let Some(alg) = alg {
        if !key.fits(alg) {
            return None;
        }
        key.alg = Some(alg);
    }
    Some(key)
}

/// Keeps exactly the keys ring would verify with (`rsa::PublicKey::new`): 2048 to 8192 bits,
/// an odd exponent from 3 to 2^33 − 1.
fn rsa_material(jwk: &Map<String, Value>) -> Option<KeyMaterial> {
    let n = base64url_member(jwk, "n")?;
    let e = base64url_member(jwk, "e")?;
    Some(KeyMaterial::Rsa(Box::new(rsa::PublicKey::new(&n, &e)?)))
}

fn ec_material(jwk: &Map<String, Value>) -> Option<KeyMaterial> {
    let (coordinate_len, material): (usize, fn(Vec<u8>) -> KeyMaterial) =
        match jwk.get("crv")?.as_str()? {
            "P-256" => (32, KeyMaterial::EcP256),
            "P-384" => (48, KeyMaterial::EcP384),
            _ => return None,
        };
    let x = base64url_member(jwk, "x")?;
    let y = base64url_member(jwk, "y")?;
    if x.len() != coordinate_len || y.len() != coordinate_len {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * coordinate_len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(material(point))
}

fn okp_material(jwk: &Map<String, Value>) -> Option<KeyMaterial> {
    if jwk.get("crv")?.as_str()? != "Ed25519" {
        return None;
    }
    let x = base64url_member(jwk, "x")?;
    Some(KeyMaterial::Ed25519(ed25519::VerifyingKey::new(
        x.try_into().ok()?,
    )))
}

/// Shorter secrets are guessable offline from any token they signed.
const HMAC_MIN_SECRET_BYTES: usize = 32;

fn oct_material(jwk: &Map<String, Value>) -> Option<KeyMaterial> {
    let secret = base64url_member(jwk, "k")?;
    if secret.len() < HMAC_MIN_SECRET_BYTES {
        return None;
    }
    Some(KeyMaterial::Oct(Box::new(HmacKeys::new(&secret))))
}

/// A member that must be strict unpadded base64url (RFC 7515 §2): no padding, no whitespace,
/// no stray trailing bits.
fn base64url_member(jwk: &Map<String, Value>, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(jwk.get(name)?.as_str()?).ok()
}

/// Test keys that sign with ring, and their public JWKs.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod testing {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    pub const RSA_A: &[u8] = include_bytes!("../tests/fixtures/rsa2048-a.pk8.der");
    pub const RSA_B: &[u8] = include_bytes!("../tests/fixtures/rsa2048-b.pk8.der");
    /// The modulus of an RSA-1024 key, base64url (made with `openssl genpkey`).
    pub const RSA_1024_N: &str = include_str!("../tests/fixtures/rsa1024.n.b64u");

    pub const LIMITS: JwksLimits = JwksLimits {
        max_bytes: 256 * 1024,
        max_keys: 64,
    };

    pub enum TestKey {
        Rsa(RsaKeyPair),
        Ec(EcdsaKeyPair, Vec<u8>),
        Ed25519(Ed25519KeyPair),
        Oct(Vec<u8>),
    }

    pub fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    impl TestKey {
        pub fn rsa(pkcs8: &[u8]) -> TestKey {
            TestKey::Rsa(RsaKeyPair::from_pkcs8(pkcs8).unwrap())
        }

        pub fn ec(alg: Alg) -> TestKey {
            let signing = match alg {
                Alg::ES256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Alg::ES384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => unreachable!("not an ECDSA algorithm"),
            };
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref(), &rng).unwrap();
            TestKey::Ec(pair, pkcs8.as_ref().to_vec())
        }

        pub fn ed25519() -> TestKey {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
            TestKey::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap())
        }

        pub fn oct(secret: &[u8]) -> TestKey {
            TestKey::Oct(secret.to_vec())
        }

        /// A key of the family `alg` needs.
        pub fn for_alg(alg: Alg) -> TestKey {
            match alg.key_family() {
                KeyFamily::Rsa => TestKey::rsa(RSA_A),
                KeyFamily::EcP256 => TestKey::ec(Alg::ES256),
                KeyFamily::EcP384 => TestKey::ec(Alg::ES384),
                KeyFamily::Ed25519 => TestKey::ed25519(),
                KeyFamily::Oct => TestKey::oct(&[7; 64]),
            }
        }

        /// The public JWK, with `kid` when given.
        pub fn jwk(&self, kid: Option<&str>) -> Value {
            let mut jwk = match self {
                TestKey::Rsa(pair) => {
                    let public = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
                    json!({"kty": "RSA", "n": b64(&public.n), "e": b64(&public.e)})
                }
                TestKey::Ec(pair, _) => {
                    let point = pair.public_key().as_ref();
                    let half = (point.len() - 1) / 2;
                    let crv = if half == 32 { "P-256" } else { "P-384" };
                    json!({"kty": "EC", "crv": crv,
                           "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])})
                }
                TestKey::Ed25519(pair) => {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
                }
                TestKey::Oct(secret) => json!({"kty": "oct", "k": b64(secret)}),
            };
            if let Some(kid) = kid {
                jwk["kid"] = json!(kid);
            }
            jwk
        }

        pub fn sign(&self, alg: Alg, message: &[u8]) -> Vec<u8> {
            let rng = SystemRandom::new();
            match self {
                TestKey::Rsa(pair) => {
                    let padding: &'static dyn signature::RsaEncoding = match alg {
                        Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                        Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                        Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                        Alg::PS256 => &signature::RSA_PSS_SHA256,
                        Alg::PS384 => &signature::RSA_PSS_SHA384,
                        Alg::PS512 => &signature::RSA_PSS_SHA512,
                        _ => unreachable!("not an RSA algorithm"),
                    };
                    let mut sig = vec![0; pair.public().modulus_len()];
                    pair.sign(padding, &rng, message, &mut sig).unwrap();
                    sig
                }
                TestKey::Ec(pair, _) => pair.sign(&rng, message).unwrap().as_ref().to_vec(),
                TestKey::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
                TestKey::Oct(secret) => {
                    let algorithm = match alg {
                        Alg::HS256 => hmac::HMAC_SHA256,
                        Alg::HS384 => hmac::HMAC_SHA384,
                        Alg::HS512 => hmac::HMAC_SHA512,
                        _ => unreachable!("not an HMAC algorithm"),
                    };
                    hmac::sign(&hmac::Key::new(algorithm, secret), message)
                        .as_ref()
                        .to_vec()
                }
            }
        }

        /// An ASN.1 DER ECDSA signature (what JOSE forbids) by the same key.
        pub fn sign_der(&self, message: &[u8]) -> Vec<u8> {
            let TestKey::Ec(pair, pkcs8) = self else {
                unreachable!("not an ECDSA key")
            };
            let der_signing = if pair.public_key().as_ref().len() == 65 {
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let rng = SystemRandom::new();
            let pair = EcdsaKeyPair::from_pkcs8(der_signing, pkcs8, &rng).unwrap();
            pair.sign(&rng, message).unwrap().as_ref().to_vec()
        }
    }

    pub fn jwks(keys: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::testing::*;
    use super::*;
    use serde_json::json;

    fn parse(keys: &[Value], allow_symmetric: bool) -> Result<KeySet, JwksError> {
        parse_jwks(&jwks(keys), &LIMITS, allow_symmetric)
    }

    fn good_key() -> Value {
        TestKey::ed25519().jwk(Some("good"))
    }

    /// The key is skipped (not fatal): beside a good key, only the good key is kept.
    #[track_caller]
    fn assert_skipped(bad: Value, allow_symmetric: bool) {
        let set = parse(&[bad.clone(), good_key()], allow_symmetric).unwrap();
        assert_eq!(set.len(), 1, "kept {bad}");
        assert_eq!(set.skipped(), 1);
        assert_eq!(set.keys()[0].kid(), Some("good"));
    }

    #[track_caller]
    fn assert_kept(key: Value) {
        let set = parse(std::slice::from_ref(&key), false).unwrap();
        assert_eq!((set.len(), set.skipped()), (1, 0), "skipped {key}");
    }

    fn with(mut jwk: Value, name: &str, value: Value) -> Value {
        jwk[name] = value;
        jwk
    }

    fn rsa_jwk() -> Value {
        TestKey::rsa(RSA_A).jwk(Some("rsa"))
    }

    #[test]
    fn parses_every_key_type_with_kid_and_alg() {
        let keys = [
            with(rsa_jwk(), "alg", json!("PS256")),
            TestKey::ec(Alg::ES256).jwk(Some("p256")),
            TestKey::ec(Alg::ES384).jwk(Some("p384")),
            TestKey::ed25519().jwk(None),
            TestKey::oct(&[1; 32]).jwk(Some("hmac")),
        ];
        let set = parse(&keys, true).unwrap();
        assert_eq!((set.len(), set.skipped(), set.is_empty()), (5, 0, false));
        let summary: Vec<_> = set
            .keys()
            .iter()
            .map(|key| (key.kid(), key.alg(), key.family()))
            .collect();
        assert_eq!(
            summary,
            [
                (Some("rsa"), Some(Alg::PS256), KeyFamily::Rsa),
                (Some("p256"), None, KeyFamily::EcP256),
                (Some("p384"), None, KeyFamily::EcP384),
                (None, None, KeyFamily::Ed25519),
                (Some("hmac"), None, KeyFamily::Oct),
            ]
        );
    }

    #[test]
    fn fits_checks_family_and_the_keys_own_alg() {
        let set = parse(&[rsa_jwk(), with(rsa_jwk(), "alg", json!("RS384"))], false).unwrap();
        let (any_rsa, rs384_only) = (&set.keys()[0], &set.keys()[1]);
        assert!(any_rsa.fits(Alg::RS256) && any_rsa.fits(Alg::PS512));
        assert!(!any_rsa.fits(Alg::ES256) && !any_rsa.fits(Alg::HS256));
        assert!(rs384_only.fits(Alg::RS384));
        assert!(!rs384_only.fits(Alg::RS256) && !rs384_only.fits(Alg::PS384));
    }

    #[test]
    fn hmac_secret_must_be_as_long_as_the_hash() {
        let set = parse(
            &[
                TestKey::oct(&[1; 32]).jwk(None),
                TestKey::oct(&[1; 64]).jwk(None),
            ],
            true,
        )
        .unwrap();
        let (short, long) = (&set.keys()[0], &set.keys()[1]);
        assert!(short.fits(Alg::HS256));
        assert!(!short.fits(Alg::HS384) && !short.fits(Alg::HS512));
        assert!(Alg::ALL.into_iter().filter(|alg| long.fits(*alg)).eq([
            Alg::HS256,
            Alg::HS384,
            Alg::HS512
        ]));
        // A key restricted to HS512 whose secret is too short for it is useless.
        assert_skipped(
            with(TestKey::oct(&[1; 32]).jwk(None), "alg", json!("HS512")),
            true,
        );
    }

    #[test]
    fn rsa_modulus_below_2048_bits_is_skipped() {
        assert_skipped(with(rsa_jwk(), "n", json!(RSA_1024_N)), false);
        // 2047 bits: the top bit of a 256-byte modulus cleared.
        let mut n = URL_SAFE_NO_PAD
            .decode(rsa_jwk()["n"].as_str().unwrap())
            .unwrap();
        n[0] &= 0x7f;
        assert_skipped(with(rsa_jwk(), "n", json!(b64(&n))), false);
    }

    #[test]
    fn rsa_modulus_above_8192_bits_is_skipped() {
        let mut n = vec![0xff; 1025];
        n[1024] = 0xfb;
        assert_skipped(with(rsa_jwk(), "n", json!(b64(&n))), false);
        assert_kept(with(rsa_jwk(), "n", json!(b64(&n[..1024]))));
    }

    #[test]
    fn rsa_modulus_leading_zeros_are_stripped() {
        let n = URL_SAFE_NO_PAD
            .decode(rsa_jwk()["n"].as_str().unwrap())
            .unwrap();
        let padded = [&[0, 0][..], &n].concat();
        assert_kept(with(rsa_jwk(), "n", json!(b64(&padded))));
    }

    #[test]
    fn rsa_exponent_must_be_odd_and_at_least_3() {
        for bad_e in [
            &[1u8][..],
            &[0],
            &[],
            &[1, 0, 0],
            &[2, 0, 0, 0, 1],
            &[1, 0, 0, 0, 0, 1],
        ] {
            assert_skipped(with(rsa_jwk(), "e", json!(b64(bad_e))), false);
        }
        assert_kept(with(rsa_jwk(), "e", json!(b64(&[3]))));
    }

    #[test]
    fn even_rsa_modulus_is_skipped() {
        let mut n = URL_SAFE_NO_PAD
            .decode(rsa_jwk()["n"].as_str().unwrap())
            .unwrap();
        n[255] &= 0xfe;
        assert_skipped(with(rsa_jwk(), "n", json!(b64(&n))), false);
    }

    #[test]
    fn base64url_must_be_strict() {
        let n = rsa_jwk()["n"].as_str().unwrap().to_owned();
        let standard_alphabet = n.replace('-', "+").replace('_', "/");
        assert_ne!(standard_alphabet, n);
        assert_skipped(with(rsa_jwk(), "n", json!(standard_alphabet)), false);
        assert_skipped(with(rsa_jwk(), "e", json!("AQAB=")), false);
        assert_skipped(with(rsa_jwk(), "e", json!(" AQAB")), false);
        // "AQE" is 0x01 0x01 (257); "AQF" sets a trailing bit that encodes nothing.
        assert_kept(with(rsa_jwk(), "e", json!("AQE")));
        assert_skipped(with(rsa_jwk(), "e", json!("AQF")), false);
        assert_skipped(with(rsa_jwk(), "n", json!(12345)), false);
    }

    #[test]
    fn ec_and_okp_curves_and_lengths() {
        let p256 = TestKey::ec(Alg::ES256).jwk(None);
        assert_skipped(with(p256.clone(), "crv", json!("P-521")), false);
        assert_skipped(with(p256.clone(), "crv", json!("secp256k1")), false);
        assert_skipped(with(p256.clone(), "crv", json!("P-384")), false);
        assert_skipped(with(p256.clone(), "x", json!(b64(&[1; 31]))), false);
        assert_skipped(with(p256.clone(), "y", json!(b64(&[1; 33]))), false);
        let ed = TestKey::ed25519().jwk(None);
        assert_skipped(with(ed.clone(), "crv", json!("X25519")), false);
        assert_skipped(with(ed.clone(), "crv", json!("Ed448")), false);
        assert_skipped(with(ed, "x", json!(b64(&[1; 31]))), false);
    }

    #[test]
    fn unsupported_or_missing_kty_is_skipped() {
        assert_skipped(with(rsa_jwk(), "kty", json!("RSA-PSS")), false);
        assert_skipped(with(rsa_jwk(), "kty", json!("rsa")), false);
        assert_skipped(json!({"kid": "x", "n": "AQAB", "e": "AQAB"}), false);
        assert_skipped(json!("not an object"), false);
    }

    #[test]
    fn use_must_be_sig() {
        assert_skipped(with(rsa_jwk(), "use", json!("enc")), false);
        assert_skipped(with(rsa_jwk(), "use", json!(["sig"])), false);
        assert_kept(with(rsa_jwk(), "use", json!("sig")));
    }

    #[test]
    fn key_ops_must_contain_verify() {
        assert_skipped(
            with(rsa_jwk(), "key_ops", json!(["encrypt", "wrapKey"])),
            false,
        );
        assert_skipped(with(rsa_jwk(), "key_ops", json!([])), false);
        assert_skipped(with(rsa_jwk(), "key_ops", json!("verify")), false);
        assert_kept(with(rsa_jwk(), "key_ops", json!(["sign", "verify"])));
    }

    #[test]
    fn alg_must_be_known_and_match_the_key() {
        assert_skipped(with(rsa_jwk(), "alg", json!("RSA-OAEP")), false);
        assert_skipped(with(rsa_jwk(), "alg", json!("ES256")), false);
        assert_skipped(with(rsa_jwk(), "alg", json!("rs256")), false);
        assert_skipped(with(rsa_jwk(), "alg", json!("none")), false);
        let p256 = TestKey::ec(Alg::ES256).jwk(None);
        assert_skipped(with(p256.clone(), "alg", json!("ES384")), false);
        assert_kept(with(p256, "alg", json!("ES256")));
    }

    #[test]
    fn kid_must_be_a_string() {
        assert_skipped(with(rsa_jwk(), "kid", json!(7)), false);
        assert_skipped(with(rsa_jwk(), "kid", json!(null)), false);
    }

    #[test]
    fn keys_with_private_members_are_skipped() {
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
            assert_skipped(with(rsa_jwk(), member, json!("AQAB")), false);
        }
        let p256 = TestKey::ec(Alg::ES256).jwk(None);
        assert_skipped(with(p256, "d", json!(b64(&[1; 32]))), false);
        let ed = TestKey::ed25519().jwk(None);
        assert_skipped(with(ed, "d", json!(b64(&[1; 32]))), true);
    }

    #[test]
    fn unknown_members_are_ignored() {
        let jwk = with(rsa_jwk(), "x5c", json!(["MIIB..."]));
        assert_kept(with(jwk, "x5t", json!("abc")));
    }

    #[test]
    fn oct_keys_only_inline() {
        let oct = TestKey::oct(&[9; 32]).jwk(Some("hmac"));
        assert_skipped(oct.clone(), false);
        assert_eq!(
            parse(std::slice::from_ref(&oct), false).unwrap_err(),
            JwksError::NoUsableKey
        );
        assert_eq!(parse(&[oct], true).unwrap().len(), 1);
    }

    #[test]
    fn oct_secret_shorter_than_32_bytes_is_skipped() {
        assert_skipped(TestKey::oct(&[9; 31]).jwk(None), true);
        assert_skipped(json!({"kty": "oct", "k": ""}), true);
    }

    #[test]
    fn too_many_keys_refuses_the_document() {
        let limits = JwksLimits {
            max_bytes: 1 << 20,
            max_keys: 2,
        };
        let keys = [good_key(), good_key()];
        assert_eq!(parse_jwks(&jwks(&keys), &limits, false).unwrap().len(), 2);
        let keys = [good_key(), good_key(), json!("junk")];
        assert_eq!(
            parse_jwks(&jwks(&keys), &limits, false).unwrap_err(),
            JwksError::TooManyKeys
        );
    }

    #[test]
    fn too_large_is_checked_before_parsing() {
        let document = jwks(&[good_key()]);
        let limits = |max_bytes| JwksLimits {
            max_bytes,
            max_keys: 64,
        };
        assert!(parse_jwks(&document, &limits(document.len()), false).is_ok());
        assert_eq!(
            parse_jwks(&document, &limits(document.len() - 1), false).unwrap_err(),
            JwksError::TooLarge
        );
        assert_eq!(
            parse_jwks(b"not json at all", &limits(4), false).unwrap_err(),
            JwksError::TooLarge
        );
    }

    #[test]
    fn malformed_documents() {
        for not_json in [&b""[..], b"{", b"{\"keys\": []} x", b"\xff"] {
            assert_eq!(
                parse_jwks(not_json, &LIMITS, false).unwrap_err(),
                JwksError::NotJson
            );
        }
        for not_jwks in [
            &b"[]"[..],
            b"{}",
            b"{\"keys\": {}}",
            b"null",
            b"{\"Keys\": []}",
        ] {
            assert_eq!(
                parse_jwks(not_jwks, &LIMITS, false).unwrap_err(),
                JwksError::NotJwks
            );
        }
        assert_eq!(
            parse_jwks(b"{\"keys\": []}", &LIMITS, false).unwrap_err(),
            JwksError::NoUsableKey
        );
        let all_bad = jwks(&[with(rsa_jwk(), "use", json!("enc")), json!(1)]);
        assert_eq!(
            parse_jwks(&all_bad, &LIMITS, false).unwrap_err(),
            JwksError::NoUsableKey
        );
    }

    #[test]
    fn error_descriptions_name_the_cause() {
        assert_eq!(
            JwksError::TooLarge.describe(),
            "key set document is too large"
        );
        assert_eq!(
            JwksError::NoUsableKey.to_string(),
            "key set document has no usable signing key"
        );
    }
}
