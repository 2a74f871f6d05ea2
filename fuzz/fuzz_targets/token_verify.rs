//! A token from the wire: strict parsing, then signature verification with a fixed key set,
//! then the claim checks, as `authorize` runs them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::alg::AlgSet;
use mesh_oauth::token::{self, TokenLimits};
use mesh_oauth::{claims, verify};
use mesh_oauth_fuzz::{config, key_set, NOW};

fuzz_target!(|data: &[u8]| {
    // Header values reach the parser as text.
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let config = config();
    let Ok(jws) = token::parse(raw, &TokenLimits::from(&config.limits)) else {
        return;
    };
    assert!(
        raw.as_bytes().starts_with(jws.signing_input),
        "the signing input is the token's own prefix"
    );
    let verified = verify::verify(
        jws.header.alg,
        jws.header.kid.as_deref(),
        jws.signing_input,
        &jws.signature,
        key_set(),
        AlgSet::all(),
    );
    if let Ok(key) = verified {
        assert!(
            key.fits(jws.header.alg),
            "verified by a key that does not fit"
        );
        if let Some(kid) = &jws.header.kid {
            assert_eq!(key.kid(), Some(&**kid), "verified by another kid");
        }
    }
    if let Some(provider) = config.providers.first() {
        let _ = claims::check(&jws.claims, provider, NOW);
    }
});
