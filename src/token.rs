//! Strict parsing of a JWS in compact serialization (RFC 7515 §7.1). Nothing here trusts
//! the token: the header only yields the algorithm and key id to look for, and anything
//! that would change how the signature must be checked (JWE, `none`, `crit`, `b64`) is refused.

use crate::alg::Alg;
use crate::json::{self, JsonError, JsonLimits};
use crate::reason::Reason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use std::rc::Rc;

/// A parsed, not yet verified token. Deliberately not `Debug`: its claims and signature
/// must not end up in logs.
pub struct Jws<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// The exact bytes that were signed: "<b64url header>.<b64url payload>" as received.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

/// The header members the verifier needs. Key-locating members (`jku`, `x5u`, `x5c`) are
/// dropped: a token's keys come only from the provider's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: Alg,
    /// Shared, not copied: a remembered header hands its `kid` to every token that has it.
    pub kid: Option<Rc<str>>,
    pub typ: Option<Rc<str>>,
    /// Read by the DPoP proof check only (RFC 9449 §4.2: the proof carries its public key);
    /// token verification never looks at it.
    pub jwk: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenLimits {
    pub max_token_bytes: usize,
    pub json: JsonLimits,
}

impl From<&crate::config::Limits> for TokenLimits {
    fn from(limits: &crate::config::Limits) -> Self {
        TokenLimits {
            max_token_bytes: limits.max_token_bytes,
            json: JsonLimits {
                max_depth: limits.max_json_depth,
                max_members: limits.max_json_members,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    Header,
    Payload,
    Signature,
}

/// Which header member is wrong, or why the header is not acceptable JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    Json(JsonError),
    /// `alg` is missing or not a string.
    Alg,
    /// `kid` is not a string.
    Kid,
    /// `typ` is not a string.
    Typ,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    TooLarge,
    /// Not three `.`-separated segments, or an empty header or payload segment.
    NotCompact,
    /// Five segments, or a header with `enc`.
    Jwe,
    /// Not strict unpadded, canonical base64url.
    NotBase64Url(Segment),
    MalformedHeader(HeaderFault),
    /// `alg` is some spelling of `none`.
    Unsecured,
    UnsupportedAlgorithm,
    /// `crit` or `b64` in the header: we implement no JWS extension.
    UnsupportedCritical,
    /// The signature segment is empty.
    MalformedSignature,
    MalformedPayload(JsonError),
}

impl TokenError {
    /// An RFC 6750 `error_description`: names the cause, never the token's content.
    pub fn describe(&self) -> &'static str {
        match self {
            TokenError::TooLarge => "token is too large",
            TokenError::NotCompact => "token is malformed: not a JWS in compact form",
            TokenError::Jwe => "encrypted tokens (JWE) are not accepted",
            TokenError::NotBase64Url(Segment::Header) | TokenError::MalformedHeader(_) => {
                "token header is malformed"
            }
            TokenError::NotBase64Url(Segment::Payload) | TokenError::MalformedPayload(_) => {
                "token payload is malformed"
            }
            TokenError::NotBase64Url(Segment::Signature) | TokenError::MalformedSignature => {
                "token signature is malformed"
            }
            TokenError::Unsecured => "token algorithm none (unsecured) is not accepted",
            TokenError::UnsupportedAlgorithm => "token algorithm is not supported",
            TokenError::UnsupportedCritical => {
                "token header lists critical extensions that are not supported"
            }
        }
    }

    /// Why, for metrics: too large, malformed, unsupported (well-formed but a kind of token
    /// we refuse) or algorithm.
    pub fn reason(&self) -> Reason {
        match self {
            TokenError::TooLarge => Reason::TooLarge,
            TokenError::NotCompact
            | TokenError::NotBase64Url(_)
            | TokenError::MalformedHeader(_)
            | TokenError::MalformedSignature
            | TokenError::MalformedPayload(_) => Reason::Malformed,
            TokenError::Jwe | TokenError::UnsupportedCritical => Reason::Unsupported,
            TokenError::Unsecured | TokenError::UnsupportedAlgorithm => Reason::Algorithm,
        }
    }
}

/// Parses a compact JWS without verifying it.
pub fn parse<'a>(raw: &'a str, limits: &TokenLimits) -> Result<Jws<'a>, TokenError> {
    parse_named(raw, limits, Alg::from_name, None)
}

