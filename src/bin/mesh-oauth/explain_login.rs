//! `explain` for a configuration with `login` (issue 28). The login flow's own step
//! (`Flow::on_request`, what the filter runs first on a login host) decides: a session cookie
//! becomes the bearer token, a callback is checked, and a navigation the pipeline refuses for
//! want of a token is sent to log in (`Flow::start_login`). The pipeline then decides the
//! request as `explain` shows for any bearer request. Cookies are opened with the module's own
//! functions and the key ring from explain's environment.
//!
//! explain sees no shared data (back-channel logouts, other requests' refreshes) and calls no
//! token endpoint: it says where that matters. Tokens, refresh tokens, cookie values, codes and
//! `state` are never printed; a cookie key is named by its id.

use crate::explain::{self, Options, Out, Prepared};
use crate::keys::read_jwks;
use crate::time;
use mesh_oauth::authorize::HeaderEdit;
use mesh_oauth::compile::Compiled;
use mesh_oauth::config::{Forward, HttpTarget, KeySource, Provider};
use mesh_oauth::keys::{parse_jwks, JwksLimits, KeySet};
use mesh_oauth::login::cookies::{self, SESSION_COOKIE, TRANSACTION_PREFIX};
use mesh_oauth::login::endpoints::{self, Endpoints};
use mesh_oauth::login::flow::{self, Answer, Event, Flow, Pending, Step, REFRESH_MARGIN_SECONDS};
use mesh_oauth::login::form;
use mesh_oauth::login::seal::{KeyRing, OpenError};
use mesh_oauth::login::session::{Session, SessionError};
use mesh_oauth::login::transaction::{self, Transaction, TRANSACTION_SECONDS};

/// What explain needs besides the request for a login host.
pub struct LoginInputs {
    /// `--discovery FILE|URL`: the provider's discovery document, as the filter fetches it.
    pub discovery: Option<String>,
    /// Each login's `cookieKeysEnv` variable, and whether explain's environment sets it (if
    /// not, its ring is a stand-in).
    pub cookie_keys: Vec<(String, bool)>,
}

