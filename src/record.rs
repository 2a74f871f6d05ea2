//! What one decision did, step by step, when asked: `explain` prints it and decides nothing
//! itself. The filter asks for no record: each step is then a test of an empty `Option`.

use crate::alg::{Alg, KeyFamily};
use crate::claims::{ClaimError, ClaimSeen};
use crate::config::Unmatched;
use crate::extract::Location;
use crate::path::PathError;
use crate::policy::{RequirementSeen, RuleTried, Unmet};
use crate::reason::Reason;
use crate::response::Denial;
use crate::sender::ProofSeen;
use crate::token::TokenError;
use crate::verify::VerifyError;
use serde_json::{Map, Value};
use std::cell::RefCell;
use std::rc::Rc;

/// The steps of one decision, in the order the decision took them.
#[derive(Debug, Default)]
pub struct Record {
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub enum Step {
    /// The path rules match, or why it cannot be matched.
    Path(Result<String, PathError>),
    /// A rule the selection tried (the rule index skips rules whose paths cannot match).
    Rule(RuleTried),
    /// No rule matched; `token_would_help`: one would have with a token.
    Unmatched {
        unmatched: Unmatched,
        token_would_help: bool,
    },
    /// A CORS preflight: spared the token.
    Preflight,
    /// Where the token is: `Ok(None)` nowhere the providers look, `Err(())` more than once.
    Location(Result<Option<Location>, ()>),
    /// No token, and `needed` says whether the route needs one.
    NoToken { needed: bool },
    /// The verified-token cache answered for this token (its claims are checked again).
    Cached { provider: usize },
    /// The token's header and claims, unverified; or why it does not parse.
    Parsed(Result<Parsed, TokenError>),
    /// The provider the token's `iss` selects.
    Provider(ProviderSeen),
    /// The selected provider's keys as the decision found them.
    Keys { provider: usize, keys: KeysSeen },
    /// The signature check.
    Signature(Result<KeySeen, SignatureRefused>),
    /// The registered claims, check by check, and their verdict.
    Claims {
        seen: Vec<ClaimSeen>,
        result: Result<(), ClaimError>,
    },
    /// The provider's fetched revocation list names the token.
    Revoked,
    /// RFC 8707: a protected resource takes tokens issued for itself.
    ResourceAudience { resource: String, held: bool },
    /// Sender binding (DPoP, mTLS): the proof's checks when one was sent, and the verdict.
    Sender {
        proof: Option<ProofSeen>,
        result: Result<(), Denial>,
    },
    /// `invalidToken: "ignore"`: the token was not accepted, for this reason, and the request
    /// goes on as anonymous.
    Ignored(Reason),
    /// The rule's requirement: each alternative's parts (one for `requires`), and the verdict.
    Requirement {
        alternatives: Vec<Vec<RequirementSeen>>,
        result: Result<(), Unmet>,
    },
}

#[derive(Debug, Clone)]
pub struct Parsed {
    pub alg: Alg,
    pub kid: Option<String>,
    pub typ: Option<String>,
    pub claims: Rc<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSeen {
    /// `None`: the token has no `iss` string.
    pub iss: Option<String>,
    /// `None`: no provider trusts the issuer.
    pub selected: Option<usize>,
    /// A multi-tenant provider's tenant, and whether the provider admits it.
    pub tenant: Option<(String, bool)>,
    /// The provider takes tokens from where this one was found.
    pub location_listed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysSeen {
    Ready {
        keys: Vec<KeySeen>,
        skipped: usize,
    },
    /// None yet, a fetch is due: the request waits.
    Loading,
    Unavailable {
        retry_after_seconds: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySeen {
    pub kid: Option<String>,
    pub family: KeyFamily,
    pub alg: Option<Alg>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRefused {
    pub error: VerifyError,
    /// The kid is unknown and a key fetch may bring it: the request waits for it.
    pub refetch: bool,
    /// The kid is unknown and the keys cannot be refreshed: refused as retryable.
    pub refresh_failing: bool,
}

/// Where steps are noted: nowhere, or a record. Copied freely into the closures of a decision.
#[derive(Clone, Copy, Default)]
pub struct Recorder<'r>(Option<&'r RefCell<Record>>);

impl<'r> Recorder<'r> {
    /// Notes nothing: what the filter uses.
    pub const OFF: Recorder<'static> = Recorder(None);

    pub fn writing_to(record: &'r RefCell<Record>) -> Recorder<'r> {
        Recorder(Some(record))
    }

    pub fn on(self) -> bool {
        self.0.is_some()
    }

    /// Notes the step `make` builds, built only when recording.
    #[inline]
    pub fn note(self, make: impl FnOnce() -> Step) {
        if let Some(record) = self.0 {
            let step = make();
            if let Ok(mut record) = record.try_borrow_mut() {
                record.steps.push(step);
            }
        }
    }
}
