//! Browser login (issue 28) in the runtime: each request to a host a `login` serves goes
//! through its [`Flow`] first. The flow's steps become effects: request edits (the session's
//! bearer token in, the login cookies out) before the pipeline decides, `set-cookie` on the
//! response, a local answer, or a token-endpoint call that holds the request until it answers.
//! A request the pipeline refuses for want of a token becomes a login when it is a top-level
//! navigation.

use super::*;
use crate::login::flow::MAX_TOKEN_ANSWER_BYTES;
use crate::login::flow::{self, Event, Flow, Pending, Step};
use crate::login::ledger::{LedgerName, SharedLedger};
use crate::login::refreshes::{self, Claim, SharedRefreshes};

/// A back-channel logout body larger than this is refused unread (a logout token is small).
pub const MAX_LOGIN_BODY_BYTES: usize = 64 * 1024;
/// A token call's held request waits this much longer than the call's own timeout.
const CALL_MARGIN_MS: u64 = 1_000;

/// The logins of a configuration and what they have under way.
#[derive(Default)]
pub(super) struct Logins {
    flows: Vec<Flow>,
    /// Per flow: its issuer's logout ledger, named once, and how long a logout is kept there
    /// (the longest `sessionMaxAgeSeconds` of the logins of that issuer).
    ledgers: Vec<(LedgerName, u64)>,
    /// Token calls in flight, by the id their [`Purpose::Login`] carries.
    calls: HashMap<u64, LoginCall>,
    next_call: u64,
    /// Requests that become a login if the pipeline refuses them for want of a token.
    marks: HashMap<u32, Mark>,
    /// Back-channel logout requests waiting for their body: the flow that reads it.
    bodies: HashMap<u32, usize>,
    /// Refreshes in flight in this worker, by a digest of the refresh token: a second request
    /// of the same session waits for the same call rather than spending the token again.
    refreshing: HashMap<Vec<u8>, u64>,
}

struct LoginCall {
    flow: usize,
    call: CallId,
    /// The request the call was made for.
    context: u32,
    pending: Pending,
    /// Other requests of the same session waiting for this refresh: how each goes on.
    followers: Vec<(u32, Follower)>,
    refresh_key: Option<Vec<u8>>,
    /// A refresh's name in shared data: its outcome is published there for every worker.
    shared_key: Option<String>,
}

/// What a request that waits for another request's refresh needs of its own.
struct Follower {
    navigation: bool,
    cookie_edit: Option<HeaderEdit>,
}

/// The digest that names a session's refresh in flight (never the token itself).
fn refresh_key(pending: &Pending) -> Option<Vec<u8>> {
    let Pending::Refresh { session, .. } = pending else {
        return None;
    };
    let token = session.refresh_token.as_deref()?;
    Some(
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec(),
    )
}

struct Mark {
    flow: usize,
    /// The `cookie` header as the browser sent it (the pipeline sees it without login cookies).
    cookie: Option<String>,
}

impl Logins {
    /// `None` when a login's cookie keys make no ring (the parser lets none through).
    pub(super) fn new(config: &crate::config::Config) -> Option<Logins> {
        let flows = config
            .logins
            .iter()
            .map(|login| {
                let provider = config.providers.get(login.provider)?;
                Flow::new(login, provider, &config.limits)
            })
            .collect::<Option<Vec<Flow>>>()?;
        let issuer_of = |login: &crate::config::Login| {
            config
                .providers
                .get(login.provider)
                .map(|provider| provider.issuer.as_str())
        };
        let ledgers = config
            .logins
            .iter()
            .map(|login| {
                let issuer = issuer_of(login)?;
                let lifetime = config
                    .logins
                    .iter()
                    .filter(|other| issuer_of(other) == Some(issuer))
                    .map(|other| other.session_max_age_seconds)
                    .max()
                    .unwrap_or(0);
                Some((LedgerName::new(issuer), lifetime))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Logins {
            flows,
            ledgers,
            ..Logins::default()
        })
    }
}

/// What the pipeline should do with a request after its login step.
pub(super) enum Route {
    /// Answered, or held for a call or its body.
    Done,
    /// Decided by the pipeline as it came.
    Pipeline,
    /// Decided by the pipeline with these headers (the edits are already on their way).
    Edited(Vec<(String, String)>),
}

/// The request's headers with `edits` applied, as the pipeline should see them.
fn edited(headers: &[(&str, &str)], edits: &[HeaderEdit]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    for edit in edits {
        match edit {
            HeaderEdit::Remove(name) => out.retain(|(n, _)| n != name),
            HeaderEdit::Set(name, value) => {
                out.retain(|(n, _)| n != name);
                out.push((name.clone(), value.clone()));
            }
            HeaderEdit::Add(name, value) => out.push((name.clone(), value.clone())),
        }
    }
    out
}

fn joined_cookie(headers: &[(&str, &str)]) -> Option<String> {
    let all: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| *n == "cookie")
        .map(|(_, v)| *v)
        .collect();
    (!all.is_empty()).then(|| all.join("; "))
}

