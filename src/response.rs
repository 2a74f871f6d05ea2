//! Turning a refusal into the answer OAuth clients expect (RFC 6750 §3).

use crate::config::{Answers, BodyPiece, DenyWith, LoginRedirect};
use crate::reason::Reason;
use serde_json::json;

/// Why a request is refused. Descriptions are fixed strings: they never echo token contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// 400: more than one token, or a path that cannot be matched safely.
    InvalidRequest(&'static str),
    /// 401 without an error code: a token was needed and none was sent.
    MissingToken,
    /// 401 `invalid_token`; `reason` is the short code for metrics and logs.
    InvalidToken {
        description: &'static str,
        reason: Reason,
    },
    /// 403 `insufficient_scope` with the scopes that were missing.
    MissingScopes(Vec<String>),
    /// 403 `insufficient_scope` because a claim condition failed.
    ClaimFailed,
    /// 403 by a `deny` rule or `unmatched: deny`.
    Forbidden,
    /// 403: the client or actor (RFC 8693 delegation) is not one the rule accepts.
    DelegationRefused(&'static str),
    /// 503: no signing keys could be had for the token's issuer.
    KeysUnavailable { retry_after_seconds: u64 },
    /// 401 `invalid_dpop_proof` (RFC 9449 §7.1): the DPoP proof failed a check.
    InvalidProof {
        description: &'static str,
        reason: Reason,
    },
    /// 503: the sidecar could not record a DPoP proof, so it cannot promise single use.
    ReplayUnavailable,
    /// 401 `insufficient_user_authentication` (RFC 9470): authenticate again, as described.
    StepUp {
        acr_values: Option<Vec<String>>,
        max_age: Option<u64>,
    },
}

/// The authentication schemes a configuration accepts, for the challenges of a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenges {
    pub bearer: bool,
    /// `algs` of the DPoP challenge (RFC 9449 §7.1) when some provider accepts DPoP.
    pub dpop_algs: Option<String>,
    /// RFC 9728 §5.1: where a 401's client finds how to get a token.
    pub resource_metadata: Option<String>,
    /// The scopes the deciding rule requires, so a client asks for them (RFC 6750 §3, the MCP
    /// specification's scope selection).
    pub scope: Option<String>,
}

impl Challenges {
    pub const BEARER: Challenges = Challenges {
        bearer: true,
        dpop_algs: None,
        resource_metadata: None,
        scope: None,
    };

    /// The configuration's challenges; for a protected resource (RFC 9728) also the scopes of
    /// the rule that decided (`rule`: its index; the first alternative's for `requiresAny`).
    /// Without `protectedResource` a missing token's challenge stays `Bearer realm="…"`, as the
    /// configuration contract gives it.
    pub fn for_request(
        config: &crate::compile::Compiled,
        rule: Option<usize>,
        authority: &str,
    ) -> Challenges {
        use crate::config::Action;
        let resource = config.resource_for(authority);
        let scopes = rule
            .filter(|_| resource.is_some())
            .and_then(|index| config.rules.get(index))
            .and_then(|rule| match &rule.action {
                Action::Requires(requirement) => Some(&requirement.scopes),
                Action::RequiresAny(alternatives) => alternatives
                    .iter()
                    .map(|r| &r.scopes)
                    .find(|scopes| !scopes.is_empty()),
                _ => None,
            })
            .filter(|scopes| !scopes.is_empty());
        Challenges {
            scope: scopes.map(|scopes| scopes.join(" ")),
            resource_metadata: resource.map(|r| r.metadata_url.clone()),
            ..Challenges::for_config(config)
        }
    }

