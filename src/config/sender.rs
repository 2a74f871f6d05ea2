//! Sender-constrained tokens, per provider: `dpop` (RFC 9449) and `certificateBound`
//! (RFC 8705 §3).

use super::*;

/// RFC 9449 §11.6 names these as the signature algorithms a proof is expected to use; HMAC
/// has no public key to bind to and is never allowed.
const DEFAULT_DPOP_ALGORITHMS: [Alg; 5] =
    [Alg::ES256, Alg::ES384, Alg::EdDSA, Alg::PS256, Alg::RS256];
pub(super) const DEFAULT_DPOP_MAX_AGE_SECONDS: u64 = 60;
/// A proof is meant for one request, now; more than an hour is a replay window, not a skew.
const MAX_DPOP_MAX_AGE_SECONDS: u64 = 3600;

pub(super) fn parse_binding(value: &Value, path: &At<'_>) -> Parsed<Binding> {
    match string(value, path)?.as_str() {
        "required" => Ok(Binding::Required),
        "allowed" => Ok(Binding::Allowed),
        "off" => Ok(Binding::Off),
        _ => Err(error(path, "expected \"required\", \"allowed\" or \"off\"")),
    }
}

pub(super) fn parse_dpop(value: &Value, path: &At<'_>) -> Parsed<Dpop> {
    let dpop = Object::new(
        value,
        path,
        &["mode", "algorithms", "maxAgeSeconds", "origins"],
    )?;
    let algorithms = match dpop.optional("algorithms", |value, path| {
        let algorithms = parse_algorithms(value, path, false)?;
        Ok(algorithms)
    })? {
        Some(algorithms) => algorithms,
        None => DEFAULT_DPOP_ALGORITHMS.into_iter().collect(),
    };
    let max_age_seconds = dpop
        .optional("maxAgeSeconds", positive_integer)?
        .unwrap_or(DEFAULT_DPOP_MAX_AGE_SECONDS);
    if max_age_seconds > MAX_DPOP_MAX_AGE_SECONDS {
        return Err(error(
            dpop.path_of("maxAgeSeconds"),
            format!("at most {MAX_DPOP_MAX_AGE_SECONDS}: a proof is for one request, now"),
        ));
    }
    Ok(Dpop {
        mode: dpop
            .optional("mode", parse_binding)?
            .unwrap_or(Binding::Off),
        algorithms,
        max_age_seconds,
        origins: dpop.optional("origins", |value, path| {
            non_empty_items(value, path, non_empty_string)
        })?,
    })
}
