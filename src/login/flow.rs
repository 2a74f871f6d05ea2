//! The login state machine. For each request to a host a login serves, [`Flow::on_request`]
//! decides: go on with edits (a session becomes `Authorization: Bearer`, login cookies are
//! removed), answer (callback, logout), or call the token endpoint (code redemption, refresh)
//! and finish in [`Flow::on_token_answer`]. After the pipeline refused a request for want of a
//! token, [`Flow::start_login`] turns a top-level navigation into a redirect to the OP.
//! Nothing here calls the host; time, randomness, keys and the endpoints come in as arguments.

use super::cookies::{self, MAX_CHUNKS};
use super::endpoints::Endpoints;
use super::form;
use super::id_token::{self, Expected};
use super::return_path;
use super::seal::{KeyRing, SEAL_RANDOM_LEN};
use super::session::{Session, SessionError};
use super::session_cache::{CachedSession, SessionCache};
use super::transaction::{self, Transaction, TRANSACTION_RANDOM_LEN, TRANSACTION_SECONDS};
use crate::alg::AlgSet;
use crate::authorize::HeaderEdit;
use crate::config::{Login, Provider};
use crate::keys::KeySet;
use crate::reason::LoginReason;
use crate::token::TokenLimits;
use std::borrow::Cow;
use std::rc::Rc;

pub use super::token_call::{TokenCall, CLIENT_ASSERTION_RANDOM_LEN, MAX_TOKEN_ANSWER_BYTES};

/// A token this close to its expiry is refreshed before it is forwarded.
pub const REFRESH_MARGIN_SECONDS: u64 = 10;
/// A token answer without `expires_in` and without a readable `exp` lives this long.
pub const DEFAULT_TOKEN_SECONDS: u64 = 300;
/// Random bytes [`Flow::on_request`], [`Flow::start_login`] and [`Flow::on_token_answer`] may
/// ask for at most, in one call.
pub const MAX_RANDOM_LEN: usize = TRANSACTION_RANDOM_LEN;

/// The request as the flow sees it.
pub struct Request<'a> {
    pub method: &'a str,
    /// `:authority` as received.
    pub authority: &'a str,
    /// `:path` as received, query included.
    pub path: &'a str,
    /// Lower-case names; repeated headers are separate entries.
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> Request<'a> {
    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
    }

    /// Every `cookie` header, joined as one (HTTP/2 may send several); one is not copied.
    fn cookie(&self) -> Option<Cow<'a, str>> {
        let mut all = self
            .headers
            .iter()
            .filter(|(key, _)| *key == "cookie")
            .map(|(_, value)| *value);
        let first = all.next()?;
        match all.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = [first, second].join("; ");
                for more in all {
                    joined.push_str("; ");
                    joined.push_str(more);
                }
                Some(Cow::Owned(joined))
            }
        }
    }

    fn path_only(&self) -> &'a str {
        self.path
            .split_once('?')
            .map_or(self.path, |(path, _)| path)
    }

    fn query(&self) -> &'a str {
        self.path.split_once('?').map_or("", |(_, query)| query)
    }

    /// A top-level browser navigation: `Sec-Fetch-Mode: navigate`, or without Fetch Metadata
    /// a `GET`/`HEAD` whose `Accept` prefers `text/html`. Only these are sent to log in.
    pub fn is_navigation(&self) -> bool {
        if !matches!(self.method, "GET" | "HEAD") {
            return false;
        }
        match self.header("sec-fetch-mode") {
            Some(mode) => mode.eq_ignore_ascii_case("navigate"),
            None => self.header("accept").is_some_and(prefers_html),
        }
    }
}

/// Whether an `Accept` value ranks `text/html` first (ties count: browsers list it first).
fn prefers_html(accept: &str) -> bool {
    let mut html = 0.0f64;
    let mut best_other = 0.0f64;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|param| param.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f64>().ok())
            .unwrap_or(1.0);
        if media == "text/html" {
            html = html.max(q);
        } else {
            best_other = best_other.max(q);
        }
    }
    html > 0.0 && html >= best_other
}

/// Step events, for metrics (`Event::metric`) and audit lines. They carry no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    LoginStarted,
    LoginCompleted,
    LoginFailed(LoginReason),
    SessionRefreshed,
    SessionRefreshFailed(LoginReason),
    /// A session cookie that was not used: tampered, expired, retired key, logged out.
    SessionRefused(LoginReason),
    /// RP-initiated logout; the session's `sid`, to refuse copies of the cookie too.
    Logout {
        sid: Option<String>,
    },
    /// A verified back-channel logout: record these for the session lifetime.
    BackchannelLogout {
        sid: Option<String>,
        sub: Option<String>,
    },
    BackchannelLogoutRefused(LoginReason),
}

