//! One login in flight: the PKCE verifier (RFC 7636, S256), the `nonce` (OIDC Core §3.1.2.1),
//! the `state` (RFC 9700 §4.7.1: 256 random bits, opaque) and the return path, sealed into a
//! per-flow cookie that lives 10 minutes. The cookie's name is derived from its `state`, so
//! several tabs logging in at once each find their own, and the callback finds it without
//! trying every one.

use super::cookies::{self, TRANSACTION_PREFIX};
use super::seal::{Binding, KeyRing, OpenError, SEAL_RANDOM_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::digest;
use serde::{Deserialize, Serialize};

/// How long a browser has to come back from the OP.
pub const TRANSACTION_SECONDS: u64 = 600;
/// Transaction cookies one browser may hold; starting another drops the oldest.
pub const MAX_TRANSACTIONS: usize = 3;
/// Random bytes for the state, the nonce and the verifier, each.
const SECRET_LEN: usize = 32;
/// What [`Transaction::start`] asks of the caller's randomness.
pub const TRANSACTION_RANDOM_LEN: usize = 3 * SECRET_LEN + SEAL_RANDOM_LEN;

/// Never `Debug`: every field but the return path is a secret of the flow.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct Transaction {
    #[serde(rename = "s")]
    pub state: String,
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "v")]
    pub verifier: String,
    #[serde(rename = "r")]
    pub return_path: String,
    /// When the login started (Unix seconds): the oldest goes first when there are too many.
    #[serde(rename = "t")]
    pub started_at: u64,
}

impl Transaction {
    /// A new transaction from `random` (see [`TRANSACTION_RANDOM_LEN`]); returns it with its
    /// cookie name and sealed value.
    pub fn start(
        return_path: String,
        now: u64,
        random: &[u8; TRANSACTION_RANDOM_LEN],
        keys: &KeyRing,
        host: &str,
    ) -> (Transaction, String, String) {
        let (secrets, seal_random) = random.split_at(3 * SECRET_LEN);
        let encode = |index: usize| {
            URL_SAFE_NO_PAD.encode(&secrets[index * SECRET_LEN..(index + 1) * SECRET_LEN])
        };
        let transaction = Transaction {
            state: encode(0),
            nonce: encode(1),
            verifier: encode(2),
            return_path,
            started_at: now,
        };
        let name = cookie_name(&transaction.state);
        let mut nonce = [0u8; SEAL_RANDOM_LEN];
        nonce.copy_from_slice(seal_random);
        let plaintext = serde_json::to_vec(&transaction).unwrap_or_default();
        let sealed = keys.seal(
            &plaintext,
            now.saturating_add(TRANSACTION_SECONDS),
            Binding {
                host,
                cookie: &name,
            },
            nonce,
        );
        (transaction, name, sealed)
    }

    /// RFC 7636 §4.2: `BASE64URL(SHA256(verifier))`.
    pub fn code_challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, self.verifier.as_bytes()))
    }

    /// Opens a transaction cookie.
    pub fn open(
        name: &str,
        sealed: &str,
        keys: &KeyRing,
        host: &str,
        now: u64,
    ) -> Result<Transaction, OpenError> {
        let plaintext = keys.open(sealed, Binding { host, cookie: name }, now)?;
        serde_json::from_slice(&plaintext).map_err(|_| OpenError::Malformed)
    }
}

/// The transaction cookie that belongs to `state`: a digest, so the name reveals nothing.
pub fn cookie_name(state: &str) -> String {
    let digest = digest::digest(&digest::SHA256, state.as_bytes());
    format!(
        "{TRANSACTION_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12])
    )
}

