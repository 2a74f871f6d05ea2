//! Sender-constrained tokens: a verified token that is bound to a key (DPoP, RFC 9449) or to
//! a client certificate (RFC 8705 §3) is accepted only from that sender. A stage of its own,
//! after the token is verified and before any rule reads its claims.

pub mod dpop;
pub mod replay;

use crate::authorize::Request;
use crate::config::{Binding, Provider};
use crate::host_verify::TrustedHost;
use crate::peer::Peer;
use crate::reason::Reason;
use crate::response::Denial;
use crate::token::TokenLimits;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dpop::ProofError;
use replay::Admission;
use serde_json::{Map, Value};

/// How the token came: `Authorization: DPoP …` or any bearer location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    Bearer,
    Dpop,
}

/// Checks the token's binding to its sender. `admit` remembers a proof for the sidecar and
/// says whether it was seen before.
#[allow(clippy::too_many_arguments)]
pub fn check(
    provider: &Provider,
    claims: &Map<String, Value>,
    token: &str,
    presented: Presented,
    request: &Request<'_>,
    now_ms: u64,
    limits: &TokenLimits,
    host: Option<TrustedHost<'_>>,
    admit: &mut dyn FnMut(&dpop::Proof) -> Admission,
) -> Result<(), Denial> {
    check_seen(
        provider, claims, token, presented, request, now_ms, limits, host, admit, None,
    )
}

/// A DPoP proof as [`check_seen`] checked it, for `explain`: the checks that held, in order,
/// and the proof's key thumbprint or why it failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProofSeen {
    pub passed: Vec<&'static str>,
    pub checked: Option<Result<String, dpop::ProofError>>,
}

/// [`check`], noting the DPoP proof's checks in `seen` when given.
#[allow(clippy::too_many_arguments)]
pub fn check_seen(
    provider: &Provider,
    claims: &Map<String, Value>,
    token: &str,
    presented: Presented,
    request: &Request<'_>,
    now_ms: u64,
    limits: &TokenLimits,
    host: Option<TrustedHost<'_>>,
    admit: &mut dyn FnMut(&dpop::Proof) -> Admission,
    seen: Option<&mut ProofSeen>,
) -> Result<(), Denial> {
    check_dpop(
        provider, claims, token, presented, request, now_ms, limits, host, admit, seen,
    )?;
    check_certificate(provider.certificate_bound, claims, request.peer)
}

#[allow(clippy::too_many_arguments)]
fn check_dpop(
    provider: &Provider,
    claims: &Map<String, Value>,
    token: &str,
    presented: Presented,
    request: &Request<'_>,
    now_ms: u64,
    limits: &TokenLimits,
    host: Option<TrustedHost<'_>>,
    admit: &mut dyn FnMut(&dpop::Proof) -> Admission,
    mut seen: Option<&mut ProofSeen>,
) -> Result<(), Denial> {
    let jkt = cnf(claims, "jkt");
    match (presented, provider.dpop.mode) {
        (Presented::Dpop, Binding::Off) => Err(invalid(
            "the DPoP scheme is not accepted for this issuer",
            Reason::DpopNotAccepted,
        )),
        (Presented::Dpop, _) => {
            let Some(jkt) = jkt else {
                return Err(invalid(
                    "token is not DPoP-bound (no cnf.jkt) but was sent with the DPoP scheme",
                    Reason::DpopUnbound,
                ));
            };
            let proof_text = dpop::proof_header(request).map_err(proof_denial)?;
            let proof = dpop::check_proof(
                proof_text,
                token,
                &provider.dpop,
                provider.clock_skew_seconds,
                request,
                now_ms / 1000,
                limits,
                host,
                seen.as_deref_mut()
                    .map_or(&mut Vec::new(), |seen| &mut seen.passed),
            );
            if let Some(seen) = seen {
                seen.checked = Some(proof.as_ref().map(|p| p.jkt.clone()).map_err(|e| *e));
            }
            let proof = proof.map_err(proof_denial)?;
            if proof.jkt != jkt {
                return Err(Denial::InvalidProof {
                    description: "DPoP proof key is not the key the token is bound to (cnf.jkt)",
                    reason: Reason::DpopBinding,
                });
            }
            match admit(&proof) {
                Admission::Fresh => Ok(()),
                Admission::Replayed => Err(Denial::InvalidProof {
                    description: "DPoP proof was already used",
                    reason: Reason::DpopReplay,
                }),
                Admission::Full | Admission::Unavailable => Err(Denial::ReplayUnavailable),
            }
        }
        // RFC 9449 §7.1: a bound token sent as a bearer token is a downgrade, whatever the mode.
        (Presented::Bearer, _) if jkt.is_some() => Err(invalid(
            "token is DPoP-bound (cnf.jkt): send it with the DPoP scheme and a proof",
            Reason::DpopDowngrade,
        )),
        (Presented::Bearer, Binding::Required) => Err(invalid(
            "a DPoP-bound token is required",
            Reason::DpopRequired,
        )),
        (Presented::Bearer, _) => Ok(()),
    }
}

/// RFC 8705 §3: `cnf["x5t#S256"]` is the base64url SHA-256 of the client certificate; Envoy
/// gives the certificate's SHA-256 in hex.
fn check_certificate(
    mode: Binding,
    claims: &Map<String, Value>,
    peer: &dyn Peer,
) -> Result<(), Denial> {
    if mode == Binding::Off {
        return Ok(());
    }
    let Some(bound) = cnf(claims, "x5t#S256") else {
        return match mode {
            Binding::Required => Err(invalid(
                "token is not bound to a client certificate (no cnf x5t#S256)",
                Reason::CertUnbound,
            )),
            _ => Ok(()),
        };
    };
    let presented = peer.certificate_digest().and_then(hex_to_base64url);
    match presented {
        None => Err(invalid(
            "token is bound to a client certificate and the connection presented none",
            Reason::CertMissing,
        )),
        Some(digest) if digest == bound => Ok(()),
        Some(_) => Err(invalid(
            "token is bound to another client certificate",
            Reason::CertMismatch,
        )),
    }
}

fn cnf<'c>(claims: &'c Map<String, Value>, member: &str) -> Option<&'c str> {
    claims.get("cnf")?.get(member)?.as_str()
}

fn invalid(description: &'static str, reason: Reason) -> Denial {
    Denial::InvalidToken {
        description,
        reason,
    }
}

fn proof_denial(error: ProofError) -> Denial {
    Denial::InvalidProof {
        description: error.describe(),
        reason: error.reason(),
    }
}

fn hex_to_base64url(hex: &str) -> Option<String> {
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    bytes.map(|bytes| b64url(&bytes))
}

pub(crate) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests;
