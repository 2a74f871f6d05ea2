//! Differential: the module's own Ed25519 verifier (`mesh_oauth::ed25519`) against ring's
//! `ED25519`, which it replaces and must agree with on every input.
//!
//! First byte even: a key from the next 32 bytes as a seed signs a message (its length is the
//! first byte / 2), and the rest edits the signature in pairs (position, value): positions below
//! 64 flip bits, 64..127 set a byte, 128 adds the group order L to S, 129 truncates, 130 appends.
//! First byte odd: the next 32 bytes are the public key as published (usually no point; the
//! fuzzer finds the ones that are), then a 64-byte signature and the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::ed25519::VerifyingKey;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

/// L, little-endian.
const ORDER: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn edit(signature: &mut Vec<u8>, at: u8, value: u8) {
    match at {
        0..=63 => {
            if let Some(byte) = signature.get_mut(usize::from(at)) {
                *byte ^= value;
            }
        }
        64..=127 => {
            if let Some(byte) = signature.get_mut(usize::from(at - 64)) {
                *byte = value;
            }
        }
        128 if signature.len() == 64 => {
            let mut carry = 0u16;
            for (byte, order) in signature[32..].iter_mut().zip(ORDER) {
                let sum = u16::from(*byte) + u16::from(order) + carry;
                *byte = sum as u8;
                carry = sum >> 8;
            }
        }
        129 => signature.truncate(usize::from(value) % 65),
        130 => signature.push(value),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((key_bytes, rest)) = rest.split_first_chunk::<32>() else {
        return;
    };
    let (public_key, message, signature) = if mode & 1 == 0 {
        let pair = Ed25519KeyPair::from_seed_unchecked(key_bytes).expect("any 32 bytes are a seed");
        let (message, edits) = rest.split_at(usize::from(mode / 2).min(rest.len()));
        let mut signature = pair.sign(message).as_ref().to_vec();
        for pair in edits.chunks_exact(2) {
            edit(&mut signature, pair[0], pair[1]);
        }
        let public_key: [u8; 32] = pair.public_key().as_ref().try_into().expect("32 bytes");
        (public_key, message, signature)
    } else {
        let (signature, message) = rest.split_at(64.min(rest.len()));
        (*key_bytes, message, signature.to_vec())
    };
    let ring = signature::UnparsedPublicKey::new(&signature::ED25519, &public_key)
        .verify(message, &signature)
        .is_ok();
    let ours = VerifyingKey::new(public_key).verify(message, &signature);
    assert_eq!(
        ours, ring,
        "key {public_key:02x?}, message {message:02x?}, signature {signature:02x?}"
    );
});
