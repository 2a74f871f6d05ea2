//! Metric names to the runtime's ids (each defined in the host once, with its kind), and the
//! per-request tally.

use super::{Effect, Effects};
use crate::audit::{self, Verdict};
use crate::authorize::Decision;
use crate::config::Config;
use std::collections::HashMap;

const CACHE_HIT: &str = "mesh_oauth.cache.hit";
const CACHE_MISS: &str = "mesh_oauth.cache.miss";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up: per-request and per-fetch counts.
    Counter,
    /// Goes up and down, or is set: held requests, cached tokens, key ages.
    Gauge,
}

/// The runtime's name for a metric in its effects: the shell keeps the host's id for it.
/// Stable for the plugin's life in the VM (the table is taken over at a push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetricId(pub u32);

#[derive(Default)]
pub(super) struct Metrics {
    ids: HashMap<String, MetricId>,
}

impl Metrics {
    /// `name`'s id, defined (with `kind`) on first use. Envoy keeps one stat per name for the
    /// whole process, so every worker adds to the same one.
    pub(super) fn id(&mut self, kind: MetricKind, name: &str, out: &mut Effects) -> MetricId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = MetricId(u32::try_from(self.ids.len()).unwrap_or(u32::MAX));
        self.ids.insert(name.to_string(), id);
        out.push(Effect::DefineMetric {
            id,
            kind,
            name: name.to_string(),
        });
        id
    }

    /// Adds `delta` to a counter or gauge.
    pub(super) fn add(&mut self, kind: MetricKind, name: &str, delta: i64, out: &mut Effects) {
        let id = self.id(kind, name, out);
        out.push(Effect::IncrementMetric { id, delta });
    }

    /// Sets a gauge.
    pub(super) fn record(&mut self, name: &str, value: u64, out: &mut Effects) {
        let id = self.id(MetricKind::Gauge, name, out);
        out.push(Effect::RecordMetric { id, value });
    }
}

/// Per-request counters, added up in the VM and handed to the host on the next tick (at most
/// one tick late): two host calls per request cost more than a cached request's own work.
#[derive(Default)]
pub(super) struct Tally {
    /// By provider and verdict: the counter's id and the count not yet reported. A handful
    /// of entries, scanned in order: a request neither formats nor hashes a metric name.
    verdicts: Vec<(Option<usize>, Verdict, MetricId, u64)>,
    /// `CACHE_HIT` and `CACHE_MISS`: id once defined, count not yet reported.
    cache: [(Option<MetricId>, u64); 2],
}

impl Tally {
    /// Counts a decided request under its provider and verdict.
    pub(super) fn count_verdict(
        &mut self,
        config: &Config,
        decision: &Decision,
        verdict: Verdict,
        metrics: &mut Metrics,
        out: &mut Effects,
    ) {
        let provider = decision.trace.provider;
        let known = self
            .verdicts
            .iter_mut()
            .find(|(p, v, _, _)| *p == provider && *v == verdict);
        if let Some((_, _, _, pending)) = known {
            *pending += 1;
            return;
        }
        let Some(name) = audit::request_metric(config, decision) else {
            return;
        };
        let id = metrics.id(MetricKind::Counter, &name, out);
        self.verdicts.push((provider, verdict, id, 1));
    }

    /// Counts a verified token's cache hit or miss.
    pub(super) fn count_cache(&mut self, cached: bool, metrics: &mut Metrics, out: &mut Effects) {
        let (slot, name) = if cached {
            (0, CACHE_HIT)
        } else {
            (1, CACHE_MISS)
        };
        if let Some((id, pending)) = self.cache.get_mut(slot) {
            if id.is_none() {
                *id = Some(metrics.id(MetricKind::Counter, name, out));
            }
            *pending += 1;
        }
    }

    pub(super) fn flush(&mut self, out: &mut Effects) {
        let verdicts = self.verdicts.iter_mut().map(|(_, _, id, n)| (Some(*id), n));
        let cache = self.cache.iter_mut().map(|(id, n)| (*id, n));
        for (id, pending) in verdicts.chain(cache) {
            if let (Some(id), 1..) = (id, *pending) {
                let delta = i64::try_from(*pending).unwrap_or(i64::MAX);
                out.push(Effect::IncrementMetric { id, delta });
                *pending = 0;
            }
        }
    }
}
