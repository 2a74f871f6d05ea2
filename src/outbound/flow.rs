//! The decision for one outbound request: which entry applies, which token it needs, and
//! whether that token is at hand, must be fetched (a call to dispatch) or is being fetched
//! elsewhere (wait). It returns [`Step`]s; it never calls the host.

use super::answer::{self, Expect, TokenAnswer};
use super::cache::{CacheKey, Lease, Lookup, Outcome, Token, TokenCache};
use super::refusal::Refusal;
use super::request::{self, Grant as AskFor, Signer, ACCESS_TOKEN_TYPE, TXN_TOKEN_TYPE};
use super::subject::{self, SubjectRefusal};
use crate::config::{
    ClientAuth, Config, Grant, HttpTarget, MissingSubject, OnFailure, Outbound, OutboundEntry,
};
use crate::keystore::SharedStore;
use crate::peer::Peer;
use crate::policy::{observe, pattern_matches, RequestFacts};
use std::collections::HashMap;
use std::rc::Rc;

/// A waiting request is answered 503 once it has waited this long past its entry's timeout.
const WAIT_MARGIN_MS: u64 = 1_000;
/// How often a request waiting for another worker's call looks at the shared record again.
const WAIT_POLL_MS: u64 = 50;
/// How often a request waiting for the token endpoint to be discovered looks again.
const DISCOVERY_POLL_MS: u64 = 250;
/// Subject tokens remembered per exchange entry (an agent acting for a handful of users at a
/// time reads each once); past it, one is forgotten for each new one.
const MAX_REMEMBERED_SUBJECTS: usize = 64;

/// An outbound request as the runtime sees it.
pub struct OutboundRequest<'a> {
    pub method: &'a str,
    /// The raw `:path`.
    pub path: &'a str,
    pub authority: &'a str,
    /// Lower-case names.
    pub headers: &'a [(&'a str, &'a str)],
    pub peer: &'a dyn Peer,
    /// When the request first arrived: it is asked about again while it waits.
    pub arrived_ms: u64,
}

/// What the runtime supplies per event: the shared data, the time, the token endpoints the
/// providers' discovery documents named, and fresh randomness.
pub struct Context<'a, S: SharedStore> {
    pub store: &'a S,
    pub now_ms: u64,
    pub token_endpoint: &'a dyn Fn(usize) -> Option<HttpTarget>,
    /// A fresh `jti` for a `private_key_jwt` assertion: asked only when one is signed (the
    /// CSPRNG is a host call, which a cached request does without).
    pub jti: &'a dyn Fn() -> [u8; 16],
    /// In [0, 1): spreads renewals and retries.
    pub jitter: f64,
}

/// What the runtime does next with the request (or, for [`Step::Done`], nothing).
pub enum Step {
    /// No entry matches: the request goes on as the app sent it.
    Untouched,
    /// Edit the headers and resume; start `renewal` in the background if given.
    Continue {
        edits: Vec<HeaderEdit>,
        renewal: Option<Call>,
        /// The renewal that was due could not even be asked for: the cached token goes on.
        renewal_failed: Option<Refusal>,
        audit: Audit,
    },
    /// Answer the request with `status` (403 for the subject, 503 when no token can be had).
    Respond {
        entry: usize,
        status: u16,
        retry_after_seconds: Option<u64>,
        reason: Refusal,
    },
    /// Dispatch this call and hold the request until its answer.
    Call(Call),
    /// Hold the request and ask again at `until_ms` at the latest, or when the shared record
    /// of `key` changes.
    Wait {
        entry: usize,
        key: CacheKey,
        until_ms: u64,
    },
    /// A background call finished: nothing to resume.
    Done,
    /// A background renewal got no token: the cached one goes on until it expires. Nothing
    /// to resume, but an operator must be able to see it before the requests fail.
    RenewalFailed { entry: usize, reason: Refusal },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderEdit {
    Set(String, String),
    Remove(String),
}

/// The audit line's facts (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub entry: usize,
    pub destination: String,
    /// The subject token's `sub`, when it had one.
    pub subject: Option<Rc<str>>,
    /// The acting client, for an exchange with an actor token.
    pub actor: Option<String>,
    pub source: Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cached,
    Fetched,
    /// `onFailure: passThrough`: no token could be had, the request went on as sent.
    PassedThrough,
}

