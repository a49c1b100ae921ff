//! Reads, creates, the cache, single-flight and integrity (what a create
//! serves after its conditional put: `creates`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use super::*;

#[tokio::test]
async fn same_id_same_key_different_ids_different_keys() {
    let rig = rig_with(no_cache());
    let a1 = rig.broker.get_or_create(&id("a"), true).await.unwrap();
    assert!(a1.created);
    let a2 = rig.broker.get_or_create(&id("a"), true).await.unwrap();
    assert!(!a2.created);
    let b = rig.broker.get_or_create(&id("b"), true).await.unwrap();
    assert_eq!(a1.key.expose(), a2.key.expose());
    assert_ne!(a1.key.expose(), b.key.expose());
    assert_eq!(a1.key.len(), 32);
    let record = rig.store.snapshot(&id("a")).unwrap();
    assert_eq!(record.keys.len(), 3, "every healthy region wraps a new key");
    assert_eq!(record.version, Some(RECORD_VERSION));
}

#[tokio::test]
async fn create_false_never_creates() {
    let rig = rig();
    let err = rig
        .broker
        .get_or_create(&id("nope"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::NotFound));
    assert!(rig.store.is_empty());
    assert_eq!(rig.kms.total_calls("generate_data_key"), 0);
}

#[tokio::test]
async fn warm_reads_make_no_kms_or_store_calls_and_ttl_expiry_refreshes_once() {
    tokio::time::pause();
    let rig = rig();
    let first = rig.broker.get_or_create(&id("w"), true).await.unwrap();
    let (gets, decrypts) = (rig.store.get_calls(), rig.kms.total_calls("decrypt"));
    for _ in 0..100 {
        let again = rig.broker.get_or_create(&id("w"), true).await.unwrap();
        assert_eq!(again.source, KeySource::Cache);
        assert_eq!(again.key.expose(), first.key.expose());
    }
    assert_eq!(rig.store.get_calls(), gets);
    assert_eq!(rig.kms.total_calls("decrypt"), decrypts);

    tokio::time::advance(Duration::from_secs(301)).await;
    for _ in 0..10 {
        let refreshed = rig.broker.get_or_create(&id("w"), true).await.unwrap();
        assert_eq!(refreshed.key.expose(), first.key.expose());
    }
    assert_eq!(
        rig.store.get_calls(),
        gets + 1,
        "exactly one refresh after the TTL"
    );
    assert_eq!(rig.kms.total_calls("decrypt"), decrypts + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_resolution() {
    let rig = rig();
    rig.broker
        .get_or_create(&id("existing"), true)
        .await
        .unwrap();
    rig.broker.clear_cache().await;
    let gets_before = rig.store.get_calls();
    let decrypts_before = rig.kms.total_calls("decrypt");
    // Slow the preferred region a little so every request arrives mid-flight.
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(100))));

    let run = |name: &'static str| {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let broker = rig.broker.clone();
                tokio::spawn(async move { broker.get_or_create(&id(name), true).await })
            })
            .collect();
        futures::future::join_all(tasks)
    };
    let results = run("existing").await;
    let keys: HashSet<Vec<u8>> = results
        .into_iter()
        .map(|r| r.unwrap().unwrap().key.expose().to_vec())
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(rig.store.get_calls() - gets_before, 1, "one store read");
    assert_eq!(
        rig.kms.total_calls("decrypt") - decrypts_before,
        1,
        "one KMS call"
    );

    let gets_before = rig.store.get_calls();
    let results = run("brand-new").await;
    let keys: HashSet<Vec<u8>> = results
        .into_iter()
        .map(|r| r.unwrap().unwrap().key.expose().to_vec())
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(
        rig.store.get_calls() - gets_before,
        1,
        "one read (the memory store's put is atomic: no read-back)"
    );
    assert_eq!(rig.store.put_calls(), 2, "one create per new id");
    assert_eq!(rig.kms.total_calls("generate_data_key"), 2);
}