impl Event {
    /// Why it failed or was refused: the audit line's `reason` (a [`LoginReason`] name).
    pub fn reason(&self) -> Option<LoginReason> {
        match self {
            Event::LoginFailed(reason)
            | Event::SessionRefreshFailed(reason)
            | Event::SessionRefused(reason)
            | Event::BackchannelLogoutRefused(reason) => Some(*reason),
            Event::LoginStarted
            | Event::LoginCompleted
            | Event::SessionRefreshed
            | Event::Logout { .. }
            | Event::BackchannelLogout { .. } => None,
        }
    }

    /// The metric this event counts.
    pub fn metric(&self) -> String {
        match self {
            Event::LoginStarted => "login.started".to_owned(),
            Event::LoginCompleted => "login.completed".to_owned(),
            Event::LoginFailed(reason) => format!("login.failed.{reason}"),
            Event::SessionRefreshed => "session.refreshed".to_owned(),
            Event::SessionRefreshFailed(_) => "session.refresh_failed".to_owned(),
            Event::SessionRefused(reason) => format!("session.refused.{reason}"),
            Event::Logout { .. } => "session.logout".to_owned(),
            Event::BackchannelLogout { .. } => "session.backchannel_logout".to_owned(),
            Event::BackchannelLogoutRefused(_) => "session.backchannel_logout_refused".to_owned(),
        }
    }

    /// The audit line's JSON: the metric and, for a failure or refusal, its reason; never
    /// anything the request carried.
    pub fn audit_json(&self) -> String {
        let metric = self.metric();
        match self.reason() {
            Some(reason) => format!("{{\"login\":\"{metric}\",\"reason\":\"{reason}\"}}"),
            None => format!("{{\"login\":\"{metric}\"}}"),
        }
    }
}

/// A local answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u32,
    /// Lower-case names; `set-cookie` may repeat.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub event: Option<Event>,
}

/// The request goes on through the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Continue {
    /// Request edits: `authorization` from the session, the `cookie` header without login
    /// cookies.
    pub edits: Vec<HeaderEdit>,
    /// `set-cookie` values for the response (a refreshed or cleared session).
    pub set_cookies: Vec<String>,
    /// A refusal for want of a token may become a login ([`Flow::start_login`]).
    pub may_login: bool,
    pub event: Option<Event>,
    /// A refresh just made: `(key, sealed session)` for [`RecentRefreshes::record`], so a
    /// request that still carries the old cookie uses it rather than the spent refresh token.
    pub refreshed: Option<(String, String)>,
}

/// A call to the token endpoint; its answer goes to [`Flow::on_token_answer`] with `pending`.
pub struct Call {
    pub request: TokenCall,
    pub pending: Pending,
    pub event: Option<Event>,
}

/// What a token call was for. Never `Debug`: it holds the flow's secrets.
pub enum Pending {
    Code {
        host: String,
        nonce: String,
        return_path: String,
        transaction_cookie: String,
    },
    Refresh {
        host: String,
        /// Shared with the worker's session cache (a refresh replaces it, never changes it).
        session: Rc<CachedSession>,
        /// The request's session chunk names, to clear the ones the new session leaves over.
        chunk_names: Vec<String>,
        navigation: bool,
        /// The request's `cookie` header edit, applied whatever the answer.
        cookie_edit: Option<HeaderEdit>,
    },
}

pub enum Step {
    Continue(Continue),
    Respond(Answer),
    Call(Box<Call>),
    /// The back-channel logout endpoint: read the body, then [`Flow::on_backchannel_logout`].
    ReadBody,
}

/// A mark of every logout a ledger holds: it changes whenever one is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerVersion {
    /// The shared-data CAS token of the ledger's version value (`None`: never written).
    pub cas: Option<u32>,
    /// Logouts recorded: the version value.
    pub count: u64,
}

/// Back-channel logouts recorded in the sidecar's shared data.
pub trait LogoutLedger {
    /// The ledger's version now, read before its entries: a session found not logged out
    /// under a version stays so while the version stands. `None`: the ledger keeps no version
    /// (each request then reads its entries).
    fn version(&self) -> Option<LedgerVersion> {
        None
    }
    /// When a logout of this OP session (`sid`) was recorded.
    fn sid_logged_out_at(&self, sid: &str) -> Option<u64>;
    /// When a logout of every session of this subject (`sub` only) was recorded.
    fn sub_logged_out_at(&self, sub: &str) -> Option<u64>;
    /// Whether a session (its `sid`, `sub`, and when it began) is logged out.
    fn session_logged_out(&self, sid: Option<&str>, sub: &str, authenticated_at: u64) -> bool {
        let by_sid = sid.and_then(|sid| self.sid_logged_out_at(sid)).is_some();
        let by_sub = self
            .sub_logged_out_at(sub)
            .is_some_and(|at| at >= authenticated_at);
        by_sid || by_sub
    }
}

