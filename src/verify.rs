//! Picks the key for a token and checks its signature: RS256/384/512 and ES256/384 by the
//! host when it offers that and passed its known-answer test (`host_verify`), EdDSA by our own
//! [`crate::ed25519`] (same answers as ring, key prepared once), everything else, and anything
//! the host gives no answer on, with ring through jwt-compact's `Algorithm` trait.

use crate::alg::{Alg, AlgSet};
use crate::host_verify::{self, HostAnswer, HostHash, TrustedHost};
use crate::keys::{Jwk, KeyMaterial, KeySet};
use crate::rsa::{Hash, Padding};
use jwt_compact::{Algorithm, AlgorithmSignature};
use ring::{hmac, signature};
use std::borrow::Cow;
use std::fmt;

/// How many keys one token may make us try: bounds the work an attacker can cause with a
/// token that names no key (or a kid shared by many keys).
pub const MAX_KIDLESS_CANDIDATES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The token's `alg` is not in the provider's allow-list.
    AlgorithmNotAllowed,
    /// No key has the token's `kid`.
    UnknownKey,
    /// The token names no `kid` and no key fits its `alg`.
    NoSuitableKey,
    /// Keys with the token's `kid` exist, but none fits its `alg`.
    KeyAlgorithmMismatch,
    BadSignature,
}

impl VerifyError {
    pub fn describe(&self) -> &'static str {
        match self {
            VerifyError::AlgorithmNotAllowed => "token signing algorithm is not allowed",
            VerifyError::UnknownKey => "token key id is unknown",
            VerifyError::NoSuitableKey => "no key fits the token signing algorithm",
            VerifyError::KeyAlgorithmMismatch => "token key does not fit its signing algorithm",
            VerifyError::BadSignature => "token signature is invalid",
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Finds the key and checks the signature; returns the key that verified it.
///
/// `kid` present: only keys with that kid are candidates. Every one of them that fits `alg` is
/// tried (at most [`MAX_KIDLESS_CANDIDATES`]), because providers do publish duplicate kids: the
/// same key id for an RSA and an EC key, or for the old and new key during a rotation. Trying
/// only the first would reject valid tokens; the cap keeps the work bounded.
/// `kid` absent: the first [`MAX_KIDLESS_CANDIDATES`] keys that fit `alg` are tried.
pub fn verify<'k>(
    alg: Alg,
    kid: Option<&str>,
    signing_input: &[u8],
    signature: &[u8],
    keys: &'k KeySet,
    allowed: AlgSet,
) -> Result<&'k Jwk, VerifyError> {
    verify_with(None, alg, kid, signing_input, signature, keys, allowed)
}

/// [`verify`], asking `host` (when given) for the algorithms it verifies.
pub fn verify_with<'k>(
    host: Option<TrustedHost<'_>>,
    alg: Alg,
    kid: Option<&str>,
    signing_input: &[u8],
    signature: &[u8],
    keys: &'k KeySet,
    allowed: AlgSet,
) -> Result<&'k Jwk, VerifyError> {
    if !allowed.contains(alg) {
        return Err(VerifyError::AlgorithmNotAllowed);
    }
    let matches_kid = |key: &&Jwk| kid.is_none_or(|kid| key.kid() == Some(kid));
    if kid.is_some() && !keys.keys().iter().any(|key| matches_kid(&key)) {
        return Err(VerifyError::UnknownKey);
    }
    let mut candidates = keys
        .keys()
        .iter()
        .filter(matches_kid)
        .filter(|key| key.fits(alg))
        .take(MAX_KIDLESS_CANDIDATES)
        .peekable();
    if candidates.peek().is_none() {
        return Err(match kid {
            Some(_) => VerifyError::KeyAlgorithmMismatch,
            None => VerifyError::NoSuitableKey,
        });
    }
    let ring_alg = RingAlg(alg);
    let raw = RawSignature::from_bytes(signature);
    candidates
        .find(|key| {
            host.and_then(|host| ask_host(host, alg, key, signing_input, signature))
                .unwrap_or_else(|| ring_alg.verify_signature(&raw, key, signing_input))
        })
        .ok_or(VerifyError::BadSignature)
}

