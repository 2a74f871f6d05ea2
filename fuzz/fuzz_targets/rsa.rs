//! mesh-oauth's own RSA (`mesh_oauth::rsa`) against ring, the reference: for every key and
//! signature both must give the same answer. Three kinds of input: a signature made by a fixed
//! key over the fuzzer's message (kept, altered at the fuzzer's bytes, or cut short), so that
//! valid signatures and near misses are reached; any signature under that key; any modulus and
//! exponent (a key we refuse must be one ring refuses: it must then verify nothing).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mesh_oauth::rsa::{Hash, Padding, PublicKey};
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use std::sync::OnceLock;

const PKCS8: &[u8] = include_bytes!("../../tests/fixtures/rsa2048-a.pk8.der");

#[derive(Arbitrary, Debug)]
enum Case<'a> {
    Signed {
        message: &'a [u8],
        /// (byte index, xor mask) applied to the signature.
        alterations: Vec<(u16, u8)>,
        cut: Option<u16>,
    },
    FixedKey {
        message: &'a [u8],
        signature: &'a [u8],
    },
    AnyKey {
        n: &'a [u8],
        e: &'a [u8],
        message: &'a [u8],
        signature: &'a [u8],
    },
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    padding: u8,
    case: Case<'a>,
}

fn key_pair() -> &'static RsaKeyPair {
    static PAIR: OnceLock<RsaKeyPair> = OnceLock::new();
    PAIR.get_or_init(|| RsaKeyPair::from_pkcs8(PKCS8).expect("fixture key"))
}

type Ring = (
    &'static signature::RsaParameters,
    &'static dyn signature::RsaEncoding,
);

fn padding(choice: u8) -> (Padding, Ring) {
    match choice % 6 {
        0 => (
            Padding::Pkcs1(Hash::Sha256),
            (
                &signature::RSA_PKCS1_2048_8192_SHA256,
                &signature::RSA_PKCS1_SHA256,
            ),
        ),
        1 => (
            Padding::Pkcs1(Hash::Sha384),
            (
                &signature::RSA_PKCS1_2048_8192_SHA384,
                &signature::RSA_PKCS1_SHA384,
            ),
        ),
        2 => (
            Padding::Pkcs1(Hash::Sha512),
            (
                &signature::RSA_PKCS1_2048_8192_SHA512,
                &signature::RSA_PKCS1_SHA512,
            ),
        ),
        3 => (
            Padding::Pss(Hash::Sha256),
            (
                &signature::RSA_PSS_2048_8192_SHA256,
                &signature::RSA_PSS_SHA256,
            ),
        ),
        4 => (
            Padding::Pss(Hash::Sha384),
            (
                &signature::RSA_PSS_2048_8192_SHA384,
                &signature::RSA_PSS_SHA384,
            ),
        ),
        _ => (
            Padding::Pss(Hash::Sha512),
            (
                &signature::RSA_PSS_2048_8192_SHA512,
                &signature::RSA_PSS_SHA512,
            ),
        ),
    }
}

/// Both verifiers on one key and signature: the same answer.
fn compare(n: &[u8], e: &[u8], choice: u8, message: &[u8], signature: &[u8]) -> Option<bool> {
    let (ours, (params, _)) = padding(choice);
    let ring = |n: &[u8], e: &[u8]| {
        RsaPublicKeyComponents { n, e }
            .verify(params, message, signature)
            .is_ok()
    };
    match PublicKey::new(n, e) {
        Some(key) => {
            // Leading zeros are ours to strip (JWKs carry them; ring refuses them), so ring
            // gets the key as we keep it.
            let verified = key.verify(ours, message, signature);
            assert_eq!(
                verified,
                ring(key.n(), key.e()),
                "ours and ring differ ({ours:?})"
            );
            Some(verified)
        }
        None => {
            assert!(!ring(n, e), "a key we refuse verified with ring");
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary(&mut arbitrary::Unstructured::new(data)) else {
        return;
    };
    let pair = key_pair();
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
    match input.case {
        Case::Signed {
            message,
            alterations,
            cut,
        } => {
            let (_, (_, encoding)) = padding(input.padding);
            let mut signature = vec![0; pair.public().modulus_len()];
            pair.sign(encoding, &SystemRandom::new(), message, &mut signature)
                .expect("signing");
            let untouched = alterations.iter().all(|&(_, mask)| mask == 0) && cut.is_none();
            for (index, mask) in alterations {
                let len = signature.len();
                signature[usize::from(index) % len] ^= mask;
            }
            if let Some(cut) = cut {
                signature.truncate(usize::from(cut) % signature.len());
            }
            let verified = compare(&public.n, &public.e, input.padding, message, &signature);
            if untouched {
                assert_eq!(verified, Some(true), "a fresh signature did not verify");
            }
        }
        Case::FixedKey { message, signature } => {
            compare(&public.n, &public.e, input.padding, message, signature);
        }
        Case::AnyKey {
            n,
            e,
            message,
            signature,
        } => {
            compare(n, e, input.padding, message, signature);
        }
    }
});
