//! Every reason an outbound request gets no token. The name is a contract: the last segment
//! of the `mesh_oauth.outbound.<entry>.refused.<reason>` metric, the audit line's `reason` and
//! the `reason` of the 403/503 body; a reason is added, never renamed.

/// Why an outbound request is refused (or, with `onFailure: passThrough`, goes on bare).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// An exchange and no single `Authorization: Bearer` subject token (403).
    MissingSubject,
    /// The subject token's `exp` has passed (403).
    SubjectExpired,
    /// The subject token's `exp` or `may_act` is not what the specs allow (403).
    SubjectMalformed,
    /// The subject token's `may_act` names another actor (403, RFC 8693 §4.4).
    MayAct,
    /// The token endpoint call got no HTTP answer.
    TokenEndpointUnreachable,
    /// The token endpoint answered another status than 200 (Envoy's own 503/504 included).
    TokenEndpointStatus,
    /// A 200 whose body is not a usable token answer.
    TokenEndpointAnswer,
    /// The last call failed and its backoff has not ended.
    TokenEndpointFailing,
    /// The provider's discovery document has not named a token endpoint in time.
    TokenEndpointUnknown,
    /// Another worker's call did not bring a token in time.
    TokenUnavailable,
    /// The issued token would be expired before it could be used.
    TokenLifetime,
    /// The actor's own token could not be had.
    ActorToken,
    /// The private_key_jwt assertion could not be signed.
    ClientAssertion,
    /// `limits.maxHeldRequests` requests are held already.
    HeldRequestsFull,
}

impl Refusal {
    pub const ALL: &'static [Refusal] = &[
        Refusal::MissingSubject,
        Refusal::SubjectExpired,
        Refusal::SubjectMalformed,
        Refusal::MayAct,
        Refusal::TokenEndpointUnreachable,
        Refusal::TokenEndpointStatus,
        Refusal::TokenEndpointAnswer,
        Refusal::TokenEndpointFailing,
        Refusal::TokenEndpointUnknown,
        Refusal::TokenUnavailable,
        Refusal::TokenLifetime,
        Refusal::ActorToken,
        Refusal::ClientAssertion,
        Refusal::HeldRequestsFull,
    ];

    /// The metric, audit and body name.
    pub const fn name(self) -> &'static str {
        match self {
            Refusal::MissingSubject => "missing_subject",
            Refusal::SubjectExpired => "subject_expired",
            Refusal::SubjectMalformed => "subject_malformed",
            Refusal::MayAct => "may_act",
            Refusal::TokenEndpointUnreachable => "token_endpoint_unreachable",
            Refusal::TokenEndpointStatus => "token_endpoint_status",
            Refusal::TokenEndpointAnswer => "token_endpoint_answer",
            Refusal::TokenEndpointFailing => "token_endpoint_failing",
            Refusal::TokenEndpointUnknown => "token_endpoint_unknown",
            Refusal::TokenUnavailable => "token_unavailable",
            Refusal::TokenLifetime => "token_lifetime",
            Refusal::ActorToken => "actor_token",
            Refusal::ClientAssertion => "client_assertion",
            Refusal::HeldRequestsFull => "held_requests_full",
        }
    }

    /// 403 when the request's own subject token is the problem; 503 when no token could be had
    /// (the only ones `onFailure: passThrough` lets through).
    pub const fn status(self) -> u16 {
        match self {
            Refusal::MissingSubject
            | Refusal::SubjectExpired
            | Refusal::SubjectMalformed
            | Refusal::MayAct => 403,
            _ => 503,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_distinct_metric_segments_and_documented() {
        let docs = include_str!("../../docs/configuration.md");
        for (index, refusal) in Refusal::ALL.iter().enumerate() {
            let name = refusal.name();
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(
                Refusal::ALL[..index].iter().all(|r| r.name() != name),
                "{name} twice"
            );
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not in docs/configuration.md"
            );
        }
    }
}
