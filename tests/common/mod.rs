//! What the tests that run the `mesh-oauth` binary share (tests/cli.rs, tests/cli_login.rs):
//! scratch files, a run of the binary, and RS256 tokens and their JWKS from the fixture key.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_mesh-oauth");
pub const NOW: u64 = 1_700_000_000;
const RSA_PKCS8: &[u8] = include_bytes!("../fixtures/rsa2048-a.pk8.der");

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A file for one test in Cargo's scratch directory for integration tests, in a folder of
/// the test binary's own (`cli`, `cli_login`) so that two binaries never share a name.
pub fn scratch(name: &str, contents: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(env!("CARGO_CRATE_NAME"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` (the binary, its arguments and environment set) with `stdin`.
pub fn run_command(command: &mut Command, stdin: &str) -> Run {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// The fixture RSA key (tests/fixtures/rsa2048-a.pk8.der).
pub fn rsa_key() -> RsaKeyPair {
    RsaKeyPair::from_pkcs8(RSA_PKCS8).unwrap()
}

/// The JWKS of `key`'s public half, as `kid`.
pub fn rsa_jwks(key: &RsaKeyPair, kid: &str) -> String {
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
    json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": b64(&public.n), "e": b64(&public.e)}]})
    .to_string()
}

/// The JWS signing input: base64url header and claims.
pub fn signing_input(header: Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A JWT with `claims` signed RS256 by `key` under `kid`.
pub fn rs256(key: &RsaKeyPair, kid: &str, claims: &Value) -> String {
    let input = signing_input(json!({"alg": "RS256", "kid": kid, "typ": "JWT"}), claims);
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{input}.{}", b64(&signature))
}