fn response_of(answer: flow::Answer) -> Response {
    Response {
        status: answer.status,
        headers: answer.headers,
        body: answer.body,
        grpc_status: None,
    }
}

fn token_call(call: flow::TokenCall) -> Call {
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), call.target.path),
        (":authority".to_string(), call.target.authority),
        ("user-agent".to_string(), "mesh-oauth".to_string()),
    ];
    headers.extend(call.headers);
    Call {
        cluster: call.target.cluster,
        headers,
        body: Some(call.body.into_bytes()),
        timeout_ms: call.timeout_ms,
    }
}

/// A step again, for the one request it was made for (steps hold no call once answered).
fn copy_step(step: &Step) -> Step {
    match step {
        Step::Continue(next) => Step::Continue(next.clone()),
        Step::Respond(answer) => Step::Respond(answer.clone()),
        Step::ReadBody => Step::ReadBody,
        // An answer never asks for another call.
        Step::Call(_) => Step::Respond(flow::Answer {
            status: 502,
            headers: Vec::new(),
            body: String::new(),
            event: None,
        }),
    }
}

/// WASI `random_get` (ring's system source); `false` when it failed.
fn fill_random(buf: &mut [u8]) -> bool {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new().fill(buf).is_ok()
}

fn unavailable() -> Response {
    Response {
        status: 503,
        headers: unavailable_headers(),
        body: String::new(),
        grpc_status: None,
    }
}

/// A 503's: try again in a second, keep nothing.
fn unavailable_headers() -> Vec<(String, String)> {
    vec![
        ("retry-after".to_string(), "1".to_string()),
        ("cache-control".to_string(), "no-store".to_string()),
    ]
}

