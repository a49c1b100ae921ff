//! Broker policy against in-process fakes: the local KMS behind a
//! fault-injecting wrapper, and the memory store. Time-based behaviour runs
//! under tokio's paused clock, so delays are exact rather than slept.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use tokio::time::Instant;

use super::*;
use crate::domain::RECORD_VERSION;
use crate::kms::faulty::{Fault, FaultyKms};
use crate::kms::local::LocalKms;
use crate::kms::KmsErrorKind;
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
        hedge_budget_percent: 10,
        hedge_budget_burst: 10,
        max_in_flight_per_region: 256,
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
async fn a_record_read_while_missing_a_region_is_repaired() {
    let rig = rig_with(no_cache());
    let made = rig.broker.get_or_create(&id("rep"), true).await.unwrap();
    // A region added to the config after the record was written.
    let mut short = rig.store.snapshot(&id("rep")).unwrap();
    short.keys.remove(&r("r3"));
    short.key_ids.remove(&r("r3"));
    rig.store.insert_raw(short);
    rig.broker.get_or_create(&id("rep"), true).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), rig.broker.repairs_idle())
        .await
        .unwrap();
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

/// A key created while a region is down is repaired once the region is
/// back, with no further request for it: until then, losing one more
/// region would lose the key. The repair retries with backoff while the
/// region stays down.
#[tokio::test(start_paused = true)]
async fn a_short_create_is_repaired_when_the_region_returns_without_any_read() {
    let rig = rig();
    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let made = rig.broker.get_or_create(&id("outage"), true).await.unwrap();
    assert!(made.created);
    assert_eq!(rig.store.snapshot(&id("outage")).unwrap().keys.len(), 2);
    assert_eq!(rig.broker.repairs_pending(), 1, "queued at create time");
    let gets = rig.store.get_calls();

    // Still down for a while: attempts fail and are retried.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        rig.kms.calls(&r("r3"), "encrypt") >= 2,
        "retried while down"
    );
    assert_eq!(rig.store.snapshot(&id("outage")).unwrap().keys.len(), 2);
    assert_eq!(rig.broker.repairs_pending(), 1);

    rig.kms.set_fault(&r("r3"), None);
    tokio::time::timeout(Duration::from_secs(120), rig.broker.repairs_idle())
        .await
        .expect("repaired once the region is back");
    let rec = rig.store.snapshot(&id("outage")).unwrap();
    assert_eq!(rec.keys.len(), 3);
    assert_eq!(rig.store.get_calls(), gets, "no read was needed");
    assert_eq!(rig.broker.inner.metrics.records_repaired.get(), 1);
    assert_eq!(rig.broker.repairs_pending(), 0);
    // And r3's ciphertext alone gives back the same key.
    rig.broker.clear_cache().await;
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    rig.kms
        .set_fault(&r("r2"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let read = rig.broker.get_or_create(&id("outage"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r3")));
    assert_eq!(read.key.expose(), made.key.expose());
}

/// Shutdown gives up on repairs still waiting for a region, and returns.
#[tokio::test(start_paused = true)]
async fn shutdown_ends_waiting_repairs() {
    let rig = rig();
    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    rig.broker.get_or_create(&id("left"), true).await.unwrap();
    assert_eq!(rig.broker.repairs_pending(), 1);
    tokio::time::timeout(Duration::from_secs(10), rig.broker.shutdown())
        .await
        .expect("shutdown does not wait for the region");
    assert_eq!(rig.broker.repairs_pending(), 0);
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
    // The three calls to r1 run on to their own timeout: three faults open
    // the breaker, and r1 is not called while it is open.
    tokio::time::sleep(Duration::from_millis(2000)).await;
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

    // After the window, exactly one request probes r1 (and, hung, fails).
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

    // Healthy again: once the failed probe's window is over, the next
    // probe succeeds and r1 serves once more.
    rig.kms.set_fault(&r("r1"), None);
    tokio::time::sleep(Duration::from_millis(2000 + 10_000)).await;
    let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r1")));
    let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r1")));
}

/// A healthy region that is merely slower than `hedge_after` loses every
/// race, but its calls succeed: its breaker must stay closed.
#[tokio::test(start_paused = true)]
async fn a_slower_healthy_region_losing_hedges_keeps_its_breaker_closed() {
    let rig = rig_with(BrokerSettings {
        hedge_budget_percent: 100,
        ..no_cache()
    });
    rig.broker.get_or_create(&id("slow"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(400))));
    for round in 1..=20 {
        let read = rig.broker.get_or_create(&id("slow"), true).await.unwrap();
        assert_eq!(read.source, KeySource::Region(r("r2")), "the hedge wins");
        assert_eq!(
            rig.kms.calls(&r("r1"), "decrypt"),
            round,
            "r1 is still asked first"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let m = &rig.broker.inner.metrics;
    assert_eq!(
        m.region_breaker.with_label_values(&["r1", "closed"]).get(),
        1
    );
    assert_eq!(m.region_up.with_label_values(&["r1"]).get(), 1);
    assert_eq!(m.kms_hedges.with_label_values(&["r2"]).get(), 20);
}

/// Per-key errors say nothing about the region: no breaker opens, and the
/// read moves to the next region at once, without a hedge delay.
#[tokio::test(start_paused = true)]
async fn per_key_errors_move_on_at_once_and_open_no_breaker() {
    for kind in [
        KmsErrorKind::Misconfigured,
        KmsErrorKind::Integrity,
        KmsErrorKind::Other,
    ] {
        let rig = rig_with(no_cache());
        rig.broker.get_or_create(&id("k"), true).await.unwrap();
        rig.kms.set_fault(&r("r1"), Some(Fault::Fail(kind)));
        for round in 1..=10 {
            let started = Instant::now();
            let read = rig.broker.get_or_create(&id("k"), true).await.unwrap();
            assert_eq!(read.source, KeySource::Region(r("r2")), "{kind:?}");
            assert_eq!(started.elapsed(), Duration::ZERO, "{kind:?}");
            assert_eq!(
                rig.kms.calls(&r("r1"), "decrypt"),
                round,
                "{kind:?}: r1 still tried"
            );
        }
        let m = &rig.broker.inner.metrics;
        assert_eq!(
            m.region_breaker.with_label_values(&["r1", "closed"]).get(),
            1
        );
    }
}

/// Throttling is a region fault: it opens the breaker.
#[tokio::test(start_paused = true)]
async fn throttling_opens_the_breaker() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("t"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Fail(KmsErrorKind::Throttled)));
    for _ in 0..3 {
        rig.broker.get_or_create(&id("t"), true).await.unwrap();
    }
    let m = &rig.broker.inner.metrics;
    assert_eq!(m.region_breaker.with_label_values(&["r1", "open"]).get(), 1);
    assert_eq!(m.region_up.with_label_values(&["r1"]).get(), 0);
}

/// Hedges sent because a region is slow are capped: the burst, then one
/// per ten calls at the default 10%.
#[tokio::test(start_paused = true)]
async fn the_hedge_budget_caps_hedges_to_a_share_of_calls() {
    let rig = rig_with(BrokerSettings {
        hedge_budget_burst: 2,
        ..no_cache()
    });
    rig.broker.get_or_create(&id("b"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(1000))));
    let r2_before = rig.kms.calls(&r("r2"), "decrypt");
    let mut slow = 0;
    for _ in 0..21 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("b"), true).await.unwrap();
        if read.source == KeySource::Region(r("r1")) {
            assert_eq!(started.elapsed(), Duration::from_millis(1000));
            slow += 1;
        }
    }
    let hedges = rig.kms.calls(&r("r2"), "decrypt") - r2_before;
    // 2 from the burst (reads 1 and 2), then one each time ten calls have
    // refilled a token (reads 11 and 21).
    assert_eq!(hedges, 4);
    assert_eq!(slow, 17, "without budget, reads wait for the slow region");
    let m = &rig.broker.inner.metrics;
    assert_eq!(m.kms_hedges.with_label_values(&["r2"]).get(), 4);
}