/// A token endpoint call to dispatch; its answer goes back with `pending`.
pub struct Call {
    pub target: HttpTarget,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub timeout_ms: u64,
    pub pending: Pending,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Call({} {}, redacted)",
            self.target.cluster, self.target.path
        )
    }
}

/// What a call's answer needs to be understood. Not `Debug`: it holds the subject token.
pub struct Pending {
    entry: usize,
    entry_name: String,
    want: Want,
    lease: Lease,
    /// The actor token is fetched first; then the exchange.
    actor_lease: Option<Lease>,
    /// A renewal: no request waits for it.
    background: bool,
    destination: String,
}

impl Pending {
    pub fn entry(&self) -> usize {
        self.entry
    }

    pub fn is_background(&self) -> bool {
        self.background
    }

    /// The key of the token this call is for: waiting requests wait for it.
    pub fn key(&self) -> CacheKey {
        self.lease.key
    }
}

/// Which token a request needs.
#[derive(Clone)]
enum Want {
    /// The entry's client-credentials token (a `clientCredentials` entry, or an exchange's
    /// `missingSubject: clientCredentials`).
    Own,
    Exchange {
        subject: Rc<str>,
        sub: Option<Rc<str>>,
        exp_s: Option<u64>,
        /// The cache key, with the subject token's digest in it.
        key: CacheKey,
    },
    /// The exchange's actor token: not narrowed.
    Actor,
}

struct Compiled {
    entry: OutboundEntry,
    signer: Option<Signer>,
    issuer: String,
    timeout_ms: u64,
    /// The keys of the entry's own and actor tokens: the same for every request, so hashed
    /// once per configuration.
    own_key: CacheKey,
    actor_key: CacheKey,
    /// Subject tokens this worker read lately, with what was read and their cache key: a
    /// request with the same subject token skips decoding it and hashing it. Bounded by
    /// `MAX_REMEMBERED_SUBJECTS`; a configuration push starts afresh (the key depends on the
    /// entry).
    subjects: HashMap<Rc<str>, Remembered>,
}

/// What [`subject::read`] found in a subject token that was usable, and its cache key. Only
/// usable reads are kept: the expiry is checked again at each request.
#[derive(Clone)]
struct Remembered {
    /// The subject token itself, shared with the requests that carry it (no copy per request).
    subject: Rc<str>,
    sub: Option<Rc<str>>,
    exp_s: Option<u64>,
    key: CacheKey,
}

pub struct Flow {
    entries: Vec<Compiled>,
    cache: TokenCache,
    max_token_bytes: usize,
}

impl Flow {
    /// `capacity`: `limits.maxOutboundTokens`. `previous`: this worker's flow before a
    /// configuration push, whose cached tokens are kept. The parser checked each entry's
    /// provider and key; were one missing anyway, its calls would fail (fail closed).
    pub fn new(
        config: &Config,
        outbound: &Outbound,
        capacity: usize,
        previous: Option<Flow>,
    ) -> Flow {
        let entries = outbound
            .entries
            .iter()
            .map(|entry| {
                let client = entry.grant.client();
                let provider = config.providers.get(client.provider);
                let signer = match &client.auth {
                    ClientAuth::PrivateKeyJwt(key) => Signer::new(key),
                    _ => None,
                };
                let issuer = provider.map(|p| p.issuer.clone()).unwrap_or_default();
                Compiled {
                    own_key: key_of(entry, &issuer, Role::Own, &[]),
                    actor_key: key_of(entry, &issuer, Role::Actor, &[]),
                    entry: entry.clone(),
                    signer,
                    issuer,
                    timeout_ms: provider.map_or(5_000, |p| p.timeout_ms),
                    subjects: HashMap::new(),
                }
            })
            .collect();
        Flow {
            entries,
            cache: TokenCache::new(capacity, previous.map(|p| p.cache)),
            max_token_bytes: config.limits.max_token_bytes,
        }
    }