/// The host's word on one key, `None` when ring must decide: an algorithm the host does not
/// verify, or no answer from it. The key already fits `alg` and passed ring's size and
/// exponent rules when the key set was parsed, so the host never sees a key ring would refuse;
/// and BoringSSL imports every such key (Envoy 1.40 answers a key it cannot import with
/// "invalid", which would refuse tokens ring accepts; tests/integration/test_host_wycheproof.py
/// checks both ends of the exponent rule).
fn ask_host(
    host: TrustedHost<'_>,
    alg: Alg,
    key: &Jwk,
    message: &[u8],
    signature: &[u8],
) -> Option<bool> {
    let hash = HostHash::for_alg(alg)?;
    let spki = key.spki()?;
    let scalar_len = match key.material() {
        KeyMaterial::Rsa(_) => None,
        KeyMaterial::EcP256(_) => Some(32),
        KeyMaterial::EcP384(_) => Some(48),
        _ => return None,
    };
    let der;
    let signature = match scalar_len {
        None => signature,
        Some(scalar_len) => {
            // Malformed (wrong length, zero r or s): refused as ring would, without a call.
            let Some(converted) = host_verify::ecdsa_der(signature, scalar_len) else {
                return Some(false);
            };
            der = converted;
            &der
        }
    };
    match host.verify(hash, spki, message, signature) {
        HostAnswer::Valid => Some(true),
        HostAnswer::Invalid => Some(false),
        HostAnswer::Unavailable => None,
    }
}

/// A verify-only jwt-compact algorithm backed by ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAlg(pub Alg);

/// Tokens are never signed here: this type has no values, so `sign` cannot be called.
#[derive(Debug)]
pub enum NoSigningKey {}

/// A signature as it appeared in the token; its length is checked per algorithm on verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSignature(Vec<u8>);

impl RawSignature {
    pub fn from_bytes(bytes: &[u8]) -> RawSignature {
        RawSignature(bytes.to_vec())
    }
}

impl AlgorithmSignature for RawSignature {
    fn try_from_slice(slice: &[u8]) -> anyhow::Result<Self> {
        Ok(RawSignature::from_bytes(slice))
    }

    fn as_bytes(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.0)
    }
}