/// `hedge_after_ms = 0` asks every region at once; the first answer wins.
#[tokio::test(start_paused = true)]
async fn hedge_after_zero_asks_every_region_at_once() {
    let rig = rig_with(BrokerSettings {
        hedge_after: Duration::ZERO,
        ..no_cache()
    });
    rig.broker.get_or_create(&id("z"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(50))));
    let before = rig.kms.total_calls("decrypt");
    let started = Instant::now();
    let read = rig.broker.get_or_create(&id("z"), true).await.unwrap();
    assert_ne!(
        read.source,
        KeySource::Region(r("r1")),
        "a faster region wins"
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(
        rig.kms.total_calls("decrypt") - before,
        3,
        "one call per region"
    );
}

/// When every region's breaker is open, a request is answered at once
/// (503 with the time of the next probe), not after trying each region.
#[tokio::test(start_paused = true)]
async fn a_full_outage_answers_at_once_with_the_next_probe_time() {
    let rig = rig_with(BrokerSettings {
        cache_ttl: Duration::from_secs(1),
        stale_if_error: Duration::from_secs(600),
        ..settings()
    });
    let made = rig.broker.get_or_create(&id("o"), true).await.unwrap();
    for region in regions() {
        rig.kms
            .set_fault(&region, Some(Fault::Fail(KmsErrorKind::Unavailable)));
    }
    // Past the TTL: three refreshes fail in every region (each serves the
    // stale key) and open every breaker.
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..3 {
        let stale = rig.broker.get_or_create(&id("o"), true).await.unwrap();
        assert_eq!(stale.source, KeySource::StaleCache);
    }
    let calls = rig.kms.total_calls("decrypt") + rig.kms.total_calls("generate_data_key");
    tokio::time::advance(Duration::from_secs(4)).await;
    let started = Instant::now();
    let err = rig
        .broker
        .get_or_create(&id("new"), true)
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    match err {
        BrokerError::AllRegionsOpen { retry_after } => {
            assert_eq!(
                retry_after,
                Duration::from_secs(6),
                "the breakers reopen in 6 s"
            )
        }
        other => panic!("expected AllRegionsOpen, got {other}"),
    }
    // A cached key past its TTL is still served where stale_if_error allows.
    let stale = rig.broker.get_or_create(&id("o"), true).await.unwrap();
    assert_eq!(stale.source, KeySource::StaleCache);
    assert_eq!(stale.key.expose(), made.key.expose());
    assert_eq!(
        rig.kms.total_calls("decrypt") + rig.kms.total_calls("generate_data_key"),
        calls,
        "no KMS call while every breaker is open"
    );
}

