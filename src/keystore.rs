//! Signing keys per provider and when to fetch them: a pure state machine. The filter
//! asks it which fetches are due, performs them with dispatched HTTP calls, and hands
//! back what came in; it never talks to the host itself.

use crate::authorize::{KeyLookup, KeyState};
use crate::config::{Config, HttpTarget, KeySource};
use crate::keys::{self, JwksLimits, KeySet};

/// The shortest refresh interval a `Cache-Control: max-age` can ask for.
const MIN_REFRESH_SECONDS: u64 = 30;
/// First retry after a failed fetch; doubles per failure up to `MAX_RETRY_MS`.
const FIRST_RETRY_MS: u64 = 1_000;
const MAX_RETRY_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `<issuer>/.well-known/openid-configuration`
    Discovery,
    Jwks,
}

/// A fetch the glue should dispatch now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub provider: usize,
    pub stage: Stage,
    pub target: HttpTarget,
    pub timeout_ms: u64,
}

/// A fetch's answer as the host gave it. `status` is `None` when the call failed (reset).
pub struct FetchAnswer<'a> {
    pub status: Option<u32>,
    pub cache_control: Option<&'a str>,
    pub body: &'a [u8],
}

struct Entry {
    source: KeySource,
    /// A jwks_uri learnt through discovery, as a fetch target.
    discovered: Option<HttpTarget>,
    /// Set when `jwksCluster` was configured: discovered URLs go through it too.
    cluster_override: Option<String>,
    keys: Option<KeySet>,
    next_fetch_ms: u64,
    in_flight: bool,
    failures: u32,
    cache_seconds: u64,
    timeout_ms: u64,
}

pub struct KeyStore {
    entries: Vec<Entry>,
    jwks_limits: JwksLimits,
}

impl KeyStore {
    /// Inline key sets are parsed here; `config` has already been validated.
    pub fn new(config: &Config) -> Result<KeyStore, String> {
        let jwks_limits = JwksLimits::from(&config.limits);
        let mut entries = Vec::with_capacity(config.providers.len());
        for (i, provider) in config.providers.iter().enumerate() {
            let keys = match &provider.keys {
                KeySource::Inline(doc) => Some(
                    keys::parse_jwks(doc.as_bytes(), &jwks_limits, true)
                        .map_err(|e| format!("providers[{i}].jwks: {}", e.describe()))?,
                ),
                _ => None,
            };
            entries.push(Entry {
                source: provider.keys.clone(),
                discovered: None,
                cluster_override: provider.jwks_cluster.clone(),
                keys,
                next_fetch_ms: 0,
                in_flight: false,
                failures: 0,
                cache_seconds: provider.jwks_cache_seconds,
                timeout_ms: provider.timeout_ms,
            });
        }
        Ok(KeyStore {
            entries,
            jwks_limits,
        })
    }

    /// Fetches to start now; each is marked in flight until its answer or failure arrives.
    pub fn due(&mut self, now_ms: u64) -> Vec<Fetch> {
        let mut due = Vec::new();
        for (provider, entry) in self.entries.iter_mut().enumerate() {
            if entry.in_flight || now_ms < entry.next_fetch_ms {
                continue;
            }
            let (stage, target) = match (&entry.source, &entry.discovered) {
                (KeySource::Inline(_), _) => continue,
                (KeySource::Remote(target), _) => (Stage::Jwks, target.clone()),
                (KeySource::Discovery(_), Some(jwks)) => (Stage::Jwks, jwks.clone()),
                (KeySource::Discovery(target), None) => (Stage::Discovery, target.clone()),
            };
            entry.in_flight = true;
            due.push(Fetch {
                provider,
                stage,
                target,
                timeout_ms: entry.timeout_ms,
            });
        }
        due
    }

    /// The host refused to dispatch (e.g. unknown cluster): retry later.
    pub fn dispatch_failed(&mut self, provider: usize, now_ms: u64) {
        if let Some(entry) = self.entries.get_mut(provider) {
            entry.in_flight = false;
            entry.schedule_retry(now_ms);
        }
    }

    /// Feeds a fetch's answer in. `Ok` carries how many keys are now loaded; `Err` says
    /// why the answer was not used (last good keys stay).
    pub fn on_answer(
        &mut self,
        provider: usize,
        stage: Stage,
        issuer: &str,
        answer: &FetchAnswer<'_>,
        now_ms: u64,
    ) -> Result<usize, String> {
        let limits = self.jwks_limits;
        let Some(entry) = self.entries.get_mut(provider) else {
            return Err("answer for an unknown provider".to_string());
        };
        entry.in_flight = false;
        let result = match answer.status {
            None => Err("key server did not answer".to_string()),
            Some(200) => match stage {
                Stage::Discovery => entry.learn_jwks_uri(issuer, answer.body),
                Stage::Jwks => keys::parse_jwks(answer.body, &limits, false)
                    .map(|set| {
                        let loaded = set.len();
                        entry.keys = Some(set);
                        entry.failures = 0;
                        entry.next_fetch_ms = now_ms
                            .saturating_add(entry.refresh_seconds(answer.cache_control) * 1000);
                        loaded
                    })
                    .map_err(|e| format!("key set refused: {}", e.describe())),
            },
            Some(status) => Err(format!("key server answered status {status}")),
        };
        match (&result, stage) {
            (Ok(_), Stage::Discovery) => entry.next_fetch_ms = now_ms,
            (Ok(_), Stage::Jwks) => {}
            (Err(_), _) => entry.schedule_retry(now_ms),
        }
        result
    }

