//! mesh-oauth: a request's path through the core is
//! config → extract → token → keys → verify → claims → policy → response.
//! Everything but `filter` is plain Rust, testable natively.

pub mod alg;
pub mod config;
pub mod json;
pub mod keys;
pub mod path;
pub mod policy;
pub mod token;
pub mod verify;
