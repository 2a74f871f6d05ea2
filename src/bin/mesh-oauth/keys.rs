//! The keys `explain` verifies with: a fixed set per provider, from the configuration's inline
//! `jwks` or from `--jwks` (a file, or a URL fetched here the way the filter would fetch it).

use mesh_oauth::authorize::{KeyLookup, KeyState};
use mesh_oauth::keys::KeySet;
use mesh_oauth::sender::dpop::Proof;
use mesh_oauth::sender::replay::Admission;
use std::time::Duration;

/// Keys as one request sees them, per provider.
pub struct FixedKeys(pub Vec<Fixed>);

pub enum Fixed {
    Ready(KeySet),
    /// None given: what the filter finds before its first fetch has answered.
    Loading,
    /// The fetch failed: what the filter finds after a failed fetch, until one succeeds.
    Failed,
}

impl KeyLookup for FixedKeys {
    fn keys(&self, provider: usize, _now_ms: u64) -> KeyState<'_> {
        match self.0.get(provider) {
            Some(Fixed::Ready(set)) => KeyState::Ready(set),
            Some(Fixed::Failed) => KeyState::Unavailable {
                retry_after_seconds: 1,
            },
            _ => KeyState::Loading,
        }
    }

    /// The keys given are what a fetch would bring: a refetch would change nothing.
    fn refetch_possible(&self, _provider: usize, _now_ms: u64) -> bool {
        false
    }

    fn key_version(&self, _provider: usize) -> u64 {
        1
    }

    /// explain sees one request: whether a proof was used before is the sidecar's memory.
    fn admit_proof(&self, _proof: &Proof, _now_s: u64) -> Admission {
        Admission::Fresh
    }
}

/// Whether `--jwks` names a URL to fetch rather than a file.
pub fn is_url(source: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        source
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    })
}

/// Reads `--jwks`: an `http(s)://` URL is fetched, anything else is a file.
pub fn read_jwks(source: &str, max_bytes: usize, timeout_ms: u64) -> Result<Vec<u8>, String> {
    if !is_url(source) {
        return std::fs::read(source).map_err(|e| format!("--jwks {source}: cannot read: {e}"));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(timeout_ms)))
        .build()
        .into();
    let mut response = agent
        .get(source)
        .call()
        .map_err(|e| format!("--jwks {source}: fetch failed: {e}"))?;
    // The filter refuses a key document over `limits.maxJwksBytes` too.
    response
        .body_mut()
        .with_config()
        .limit(u64::try_from(max_bytes).unwrap_or(u64::MAX))
        .read_to_vec()
        .map_err(|e| format!("--jwks {source}: reading the answer failed: {e}"))
}