    /// Milliseconds until the next fetch is due, for the glue's timer.
    pub fn next_due_ms(&self, now_ms: u64) -> Option<u64> {
        self.entries
            .iter()
            .filter(|e| !e.in_flight && !matches!(e.source, KeySource::Inline(_)))
            .map(|e| e.next_fetch_ms.saturating_sub(now_ms))
            .min()
    }
}

impl Entry {
    fn schedule_retry(&mut self, now_ms: u64) {
        let backoff = FIRST_RETRY_MS
            .saturating_mul(1u64 << self.failures.min(16))
            .min(MAX_RETRY_MS);
        self.failures = self.failures.saturating_add(1);
        self.next_fetch_ms = now_ms.saturating_add(backoff);
    }

    /// `Cache-Control: max-age` may shorten the refresh interval, never below a floor
    /// (a key server cannot make us hammer it) and never beyond `jwksCacheSeconds`.
    fn refresh_seconds(&self, cache_control: Option<&str>) -> u64 {
        let configured = self.cache_seconds;
        match cache_control.and_then(max_age) {
            Some(age) => age.clamp(MIN_REFRESH_SECONDS.min(configured), configured),
            None => configured,
        }
    }

    fn learn_jwks_uri(&mut self, issuer: &str, body: &[u8]) -> Result<usize, String> {
        let doc: serde_json::Value = serde_json::from_slice(body)
            .map_err(|_| "discovery document is not JSON".to_string())?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer) {
            return Err("discovery document names a different issuer".to_string());
        }
        let uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or("discovery document has no jwks_uri")?;
        let target = crate::config::http_target(uri, self.cluster_override.as_deref())
            .map_err(|problem| format!("discovery jwks_uri: {problem}"))?;
        self.discovered = Some(target);
        Ok(0)
    }
}

fn max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())?
    })
}

impl KeyLookup for KeyStore {
    fn keys(&self, provider: usize) -> KeyState<'_> {
        match self.entries.get(provider) {
            Some(Entry {
                keys: Some(set), ..
            }) => KeyState::Ready(set),
            Some(entry) => KeyState::Unavailable {
                retry_after_seconds: entry.retry_after_seconds(),
            },
            None => KeyState::Unavailable {
                retry_after_seconds: 1,
            },
        }
    }
}

