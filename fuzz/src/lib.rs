//! What the fuzz targets share: the fixed key set and configuration that `make_seeds.py`
//! wrote (the seed tokens are signed by these keys), and the time they are checked at.

use mesh_oauth::compile::{self, Compiled};
use mesh_oauth::config;
use mesh_oauth::keys::{parse_jwks, JwksLimits, KeySet};
use std::sync::OnceLock;

/// The seed tokens are valid at this time (2023-11-14) and expire in 2100.
pub const NOW: u64 = 1_700_000_000;

pub const ISSUER: &str = "https://idp.fuzz.test";

/// One RSA-2048, P-256, P-384, Ed25519 and HMAC key.
pub fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let limits = JwksLimits::from(&config::Limits::default());
        parse_jwks(include_bytes!("../fixtures/jwks.json"), &limits, true)
            .expect("fixtures/jwks.json parses")
    })
}

/// One provider (the key set inline, tokens in `Authorization: Bearer` or `x-jwt`, `sub` to
/// `x-sub`, payload to `x-jwt-payload`) and rules for `/public/*` (anonymous), `/admin/*`
/// (scope and claim), `*.png` (deny) and `*.example.com` (requiresAny); the rest authenticated.
pub fn config() -> &'static Compiled {
    static CONFIG: OnceLock<Compiled> = OnceLock::new();
    CONFIG.get_or_init(|| {
        compile::configure(include_str!("../fixtures/config.json"))
            .expect("fixtures/config.json configures")
    })
}