/// [`parse`], with the headers of the last few tokens remembered by their exact segment: an
/// issuer's tokens share one header, which is then decoded and parsed once, not per token.
/// The answer is the same either way (the parse is a function of those bytes).
pub fn parse_remembering<'a>(
    raw: &'a str,
    limits: &TokenLimits,
    memo: &mut HeaderMemo,
) -> Result<Jws<'a>, TokenError> {
    parse_named(raw, limits, Alg::from_name, Some(memo))
}

/// Token headers already parsed, by their base64url segment (a header with a `jwk` is not
/// kept: tokens carry none). Replaced in turn; a few, for a sidecar that trusts a few issuers.
#[derive(Default)]
pub struct HeaderMemo {
    entries: Vec<(String, Header)>,
    next: usize,
}

const REMEMBERED_HEADERS: usize = 4;

impl HeaderMemo {
    fn get(&self, segment: &str) -> Option<&Header> {
        self.entries
            .iter()
            .find(|(seen, _)| seen == segment)
            .map(|(_, header)| header)
    }

    fn remember(&mut self, segment: &str, header: &Header) {
        if header.jwk.is_some() {
            return;
        }
        let entry = (segment.to_owned(), header.clone());
        if self.entries.len() < REMEMBERED_HEADERS {
            self.entries.push(entry);
        } else if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = entry;
        }
        self.next = (self.next + 1) % REMEMBERED_HEADERS;
    }
}

/// A DPoP proof: as a token, but `alg` may also be `Ed25519`, RFC 9864's fully-specified name
/// for EdDSA with Ed25519, which DPoP clients (npm `dpop` 2) sign with. Tokens keep one
/// spelling per algorithm.
pub fn parse_proof<'a>(raw: &'a str, limits: &TokenLimits) -> Result<Jws<'a>, TokenError> {
    parse_named(
        raw,
        limits,
        |name| match name {
            "Ed25519" => Some(Alg::EdDSA),
            other => Alg::from_name(other),
        },
        None,
    )
}

fn parse_named<'a>(
    raw: &'a str,
    limits: &TokenLimits,
    alg_named: fn(&str) -> Option<Alg>,
    memo: Option<&mut HeaderMemo>,
) -> Result<Jws<'a>, TokenError> {
    if raw.len() > limits.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    match raw.split('.').count() {
        3 => {}
        5 => return Err(TokenError::Jwe),
        _ => return Err(TokenError::NotCompact),
    }
    let (signing_input, signature_b64) = raw.rsplit_once('.').ok_or(TokenError::NotCompact)?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(TokenError::NotCompact)?;
    // An empty payload would be detached content (RFC 7515 Appendix F), not a bearer token.
    if header_b64.is_empty() || payload_b64.is_empty() {
        return Err(TokenError::NotCompact);
    }
    // A remembered header decoded and parsed without error: skipping both changes no answer.
    let known = memo
        .as_deref()
        .and_then(|memo| memo.get(header_b64))
        .cloned();
    let header_bytes = match known {
        Some(_) => Vec::new(),
        None => decode(header_b64, Segment::Header)?,
    };
    let payload_bytes = decode(payload_b64, Segment::Payload)?;
    let signature = decode(signature_b64, Segment::Signature)?;

    let header = match known {
        Some(header) => header,
        None => {
            let header = parse_header(&header_bytes, limits.json, alg_named)?;
            if let Some(memo) = memo {
                memo.remember(header_b64, &header);
            }
            header
        }
    };
    if signature.is_empty() {
        return Err(TokenError::MalformedSignature);
    }
    let claims =
        json::parse_object(&payload_bytes, limits.json).map_err(TokenError::MalformedPayload)?;
    Ok(Jws {
        header,
        claims,
        signing_input: signing_input.as_bytes(),
        signature,
    })
}

