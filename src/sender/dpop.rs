//! The DPoP proof (RFC 9449 §4.3): a JWS the client signs for each request with the key its
//! token is bound to. Parsed with the token parser and its caps, verified by the token verify
//! layer; every check refuses on its own, with its own reason.

use super::{b64url, sha256};
use crate::alg::KeyFamily;
use crate::authorize::Request;
use crate::config::Dpop;
use crate::host_verify::TrustedHost;
use crate::keys::{self, ProofKeyError};
use crate::path;
use crate::reason::Reason;
use crate::token::{self, TokenLimits};
use crate::verify::{self, VerifyError};
use serde_json::{Map, Value};

/// A proof that passed every check but the replay one, which needs the sidecar's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 SHA-256 thumbprint of the proof's key, base64url: what `cnf.jkt` must be.
    pub jkt: String,
    /// Identifies this proof for replay detection: SHA-256 of the key thumbprint and `jti`.
    pub replay_id: [u8; 16],
    /// When a replay would be refused as stale anyway: the entry can be forgotten then.
    pub expires_s: u64,
}

/// Why a proof is refused: each is one check of RFC 9449 §4.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    Missing,
    Multiple,
    Malformed(&'static str),
    Typ,
    Algorithm,
    NoKey,
    PrivateKey,
    UnusableKey,
    Signature,
    Jti,
    Htm,
    HtuMalformed,
    HtuOrigin,
    HtuPath,
    IatMissing,
    Stale,
    Future,
    Ath,
}

impl ProofError {
    pub fn describe(self) -> &'static str {
        match self {
            ProofError::Missing => "DPoP proof header is missing",
            ProofError::Multiple => "more than one DPoP proof",
            ProofError::Malformed(why) => why,
            ProofError::Typ => "DPoP proof typ is not dpop+jwt",
            ProofError::Algorithm => "DPoP proof algorithm is not accepted",
            ProofError::NoKey => "DPoP proof header has no jwk",
            ProofError::PrivateKey => "DPoP proof jwk holds private key material",
            ProofError::UnusableKey => "DPoP proof jwk is not a usable public key",
            ProofError::Signature => "DPoP proof signature is invalid",
            ProofError::Jti => "DPoP proof has no jti",
            ProofError::Htm => "DPoP proof htm does not match the request method",
            ProofError::HtuMalformed => {
                "DPoP proof htu is not an absolute http(s) URI without query or fragment"
            }
            ProofError::HtuOrigin => "DPoP proof htu names another origin",
            ProofError::HtuPath => "DPoP proof htu names another path",
            ProofError::IatMissing => "DPoP proof has no numeric iat",
            ProofError::Stale => "DPoP proof is too old",
            ProofError::Future => "DPoP proof is issued in the future",
            ProofError::Ath => "DPoP proof ath does not match the access token",
        }
    }

    /// Why, for metrics and audit lines.
    pub fn reason(self) -> Reason {
        match self {
            ProofError::Missing => Reason::DpopMissing,
            ProofError::Multiple | ProofError::Malformed(_) => Reason::DpopMalformed,
            ProofError::Typ => Reason::DpopTyp,
            ProofError::Algorithm => Reason::DpopAlgorithm,
            ProofError::NoKey | ProofError::PrivateKey | ProofError::UnusableKey => Reason::DpopJwk,
            ProofError::Signature => Reason::DpopSignature,
            ProofError::Jti => Reason::DpopJti,
            ProofError::Htm => Reason::DpopHtm,
            ProofError::HtuMalformed | ProofError::HtuOrigin | ProofError::HtuPath => {
                Reason::DpopHtu
            }
            ProofError::IatMissing | ProofError::Stale | ProofError::Future => Reason::DpopIat,
            ProofError::Ath => Reason::DpopAth,
        }
    }
}

/// A `jti` is a client's random identifier; anything longer is not one.
const MAX_JTI_BYTES: usize = 256;

/// The request's one `DPoP` header (RFC 9449 §4.3 check 1). A JWS never holds a comma, so a
/// value with one is two proofs folded together.
pub fn proof_header<'r>(request: &Request<'r>) -> Result<&'r str, ProofError> {
    let mut values = request.headers.iter().filter(|(n, _)| *n == "dpop");
    match (values.next(), values.next()) {
        (None, _) => Err(ProofError::Missing),
        (Some(_), Some(_)) => Err(ProofError::Multiple),
        (Some((_, value)), None) if value.contains(',') => Err(ProofError::Multiple),
        (Some((_, value)), None) => Ok(value.trim()),
    }
}

