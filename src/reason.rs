//! Every reason a request is refused for. The name is a contract: it is the last segment of the
//! `mesh_oauth.<provider>.denied.<reason>` metric, the audit line's `reason`, what alerts and
//! `docs/security.md` match on; a reason is added, never renamed.

use std::fmt;

macro_rules! reasons {
    ($(#[$meta:meta])* enum $enum:ident {
        $($(#[$doc:meta])* $variant:ident => $name:literal,)*
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $enum {
            $($(#[$doc])* $variant,)*
        }

        impl $enum {
            /// Every reason, in the order they are listed here.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];

            /// The metric and audit name.
            pub const fn name(self) -> &'static str {
                match self {
                    $($enum::$variant => $name,)*
                }
            }

            /// The reason of this name.
            pub fn from_name(name: &str) -> Option<$enum> {
                $enum::ALL.iter().copied().find(|reason| reason.name() == name)
            }
        }

        impl fmt::Display for $enum {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

reasons! {
    /// Why a request is refused (or, in `report` mode, would be).
    enum Reason {
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
}

reasons! {
    /// Why a browser login (issue 28) did not go on: the `<reason>` of the
    /// `mesh_oauth.login.failed.<reason>` and `mesh_oauth.session.refused.<reason>` metrics, the
    /// `reason` of the login audit lines (`session.refresh_failed` and
    /// `session.backchannel_logout_refused` too), and what `explain` names. Documented in
    /// docs/configuration.md ("Login reasons"); a reason is added, never renamed.
    enum LoginReason {
    // The callback and the logout endpoint.
    /// The callback's query string could not be read.
    Parameters => "parameters",
    /// No live transaction cookie of this browser matches the callback's `state`.
    State => "state",
    /// The OP answered the authorization request with an error (`access_denied` …).
    ProviderError => "provider_error",
    /// The provider's discovery document or keys are not in yet (503).
    ProviderUnavailable => "provider_unavailable",
    /// RFC 9207 `iss` missing (when the OP advertises it) or not the issuer.
    Iss => "iss",
    /// The callback has no `code`.
    Code => "code",
    /// The callback came to a host the login does not serve.
    Host => "host",
    /// A logout `POST` from another site.
    LogoutCrossSite => "logout_cross_site",

    // The token endpoint (code redemption and refresh).
    /// The OP could not be reached, timed out, or answered 5xx.
    TokenEndpoint => "token_endpoint",
    /// The OP refused the grant (4xx: `invalid_grant` for a spent or revoked refresh token …).
    TokenRefused => "token_refused",
    /// The OP's answer was not a usable token response.
    TokenAnswer => "token_answer",
    /// The answer's `token_type` is not `Bearer`.
    TokenType => "token_type",
    IdTokenMissing => "id_token_missing",
    AccessTokenMissing => "access_token_missing",
    /// A refresh's ID token could not be checked: the provider's keys are not in.
    KeysUnavailable => "keys_unavailable",
    /// The new session would need more cookie chunks than a browser should carry.
    SessionTooLarge => "session_too_large",

    // The ID token (OIDC Core §3.1.3.7) and the logout token's shared checks.
    IdTokenAlgorithm => "id_token_algorithm",
    IdTokenMalformed => "id_token_malformed",
    IdTokenUnknownKey => "id_token_unknown_key",
    IdTokenSignature => "id_token_signature",
    IdTokenIssuer => "id_token_issuer",
    IdTokenAudience => "id_token_audience",
    IdTokenAzp => "id_token_azp",
    IdTokenExpired => "id_token_expired",
    IdTokenTime => "id_token_time",
    /// `sub` missing, or a refresh's ID token names another subject.
    IdTokenSub => "id_token_sub",
    IdTokenNonce => "id_token_nonce",
    IdTokenAtHash => "id_token_at_hash",

    // Back-Channel Logout 1.0.
    LogoutTokenTyp => "logout_token_typ",
    LogoutTokenEvents => "logout_token_events",
    LogoutTokenSub => "logout_token_sub",
    LogoutTokenNonce => "logout_token_nonce",
    LogoutTokenJti => "logout_token_jti",
    /// A verified logout that shared data could not take (503, the OP may retry).
    Unrecorded => "unrecorded",

    // The session cookie (and a back-channel logout body that is not a form).
    /// Its chunks are missing, repeated or too many.
    Chunks => "chunks",
    Malformed => "malformed",
    /// Sealed with a key the ring no longer has.
    UnknownKey => "unknown_key",
    Tampered => "tampered",
    Expired => "expired",
    /// A back-channel logout ended it.
    LoggedOut => "logged_out",
    }
}

#[cfg(test)]
mod tests {
    use super::{LoginReason, Reason};
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

    #[test]
    fn login_names_are_distinct_metric_segments() {
        let mut seen = HashSet::new();
        for reason in LoginReason::ALL {
            let name = reason.name();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert_eq!(LoginReason::from_name(name), Some(*reason));
        }
        assert_eq!(LoginReason::from_name("nope"), None);
    }
}