pub fn explain(
    config: &Compiled,
    options: &Options,
    inputs: &LoginInputs,
) -> Result<String, String> {
    let prepared = explain::prepare(config, options);
    let headers: Vec<(&str, &str)> = pairs(&prepared.headers);
    let request = flow::Request {
        method: &options.method,
        authority: &options.host,
        path: &prepared.path,
        headers: &headers,
    };
    let mut out = Out::default();
    let served = config
        .logins
        .iter()
        .enumerate()
        .find(|(_, login)| login.origin_for(&options.host).is_some());
    let Some((index, login)) = served else {
        out.line(format!(
            "request: {} {} (host {})",
            options.method, options.path, options.host
        ));
        out.line(format!(
            "login: no `login` entry serves host {}: the pipeline decides (login cookies are removed all the same)",
            options.host
        ));
        let next = flow::strip_login_cookies(&request);
        describe_cookie_edits(&next.edits, &mut out);
        let prepared = edited(&prepared, &next.edits, None);
        out.0
            .push_str(&explain::decide(config, options, &prepared, None)?);
        return Ok(out.0);
    };
    let provider = config
        .providers
        .get(login.provider)
        .ok_or("login: its provider is missing")?;
    let flow = Flow::new(login, provider, &config.limits).ok_or("login: no cookie keys")?;
    let path_only = prepared.path.split('?').next().unwrap_or("");
    let callback = path_only == login.callback_path;
    out.line(format!(
        "request: {} {} (host {})",
        options.method,
        if callback {
            redacted_query(&prepared.path)
        } else {
            options.path.clone()
        },
        options.host
    ));
    let origin = login
        .origin_for(&options.host)
        .map_or(String::new(), |o| o.url());
    out.line(format!(
        "login: login[{index}] serves {origin}: provider {:?}, client {}, forwards the {}",
        provider.name,
        login.client_id,
        match login.forward {
            Forward::AccessToken => "access token",
            Forward::IdToken => "ID token",
        }
    ));
    let variable = inputs.cookie_keys.get(index);
    describe_ring(flow.key_ring(), variable, &mut out);
    if let Some((name, false)) = variable {
        if carries_login_cookies(&headers) {
            return Err(format!(
                "the request carries login cookies, which open only with the key ring the VM gets: set {name} in explain's environment (the value of the Secret behind login[{index}].cookieKeysEnv)"
            ));
        }
    }
    let (endpoints, from_discovery) = endpoints_for(provider, inputs)?;
    if !from_discovery {
        out.line(
            "   (no --discovery: explain assumes the provider's discovery document is in, without RFC 9207 authorization_response_iss_parameter_supported)",
        );
    }
    let keys = provider_keys(provider, options, config);
    let now = options.now_ms / 1000;
    // explain's own randomness: it only seals a transaction nobody sees.
    let mut random = |buf: &mut [u8]| buf.fill(0x5a);
    let mut ctx = flow::Context {
        now,
        endpoints: Some(&endpoints),
        keys: keys.as_ref(),
        logouts: &flow::NoLogouts,
        refreshes: &flow::NoRefreshes,
        random: &mut random,
    };
    let step = flow.on_request(&request, &mut ctx);
    if callback {
        explain_callback(
            &flow,
            &provider.issuer,
            &request,
            &endpoints,
            from_discovery,
            now,
            &mut out,
        );
        step_answer(step, &flow, &endpoints, &mut out);
        return Ok(out.0);
    }
    if path_only == login.logout_path || path_only == login.backchannel_logout_path {
        out.line("login endpoint: the filter answers it itself (the rules do not run)");
        step_answer(step, &flow, &endpoints, &mut out);
        return Ok(out.0);
    }
    let host = login
        .origin_for(&options.host)
        .map_or(options.host.clone(), |o| o.authority.clone());
    let has_token = headers.iter().any(|(name, _)| *name == "authorization");
    if has_token {
        out.line("session: not consulted: the request carries a token of its own (an API request)");
    } else {
        describe_session(config, &flow, &headers, &host, now, &mut out);
    }
    let session_token = |next: &flow::Continue| {
        next.edits.iter().find_map(|edit| match edit {
            HeaderEdit::Set(name, value) if name == "authorization" => Some(value.len()),
            _ => None,
        })
    };
    match step {
        Step::Continue(next) => {
            describe_continue(&next, &mut out);
            let login_answer = login_instead(&flow, &request, &next, &mut ctx, &mut out);
            let token_line = session_token(&next).map(forwarded_line);
            let prepared = edited(&prepared, &next.edits, token_line);
            out.0.push_str(&explain::decide(
                config,
                options,
                &prepared,
                login_answer.as_deref(),
            )?);
        }
        Step::Call(call) => {
            let url = call.request.target.url.clone();
            out.line(format!(
                "the filter: holds the request and POSTs the session's refresh token to the token endpoint ({url}), once per session in the sidecar; explain does not call it"
            ));
            out.line("  if the OP answers with new tokens: the request goes on with the new token and the renewed session cookie is set");
            let refused = flow.on_token_answer(
                call.pending,
                Some(400),
                br#"{"error":"invalid_grant"}"#,
                &mut ctx,
            );
            // The same call again (the step is deterministic), for the other outcome.
            let unanswered = match flow.on_request(&request, &mut ctx) {
                Step::Call(again) => flow.on_token_answer(again.pending, None, b"", &mut ctx),
                step => step,
            };
            let (Step::Continue(refused), Step::Continue(unanswered)) = (refused, unanswered)
            else {
                return Ok(out.0);
            };
            let metric =
                |next: &flow::Continue| next.event.as_ref().map_or(String::new(), Event::metric);
            out.line(format!(
                "  if the OP refuses it (invalid_grant): the session ends ({}), its cookies are cleared, and the request goes on without a token",
                metric(&refused)
            ));
            let kept = session_token(&unanswered).is_some();
            out.line(format!(
                "  if the OP does not answer: {} ({})",
                if kept {
                    "the session's current token is still valid: it is forwarded, the session kept"
                } else {
                    "the session ends: its token has expired"
                },
                metric(&unanswered)
            ));
            if kept {
                out.line("  decided below with the session's current token, as explain cannot obtain the refreshed one:");
                let token_line = session_token(&unanswered).map(forwarded_line);
                let prepared = edited(&prepared, &unanswered.edits, token_line);
                out.0
                    .push_str(&explain::decide(config, options, &prepared, None)?);
            } else {
                out.line("  decided below as after a failed refresh:");
                let login_answer = login_instead(&flow, &request, &refused, &mut ctx, &mut out);
                let prepared = edited(&prepared, &refused.edits, None);
                out.0.push_str(&explain::decide(
                    config,
                    options,
                    &prepared,
                    login_answer.as_deref(),
                )?);
            }
        }
        step => step_answer(step, &flow, &endpoints, &mut out),
    }
    Ok(out.0)
}

