//! A JWKS document as a key server could send it (and as an inline `jwks` may hold it), and a
//! verification with every key it yields, so ring sees whatever key material gets through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::alg::{Alg, AlgSet, KeyFamily};
use mesh_oauth::config::Limits;
use mesh_oauth::keys::{parse_jwks, JwksLimits};
use mesh_oauth::verify;

fuzz_target!(|data: &[u8]| {
    let limits = JwksLimits::from(&Limits::default());
    for allow_symmetric in [false, true] {
        let Ok(set) = parse_jwks(data, &limits, allow_symmetric) else {
            continue;
        };
        assert!(!set.is_empty(), "an Ok key set has a key");
        for key in set.keys() {
            assert!(
                allow_symmetric || key.family() != KeyFamily::Oct,
                "symmetric key from a fetched document"
            );
            for alg in Alg::ALL.into_iter().filter(|alg| key.fits(*alg)) {
                // The document's own bytes as signature: any length, any content.
                let _ = verify::verify(alg, key.kid(), b"e30.e30", data, &set, AlgSet::all());
            }
        }
    }
});