/// A region that stops answering holds at most `max_in_flight_per_region`
/// calls; the rest move on to the next region.
#[tokio::test(start_paused = true)]
async fn a_hung_region_holds_at_most_its_in_flight_cap() {
    let rig = rig_with(BrokerSettings {
        max_in_flight_per_region: 2,
        hedge_budget_percent: 0,
        hedge_budget_burst: 0,
        ..no_cache()
    });
    let names: Vec<String> = (0..6).map(|i| format!("cap{i}")).collect();
    for name in &names {
        rig.broker.get_or_create(&id(name), true).await.unwrap();
    }
    let before = rig.kms.calls(&r("r1"), "decrypt");
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));
    let reads = names.iter().map(|name| {
        let broker = rig.broker.clone();
        let key = id(name);
        tokio::spawn(async move { broker.get_or_create(&key, true).await })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap().unwrap().source, KeySource::Region(r("r2")));
    }
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt") - before,
        2,
        "two calls held r1's slots; the other four moved on"
    );
    let m = &rig.broker.inner.metrics;
    assert_eq!(
        m.kms_requests
            .with_label_values(&["r1", "decrypt", "saturated"])
            .get(),
        4
    );
    assert_eq!(
        m.region_breaker.with_label_values(&["r1", "closed"]).get(),
        1,
        "waiting for a slot is not a region fault"
    );
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

    // Three creates whose r3 calls time out open r3's breaker; later
    // creates skip it at once.
    rig.broker.get_or_create(&id("c2"), true).await.unwrap();
    rig.broker.get_or_create(&id("c3"), true).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let calls = rig.kms.calls(&r("r3"), "encrypt");
    let started = Instant::now();
    rig.broker.get_or_create(&id("c4"), true).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(rig.kms.calls(&r("r3"), "encrypt"), calls);

    // The region comes back: the queued repairs complete on their own.
    rig.kms.set_fault(&r("r3"), None);
    tokio::time::timeout(Duration::from_secs(300), rig.broker.repairs_idle())
        .await
        .unwrap();
    for name in ["c", "c2", "c3"] {
        assert_eq!(
            rig.store.snapshot(&id(name)).unwrap().keys.len(),
            3,
            "{name}"
        );
    }
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