fn pairs(headers: &[(String, String)]) -> Vec<(&str, &str)> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect()
}

fn joined_cookie(headers: &[(&str, &str)]) -> Option<String> {
    let all: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| *name == "cookie")
        .map(|(_, value)| *value)
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

fn carries_login_cookies(headers: &[(&str, &str)]) -> bool {
    joined_cookie(headers).is_some_and(|c| c.contains(cookies::LOGIN_COOKIE_PREFIX))
}

fn forwarded_line(len: usize) -> String {
    format!(
        "token: the session's, {} bytes, forwarded as header `authorization: Bearer <token>` (never printed)",
        len.saturating_sub("Bearer ".len())
    )
}

/// The prepared request with the login step's edits applied, as the pipeline gets it.
fn edited(prepared: &Prepared, edits: &[HeaderEdit], token_line: Option<String>) -> Prepared {
    let mut headers = prepared.headers.clone();
    for edit in edits {
        match edit {
            HeaderEdit::Remove(name) => headers.retain(|(n, _)| n != name),
            HeaderEdit::Set(name, value) => {
                headers.retain(|(n, _)| n != name);
                headers.push((name.clone(), value.clone()));
            }
            HeaderEdit::Add(name, value) => headers.push((name.clone(), value.clone())),
        }
    }
    Prepared {
        headers,
        path: prepared.path.clone(),
        token_line: token_line.unwrap_or_else(|| prepared.token_line.clone()),
    }
}

/// `:path` with every query value replaced by its length (a callback carries `code`, `state`).
fn redacted_query(path: &str) -> String {
    let Some((path, query)) = path.split_once('?') else {
        return path.to_owned();
    };
    let shown: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) => format!("{name}=<{} chars>", value.len()),
            None => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", shown.join("&"))
}

fn describe_ring(ring: &KeyRing, variable: Option<&(String, bool)>, out: &mut Out) {
    let ids: Vec<String> = ring
        .key_ids()
        .enumerate()
        .map(|(n, id)| {
            if n == 0 {
                format!("{id} (seals)")
            } else {
                id.to_owned()
            }
        })
        .collect();
    match variable {
        Some((name, false)) => out.line(format!(
            "cookie keys: {name} is not set in explain's environment: a stand-in ring, which opens no cookie of the filter"
        )),
        Some((name, true)) => out.line(format!(
            "cookie keys: {} from {name} in explain's environment, ids {} (the first seals, all open)",
            ids.len(),
            ids.join(", ")
        )),
        None => out.line(format!("cookie keys: ids {}", ids.join(", "))),
    }
}