    pub fn entry_name(&self, entry: usize) -> Option<&str> {
        self.entries.get(entry).map(|c| c.entry.name.as_str())
    }

    /// The first entry whose `match` holds for the request.
    pub fn select(&self, request: &OutboundRequest<'_>) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        // A path that does not normalise matches no entry: nothing is attached.
        let path = crate::path::normalize(request.path).ok()?;
        let facts = RequestFacts {
            method: request.method,
            path: &path,
            host: request.authority,
            headers: request.headers,
            peer: request.peer,
        };
        self.entries.iter().position(|compiled| {
            compiled.entry.matcher.conditions.iter().all(|condition| {
                let observed = observe(&condition.fact, &facts, None);
                let any = condition
                    .any_of
                    .as_ref()
                    .is_none_or(|patterns| patterns.iter().any(|p| pattern_matches(p, &observed)));
                let none = condition
                    .none_of
                    .as_ref()
                    .is_none_or(|patterns| !patterns.iter().any(|p| pattern_matches(p, &observed)));
                any && none
            })
        })
    }

    /// A request's headers arrived (or a held request is asked about again).
    pub fn on_request<S: SharedStore>(
        &mut self,
        request: &OutboundRequest<'_>,
        cx: &Context<'_, S>,
    ) -> Step {
        let Some(index) = self.select(request) else {
            return Step::Untouched;
        };
        let compiled = &mut self.entries[index];
        let missing_subject = match &compiled.entry.grant {
            Grant::ClientCredentials(_) => None,
            Grant::TokenExchange(exchange) => Some(exchange.missing_subject),
        };
        let want = match missing_subject {
            None => Want::Own,
            Some(missing_subject) => {
                let read = subject::bearer(request.headers)
                    .and_then(|token| compiled.read_subject(token, cx.now_ms / 1000));
                match read {
                    Ok(want) => want,
                    Err(SubjectRefusal::Missing)
                        if missing_subject == MissingSubject::ClientCredentials =>
                    {
                        Want::Own
                    }
                    // Never sent on unauthenticated, nor with a subject the server would refuse.
                    Err(refusal) => {
                        let reason = refusal.reason();
                        return Step::Respond {
                            entry: index,
                            status: reason.status(),
                            retry_after_seconds: None,
                            reason,
                        };
                    }
                }
            }
        };
        let compiled = &self.entries[index];
        let key = self.key(index, &want);
        let timeout_ms = compiled.timeout_ms;
        let deadline = request
            .arrived_ms
            .saturating_add(timeout_ms)
            .saturating_add(WAIT_MARGIN_MS);
        let destination = request.authority.to_owned();
        match self.cache.lookup(cx.store, key, cx.now_ms, timeout_ms) {
            Lookup::Fresh(token) | Lookup::Renew(token, None) => {
                self.attach(index, &want, &token, Source::Cached, destination, None)
            }
            Lookup::Renew(token, Some(lease)) => {
                let (renewal, failed) =
                    match self.start(index, want.clone(), lease, true, &destination, cx) {
                        Started::Call(call) => (Some(*call), None),
                        Started::Wait { .. } => (None, None),
                        Started::Failed { reason, .. } => (None, Some(reason)),
                    };
                let mut step =
                    self.attach(index, &want, &token, Source::Cached, destination, renewal);
                if let Step::Continue { renewal_failed, .. } = &mut step {
                    *renewal_failed = failed;
                }
                step
            }
            Lookup::Fetch(lease) => match self.start(index, want, lease, false, &destination, cx) {
                Started::Call(call) => Step::Call(*call),
                Started::Wait { key, until_ms } if cx.now_ms < deadline => Step::Wait {
                    entry: index,
                    key,
                    until_ms: until_ms.min(deadline),
                },
                Started::Wait { .. } => {
                    self.fail(index, Refusal::TokenEndpointUnknown, 1, destination)
                }
                Started::Failed {
                    reason,
                    retry_after_seconds,
                } => self.fail(index, reason, retry_after_seconds, destination),
            },
            // Another worker's call: its answer reaches this worker only through the shared
            // record, so look again soon.
            Lookup::Wait { until_ms } if cx.now_ms < deadline => Step::Wait {
                entry: index,
                key,
                until_ms: until_ms
                    .min(deadline)
                    .min(cx.now_ms.saturating_add(WAIT_POLL_MS)),
            },
            Lookup::Wait { .. } => self.fail(index, Refusal::TokenUnavailable, 1, destination),
            Lookup::Failing {
                retry_after_seconds,
            } => self.fail(
                index,
                Refusal::TokenEndpointFailing,
                retry_after_seconds,
                destination,
            ),
        }
    }

