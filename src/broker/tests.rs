//! Broker policy against in-process fakes: the local KMS behind a
//! fault-injecting wrapper, and the memory store. Time-based behaviour runs
//! under tokio's paused clock, so delays are exact rather than slept.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::kms::faulty::{Fault, FaultyKms};
use crate::kms::local::LocalKms;
use crate::store::memory::MemoryStore;

struct Rig {
    broker: KeyBroker,
    kms: Arc<FaultyKms>,
    store: Arc<MemoryStore>,
    _dir: tempfile::TempDir,
}

fn regions() -> Vec<Region> {
    ["r1", "r2", "r3"].into_iter().map(Region::new).collect()
}

fn settings() -> BrokerSettings {
    BrokerSettings {
        regions: regions(),
        min_regions_on_create: 2,
        data_key_bytes: 32,
        call_timeout: Duration::from_millis(2000),
        hedge_after: Duration::from_millis(250),
        breaker_failures: 3,
        breaker_open: Duration::from_millis(10_000),
        store_timeout: Duration::from_millis(2000),
        cache_ttl: Duration::from_secs(300),
        cache_max_entries: 1000,
        stale_if_error: Duration::ZERO,
    }
}

fn rig_with(settings: BrokerSettings) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalKms::open(&dir.path().join("keyring.json"), &settings.regions).unwrap();
    let kms = Arc::new(FaultyKms::new(Arc::new(local)));
    let store = Arc::new(MemoryStore::new());
    let metrics = Arc::new(Metrics::new().unwrap());
    let broker = KeyBroker::new(kms.clone(), store.clone(), settings, metrics);
    Rig {
        broker,
        kms,
        store,
        _dir: dir,
    }
}

fn rig() -> Rig {
    rig_with(settings())
}

fn no_cache() -> BrokerSettings {
    BrokerSettings {
        cache_ttl: Duration::ZERO,
        ..settings()
    }
}

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

fn r(name: &str) -> Region {
    Region::new(name)
}

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
    assert_eq!(rig.store.get_calls() - gets_before, 1);
    assert_eq!(rig.store.put_calls(), 2, "one create per new id");
    assert_eq!(rig.kms.total_calls("generate_data_key"), 2);
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
async fn a_record_missing_a_region_is_repaired_after_a_read() {
    let rig = rig_with(no_cache());
    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let made = rig.broker.get_or_create(&id("rep"), true).await.unwrap();
    assert_eq!(rig.store.snapshot(&id("rep")).unwrap().keys.len(), 2);
    rig.kms.set_fault(&r("r3"), None);
    rig.broker.get_or_create(&id("rep"), true).await.unwrap();
    rig.broker.settle_repairs().await;
    let rec = rig.store.snapshot(&id("rep")).unwrap();
    assert_eq!(rec.keys.len(), 3);
    assert!(rec.key_ids.contains_key(&r("r3")));
    // The repaired region now serves the same key on its own.
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    rig.kms
        .set_fault(&r("r2"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let read = rig.broker.get_or_create(&id("rep"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r3")));
    assert_eq!(read.key.expose(), made.key.expose());
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
async fn hedges_past_a_hung_region_then_its_breaker_opens_then_one_probe() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("h"), true).await.unwrap();
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));

    for round in 1..=3 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
        assert_eq!(read.source, KeySource::Region(r("r2")));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(250),
            "answer right after hedge_after"
        );
        assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), round);
    }
    // Three lost hedges opened r1's breaker: it is not called while open.
    let r1_calls = rig.kms.calls(&r("r1"), "decrypt");
    for _ in 0..5 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
        assert_eq!(read.source, KeySource::Region(r("r2")));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no hedge delay once the breaker is open"
        );
    }
    assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), r1_calls);

    // After the window, exactly one request probes r1 (and, hung, loses again).
    tokio::time::advance(Duration::from_millis(10_000)).await;
    let h = id("h");
    let (a, b) = tokio::join!(
        rig.broker.get_or_create(&h, true),
        rig.broker.get_or_create(&h, true)
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt"),
        r1_calls + 1,
        "one probe"
    );

    // Healthy again: the next probe succeeds and r1 serves once more.
    rig.kms.set_fault(&r("r1"), None);
    tokio::time::advance(Duration::from_millis(10_000)).await;
    let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r1")));
    let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r1")));
}

#[tokio::test(start_paused = true)]
async fn a_healthy_preferred_region_gets_exactly_one_decrypt() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("one"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(100))));
    for _ in 0..10 {
        rig.broker.get_or_create(&id("one"), true).await.unwrap();
    }
    assert_eq!(rig.kms.total_calls("decrypt"), 10);
    assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), 10);
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
        rig.broker.run_cache_maintenance().await;
    }
    // moka applies evictions in its maintenance passes; give it a few.
    let mut alive = weak.len();
    for _ in 0..100 {
        rig.broker.run_cache_maintenance().await;
        alive = weak.iter().filter(|w| w.upgrade().is_some()).count();
        if alive <= 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
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

#[tokio::test]
async fn a_down_store_is_unavailable_not_a_new_key() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("d"), true).await.unwrap();
    rig.store.set_unavailable(true);
    let err = rig.broker.get_or_create(&id("d"), true).await.unwrap_err();
    assert!(err.is_unavailable());
    assert_eq!(rig.kms.total_calls("generate_data_key"), 1);
    assert!(rig.broker.readiness(Duration::from_secs(1)).await.is_err());
    rig.store.set_unavailable(false);
    assert!(rig.broker.readiness(Duration::from_secs(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_hung_region_does_not_hold_up_a_create_and_is_repaired_later() {
    let rig = rig_with(no_cache());
    rig.kms.set_fault(&r("r3"), Some(Fault::Hang));
    let started = Instant::now();
    let made = rig.broker.get_or_create(&id("c"), true).await.unwrap();
    assert!(made.created);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(250),
        "quorum, then hedge_after for the rest"
    );
    assert_eq!(rig.store.snapshot(&id("c")).unwrap().keys.len(), 2);

    // Three slow creates open r3's breaker; later creates skip it at once.
    rig.broker.get_or_create(&id("c2"), true).await.unwrap();
    rig.broker.get_or_create(&id("c3"), true).await.unwrap();
    let calls = rig.kms.calls(&r("r3"), "encrypt");
    let started = Instant::now();
    rig.broker.get_or_create(&id("c4"), true).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(rig.kms.calls(&r("r3"), "encrypt"), calls);

    // After the window the region is back: one probe, then repair on read.
    rig.kms.set_fault(&r("r3"), None);
    tokio::time::advance(Duration::from_millis(10_000)).await;
    rig.broker.get_or_create(&id("c"), true).await.unwrap();
    rig.broker.settle_repairs().await;
    assert_eq!(rig.store.snapshot(&id("c")).unwrap().keys.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_create_hedges_past_a_hung_preferred_region() {
    let rig = rig_with(no_cache());
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));
    let started = Instant::now();
    let made = rig.broker.get_or_create(&id("g"), true).await.unwrap();
    assert!(made.created);
    assert_eq!(
        made.source,
        KeySource::Region(r("r2")),
        "generated by the hedge"
    );
    // hedge_after for GenerateDataKey, then the quorum (r3) plus hedge_after
    // for the hung r1's Encrypt: not call_timeout.
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    let rec = rig.store.snapshot(&id("g")).unwrap();
    assert_eq!(
        rec.keys.keys().cloned().collect::<Vec<_>>(),
        vec![r("r2"), r("r3")]
    );
    let read = rig.broker.get_or_create(&id("g"), true).await.unwrap();
    assert_eq!(read.key.expose(), made.key.expose());
}
