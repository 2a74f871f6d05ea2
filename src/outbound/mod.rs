//! Outbound credentials (issue 29): on a workload's outbound side, get and attach the right
//! token for each destination — client credentials or an RFC 8693 token exchange — from a
//! cache shared by the sidecar's workers. Pure: it returns the calls and answers it wants;
//! the shell carries them out.

pub mod answer;
pub mod cache;
mod flow;
pub mod refusal;
pub mod request;
pub mod subject;
#[cfg(test)]
pub(crate) mod testing;

pub use flow::*;