/// The provider's endpoints: from `--discovery`, or stand-ins that say where they come from.
fn endpoints_for(provider: &Provider, inputs: &LoginInputs) -> Result<(Endpoints, bool), String> {
    let Some(source) = &inputs.discovery else {
        let url = |what: &str| format!("<the {what} of {}'s discovery document>", provider.issuer);
        return Ok((
            Endpoints {
                authorization: url("authorization_endpoint"),
                token: HttpTarget {
                    url: url("token_endpoint"),
                    cluster: String::new(),
                    authority: String::new(),
                    path: String::new(),
                },
                end_session: None,
                iss_parameter_supported: false,
            },
            false,
        ));
    };
    let bytes = read_jwks(source, 64 * 1024, provider.timeout_ms)
        .map_err(|e| e.replace("--jwks", "--discovery"))?;
    let cluster = match &provider.keys {
        KeySource::Discovery(target) | KeySource::Remote(target) => Some(target.cluster.as_str()),
        KeySource::Inline(_) => None,
    };
    endpoints::from_discovery(&bytes, &provider.issuer, cluster)
        .map(|e| (e, true))
        .map_err(|problem| format!("--discovery {source}: {problem}"))
}

/// The provider's keys: a callback needs them loaded before it spends the code.
fn provider_keys(provider: &Provider, options: &Options, config: &Compiled) -> Option<KeySet> {
    let limits = JwksLimits::from(&config.limits);
    match (&provider.keys, &options.jwks) {
        (KeySource::Inline(document), _) => parse_jwks(document.as_bytes(), &limits, true).ok(),
        (_, Some(jwks)) => read_jwks(jwks, limits.max_bytes, provider.timeout_ms)
            .ok()
            .and_then(|bytes| parse_jwks(&bytes, &limits, false).ok()),
        // The filter fetches them; explain assumes they came (a callback only needs them in).
        _ => parse_jwks(br#"{"keys":[]}"#, &limits, false).ok(),
    }
}

fn describe_session(
    config: &Compiled,
    flow: &Flow,
    headers: &[(&str, &str)],
    host: &str,
    now: u64,
    out: &mut Out,
) {
    let cookie = joined_cookie(headers);
    let sealed = match cookies::session_value(cookie.as_deref()) {
        Ok(None) => {
            out.line(format!("session: no session cookie ({SESSION_COOKIE}.N)"));
            return;
        }
        Err(error) => {
            out.line(format!(
                "session: its chunks do not join ({}): {error:?}",
                SessionError::Chunks(error).reason()
            ));
            return;
        }
        Ok(Some(sealed)) => sealed,
    };
    let chunks = cookies::session_chunk_names(cookie.as_deref()).len();
    let key_id = sealed.split_once('.').map_or("", |(id, _)| id);
    out.line(format!(
        "session: {} of {} bytes, sealed by key id {key_id:?} (the value is never printed)",
        count(chunks, "chunk"),
        sealed.len()
    ));
    let ring = flow.key_ring();
    match Session::inspect(&sealed, ring, host) {
        Ok((session, opened)) => {
            let sealing = ring.key_ids().next().unwrap_or("");
            out.line(if opened.key_index == 0 {
                format!("   opens with key {key_id} (the sealing key), bound to host {host}: authentic")
            } else {
                format!(
                    "   opens with key {key_id}, an older key of the ring (still opens; renewed cookies are sealed by {sealing}), bound to host {host}: authentic"
                )
            });
            out.line(format!(
                "   cookie {} (sessionMaxAgeSeconds {} from the login)",
                moment(now, opened.expires_at, "lives until", "expired at"),
                flow.login.session_max_age_seconds
            ));
            out.line(format!(
                "   sub {:?}, sid {}, logged in at {}, tokens obtained at {}, refresh token {}",
                session.sub,
                if session.sid.is_some() {
                    "present"
                } else {
                    "absent"
                },
                shown(session.authenticated_at),
                shown(session.refreshed_at),
                if session.refresh_token.is_some() {
                    "present"
                } else {
                    "absent"
                }
            ));
            out.line(format!(
                "   the forwarded token {}",
                moment(now, session.token_expires_at, "expires at", "expired at")
            ));
            describe_refresh(flow, &session, now, out);
            if now < opened.expires_at {
                out.line(
                    "   (back-channel logouts live in the sidecar's shared data, which explain does not see: a logged-out sid or sub is refused there)",
                );
            }
        }
        Err(SessionError::Open(OpenError::UnknownKey)) => out.line(format!(
            "   key id {key_id:?} is not in the ring: a retired key (or a forgery): refused"
        )),
        Err(SessionError::Open(OpenError::Tampered)) => {
            match other_host(config, &sealed, host) {
                Some(other) => out.line(format!(
                    "   sealed for host {other}, not {host}: a cookie carried to another host (cross-host): refused"
                )),
                None => out.line(
                    "   its tag does not verify: tampered, truncated or chunks reordered (or sealed for a host no login here serves): refused",
                ),
            }
        }
        Err(error) => out.line(format!(
            "   not a sealed session ({}): refused",
            error.reason()
        )),
    }
}

/// The other host of a login here a session cookie opens for, if any.
fn other_host(config: &Compiled, sealed: &str, host: &str) -> Option<String> {
    config.logins.iter().find_map(|login| {
        let provider = config.providers.get(login.provider)?;
        let flow = Flow::new(login, provider, &config.limits)?;
        login
            .hosts
            .iter()
            .filter(|origin| origin.authority != host)
            .find(|origin| Session::inspect(sealed, flow.key_ring(), &origin.authority).is_ok())
            .map(|origin| origin.authority.clone())
    })
}

fn describe_refresh(flow: &Flow, session: &Session, now: u64, out: &mut Out) {
    let due = flow.refresh_due(session, now);
    let recheck_at = session
        .refreshed_at
        .saturating_add(flow.login.session_recheck_seconds);
    if due.expiring {
        out.line(format!(
            "   refresh: due: the token expires within {REFRESH_MARGIN_SECONDS} s{}",
            if session.refresh_token.is_some() {
                ""
            } else {
                " and there is no refresh token: the session ends"
            }
        ));
    } else if due.recheck_due && session.refresh_token.is_some() {
        out.line(format!(
            "   recheck: due: sessionRecheckSeconds ({} s) have passed since the tokens were obtained; refreshed even though the token is valid",
            flow.login.session_recheck_seconds
        ));
    } else {
        let next = session
            .token_expires_at
            .saturating_sub(REFRESH_MARGIN_SECONDS);
        let next = if session.refresh_token.is_some() {
            next.min(recheck_at)
        } else {
            next
        };
        out.line(format!(
            "   refresh: not due (next at {}, in {})",
            shown(next),
            time::span(next.saturating_sub(now) as f64)
        ));
    }
}

fn describe_continue(next: &flow::Continue, out: &mut Out) {
    if let Some(event) = &next.event {
        out.line(login_event(event));
    }
    if next
        .edits
        .iter()
        .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "authorization"))
    {
        out.line("the filter: forwards the session's token to the pipeline as `authorization: Bearer <token>`");
    } else if matches!(next.event, Some(Event::SessionRefused(_))) {
        out.line("the filter: does not use the session: the request goes on without a token");
    }
    describe_cookie_edits(&next.edits, out);
    describe_set_cookies(&next.set_cookies, out);
}

