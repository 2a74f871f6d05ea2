use super::*;
use crate::keystore::tests::Shared;

const TIMEOUT: u64 = 5_000;

fn key(n: u8) -> CacheKey {
    CacheKey::of(&[b"entry", &[n]])
}

fn issued(value: &str, expires_in_ms: u64) -> Outcome {
    Outcome::Issued {
        value: value.to_owned(),
        bearer: true,
        expires_in_ms,
        not_after_ms: None,
    }
}

fn token_of(lookup: &Lookup) -> Option<&Token> {
    match lookup {
        Lookup::Fresh(token) | Lookup::Renew(token, _) => Some(token),
        _ => None,
    }
}

fn kind(lookup: &Lookup) -> &'static str {
    match lookup {
        Lookup::Fresh(_) => "fresh",
        Lookup::Renew(_, Some(_)) => "renew-here",
        Lookup::Renew(_, None) => "renew-elsewhere",
        Lookup::Fetch(_) => "fetch",
        Lookup::Wait { .. } => "wait",
        Lookup::Failing { .. } => "failing",
    }
}

/// Fetches a token for `key` through `cache` at `now`, as the first asker.
fn fill(cache: &mut TokenCache, shared: &Shared, key: CacheKey, now: u64, life_ms: u64) -> Token {
    let Lookup::Fetch(lease) = cache.lookup(shared, key, now, TIMEOUT) else {
        panic!("expected to fetch")
    };
    cache
        .complete(shared, &lease, issued("tok-1", life_ms), now, 0.5)
        .unwrap()
}

#[test]
fn one_call_for_many_requests_over_four_workers() {
    let shared = Shared::default();
    let mut workers: Vec<TokenCache> = (0..4).map(|_| TokenCache::new(64, None)).collect();
    let mut leases = Vec::new();
    for round in 0..25 {
        for worker in workers.iter_mut() {
            match worker.lookup(&shared, key(1), 1_000 + round, TIMEOUT) {
                Lookup::Fetch(lease) => leases.push(lease),
                Lookup::Wait { until_ms } => assert!(until_ms > 1_000 + round),
                other => panic!("{}", kind(&other)),
            }
        }
    }
    assert_eq!(
        leases.len(),
        1,
        "one call to the token endpoint for 100 requests"
    );
    let token = workers[0]
        .complete(&shared, &leases[0], issued("tok-1", 300_000), 1_100, 0.5)
        .unwrap();
    assert_eq!(token.value, "tok-1");
    for worker in workers.iter_mut() {
        let found = worker.lookup(&shared, key(1), 1_200, TIMEOUT);
        assert_eq!(kind(&found), "fresh");
        assert_eq!(token_of(&found).unwrap().value, "tok-1");
    }
}

#[test]
fn lifetime_is_capped_by_the_subject_and_a_margin_and_renewal_is_at_80_to_90_percent() {
    let shared = Shared::default();
    let mut cache = TokenCache::new(64, None);
    let Lookup::Fetch(lease) = cache.lookup(&shared, key(1), 0, TIMEOUT) else {
        panic!()
    };
    let capped = Outcome::Issued {
        value: "t".into(),
        bearer: true,
        expires_in_ms: 3_600_000,
        not_after_ms: Some(20_000),
    };
    let token = cache.complete(&shared, &lease, capped, 0, 0.0).unwrap();
    assert_eq!(
        token.expires_ms, 18_000,
        "20 s of subject life minus a tenth"
    );

    for (jitter, renew_at) in [(0.0, 80_000), (1.0, 90_000)] {
        let shared = Shared::default();
        let mut cache = TokenCache::new(64, None);
        let Lookup::Fetch(lease) = cache.lookup(&shared, key(2), 0, TIMEOUT) else {
            panic!()
        };
        // 111.112 s of life: a tenth (11.111 s) off leaves 100.001 s usable.
        let token = cache
            .complete(&shared, &lease, issued("t", 111_112), 0, jitter)
            .unwrap();
        assert_eq!(token.expires_ms, 100_001);
        let before = cache.lookup(&shared, key(2), renew_at - 2, TIMEOUT);
        assert_eq!(kind(&before), "fresh", "jitter {jitter}");
        let after = cache.lookup(&shared, key(2), renew_at + 2, TIMEOUT);
        assert_eq!(kind(&after), "renew-here", "jitter {jitter}");
    }
    let long = Shared::default();
    let mut cache = TokenCache::new(64, None);
    let token = fill(&mut cache, &long, key(3), 0, 3_600_000);
    assert_eq!(token.expires_ms, 3_570_000, "the margin is at most 30 s");
}