/// This engine refuses padding, whitespace, the standard alphabet's `+` and `/`, and
/// non-zero trailing bits, so one token has exactly one encoding.
fn decode(segment: &str, which: Segment) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::NotBase64Url(which))
}

fn parse_header(
    bytes: &[u8],
    limits: JsonLimits,
    alg_named: fn(&str) -> Option<Alg>,
) -> Result<Header, TokenError> {
    let mut members = json::parse_object(bytes, limits)
        .map_err(|cause| TokenError::MalformedHeader(HeaderFault::Json(cause)))?;
    // Checked before `alg`: a JWE header names key-management algorithms, and "encrypted"
    // is the more useful answer than "unsupported algorithm".
    if members.contains_key("enc") {
        return Err(TokenError::Jwe);
    }
    let alg = match members.get("alg") {
        Some(Value::String(name)) if name.eq_ignore_ascii_case("none") => {
            return Err(TokenError::Unsecured)
        }
        Some(Value::String(name)) => alg_named(name).ok_or(TokenError::UnsupportedAlgorithm)?,
        _ => return Err(TokenError::MalformedHeader(HeaderFault::Alg)),
    };
    // RFC 7515 §4.1.11: a recipient must refuse extensions it does not implement, and we
    // implement none; `b64` (RFC 7797) would change what the signature covers.
    if members.contains_key("crit") || members.contains_key("b64") {
        return Err(TokenError::UnsupportedCritical);
    }
    Ok(Header {
        alg,
        kid: optional_string(members.remove("kid"), HeaderFault::Kid)?,
        typ: optional_string(members.remove("typ"), HeaderFault::Typ)?,
        jwk: match members.remove("jwk") {
            Some(Value::Object(jwk)) => Some(jwk),
            // Not an object: not a key, which the proof check reports as a missing one.
            _ => None,
        },
    })
}