/// Refreshes made in the sidecar in the last [`REFRESH_SHARED_SECONDS`], by session.
pub trait RecentRefreshes {
    /// The sealed session a refresh of the session named `key` made, if recent.
    fn recent(&self, key: &str, now: u64) -> Option<String>;
}

/// How long a refresh's result serves requests that still carry the session it replaced
/// (sent before the browser had the new cookie).
pub const REFRESH_SHARED_SECONDS: u64 = 60;

/// No refreshes recorded.
pub struct NoRefreshes;

impl RecentRefreshes for NoRefreshes {
    fn recent(&self, _key: &str, _now: u64) -> Option<String> {
        None
    }
}

/// No logouts recorded.
pub struct NoLogouts;

impl LogoutLedger for NoLogouts {
    fn sid_logged_out_at(&self, _sid: &str) -> Option<u64> {
        None
    }
    fn sub_logged_out_at(&self, _sub: &str) -> Option<u64> {
        None
    }
}

/// What a step may use besides the request.
pub struct Context<'a> {
    /// Unix seconds.
    pub now: u64,
    /// The provider's endpoints, once its discovery document is in.
    pub endpoints: Option<&'a Endpoints>,
    /// The provider's keys, once fetched.
    pub keys: Option<&'a KeySet>,
    pub logouts: &'a dyn LogoutLedger,
    /// Refreshes other requests (in any worker) made moments ago.
    pub refreshes: &'a dyn RecentRefreshes,
    /// Fills a buffer with cryptographically secure random bytes (WASI `random_get`).
    pub random: &'a mut dyn FnMut(&mut [u8]),
}

impl Context<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut bytes = [0u8; N];
        (self.random)(&mut bytes);
        bytes
    }
}

/// Why a session is refreshed before its token is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshDue {
    /// The token expires within [`REFRESH_MARGIN_SECONDS`].
    pub expiring: bool,
    /// `sessionRecheckSeconds` have passed since the tokens were last obtained.
    pub recheck_due: bool,
}

/// One `login` entry, compiled: its configuration, its cookie keys, its provider's facts.
pub struct Flow {
    pub login: Login,
    pub(super) keys: KeyRing,
    pub(super) issuer: String,
    algorithms: AlgSet,
    clock_skew_seconds: u64,
    token_limits: TokenLimits,
    timeout_ms: u64,
    /// This worker's opened session cookies (for this ring of `keys`).
    sessions: SessionCache,
}

impl Flow {
    /// `None` when the key ring is empty (the parser never lets that through).
    pub fn new(login: &Login, provider: &Provider, limits: &crate::config::Limits) -> Option<Flow> {
        Some(Flow {
            keys: KeyRing::new(&login.cookie_keys.0)?,
            login: login.clone(),
            issuer: provider.issuer.clone(),
            algorithms: provider.algorithms,
            clock_skew_seconds: provider.clock_skew_seconds,
            token_limits: TokenLimits::from(limits),
            timeout_ms: provider.timeout_ms,
            sessions: SessionCache::new(limits.max_cached_sessions),
        })
    }

    /// Whether this login serves requests to `authority`.
    pub fn serves(&self, authority: &str) -> bool {
        self.login.origin_for(authority).is_some()
    }