    /// Bearer unless every provider requires DPoP; DPoP with the union of the algorithms of
    /// the providers that accept it.
    pub fn for_config(config: &crate::config::Config) -> Challenges {
        use crate::config::Binding;
        let dpop: Vec<&crate::config::Provider> = config
            .providers
            .iter()
            .filter(|p| p.dpop.mode != Binding::Off)
            .collect();
        let mut algs = crate::alg::AlgSet::EMPTY;
        for provider in &dpop {
            for alg in provider.dpop.algorithms.iter() {
                algs.insert(alg);
            }
        }
        let names: Vec<&str> = algs.iter().map(|alg| alg.name()).collect();
        Challenges {
            bearer: config.providers.is_empty()
                || config
                    .providers
                    .iter()
                    .any(|p| p.dpop.mode != Binding::Required),
            dpop_algs: (!dpop.is_empty()).then(|| names.join(" ")),
            resource_metadata: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// For a gRPC client: the status it reads (`grpc-status`), with `body` as `grpc-message`.
    pub grpc_status: Option<u32>,
}

impl Denial {
    /// Why, for metrics and logs.
    pub fn reason(&self) -> Reason {
        match self {
            Denial::InvalidRequest(_) => Reason::InvalidRequest,
            Denial::MissingToken => Reason::Missing,
            Denial::InvalidToken { reason, .. } => *reason,
            Denial::MissingScopes(_) => Reason::Scope,
            Denial::ClaimFailed => Reason::Claim,
            Denial::Forbidden => Reason::DenyRule,
            Denial::DelegationRefused(_) => Reason::Delegation,
            Denial::KeysUnavailable { .. } => Reason::KeysUnavailable,
            Denial::InvalidProof { reason, .. } => *reason,
            Denial::ReplayUnavailable => Reason::DpopReplayUnavailable,
            Denial::StepUp { .. } => Reason::StepUp,
        }
    }

    /// The answer for a configuration that accepts bearer tokens only.
    pub fn render(&self, realm: &str) -> Response {
        self.render_for(realm, &Challenges::BEARER)
    }

    pub fn render_for(&self, realm: &str, schemes: &Challenges) -> Response {
        self.answer(realm, schemes, &Presentation::default())
    }

    /// The refusal as this client gets it: `answers`, the deciding rule's `denyWith`, and
    /// gRPC or a browser shape it; the decision and its reason stay as they are.
    pub fn answer(&self, realm: &str, schemes: &Challenges, how: &Presentation<'_>) -> Response {
        let minimal = how.answers == Answers::Minimal;
        // `, error_description="…"`, unless the answers are minimal.
        let described = |description: &str| {
            if minimal {
                String::new()
            } else {
                format!(", error_description=\"{description}\"")
            }
        };
        let realm = quoted_safe(realm);
        // Parameters of the challenge, for each accepted scheme; `None`: no challenge.
        let (status, params, error, description): (u32, Option<String>, &str, &str) = match self {
            Denial::InvalidRequest(description) => (400, None, "invalid_request", description),
            // RFC 6750 §3.1: no error code in the challenge when no token was sent.
            Denial::MissingToken => (
                401,
                Some(String::new()),
                "missing_token",
                "a bearer token is required",
            ),
            Denial::InvalidToken { description, .. } => (
                401,
                Some(format!(
                    ", error=\"invalid_token\"{}",
                    described(description)
                )),
                "invalid_token",
                description,
            ),
            Denial::MissingScopes(scopes) => (
                403,
                Some(format!(
                    ", error=\"insufficient_scope\", scope=\"{}\"",
                    quoted_safe(&scopes.join(" "))
                )),
                "insufficient_scope",
                "token lacks a required scope",
            ),
            Denial::ClaimFailed => (
                403,
                Some(", error=\"insufficient_scope\"".to_string()),
                "insufficient_scope",
                "token lacks a required claim value",
            ),
            Denial::Forbidden => (
                403,
                None,
                "access_denied",
                "access to this resource is denied",
            ),
            Denial::DelegationRefused(description) => (
                403,
                Some(format!(
                    ", error=\"insufficient_scope\"{}",
                    described(description)
                )),
                "insufficient_scope",
                description,
            ),
            Denial::KeysUnavailable { .. } => (
                503,
                None,
                "temporarily_unavailable",
                "signing keys for the token issuer are not available",
            ),
            Denial::InvalidProof { description, .. } => (
                401,
                Some(format!(
                    ", error=\"invalid_dpop_proof\"{}",
                    described(description)
                )),
                "invalid_dpop_proof",
                description,
            ),
            Denial::ReplayUnavailable => (
                503,
                None,
                "temporarily_unavailable",
                "the DPoP replay memory is full; retry with a new proof",
            ),
            Denial::StepUp {
                acr_values,
                max_age,
            } => {
                let description = "a stronger or more recent user authentication is required";
                let mut params = format!(
                    ", error=\"insufficient_user_authentication\"{}",
                    described(description)
                );
                if let Some(acr_values) = acr_values {
                    params.push_str(&format!(
                        ", acr_values=\"{}\"",
                        quoted_safe(&acr_values.join(" "))
                    ));
                }
                if let Some(max_age) = max_age {
                    params.push_str(&format!(", max_age={max_age}"));
                }
                (
                    401,
                    Some(params),
                    "insufficient_user_authentication",
                    description,
                )
            }
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        if let Some(mut params) = params {
            // A missing-scopes refusal names the scopes it lacks already.
            if let (Some(scope), false) = (&schemes.scope, matches!(self, Denial::MissingScopes(_)))
            {
                params.push_str(&format!(", scope=\"{}\"", quoted_safe(scope)));
            }
            // RFC 9728 §5.1; the MCP specification names it on a 403 scope challenge too.
            if let (401 | 403, Some(url)) = (status, &schemes.resource_metadata) {
                params.push_str(&format!(", resource_metadata=\"{}\"", quoted_safe(url)));
            }
            let proof_error = matches!(self, Denial::InvalidProof { .. });
            // A proof error concerns the DPoP scheme only; the Bearer challenge stays plain.
            if schemes.bearer || schemes.dpop_algs.is_none() {
                let bearer_params = if proof_error { "" } else { params.as_str() };
                headers.push((
                    "www-authenticate".to_string(),
                    format!("Bearer realm=\"{realm}\"{bearer_params}"),
                ));
            }
            if let Some(algs) = &schemes.dpop_algs {
                headers.push((
                    "www-authenticate".to_string(),
                    format!("DPoP realm=\"{realm}\", algs=\"{algs}\"{params}"),
                ));
            }
        }
        let retry_after = match self {
            Denial::KeysUnavailable {
                retry_after_seconds,
            } => Some(*retry_after_seconds),
            Denial::ReplayUnavailable => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.push(("retry-after".to_string(), seconds.to_string()));
        }
        let mut response = Response {
            status,
            headers,
            body: String::new(),
            grpc_status: None,
        };
        if !minimal {
            response.set_body(
                "application/json",
                json!({ "error": error, "error_description": description }).to_string(),
            );
        }
        if let Some(deny_with) = how.deny_with {
            if let (Some(login), true, 401) = (&deny_with.login, how.browser && !how.grpc, status) {
                return login_redirect(login, how.path, &deny_with.headers);
            }
            response.apply(deny_with, error, how.request_id);
        }
        if how.grpc {
            // Envoy answers a gRPC request with a trailers-only response: this status, and
            // the body as `grpc-message`.
            response.grpc_status = Some(grpc_status_of(response.status));
            response.headers.retain(|(name, _)| name != "content-type");
            response.body = if minimal { error } else { description }.to_string();
        }
        response
    }
}

impl Response {
    fn set_body(&mut self, content_type: &str, body: String) {
        self.headers.retain(|(name, _)| name != "content-type");
        self.headers
            .insert(0, ("content-type".to_string(), content_type.to_string()));
        self.body = body;
    }

    /// `denyWith`: a status never below the refusal's own (a changed status drops the
    /// challenges, which speak for the original one), extra headers, a body of safe values.
    fn apply(&mut self, deny_with: &DenyWith, error: &str, request_id: Option<&str>) {
        if let Some(status) = deny_with.status.filter(|s| *s > self.status) {
            self.status = status;
            self.headers.retain(|(name, _)| name != "www-authenticate");
        }
        self.headers.extend(deny_with.headers.iter().cloned());
        if let Some(template) = &deny_with.body {
            let request_id = request_id.filter(|id| safe_request_id(id)).unwrap_or("");
            let mut body = String::new();
            for piece in &template.0 {
                match piece {
                    BodyPiece::Text(text) => body.push_str(text),
                    BodyPiece::Error => body.push_str(error),
                    BodyPiece::Status => body.push_str(&self.status.to_string()),
                    BodyPiece::RequestId => body.push_str(request_id),
                }
            }
            let content_type = deny_with
                .content_type
                .as_deref()
                .unwrap_or("text/plain; charset=utf-8");
            self.set_body(content_type, body);
        }
    }
}

/// What shapes a refusal besides the denial itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presentation<'a> {
    pub answers: Answers,
    /// The deciding rule's `denyWith`, else the top-level one.
    pub deny_with: Option<&'a DenyWith>,
    /// `content-type: application/grpc…`: the refusal is a gRPC status.
    pub grpc: bool,
    /// A browser navigation: GET or HEAD that accepts `text/html`.
    pub browser: bool,
    /// `:path` as sent.
    pub path: &'a str,
    /// `x-request-id`, only if it holds nothing but safe characters.
    pub request_id: Option<&'a str>,
}

impl<'a> Presentation<'a> {
    pub fn of(
        config: &'a crate::config::Config,
        rule: Option<usize>,
        method: &str,
        path: &'a str,
        headers: &[(&'a str, &'a str)],
    ) -> Presentation<'a> {
        let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let accepts_html = headers
            .iter()
            .filter(|(n, _)| *n == "accept")
            .flat_map(|(_, v)| v.split(','))
            .any(|media| {
                let media = media.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case("text/html")
            });
        Presentation {
            answers: config.answers,
            deny_with: rule
                .and_then(|index| config.rules.get(index))
                .and_then(|rule| rule.deny_with.as_ref())
                .or(config.deny_with.as_ref()),
            grpc: header("content-type").is_some_and(is_grpc),
            browser: accepts_html && matches!(method, "GET" | "HEAD"),
            path,
            request_id: header("x-request-id"),
        }
    }
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc;…` (not gRPC-Web, which
/// its own filter turns into gRPC before us).
fn is_grpc(content_type: &str) -> bool {
    let lower = content_type.trim().to_ascii_lowercase();
    lower
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

/// The gRPC status a client reads for an HTTP status (gRPC's HTTP-to-gRPC mapping), except
/// 400: our 400s are the caller's malformed request, INVALID_ARGUMENT, not INTERNAL.
pub fn grpc_status_of(http_status: u32) -> u32 {
    match http_status {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

fn safe_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// 302 to the login URL with the path the browser asked for (no query: it may hold a
/// token), which is always a path on this host, never a URL elsewhere.
fn login_redirect(login: &LoginRedirect, path: &str, extra: &[(String, String)]) -> Response {
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let path = if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') {
        path
    } else {
        "/"
    };
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    let separator = if login.url.contains('?') { '&' } else { '?' };
    let mut headers = vec![
        (
            "location".to_string(),
            format!("{}{separator}{}={encoded}", login.url, login.parameter),
        ),
        ("cache-control".to_string(), "no-store".to_string()),
    ];
    headers.extend(extra.iter().cloned());
    Response {
        status: 302,
        headers,
        body: String::new(),
        grpc_status: None,
    }
}

/// Keeps a value safe inside an RFC 7230 quoted-string: the realm may come from the request's
/// `:authority`, which a client controls.
fn quoted_safe(value: &str) -> String {
    value
        .chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'r>(response: &'r Response, name: &str) -> Option<&'r str> {
        response
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn missing_token_is_a_bare_challenge() {
        let r = Denial::MissingToken.render("orders");
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"orders\"")
        );
    }

    #[test]
    fn invalid_token_names_the_cause() {
        let r = Denial::InvalidToken {
            description: "token is expired",
            reason: crate::reason::Reason::Expired,
        }
        .render("orders");
        assert_eq!(r.status, 401);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"token is expired\"")
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "token is expired");
    }

    #[test]
    fn missing_scopes_are_listed() {
        let r =
            Denial::MissingScopes(vec!["orders:read".into(), "orders:write".into()]).render("r");
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"insufficient_scope\", scope=\"orders:read orders:write\"")
        );
    }

    #[test]
    fn claim_failure_has_no_scope_parameter() {
        let r = Denial::ClaimFailed.render("r");
        assert_eq!(r.status, 403);
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"insufficient_scope\"")
        );
    }

    #[test]
    fn deny_and_bad_request_carry_no_challenge() {
        let deny = Denial::Forbidden.render("r");
        assert_eq!(deny.status, 403);
        assert_eq!(header(&deny, "www-authenticate"), None);
        let bad = Denial::InvalidRequest("more than one token in the request").render("r");
        assert_eq!(bad.status, 400);
        assert_eq!(header(&bad, "www-authenticate"), None);
        let body: serde_json::Value = serde_json::from_str(&bad.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
    }

    #[test]
    fn unavailable_keys_ask_to_retry() {
        let r = Denial::KeysUnavailable {
            retry_after_seconds: 5,
        }
        .render("r");
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("5"));
    }

    #[test]
    fn client_controlled_realm_cannot_break_the_header() {
        let r = Denial::MissingToken.render("evil\"\r\nx: y");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"evilx: y\"")
        );
    }

    #[test]
    fn dpop_challenges_name_the_algorithms_and_carry_the_error() {
        let challenges_of = |r: &Response| -> Vec<String> {
            r.headers
                .iter()
                .filter(|(n, _)| n == "www-authenticate")
                .map(|(_, v)| v.clone())
                .collect()
        };
        let dpop_only = Challenges {
            bearer: false,
            dpop_algs: Some("ES256 EdDSA".into()),
            resource_metadata: None,
            scope: None,
        };
        let both = Challenges {
            bearer: true,
            dpop_algs: Some("ES256".into()),
            resource_metadata: None,
            scope: None,
        };
        assert_eq!(
            challenges_of(&Denial::MissingToken.render_for("r", &dpop_only)),
            ["DPoP realm=\"r\", algs=\"ES256 EdDSA\""]
        );
        let proof = Denial::InvalidProof {
            description: "DPoP proof htm does not match the request method",
            reason: crate::reason::Reason::DpopHtm,
        };
        let answer = proof.render_for("r", &both);
        assert_eq!(answer.status, 401);
        assert_eq!(
            challenges_of(&answer),
            [
                "Bearer realm=\"r\"".to_string(),
                "DPoP realm=\"r\", algs=\"ES256\", error=\"invalid_dpop_proof\", error_description=\"DPoP proof htm does not match the request method\"".to_string()
            ]
        );
        assert!(answer.body.contains("invalid_dpop_proof"));
        let replay = Denial::ReplayUnavailable.render_for("r", &both);
        assert_eq!(replay.status, 503);
        assert!(replay
            .headers
            .contains(&("retry-after".to_string(), "1".to_string())));
        // Bearer only, as before.
        assert_eq!(
            challenges_of(&Denial::MissingToken.render("r")),
            ["Bearer realm=\"r\""]
        );
    }

    #[test]
    fn step_up_challenge_carries_acr_values_and_max_age() {
        let answer = Denial::StepUp {
            acr_values: Some(vec!["urn:mfa".into(), "phr".into()]),
            max_age: Some(300),
        }
        .render("r");
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.headers[1].1,
            "Bearer realm=\"r\", error=\"insufficient_user_authentication\", error_description=\"a stronger or more recent user authentication is required\", acr_values=\"urn:mfa phr\", max_age=300"
        );
        let only_age = Denial::StepUp {
            acr_values: None,
            max_age: Some(60),
        }
        .render("r");
        assert!(only_age.headers[1].1.ends_with("required\", max_age=60"));
        assert!(answer.body.contains("insufficient_user_authentication"));
    }

    #[test]
    fn every_401_names_the_resource_metadata() {
        let schemes = Challenges {
            bearer: true,
            dpop_algs: None,
            resource_metadata: Some("https://h/.well-known/oauth-protected-resource/mcp".into()),
            scope: None,
        };
        let named = "resource_metadata=\"https://h/.well-known/oauth-protected-resource/mcp\"";
        for denial in [
            Denial::MissingToken,
            Denial::InvalidToken {
                description: "token expired",
                reason: crate::reason::Reason::Expired,
            },
        ] {
            let answer = denial.render_for("r", &schemes);
            assert!(answer.headers[1].1.ends_with(named), "{:?}", answer.headers);
        }
        // And a 403 scope challenge, where the client may need to ask again (MCP).
        let scope = Denial::MissingScopes(vec!["tools:call".into()]).render_for("r", &schemes);
        assert!(scope.headers[1].1.ends_with(named), "{:?}", scope.headers);
    }

    #[test]
    fn the_deciding_rules_scopes_are_named() {
        let schemes = Challenges {
            scope: Some("tools:call tools:list".into()),
            ..Challenges::BEARER
        };
        let missing = Denial::MissingToken.render_for("r", &schemes);
        assert_eq!(
            missing.headers[1].1,
            "Bearer realm=\"r\", scope=\"tools:call tools:list\""
        );
        // The refusal for missing scopes names the missing ones only.
        let lacking = Denial::MissingScopes(vec!["tools:list".into()]).render_for("r", &schemes);
        assert_eq!(
            lacking.headers[1].1,
            "Bearer realm=\"r\", error=\"insufficient_scope\", scope=\"tools:list\""
        );
    }

    fn configured(json: serde_json::Value) -> crate::compile::Compiled {
        let mut config =
            json!({"providers": [{"issuer": "https://idp", "jwksUri": "https://idp/k"}]});
        for (k, v) in json.as_object().unwrap() {
            config[k] = v.clone();
        }
        crate::compile::configure(&config.to_string()).unwrap()
    }

    fn answered(
        config: &crate::compile::Compiled,
        denial: &Denial,
        headers: &[(&str, &str)],
    ) -> Response {
        answered_at(config, denial, "GET", "/orders/7?x=1", headers)
    }

    fn answered_at(
        config: &crate::compile::Compiled,
        denial: &Denial,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let rule = (!config.rules.is_empty()).then_some(0);
        let how = Presentation::of(config, rule, method, path, headers);
        denial.answer("r", &Challenges::BEARER, &how)
    }

    const EXPIRED: Denial = Denial::InvalidToken {
        description: "token is expired",
        reason: crate::reason::Reason::Expired,
    };

    #[test]
    fn minimal_answers_keep_the_error_code_and_drop_the_description_and_body() {
        let config = configured(json!({"answers": "minimal"}));
        let r = answered(&config, &EXPIRED, &[]);
        assert_eq!(r.status, 401);
        assert_eq!(
            r.headers,
            [(
                "www-authenticate".to_string(),
                "Bearer realm=\"r\", error=\"invalid_token\"".to_string()
            )]
        );
        assert_eq!(r.body, "");
        let scopes = answered(&config, &Denial::MissingScopes(vec!["a".into()]), &[]);
        assert_eq!(
            header(&scopes, "www-authenticate"),
            Some("Bearer realm=\"r\", error=\"insufficient_scope\", scope=\"a\""),
            "the scopes to ask for are not a detail of why"
        );
        assert_eq!(
            EXPIRED.reason().name(),
            "expired",
            "the reason stays for logs and metrics"
        );
    }

    #[test]
    fn deny_with_never_lowers_the_status_and_fills_only_safe_variables() {
        let config = configured(json!({"denyWith": {
            "status": 404,
            "headers": {"x-frame-options": "DENY"},
            "body": "{{\"error\":\"{error}\",\"status\":{status},\"id\":\"{request_id}\"}}",
            "contentType": "application/json"}}));
        let hidden = answered(&config, &EXPIRED, &[("x-request-id", "abc-123")]);
        assert_eq!(hidden.status, 404);
        assert_eq!(
            header(&hidden, "www-authenticate"),
            None,
            "a 404 challenges nothing"
        );
        assert_eq!(header(&hidden, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&hidden, "content-type"), Some("application/json"));
        assert_eq!(
            hidden.body,
            r#"{"error":"invalid_token","status":404,"id":"abc-123"}"#
        );
        let unavailable = answered(
            &config,
            &Denial::KeysUnavailable {
                retry_after_seconds: 2,
            },
            &[("x-request-id", "\"><script>")],
        );
        assert_eq!(unavailable.status, 503, "never below the refusal's own");
        assert_eq!(header(&unavailable, "retry-after"), Some("2"));
        assert_eq!(
            unavailable.body, r#"{"error":"temporarily_unavailable","status":503,"id":""}"#,
            "an unsafe request id is left out"
        );
    }

    #[test]
    fn a_rules_deny_with_replaces_the_top_level_one() {
        let config = configured(json!({
            "denyWith": {"status": 404},
            "rules": [{"match": {"paths": ["/"]}, "requires": {"scopes": ["a"]},
                       "denyWith": {"headers": {"x-rule": "1"}}}]}));
        let r = answered(&config, &EXPIRED, &[]);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "x-rule"), Some("1"));
        assert!(header(&r, "www-authenticate").is_some());
    }

    #[test]
    fn a_browser_without_a_valid_token_is_sent_to_log_in_with_its_path() {
        let config = configured(json!({"denyWith": {
            "login": {"url": "https://login.example.com/start?app=shop", "parameter": "next"}}}));
        let browser = [("accept", "text/html,application/xhtml+xml;q=0.9")];
        let r = answered_at(
            &config,
            &Denial::MissingToken,
            "GET",
            "/orders/7 x?access_token=t",
            &browser,
        );
        assert_eq!(r.status, 302);
        assert_eq!(
            header(&r, "location"),
            Some("https://login.example.com/start?app=shop&next=/orders/7%20x"),
            "the path only: the query may hold a token"
        );
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        let elsewhere = answered_at(
            &config,
            &Denial::MissingToken,
            "GET",
            "//evil.example/x",
            &browser,
        );
        assert_eq!(
            header(&elsewhere, "location"),
            Some("https://login.example.com/start?app=shop&next=/"),
            "never a path another origin could be read from"
        );
        // Not a navigation, not a 401, or not a browser: the refusal as it is.
        for (method, denial, headers) in [
            ("POST", Denial::MissingToken, &browser[..]),
            ("GET", Denial::Forbidden, &browser[..]),
            (
                "GET",
                Denial::MissingToken,
                &[("accept", "application/json")][..],
            ),
            (
                "GET",
                Denial::MissingToken,
                &[
                    ("accept", "text/html"),
                    ("content-type", "application/grpc"),
                ][..],
            ),
        ] {
            let r = answered_at(&config, &denial, method, "/x", headers);
            assert_ne!(r.status, 302, "{method} {denial:?} {headers:?}");
        }
    }

    #[test]
    fn grpc_clients_get_a_grpc_status_with_the_description_as_message() {
        let config = configured(json!({}));
        let grpc = [("content-type", "application/grpc+proto")];
        for (denial, code) in [
            (EXPIRED, 16),
            (Denial::MissingToken, 16),
            (Denial::MissingScopes(vec!["a".into()]), 7),
            (Denial::Forbidden, 7),
            (
                Denial::KeysUnavailable {
                    retry_after_seconds: 1,
                },
                14,
            ),
            (
                Denial::InvalidRequest("more than one token in the request"),
                3,
            ),
        ] {
            let r = answered(&config, &denial, &grpc);
            assert_eq!(r.grpc_status, Some(code), "{denial:?}");
            assert_eq!(
                header(&r, "content-type"),
                None,
                "Envoy writes application/grpc"
            );
        }
        let r = answered(&config, &EXPIRED, &grpc);
        assert_eq!(r.body, "token is expired");
        assert!(
            header(&r, "www-authenticate").is_some(),
            "the challenge stays"
        );
        let minimal = configured(json!({"answers": "minimal"}));
        assert_eq!(answered(&minimal, &EXPIRED, &grpc).body, "invalid_token");
        assert_eq!(
            answered(
                &config,
                &EXPIRED,
                &[("content-type", "application/grpc-web")]
            )
            .grpc_status,
            None
        );
        assert_eq!(
            answered(&config, &EXPIRED, &[("content-type", "application/json")]).grpc_status,
            None
        );
    }
}