fn login_event(event: &Event) -> String {
    let metric = event.metric();
    format!(
        "login event: {metric} (metric mesh_oauth.{metric}; log line {})",
        event.audit_json()
    )
}

fn describe_cookie_edits(edits: &[HeaderEdit], out: &mut Out) {
    for edit in edits {
        match edit {
            HeaderEdit::Set(name, kept) if name == "cookie" => {
                let names: Vec<&str> = cookies::pairs(kept).map(|(n, _)| n).collect();
                out.line(format!(
                    "upstream: cookie header without the login cookies (keeps {})",
                    names.join(", ")
                ));
            }
            HeaderEdit::Remove(name) if name == "cookie" => {
                out.line("upstream: cookie header removed (it held only login cookies)");
            }
            _ => {}
        }
    }
}

fn describe_set_cookies(set_cookies: &[String], out: &mut Out) {
    for set in set_cookies {
        let name = set.split_once('=').map_or(set.as_str(), |(n, _)| n);
        if set.contains("Max-Age=0") {
            out.line(format!("response: set-cookie clears {name}"));
        } else if name.starts_with(TRANSACTION_PREFIX) {
            out.line(format!(
                "response: set-cookie {name} (the transaction: PKCE verifier, nonce, state and return path, sealed; {TRANSACTION_SECONDS} s)"
            ));
        } else {
            out.line(format!(
                "response: set-cookie {name} (sealed; never printed)"
            ));
        }
    }
}

