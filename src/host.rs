//! Envoy's `verify_signature` foreign function as a [`SignatureHost`]: the only host call of
//! the host signature path, shared by the filter and the test probe
//! (`tests/host-probe`). Encoding, decoding and the known-answer test are in `host_verify`.

use crate::host_verify::{self, HostAnswer, HostHash, SignatureHost, TrustedHost};
use proxy_wasm::hostcalls;

pub struct Envoy;

impl SignatureHost for Envoy {
    fn verify(&self, hash: HostHash, spki: &[u8], message: &[u8], signature: &[u8]) -> HostAnswer {
        let arguments = host_verify::encode_arguments(hash, spki, signature, message);
        match hostcalls::call_foreign_function("verify_signature", Some(&arguments)) {
            Ok(answer) => host_verify::decode_result(answer.as_deref().unwrap_or_default()),
            // NotFound (an Envoy without it), BadArgument (arguments it could not parse).
            // Envoy 1.40 answers a key BoringSSL will not import with "invalid", not an error
            // (pinned by tests/integration/test_host_wycheproof.py).
            Err(_) => HostAnswer::Unavailable,
        }
    }
}

static ENVOY: Envoy = Envoy;

/// Envoy, if it passes the known-answer test.
pub fn checked() -> Result<TrustedHost<'static>, host_verify::SelfTestFailure> {
    TrustedHost::check(&ENVOY)
}
