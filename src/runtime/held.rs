//! Requests the runtime holds (paused in the host) until what they wait for comes, or their
//! deadline passes.

use super::metrics::{MetricKind, Metrics};
use super::{CallId, Effects};
use crate::authorize::Request;
use crate::peer::FixedPeer;
use crate::response::Response;

const HELD_GAUGE: &str = "mesh_oauth.held_requests";

/// A held request's own copy of what it was decided on: it is decided again later, from
/// another host callback.
#[derive(Debug, Clone, Default)]
pub struct OwnedRequest {
    pub method: String,
    pub scheme: String,
    pub path: String,
    pub authority: String,
    pub headers: Vec<(String, String)>,
    /// The connection as it was when the request arrived.
    pub peer: FixedPeer,
}

impl OwnedRequest {
    pub fn of(request: &Request<'_>) -> OwnedRequest {
        let peer = request.peer;
        OwnedRequest {
            method: request.method.to_string(),
            scheme: request.scheme.to_string(),
            path: request.path.to_string(),
            authority: request.authority.to_string(),
            headers: request
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            peer: FixedPeer {
                uri_san: peer.uri_san().map(str::to_string),
                source_address: peer.source_address().map(str::to_string),
                destination_address: peer.destination_address().map(str::to_string),
                sni: peer.sni().map(str::to_string),
                certificate_digest: peer.certificate_digest().map(str::to_string),
            },
        }
    }

    /// The headers as [`Request`] borrows them.
    pub fn header_pairs(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect()
    }

    /// The request again; `headers` from [`OwnedRequest::header_pairs`].
    pub fn view<'a>(&'a self, headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request {
            method: &self.method,
            scheme: &self.scheme,
            path: &self.path,
            authority: &self.authority,
            headers,
            peer: &self.peer,
        }
    }
}

/// What a held request waits for.
#[derive(Debug, Clone)]
pub enum Until {
    /// A provider's keys: decided again whenever the provider's keys or prospects change.
    Keys {
        provider: usize,
        /// Waiting for a refetch for an unknown kid: when it started waiting. Once keys
        /// fetched by a fetch that started since are in, the request is decided with them,
        /// without asking for another fetch (one in flight before may predate the key).
        refetch_since: Option<u64>,
        /// A new configuration no longer has the provider it waited for.
        provider_removed: bool,
    },
    /// A call's answer: the flow that made the call takes the request
    /// ([`super::Runtime::take_held_for_call`]). Past its deadline it is answered with `expiry`.
    Call { call: CallId, expiry: Response },
    /// An outbound token (issue 29): asked about again when a call for `key` answers, and
    /// at its deadline (the outbound flow then decides: wait on, call, or refuse).
    Outbound {
        key: crate::outbound::cache::CacheKey,
        /// When the request arrived: the flow bounds its whole wait.
        arrived_ms: u64,
    },
    /// A session refresh another worker makes (browser login): the request's login step runs
    /// again at each tick, until that refresh's outcome is in shared data or its lease runs
    /// out (then this worker may refresh). Past its deadline it is answered 503.
    LoginRefresh,
}

#[derive(Debug, Clone)]
pub struct Held {
    pub context: u32,
    pub request: OwnedRequest,
    pub deadline_ms: u64,
    pub until: Until,
}

/// The held requests, counted in the `mesh_oauth.held_requests` gauge.
#[derive(Default)]
pub struct HeldRequests(Vec<Held>);

impl HeldRequests {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn hold(&mut self, held: Held, metrics: &mut Metrics, out: &mut Effects) {
        self.0.push(held);
        metrics.add(MetricKind::Gauge, HELD_GAUGE, 1, out);
    }

    /// Every held request, to be looked at again (those still waiting are held again).
    pub(super) fn take_all(&mut self, metrics: &mut Metrics, out: &mut Effects) -> Vec<Held> {
        let all = std::mem::take(&mut self.0);
        gauge_down(all.len(), metrics, out);
        all
    }

    /// The requests waiting for `call`, taken out.
    pub(super) fn take_for_call(
        &mut self,
        call: CallId,
        metrics: &mut Metrics,
        out: &mut Effects,
    ) -> Vec<Held> {
        self.take_where(
            |h| matches!(h.until, Until::Call { call: c, .. } if c == call),
            metrics,
            out,
        )
    }

    /// The requests waiting for an outbound token that `due` picks, taken out.
    pub(super) fn take_outbound(
        &mut self,
        due: impl Fn(&Held) -> bool,
        metrics: &mut Metrics,
        out: &mut Effects,
    ) -> Vec<Held> {
        self.take_where(
            |h| matches!(h.until, Until::Outbound { .. }) && due(h),
            metrics,
            out,
        )
    }

    /// The requests `pick` picks, taken out; when it picks none, nothing moves (this runs at
    /// every tick and every call's answer).
    fn take_where(
        &mut self,
        pick: impl Fn(&Held) -> bool,
        metrics: &mut Metrics,
        out: &mut Effects,
    ) -> Vec<Held> {
        if !self.0.iter().any(&pick) {
            return Vec::new();
        }
        let (taken, kept): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.0).into_iter().partition(pick);
        self.0 = kept;
        gauge_down(taken.len(), metrics, out);
        taken
    }

    /// Request `context` is over: it no longer waits.
    pub(super) fn release(&mut self, context: u32, metrics: &mut Metrics, out: &mut Effects) {
        if let Some(at) = self.0.iter().position(|h| h.context == context) {
            self.0.remove(at);
            metrics.add(MetricKind::Gauge, HELD_GAUGE, -1, out);
        }
    }

    /// Whether a request waits for another worker's session refresh (the root then ticks
    /// faster, to pass its outcome on soon).
    pub fn any_login_refresh(&self) -> bool {
        self.0
            .iter()
            .any(|h| matches!(h.until, Until::LoginRefresh))
    }

    /// The providers held requests wait for.
    pub fn key_providers(&self) -> impl Iterator<Item = usize> + '_ {
        self.0.iter().filter_map(|h| match h.until {
            Until::Keys { provider, .. } => Some(provider),
            Until::Call { .. } | Until::Outbound { .. } | Until::LoginRefresh => None,
        })
    }

    /// A new configuration: each request waiting for keys follows its provider to the index
    /// `new_index` gives, or is marked as waiting for a removed provider.
    pub(super) fn follow_providers(&mut self, new_index: impl Fn(usize) -> Option<usize>) {
        for held in &mut self.0 {
            if let Until::Keys {
                provider,
                provider_removed,
                ..
            } = &mut held.until
            {
                match new_index(*provider) {
                    Some(index) => *provider = index,
                    None => *provider_removed = true,
                }
            }
        }
    }
}

/// `taken` requests no longer held, in the gauge.
fn gauge_down(taken: usize, metrics: &mut Metrics, out: &mut Effects) {
    metrics.add(
        MetricKind::Gauge,
        HELD_GAUGE,
        -i64::try_from(taken).unwrap_or(i64::MAX),
        out,
    );
}