/// Constant-time equality for secrets of the flow (`state`).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The transaction cookies to clear before a new one is set: the ones that no longer open
/// (expired, retired key, tampered) and, past [`MAX_TRANSACTIONS`] - 1 live ones, the oldest.
pub fn stale_transactions(
    cookie_header: Option<&str>,
    keys: &KeyRing,
    host: &str,
    now: u64,
) -> Vec<String> {
    let mut live: Vec<(u64, String)> = Vec::new();
    let mut stale: Vec<String> = Vec::new();
    for (name, value) in cookies::transactions(cookie_header) {
        match Transaction::open(name, value, keys, host, now) {
            Ok(transaction) => live.push((transaction.started_at, name.to_owned())),
            Err(_) => stale.push(name.to_owned()),
        }
    }
    live.sort();
    let excess = live.len().saturating_sub(MAX_TRANSACTIONS - 1);
    stale.extend(live.into_iter().take(excess).map(|(_, name)| name));
    stale.sort();
    stale.dedup();
    stale
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOST: &str = "app.example.com";
    const NOW: u64 = 1_700_000_000;

    fn keys() -> KeyRing {
        KeyRing::new(&[[9; 32]]).unwrap()
    }

    fn random(seed: u8) -> [u8; TRANSACTION_RANDOM_LEN] {
        let mut bytes = [0u8; TRANSACTION_RANDOM_LEN];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = seed.wrapping_mul(31).wrapping_add(index as u8);
        }
        bytes
    }

    #[test]
    fn secrets_are_long_enough_and_distinct() {
        let (tx, name, sealed) = Transaction::start("/x".into(), NOW, &random(1), &keys(), HOST);
        // RFC 7636 §4.1: 43 to 128 characters of the unreserved set.
        assert_eq!(tx.verifier.len(), 43);
        assert!(tx
            .verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        // 256 bits of state and nonce.
        assert_eq!(URL_SAFE_NO_PAD.decode(&tx.state).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&tx.nonce).unwrap().len(), 32);
        assert!(tx.state != tx.nonce && tx.nonce != tx.verifier);
        assert_eq!(name, cookie_name(&tx.state));
        for secret in [&tx.state, &tx.nonce, &tx.verifier] {
            assert!(!sealed.contains(secret.as_str()));
            assert!(!name.contains(secret.as_str()));
        }
    }

    #[test]
    fn challenge_is_s256_of_the_verifier() {
        // The answer computed independently: `printf %s <verifier> | openssl dgst -sha256
        // -binary | base64url`.
        let tx = Transaction {
            state: String::new(),
            nonce: String::new(),
            verifier: "dBjftJeZ4CVP-mJ0kzzxwxtDHt0mLZNS5TWMgTQ1d9E".into(),
            return_path: "/".into(),
            started_at: 0,
        };
        assert_eq!(
            tx.code_challenge(),
            "x67pJA1ePVSYq5guQH9iYjZVRTbLQaOVH1X9KcmAAI0"
        );
    }

    #[test]
    fn a_transaction_opens_under_its_own_name_for_ten_minutes() {
        let keys = keys();
        let (tx, name, sealed) = Transaction::start("/x".into(), NOW, &random(1), &keys, HOST);
        let opened = Transaction::open(&name, &sealed, &keys, HOST, NOW + 599).unwrap();
        assert!(opened == tx);
        assert_eq!(
            Transaction::open(&name, &sealed, &keys, HOST, NOW + 600).err(),
            Some(OpenError::Expired)
        );
        let (other, other_name, _) = Transaction::start("/".into(), NOW, &random(2), &keys, HOST);
        assert_ne!(other.state, tx.state);
        assert_eq!(
            Transaction::open(&other_name, &sealed, &keys, HOST, NOW).err(),
            Some(OpenError::Tampered)
        );
        assert_eq!(
            Transaction::open(&name, &sealed, &keys, "other.example.com", NOW).err(),
            Some(OpenError::Tampered)
        );
    }

    #[test]
    fn old_transactions_are_bounded_and_dead_ones_cleared() {
        let keys = keys();
        let mut header = Vec::new();
        let mut names = Vec::new();
        for seed in 0..4u8 {
            let (_, name, sealed) = Transaction::start(
                "/".into(),
                NOW + u64::from(seed),
                &random(seed),
                &keys,
                HOST,
            );
            header.push(format!("{name}={sealed}"));
            names.push(name);
        }
        header.push("__Host-mesh-tx.junk=abc".to_owned());
        let header = header.join("; ");
        let mut expected = vec![
            names[0].clone(),
            names[1].clone(),
            "__Host-mesh-tx.junk".to_owned(),
        ];
        expected.sort();
        // Two live ones stay, so with the new one there are three.
        assert_eq!(
            stale_transactions(Some(&header), &keys, HOST, NOW + 5),
            expected
        );
        assert!(stale_transactions(None, &keys, HOST, NOW).is_empty());
        // After ten minutes, all four are dead.
        assert_eq!(
            stale_transactions(Some(&header), &keys, HOST, NOW + 700).len(),
            5
        );
    }

    #[test]
    fn secret_comparison() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }
}
