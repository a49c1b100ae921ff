//! Tests of backfill over a memory store and the local KMS: limited runs, carried records.

use super::*;
use crate::domain::KeyId;
use crate::kms::local::LocalKms;
use crate::store::memory::MemoryStore;

/// Records for `ids` with a ciphertext in region `a` only, in a memory
/// store; those `failing` picks get one no region can decrypt.
async fn store_of(
    kms: &LocalKms,
    a: &Region,
    ids: &[String],
    failing: impl Fn(&str) -> bool,
) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for id in ids {
        let id = KeyId::parse(id).unwrap();
        let (_, mut wrapped) = kms
            .generate_data_key(a, 32, Context::Bound(&id))
            .await
            .unwrap();
        if failing(id.as_str()) {
            wrapped.ciphertext = vec![7; 60];
        }
        store.insert_raw(KeyRecord {
            id: id.clone(),
            keys: [(a.clone(), wrapped.ciphertext)].into(),
            version: Some(2),
            key_ids: [(a.clone(), wrapped.key_arn)].into(),
            created_at: None,
        });
    }
    store
}

/// A record for `id` with a ciphertext in region `a` only.
async fn wrapped_in(kms: &LocalKms, a: &Region, id: &str) -> KeyRecord {
    let id = KeyId::parse(id).unwrap();
    let (_, wrapped) = kms
        .generate_data_key(a, 32, Context::Bound(&id))
        .await
        .unwrap();
    KeyRecord {
        id,
        keys: [(a.clone(), wrapped.ciphertext)].into(),
        version: Some(2),
        key_ids: [(a.clone(), wrapped.key_arn)].into(),
        created_at: None,
    }
}

/// One run of backfill over `store`, limited to `max` records, resumed
/// from `checkpoint`, into `regions`.
async fn limited<S: Store + 'static>(
    kms: &Arc<LocalKms>,
    store: &Arc<S>,
    regions: [&Region; 2],
    checkpoint: &std::path::Path,
    segments: u32,
    max: u64,
) -> Summary {
    let options = Options {
        segments,
        max_rps: 0,
        dry_run: false,
        checkpoint: Some(checkpoint.to_path_buf()),
        max_records: Some(max),
        scope: "test".into(),
    };
    run(
        Arc::clone(kms) as Arc<dyn Kms>,
        Arc::clone(store) as Arc<dyn Store>,
        regions.into_iter().cloned().collect(),
        options,
    )
    .await
    .unwrap()
}

/// A record that stays failed is carried in the checkpoint and read
/// again, by id, at the start of each run; limited runs go on past it.
/// They used to hold the checkpoint before its page, so every run
/// limited to N records read the same N and the store was never done.
#[tokio::test]
async fn limited_runs_go_on_past_a_record_that_stays_failed() {
    let (a, b) = (Region::new("a"), Region::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        LocalKms::open(&dir.path().join("keyring.json"), &[a.clone(), b.clone()]).unwrap(),
    );
    let ids: Vec<String> = (0..30).map(|i| format!("x{i:02}")).collect();
    // No region can decrypt x05: it fails in every run.
    let store = store_of(&kms, &a, &ids, |id| id == "x05").await;
    let checkpoint = dir.path().join("cp.json");
    let mut runs = Vec::new();
    for _ in 0..5 {
        let summary = limited(&kms, &store, [&a, &b], &checkpoint, 1, 10).await;
        assert_eq!(summary.failed_ids, ["x05"], "{}", summary.text());
        runs.push((summary.repaired, summary.retried));
    }
    // Each run after the first reads x05 again (1 of its 10), then 9
    // more, until the store is read.
    assert_eq!(runs, [(9, 0), (9, 1), (9, 1), (2, 1), (0, 1)]);
    for id in ids.iter().filter(|id| *id != "x05") {
        let record = store.snapshot(&KeyId::parse(id).unwrap()).unwrap();
        assert!(record.keys.contains_key(&b), "{id} not backfilled");
    }
    let saved = Checkpoint::load_or_new(Some(&checkpoint), "backfill", "test", 1).unwrap();
    assert_eq!(saved.segments[0].retry, ["x05"]);
    assert!(
        !saved.finished(),
        "a run with a failed record is not finished"
    );

    // Mended (here: removed), the next run reads it again, finds nothing
    // to do, and the checkpoint records a finished run.
    store.remove(&KeyId::parse("x05").unwrap());
    let summary = limited(&kms, &store, [&a, &b], &checkpoint, 1, 10).await;
    assert!(summary.ok(), "{}", summary.text());
    assert_eq!(summary.retried, 1);
    let saved = Checkpoint::load_or_new(Some(&checkpoint), "backfill", "test", 1).unwrap();
    assert!(saved.finished());
}