    /// A call's answer (`status: None` when it failed or timed out, or was never dispatched).
    pub fn on_token_answer<S: SharedStore>(
        &mut self,
        mut pending: Pending,
        answer: &TokenAnswer<'_>,
        cx: &Context<'_, S>,
    ) -> Step {
        let index = pending.entry;
        if self.entry_name(index) != Some(pending.entry_name.as_str()) {
            // Configured away meanwhile: nothing to publish under this configuration's keys.
            self.abandon(cx.store, &pending);
            return Step::Done;
        }
        if let Some(actor_lease) = pending.actor_lease.take() {
            let parsed =
                answer::parse_answer(answer, Expect::ClientCredentials, self.max_token_bytes);
            let reason = parsed
                .as_ref()
                .err()
                .map_or(Refusal::ActorToken, answer::AnswerError::reason);
            let outcome = match parsed {
                Ok(issued) => Outcome::Issued {
                    value: issued.access_token,
                    bearer: issued.token_type == answer::TokenType::Bearer,
                    expires_in_ms: issued.expires_in_seconds.saturating_mul(1000),
                    not_after_ms: None,
                },
                Err(_) => Outcome::Failed,
            };
            let actor = self
                .cache
                .complete(cx.store, &actor_lease, outcome, cx.now_ms, cx.jitter);
            let Some(actor) = actor else {
                return self.give_up(pending, reason, cx);
            };
            return match self.exchange_form(&pending, Some(&actor.value), cx) {
                Some((target, form)) => Step::Call(self.call(target, form, pending)),
                None => self.give_up(pending, Refusal::ClientAssertion, cx),
            };
        }
        let expect = self.expect(index, &pending.want);
        match answer::parse_answer(answer, expect, self.max_token_bytes) {
            Ok(issued) => {
                let not_after_ms = match &pending.want {
                    Want::Exchange { exp_s, .. } => exp_s.map(|exp| exp.saturating_mul(1000)),
                    _ => None,
                };
                let token = self.cache.complete(
                    cx.store,
                    &pending.lease,
                    Outcome::Issued {
                        value: issued.access_token,
                        bearer: issued.token_type == answer::TokenType::Bearer,
                        expires_in_ms: issued.expires_in_seconds.saturating_mul(1000),
                        not_after_ms,
                    },
                    cx.now_ms,
                    cx.jitter,
                );
                match (pending.background, token) {
                    (true, Some(_)) => Step::Done,
                    (true, None) => Step::RenewalFailed {
                        entry: index,
                        reason: Refusal::TokenLifetime,
                    },
                    (false, Some(token)) => self.attach(
                        index,
                        &pending.want,
                        &token,
                        Source::Fetched,
                        pending.destination,
                        None,
                    ),
                    (false, None) => {
                        self.fail(index, Refusal::TokenLifetime, 1, pending.destination)
                    }
                }
            }
            Err(error) => {
                let kept = self.cache.complete(
                    cx.store,
                    &pending.lease,
                    Outcome::Failed,
                    cx.now_ms,
                    cx.jitter,
                );
                match (pending.background, kept) {
                    (true, _) => Step::RenewalFailed {
                        entry: index,
                        reason: error.reason(),
                    },
                    // A failed call keeps a token that is still valid.
                    (false, Some(token)) => self.attach(
                        index,
                        &pending.want,
                        &token,
                        Source::Cached,
                        pending.destination,
                        None,
                    ),
                    (false, None) => self.fail(index, error.reason(), 1, pending.destination),
                }
            }
        }
    }

