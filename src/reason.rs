//! Every reason a request is refused for. The name is a contract: it is the last segment of the
//! `mesh_oauth.<provider>.denied.<reason>` metric, the audit line's `reason`, what alerts and
//! `docs/security.md` match on; a reason is added, never renamed.

use std::fmt;

macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// Why a request is refused (or, in `report` mode, would be).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in the order they are listed here.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The metric and audit name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }
    };
}

reasons! {
    // The request and the rules.
    /// 400: more than one token, or a path that cannot be matched safely.
    InvalidRequest => "invalid_request",
    /// A token was needed and none was sent.
    Missing => "missing",
    /// The token lacks a required scope.
    Scope => "scope",
    /// A claim condition failed.
    Claim => "claim",
    /// A `deny` rule or `unmatched: deny`.
    DenyRule => "deny_rule",
    /// The client or actor (RFC 8693) is not one the rule accepts.
    Delegation => "delegation",
    /// The rule asks for a stronger or more recent login (RFC 9470).
    StepUp => "step_up",
    /// No signing keys could be had for the token's issuer.
    KeysUnavailable => "keys_unavailable",

    // The token.
    /// Not a well-formed compact JWS, a claim of the wrong type, or sent where its issuer does
    /// not look.
    Malformed => "malformed",
    TooLarge => "too_large",
    /// Well-formed but a kind of token that is refused (JWE, unknown critical header).
    Unsupported => "unsupported",
    Algorithm => "algorithm",
    Signature => "signature",
    UnknownKey => "unknown_key",
    Issuer => "issuer",
    /// A held request whose provider a configuration push removed.
    ProviderRemoved => "provider_removed",
    Audience => "audience",
    Expired => "expired",
    NotYetValid => "not_yet_valid",
    Lifetime => "lifetime",
    Revoked => "revoked",
    Tenant => "tenant",

    // Sender constraint: DPoP (RFC 9449).
    DpopNotAccepted => "dpop_not_accepted",
    DpopUnbound => "dpop_unbound",
    DpopBinding => "dpop_binding",
    DpopReplay => "dpop_replay",
    /// The replay memory could not record the proof (503).
    DpopReplayUnavailable => "dpop_replay_unavailable",
    DpopDowngrade => "dpop_downgrade",
    DpopRequired => "dpop_required",
    DpopMissing => "dpop_missing",
    DpopMalformed => "dpop_malformed",
    DpopTyp => "dpop_typ",
    DpopAlgorithm => "dpop_algorithm",
    DpopJwk => "dpop_jwk",
    DpopSignature => "dpop_signature",
    DpopJti => "dpop_jti",
    DpopHtm => "dpop_htm",
    DpopHtu => "dpop_htu",
    DpopIat => "dpop_iat",
    DpopAth => "dpop_ath",

    // Sender constraint: mTLS (RFC 8705).
    CertUnbound => "cert_unbound",
    CertMissing => "cert_missing",
    CertMismatch => "cert_mismatch",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;
    use std::collections::HashSet;

    #[test]
    fn names_are_distinct_metric_segments() {
        let mut seen = HashSet::new();
        for reason in Reason::ALL {
            let name = reason.name();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert_eq!(reason.to_string(), name);
        }
    }
}