/// As many records that stay failed as a run may take: they get half
/// of each limited run, and the records after them are repaired. They
/// took every run whole, and the store was never done.
#[tokio::test]
async fn limited_runs_go_on_past_as_many_failures_as_they_take() {
    let (a, b) = (Region::new("a"), Region::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        LocalKms::open(&dir.path().join("keyring.json"), &[a.clone(), b.clone()]).unwrap(),
    );
    let failing: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    let good: Vec<String> = (0..10).map(|i| format!("g{i:02}")).collect();
    let all: Vec<String> = failing.iter().chain(&good).cloned().collect();
    let store = store_of(&kms, &a, &all, |id| id.starts_with('f')).await;
    let checkpoint = dir.path().join("cp.json");
    let mut repaired = Vec::new();
    for _ in 0..5 {
        let summary = limited(&kms, &store, [&a, &b], &checkpoint, 1, 5).await;
        repaired.push(summary.repaired);
    }
    // Run 1 reads f0..f4; then each run reads 2 of the carried again
    // and 3 records on.
    assert_eq!(repaired, [0, 2, 3, 3, 2]);
    for id in &good {
        let record = store.snapshot(&KeyId::parse(id).unwrap()).unwrap();
        assert!(record.keys.contains_key(&b), "{id} not backfilled");
    }
    let saved = Checkpoint::load_or_new(Some(&checkpoint), "backfill", "test", 1).unwrap();
    let mut carried = saved.segments[0].retry.clone();
    carried.sort();
    assert_eq!(carried, failing, "every failing record still carried");
}

/// `--max-records` over several segments, resumed run after run: each
/// run does its full share until the store is done. A segment already
/// read to its end (here the first, which holds the fewest ids) takes
/// none of the share; it used to take it all, find nothing, and leave
/// the run to do nothing.
#[tokio::test]
async fn limited_runs_over_segments_each_do_their_share() {
    let (a, b) = (Region::new("a"), Region::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        LocalKms::open(&dir.path().join("keyring.json"), &[a.clone(), b.clone()]).unwrap(),
    );
    let store = Arc::new(MemoryStore::new());
    // Segment n of 4 holds the ids whose first byte is n modulo 4:
    // 'd' (100) is segment 0, with 3 ids; 'a', 'b', 'c' hold 12 each.
    let mut ids = Vec::new();
    for (prefix, n) in [("d", 3), ("a", 12), ("b", 12), ("c", 12)] {
        ids.extend((0..n).map(|i| format!("{prefix}{i:02}")));
    }
    for id in &ids {
        let record = wrapped_in(&kms, &a, id).await;
        store.put_if_absent(&record).await.unwrap();
    }
    let checkpoint = dir.path().join("cp.json");
    let mut repaired = Vec::new();
    for _ in 0..8 {
        let summary = limited(&kms, &store, [&a, &b], &checkpoint, 4, 10).await;
        assert!(summary.ok(), "{}", summary.text());
        repaired.push(summary.repaired);
    }
    // 39 records, 10 a run: the whole share each time, then nothing.
    assert_eq!(repaired, [10, 10, 10, 9, 0, 0, 0, 0]);
    let left = ids.iter().filter(|id| {
        let id = KeyId::parse(id).unwrap();
        !store.snapshot(&id).is_some_and(|r| r.keys.contains_key(&b))
    });
    assert_eq!(left.count(), 0);
}