    /// A call that will not be answered (its root context is gone): its leases are freed.
    pub fn abandon<S: SharedStore>(&mut self, store: &S, pending: &Pending) {
        self.cache.abandon(store, &pending.lease);
        if let Some(actor) = &pending.actor_lease {
            self.cache.abandon(store, actor);
        }
    }

    /// The cache key of the token `want` is for (hashed once: per entry, or per subject).
    fn key(&self, index: usize, want: &Want) -> CacheKey {
        let compiled = &self.entries[index];
        match want {
            Want::Own => compiled.own_key,
            Want::Actor => compiled.actor_key,
            Want::Exchange { key, .. } => *key,
        }
    }

    fn expect(&self, index: usize, want: &Want) -> Expect {
        match want {
            Want::Exchange { .. } => Expect::Exchange {
                requested_token_type: self.requested_token_type(index),
            },
            _ => Expect::ClientCredentials,
        }
    }

    /// A transaction token for a `txn-token` header, else an access token.
    fn requested_token_type(&self, index: usize) -> &'static str {
        if self.entries[index].entry.header == "txn-token" {
            TXN_TOKEN_TYPE
        } else {
            ACCESS_TOKEN_TYPE
        }
    }

    /// Starts the call for a lease this worker holds: the exchange, or first its actor token.
    fn start<S: SharedStore>(
        &mut self,
        index: usize,
        want: Want,
        lease: Lease,
        background: bool,
        destination: &str,
        cx: &Context<'_, S>,
    ) -> Started {
        let compiled = &self.entries[index];
        let provider = compiled.entry.grant.client().provider;
        let timeout_ms = compiled.timeout_ms;
        let actor_needed = matches!(want, Want::Exchange { .. })
            && matches!(&compiled.entry.grant, Grant::TokenExchange(x) if x.actor_client_credentials);
        if (cx.token_endpoint)(provider).is_none() {
            // Discovery has not named the token endpoint yet.
            self.cache.abandon(cx.store, &lease);
            return Started::Wait {
                key: lease.key,
                until_ms: cx.now_ms.saturating_add(DISCOVERY_POLL_MS),
            };
        };
        let mut pending = Pending {
            entry: index,
            entry_name: compiled.entry.name.clone(),
            want,
            lease,
            actor_lease: None,
            background,
            destination: destination.to_owned(),
        };
        let mut actor_token = None;
        if actor_needed {
            let actor_key = self.key(index, &Want::Actor);
            match self
                .cache
                .lookup(cx.store, actor_key, cx.now_ms, timeout_ms)
            {
                Lookup::Fresh(token) | Lookup::Renew(token, None) => actor_token = Some(token),
                Lookup::Renew(_, Some(actor_lease)) | Lookup::Fetch(actor_lease) => {
                    pending.actor_lease = Some(actor_lease);
                }
                Lookup::Wait { until_ms } => {
                    self.cache.abandon(cx.store, &pending.lease);
                    return Started::Wait {
                        key: actor_key,
                        until_ms,
                    };
                }
                Lookup::Failing {
                    retry_after_seconds,
                } => {
                    self.cache.abandon(cx.store, &pending.lease);
                    return Started::Failed {
                        reason: Refusal::ActorToken,
                        retry_after_seconds,
                    };
                }
            }
        }
        let form = if pending.actor_lease.is_some() {
            self.form(index, &AskFor::ClientCredentials { narrowed: false }, cx)
        } else {
            self.exchange_form(&pending, actor_token.as_ref().map(|t| t.value.as_str()), cx)
        };
        match form {
            Some((target, form)) => Started::Call(Box::new(self.call(target, form, pending))),
            None => {
                self.abandon(cx.store, &pending);
                Started::Failed {
                    reason: Refusal::ClientAssertion,
                    retry_after_seconds: 1,
                }
            }
        }
    }

    /// The request for the token `pending` is for (an exchange with `actor`, if any).
    fn exchange_form<S: SharedStore>(
        &self,
        pending: &Pending,
        actor: Option<&str>,
        cx: &Context<'_, S>,
    ) -> Option<(HttpTarget, request::FormRequest)> {
        let ask = match &pending.want {
            Want::Exchange { subject, .. } => AskFor::Exchange {
                subject_token: subject,
                actor_token: actor,
                requested_token_type: self.requested_token_type(pending.entry),
            },
            Want::Own => AskFor::ClientCredentials { narrowed: true },
            Want::Actor => AskFor::ClientCredentials { narrowed: false },
        };
        self.form(pending.entry, &ask, cx)
    }

    /// The token endpoint and the request to send it; `None` when the endpoint is not known
    /// or the assertion could not be signed.
    fn form<S: SharedStore>(
        &self,
        index: usize,
        ask: &AskFor<'_>,
        cx: &Context<'_, S>,
    ) -> Option<(HttpTarget, request::FormRequest)> {
        let compiled = &self.entries[index];
        let client = compiled.entry.grant.client();
        let target = (cx.token_endpoint)(client.provider)?;
        let form = request::token_request(
            client,
            compiled.signer.as_ref(),
            &compiled.issuer,
            &target.url,
            ask,
            cx.now_ms / 1000,
            (cx.jti)(),
        )
        .ok()?;
        Some((target, form))
    }

    fn call(&self, target: HttpTarget, form: request::FormRequest, pending: Pending) -> Call {
        Call {
            target,
            headers: form.headers,
            body: form.body,
            timeout_ms: self.entries[pending.entry].timeout_ms,
            pending,
        }
    }

    fn give_up<S: SharedStore>(
        &mut self,
        pending: Pending,
        reason: Refusal,
        cx: &Context<'_, S>,
    ) -> Step {
        self.cache.abandon(cx.store, &pending.lease);
        if pending.background {
            return Step::RenewalFailed {
                entry: pending.entry,
                reason,
            };
        }
        self.fail(pending.entry, reason, 1, pending.destination)
    }

    fn attach(
        &self,
        index: usize,
        want: &Want,
        token: &Token,
        source: Source,
        destination: String,
        renewal: Option<Call>,
    ) -> Step {
        let entry = &self.entries[index].entry;
        let mut edits = Vec::with_capacity(2);
        if entry.in_authorization() {
            edits.push(HeaderEdit::Set(
                "authorization".to_owned(),
                format!("Bearer {}", token.value),
            ));
        } else {
            edits.push(HeaderEdit::Set(entry.header.clone(), token.value.clone()));
            if matches!(want, Want::Exchange { .. }) {
                // The subject token was exchanged for this one: it does not travel on.
                edits.push(HeaderEdit::Remove("authorization".to_owned()));
            }
        }
        let actor = match (&entry.grant, want) {
            (Grant::TokenExchange(x), Want::Exchange { .. }) if x.actor_client_credentials => {
                Some(x.client.client_id.clone())
            }
            _ => None,
        };
        let subject = match want {
            Want::Exchange { sub, .. } => sub.clone(),
            _ => None,
        };
        Step::Continue {
            edits,
            renewal,
            renewal_failed: None,
            audit: Audit {
                entry: index,
                destination,
                subject,
                actor,
                source,
            },
        }
    }

    /// No token can be had: 503, or on as sent with `onFailure: passThrough`.
    fn fail(
        &self,
        index: usize,
        reason: Refusal,
        retry_after_seconds: u64,
        destination: String,
    ) -> Step {
        match self.entries[index].entry.on_failure {
            OnFailure::PassThrough => Step::Continue {
                edits: Vec::new(),
                renewal: None,
                renewal_failed: None,
                audit: Audit {
                    entry: index,
                    destination,
                    subject: None,
                    actor: None,
                    source: Source::PassedThrough,
                },
            },
            OnFailure::Refuse => Step::Respond {
                entry: index,
                status: 503,
                retry_after_seconds: Some(retry_after_seconds.max(1)),
                reason,
            },
        }
    }
}

