//! Repair of records that lack a configured region.

use super::*;

/// The stored record of `key` without its r3 ciphertext, as if r3 were
/// added to the config after it was written.
fn lose_r3(rig: &Rig, key: &str) {
    let mut short = rig.store.snapshot(&id(key)).unwrap();
    short.keys.remove(&r("r3"));
    short.key_ids.remove(&r("r3"));
    rig.store.insert_raw(short);
}

#[tokio::test]
async fn a_record_read_while_missing_a_region_is_repaired() {
    let rig = rig_with(no_cache());
    let made = rig.broker.get_or_create(&id("rep"), true).await.unwrap();
    // A region added to the config after the record was written.
    lose_r3(&rig, "rep");
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
    let misses = rig.broker.inner.metrics.cache_misses.get();

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
    assert_eq!(
        rig.broker.inner.metrics.cache_misses.get(),
        misses,
        "no request for the id was needed"
    );
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

/// A region that keeps refusing with a per-key error (access denied, a
/// disabled key: no breaker opens) cannot grow the repairs without bound:
/// each short record retries with backoff, and past `QUEUE_CAPACITY`
/// pending ones a short record is left for a later read. Every create
/// still succeeds in the other regions.
#[tokio::test(start_paused = true)]
async fn pending_repairs_never_pass_the_queue_capacity() {
    use crate::broker::repair::QUEUE_CAPACITY;
    let rig = rig();
    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Misconfigured)));
    for i in 0..QUEUE_CAPACITY + 20 {
        let made = rig
            .broker
            .get_or_create(&id(&format!("short/{i}")), true)
            .await
            .unwrap();
        assert!(made.created);
    }
    let after_creates = rig.kms.calls(&r("r3"), "encrypt");
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(rig.broker.repairs_pending(), QUEUE_CAPACITY as i64);
    assert!(
        rig.kms.calls(&r("r3"), "encrypt") >= after_creates + QUEUE_CAPACITY,
        "each pending record retried"
    );
}

/// An update that applies to nothing is not taken for a repair: the stored
/// record is read, and as it still lacks the region the repair is given up
/// with an error naming the cause (retrying cannot help). It used to count
/// the regions as present, leaving the record one region short with no
/// sign.
#[tokio::test(start_paused = true)]
async fn an_update_the_store_does_not_apply_is_not_a_repair() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalKms::open(&dir.path().join("keyring.json"), &regions()).unwrap();
    let kms = Arc::new(FaultyKms::new(Arc::new(local)));
    let memory = Arc::new(MemoryStore::new());
    let broker = KeyBroker::new(
        kms.clone(),
        Arc::new(OddStore {
            inner: memory.clone(),
            rival: std::sync::Mutex::new(None),
            updates_apply: false,
            loose_ids: false,
        }),
        settings(),
        Arc::new(Metrics::new().unwrap()),
    );
    kms.set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    broker.get_or_create(&id("stuck"), true).await.unwrap();
    assert_eq!(broker.repairs_pending(), 1);
    let before = kms.calls(&r("r3"), "encrypt");
    kms.set_fault(&r("r3"), None);
    tokio::time::timeout(Duration::from_secs(120), broker.repairs_idle())
        .await
        .expect("given up");
    assert!(kms.calls(&r("r3"), "encrypt") > before, "wrapped once back");
    assert_eq!(memory.snapshot(&id("stuck")).unwrap().keys.len(), 2);
    assert_eq!(broker.inner.metrics.records_repaired.get(), 0);
}

