//! Browser login (issue 28): the sidecar as an OpenID Connect relying party. A pure state
//! machine ([`flow`]) over sealed cookies ([`seal`], [`cookies`], [`transaction`]) and the ID
//! token checks ([`id_token`]); it returns what it wants done (a call to the token endpoint,
//! an answer, request edits) and never calls the host. Randomness and time come in from the
//! caller, so every step is deterministic in tests.

pub mod cookies;
pub mod endpoints;
pub mod flow;
pub mod form;
pub mod id_token;
pub mod ledger;
pub mod refreshes;
pub mod return_path;
pub mod seal;
pub mod session;
mod token_call;
pub mod transaction;

#[cfg(test)]
mod testing;