impl Entry {
    fn retry_after_seconds(&self) -> u64 {
        // A fetch in flight or the next retry is at most MAX_RETRY_MS away.
        FIRST_RETRY_MS
            .saturating_mul(1u64 << self.failures.min(16))
            .min(MAX_RETRY_MS)
            / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::testing::TestKey;
    use serde_json::json;

    const ISSUER: &str = "https://idp.example.com";

    fn store(provider: serde_json::Value) -> (KeyStore, Config) {
        let mut p = json!({"issuer": ISSUER});
        for (k, v) in provider.as_object().unwrap() {
            p[k] = v.clone();
        }
        let config = crate::config::parse(&json!({"providers": [p]}).to_string()).unwrap();
        (KeyStore::new(&config).unwrap(), config)
    }

    fn jwks() -> Vec<u8> {
        json!({"keys": [TestKey::ed25519().jwk(Some("k1"))]})
            .to_string()
            .into_bytes()
    }

    fn ok<'a>(body: &'a [u8], cache_control: Option<&'a str>) -> FetchAnswer<'a> {
        FetchAnswer {
            status: Some(200),
            cache_control,
            body,
        }
    }

    fn ready(store: &KeyStore) -> bool {
        matches!(store.keys(0), KeyState::Ready(_))
    }

    #[test]
    fn remote_keys_are_fetched_at_once_and_only_once_at_a_time() {
        let (mut s, _) = store(json!({"jwksUri": "https://idp.example.com/jwks"}));
        assert!(!ready(&s));
        let due = s.due(0);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].stage, Stage::Jwks);
        assert_eq!(due[0].target.cluster, "outbound|443||idp.example.com");
        assert_eq!(due[0].timeout_ms, 5000);
        assert!(s.due(10).is_empty(), "one fetch in flight at a time");
    }

    #[test]
    fn keys_are_refreshed_every_jwks_cache_seconds() {
        let (mut s, _) =
            store(json!({"jwksUri": "https://idp.example.com/jwks", "jwksCacheSeconds": 120}));
        s.due(0);
        assert_eq!(
            s.on_answer(0, Stage::Jwks, ISSUER, &ok(&jwks(), None), 0),
            Ok(1)
        );
        assert!(ready(&s));
        assert!(s.due(119_999).is_empty());
        assert_eq!(s.due(120_000).len(), 1);
    }

    #[test]
    fn max_age_shortens_the_refresh_within_bounds() {
        let (mut s, _) =
            store(json!({"jwksUri": "https://idp.example.com/jwks", "jwksCacheSeconds": 600}));
        s.due(0);
        s.on_answer(
            0,
            Stage::Jwks,
            ISSUER,
            &ok(&jwks(), Some("public, max-age=90")),
            0,
        )
        .unwrap();
        assert_eq!(s.next_due_ms(0), Some(90_000));
        s.due(90_000);
        s.on_answer(
            0,
            Stage::Jwks,
            ISSUER,
            &ok(&jwks(), Some("max-age=1")),
            90_000,
        )
        .unwrap();
        assert_eq!(s.next_due_ms(90_000), Some(MIN_REFRESH_SECONDS * 1000));
        s.due(200_000);
        s.on_answer(
            0,
            Stage::Jwks,
            ISSUER,
            &ok(&jwks(), Some("max-age=99999")),
            200_000,
        )
        .unwrap();
        assert_eq!(s.next_due_ms(200_000), Some(600_000));
    }

    #[test]
    fn failures_back_off_and_never_replace_good_keys() {
        let (mut s, _) =
            store(json!({"jwksUri": "https://idp.example.com/jwks", "jwksCacheSeconds": 60}));
        s.due(0);
        s.on_answer(0, Stage::Jwks, ISSUER, &ok(&jwks(), None), 0)
            .unwrap();
        let bad_answers: [FetchAnswer<'_>; 4] = [
            FetchAnswer {
                status: Some(500),
                cache_control: None,
                body: b"",
            },
            FetchAnswer {
                status: None,
                cache_control: None,
                body: b"",
            },
            ok(b"<html>", None),
            ok(br#"{"keys": []}"#, None),
        ];
        let mut now = 60_000;
        let mut previous_gap = 0;
        for answer in &bad_answers {
            assert_eq!(s.due(now).len(), 1);
            assert!(s.on_answer(0, Stage::Jwks, ISSUER, answer, now).is_err());
            assert!(ready(&s), "last good keys stay");
            let gap = s.next_due_ms(now).unwrap();
            assert!(
                gap > previous_gap,
                "backoff grows: {gap} after {previous_gap}"
            );
            previous_gap = gap;
            now += gap;
        }
    }

    #[test]
    fn an_over_size_key_set_is_refused() {
        let (mut s, config) = store(json!({"jwksUri": "https://idp.example.com/jwks"}));
        s.due(0);
        let huge = vec![b' '; config.limits.max_jwks_bytes + 1];
        assert!(s
            .on_answer(0, Stage::Jwks, ISSUER, &ok(&huge, None), 0)
            .is_err());
        assert!(!ready(&s));
    }

    #[test]
    fn discovery_finds_the_jwks_uri_then_fetches_keys() {
        let (mut s, _) = store(json!({}));
        let due = s.due(0);
        assert_eq!(due[0].stage, Stage::Discovery);
        assert_eq!(due[0].target.path, "/.well-known/openid-configuration");
        let doc = json!({"issuer": ISSUER, "jwks_uri": "https://keys.example.com:8443/certs"})
            .to_string();
        s.on_answer(0, Stage::Discovery, ISSUER, &ok(doc.as_bytes(), None), 5)
            .unwrap();
        let due = s.due(5);
        assert_eq!(due[0].stage, Stage::Jwks);
        assert_eq!(due[0].target.cluster, "outbound|8443||keys.example.com");
        assert_eq!(due[0].target.authority, "keys.example.com:8443");
        assert_eq!(due[0].target.path, "/certs");
    }

    #[test]
    fn discovery_for_another_issuer_is_refused() {
        let (mut s, _) = store(json!({"jwksCluster": "idp-cluster"}));
        s.due(0);
        let doc =
            json!({"issuer": "https://evil.example.com", "jwks_uri": "https://evil.example.com/k"})
                .to_string();
        assert!(s
            .on_answer(0, Stage::Discovery, ISSUER, &ok(doc.as_bytes(), None), 0)
            .is_err());
        let due = s.due(10_000);
        assert_eq!(due[0].stage, Stage::Discovery, "still discovering");
        assert_eq!(due[0].target.cluster, "idp-cluster");
    }

    #[test]
    fn inline_keys_are_ready_without_fetching() {
        let jwk = TestKey::ed25519().jwk(Some("k1"));
        let (mut s, _) = store(json!({"jwks": json!({"keys": [jwk]}).to_string()}));
        assert!(ready(&s));
        assert!(s.due(0).is_empty());
        assert_eq!(s.next_due_ms(0), None);
    }
}
