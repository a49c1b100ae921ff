//! Busy files and slow reads: another process's lock, bursts of writes,
//! concurrent and queued reads, a read stuck in its task.

use super::super::*;
use super::record;

/// Another writer holds the database: a create answers `Unavailable`
/// within its busy timeout, which is below the store call timeout, so
/// the broker sees a clear store error instead of its own timeout with
/// a thread still stuck behind the lock.
#[tokio::test]
async fn a_locked_database_is_unavailable_before_the_call_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let call_timeout = Duration::from_millis(400);
    let store = SqliteStore::open(&path, call_timeout).unwrap();
    assert!(store.busy_timeout() < call_timeout);
    let holder = Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let record = KeyRecord {
        id: KeyId::parse("locked").unwrap(),
        keys: [(Region::new("a"), vec![1])].into(),
        version: Some(2),
        key_ids: [(Region::new("a"), "arn:a".to_string())].into(),
        created_at: None,
    };
    let outcome = tokio::time::timeout(call_timeout, store.put_if_absent(&record)).await;
    match outcome {
        Ok(Err(StoreError::Unavailable { .. })) => {}
        Ok(other) => panic!("expected Unavailable, got {other:?}"),
        Err(_) => panic!("the store did not answer within the call timeout"),
    }
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(matches!(
        store.put_if_absent(&record).await.unwrap(),
        PutOutcome::Created
    ));
}

/// A burst of creates from one process all succeed, although SQLite's
/// busy handler gives up after 150 ms here: the writes queue for one
/// write connection instead of polling for the lock against each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_takes_turns_instead_of_failing_busy() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("db.sqlite3"), Duration::from_millis(200)).unwrap(),
    );
    let writes: Vec<_> = (0..300)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                if n % 3 == 0 {
                    let keys = BTreeMap::from([(Region::new("b"), vec![4])]);
                    let arns = BTreeMap::from([(Region::new("b"), "arn:b".to_string())]);
                    let read = record(&format!("burst/{}", n + 1), &["a"]);
                    store
                        .add_missing_regions(&read, &keys, &arns)
                        .await
                        .map(|_| ())
                } else {
                    store
                        .put_if_absent(&record(&format!("burst/{n}"), &["a"]))
                        .await
                        .map(|_| ())
                }
            })
        })
        .collect();
    for write in writes {
        let outcome = write.await.unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    for n in (1..300).filter(|n| n % 3 != 0) {
        let id = KeyId::parse(&format!("burst/{n}")).unwrap();
        assert!(store.get(&id).await.unwrap().is_some(), "burst/{n} lost");
    }
}

/// Many reads at once, queued for the reading tasks: each gets its own
/// record, or none for an id never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_each_get_their_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("db.sqlite3"), Duration::from_secs(5)).unwrap(),
    );
    let stored = |n: u8| {
        let mut rec = record(&format!("r/{n}"), &["a"]);
        rec.keys.insert(Region::new("a"), vec![n, n]);
        rec
    };
    for n in 0..100 {
        store.put_if_absent(&stored(n)).await.unwrap();
    }
    let reads: Vec<_> = (0..2000u32)
        .map(|i| {
            let store = Arc::clone(&store);
            let n = u8::try_from(i % 150).unwrap();
            tokio::spawn(async move {
                let got = store.get(&KeyId::parse(&format!("r/{n}")).unwrap()).await;
                (n, got)
            })
        })
        .collect();
    for read in reads {
        let (n, got) = tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("a read was never answered")
            .unwrap();
        let got = got.unwrap();
        if n < 100 {
            assert_eq!(got, Some(stored(n)), "r/{n}");
        } else {
            assert_eq!(got, None, "r/{n}");
        }
    }
}

/// Misses that come in one turn of a worker share one reading task,
/// and so one thread wake-up, and each still gets its own answer.
#[tokio::test]
async fn reads_queued_in_one_turn_share_one_reading_task() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db.sqlite3"), Duration::from_secs(5)).unwrap();
    for n in 0..20 {
        store
            .put_if_absent(&record(&format!("r/{n}"), &["a"]))
            .await
            .unwrap();
    }
    // However slow the machine, no read here counts as stuck.
    store.reader.set_stuck_after(Duration::from_secs(60));
    let ids: Vec<KeyId> = (0..24)
        .map(|n| KeyId::parse(&format!("r/{n}")).unwrap())
        .collect();
    let got = futures::future::join_all(ids.iter().map(|id| store.get(id))).await;
    for (n, got) in got.into_iter().enumerate() {
        let got = got.unwrap();
        if n < 20 {
            assert_eq!(got, Some(record(&format!("r/{n}"), &["a"])), "r/{n}");
        } else {
            assert_eq!(got, None, "r/{n}");
        }
    }
    assert_eq!(store.reader.tasks_started(), 1);
}

/// A read whose caller gives up before any task was started for it
/// (a timeout, a client gone) is not left in the queue, and the next
/// read is answered.
#[tokio::test]
async fn a_read_abandoned_before_its_task_started_is_not_left_queued() {
    use futures::FutureExt as _;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("db.sqlite3"), Duration::from_secs(5)).unwrap();
    store.put_if_absent(&record("kept", &["a"])).await.unwrap();
    let id = KeyId::parse("kept").unwrap();
    // Polled once: queued, then yielding before a task is chosen.
    assert!(store.get(&id).now_or_never().is_none());
    assert_eq!(store.reader.queued(), 0);
    assert_eq!(store.reader.tasks_started(), 0);
    assert_eq!(store.get(&id).await.unwrap(), Some(record("kept", &["a"])));
}

/// A read stuck in its task (a stalled disk) holds up no read that
/// comes after it, even a single one: the next read gets a task of
/// its own, not a place in the queue behind the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_stuck_in_its_task_does_not_hold_up_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("db.sqlite3"), Duration::from_secs(30)).unwrap(),
    );
    for id in ["stuck", "next"] {
        store.put_if_absent(&record(id, &["a"])).await.unwrap();
    }
    let (release, held) = std::sync::mpsc::channel();
    let stuck = KeyId::parse("stuck").unwrap();
    store.reader.hold(&stuck, held);
    let first = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.get(&stuck).await })
    };
    while store.reader.tasks_started() == 0 || store.reader.queued() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let next = tokio::time::timeout(
        Duration::from_secs(10),
        store.get(&KeyId::parse("next").unwrap()),
    )
    .await
    .expect("the read after a stuck one waited for it");
    assert_eq!(next.unwrap(), Some(record("next", &["a"])));
    assert_eq!(store.reader.tasks_started(), 2);
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), Some(record("stuck", &["a"])));
}

/// Point reads do not wait for a slow call on the pool (a check, a
/// page of a maintenance scan).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_do_not_queue_behind_a_slow_call() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(&dir.path().join("db.sqlite3"), Duration::from_secs(5)).unwrap(),
    );
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let slow = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            store
                .with_conn("slow", move |_| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    Ok(())
                })
                .await
        })
    };
    entered_rx.recv().unwrap();
    // With one shared connection this read would wait for `release`.
    let read = store.get(&KeyId::parse("x").unwrap()).await.unwrap();
    assert!(read.is_none());
    release_tx.send(()).unwrap();
    slow.await.unwrap().unwrap();
}