/// The callers that join a miss under way are woken once, when it ends,
/// not at every step of its KMS and store calls: a herd of them costs
/// what one caller does, not that many times each call's wake-ups.
#[tokio::test]
async fn a_herd_on_one_miss_is_woken_once_at_its_end() {
    struct Counted<F> {
        fut: Pin<Box<F>>,
        polls: Arc<AtomicUsize>,
    }
    impl<F: Future> Future for Counted<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            self.fut.as_mut().poll(cx)
        }
    }
    const HERD: usize = 100;
    const WAKES: usize = 50;
    let rig = rig_with(no_cache());
    let created = rig.broker.get_or_create(&id("herd"), true).await.unwrap();
    rig.kms.set_fault(&r("r1"), Some(Fault::Wakes(WAKES)));
    let polls = Arc::new(AtomicUsize::new(0));
    let herd = id("herd");
    let callers = (0..HERD).map(|_| Counted {
        fut: Box::pin(rig.broker.get_or_create(&herd, true)),
        polls: Arc::clone(&polls),
    });
    for read in futures::future::join_all(callers).await {
        assert_eq!(read.unwrap().key.expose(), created.key.expose());
    }
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt"),
        1,
        "one call for the herd"
    );
    // The caller that started the miss is polled at each wake-up; each
    // other caller about twice (when it joins and when the miss ends).
    let polls = polls.load(Ordering::SeqCst);
    assert!(
        polls <= WAKES + 3 * HERD,
        "{polls} polls for {HERD} callers of one miss"
    );
}

#[tokio::test]
async fn reads_fall_back_when_a_region_fails() {
    let rig = rig_with(no_cache());
    let created = rig.broker.get_or_create(&id("f"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let read = rig.broker.get_or_create(&id("f"), true).await.unwrap();
    assert_eq!(read.key.expose(), created.key.expose());
    assert_eq!(read.source, KeySource::Region(r("r2")));
    rig.kms
        .set_fault(&r("r2"), Some(Fault::Fail(KmsErrorKind::Throttled)));
    let read = rig.broker.get_or_create(&id("f"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r3")));
    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let err = rig.broker.get_or_create(&id("f"), true).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn creates_need_min_regions_and_write_nothing_otherwise() {
    let rig = rig_with(no_cache());
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let made = rig.broker.get_or_create(&id("two"), true).await.unwrap();
    assert!(made.created);
    assert_eq!(made.source, KeySource::Region(r("r2")));
    let rec = rig.store.snapshot(&id("two")).unwrap();
    assert_eq!(
        rec.keys.keys().cloned().collect::<Vec<_>>(),
        vec![r("r2"), r("r3")]
    );

    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Misconfigured)));
    let err = rig
        .broker
        .get_or_create(&id("one"), true)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BrokerError::NotEnoughRegions {
                got: 1,
                need: 2,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        rig.store.snapshot(&id("one")).is_none(),
        "no record below quorum"
    );
}

#[tokio::test]
async fn a_ciphertext_of_another_id_is_refused() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("victim"), true).await.unwrap();
    let attacker = rig
        .broker
        .get_or_create(&id("attacker"), true)
        .await
        .unwrap();
    let mut forged = rig.store.snapshot(&id("victim")).unwrap();
    forged.id = id("attacker");
    rig.store.insert_raw(forged);
    let err = rig
        .broker
        .get_or_create(&id("attacker"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Integrity { .. }), "{err}");
    assert!(!err.is_unavailable());
    let _ = attacker;
}

#[tokio::test]
async fn losing_a_create_race_serves_the_winner() {
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn Kms> =
        Arc::new(LocalKms::open(&dir.path().join("k.json"), &regions()).unwrap());
    let store = Arc::new(MemoryStore::new());
    let a = KeyBroker::new(
        local.clone(),
        store.clone(),
        no_cache(),
        Arc::new(Metrics::new().unwrap()),
    );
    let b = KeyBroker::new(
        local,
        store.clone(),
        no_cache(),
        Arc::new(Metrics::new().unwrap()),
    );
    let race = id("race");
    let (ra, rb) = tokio::join!(a.get_or_create(&race, true), b.get_or_create(&race, true));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.key.expose(), rb.key.expose());
    assert_eq!(
        u8::from(ra.created) + u8::from(rb.created),
        1,
        "exactly one creator"
    );
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_within_the_grace_window_only() {
    let rig = rig_with(BrokerSettings {
        cache_ttl: Duration::from_secs(60),
        stale_if_error: Duration::from_secs(30),
        ..settings()
    });
    let made = rig.broker.get_or_create(&id("s"), true).await.unwrap();
    for region in regions() {
        rig.kms
            .set_fault(&region, Some(Fault::Fail(KmsErrorKind::Unavailable)));
    }
    tokio::time::advance(Duration::from_secs(70)).await;
    let stale = rig.broker.get_or_create(&id("s"), true).await.unwrap();
    assert_eq!(stale.source, KeySource::StaleCache);
    assert_eq!(stale.key.expose(), made.key.expose());

    tokio::time::advance(Duration::from_secs(25)).await;
    let err = rig.broker.get_or_create(&id("s"), true).await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
}

