//! Sealed cookie values: AES-256-GCM (ring) under a key ring from the VM's environment. The
//! first key seals, every key opens, so keys rotate with a rolling restart and nobody is logged
//! out. The key id, the host and the cookie name are bound as associated data (a cookie cut
//! from another host or renamed does not open), and the expiry travels inside the ciphertext
//! (a client cannot extend it).
//!
//! Format: `<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`.

use crate::reason::LoginReason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::digest;

/// Bytes of one cookie key.
pub const KEY_LEN: usize = 32;
/// What `seal` asks of the caller's randomness: the GCM nonce.
pub const SEAL_RANDOM_LEN: usize = NONCE_LEN;
const EXPIRY_LEN: usize = 8;
const TAG_LEN: usize = 16;
/// Domain separation: a value sealed for another purpose never opens here.
const AAD_LABEL: &[u8] = b"mesh-oauth login v1";

/// One cookie key with its public id: a short digest of the key, so the id names the key
/// without revealing it and two deployments that share a key agree on its id.
pub struct SealKey {
    id: String,
    key: LessSafeKey,
}

impl SealKey {
    pub fn new(bytes: &[u8; KEY_LEN]) -> Option<SealKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        let mut labelled = b"mesh-oauth cookie key id\0".to_vec();
        labelled.extend_from_slice(bytes);
        let digest = digest::digest(&digest::SHA256, &labelled);
        Some(SealKey {
            id: URL_SAFE_NO_PAD.encode(&digest.as_ref()[..6]),
            key: LessSafeKey::new(unbound),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// The cookie keys, the sealing one first. Never `Debug`: it holds key material.
pub struct KeyRing {
    keys: Vec<SealKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Not `<id>.<base64url>`, or too short to hold a nonce, expiry and tag.
    Malformed,
    /// No key of the ring has this id: a retired key, or a forgery.
    UnknownKey,
    /// The tag does not verify: tampered, truncated, cut from another host or cookie.
    Tampered,
    Expired,
}

impl OpenError {
    pub fn reason(self) -> LoginReason {
        match self {
            OpenError::Malformed => LoginReason::Malformed,
            OpenError::UnknownKey => LoginReason::UnknownKey,
            OpenError::Tampered => LoginReason::Tampered,
            OpenError::Expired => LoginReason::Expired,
        }
    }
}

/// What a sealed value is bound to besides its key.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub host: &'a str,
    pub cookie: &'a str,
}

impl KeyRing {
    /// `None` when `keys` is empty: a ring must be able to seal.
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Option<KeyRing> {
        let keys: Option<Vec<SealKey>> = keys.iter().map(SealKey::new).collect();
        let keys = keys?;
        (!keys.is_empty()).then_some(KeyRing { keys })
    }

    pub fn sealing_key_id(&self) -> &str {
        self.keys.first().map_or("", SealKey::id)
    }

    /// Seals `plaintext` until `expires_at` (Unix seconds). `random` supplies the nonce.
    pub fn seal(
        &self,
        plaintext: &[u8],
        expires_at: u64,
        binding: Binding<'_>,
        random: [u8; SEAL_RANDOM_LEN],
    ) -> String {
        let Some(key) = self.keys.first() else {
            return String::new();
        };
        let mut in_out = Vec::with_capacity(EXPIRY_LEN + plaintext.len() + TAG_LEN);
        in_out.extend_from_slice(&expires_at.to_be_bytes());
        in_out.extend_from_slice(plaintext);
        let aad = associated_data(&key.id, binding);
        let nonce = Nonce::assume_unique_for_key(random);
        // Fails only for inputs of gigabytes; an empty value then never opens.
        if key
            .key
            .seal_in_place_append_tag(nonce, Aad::from(&aad), &mut in_out)
            .is_err()
        {
            return String::new();
        }
        let mut sealed = random.to_vec();
        sealed.extend_from_slice(&in_out);
        format!("{}.{}", key.id, URL_SAFE_NO_PAD.encode(sealed))
    }

    /// The ids of the ring's keys, the sealing key first (ids name keys, never reveal them).
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(SealKey::id)
    }

    /// Opens a sealed value; checks the expiry against `now` (Unix seconds).
    pub fn open(&self, sealed: &str, binding: Binding<'_>, now: u64) -> Result<Vec<u8>, OpenError> {
        let opened = self.open_at_any_time(sealed, binding)?;
        if now >= opened.expires_at {
            return Err(OpenError::Expired);
        }
        Ok(opened.plaintext)
    }

    /// Opens a sealed value whatever its expiry, and says which key opened it and until
    /// when it lives: what `explain` reports. The filter uses [`KeyRing::open`].
    pub fn open_at_any_time(
        &self,
        sealed: &str,
        binding: Binding<'_>,
    ) -> Result<Opened, OpenError> {
        let (id, body) = sealed.split_once('.').ok_or(OpenError::Malformed)?;
        let mut bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| OpenError::Malformed)?;
        if bytes.len() < OVERHEAD_LEN {
            return Err(OpenError::Malformed);
        }
        let (index, key) = self
            .keys
            .iter()
            .enumerate()
            .find(|(_, key)| key.id == id)
            .ok_or(OpenError::UnknownKey)?;
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let aad = associated_data(&key.id, binding);
        let opened = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| OpenError::Tampered)?;
        let (expiry, plaintext) = opened.split_at(EXPIRY_LEN);
        let mut expiry_bytes = [0u8; EXPIRY_LEN];
        expiry_bytes.copy_from_slice(expiry);
        Ok(Opened {
            key_index: index,
            expires_at: u64::from_be_bytes(expiry_bytes),
            plaintext: plaintext.to_vec(),
        })
    }
}