/// A request the pipeline refuses for want of a token, as a login host answers it: the lines
/// that say so, when the request may start a login.
fn login_instead(
    flow: &Flow,
    request: &flow::Request<'_>,
    next: &flow::Continue,
    ctx: &mut flow::Context<'_>,
    out: &mut Out,
) -> Option<Vec<String>> {
    let has_token = next
        .edits
        .iter()
        .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "authorization"))
        || request.headers.iter().any(|(n, _)| *n == "authorization");
    if has_token {
        return None;
    }
    if !next.may_login {
        out.line(format!(
            "navigation: no ({}): refused for want of a token, it gets the 401, never a login",
            why_not_navigation(request)
        ));
        return None;
    }
    out.line(format!(
        "navigation: yes ({}): refused for want of a token, it is sent to log in instead",
        why_navigation(request)
    ));
    let answer = flow.start_login(request, ctx)?;
    let mut lines = vec![format!(
        "final: {} {}: sent to log in (the audit line keeps the pipeline's refusal)",
        answer.status,
        status_text(answer.status)
    )];
    let authorization = ctx.endpoints.map_or("", |e| e.authorization.as_str());
    lines.extend(answer_lines(&answer, authorization));
    if let Some(tx) = opened_transaction(flow, &answer, request.authority, ctx.now) {
        lines.push(format!(
            "  after the login the browser comes back to {} (same-origin paths only; anything else becomes /)",
            tx.return_path
        ));
    }
    Some(lines)
}

/// The transaction a login answer sets, opened as the callback will open it.
fn opened_transaction(
    flow: &Flow,
    answer: &Answer,
    authority: &str,
    now: u64,
) -> Option<Transaction> {
    let host = flow.login.origin_for(authority)?.authority.clone();
    answer.headers.iter().find_map(|(name, value)| {
        if name != "set-cookie" {
            return None;
        }
        let (cookie, rest) = value.split_once('=')?;
        let sealed = rest.split(';').next()?;
        cookie
            .starts_with(TRANSACTION_PREFIX)
            .then(|| Transaction::open(cookie, sealed, flow.key_ring(), &host, now).ok())
            .flatten()
    })
}

fn header<'a>(request: &flow::Request<'a>, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

fn why_navigation(request: &flow::Request<'_>) -> String {
    match header(request, "sec-fetch-mode") {
        Some(mode) => format!("{} with Sec-Fetch-Mode: {mode}", request.method),
        None => format!(
            "{} with Accept preferring text/html, no Fetch Metadata",
            request.method
        ),
    }
}

fn why_not_navigation(request: &flow::Request<'_>) -> String {
    if !matches!(request.method, "GET" | "HEAD") {
        return format!("method {}: only GET and HEAD navigate", request.method);
    }
    match header(request, "sec-fetch-mode") {
        Some(mode) => format!("Sec-Fetch-Mode: {mode}, not navigate"),
        None => match header(request, "accept") {
            Some(accept) => format!("Accept {accept:?} does not prefer text/html"),
            None => "no Sec-Fetch-Mode and no Accept".to_owned(),
        },
    }
}