#[tokio::test]
async fn failures_are_not_cached() {
    let rig = rig();
    rig.broker.get_or_create(&id("nc"), true).await.unwrap();
    rig.broker.clear_cache().await;
    for region in regions() {
        rig.kms
            .set_fault(&region, Some(Fault::Fail(KmsErrorKind::Unavailable)));
    }
    assert!(rig.broker.get_or_create(&id("nc"), true).await.is_err());
    for region in regions() {
        rig.kms.set_fault(&region, None);
    }
    assert!(rig.broker.get_or_create(&id("nc"), true).await.is_ok());
    assert!(matches!(
        rig.broker.get_or_create(&id("absent"), false).await,
        Err(BrokerError::NotFound)
    ));
    rig.broker.get_or_create(&id("absent"), true).await.unwrap();
    assert!(rig.broker.get_or_create(&id("absent"), false).await.is_ok());
}

#[tokio::test]
async fn evicted_keys_are_wiped() {
    let rig = rig_with(BrokerSettings {
        cache_max_entries: 1,
        ..settings()
    });
    let mut weak = Vec::new();
    let wiped_before = crate::domain::test_support::wiped_drops();
    for name in ["z1", "z2", "z3"] {
        let resolved = rig.broker.get_or_create(&id(name), true).await.unwrap();
        weak.push(Arc::downgrade(&resolved.key));
        drop(resolved);
    }
    // An eviction drops the entry at once, within the insert.
    let alive = weak.iter().filter(|w| w.upgrade().is_some()).count();
    assert_eq!(
        alive, 1,
        "a one-entry cache keeps one key; the evicted ones are dropped"
    );
    assert!(
        crate::domain::test_support::wiped_drops() >= wiped_before + 2,
        "and wiped on drop"
    );

    rig.broker.clear_cache().await;
    assert!(
        weak.iter().all(|w| w.upgrade().is_none()),
        "clearing drops every cached key"
    );
    assert_eq!(rig.broker.cached_entries(), 0);
}

/// A key nobody reads again leaves memory once it is past its TTL and the
/// stale-if-error window, without waiting for the cache to fill up.
#[tokio::test(start_paused = true)]
async fn expired_keys_are_swept_from_memory_without_a_read() {
    let rig = rig_with(BrokerSettings {
        cache_ttl: Duration::from_secs(2),
        stale_if_error: Duration::from_secs(1),
        ..settings()
    });
    let wiped_before = crate::domain::test_support::wiped_drops();
    let resolved = rig.broker.get_or_create(&id("swept"), true).await.unwrap();
    let weak = Arc::downgrade(&resolved.key);
    drop(resolved);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        weak.upgrade().is_some(),
        "kept through the stale-if-error window"
    );
    assert_eq!(rig.broker.cached_entries(), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(weak.upgrade().is_none(), "swept once past it");
    assert_eq!(rig.broker.cached_entries(), 0);
    assert!(crate::domain::test_support::wiped_drops() > wiped_before);
}

/// A bug that panics in a resolution (here the store adapter's, as the
/// create's conditional put runs) fails every caller of that resolution
/// with an error, and does not leave the id stuck: the next miss for it
/// starts a resolution of its own.
#[tokio::test(start_paused = true)]
async fn a_panicking_resolution_fails_its_callers_and_the_next_miss_starts_afresh() {
    let rig = rig_with(no_cache());
    for region in ["r1", "r2", "r3"] {
        rig.kms
            .set_fault(&r(region), Some(Fault::Delay(Duration::from_millis(100))));
    }
    let gets = rig.store.get_calls();
    let p = id("p");
    let (a, b, ()) = tokio::join!(
        rig.broker.get_or_create(&p, true),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            rig.broker.get_or_create(&p, true).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rig.store.set_panicking(true);
        }
    );
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert!(matches!(err, BrokerError::ResolutionFailed { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("panicked: injected panic in the store's put_if_absent"),
            "the log line says why: {err}"
        );
        assert!(!err.is_unavailable());
    }
    assert_eq!(rig.store.get_calls() - gets, 1, "one resolution for both");
    assert!(rig.store.snapshot(&p).is_none());
    rig.store.set_panicking(false);
    let created = rig.broker.get_or_create(&p, true).await.unwrap();
    assert!(created.created);
    let read = rig.broker.get_or_create(&p, true).await.unwrap();
    assert_eq!(read.key.expose(), created.key.expose());
}