impl Algorithm for RingAlg {
    type SigningKey = NoSigningKey;
    type VerifyingKey = Jwk;
    type Signature = RawSignature;

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.0.name())
    }

    fn sign(&self, signing_key: &NoSigningKey, _message: &[u8]) -> RawSignature {
        match *signing_key {}
    }

    fn verify_signature(&self, signature: &RawSignature, key: &Jwk, message: &[u8]) -> bool {
        let alg = self.0;
        if !key.fits(alg) {
            return false;
        }
        let signature = signature.0.as_slice();
        match key.material() {
            // Our own RSA with the key's precomputed Montgomery setup; ring's acceptance.
            KeyMaterial::Rsa(key) => {
                let padding = match alg {
                    Alg::RS256 => Padding::Pkcs1(Hash::Sha256),
                    Alg::RS384 => Padding::Pkcs1(Hash::Sha384),
                    Alg::RS512 => Padding::Pkcs1(Hash::Sha512),
                    Alg::PS256 => Padding::Pss(Hash::Sha256),
                    Alg::PS384 => Padding::Pss(Hash::Sha384),
                    Alg::PS512 => Padding::Pss(Hash::Sha512),
                    _ => return false,
                };
                key.verify(padding, message, signature)
            }
            // JOSE ECDSA signatures are raw r‖s of fixed length (RFC 7518 §3.4); a DER
            // signature has another length and must fail.
            KeyMaterial::EcP256(point) => {
                signature.len() == 64
                    && signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
            }
            KeyMaterial::EcP384(point) => {
                signature.len() == 96
                    && signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                        .verify(message, signature)
                        .is_ok()
            }
            // Our own verifier, with the key prepared at parse: it accepts exactly what ring's
            // ED25519 does (src/ed25519.rs, tests/wycheproof.rs, fuzz target ed25519).
            KeyMaterial::Ed25519(key) => key.verify(message, signature),
            KeyMaterial::Oct(secrets) => secrets
                .for_alg(alg)
                .is_some_and(|secret| hmac::verify(secret, message, signature).is_ok()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::host_verify::testing::FakeHost;
    use crate::keys::testing::*;
    use crate::keys::{parse_jwks, KeySet};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::{json, Value};

    const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9";

    fn key_set(keys: &[Value]) -> KeySet {
        parse_jwks(&jwks(keys), &LIMITS, true).unwrap()
    }

    fn check(
        alg: Alg,
        kid: Option<&str>,
        signature: &[u8],
        keys: &KeySet,
    ) -> Result<usize, VerifyError> {
        verify(alg, kid, MESSAGE, signature, keys, AlgSet::all()).map(|key| {
            keys.keys()
                .iter()
                .position(|k| std::ptr::eq(k, key))
                .unwrap()
        })
    }

    #[test]
    fn every_algorithm_verifies() {
        for alg in Alg::ALL {
            let key = TestKey::for_alg(alg);
            let keys = key_set(&[key.jwk(Some("k1"))]);
            let signature = key.sign(alg, MESSAGE);
            assert_eq!(check(alg, Some("k1"), &signature, &keys), Ok(0), "{alg}");
            assert_eq!(check(alg, None, &signature, &keys), Ok(0), "{alg}");
        }
    }

    #[test]
    fn every_algorithm_rejects_a_flipped_bit() {
        for alg in Alg::ALL {
            let key = TestKey::for_alg(alg);
            let keys = key_set(&[key.jwk(Some("k1"))]);
            let signature = key.sign(alg, MESSAGE);
            for (index, bit) in [
                (0, 0x80),
                (signature.len() / 2, 0x01),
                (signature.len() - 1, 0x01),
            ] {
                let mut flipped = signature.clone();
                flipped[index] ^= bit;
                assert_eq!(
                    check(alg, Some("k1"), &flipped, &keys),
                    Err(VerifyError::BadSignature),
                    "{alg} byte {index}"
                );
            }
            let mut other_message = MESSAGE.to_vec();
            other_message[0] ^= 1;
            assert_eq!(
                verify(alg, None, &other_message, &signature, &keys, AlgSet::all()).unwrap_err(),
                VerifyError::BadSignature,
                "{alg}"
            );
        }
    }

    #[test]
    fn ecdsa_signature_must_have_the_exact_raw_length() {
        for alg in [Alg::ES256, Alg::ES384] {
            let key = TestKey::ec(alg);
            let keys = key_set(&[key.jwk(None)]);
            let signature = key.sign(alg, MESSAGE);
            let longer = [&signature[..], &[0]].concat();
            let shorter = &signature[..signature.len() - 1];
            for wrong in [&longer[..], shorter, &[]] {
                assert_eq!(
                    check(alg, None, wrong, &keys),
                    Err(VerifyError::BadSignature),
                    "{alg} length {}",
                    wrong.len()
                );
            }
        }
    }

    #[test]
    fn der_encoded_ecdsa_signature_is_refused() {
        for alg in [Alg::ES256, Alg::ES384] {
            let key = TestKey::ec(alg);
            let keys = key_set(&[key.jwk(None)]);
            let der = key.sign_der(MESSAGE);
            assert_eq!(der[0], 0x30, "a DER SEQUENCE");
            assert_eq!(
                check(alg, None, &der, &keys),
                Err(VerifyError::BadSignature)
            );
        }
    }

    #[test]
    fn algorithm_outside_the_allow_list_is_refused_before_any_key() {
        let key = TestKey::ec(Alg::ES256);
        let keys = key_set(&[key.jwk(Some("k1"))]);
        let signature = key.sign(Alg::ES256, MESSAGE);
        let allowed: AlgSet = [Alg::RS256, Alg::ES384].into_iter().collect();
        assert_eq!(
            verify(Alg::ES256, Some("k1"), MESSAGE, &signature, &keys, allowed).unwrap_err(),
            VerifyError::AlgorithmNotAllowed
        );
        assert_eq!(
            verify(
                Alg::ES256,
                Some("other"),
                MESSAGE,
                &signature,
                &keys,
                AlgSet::EMPTY
            )
            .unwrap_err(),
            VerifyError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn unknown_kid_is_refused_even_if_another_key_would_verify() {
        let key = TestKey::ed25519();
        let keys = key_set(&[key.jwk(Some("k1"))]);
        let signature = key.sign(Alg::EdDSA, MESSAGE);
        assert_eq!(
            check(Alg::EdDSA, Some("k2"), &signature, &keys),
            Err(VerifyError::UnknownKey)
        );
    }

    #[test]
    fn kid_of_a_key_from_another_family_is_a_mismatch() {
        let keys = key_set(&[TestKey::ec(Alg::ES256).jwk(Some("k1"))]);
        let rsa = TestKey::rsa(RSA_A);
        let signature = rsa.sign(Alg::RS256, MESSAGE);
        assert_eq!(
            check(Alg::RS256, Some("k1"), &signature, &keys),
            Err(VerifyError::KeyAlgorithmMismatch)
        );
    }

    #[test]
    fn key_restricted_to_another_alg_is_not_used() {
        let rsa = TestKey::rsa(RSA_A);
        let mut jwk = rsa.jwk(Some("k1"));
        jwk["alg"] = json!("RS384");
        let keys = key_set(&[jwk]);
        let signature = rsa.sign(Alg::RS256, MESSAGE);
        assert_eq!(
            check(Alg::RS256, Some("k1"), &signature, &keys),
            Err(VerifyError::KeyAlgorithmMismatch)
        );
        assert_eq!(
            check(Alg::RS256, None, &signature, &keys),
            Err(VerifyError::NoSuitableKey)
        );
        // Called directly, the jwt-compact algorithm refuses it too.
        let signature = RawSignature::try_from_slice(&signature).unwrap();
        assert!(!RingAlg(Alg::RS256).verify_signature(&signature, &keys.keys()[0], MESSAGE));
    }

    #[test]
    fn without_kid_the_fitting_keys_are_tried() {
        let (ed_a, ed_b) = (TestKey::ed25519(), TestKey::ed25519());
        let keys = key_set(&[
            ed_a.jwk(Some("a")),
            TestKey::rsa(RSA_A).jwk(None),
            TestKey::ec(Alg::ES256).jwk(None),
            ed_b.jwk(Some("b")),
        ]);
        assert_eq!(
            check(Alg::EdDSA, None, &ed_b.sign(Alg::EdDSA, MESSAGE), &keys),
            Ok(3)
        );
        assert_eq!(
            check(Alg::EdDSA, None, &ed_a.sign(Alg::EdDSA, MESSAGE), &keys),
            Ok(0)
        );
        let other = TestKey::ed25519().sign(Alg::EdDSA, MESSAGE);
        assert_eq!(
            check(Alg::EdDSA, None, &other, &keys),
            Err(VerifyError::BadSignature)
        );
        let es384 = TestKey::ec(Alg::ES384).sign(Alg::ES384, MESSAGE);
        assert_eq!(
            check(Alg::ES384, None, &es384, &keys),
            Err(VerifyError::NoSuitableKey)
        );
    }

    #[test]
    fn duplicate_kid_tries_every_fitting_key() {
        let (rsa_a, rsa_b) = (TestKey::rsa(RSA_A), TestKey::rsa(RSA_B));
        let ec = TestKey::ec(Alg::ES256);
        let keys = key_set(&[
            rsa_a.jwk(Some("dup")),
            ec.jwk(Some("dup")),
            rsa_b.jwk(Some("dup")),
        ]);
        assert_eq!(
            check(
                Alg::PS256,
                Some("dup"),
                &rsa_b.sign(Alg::PS256, MESSAGE),
                &keys
            ),
            Ok(2)
        );
        assert_eq!(
            check(
                Alg::ES256,
                Some("dup"),
                &ec.sign(Alg::ES256, MESSAGE),
                &keys
            ),
            Ok(1)
        );
        assert_eq!(
            check(
                Alg::RS256,
                Some("dup"),
                &rsa_a.sign(Alg::RS256, MESSAGE),
                &keys
            ),
            Ok(0)
        );
    }

    #[test]
    fn at_most_four_candidates_are_tried() {
        let signers: Vec<TestKey> = (0..5).map(|_| TestKey::ed25519()).collect();
        let kidless: Vec<Value> = signers.iter().map(|key| key.jwk(None)).collect();
        let same_kid: Vec<Value> = signers.iter().map(|key| key.jwk(Some("dup"))).collect();
        for (keys, kid) in [(key_set(&kidless), None), (key_set(&same_kid), Some("dup"))] {
            let fourth = signers[3].sign(Alg::EdDSA, MESSAGE);
            let fifth = signers[4].sign(Alg::EdDSA, MESSAGE);
            assert_eq!(check(Alg::EdDSA, kid, &fourth, &keys), Ok(3));
            assert_eq!(
                check(Alg::EdDSA, kid, &fifth, &keys),
                Err(VerifyError::BadSignature)
            );
        }
        assert_eq!(MAX_KIDLESS_CANDIDATES, 4);
    }

    #[test]
    fn rsa_key_with_leading_zero_in_modulus_verifies() {
        let rsa = TestKey::rsa(RSA_A);
        let mut jwk = rsa.jwk(None);
        let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
        jwk["n"] = json!(b64(&[&[0][..], &n].concat()));
        let keys = key_set(&[jwk]);
        let signature = rsa.sign(Alg::RS512, MESSAGE);
        assert_eq!(check(Alg::RS512, None, &signature, &keys), Ok(0));
    }

    #[test]
    fn hmac_with_an_inline_oct_key() {
        let secret = TestKey::oct(b"0123456789abcdef0123456789abcdef");
        let keys = key_set(&[secret.jwk(Some("shared"))]);
        let tag = secret.sign(Alg::HS256, MESSAGE);
        assert_eq!(check(Alg::HS256, Some("shared"), &tag, &keys), Ok(0));
        assert_eq!(
            check(Alg::HS256, Some("shared"), &tag[..31], &keys),
            Err(VerifyError::BadSignature)
        );
        // 32 bytes are too short for HS512 (RFC 7518 §3.2).
        let tag = secret.sign(Alg::HS512, MESSAGE);
        assert_eq!(
            check(Alg::HS512, Some("shared"), &tag, &keys),
            Err(VerifyError::KeyAlgorithmMismatch)
        );
    }

    #[test]
    fn jwt_compact_sees_the_jose_name_and_raw_bytes() {
        assert_eq!(RingAlg(Alg::PS384).name(), "PS384");
        let signature = RawSignature::try_from_slice(&[1, 2, 3]).unwrap();
        assert_eq!(signature.as_bytes().as_ref(), [1, 2, 3]);
    }

    /// A ring-backed fake host that passed the known-answer test, its calls then cleared.
    fn trusted(host: &FakeHost) -> TrustedHost<'_> {
        let trusted = TrustedHost::check(host).unwrap();
        host.clear_calls();
        trusted
    }

    #[test]
    fn host_is_asked_for_rs_and_es_only_with_the_key_and_hash() {
        for alg in Alg::ALL {
            let host = FakeHost::default();
            let trusted = trusted(&host);
            let key = TestKey::for_alg(alg);
            let keys = key_set(&[key.jwk(Some("k1"))]);
            let signature = key.sign(alg, MESSAGE);
            let verified = verify_with(
                Some(trusted),
                alg,
                None,
                MESSAGE,
                &signature,
                &keys,
                AlgSet::all(),
            );
            assert!(verified.is_ok(), "{alg}");
            let calls = host.recorded();
            match HostHash::for_alg(alg) {
                Some(hash) => {
                    assert_eq!(calls.len(), 1, "{alg}");
                    assert_eq!(calls[0].0, hash, "{alg}");
                    assert_eq!(Some(&calls[0].1[..]), keys.keys()[0].spki(), "{alg}");
                }
                None => assert!(calls.is_empty(), "{alg} went to the host"),
            }
        }
    }

    #[test]
    fn through_the_host_every_algorithm_verifies_and_rejects_a_flipped_bit() {
        let host = FakeHost::default();
        let trusted = trusted(&host);
        for alg in Alg::ALL {
            let key = TestKey::for_alg(alg);
            let keys = key_set(&[key.jwk(Some("k1"))]);
            let signature = key.sign(alg, MESSAGE);
            let check = |signature: &[u8]| {
                verify_with(
                    Some(trusted),
                    alg,
                    Some("k1"),
                    MESSAGE,
                    signature,
                    &keys,
                    AlgSet::all(),
                )
                .map(|_| ())
            };
            assert_eq!(check(&signature), Ok(()), "{alg}");
            for index in [0, signature.len() / 2, signature.len() - 1] {
                let mut flipped = signature.clone();
                flipped[index] ^= 1;
                assert_eq!(
                    check(&flipped),
                    Err(VerifyError::BadSignature),
                    "{alg} byte {index}"
                );
            }
        }
        // RS256, RS384, RS512, ES256, ES384: one good and three flipped signatures each.
        assert_eq!(host.calls(), 5 * 4);
    }

    #[test]
    fn host_unavailable_falls_back_to_ring() {
        let host = FakeHost::default();
        let trusted = trusted(&host);
        host.set_answer(Some(HostAnswer::Unavailable));
        for alg in [Alg::RS384, Alg::ES256, Alg::ES384] {
            let key = TestKey::for_alg(alg);
            let keys = key_set(&[key.jwk(None)]);
            let mut signature = key.sign(alg, MESSAGE);
            let check = |signature: &[u8]| {
                verify_with(
                    Some(trusted),
                    alg,
                    None,
                    MESSAGE,
                    signature,
                    &keys,
                    AlgSet::all(),
                )
                .map(|_| ())
            };
            assert_eq!(check(&signature), Ok(()), "{alg}");
            signature[3] ^= 1;
            assert_eq!(check(&signature), Err(VerifyError::BadSignature), "{alg}");
        }
        assert_eq!(host.calls(), 6);
    }

    #[test]
    fn host_answer_is_final_for_its_key() {
        let host = FakeHost::default();
        let trusted = trusted(&host);
        let (rsa_a, rsa_b) = (TestKey::rsa(RSA_A), TestKey::rsa(RSA_B));
        let keys = key_set(&[rsa_a.jwk(Some("dup")), rsa_b.jwk(Some("dup"))]);
        let signature = rsa_a.sign(Alg::RS256, MESSAGE);
        let check = |signature: &[u8]| {
            verify_with(
                Some(trusted),
                Alg::RS256,
                Some("dup"),
                MESSAGE,
                signature,
                &keys,
                AlgSet::all(),
            )
            .map(|key| std::ptr::eq(key, &keys.keys()[1]))
        };
        // "Invalid" for a signature ring would accept: refused, after the next candidate.
        host.set_answer(Some(HostAnswer::Invalid));
        assert_eq!(check(&signature), Err(VerifyError::BadSignature));
        assert_eq!(host.calls(), 2);
        // "Valid" is taken as it is: the first candidate that the host accepts verifies.
        host.set_answer(Some(HostAnswer::Valid));
        assert_eq!(check(&[0; 256]), Ok(false));
        assert_eq!(host.calls(), 3);
        // The host answering for real: key b refuses key a's signature and the reverse.
        host.set_answer(None);
        assert_eq!(check(&rsa_b.sign(Alg::RS256, MESSAGE)), Ok(true));
        assert_eq!(host.calls(), 5);
    }

    #[test]
    fn malformed_ecdsa_signature_is_refused_without_asking_the_host() {
        let host = FakeHost::default();
        let trusted = trusted(&host);
        host.set_answer(Some(HostAnswer::Valid));
        for alg in [Alg::ES256, Alg::ES384] {
            let key = TestKey::ec(alg);
            let keys = key_set(&[key.jwk(None)]);
            let signature = key.sign(alg, MESSAGE);
            let half = signature.len() / 2;
            let mut zero_r = signature.clone();
            zero_r[..half].fill(0);
            let mut zero_s = signature.clone();
            zero_s[half..].fill(0);
            let der = key.sign_der(MESSAGE);
            for wrong in [&zero_r[..], &zero_s, &signature[1..], &der, &[]] {
                assert_eq!(
                    verify_with(
                        Some(trusted),
                        alg,
                        None,
                        MESSAGE,
                        wrong,
                        &keys,
                        AlgSet::all()
                    )
                    .unwrap_err(),
                    VerifyError::BadSignature,
                    "{alg} length {}",
                    wrong.len()
                );
            }
        }
        assert_eq!(host.calls(), 0);
    }

    #[test]
    fn host_that_failed_the_self_test_is_never_asked() {
        // A host that calls everything valid fails the known-answer test, so it is not used:
        // a forged signature goes to ring and is refused.
        let host = FakeHost::answering(HostAnswer::Valid);
        let trusted = TrustedHost::check(&host).ok();
        assert!(trusted.is_none());
        let asked_by_self_test = host.calls();
        let key = TestKey::rsa(RSA_A);
        let keys = key_set(&[key.jwk(None)]);
        assert_eq!(
            verify_with(
                trusted,
                Alg::RS256,
                None,
                MESSAGE,
                &[0; 256],
                &keys,
                AlgSet::all()
            )
            .unwrap_err(),
            VerifyError::BadSignature
        );
        assert_eq!(host.calls(), asked_by_self_test);
    }

    #[test]
    fn error_descriptions_name_the_cause() {
        assert_eq!(
            VerifyError::BadSignature.describe(),
            "token signature is invalid"
        );
        assert_eq!(
            VerifyError::UnknownKey.to_string(),
            "token key id is unknown"
        );
    }
}
