//! mesh-oauth, in layers (README's table names every file):
//! - contract: [`config`], the configuration parsed into plain data (with the vocabulary
//!   [`alg`], [`json`] and [`reason`]); it imports no stage; [`config_hash`], its identity;
//! - pure stages: [`extract`] → [`token`] → [`keys`] → [`verify`] (+ [`host_verify`],
//!   [`cache`]) → [`claims`] → [`policy`] (+ [`path`], [`peer`]);
//! - compile: [`compile`], what configuring means (rule index, inline keys, resources);
//! - stages after compile: [`response`], [`resource`], [`keystore`], [`sender`] (which, with
//!   `keystore`, still imports request and key-lookup types from `authorize`);
//! - decision: [`authorize`], its step-by-step [`record`] for `explain`; [`audit`] renders
//!   it for operators;
//! - outbound: [`outbound`], on a workload's outbound side the token each destination gets
//!   (client credentials, token exchange), from a cache shared by the workers;
//! - runtime: [`runtime`], the per-VM state machine: events in, effects out;
//! - shell: `filter` (+ `host`, [`header_map`]), the only code that calls the host;
//! - tools: the `mesh-oauth` command (src/bin/mesh-oauth).
//!
//! Everything but `filter` and `host` is plain Rust, testable natively.

pub mod alg;
pub mod audit;
pub mod authorize;
pub mod cache;
pub mod claims;
pub mod client_auth;
pub mod compile;
pub mod config;
pub mod config_hash;
pub mod ed25519;
pub mod extract;
pub mod header_map;
pub mod host_verify;
pub mod json;
pub mod keys;
pub mod keystore;
pub mod login;
pub mod outbound;
pub mod path;
pub mod peer;
pub mod policy;
pub mod reason;
pub mod record;
pub mod resource;
pub mod response;
pub mod rsa;
pub mod runtime;
pub mod sender;
pub mod token;
pub mod verify;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod filter;
#[cfg(target_arch = "wasm32")]
pub mod host;
