//! What a create serves after its conditional put: the stored record, read
//! back unless the store's put is atomic.

use super::*;

/// Never serve a new key the store does not hold: after an accepted put,
/// the stored record is read back, and the stored key wins.
#[tokio::test]
async fn a_create_overwritten_behind_the_stores_back_serves_the_stored_key() {
    let rival_rig = rig();
    let id = KeyId::parse("raced").unwrap();
    let rival_key = rival_rig.broker.get_or_create(&id, true).await.unwrap().key;
    let rival = rival_rig.store.snapshot(&id).unwrap();

    // The same master keys, so the rival's ciphertexts decrypt here too.
    let local = LocalKms::open(&rival_rig._dir.path().join("keyring.json"), &regions()).unwrap();
    let kms = Arc::new(FaultyKms::new(Arc::new(local)));
    let store = Arc::new(OddStore {
        inner: Arc::new(MemoryStore::new()),
        rival: std::sync::Mutex::new(Some(rival.clone())),
        updates_apply: true,
        loose_ids: false,
    });
    let broker = KeyBroker::new(
        kms,
        store.clone(),
        settings(),
        Arc::new(Metrics::new().unwrap()),
    );
    let served = broker.get_or_create(&id, true).await.unwrap();
    assert_eq!(served.key.expose(), rival_key.expose());
    assert!(!served.created, "ours lost; the stored key is served");
    assert_eq!(store.inner.snapshot(&id).unwrap(), rival);
    // And from the cache too.
    let again = broker.get_or_create(&id, true).await.unwrap();
    assert_eq!(again.key.expose(), rival_key.expose());
}

/// On a store whose conditional put is atomic (SQLite: one transaction), a
/// create is not read back: one store read (the miss) and one write. A
/// store that does not say so is read back (the test above).
#[tokio::test]
async fn a_create_on_an_atomic_store_is_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalKms::open(&dir.path().join("keyring.json"), &regions()).unwrap();
    let store = Arc::new(
        crate::store::sqlite::SqliteStore::open(
            &dir.path().join("db.sqlite3"),
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let metrics = Arc::new(Metrics::new().unwrap());
    let broker = KeyBroker::new(Arc::new(local), store, no_cache(), metrics.clone());
    let id = KeyId::parse("atomic").unwrap();
    let created = broker.get_or_create(&id, true).await.unwrap();
    assert!(created.created);
    let calls = |op: &str| metrics.store_requests.with_label_values(&[op, "ok"]).get();
    assert_eq!((calls("get"), calls("put_if_absent")), (1, 1));
    // The stored key is the one served.
    let read = broker.get_or_create(&id, false).await.unwrap();
    assert_eq!(read.key.expose(), created.key.expose());
}
