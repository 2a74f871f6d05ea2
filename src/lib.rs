//! mesh-oauth: a request's path through the core is
//! config → extract → token → keys → verify → claims → policy → response.
//! Everything but `filter` is plain Rust, testable natively.

pub mod alg;
pub mod audit;
pub mod authorize;
pub mod cache;
pub mod claims;
pub mod compile;
pub mod config;
pub mod extract;
pub mod header_map;
pub mod host_verify;
pub mod json;
pub mod keys;
pub mod keystore;
pub mod path;
pub mod peer;
pub mod policy;
pub mod resource;
pub mod response;
pub mod sender;
pub mod token;
pub mod verify;

#[cfg(all(target_arch = "wasm32", feature = "filter"))]
mod filter;
#[cfg(target_arch = "wasm32")]
pub mod host;
