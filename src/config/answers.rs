//! `answers` and `denyWith`: how a refusal looks to the client. The decision and its reason
//! never change here; metrics and the audit line keep the reason whatever the client sees.

use super::*;

/// `answers`: what a refusal tells the client about why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answers {
    /// The error code and its description (challenge and JSON body), the default.
    #[default]
    Full,
    /// The error code only: no `error_description`, no body (Envoy's `strip_failure_response`).
    Minimal,
}

/// `denyWith`: a refusal's status, extra headers, body, and a login redirect for browsers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DenyWith {
    /// Never below the refusal's own status: a refusal cannot read as success or as less.
    pub status: Option<u32>,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Option<BodyTemplate>,
    /// `contentType` of `body`, default `text/plain; charset=utf-8`.
    pub content_type: Option<String>,
    pub login: Option<LoginRedirect>,
}

/// A body with `{error}`, `{status}` and `{request_id}` filled in; never a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTemplate(pub Vec<BodyPiece>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyPiece {
    Text(String),
    Error,
    Status,
    RequestId,
}

/// `denyWith.login`: a browser sent without a (valid) token goes to `url`, with the path it
/// asked for in `parameter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRedirect {
    /// An absolute http(s) URL or a path on this host.
    pub url: String,
    /// Default `return_to`.
    pub parameter: String,
}

pub(super) fn parse_answers(value: &Value, path: &At<'_>) -> Parsed<Answers> {
    match value.as_str() {
        Some("full") => Ok(Answers::Full),
        Some("minimal") => Ok(Answers::Minimal),
        _ => Err(error(path, "must be \"full\" or \"minimal\"")),
    }
}

const MAX_BODY_BYTES: usize = 4096;

/// Headers the refusal itself owns: a configured value would contradict or forge it.
const RESERVED_HEADERS: &[&str] = &[
    "www-authenticate",
    "retry-after",
    "location",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "grpc-status",
    "grpc-message",
];

pub(super) fn parse_deny_with(value: &Value, path: &At<'_>) -> Parsed<DenyWith> {
    let deny_with = Object::new(
        value,
        path,
        &["status", "headers", "body", "contentType", "login"],
    )?;
    let status = deny_with.optional("status", |value, path| {
        match non_negative_integer(value, path)? {
            status @ 400..=599 => Ok(status as u32),
            _ => Err(error(
                path,
                "must be an error status from 400 to 599; it never lowers the refusal's own",
            )),
        }
    })?;
    let headers = deny_with
        .optional("headers", parse_extra_headers)?
        .unwrap_or_default();
    let body = deny_with.optional("body", parse_body_template)?;
    let content_type = deny_with.optional("contentType", |value, path| {
        let text = non_empty_string(value, path)?;
        if !header_safe(&text) {
            return Err(error(
                path,
                "holds characters not allowed in a header value",
            ));
        }
        Ok(text)
    })?;
    if content_type.is_some() && body.is_none() {
        return Err(error(
            deny_with.path_of("contentType"),
            "has no body to describe; add body",
        ));
    }
    let login = deny_with.optional("login", parse_login)?;
    Ok(DenyWith {
        status,
        headers,
        body,
        content_type,
        login,
    })
}

fn parse_extra_headers(value: &Value, path: &At<'_>) -> Parsed<Vec<(String, String)>> {
    let Value::Object(members) = value else {
        return Err(error(path, "must be an object of header names and values"));
    };
    let mut headers = Vec::with_capacity(members.len());
    for (name, value) in members {
        let at = path.field(name);
        let name = header_name(&Value::String(name.clone()), &at)?;
        if RESERVED_HEADERS.contains(&name.as_str()) {
            return Err(error(
                at,
                "is set by the refusal itself and cannot be configured",
            ));
        }
        let value = string(value, &at)?;
        if !header_safe(&value) {
            return Err(error(at, "holds characters not allowed in a header value"));
        }
        headers.push((name, value));
    }
    Ok(headers)
}

/// Visible ASCII and spaces: nothing that could end a header line.
fn header_safe(text: &str) -> bool {
    text.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

fn parse_body_template(value: &Value, path: &At<'_>) -> Parsed<BodyTemplate> {
    let text = string(value, path)?;
    if text.len() > MAX_BODY_BYTES {
        return Err(error(path, format!("is over {MAX_BODY_BYTES} bytes")));
    }
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find(['{', '}']) {
        literal.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(error(
                path,
                "has a lone '}'; write '}}' for a literal brace",
            ));
        } else {
            let end = tail.find('}').ok_or_else(|| {
                error(
                    path,
                    "has a '{' without its '}'; write '{{' for a literal brace",
                )
            })?;
            let piece = match &tail[1..end] {
                "error" => BodyPiece::Error,
                "status" => BodyPiece::Status,
                "request_id" => BodyPiece::RequestId,
                other => {
                    return Err(error(
                        path,
                        format!("names {{{other}}}; a body may use {{error}}, {{status}} and {{request_id}}"),
                    ))
                }
            };
            if !literal.is_empty() {
                pieces.push(BodyPiece::Text(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            rest = &tail[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(BodyPiece::Text(literal));
    }
    Ok(BodyTemplate(pieces))
}

fn parse_login(value: &Value, path: &At<'_>) -> Parsed<LoginRedirect> {
    let login = Object::new(value, path, &["url", "parameter"])?;
    let url = login.required("url", |value, path| {
        let url = non_empty_string(value, path)?;
        if url.contains('#') {
            return Err(error(path, "must not have a fragment"));
        }
        if url.starts_with('/') {
            // `//host` is another origin to a browser.
            if url.starts_with("//")
                || url.contains('\\')
                || !header_safe(&url)
                || url.contains(' ')
            {
                return Err(error(
                    path,
                    "a path must start with a single '/' and hold no spaces or '\\'",
                ));
            }
            return Ok(url);
        }
        HttpUrl::parse(url.clone(), path)?;
        Ok(url)
    })?;
    let parameter = login
        .optional("parameter", |value, path| {
            let name = non_empty_string(value, path)?;
            if !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(error(
                    path,
                    "may hold only letters, digits, '-', '_' and '.'",
                ));
            }
            Ok(name)
        })?
        .unwrap_or_else(|| "return_to".to_string());
    Ok(LoginRedirect { url, parameter })
}