/// A record deleted and written again with another key (out of band)
/// while its repair waits for a region must not gain the old key's
/// ciphertext: that would leave two keys in one record. The repair checks
/// the record is still the one it read, and drops itself otherwise.
#[tokio::test(start_paused = true)]
async fn a_record_replaced_while_its_repair_waits_is_left_alone() {
    let rig = rig();
    rig.kms
        .set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    rig.broker.get_or_create(&id("swap"), true).await.unwrap();
    assert_eq!(rig.broker.repairs_pending(), 1);
    let mut other = rig.store.snapshot(&id("swap")).unwrap();
    for ciphertext in other.keys.values_mut() {
        ciphertext.reverse();
    }
    rig.store.insert_raw(other.clone());

    // Another short record, deleted out of band.
    rig.broker.get_or_create(&id("gone"), true).await.unwrap();
    assert_eq!(rig.broker.repairs_pending(), 2);
    rig.store.remove(&id("gone"));

    rig.kms.set_fault(&r("r3"), None);
    tokio::time::timeout(Duration::from_secs(120), rig.broker.repairs_idle())
        .await
        .expect("the repairs end");
    assert_eq!(rig.store.snapshot(&id("swap")).unwrap(), other, "untouched");
    assert_eq!(rig.store.snapshot(&id("gone")), None, "not written back");
    assert_eq!(rig.broker.inner.metrics.records_repaired.get(), 0);
    // The old key is no longer served from the cache: the stored record
    // (here, ciphertexts no region accepts) is what a read now finds.
    assert!(rig.broker.get_or_create(&id("swap"), false).await.is_err());
}

/// The same, when the record is written again in the last moment: after
/// the repair's KMS calls, as its update comes. The store checks the
/// record in the same atomic step as the update, so the new record does
/// not gain the old key's ciphertext.
#[tokio::test(start_paused = true)]
async fn a_record_replaced_as_its_repair_updates_gains_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalKms::open(&dir.path().join("keyring.json"), &regions()).unwrap();
    let kms = Arc::new(FaultyKms::new(Arc::new(local)));
    let memory = Arc::new(MemoryStore::new());
    let store = Arc::new(OddStore {
        inner: memory.clone(),
        rival: std::sync::Mutex::new(None),
        updates_apply: true,
        loose_ids: false,
    });
    let broker = KeyBroker::new(
        kms.clone(),
        store.clone(),
        settings(),
        Arc::new(Metrics::new().unwrap()),
    );
    kms.set_fault(&r("r3"), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    broker.get_or_create(&id("late"), true).await.unwrap();
    assert_eq!(broker.repairs_pending(), 1);
    let mut other = memory.snapshot(&id("late")).unwrap();
    for ciphertext in other.keys.values_mut() {
        ciphertext.reverse();
    }
    *store.rival.lock().unwrap() = Some(other.clone());

    kms.set_fault(&r("r3"), None);
    tokio::time::timeout(Duration::from_secs(120), broker.repairs_idle())
        .await
        .expect("the repair ends");
    assert!(store.rival.lock().unwrap().is_none(), "the rival landed");
    assert_eq!(memory.snapshot(&id("late")).unwrap(), other, "untouched");
    assert_eq!(broker.inner.metrics.records_repaired.get(), 0);
    assert!(broker.get_or_create(&id("late"), false).await.is_err());
}

/// A store that refuses writes until restart (a damaged SQLite file, a
/// replaced DynamoDB table) gets no repair's KMS calls: each retry asks
/// the store first. A review saw repairs wrap keys every few seconds for
/// writes the store then refused.
#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_writes_gets_no_repair_kms_calls() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("fenced"), true).await.unwrap();
    lose_r3(&rig, "fenced");
    rig.store.fence_writes();
    let before = rig.kms.calls(&r("r3"), "encrypt");
    rig.broker.get_or_create(&id("fenced"), true).await.unwrap();
    assert_eq!(rig.broker.repairs_pending(), 1);
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        rig.kms.calls(&r("r3"), "encrypt"),
        before,
        "no wrap for a refused write"
    );
    assert_eq!(rig.store.snapshot(&id("fenced")).unwrap().keys.len(), 2);
    assert_eq!(
        rig.broker.repairs_pending(),
        1,
        "still waiting, for a restart"
    );
}