#[test]
fn a_renewal_is_made_once_and_the_token_is_attached_meanwhile() {
    let shared = Shared::default();
    let mut a = TokenCache::new(64, None);
    let mut b = TokenCache::new(64, None);
    fill(&mut a, &shared, key(1), 0, 100_000);
    assert_eq!(kind(&b.lookup(&shared, key(1), 10_000, TIMEOUT)), "fresh");
    // Past 90 % of the usable 90 s.
    let renewing = a.lookup(&shared, key(1), 82_000, TIMEOUT);
    assert_eq!(kind(&renewing), "renew-here");
    assert_eq!(token_of(&renewing).unwrap().value, "tok-1");
    let elsewhere = b.lookup(&shared, key(1), 82_001, TIMEOUT);
    assert_eq!(kind(&elsewhere), "renew-elsewhere");
    assert_eq!(
        kind(&a.lookup(&shared, key(1), 82_002, TIMEOUT)),
        "renew-elsewhere"
    );
    let Lookup::Renew(_, Some(lease)) = renewing else {
        panic!()
    };
    let renewed = a
        .complete(&shared, &lease, issued("tok-2", 100_000), 82_100, 0.5)
        .unwrap();
    assert_eq!(renewed.value, "tok-2");
    let seen = b.lookup(&shared, key(1), 82_200, TIMEOUT);
    assert_eq!(kind(&seen), "fresh");
    assert_eq!(token_of(&seen).unwrap().value, "tok-2");
}

#[test]
fn a_failed_renewal_keeps_the_valid_token_and_an_expired_one_is_never_handed_out() {
    let shared = Shared::default();
    let mut cache = TokenCache::new(64, None);
    let mut other = TokenCache::new(64, None);
    fill(&mut cache, &shared, key(1), 0, 100_000);
    let mut calls = 0;
    let mut now = 0;
    // The authorization server is down from now on: every call fails.
    while now < 200_000 {
        for worker in [&mut cache, &mut other] {
            let found = worker.lookup(&shared, key(1), now, TIMEOUT);
            if let Some(token) = token_of(&found) {
                assert!(token.expires_ms > now, "expired token handed out at {now}");
                assert_eq!(token.value, "tok-1");
            } else {
                assert!(now >= 90_000, "{} at {now}", kind(&found));
            }
            if let Lookup::Renew(_, Some(lease)) | Lookup::Fetch(lease) = found {
                calls += 1;
                let kept = worker.complete(&shared, &lease, Outcome::Failed, now, 0.5);
                assert_eq!(kept.is_some(), now < 90_000, "at {now}");
            }
        }
        now += 250;
    }
    // Renewal from 85.5 s, then backoff doubling to 30 s: a handful of calls, not one per request.
    assert!((3..=12).contains(&calls), "{calls} calls");
    let failing = cache.lookup(&shared, key(1), 200_001, TIMEOUT);
    assert!(matches!(
        failing,
        Lookup::Failing { .. } | Lookup::Fetch(_) | Lookup::Wait { .. }
    ));
}

#[test]
fn failing_without_a_token_says_when_to_retry_then_calls_again() {
    let shared = Shared::default();
    let mut cache = TokenCache::new(64, None);
    let Lookup::Fetch(lease) = cache.lookup(&shared, key(1), 0, TIMEOUT) else {
        panic!()
    };
    assert!(cache
        .complete(&shared, &lease, Outcome::Failed, 0, 1.0)
        .is_none());
    let Lookup::Failing {
        retry_after_seconds,
    } = cache.lookup(&shared, key(1), 10, TIMEOUT)
    else {
        panic!()
    };
    assert_eq!(retry_after_seconds, 1);
    assert_eq!(
        kind(&cache.lookup(&shared, key(1), 1_001, TIMEOUT)),
        "fetch"
    );
}