impl Compiled {
    /// The exchange a subject token asks for: read (and hashed into its key) once, then
    /// remembered; its expiry is checked at every request all the same.
    fn read_subject(&mut self, token: &str, now_s: u64) -> Result<Want, SubjectRefusal> {
        let remembered = match self.subjects.get(token) {
            Some(remembered) => remembered.clone(),
            None => {
                let client_id = &self.entry.grant.client().client_id;
                let read = subject::read(token, now_s, client_id, &self.issuer)?;
                let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                let subject: Rc<str> = Rc::from(token);
                let remembered = Remembered {
                    subject: subject.clone(),
                    sub: read.sub.map(Rc::from),
                    exp_s: read.exp_s,
                    key: key_of(&self.entry, &self.issuer, Role::Exchange, digest.as_ref()),
                };
                if self.subjects.len() >= MAX_REMEMBERED_SUBJECTS {
                    if let Some(old) = self.subjects.keys().next().cloned() {
                        self.subjects.remove(&old);
                    }
                }
                self.subjects.insert(subject, remembered.clone());
                remembered
            }
        };
        if remembered.exp_s.is_some_and(|exp| exp <= now_s) {
            return Err(SubjectRefusal::Expired);
        }
        Ok(Want::Exchange {
            subject: remembered.subject,
            sub: remembered.sub,
            exp_s: remembered.exp_s,
            key: remembered.key,
        })
    }
}