/// The callback's checks, before the token call, each as the request meets it.
fn explain_callback(
    flow: &Flow,
    issuer: &str,
    request: &flow::Request<'_>,
    endpoints: &Endpoints,
    from_discovery: bool,
    now: u64,
    out: &mut Out,
) {
    let login = &flow.login;
    out.line(format!(
        "callback: {} of login: the filter answers it itself (the rules do not run)",
        login.callback_path
    ));
    let query = request.path.split_once('?').map_or("", |(_, q)| q);
    let Ok(params) = form::decode(query) else {
        out.line("   parameters: not a valid query");
        return;
    };
    let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    out.line(format!(
        "   parameters: {} (values of code and state are never printed)",
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    ));
    // state: the transaction cookie of this browser for it.
    let state = form::get(&params, "state").unwrap_or("");
    let cookie = joined_cookie(request.headers);
    let transactions = cookies::transactions(cookie.as_deref());
    let host = login
        .origin_for(request.authority)
        .map_or(String::new(), |o| o.authority.clone());
    if state.is_empty() {
        out.line("   state: absent: no transaction can match: refused (state)");
    } else {
        let name = transaction::cookie_name(state);
        match transactions.iter().find(|(n, _)| *n == name) {
            None => out.line(format!(
                "   state: no transaction cookie of this browser is for it ({} other {}): another browser's callback, a replay, or a login that ended: refused (state)",
                transactions.len(),
                if transactions.len() == 1 { "transaction cookie" } else { "transaction cookies" }
            )),
            Some((_, sealed)) => {
                let key_id = sealed.split_once('.').map_or("", |(id, _)| id);
                match Transaction::open(&name, sealed, flow.key_ring(), &host, now) {
                    Ok(tx) if transaction::same_secret(&tx.state, state) => out.line(format!(
                        "   state: matches this browser's transaction (key id {key_id:?}), started at {} ({} ago, lives {TRANSACTION_SECONDS} s); it returns to {} (sanitised when the login started: same-origin paths only, anything else became /)",
                        shown(tx.started_at),
                        time::span(now.saturating_sub(tx.started_at) as f64),
                        tx.return_path
                    )),
                    Ok(_) => out.line("   state: the transaction cookie holds another state: refused (state)"),
                    Err(error) => out.line(format!(
                        "   state: the transaction cookie for it does not open ({}): {}: refused (state)",
                        error.reason(),
                        match error {
                            OpenError::Expired => "the login started more than 10 minutes ago",
                            OpenError::UnknownKey => "sealed by a key no longer in the ring",
                            OpenError::Tampered => "altered, or from another host",
                            OpenError::Malformed => "not a sealed value",
                        }
                    )),
                }
            }
        }
        out.line("   (the transaction cookie is cleared whatever comes next)");
    }
    if let Some(error) = form::get(&params, "error") {
        let shown_error = if error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            error
        } else {
            "(not a plain error code)"
        };
        out.line(format!(
            "   error: the OP answered {shown_error}: shown as a page, never a redirect (no loop)"
        ));
    }
    match form::get(&params, "iss") {
        Some(iss) if iss == issuer => {
            out.line("   iss (RFC 9207): the provider's issuer: pass");
        }
        Some(iss) => out.line(format!(
            "   iss (RFC 9207): {iss:?} is not the provider's issuer: refused (iss): a mix-up attack"
        )),
        None if endpoints.iss_parameter_supported => out.line(
            "   iss (RFC 9207): absent, but the OP advertises authorization_response_iss_parameter_supported: refused (iss)",
        ),
        None if from_discovery => out.line(
            "   iss (RFC 9207): absent; the OP does not advertise it: accepted",
        ),
        None => out.line(
            "   iss (RFC 9207): absent: accepted unless the OP's discovery document advertises authorization_response_iss_parameter_supported (pass --discovery)",
        ),
    }
    out.line(match form::get(&params, "code") {
        Some(code) if !code.is_empty() => "   code: present",
        _ => "   code: absent",
    });
}