/// A sealed value that opened. Never `Debug`: the plaintext is a secret.
pub struct Opened {
    /// The key of the ring that opened it: 0 is the sealing key.
    pub key_index: usize,
    /// Unix seconds.
    pub expires_at: u64,
    pub plaintext: Vec<u8>,
}

/// Nonce, expiry and tag: what sealing adds to a value before base64url.
pub const OVERHEAD_LEN: usize = NONCE_LEN + EXPIRY_LEN + TAG_LEN;

/// Length-prefixed, so no two (id, host, cookie) triples give the same bytes.
fn associated_data(key_id: &str, binding: Binding<'_>) -> Vec<u8> {
    let mut aad = AAD_LABEL.to_vec();
    for part in [key_id, &binding.host.to_ascii_lowercase(), binding.cookie] {
        aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOST: &str = "app.example.com";
    const COOKIE: &str = "__Host-mesh-session";
    const NOW: u64 = 1_700_000_000;

    fn binding() -> Binding<'static> {
        Binding {
            host: HOST,
            cookie: COOKIE,
        }
    }

    fn ring(keys: &[u8]) -> KeyRing {
        let keys: Vec<[u8; KEY_LEN]> = keys.iter().map(|b| [*b; KEY_LEN]).collect();
        KeyRing::new(&keys).unwrap()
    }

    fn sealed(ring: &KeyRing) -> String {
        ring.seal(b"the session", NOW + 60, binding(), [7; SEAL_RANDOM_LEN])
    }

    #[test]
    fn sealed_value_opens_before_its_expiry_only() {
        let ring = ring(&[1]);
        let value = sealed(&ring);
        assert!(!value.contains("the session"));
        assert_eq!(
            ring.open(&value, binding(), NOW),
            Ok(b"the session".to_vec())
        );
        assert_eq!(ring.open(&value, binding(), NOW + 59).map(|_| ()), Ok(()));
        assert_eq!(
            ring.open(&value, binding(), NOW + 60),
            Err(OpenError::Expired)
        );
    }

    #[test]
    fn every_key_opens_and_the_first_seals() {
        let old = ring(&[1]);
        let rotated = ring(&[2, 1]);
        let from_old = sealed(&old);
        assert_eq!(rotated.open(&from_old, binding(), NOW).map(|_| ()), Ok(()));
        let from_new = sealed(&rotated);
        assert!(from_new.starts_with(rotated.sealing_key_id()));
        assert_ne!(rotated.sealing_key_id(), old.sealing_key_id());
        // The old key alone does not know the new one: the retired-key case, the other way.
        assert_eq!(
            old.open(&from_new, binding(), NOW),
            Err(OpenError::UnknownKey)
        );
        // Once the old key is retired, its cookies no longer open.
        assert_eq!(
            ring(&[2]).open(&from_old, binding(), NOW),
            Err(OpenError::UnknownKey)
        );
    }

    #[test]
    fn a_flipped_bit_anywhere_is_refused() {
        let ring = ring(&[1]);
        let value = sealed(&ring);
        let (id, body) = value.split_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        for index in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[index] ^= 1;
            let tampered = format!("{id}.{}", URL_SAFE_NO_PAD.encode(&flipped));
            assert_eq!(
                ring.open(&tampered, binding(), NOW),
                Err(OpenError::Tampered),
                "byte {index}"
            );
        }
    }

    #[test]
    fn truncated_or_malformed_values_are_refused() {
        let ring = ring(&[1]);
        let value = sealed(&ring);
        let (id, body) = value.split_once('.').unwrap();
        let bytes = URL_SAFE_NO_PAD.decode(body).unwrap();
        // "the session" is 11 bytes: cut further, not even the overhead is left.
        for cut in 1..=12 {
            let truncated = format!(
                "{id}.{}",
                URL_SAFE_NO_PAD.encode(&bytes[..bytes.len() - cut])
            );
            let expected = if cut <= 11 {
                OpenError::Tampered
            } else {
                OpenError::Malformed
            };
            assert_eq!(
                ring.open(&truncated, binding(), NOW),
                Err(expected),
                "cut {cut}"
            );
        }
        for bad in ["", "abc", ".", "x.", &value.replace('.', "")] {
            assert_eq!(
                ring.open(bad, binding(), NOW),
                Err(OpenError::Malformed),
                "{bad}"
            );
        }
        let id = ring.sealing_key_id();
        assert_eq!(
            ring.open(&format!("{id}.AAAA"), binding(), NOW),
            Err(OpenError::Malformed)
        );
        assert_eq!(
            ring.open(&format!("{id}.!!"), binding(), NOW),
            Err(OpenError::Malformed)
        );
    }

    #[test]
    fn another_host_or_cookie_name_does_not_open() {
        let ring = ring(&[1]);
        let value = sealed(&ring);
        let other_host = Binding {
            host: "evil.example.com",
            cookie: COOKIE,
        };
        let other_cookie = Binding {
            host: HOST,
            cookie: "__Host-mesh-tx",
        };
        assert_eq!(ring.open(&value, other_host, NOW), Err(OpenError::Tampered));
        assert_eq!(
            ring.open(&value, other_cookie, NOW),
            Err(OpenError::Tampered)
        );
        // The host compares case-insensitively, as `:authority` does.
        let upper = Binding {
            host: "APP.example.COM",
            cookie: COOKIE,
        };
        assert_eq!(ring.open(&value, upper, NOW).map(|_| ()), Ok(()));
    }

    #[test]
    fn another_key_id_in_front_does_not_open() {
        let ring = ring(&[2, 1]);
        let value = ring.seal(b"x", NOW + 60, binding(), [0; SEAL_RANDOM_LEN]);
        let old_id = ring.keys[1].id().to_owned();
        let (_, body) = value.split_once('.').unwrap();
        assert_eq!(
            ring.open(&format!("{old_id}.{body}"), binding(), NOW),
            Err(OpenError::Tampered)
        );
    }

    #[test]
    fn an_expired_value_still_says_which_key_sealed_it_and_when_it_ended() {
        let ring = ring(&[2, 1]);
        let old = ring_of_one_key_sealed_by(&[1]);
        let opened = ring.open_at_any_time(&old, binding()).unwrap();
        assert_eq!((opened.key_index, opened.expires_at), (1, NOW + 60));
        assert_eq!(opened.plaintext, b"the session");
        assert_eq!(
            ring.open(&old, binding(), NOW + 60),
            Err(OpenError::Expired)
        );
        let ids: Vec<&str> = ring.key_ids().collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ring.sealing_key_id());
        assert!(old.starts_with(ids[1]));
    }

    fn ring_of_one_key_sealed_by(keys: &[u8]) -> String {
        sealed(&ring(keys))
    }

    #[test]
    fn an_empty_ring_is_refused() {
        assert!(KeyRing::new(&[]).is_none());
    }
}