impl Runtime {
    /// Runs `step_of` on flow `index` with what the sidecar knows now; `None` when the
    /// system's randomness failed (the step then must not be used: its secrets are not).
    fn flow_step(
        &self,
        index: usize,
        host: Host<'_>,
        step_of: impl FnOnce(&Flow, &mut flow::Context<'_>) -> Step,
    ) -> Option<Step> {
        let flow = self.logins.flows.get(index)?;
        let provider = flow.login.provider;
        let endpoints = self.keys.login_endpoints(provider);
        let keys = self.ready_keys(provider, host.now_ms);
        let ledger = self.ledger(host.shared, index)?;
        let refreshes = SharedRefreshes {
            store: host.shared,
            issuer: ledger.name.issuer(),
        };
        let mut random_ok = true;
        let step = {
            let mut random = |buf: &mut [u8]| random_ok &= fill_random(buf);
            let mut ctx = flow::Context {
                now: host.now_ms / 1000,
                endpoints: endpoints.as_deref(),
                keys,
                logouts: &ledger,
                refreshes: &refreshes,
                random: &mut random,
            };
            step_of(flow, &mut ctx)
        };
        // A refresh's result serves the session's other requests, in every worker.
        if let Step::Continue(flow::Continue {
            refreshed: Some((key, sealed)),
            ..
        }) = &step
        {
            refreshes.publish(key, refreshes::Outcome::Done(sealed), host.now_ms);
        }
        random_ok.then_some(step)
    }

    /// The login's part of a request: `Route` says what the pipeline does next.
    pub(super) fn login_request(
        &mut self,
        context: u32,
        request: &Request<'_>,
        host: Host<'_>,
        out: &mut Effects,
    ) -> Route {
        if self.logins.flows.is_empty() {
            return Route::Pipeline;
        }
        let flow_request = flow::Request {
            method: request.method,
            authority: request.authority,
            path: request.path,
            headers: request.headers,
        };
        let Some(index) = self
            .logins
            .flows
            .iter()
            .position(|flow| flow.serves(request.authority))
        else {
            // Not a login host: still, login cookies never reach an upstream.
            let next = flow::strip_login_cookies(&flow_request);
            if next.edits.is_empty() {
                return Route::Pipeline;
            }
            let headers = edited(request.headers, &next.edits);
            out.push(Effect::EditRequest {
                context,
                edits: next.edits,
            });
            return Route::Edited(headers);
        };
        let step = self.flow_step(index, host, |flow, ctx| flow.on_request(&flow_request, ctx));
        self.login_step(index, context, request, step, host, out)
    }

    /// Carries out a flow's step for request `context`.
    fn login_step(
        &mut self,
        index: usize,
        context: u32,
        request: &Request<'_>,
        step: Option<Step>,
        host: Host<'_>,
        out: &mut Effects,
    ) -> Route {
        let Some(step) = step else {
            log(out, Level::Error, "login: no system randomness: refused");
            out.push(Effect::Answer {
                context,
                response: unavailable(),
            });
            return Route::Done;
        };
        match step {
            Step::Continue(next) => {
                if let Some(event) = &next.event {
                    self.login_event(event, out);
                }
                if !next.set_cookies.is_empty() {
                    let cookies = next
                        .set_cookies
                        .into_iter()
                        .map(|c| HeaderEdit::Add("set-cookie".to_string(), c))
                        .collect();
                    self.edit_response(context, cookies);
                }
                if next.may_login {
                    self.logins.marks.insert(
                        context,
                        Mark {
                            flow: index,
                            cookie: joined_cookie(request.headers),
                        },
                    );
                }
                if next.edits.is_empty() {
                    return Route::Pipeline;
                }
                let headers = edited(request.headers, &next.edits);
                out.push(Effect::EditRequest {
                    context,
                    edits: next.edits,
                });
                Route::Edited(headers)
            }
            Step::Respond(answer) => {
                if let Some(event) = &answer.event {
                    self.login_event(event, out);
                }
                out.push(Effect::Answer {
                    context,
                    response: response_of(answer),
                });
                Route::Done
            }
            Step::Call(call) => {
                let flow::Call {
                    request: token,
                    pending,
                    event,
                } = *call;
                if let Some(event) = &event {
                    self.login_event(event, out);
                }
                let key = refresh_key(&pending);
                let in_flight = key
                    .as_ref()
                    .and_then(|key| self.logins.refreshing.get(key))
                    .copied();
                if let (
                    Some(id),
                    Pending::Refresh {
                        navigation,
                        cookie_edit,
                        ..
                    },
                ) = (in_flight, &pending)
                {
                    if let Some(primary) = self.logins.calls.get(&id) {
                        let call = primary.call;
                        let deadline_ms = host
                            .now_ms
                            .saturating_add(token.timeout_ms)
                            .saturating_add(CALL_MARGIN_MS);
                        let follower = Follower {
                            navigation: *navigation,
                            cookie_edit: cookie_edit.clone(),
                        };
                        if self.hold_for_call(
                            context,
                            request,
                            call,
                            deadline_ms,
                            unavailable(),
                            out,
                        ) {
                            if let Some(primary) = self.logins.calls.get_mut(&id) {
                                primary.followers.push((context, follower));
                            }
                        } else {
                            out.push(Effect::Answer {
                                context,
                                response: unavailable(),
                            });
                        }
                        return Route::Done;
                    }
                }
                // Across workers: one refresh per session in the whole sidecar.
                let shared_key = match &pending {
                    Pending::Refresh { session, .. } => session.refresh_key(),
                    Pending::Code { .. } => None,
                };
                if let (Some(shared_key), Some(issuer)) = (&shared_key, self.issuer_of(index)) {
                    let shared = SharedRefreshes {
                        store: host.shared,
                        issuer: &issuer,
                    };
                    let lease_ms = token.timeout_ms.saturating_add(CALL_MARGIN_MS);
                    match shared.claim(shared_key, host.now_ms, lease_ms) {
                        Claim::Won | Claim::Unshared => {}
                        Claim::Wait { until_ms } => {
                            self.wait_for_shared_refresh(context, request, until_ms, out);
                            return Route::Done;
                        }
                        Claim::FailedElsewhere => {
                            let step = self.flow_step(index, host, |flow, ctx| {
                                flow.on_refresh_failed_elsewhere(pending, ctx)
                            });
                            return self.login_step(index, context, request, step, host, out);
                        }
                    }
                }
                let id = self.logins.next_call;
                self.logins.next_call += 1;
                let deadline_ms = host
                    .now_ms
                    .saturating_add(token.timeout_ms)
                    .saturating_add(CALL_MARGIN_MS);
                let call = self.dispatch(Purpose::Login { call: id }, token_call(token), out);
                if let Some(key) = &key {
                    self.logins.refreshing.insert(key.clone(), id);
                }
                self.logins.calls.insert(
                    id,
                    LoginCall {
                        flow: index,
                        call,
                        context,
                        pending,
                        followers: Vec::new(),
                        refresh_key: key,
                        shared_key,
                    },
                );
                let expiry = Response {
                    status: 504,
                    headers: vec![("cache-control".to_string(), "no-store".to_string())],
                    body: "The identity provider did not answer in time.\n".to_string(),
                    grpc_status: None,
                };
                if !self.hold_for_call(context, request, call, deadline_ms, expiry, out) {
                    out.push(Effect::Answer {
                        context,
                        response: unavailable(),
                    });
                }
                Route::Done
            }
            Step::ReadBody => {
                self.logins.bodies.insert(context, index);
                // Envoy hands a filter the body only once its headers went on: they may reach
                // the upstream ahead of the local answer, so nothing in them may vouch for
                // anyone (the body itself never leaves the filter).
                out.push(Effect::EditRequest {
                    context,
                    edits: vec![
                        HeaderEdit::Remove("authorization".to_string()),
                        HeaderEdit::Remove("cookie".to_string()),
                    ],
                });
                Route::Done
            }
        }
    }

    /// A login token call answered (`status` `None`: it failed).
    pub(super) fn login_answered(
        &mut self,
        id: u64,
        status: Option<u32>,
        body: &[u8],
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let Some(LoginCall {
            flow: index,
            call,
            context,
            pending,
            followers,
            refresh_key,
            shared_key,
        }) = self.logins.calls.remove(&id)
        else {
            return;
        };
        if let Some(key) = refresh_key {
            self.logins.refreshing.remove(&key);
        }
        // The call's own request decides; requests of the same session that waited for it go
        // on the same way, each with its own cookie header.
        let primary = self.flow_step(index, host, |flow, ctx| {
            flow.on_token_answer(pending, status, body, ctx)
        });
        // A result was published by `flow_step`; a failure ends the lease too, and the
        // requests other workers hold for it end the same way.
        let refreshed = matches!(
            &primary,
            Some(Step::Continue(flow::Continue {
                refreshed: Some(_),
                ..
            }))
        );
        if let (Some(shared_key), Some(issuer), false) =
            (&shared_key, self.issuer_of(index), refreshed)
        {
            let shared = SharedRefreshes {
                store: host.shared,
                issuer: &issuer,
            };
            shared.publish(shared_key, refreshes::Outcome::Failed, host.now_ms);
        }
        for waiter in self.take_held_for_call(call, out) {
            let step = if waiter.context == context {
                primary.as_ref().map(copy_step)
            } else {
                let follower = followers.iter().find(|(c, _)| *c == waiter.context);
                match (primary.as_ref(), follower) {
                    (Some(Step::Continue(next)), Some((_, follower))) => {
                        let mut next = next.clone();
                        next.edits.retain(|edit| {
                            !matches!(edit, HeaderEdit::Set(n, _) | HeaderEdit::Remove(n) if n == "cookie")
                        });
                        next.edits.extend(follower.cookie_edit.clone());
                        let refreshed = next
                            .edits
                            .iter()
                            .any(|e| matches!(e, HeaderEdit::Set(n, _) if n == "authorization"));
                        next.may_login = !refreshed && follower.navigation;
                        // Counted once, for the call's own request.
                        next.event = None;
                        Some(Step::Continue(next))
                    }
                    _ => Some(Step::Respond(flow::Answer {
                        status: 503,
                        headers: vec![("retry-after".to_string(), "1".to_string())],
                        body: String::new(),
                        event: None,
                    })),
                }
            };
            let headers = waiter.request.header_pairs();
            let view = waiter.request.view(&headers);
            let route = self.login_step(index, waiter.context, &view, step, host, out);
            self.follow_route(waiter.context, &view, route, host, out);
        }
    }

    /// The issuer of login `index`'s provider.
    fn issuer_of(&self, index: usize) -> Option<String> {
        let provider = self.logins.flows.get(index)?.login.provider;
        Some(self.config.providers.get(provider)?.issuer.clone())
    }

    /// `provider`'s signing keys once loaded, for the ID and logout token checks.
    fn ready_keys(&self, provider: usize, now_ms: u64) -> Option<&crate::keys::KeySet> {
        match self.keys.keys(provider, now_ms) {
            KeyState::Ready(set) => Some(set),
            _ => None,
        }
    }

    /// The back-channel logouts of login `index`'s issuer in the sidecar's shared data.
    fn ledger<'a>(&'a self, store: &'a dyn SharedStore, index: usize) -> Option<SharedLedger<'a>> {
        let (name, lifetime_seconds) = self.logins.ledgers.get(index)?;
        Some(SharedLedger {
            store,
            name,
            lifetime_seconds: *lifetime_seconds,
        })
    }

    /// Holds request `context` while another worker refreshes its session: its login step
    /// runs again at each tick ([`Runtime::login_refresh_again`]).
    fn wait_for_shared_refresh(
        &mut self,
        context: u32,
        request: &Request<'_>,
        until_ms: u64,
        out: &mut Effects,
    ) {
        let deadline_ms = until_ms.saturating_add(CALL_MARGIN_MS);
        if !self.hold(context, request, deadline_ms, Until::LoginRefresh, out) {
            out.push(Effect::Answer {
                context,
                response: unavailable(),
            });
            return;
        }
        out.push(Effect::SetTickPeriod {
            ms: super::LOGIN_REFRESH_POLL_MS,
        });
    }

    /// Where a request goes once its login step is done: nowhere (answered or held), to the
    /// pipeline as it came, or to the pipeline with the login's header edits.
    pub(super) fn follow_route(
        &mut self,
        context: u32,
        request: &Request<'_>,
        route: Route,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        match route {
            Route::Done => {}
            Route::Pipeline => self.decide_request(context, request, host, out),
            Route::Edited(headers) => {
                let pairs: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let edited = Request {
                    headers: &pairs,
                    ..*request
                };
                self.decide_request(context, &edited, host, out);
            }
        }
    }

    /// A request held for another worker's refresh, looked at again (at a tick): it uses that
    /// refresh's outcome, waits on, refreshes itself once the other lease ran out, or past
    /// its deadline is answered 503.
    pub(super) fn login_refresh_again(
        &mut self,
        waiter: held::Held,
        host: Host<'_>,
        out: &mut Effects,
    ) {
        if host.now_ms >= waiter.deadline_ms {
            out.push(Effect::Answer {
                context: waiter.context,
                response: unavailable(),
            });
            return;
        }
        let headers = waiter.request.header_pairs();
        let view = waiter.request.view(&headers);
        let route = self.login_request(waiter.context, &view, host, out);
        self.follow_route(waiter.context, &view, route, host, out);
    }

    /// A login token call could not start: its request is answered, the login failed.
    pub(super) fn login_not_dispatched(&mut self, id: u64, host: Host<'_>, out: &mut Effects) {
        // The same as an answer that never came.
        self.login_answered(id, None, &[], host, out);
    }

    /// The pipeline refused request `context` for want of a token: a marked navigation
    /// becomes a login (`Some`: the answer to send instead).
    pub(super) fn login_instead(
        &mut self,
        context: u32,
        request: &Request<'_>,
        now_ms: u64,
        out: &mut Effects,
    ) -> Option<Response> {
        let mark = self.logins.marks.remove(&context)?;
        let mut headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .filter(|(n, _)| *n != "cookie")
            .copied()
            .collect();
        if let Some(cookie) = &mark.cookie {
            headers.push(("cookie", cookie));
        }
        let flow_request = flow::Request {
            method: request.method,
            authority: request.authority,
            path: request.path,
            headers: &headers,
        };
        // The time and keys here only seal the transaction; the host facts come as they are.
        let flow = self.logins.flows.get(mark.flow)?;
        let provider = flow.login.provider;
        let endpoints = self.keys.login_endpoints(provider);
        let mut random_ok = true;
        let answer = {
            let mut random = |buf: &mut [u8]| random_ok &= fill_random(buf);
            let mut ctx = flow::Context {
                now: now_ms / 1000,
                endpoints: endpoints.as_deref(),
                keys: None,
                logouts: &flow::NoLogouts,
                refreshes: &flow::NoRefreshes,
                random: &mut random,
            };
            flow.start_login(&flow_request, &mut ctx)
        }?;
        if !random_ok {
            return Some(unavailable());
        }
        if let Some(event) = &answer.event {
            self.login_event(event, out);
        }
        Some(response_of(answer))
    }

    /// Whether request `context` may become a login when refused for want of a token.
    pub(super) fn login_may_start(&self, context: u32) -> bool {
        self.logins.marks.contains_key(&context)
    }

    /// Whether request `context` waits for its body (a back-channel logout).
    pub fn wants_body(&self, context: u32) -> bool {
        self.logins.bodies.contains_key(&context)
    }

    /// The body of a request that waits for it (at most [`MAX_LOGIN_BODY_BYTES`] + 1 bytes).
    pub fn on_request_body(
        &mut self,
        context: u32,
        body: &[u8],
        host: Host<'_>,
        out: &mut Effects,
    ) {
        let Some(index) = self.logins.bodies.remove(&context) else {
            return;
        };
        if body.len() > MAX_LOGIN_BODY_BYTES {
            out.push(Effect::Answer {
                context,
                response: Response {
                    status: 413,
                    headers: vec![("cache-control".to_string(), "no-store".to_string())],
                    body: String::new(),
                    grpc_status: None,
                },
            });
            return;
        }
        let (Some(flow), Some(ledger)) = (
            self.logins.flows.get(index),
            self.ledger(host.shared, index),
        ) else {
            return;
        };
        let keys = self.ready_keys(flow.login.provider, host.now_ms);
        let now = host.now_ms / 1000;
        let mut no_random = |_: &mut [u8]| {};
        let ctx = flow::Context {
            now,
            endpoints: None,
            keys,
            logouts: &ledger,
            refreshes: &flow::NoRefreshes,
            random: &mut no_random,
        };
        let mut answer = flow.on_backchannel_logout(body, &ctx);
        if let Some(Event::BackchannelLogout { sid, sub }) = &answer.event {
            if !ledger.record(sid.as_deref(), sub.as_deref(), now) {
                // Not acknowledged, so the OP may send it again (fail closed).
                log(
                    out,
                    Level::Warn,
                    "login: back-channel logout not recorded: shared data busy",
                );
                answer = flow::Answer {
                    status: 503,
                    headers: unavailable_headers(),
                    body: String::new(),
                    event: Some(Event::BackchannelLogoutRefused(
                        crate::reason::LoginReason::Unrecorded,
                    )),
                };
            }
        }
        if let Some(event) = &answer.event {
            self.login_event(event, out);
        }
        out.push(Effect::Answer {
            context,
            response: response_of(answer),
        });
    }

    /// Request `context` is over: nothing of the login waits for it.
    pub(super) fn login_request_done(&mut self, context: u32) {
        if !self.logins.marks.is_empty() {
            self.logins.marks.remove(&context);
        }
        if !self.logins.bodies.is_empty() {
            self.logins.bodies.remove(&context);
        }
    }

    /// The answer cap of a login call.
    pub(super) fn login_answer_cap() -> usize {
        MAX_TOKEN_ANSWER_BYTES
    }

    /// Counts the event (`mesh_oauth.login.*`, `mesh_oauth.session.*`) and logs its audit
    /// line: the event and its reason only, never a token, code, state or cookie.
    fn login_event(&mut self, event: &Event, out: &mut Effects) {
        let metric = event.metric();
        self.metrics
            .add(MetricKind::Counter, &format!("mesh_oauth.{metric}"), 1, out);
        let level = match self.config.audit.level {
            AuditLevel::Off => return,
            AuditLevel::Debug => Level::Debug,
            AuditLevel::Info => Level::Info,
            AuditLevel::Warn => Level::Warn,
        };
        // Everything a login does is worth a line at the configured audit level; the reason is
        // a name from one list (`LoginReason`), never anything the request carried.
        let line = format!("mesh-oauth: {}", event.audit_json());
        out.push(Effect::Log { level, line });
    }
}