/// What the filter does with a step that answers (or calls) by itself.
fn step_answer(step: Step, flow: &Flow, endpoints: &Endpoints, out: &mut Out) {
    match step {
        Step::Respond(answer) => {
            out.line(format!(
                "final: {} {}",
                answer.status,
                status_text(answer.status)
            ));
            for line in answer_lines(&answer, &endpoints.authorization) {
                out.line(line);
            }
        }
        Step::Call(call) => match call.pending {
            Pending::Code { return_path, .. } => {
                out.line(format!(
                    "next: the filter redeems the code: POST to {} (grant_type=authorization_code, the PKCE verifier from the transaction, client authentication {}), holding the request",
                    call.request.target.url,
                    flow.login.client_auth.summary()
                ));
                out.line("   explain cannot redeem it: a code is single-use and only the OP answers");
                out.line("   then: the ID token is verified (alg allow-list, iss, aud and azp, exp/iat, the transaction's nonce, at_hash), the session cookie is set and the browser sent (302) to");
                out.line(format!("   {return_path}; a failure is a 400 page (login.failed.<reason>), never a redirect"));
            }
            Pending::Refresh { .. } => out.line("next: a refresh of the session at the token endpoint"),
        },
        Step::ReadBody => out.line(
            "next: the filter reads the body (logout_token=…), verifies the logout token and answers 200 or 400; explain does not take a body",
        ),
        Step::Continue(next) => describe_continue(&next, out),
    }
}

/// An answer's headers and event, with nothing secret: set-cookie values and the query of a
/// redirect to the OP (its `state`, `nonce`, `code_challenge`) are named, not shown.
fn answer_lines(answer: &Answer, authorization: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut out = Out::default();
    for (name, value) in &answer.headers {
        match name.as_str() {
            "set-cookie" => describe_set_cookies(std::slice::from_ref(value), &mut out),
            "location" => {
                let (base, query) = value.split_once('?').unwrap_or((value, ""));
                // Without --discovery the authorization endpoint is a description, not a URL.
                let base = if base.starts_with(authorization) {
                    authorization
                } else {
                    base
                };
                lines.push(format!("  location: {base}"));
                let shown: Vec<String> = form::decode(query)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(n, v)| match n.as_str() {
                        "state" => "state=<fresh, 256 random bits>".to_owned(),
                        "nonce" => "nonce=<fresh, 256 random bits>".to_owned(),
                        "code_challenge" => "code_challenge=<S256 of a fresh verifier>".to_owned(),
                        "id_token_hint" => "id_token_hint=<the session's ID token>".to_owned(),
                        _ => format!("{n}={v}"),
                    })
                    .collect();
                if !shown.is_empty() {
                    lines.push(format!("    with {}", shown.join(" ")));
                }
            }
            _ => lines.push(format!("  {name}: {value}")),
        }
    }
    lines.extend(out.0.lines().map(|l| format!("  {l}")));
    if !answer.body.is_empty() {
        lines.push(format!("  body: {}", answer.body.trim_end()));
    }
    if let Some(event) = &answer.event {
        lines.push(format!("  {}", login_event(event)));
    }
    lines
}

fn status_text(status: u32) -> &'static str {
    match status {
        200 => "OK",
        302 => "Found",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn shown(seconds: u64) -> String {
    time::show(seconds as f64)
}

/// `at T (in X)` or `at T (X ago)`.
fn moment(now: u64, at: u64, future: &str, past: &str) -> String {
    if now < at {
        format!(
            "{future} {} (in {})",
            shown(at),
            time::span((at - now) as f64)
        )
    } else {
        format!(
            "{past} {} ({} ago)",
            shown(at),
            time::span((now - at) as f64)
        )
    }
}

fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}