#[test]
fn a_lease_whose_worker_stopped_answering_passes_on_after_it_ends() {
    let shared = Shared::default();
    let mut gone = TokenCache::new(64, None);
    let mut b = TokenCache::new(64, None);
    assert_eq!(kind(&gone.lookup(&shared, key(1), 0, TIMEOUT)), "fetch");
    let Lookup::Wait { until_ms } = b.lookup(&shared, key(1), 100, TIMEOUT) else {
        panic!()
    };
    assert_eq!(until_ms, TIMEOUT + LEASE_MARGIN_MS);
    assert_eq!(
        kind(&b.lookup(&shared, key(1), until_ms - 1, TIMEOUT)),
        "wait"
    );
    assert_eq!(kind(&b.lookup(&shared, key(1), until_ms, TIMEOUT)), "fetch");
}

#[test]
fn an_abandoned_lease_is_free_at_once() {
    let shared = Shared::default();
    let mut a = TokenCache::new(64, None);
    let mut b = TokenCache::new(64, None);
    let Lookup::Fetch(lease) = a.lookup(&shared, key(1), 0, TIMEOUT) else {
        panic!()
    };
    a.abandon(&shared, &lease);
    assert_eq!(kind(&b.lookup(&shared, key(1), 1, TIMEOUT)), "fetch");
    assert_eq!(kind(&a.lookup(&shared, key(1), 2, TIMEOUT)), "wait");
}

#[test]
fn the_cache_is_bounded_by_its_slots() {
    let shared = Shared::default();
    let mut cache = TokenCache::new(4, None);
    for n in 0..100 {
        fill(&mut cache, &shared, key(n), u64::from(n), 600_000);
    }
    let slots = shared.0.borrow().len();
    assert!(slots <= 4, "{slots} shared records");
    assert!(cache.local_len() <= 4);
    // The most recent key is still there.
    assert_eq!(kind(&cache.lookup(&shared, key(99), 200, TIMEOUT)), "fresh");
    // Nothing the slots hold names a token.
    for (name, (value, _)) in shared.0.borrow().iter() {
        assert!(name.starts_with(SLOT_PREFIX));
        assert!(!name.contains("tok-"));
        let record: Record = serde_json::from_slice(value).unwrap();
        assert_eq!(record.key.len(), 32);
    }
}

#[test]
fn two_keys_busy_in_both_slots_leave_a_third_to_fetch_alone() {
    let shared = Shared::default();
    let mut cache = TokenCache::new(1, None);
    assert_eq!(kind(&cache.lookup(&shared, key(1), 0, TIMEOUT)), "fetch");
    let Lookup::Fetch(lease) = cache.lookup(&shared, key(2), 0, TIMEOUT) else {
        panic!("a key with no free slot still gets its call")
    };
    assert_eq!(kind(&cache.lookup(&shared, key(2), 1, TIMEOUT)), "wait");
    let token = cache
        .complete(&shared, &lease, issued("alone", 60_000), 2, 0.5)
        .unwrap();
    assert_eq!(token.value, "alone");
    let found = cache.lookup(&shared, key(2), 3, TIMEOUT);
    assert_eq!(token_of(&found).unwrap().value, "alone");
}

#[test]
fn a_configuration_push_keeps_the_tokens() {
    let shared = Shared::default();
    let mut cache = TokenCache::new(64, None);
    fill(&mut cache, &shared, key(1), 0, 600_000);
    let kept = TokenCache::new(64, Some(cache));
    assert_eq!(kept.local_len(), 1);
    // A new root context without the old one reads the shared records.
    let mut fresh = TokenCache::new(64, None);
    let found = fresh.lookup(&shared, key(1), 1_000, TIMEOUT);
    assert_eq!(kind(&found), "fresh");
    assert_eq!(token_of(&found).unwrap().value, "tok-1");
}

#[test]
fn keys_are_hashes_of_length_prefixed_parts() {
    assert_ne!(CacheKey::of(&[b"ab", b"c"]), CacheKey::of(&[b"a", b"bc"]));
    assert_eq!(CacheKey::of(&[b"a"]), CacheKey::of(&[b"a"]));
}