fn optional_string(
    member: Option<Value>,
    fault: HeaderFault,
) -> Result<Option<Rc<str>>, TokenError> {
    match member {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(Rc::from(text))),
        Some(_) => Err(TokenError::MalformedHeader(fault)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use serde_json::json;

    const HEADER: &str = r#"{"alg":"RS256","kid":"key-1","typ":"at+jwt"}"#;
    const PAYLOAD: &str = r#"{"iss":"https://idp.example","sub":"alice","exp":1700000000}"#;

    fn limits() -> TokenLimits {
        TokenLimits {
            max_token_bytes: 4096,
            json: JsonLimits {
                max_depth: 4,
                max_members: 16,
            },
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.{}",
            b64(header.as_bytes()),
            b64(payload.as_bytes()),
            b64(b"sig")
        )
    }

    fn with_header(header: &str) -> String {
        token(header, PAYLOAD)
    }

    fn with_payload(payload: &str) -> String {
        token(HEADER, payload)
    }

    fn refusal(raw: &str) -> Option<TokenError> {
        parse(raw, &limits()).err()
    }

    fn header_of(raw: &str) -> Result<Header, TokenError> {
        parse(raw, &limits()).map(|jws| jws.header)
    }

    #[test]
    fn valid_token_yields_header_claims_signature_and_exact_signing_input() {
        let raw = token(HEADER, PAYLOAD);
        let (signing_input, _) = raw.rsplit_once('.').unwrap_or_default();
        let parsed = parse(&raw, &limits()).map(|jws| {
            (
                jws.header,
                Value::Object(jws.claims),
                jws.signing_input,
                jws.signature,
            )
        });
        assert_eq!(
            parsed,
            Ok((
                Header {
                    alg: Alg::RS256,
                    kid: Some("key-1".into()),
                    typ: Some("at+jwt".into()),
                    jwk: None,
                },
                json!({"iss":"https://idp.example","sub":"alice","exp":1700000000}),
                signing_input.as_bytes(),
                b"sig".to_vec(),
            ))
        );
        assert_eq!(
            signing_input,
            format!("{}.{}", b64(HEADER.as_bytes()), b64(PAYLOAD.as_bytes()))
        );
    }

    #[test]
    fn every_supported_algorithm_is_recognised() {
        for alg in Alg::ALL {
            let raw = with_header(&format!(r#"{{"alg":"{alg}"}}"#));
            assert_eq!(
                header_of(&raw),
                Ok(Header {
                    alg,
                    kid: None,
                    typ: None,
                    jwk: None
                })
            );
        }
    }

    #[test]
    fn size_is_checked_before_anything_else() {
        let raw = token(HEADER, PAYLOAD);
        let exact = TokenLimits {
            max_token_bytes: raw.len(),
            ..limits()
        };
        assert!(parse(&raw, &exact).is_ok());
        let one_short = TokenLimits {
            max_token_bytes: raw.len() - 1,
            ..limits()
        };
        assert_eq!(parse(&raw, &one_short).err(), Some(TokenError::TooLarge));
        // Garbage is refused for its size, not its shape.
        let garbage = ".".repeat(4097);
        assert_eq!(refusal(&garbage), Some(TokenError::TooLarge));
        assert_eq!(refusal(&garbage[1..]), Some(TokenError::NotCompact));
    }

    #[test]
    fn only_three_segments_are_a_compact_jws() {
        let h = b64(HEADER.as_bytes());
        let p = b64(PAYLOAD.as_bytes());
        for raw in [
            String::new(),
            h.clone(),
            format!("{h}.{p}"),
            format!("{h}.{p}.c2ln.c2ln"),
            format!("{h}.{p}.c2ln.c2ln.c2ln.c2ln"),
            // Empty header or payload segments.
            format!(".{p}.c2ln"),
            format!("{h}..c2ln"),
            "..".to_owned(),
        ] {
            assert_eq!(refusal(&raw), Some(TokenError::NotCompact), "{raw}");
        }
        let five = format!("{h}.{p}.c2ln.c2ln.c2ln");
        assert_eq!(refusal(&five), Some(TokenError::Jwe));
    }

    #[test]
    fn segments_must_be_strict_unpadded_base64url() {
        let h = b64(HEADER.as_bytes());
        let p = b64(PAYLOAD.as_bytes());
        let padded_header = URL_SAFE.encode(r#"{"alg":"RS256","kid":"1"}"#);
        assert!(padded_header.ends_with('='));
        let padded_payload = URL_SAFE.encode(r#"{"sub":"a"}"#);
        assert!(padded_payload.ends_with('='));
        let cases = [
            (format!("{padded_header}.{p}.c2ln"), Segment::Header),
            (format!("{h}.{padded_payload}.c2ln"), Segment::Payload),
            (format!("{h}.{p}.c2lnYQ=="), Segment::Signature),
            (format!("{h} .{p}.c2ln"), Segment::Header),
            (format!("{h}.{p}.c2ln\n"), Segment::Signature),
            (format!("{h}.{p}.c2 ln"), Segment::Signature),
            (format!("{h}.{p}.c2é"), Segment::Signature),
            // Length 1 mod 4 cannot be base64.
            (format!("{h}.{p}.c2lnY"), Segment::Signature),
            // "QR" carries non-zero bits after the last byte ("QQ" is the canonical 'A').
            (format!("{h}.{p}.QR"), Segment::Signature),
        ];
        for (raw, segment) in cases {
            assert_eq!(
                refusal(&raw),
                Some(TokenError::NotBase64Url(segment)),
                "{raw}"
            );
        }
        assert_eq!(
            parse(&format!("{h}.{p}.QQ"), &limits()).map(|jws| jws.signature),
            Ok(b"A".to_vec())
        );
    }

    #[test]
    fn standard_alphabet_is_refused() {
        let h = b64(HEADER.as_bytes());
        let p = b64(PAYLOAD.as_bytes());
        let bytes = [0xfb, 0xff, 0xbf];
        assert_eq!(STANDARD.encode(bytes), "+/+/");
        assert_eq!(b64(&bytes), "-_-_");
        assert_eq!(
            parse(&format!("{h}.{p}.-_-_"), &limits()).map(|jws| jws.signature),
            Ok(bytes.to_vec())
        );
        for sig in ["+/+/", "-_+_", "-_-/"] {
            assert_eq!(
                refusal(&format!("{h}.{p}.{sig}")),
                Some(TokenError::NotBase64Url(Segment::Signature)),
                "{sig}"
            );
        }
    }

    #[test]
    fn unsecured_tokens_are_refused_in_any_spelling() {
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            assert_eq!(refusal(&with_header(&header)), Some(TokenError::Unsecured));
            // The classic unsecured form, with no signature at all, says so too.
            let unsigned = format!("{}.{}.", b64(header.as_bytes()), b64(PAYLOAD.as_bytes()));
            assert_eq!(refusal(&unsigned), Some(TokenError::Unsecured));
        }
    }

    #[test]
    fn unknown_algorithms_are_refused_case_sensitively() {
        for alg in ["ES512", "rs256", "Rs256", "HS1", "RSA-OAEP", "", " RS256"] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            assert_eq!(
                refusal(&with_header(&header)),
                Some(TokenError::UnsupportedAlgorithm),
                "{alg}"
            );
        }
    }

    #[test]
    fn alg_must_be_a_present_string() {
        for header in [
            "{}",
            r#"{"kid":"k"}"#,
            r#"{"alg":null}"#,
            r#"{"alg":256}"#,
            r#"{"alg":["RS256"]}"#,
        ] {
            assert_eq!(
                refusal(&with_header(header)),
                Some(TokenError::MalformedHeader(HeaderFault::Alg)),
                "{header}"
            );
        }
    }

    #[test]
    fn kid_and_typ_must_be_strings() {
        for (header, fault) in [
            (r#"{"alg":"RS256","kid":1}"#, HeaderFault::Kid),
            (r#"{"alg":"RS256","kid":null}"#, HeaderFault::Kid),
            (r#"{"alg":"RS256","typ":["JWT"]}"#, HeaderFault::Typ),
            (r#"{"alg":"RS256","typ":{}}"#, HeaderFault::Typ),
        ] {
            assert_eq!(
                refusal(&with_header(header)),
                Some(TokenError::MalformedHeader(fault)),
                "{header}"
            );
        }
    }

    #[test]
    fn encrypted_tokens_are_refused() {
        for header in [
            r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#,
            r#"{"alg":"RS256","enc":"A128GCM"}"#,
            r#"{"alg":"dir","enc":null}"#,
        ] {
            assert_eq!(
                refusal(&with_header(header)),
                Some(TokenError::Jwe),
                "{header}"
            );
        }
    }

    #[test]
    fn critical_extensions_and_unencoded_payloads_are_refused() {
        for header in [
            r#"{"alg":"RS256","crit":["exp"],"exp":1}"#,
            r#"{"alg":"RS256","crit":[]}"#,
            r#"{"alg":"RS256","crit":"b64"}"#,
            r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#,
            r#"{"alg":"RS256","b64":false}"#,
            r#"{"alg":"RS256","b64":true}"#,
        ] {
            assert_eq!(
                refusal(&with_header(header)),
                Some(TokenError::UnsupportedCritical),
                "{header}"
            );
        }
    }

    #[test]
    fn key_locating_header_members_are_ignored() {
        // `jwk` is kept for the DPoP proof check alone; verification never reads it (tested in
        // verify and authorize: a token whose jwk would verify it is still refused).
        let header = r#"{"alg":"ES256","kid":"k","jku":"https://evil.example/jwks","x5u":"https://evil.example/cert","jwk":{"kty":"EC"},"x5c":["MII"]}"#;
        let jwk = json!({"kty": "EC"}).as_object().cloned();
        assert_eq!(
            header_of(&with_header(header)),
            Ok(Header {
                alg: Alg::ES256,
                kid: Some("k".into()),
                typ: None,
                jwk
            })
        );
    }

    #[test]
    fn header_must_be_one_strict_json_object() {
        let cases = [
            (r#"["RS256"]"#, JsonError::NotObject),
            (r#""RS256""#, JsonError::NotObject),
            ("256", JsonError::NotObject),
            (r#"{"alg":"RS256""#, JsonError::Syntax),
            (
                r#"{"alg":"none","alg":"RS256"}"#,
                JsonError::DuplicateMember,
            ),
            (
                r#"{"alg":"RS256","alg":"RS256"}"#,
                JsonError::DuplicateMember,
            ),
            (
                r#"{"alg":"RS256","jwk":{"kty":"RSA","kty":"EC"}}"#,
                JsonError::DuplicateMember,
            ),
        ];
        for (header, cause) in cases {
            assert_eq!(
                refusal(&with_header(header)),
                Some(TokenError::MalformedHeader(HeaderFault::Json(cause))),
                "{header}"
            );
        }
        let latin1 = format!(
            "{}.{}.c2ln",
            b64(b"{\"alg\":\"RS256\",\"kid\":\"\xe9\"}"),
            b64(PAYLOAD.as_bytes())
        );
        assert_eq!(
            refusal(&latin1),
            Some(TokenError::MalformedHeader(HeaderFault::Json(
                JsonError::InvalidUtf8
            )))
        );
    }

    #[test]
    fn empty_signature_is_refused_for_a_real_algorithm() {
        let raw = format!("{}.{}.", b64(HEADER.as_bytes()), b64(PAYLOAD.as_bytes()));
        assert_eq!(refusal(&raw), Some(TokenError::MalformedSignature));
    }

    #[test]
    fn payload_must_be_one_strict_json_object() {
        let cases = [
            ("[]", JsonError::NotObject),
            (r#"["sub"]"#, JsonError::NotObject),
            (r#""alice""#, JsonError::NotObject),
            ("1700000000", JsonError::NotObject),
            (r#"{"sub":"alice"} {}"#, JsonError::Syntax),
            (
                r#"{"sub":"alice","sub":"admin"}"#,
                JsonError::DuplicateMember,
            ),
            (
                r#"{"realm_access":{"roles":["a"],"roles":["admin"]}}"#,
                JsonError::DuplicateMember,
            ),
            (r#"{"a":{"b":{"c":{"d":{}}}}}"#, JsonError::TooDeep),
            (r#"{"a":[[[[]]]]}"#, JsonError::TooDeep),
        ];
        for (payload, cause) in cases {
            assert_eq!(
                refusal(&with_payload(payload)),
                Some(TokenError::MalformedPayload(cause)),
                "{payload}"
            );
        }
        let invalid_utf8 = format!(
            "{}.{}.c2ln",
            b64(HEADER.as_bytes()),
            b64(b"{\"sub\":\"\xff\xfe\"}")
        );
        assert_eq!(
            refusal(&invalid_utf8),
            Some(TokenError::MalformedPayload(JsonError::InvalidUtf8))
        );
    }

    #[test]
    fn payload_depth_and_size_limits_apply_at_their_boundary() {
        assert!(parse(&with_payload(r#"{"a":{"b":{"c":{"d":1}}}}"#), &limits()).is_ok());
        assert!(parse(&with_payload(r#"{"a":[[[]]]}"#), &limits()).is_ok());
        // 16 = 1 member + 15 elements; one more is refused.
        let at_limit = format!(r#"{{"a":[{}]}}"#, vec!["0"; 15].join(","));
        assert!(parse(&with_payload(&at_limit), &limits()).is_ok());
        let past_limit = format!(r#"{{"a":[{}]}}"#, vec!["0"; 16].join(","));
        assert_eq!(
            refusal(&with_payload(&past_limit)),
            Some(TokenError::MalformedPayload(JsonError::TooManyMembers))
        );
        let hostile = format!(r#"{{"a":{}}}"#, "[".repeat(1000));
        assert_eq!(
            refusal(&with_payload(&hostile)),
            Some(TokenError::MalformedPayload(JsonError::TooDeep))
        );
    }

    #[test]
    fn header_limits_apply_too() {
        let header = format!(r#"{{"alg":"RS256","x":[{}]}}"#, vec!["0"; 15].join(","));
        assert_eq!(
            refusal(&with_header(&header)),
            Some(TokenError::MalformedHeader(HeaderFault::Json(
                JsonError::TooManyMembers
            )))
        );
    }

    #[test]
    fn descriptions_follow_the_segment_and_reasons_stay_few() {
        assert_eq!(
            TokenError::NotBase64Url(Segment::Header).describe(),
            TokenError::MalformedHeader(HeaderFault::Alg).describe()
        );
        assert_eq!(
            TokenError::NotBase64Url(Segment::Payload).describe(),
            TokenError::MalformedPayload(JsonError::Syntax).describe()
        );
        assert_eq!(
            TokenError::NotBase64Url(Segment::Signature).describe(),
            TokenError::MalformedSignature.describe()
        );
        assert_eq!(TokenError::TooLarge.reason().name(), "too_large");
        assert_eq!(TokenError::NotCompact.reason().name(), "malformed");
        assert_eq!(
            TokenError::MalformedPayload(JsonError::TooDeep)
                .reason()
                .name(),
            "malformed"
        );
        assert_eq!(TokenError::Jwe.reason().name(), "unsupported");
        assert_eq!(TokenError::Unsecured.reason().name(), "algorithm");
        assert_eq!(
            TokenError::UnsupportedAlgorithm.reason().name(),
            "algorithm"
        );
    }

    #[test]
    fn limits_come_from_the_configuration() {
        let configured = crate::config::Limits {
            max_token_bytes: 100,
            max_json_depth: 2,
            max_json_members: 3,
            ..Default::default()
        };
        let limits = TokenLimits::from(&configured);
        assert_eq!(limits.max_token_bytes, 100);
        assert_eq!(limits.json.max_depth, 2);
        assert_eq!(limits.json.max_members, 3);
    }

    #[test]
    fn a_remembered_header_gives_the_same_answers_as_parsing_it() {
        let mut memo = HeaderMemo::default();
        let headers = [
            HEADER,
            r#"{"alg":"ES256","kid":"k2"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"RS256","crit":["exp"]}"#,
            r#"{"alg":"RS256","kid":7}"#,
            r#"{"alg":"EdDSA","typ":"JWT"}"#,
            r#"{"alg":"PS256"}"#,
            r#"{"alg":"RS384","kid":"k3"}"#,
        ];
        let payloads = [PAYLOAD, "[]", r#"{"a":1,"a":2}"#];
        let mut tokens: Vec<String> = Vec::new();
        for header in headers {
            for payload in payloads {
                tokens.push(token(header, payload));
            }
            // A remembered header before a payload that is not base64url at all.
            tokens.push(format!("{}.!!.{}", b64(header.as_bytes()), b64(b"sig")));
            tokens.push(format!(
                "{}.{}.",
                b64(header.as_bytes()),
                b64(PAYLOAD.as_bytes())
            ));
        }
        // Twice over, so that every header is met remembered and (with more headers than
        // the memo keeps) forgotten again.
        for raw in tokens.iter().chain(tokens.iter()) {
            let plain = parse(raw, &limits()).map(|jws| (jws.header, jws.claims, jws.signature));
            let remembered = parse_remembering(raw, &limits(), &mut memo)
                .map(|jws| (jws.header, jws.claims, jws.signature));
            assert_eq!(remembered, plain);
        }
        assert!(memo.entries.len() <= REMEMBERED_HEADERS);
        assert!(
            memo.entries.iter().all(|(segment, header)| {
                parse_header(
                    &decode(segment, Segment::Header).unwrap_or_default(),
                    limits().json,
                    Alg::from_name,
                )
                .as_ref()
                    == Ok(header)
            }),
            "only headers that parsed are kept, each with its own parse"
        );
    }

    #[test]
    fn a_header_with_a_key_is_not_remembered() {
        let mut memo = HeaderMemo::default();
        let raw = with_header(r#"{"alg":"ES256","jwk":{"kty":"EC"}}"#);
        assert!(parse_remembering(&raw, &limits(), &mut memo).is_ok());
        assert!(memo.entries.is_empty());
    }
}
