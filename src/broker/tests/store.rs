//! A store that is down, hangs, or answers for another id: readiness and
//! what the broker serves and creates meanwhile.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_down_store_is_unavailable_not_a_new_key() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("d"), true).await.unwrap();
    rig.store.set_unavailable(true);
    let err = rig.broker.get_or_create(&id("d"), true).await.unwrap_err();
    assert!(err.is_unavailable());
    assert_eq!(rig.kms.total_calls("generate_data_key"), 1);
    let failed = rig.broker.readiness(Duration::from_secs(1)).await;
    assert!(failed.is_err_and(|f| f[0].check == "store" && f[0].fresh));
    rig.store.set_unavailable(false);
    // A probe within the interval shares the answer (not logged again);
    // the next after it asks the store again.
    let shared = rig.broker.readiness(Duration::from_secs(1)).await;
    assert!(shared.is_err_and(|f| !f[0].fresh));
    tokio::time::sleep(crate::broker::PING_EVERY).await;
    assert!(rig.broker.readiness(Duration::from_secs(1)).await.is_ok());
}

/// Probes are not authenticated: a flood of them asks the store at most
/// once at a time and once per interval, however long it takes to answer,
/// and each probe still answers within its timeout.
#[tokio::test(start_paused = true)]
async fn a_flood_of_probes_asks_the_store_once_per_interval() {
    let rig = rig_with(no_cache());
    let pings = || rig.store.pings();
    let before = pings();
    let probes: Vec<_> = (0..200)
        .map(|_| rig.broker.readiness(Duration::from_secs(1)))
        .collect();
    let answers = futures::future::join_all(probes).await;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(pings() - before, 1);

    // A store that hangs: one ping at a time, and every probe answers
    // "unreachable" within its timeout rather than queueing.
    rig.store.set_hang(true);
    tokio::time::sleep(crate::broker::PING_EVERY).await;
    let started = tokio::time::Instant::now();
    let probes: Vec<_> = (0..200)
        .map(|_| rig.broker.readiness(Duration::from_secs(1)))
        .collect();
    let answers = futures::future::join_all(probes).await;
    assert!(started.elapsed() <= Duration::from_secs(1) + Duration::from_millis(10));
    assert!(answers.iter().all(|a| a
        .as_ref()
        .is_err_and(|f| f[0].check == "store" && f[0].unreachable)));
    assert_eq!(pings() - before, 2);
}

/// A store that matches ids without case (a table altered so): it answers
/// `ALPHA` with `alpha`'s record. The id binding cannot tell, as that
/// ciphertext is bound to `alpha`: the broker refuses the answer, serves
/// nothing and creates nothing (found by a review, where `alpha`, `ALPHA`
/// and `Alpha` were served one key).
#[tokio::test]
async fn a_store_that_answers_another_ids_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let settings = no_cache();
    let local = LocalKms::open(&dir.path().join("keyring.json"), &settings.regions).unwrap();
    let kms = Arc::new(FaultyKms::new(Arc::new(local)));
    let inner = Arc::new(MemoryStore::new());
    let broker = KeyBroker::new(
        kms.clone(),
        Arc::new(OddStore {
            inner: inner.clone(),
            rival: std::sync::Mutex::new(None),
            updates_apply: true,
            loose_ids: true,
        }),
        settings,
        Arc::new(Metrics::new().unwrap()),
    );
    let alpha = broker.get_or_create(&id("alpha"), true).await.unwrap();
    assert!(alpha.created);
    for asked in ["ALPHA", "Alpha"] {
        for create in [false, true] {
            let err = broker.get_or_create(&id(asked), create).await.unwrap_err();
            assert!(
                matches!(&err, BrokerError::Store { source } if matches!(**source, crate::store::StoreError::Corrupt { .. })),
                "{asked}: {err:?}"
            );
        }
    }
    assert_eq!(kms.total_calls("generate_data_key"), 1);
    assert_eq!(inner.len(), 1);
}
