//! Group commit: writes queued while one is committing go in together.
//! Each test holds the write lock from another connection (as another
//! process would) so that writes queue behind the first, then lets go.

use std::path::PathBuf;

use super::super::*;
use super::record;

/// Another process's write lock on the database at `path`.
fn hold_lock(path: &Path) -> Connection {
    let holder = Connection::open(path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    holder
}

async fn until_queued(store: &SqliteStore, n: usize) {
    for _ in 0..5000 {
        if store.writer.queued() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("only {} writes queued of {n}", store.writer.queued());
}

/// Until the first write is out of the queue, waiting for the lock.
async fn until_begun(store: &SqliteStore) {
    for _ in 0..5000 {
        if store.writer.batches() >= 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the first write never began");
}

fn spawn_put(
    store: &Arc<SqliteStore>,
    rec: KeyRecord,
) -> tokio::task::JoinHandle<Result<PutOutcome, StoreError>> {
    let store = Arc::clone(store);
    tokio::spawn(async move { store.put_if_absent(&rec).await })
}

fn open(dir: &tempfile::TempDir, call_timeout: Duration) -> (Arc<SqliteStore>, PathBuf) {
    let path = dir.path().join("db.sqlite3");
    (
        Arc::new(SqliteStore::open(&path, call_timeout).unwrap()),
        path,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_commit_together_and_each_gets_its_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = open(&dir, Duration::from_secs(8));
    let holder = hold_lock(&path);
    let first = spawn_put(&store, record("first", &["a"]));
    until_begun(&store).await;
    let puts: Vec<_> = (0..40)
        .map(|n| spawn_put(&store, record(&format!("many/{n}"), &["a"])))
        .collect();
    let dup_first = record("dup", &["a"]);
    let mut dup_second = record("dup", &["a"]);
    dup_second.keys.insert(Region::new("a"), vec![9, 9]);
    until_queued(&store, 40).await;
    let dup_a = spawn_put(&store, dup_first.clone());
    until_queued(&store, 41).await;
    let dup_b = spawn_put(&store, dup_second);
    until_queued(&store, 42).await;
    let repair = {
        let store = Arc::clone(&store);
        let read = dup_first.clone();
        tokio::spawn(async move {
            let keys = BTreeMap::from([(Region::new("b"), vec![5])]);
            let arns = BTreeMap::from([(Region::new("b"), "arn:b".to_string())]);
            store.add_missing_regions(&read, &keys, &arns).await
        })
    };
    until_queued(&store, 43).await;
    holder.execute_batch("ROLLBACK").unwrap();

    assert!(matches!(first.await.unwrap(), Ok(PutOutcome::Created)));
    for put in puts {
        assert!(matches!(put.await.unwrap(), Ok(PutOutcome::Created)));
    }
    assert!(matches!(dup_a.await.unwrap(), Ok(PutOutcome::Created)));
    match dup_b.await.unwrap() {
        Ok(PutOutcome::Exists(winner)) => assert_eq!(winner, dup_first),
        other => panic!("the second record for one id must lose: {other:?}"),
    }
    assert_eq!(repair.await.unwrap().unwrap(), 1);
    // `first` alone, then the 43 queued behind it in one transaction.
    assert_eq!(store.writer.batches(), 2);

    // Everything answered is on disk, as a new process reads it.
    drop(store);
    let reopened = SqliteStore::open(&path, SECOND).unwrap();
    for n in 0..40 {
        let id = KeyId::parse(&format!("many/{n}")).unwrap();
        assert_eq!(
            reopened.get(&id).await.unwrap(),
            Some(record(&format!("many/{n}"), &["a"]))
        );
    }
    let dup = reopened
        .get(&KeyId::parse("dup").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(dup.keys[&Region::new("a")], vec![1, 2, 3]);
    assert_eq!(dup.keys[&Region::new("b")], vec![5]);
}

const SECOND: Duration = Duration::from_secs(1);

/// A corrupt stored row fails the write that meets it; the other writes
/// of its batch are committed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_fails_alone_and_the_rest_of_its_batch_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = open(&dir, Duration::from_secs(8));
    Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO rkms_keys (id, keys, v, key_ids) VALUES ('bad', '{\"a\":\"***\"}', 2, '{}')",
            [],
        )
        .unwrap();
    let holder = hold_lock(&path);
    let first = spawn_put(&store, record("first", &["a"]));
    until_begun(&store).await;
    let before: Vec<_> = (0..5)
        .map(|n| spawn_put(&store, record(&format!("before/{n}"), &["a"])))
        .collect();
    until_queued(&store, 5).await;
    let bad = spawn_put(&store, record("bad", &["a"]));
    until_queued(&store, 6).await;
    let after: Vec<_> = (0..5)
        .map(|n| spawn_put(&store, record(&format!("after/{n}"), &["a"])))
        .collect();
    until_queued(&store, 11).await;
    holder.execute_batch("ROLLBACK").unwrap();

    assert!(matches!(first.await.unwrap(), Ok(PutOutcome::Created)));
    match bad.await.unwrap() {
        Err(StoreError::Corrupt { id, .. }) => assert_eq!(id, "bad"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    for (n, put) in before.into_iter().chain(after).enumerate() {
        assert!(
            matches!(put.await.unwrap(), Ok(PutOutcome::Created)),
            "write {n}"
        );
    }
    for prefix in ["before", "after"] {
        for n in 0..5 {
            let id = KeyId::parse(&format!("{prefix}/{n}")).unwrap();
            assert!(store.get(&id).await.unwrap().is_some(), "{id} lost");
        }
    }
}

/// Another process holds the lock past `busy_timeout`: every write of
/// the batch waiting for it answers `Unavailable`, naming the cause;
/// none is written, and the next writes succeed once the lock is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_start_answers_each_of_its_writes_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // A busy timeout of 1.5 s: time enough to queue the five.
    let (store, path) = open(&dir, Duration::from_secs(2));
    let holder = hold_lock(&path);
    let first = spawn_put(&store, record("first", &["a"]));
    until_begun(&store).await;
    let queued: Vec<_> = (0..5)
        .map(|n| spawn_put(&store, record(&format!("q/{n}"), &["a"])))
        .collect();
    until_queued(&store, 5).await;
    for put in std::iter::once(first).chain(queued) {
        match put.await.unwrap() {
            Err(e @ StoreError::Unavailable { .. }) => {
                let chain = crate::report::chain(&e);
                assert!(chain.contains("locked"), "{chain}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert_eq!(store.writer.batches(), 2);
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(store
        .get(&KeyId::parse("q/0").unwrap())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(
        store.put_if_absent(&record("q/0", &["a"])).await,
        Ok(PutOutcome::Created)
    ));
}

/// A write whose caller stopped waiting while it was still queued is
/// not written: under overload, work nobody waits for is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_abandoned_while_queued_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path) = open(&dir, Duration::from_secs(8));
    let holder = hold_lock(&path);
    let first = spawn_put(&store, record("first", &["a"]));
    until_begun(&store).await;
    let abandoned = spawn_put(&store, record("abandoned", &["a"]));
    until_queued(&store, 1).await;
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    holder.execute_batch("ROLLBACK").unwrap();
    assert!(matches!(first.await.unwrap(), Ok(PutOutcome::Created)));
    let id = KeyId::parse("abandoned").unwrap();
    assert_eq!(store.get(&id).await.unwrap(), None);
    assert_eq!(store.writer.batches(), 1);
    assert!(matches!(
        store.put_if_absent(&record("abandoned", &["a"])).await,
        Ok(PutOutcome::Created)
    ));
}
