//! mesh-oauth: a request's path through the core is
//! config → extract → token → keys → verify → claims → policy → response, decided in
//! `authorize`; `runtime` holds the per-VM state (held requests, key fetches, metrics) and
//! turns host events into effects, which `filter` (the proxy-wasm shell) carries out.
//! Everything but `filter` and `host` is plain Rust, testable natively.

pub mod alg;
pub mod audit;
pub mod authorize;
pub mod cache;
pub mod claims;
pub mod config;
pub mod config_hash;
pub mod extract;
pub mod header_map;
pub mod host_verify;
pub mod json;
pub mod keys;
pub mod keystore;
pub mod path;
pub mod peer;
pub mod policy;
pub mod reason;
pub mod record;
pub mod resource;
pub mod response;
pub mod runtime;
pub mod sender;
pub mod token;
pub mod verify;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod filter;
#[cfg(target_arch = "wasm32")]
pub mod host;