    pub(super) fn expected(&self) -> Expected<'_> {
        Expected {
            issuer: &self.issuer,
            client_id: &self.login.client_id,
            algorithms: self.algorithms,
            clock_skew_seconds: self.clock_skew_seconds,
            limits: self.token_limits,
        }
    }

    pub(super) fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    pub fn on_request(&self, request: &Request<'_>, ctx: &mut Context<'_>) -> Step {
        let Some(origin) = self.login.origin_for(request.authority) else {
            return Step::Continue(strip_login_cookies(request));
        };
        let host = origin.authority.clone();
        let path = request.path_only();
        if path == self.login.callback_path {
            return match request.method {
                "GET" => self.on_callback(request, &host, ctx),
                _ => Step::Respond(method_not_allowed("GET")),
            };
        }
        if path == self.login.logout_path {
            return match request.method {
                "POST" => Step::Respond(self.on_logout(request, ctx)),
                _ => Step::Respond(method_not_allowed("POST")),
            };
        }
        if path == self.login.backchannel_logout_path {
            return match request.method {
                "POST" => Step::ReadBody,
                _ => Step::Respond(method_not_allowed("POST")),
            };
        }
        let cookie = request.cookie();
        let mut next = strip_cookies(cookie.as_deref());
        // A request with a token of its own is an API request: the session is not consulted.
        if request.header("authorization").is_some() {
            return Step::Continue(next);
        }
        next.may_login = request.is_navigation();
        let opened = self
            .sessions
            .from_cookies(cookie.as_deref(), &self.keys, &host, ctx.now);
        let session = match opened {
            Ok(Some(session)) => session,
            Ok(None) => return Step::Continue(next),
            Err(error) => {
                next.set_cookies = clear_session(cookie.as_deref());
                next.event = Some(Event::SessionRefused(session_reason(error)));
                return Step::Continue(next);
            }
        };
        if self.logged_out(&session, ctx.logouts, ctx.now) {
            next.set_cookies = clear_session(cookie.as_deref());
            next.event = Some(Event::SessionRefused(LoginReason::LoggedOut));
            return Step::Continue(next);
        }
        let RefreshDue {
            expiring,
            recheck_due,
        } = self.refresh_due(&session, ctx.now);
        if expiring || (recheck_due && session.refresh_token.is_some()) {
            let Some(refresh_token) = session.refresh_token.clone() else {
                // Nothing to refresh with: the session ends with its token.
                next.set_cookies = clear_session(cookie.as_deref());
                next.event = Some(Event::SessionRefused(LoginReason::Expired));
                return Step::Continue(next);
            };
            let Some(endpoints) = ctx.endpoints else {
                if expiring {
                    return Step::Respond(unavailable());
                }
                // The token is still good: use it, refresh once the endpoints are in.
                next.edits.push(bearer(&session.token));
                next.may_login = false;
                return Step::Continue(next);
            };
            // Another request of this session refreshed it moments ago (the browser still
            // sent the old cookie): its result serves, the refresh token is spent.
            if let Some(renewed) = self.recently_refreshed(&session, &host, ctx) {
                let (renewed, sealed) = renewed;
                if let Some(chunks) = cookies::chunk(&sealed) {
                    let max_age = session
                        .authenticated_at
                        .saturating_add(self.login.session_max_age_seconds)
                        .saturating_sub(ctx.now);
                    let written: Vec<String> = chunks.iter().map(|(n, _)| n.clone()).collect();
                    next.set_cookies = chunks
                        .iter()
                        .map(|(name, value)| cookies::set_cookie(name, value, max_age))
                        .chain(
                            cookies::session_chunk_names(cookie.as_deref())
                                .iter()
                                .filter(|name| !written.contains(name))
                                .map(|name| cookies::clear_cookie(name)),
                        )
                        .collect();
                    next.edits.push(bearer(&renewed.token));
                    next.may_login = false;
                    return Step::Continue(next);
                }
            }
            let call = self.refresh_call(&refresh_token, endpoints, ctx);
            // Only the cookie edit is in `next` so far; it applies whatever the answer.
            let cookie_edit = next.edits.pop();
            return Step::Call(Box::new(Call {
                request: call,
                pending: Pending::Refresh {
                    host,
                    session,
                    chunk_names: cookies::session_chunk_names(cookie.as_deref()),
                    navigation: next.may_login,
                    cookie_edit,
                },
                event: None,
            }));
        }
        next.edits.push(bearer(&session.token));
        next.may_login = false;
        Step::Continue(next)
    }

    /// Whether `session` is due a refresh at `now` (Unix seconds), and why.
    pub fn refresh_due(&self, session: &Session, now: u64) -> RefreshDue {
        RefreshDue {
            expiring: now.saturating_add(REFRESH_MARGIN_SECONDS) >= session.token_expires_at,
            recheck_due: now
                >= session
                    .refreshed_at
                    .saturating_add(self.login.session_recheck_seconds),
        }
    }

    /// The cookie keys: `explain` opens cookies with them as the filter does.
    pub fn key_ring(&self) -> &KeyRing {
        &self.keys
    }

    /// A recent refresh of `session` by another request, still usable.
    fn recently_refreshed(
        &self,
        session: &Session,
        host: &str,
        ctx: &Context<'_>,
    ) -> Option<(Session, String)> {
        let sealed = ctx.refreshes.recent(&session.refresh_key()?, ctx.now)?;
        let renewed = Session::open(&sealed, &self.keys, host, ctx.now).ok()?;
        let usable = renewed.sub == session.sub
            && ctx.now.saturating_add(REFRESH_MARGIN_SECONDS) < renewed.token_expires_at;
        usable.then_some((renewed, sealed))
    }

    /// Whether the ledger ends `session`. Its entries are read only when the ledger's version
    /// moved since the session was last found not logged out (or that answer is older than
    /// [`LEDGER_VERDICT_SECONDS`](super::session_cache::LEDGER_VERDICT_SECONDS)): the version
    /// is read first, so a logout recorded during the read moves it for the next request.
    fn logged_out(&self, session: &CachedSession, logouts: &dyn LogoutLedger, now: u64) -> bool {
        let version = logouts.version();
        if version.is_some_and(|version| session.not_logged_out_under(version, now)) {
            return false;
        }
        let logged_out = logouts.session_logged_out(
            session.sid.as_deref(),
            &session.sub,
            session.authenticated_at,
        );
        if let (false, Some(version)) = (logged_out, version) {
            session.mark_not_logged_out(version, now);
        }
        logged_out
    }

    /// The redirect to the OP for a navigation the pipeline refused for want of a token;
    /// `None` when this request may not start a login (then the refusal stands).
    pub fn start_login(&self, request: &Request<'_>, ctx: &mut Context<'_>) -> Option<Answer> {
        let origin = self.login.origin_for(request.authority)?;
        if !request.is_navigation() {
            return None;
        }
        let Some(endpoints) = ctx.endpoints else {
            return Some(unavailable());
        };
        let host = origin.authority.clone();
        let mut return_to = return_path::sanitize(request.path);
        let return_path_only = return_to.split('?').next().unwrap_or("/");
        if [
            &self.login.callback_path,
            &self.login.logout_path,
            &self.login.backchannel_logout_path,
        ]
        .iter()
        .any(|own| own.as_str() == return_path_only)
        {
            return_to = "/".to_owned();
        }
        let cookie = request.cookie();
        let random = ctx.bytes::<TRANSACTION_RANDOM_LEN>();
        let (tx, name, sealed) = Transaction::start(return_to, ctx.now, &random, &self.keys, &host);
        let scope = self.login.scopes.join(" ");
        let redirect_uri = self.redirect_uri(origin);
        let challenge = tx.code_challenge();
        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &self.login.client_id),
            ("redirect_uri", &redirect_uri),
            ("scope", &scope),
            ("state", &tx.state),
            ("nonce", &tx.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        params.extend(
            self.login
                .authorization_params
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        let separator = if endpoints.authorization.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!(
            "{}{separator}{}",
            endpoints.authorization,
            form::encode(&params)
        );
        let mut set_cookies = vec![cookies::set_cookie(&name, &sealed, TRANSACTION_SECONDS)];
        set_cookies.extend(
            transaction::stale_transactions(cookie.as_deref(), &self.keys, &host, ctx.now)
                .iter()
                .map(|stale| cookies::clear_cookie(stale)),
        );
        // Whatever session cookie came along did not serve: it goes too.
        set_cookies.extend(clear_session(cookie.as_deref()));
        Some(redirect(&location, set_cookies, Some(Event::LoginStarted)))
    }

    pub(super) fn redirect_uri(&self, origin: &crate::config::Origin) -> String {
        format!("{}{}", origin.url(), self.login.callback_path)
    }

    fn on_callback(&self, request: &Request<'_>, host: &str, ctx: &mut Context<'_>) -> Step {
        let cookie = request.cookie();
        let params = match form::decode(request.query()) {
            Ok(params) => params,
            Err(_) => return Step::Respond(login_failed(400, LoginReason::Parameters, Vec::new())),
        };
        let state = form::get(&params, "state").unwrap_or("");
        let tx_name = transaction::cookie_name(state);
        let tx_cookie = cookies::transactions(cookie.as_deref())
            .into_iter()
            .find(|(name, _)| *name == tx_name)
            .map(|(_, value)| value.to_owned());
        // Whatever happens next, this transaction is over.
        let clear: Vec<String> = tx_cookie
            .as_ref()
            .map(|_| vec![cookies::clear_cookie(&tx_name)])
            .unwrap_or_default();
        let tx = tx_cookie
            .and_then(|sealed| Transaction::open(&tx_name, &sealed, &self.keys, host, ctx.now).ok())
            .filter(|tx| !state.is_empty() && transaction::same_secret(&tx.state, state));
        if let Some(error) = form::get(&params, "error") {
            // The OP's own refusal (access_denied, login_required …): shown, never retried.
            let code = if error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                && error.len() <= 64
            {
                error
            } else {
                "error"
            };
            let mut answer = plain(
                403,
                &format!("Sign-in was not completed: the identity provider answered {code}.\n"),
                clear,
            );
            answer.event = Some(Event::LoginFailed(LoginReason::ProviderError));
            return Step::Respond(answer);
        }
        let Some(tx) = tx else {
            return Step::Respond(login_failed(400, LoginReason::State, clear));
        };
        // Without the endpoints or the keys the code could be redeemed but the ID token not
        // checked: answered before the code is spent, so a reload can still complete.
        let (Some(endpoints), Some(_)) = (ctx.endpoints, ctx.keys) else {
            return Step::Respond(unavailable());
        };
        match form::get(&params, "iss") {
            Some(iss) if iss != self.issuer => {
                return Step::Respond(login_failed(400, LoginReason::Iss, clear));
            }
            None if endpoints.iss_parameter_supported => {
                return Step::Respond(login_failed(400, LoginReason::Iss, clear));
            }
            _ => {}
        }
        let Some(code) = form::get(&params, "code").filter(|code| !code.is_empty()) else {
            return Step::Respond(login_failed(400, LoginReason::Code, clear));
        };
        let Some(origin) = self.login.origin_for(request.authority) else {
            return Step::Respond(login_failed(400, LoginReason::Host, clear));
        };
        let redirect_uri = self.redirect_uri(origin);
        let call = self.code_call(code, &redirect_uri, &tx.verifier, endpoints, ctx);
        Step::Call(Box::new(Call {
            request: call,
            pending: Pending::Code {
                host: host.to_owned(),
                nonce: tx.nonce,
                return_path: tx.return_path,
                transaction_cookie: tx_name,
            },
            event: None,
        }))
    }

    /// The token endpoint's answer to a call this flow asked for.
    pub fn on_token_answer(
        &self,
        pending: Pending,
        status: Option<u32>,
        body: &[u8],
        ctx: &mut Context<'_>,
    ) -> Step {
        match pending {
            Pending::Code {
                host,
                nonce,
                return_path,
                transaction_cookie,
            } => Step::Respond(self.finish_login(
                &host,
                &nonce,
                &return_path,
                &transaction_cookie,
                status,
                body,
                ctx,
            )),
            Pending::Refresh {
                host,
                session,
                chunk_names,
                navigation,
                cookie_edit,
            } => {
                let mut next = Continue {
                    edits: cookie_edit.into_iter().collect(),
                    ..Continue::default()
                };
                match self.refreshed(&session, status, body, ctx) {
                    Ok(renewed) => {
                        let cookie_expires = session
                            .authenticated_at
                            .saturating_add(self.login.session_max_age_seconds);
                        match self.session_cookies(
                            &renewed,
                            &host,
                            cookie_expires,
                            &chunk_names,
                            ctx,
                        ) {
                            Some((set_cookies, sealed)) => {
                                next.edits.push(bearer(&renewed.token));
                                next.set_cookies = set_cookies;
                                next.event = Some(Event::SessionRefreshed);
                                next.refreshed = session.refresh_key().map(|key| (key, sealed));
                            }
                            None => {
                                next.set_cookies = clear_names(&chunk_names);
                                next.may_login = navigation;
                                next.event =
                                    Some(Event::SessionRefreshFailed(LoginReason::SessionTooLarge));
                            }
                        }
                    }
                    // The OP did not answer and the token is still good: keep the session.
                    Err(reason @ LoginReason::TokenEndpoint)
                        if ctx.now < session.token_expires_at =>
                    {
                        next.edits.push(bearer(&session.token));
                        next.event = Some(Event::SessionRefreshFailed(reason));
                    }
                    Err(reason) => {
                        next.set_cookies = clear_names(&chunk_names);
                        next.may_login = navigation;
                        next.event = Some(Event::SessionRefreshFailed(reason));
                    }
                }
                Step::Continue(next)
            }
        }
    }

    /// A refresh this request waited for, made by another request (in any worker), failed:
    /// the request goes on as that one did (the old token while it is good, else the session
    /// ends), counted once, for the request that made the call.
    pub fn on_refresh_failed_elsewhere(&self, pending: Pending, ctx: &mut Context<'_>) -> Step {
        let mut step = self.on_token_answer(pending, None, &[], ctx);
        if let Step::Continue(next) = &mut step {
            next.event = None;
        }
        step
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_login(
        &self,
        host: &str,
        nonce: &str,
        return_path: &str,
        transaction_cookie: &str,
        status: Option<u32>,
        body: &[u8],
        ctx: &mut Context<'_>,
    ) -> Answer {
        let clear = vec![cookies::clear_cookie(transaction_cookie)];
        let tokens = match self.token_answer(status, body) {
            Ok(tokens) => tokens,
            Err(reason @ LoginReason::TokenEndpoint) => return login_failed(502, reason, clear),
            Err(reason) => return login_failed(400, reason, clear),
        };
        let Some(id_token_raw) = tokens.id_token.as_deref() else {
            return login_failed(400, LoginReason::IdTokenMissing, clear);
        };
        let Some(keys) = ctx.keys else {
            return unavailable();
        };
        let id_token = match id_token::verify_id_token(
            id_token_raw,
            keys,
            &self.expected(),
            Some(nonce),
            tokens.access_token.as_deref(),
            ctx.now,
        ) {
            Ok(verified) => verified,
            Err(error) => return login_failed(400, error.reason(), clear),
        };
        let Some(session) = self.new_session(&tokens, &id_token, ctx.now) else {
            return login_failed(400, LoginReason::AccessTokenMissing, clear);
        };
        let expires = ctx.now.saturating_add(self.login.session_max_age_seconds);
        // Chunks a longer earlier session may have left would spoil the new one.
        let every_chunk: Vec<String> = (0..MAX_CHUNKS).map(cookies::chunk_name).collect();
        let Some((mut set_cookies, _)) =
            self.session_cookies(&session, host, expires, &every_chunk, ctx)
        else {
            return login_failed(400, LoginReason::SessionTooLarge, clear);
        };
        set_cookies.extend(clear);
        let mut answer = redirect(return_path, set_cookies, Some(Event::LoginCompleted));
        answer
            .headers
            .push(("referrer-policy".to_owned(), "no-referrer".to_owned()));
        answer
    }

    /// `Set-Cookie` values for a sealed session, clearing chunks of `previous` it leaves over.
    fn session_cookies(
        &self,
        session: &Session,
        host: &str,
        expires_at: u64,
        previous: &[String],
        ctx: &mut Context<'_>,
    ) -> Option<(Vec<String>, String)> {
        let random = ctx.bytes::<SEAL_RANDOM_LEN>();
        let sealed = session.sealed(&self.keys, host, expires_at, random)?;
        let chunks = cookies::chunk(&sealed)?;
        let max_age = expires_at.saturating_sub(ctx.now);
        let mut set: Vec<String> = chunks
            .iter()
            .map(|(name, value)| cookies::set_cookie(name, value, max_age))
            .collect();
        let written: Vec<&String> = chunks.iter().map(|(name, _)| name).collect();
        set.extend(
            previous
                .iter()
                .filter(|name| !written.contains(name))
                .map(|name| cookies::clear_cookie(name)),
        );
        Some((set, sealed))
    }

    /// RP-initiated logout: same-origin `POST` only (a cross-site form cannot log a user out).
    fn on_logout(&self, request: &Request<'_>, ctx: &mut Context<'_>) -> Answer {
        let Some(origin) = self.login.origin_for(request.authority) else {
            return plain(403, "Forbidden\n", Vec::new());
        };
        let site = request.header("sec-fetch-site");
        let origin_header = request.header("origin");
        let same_site = site.is_none_or(|site| site.eq_ignore_ascii_case("same-origin"));
        let same_origin =
            origin_header.is_none_or(|value| value.eq_ignore_ascii_case(&origin.url()));
        if !same_site || !same_origin || (site.is_none() && origin_header.is_none()) {
            let mut answer = plain(403, "Logout must come from this site.\n", Vec::new());
            answer.event = Some(Event::LoginFailed(LoginReason::LogoutCrossSite));
            return answer;
        }
        let cookie = request.cookie();
        let host = origin.authority.as_str();
        let session = Session::from_cookies(cookie.as_deref(), &self.keys, host, ctx.now)
            .ok()
            .flatten();
        let mut set_cookies: Vec<String> = (0..MAX_CHUNKS)
            .map(|index| cookies::clear_cookie(&cookies::chunk_name(index)))
            .collect();
        set_cookies.extend(
            cookies::transactions(cookie.as_deref())
                .iter()
                .map(|(name, _)| cookies::clear_cookie(name)),
        );
        let location = match ctx.endpoints.and_then(|e| e.end_session.clone()) {
            Some(end_session) => {
                let state = base64_random::<16>(ctx);
                let hint = session
                    .as_ref()
                    .and_then(|session| match self.login.forward {
                        crate::config::Forward::IdToken => Some(session.token.as_str()),
                        crate::config::Forward::AccessToken => session.id_token_hint.as_deref(),
                    });
                let mut params: Vec<(&str, &str)> = match hint {
                    Some(id_token) => vec![("id_token_hint", id_token)],
                    None => vec![("client_id", self.login.client_id.as_str())],
                };
                if let Some(uri) = &self.login.post_logout_redirect_uri {
                    params.push(("post_logout_redirect_uri", uri));
                }
                params.push(("state", &state));
                let separator = if end_session.contains('?') { '&' } else { '?' };
                format!("{end_session}{separator}{}", form::encode(&params))
            }
            None => self
                .login
                .post_logout_redirect_uri
                .clone()
                .unwrap_or_else(|| "/".to_owned()),
        };
        let event = Event::Logout {
            sid: session.and_then(|session| session.sid),
        };
        redirect(&location, set_cookies, Some(event))
    }

    /// The back-channel logout request's body (`logout_token=…`), Back-Channel Logout 1.0 §2.5.
    pub fn on_backchannel_logout(&self, body: &[u8], ctx: &Context<'_>) -> Answer {
        let refused = |reason: LoginReason| {
            let mut answer = json_answer(400, r#"{"error":"invalid_request"}"#);
            answer.event = Some(Event::BackchannelLogoutRefused(reason));
            answer
        };
        let Ok(text) = std::str::from_utf8(body) else {
            return refused(LoginReason::Malformed);
        };
        let Ok(params) = form::decode(text) else {
            return refused(LoginReason::Malformed);
        };
        let Some(token) = form::get(&params, "logout_token") else {
            return refused(LoginReason::Malformed);
        };
        let Some(keys) = ctx.keys else {
            return unavailable();
        };
        match id_token::verify_logout_token(token, keys, &self.expected(), ctx.now) {
            Ok(verified) => {
                let mut answer = json_answer(200, "");
                answer.event = Some(Event::BackchannelLogout {
                    sid: verified.text("sid").map(str::to_owned),
                    sub: verified.text("sub").map(str::to_owned),
                });
                answer
            }
            Err(error) => refused(error.reason()),
        }
    }
}

fn base64_random<const N: usize>(ctx: &mut Context<'_>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ctx.bytes::<N>())
}

fn session_reason(error: SessionError) -> LoginReason {
    error.reason()
}

fn bearer(token: &str) -> HeaderEdit {
    HeaderEdit::Set("authorization".to_owned(), format!("Bearer {token}"))
}

/// The request without its login cookies, nothing else changed.
pub fn strip_login_cookies(request: &Request<'_>) -> Continue {
    strip_cookies(request.cookie().as_deref())
}

/// [`strip_login_cookies`] of the request's `cookie` header(s) joined.
fn strip_cookies(cookie: Option<&str>) -> Continue {
    let mut next = Continue::default();
    if let Some(cookie) = cookie {
        if cookie.contains(cookies::LOGIN_COOKIE_PREFIX) {
            next.edits
                .push(match cookies::without_login_cookies(cookie) {
                    Some(kept) => HeaderEdit::Set("cookie".to_owned(), kept),
                    None => HeaderEdit::Remove("cookie".to_owned()),
                });
        }
    }
    next
}

fn clear_session(cookie: Option<&str>) -> Vec<String> {
    clear_names(&cookies::session_chunk_names(cookie))
}

fn clear_names(names: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|name| cookies::clear_cookie(name))
        .collect()
}

fn no_store() -> (String, String) {
    ("cache-control".to_owned(), "no-store".to_owned())
}

fn redirect(location: &str, set_cookies: Vec<String>, event: Option<Event>) -> Answer {
    let mut headers = vec![("location".to_owned(), location.to_owned()), no_store()];
    headers.extend(
        set_cookies
            .into_iter()
            .map(|c| ("set-cookie".to_owned(), c)),
    );
    Answer {
        status: 302,
        headers,
        body: String::new(),
        event,
    }
}

fn plain(status: u32, body: &str, set_cookies: Vec<String>) -> Answer {
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "text/plain; charset=utf-8".to_owned(),
        ),
        no_store(),
        ("referrer-policy".to_owned(), "no-referrer".to_owned()),
    ];
    headers.extend(
        set_cookies
            .into_iter()
            .map(|c| ("set-cookie".to_owned(), c)),
    );
    Answer {
        status,
        headers,
        body: body.to_owned(),
        event: None,
    }
}

fn json_answer(status: u32, body: &str) -> Answer {
    let mut headers = vec![no_store()];
    if !body.is_empty() {
        headers.push(("content-type".to_owned(), "application/json".to_owned()));
    }
    Answer {
        status,
        headers,
        body: body.to_owned(),
        event: None,
    }
}

/// A callback that cannot complete: a plain page, never a redirect (no loop).
fn login_failed(status: u32, reason: LoginReason, set_cookies: Vec<String>) -> Answer {
    let mut answer = plain(
        status,
        "Sign-in could not be completed. Go back to the page you wanted and try again.\n",
        set_cookies,
    );
    answer.event = Some(Event::LoginFailed(reason));
    answer
}

fn method_not_allowed(allow: &str) -> Answer {
    let mut answer = plain(405, "Method not allowed\n", Vec::new());
    answer.headers.push(("allow".to_owned(), allow.to_owned()));
    answer
}

fn unavailable() -> Answer {
    let mut answer = plain(
        503,
        "Sign-in is not available yet; try again shortly.\n",
        Vec::new(),
    );
    answer
        .headers
        .push(("retry-after".to_owned(), "1".to_owned()));
    answer.event = Some(Event::LoginFailed(LoginReason::ProviderUnavailable));
    answer
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