/// The shared data, counting its reads: the per-worker copy's fast path makes none.
struct Counting<'a> {
    inner: &'a Shared,
    reads: std::cell::Cell<usize>,
}

impl SharedStore for Counting<'_> {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_workers_copy_serves_until_its_renewal_point_then_the_shared_record_is_read_again() {
    let shared = Shared::default();
    let mut fetcher = TokenCache::new(64, None);
    // 100 s of life: usable 90 s, renewal from 85 % of it (jitter 0.5) = 76.5 s.
    fill(&mut fetcher, &shared, key(1), 0, 100_000);
    let counting = Counting {
        inner: &shared,
        reads: std::cell::Cell::new(0),
    };
    let mut worker = TokenCache::new(64, None);
    assert_eq!(
        kind(&worker.lookup(&counting, key(1), 1_000, TIMEOUT)),
        "fresh"
    );
    assert!(
        counting.reads.get() > 0,
        "the first request reads the shared record"
    );
    counting.reads.set(0);
    for now in (2_000..76_500).step_by(7_000) {
        let found = worker.lookup(&counting, key(1), now, TIMEOUT);
        assert_eq!(kind(&found), "fresh");
        assert_eq!(token_of(&found).unwrap().value, "tok-1");
    }
    assert_eq!(counting.reads.get(), 0, "served from the worker's copy");
    let due = worker.lookup(&counting, key(1), 76_500, TIMEOUT);
    assert!(counting.reads.get() > 0, "read again at the renewal point");
    assert_eq!(kind(&due), "renew-here", "and this worker renews, once");
    assert_eq!(
        kind(&fetcher.lookup(&shared, key(1), 76_600, TIMEOUT)),
        "renew-elsewhere"
    );
}

#[test]
fn a_renewal_by_another_worker_is_picked_up_when_the_copy_is_due() {
    let shared = Shared::default();
    let mut renewer = TokenCache::new(64, None);
    let mut worker = TokenCache::new(64, None);
    fill(&mut renewer, &shared, key(1), 0, 100_000);
    assert_eq!(
        kind(&worker.lookup(&shared, key(1), 1_000, TIMEOUT)),
        "fresh"
    );
    let Lookup::Renew(_, Some(lease)) = renewer.lookup(&shared, key(1), 76_500, TIMEOUT) else {
        panic!("the renewer renews")
    };
    renewer
        .complete(&shared, &lease, issued("tok-2", 100_000), 76_600, 0.5)
        .unwrap();
    // This worker's copy is due too: it reads the record the other worker renewed.
    let seen = worker.lookup(&shared, key(1), 76_700, TIMEOUT);
    assert_eq!(kind(&seen), "fresh");
    assert_eq!(token_of(&seen).unwrap().value, "tok-2");
    // And keeps that copy: no renewal of its own until the new renewal point.
    assert_eq!(
        kind(&worker.lookup(&shared, key(1), 150_000, TIMEOUT)),
        "fresh"
    );
}

#[test]
fn a_workers_copy_never_hands_out_an_expired_token() {
    let shared = Shared::default();
    let mut fetcher = TokenCache::new(64, None);
    let mut worker = TokenCache::new(64, None);
    fill(&mut fetcher, &shared, key(1), 0, 100_000);
    assert_eq!(
        kind(&worker.lookup(&shared, key(1), 1_000, TIMEOUT)),
        "fresh"
    );
    // Nobody renewed: at the expiry (90 s) there is no token, only a call to make.
    let expired = worker.lookup(&shared, key(1), 90_000, TIMEOUT);
    assert!(token_of(&expired).is_none());
    assert_eq!(kind(&expired), "fetch");
    let Lookup::Fetch(lease) = expired else {
        panic!()
    };
    // The call fails: still none, with a time to retry.
    assert!(worker
        .complete(&shared, &lease, Outcome::Failed, 90_100, 0.5)
        .is_none());
    let failing = worker.lookup(&shared, key(1), 90_200, TIMEOUT);
    assert!(token_of(&failing).is_none());
    assert_eq!(kind(&failing), "failing");
}