#[derive(Clone, Copy)]
enum Role {
    Own,
    Exchange,
    Actor,
}

/// The cache key: a hash of what the token is for; the subject token only as its digest.
fn key_of(entry: &OutboundEntry, issuer: &str, role: Role, subject_digest: &[u8]) -> CacheKey {
    let client = entry.grant.client();
    let role_name: &[u8] = match role {
        Role::Own => b"client_credentials",
        Role::Exchange => b"token_exchange",
        Role::Actor => b"actor",
    };
    let actor: &[u8] = match &entry.grant {
        Grant::TokenExchange(x) if x.actor_client_credentials => b"actor",
        _ => b"",
    };
    let (audiences, resources, scopes) = match role {
        Role::Actor => (String::new(), String::new(), String::new()),
        _ => (
            client.audiences.join("\u{0}"),
            client.resources.join("\u{0}"),
            client.scopes.join(" "),
        ),
    };
    CacheKey::of(&[
        b"mesh-oauth outbound v1",
        entry.name.as_bytes(),
        issuer.as_bytes(),
        client.client_id.as_bytes(),
        client.auth.name().as_bytes(),
        role_name,
        entry.header.as_bytes(),
        audiences.as_bytes(),
        resources.as_bytes(),
        scopes.as_bytes(),
        actor,
        subject_digest,
    ])
}

enum Started {
    Call(Box<Call>),
    Wait {
        key: CacheKey,
        until_ms: u64,
    },
    Failed {
        reason: Refusal,
        retry_after_seconds: u64,
    },
}

#[cfg(test)]
#[path = "flow_tests.rs"]
mod tests;