/// A corrupt record whose id no record can be read by (a control
/// character, which DynamoDB and SQLite store as any other text) is
/// carried by name: limited runs go on past it, and each resumed run
/// reports it again. It used to hold the checkpoint before its page, so
/// every run limited to N records read the same N.
#[tokio::test]
async fn limited_runs_go_on_past_a_corrupt_record_with_an_unreadable_id() {
    let (a, b) = (Region::new("a"), Region::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(
        LocalKms::open(&dir.path().join("keyring.json"), &[a.clone(), b.clone()]).unwrap(),
    );
    let path = dir.path().join("rkms.sqlite3");
    let store = Arc::new(
        crate::store::sqlite::SqliteStore::open(&path, std::time::Duration::from_secs(5)).unwrap(),
    );
    let good: Vec<String> = (0..20).map(|i| format!("g{i:02}")).collect();
    for (n, id) in good.iter().enumerate() {
        if n == 3 {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute(
                "INSERT INTO rkms_keys (id, keys, v, key_ids) VALUES ('bad\u{1}id', '{\"a\":\"AAAA\"}', 2, '{}')",
                [],
            )
            .unwrap();
        }
        let record = wrapped_in(&kms, &a, id).await;
        store.put_if_absent(&record).await.unwrap();
    }
    let checkpoint = dir.path().join("cp.json");
    let mut runs = Vec::new();
    for _ in 0..4 {
        let summary = limited(&kms, &store, [&a, &b], &checkpoint, 1, 7).await;
        assert_eq!(summary.corrupt_ids, ["bad\u{1}id"], "{}", summary.text());
        assert!(!summary.ok());
        runs.push(summary.repaired);
    }
    // 21 rows, 7 a run (the corrupt one among the first 7), then nothing.
    assert_eq!(runs, [6, 7, 7, 0]);
    for id in &good {
        let record = store
            .get(&KeyId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(record.keys.contains_key(&b), "{id} not backfilled");
    }
    let saved = Checkpoint::load_or_new(Some(&checkpoint), "backfill", "test", 1).unwrap();
    assert_eq!(saved.segments[0].unreadable, ["bad\u{1}id"]);
    assert!(saved.segments[0].retry.is_empty());
}

/// A region that does not answer is asked once and then left alone for a
/// while, as verify does: each record that needs it fails without a call
/// (a resumed run retries it), rather than paying a whole call timeout.
/// Records it is not needed for are filled from the regions that answer.
#[tokio::test]
async fn a_region_that_cannot_be_asked_is_left_alone() {
    use crate::kms::faulty::{Fault, FaultyKms};
    use crate::kms::KmsErrorKind;
    let (a, b, c) = (Region::new("a"), Region::new("b"), Region::new("c"));
    let dir = tempfile::tempdir().unwrap();
    let local = Arc::new(
        LocalKms::open(
            &dir.path().join("keyring.json"),
            &[a.clone(), b.clone(), c.clone()],
        )
        .unwrap(),
    );
    let ids: Vec<String> = (0..20).map(|i| format!("b/{i:02}")).collect();
    let store = store_of(&local, &a, &ids, |_| false).await;
    let kms = Arc::new(FaultyKms::new(Arc::clone(&local) as Arc<dyn Kms>));
    // The preferred region holding every ciphertext does not answer, nor
    // does c, a region they lack.
    kms.set_fault(&a, Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let options = Options {
        segments: 1,
        max_rps: 0,
        dry_run: false,
        checkpoint: None,
        max_records: None,
        scope: "test".into(),
    };
    let run_once = || {
        run(
            Arc::clone(&kms) as Arc<dyn Kms>,
            Arc::clone(&store) as Arc<dyn Store>,
            vec![a.clone(), b.clone(), c.clone()],
            options.clone(),
        )
    };
    let summary = run_once().await.unwrap();
    assert_eq!(summary.failed, 20, "{summary:?}");
    assert_eq!(
        kms.calls(&a, "decrypt"),
        3,
        "asked three times in a row, then left alone"
    );

    // a answers again, c does not: b is added to every record, c is asked
    // once, and a later run (after the pause) would retry it.
    kms.set_fault(&a, None);
    kms.set_fault(&c, Some(Fault::Fail(KmsErrorKind::Unavailable)));
    let summary = run_once().await.unwrap();
    assert_eq!(summary.failed, 20, "c is still missing: {summary:?}");
    assert_eq!(
        kms.calls(&c, "encrypt"),
        3,
        "asked three times in a row, then left alone"
    );
    for id in &ids {
        let id = KeyId::parse(id).unwrap();
        let stored = store.get(&id).await.unwrap().unwrap();
        assert!(stored.keys.contains_key(&b) && !stored.keys.contains_key(&c));
    }
}