/// Every check of RFC 9449 §4.3 but replay; `passed` collects the names of the checks that
/// held, in order, for `explain`.
#[allow(clippy::too_many_arguments)]
pub fn check_proof(
    proof: &str,
    token: &str,
    settings: &Dpop,
    skew_s: u64,
    request: &Request<'_>,
    now_s: u64,
    limits: &TokenLimits,
    host: Option<TrustedHost<'_>>,
    passed: &mut Vec<&'static str>,
) -> Result<Proof, ProofError> {
    let jws = token::parse_proof(proof, limits).map_err(|e| match e {
        token::TokenError::Unsecured | token::TokenError::UnsupportedAlgorithm => {
            ProofError::Algorithm
        }
        _ => ProofError::Malformed("DPoP proof is not a well-formed JWS"),
    })?;
    passed.push("well-formed JWS");
    let is_dpop_typ = jws
        .header
        .typ
        .as_deref()
        .is_some_and(|typ| typ.eq_ignore_ascii_case("dpop+jwt"));
    if !is_dpop_typ {
        return Err(ProofError::Typ);
    }
    passed.push("typ dpop+jwt");
    let alg = jws.header.alg;
    if alg.key_family() == KeyFamily::Oct || !settings.algorithms.contains(alg) {
        return Err(ProofError::Algorithm);
    }
    passed.push("alg accepted");
    let jwk = jws.header.jwk.as_ref().ok_or(ProofError::NoKey)?;
    let key = keys::proof_key(jwk).map_err(|e| match e {
        ProofKeyError::Private => ProofError::PrivateKey,
        ProofKeyError::Unusable => ProofError::UnusableKey,
    })?;
    passed.push("public jwk");
    match verify::verify_with(
        host,
        alg,
        None,
        jws.signing_input,
        &jws.signature,
        &key,
        settings.algorithms,
    ) {
        Ok(_) => passed.push("signature"),
        Err(VerifyError::NoSuitableKey | VerifyError::KeyAlgorithmMismatch) => {
            return Err(ProofError::UnusableKey)
        }
        Err(_) => return Err(ProofError::Signature),
    }
    let claims = &jws.claims;
    let jti = claims
        .get("jti")
        .and_then(Value::as_str)
        .filter(|jti| !jti.is_empty() && jti.len() <= MAX_JTI_BYTES)
        .ok_or(ProofError::Jti)?;
    passed.push("jti");
    // RFC 9449 §4.3 check 8: the method as sent, case-sensitively (RFC 9110 §9.1).
    if claims.get("htm").and_then(Value::as_str) != Some(request.method) {
        return Err(ProofError::Htm);
    }
    passed.push("htm");
    check_htu(claims, settings, request)?;
    passed.push("htu");
    let iat = claims
        .get("iat")
        .and_then(Value::as_f64)
        .filter(|iat| iat.is_finite())
        .ok_or(ProofError::IatMissing)?;
    let now = now_s as f64;
    let window = settings.max_age_seconds.saturating_add(skew_s) as f64;
    if now - iat > window {
        return Err(ProofError::Stale);
    }
    if iat - now > skew_s as f64 {
        return Err(ProofError::Future);
    }
    passed.push("iat");
    // §4.3 check 11, §7.1: the proof is for this very token.
    if claims.get("ath").and_then(Value::as_str) != Some(b64url(&sha256(token.as_bytes())).as_str())
    {
        return Err(ProofError::Ath);
    }
    passed.push("ath");
    let jkt = thumbprint(jwk).ok_or(ProofError::UnusableKey)?;
    let mut id_input = Vec::with_capacity(jkt.len() + 1 + jti.len());
    id_input.extend_from_slice(jkt.as_bytes());
    id_input.push(0);
    id_input.extend_from_slice(jti.as_bytes());
    let digest = sha256(&id_input);
    let mut replay_id = [0u8; 16];
    replay_id.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
    // `iat` is within the window here, so it is a sane number of seconds.
    let expires_s =
        (iat.max(0.0) as u64).saturating_add(settings.max_age_seconds.saturating_add(skew_s));
    Ok(Proof {
        jkt,
        replay_id,
        expires_s,
    })
}

/// §4.3 check 9: `htu` is the request's URI without query and fragment, compared after
/// syntax- and scheme-based normalisation; its origin is one of `origins`, or the request's.
fn check_htu(
    claims: &Map<String, Value>,
    settings: &Dpop,
    request: &Request<'_>,
) -> Result<(), ProofError> {
    let htu = claims
        .get("htu")
        .and_then(Value::as_str)
        .ok_or(ProofError::HtuMalformed)?;
    if htu.contains(['?', '#']) {
        return Err(ProofError::HtuMalformed);
    }
    let after_scheme = htu.find("://").ok_or(ProofError::HtuMalformed)? + 3;
    let path_start = htu
        .get(after_scheme..)
        .and_then(|rest| rest.find('/'))
        .map_or(htu.len(), |at| after_scheme + at);
    let origin = htu.get(..path_start).and_then(path::normalize_origin);
    let origin = origin.ok_or(ProofError::HtuMalformed)?;
    let allowed = match &settings.origins {
        Some(origins) => origins.contains(&origin),
        None => path::normalize_origin(&format!("{}://{}", request.scheme, request.authority))
            .is_some_and(|own| own == origin),
    };
    if !allowed {
        return Err(ProofError::HtuOrigin);
    }
    let htu_path = match htu.get(path_start..) {
        None | Some("") => "/",
        Some(path) => path,
    };
    let same_path = match (path::normalize(htu_path), path::normalize(request.path)) {
        (Ok(theirs), Ok(ours)) => theirs == ours,
        _ => false,
    };
    if same_path {
        Ok(())
    } else {
        Err(ProofError::HtuPath)
    }
}

/// RFC 7638: the key's required members in lexicographic order, no whitespace, SHA-256,
/// base64url. `None` for a key type without a thumbprint rule here.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| -> Option<String> {
        let value = jwk.get(name)?.as_str()?;
        serde_json::to_string(value)
            .ok()
            .map(|quoted| format!("\"{name}\":{quoted}"))
    };
    let members: Vec<String> = match jwk.get("kty")?.as_str()? {
        "EC" => vec![member("crv")?, member("kty")?, member("x")?, member("y")?],
        "OKP" => vec![member("crv")?, member("kty")?, member("x")?],
        "RSA" => vec![member("e")?, member("kty")?, member("n")?],
        _ => return None,
    };
    let canonical = format!("{{{}}}", members.join(","));
    Some(b64url(&sha256(canonical.as_bytes())))
}
