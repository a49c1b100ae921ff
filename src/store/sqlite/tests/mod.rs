//! Tests of the adapter against real files in a temporary directory.

use super::*;

fn record(id: &str, regions: &[&str]) -> KeyRecord {
    KeyRecord {
        id: KeyId::parse(id).unwrap(),
        keys: regions
            .iter()
            .map(|r| (Region::new(*r), vec![1, 2, 3]))
            .collect(),
        version: Some(2),
        key_ids: regions
            .iter()
            .map(|r| (Region::new(*r), format!("arn:{r}")))
            .collect(),
        created_at: Some("2026-01-01T00:00:00Z".into()),
    }
}

mod unit {
    use super::super::*;
    use super::record;
    use rusqlite::params;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn put_if_absent_keeps_the_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/db.sqlite3");
        let store = SqliteStore::open(&path, SECOND).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700,
            "the directory it made is owner-only"
        );
        let first = record("k", &["a"]);
        assert!(matches!(
            store.put_if_absent(&first).await.unwrap(),
            PutOutcome::Created
        ));
        let mut second = record("k", &["a", "b"]);
        second.keys.insert(Region::new("a"), vec![9]);
        match store.put_if_absent(&second).await.unwrap() {
            PutOutcome::Exists(winner) => assert_eq!(winner, first),
            PutOutcome::Created => panic!("second create must lose"),
        }
        assert_eq!(store.get(&first.id).await.unwrap(), Some(first));
        assert_eq!(
            store.get(&KeyId::parse("none").unwrap()).await.unwrap(),
            None
        );
    }

    /// SQLite refusing a write (the file's mode or owner changed, a
    /// read-only mount; here a store opened read-only) is 503 and needs an
    /// operator: readiness says `failed`. It was a 500.
    #[tokio::test]
    async fn a_write_sqlite_refuses_is_unavailable_not_internal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let store = SqliteStore::open(&path, SECOND).unwrap();
        store.put_if_absent(&record("k", &["a"])).await.unwrap();
        drop(store);
        let read_only = SqliteStore::open_read_only(&path, SECOND).unwrap();
        let err = read_only
            .put_if_absent(&record("new", &["a"]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(!err.is_outage(), "an operator's to mend: {err:?}");
        assert!(
            crate::report::chain(&err).contains("cannot be written"),
            "{}",
            crate::report::chain(&err)
        );
    }

    /// The store's write-ahead log removed while it is open: writes are
    /// refused, and the writes the log held are copied into the database
    /// first, so the database file alone holds them.
    #[tokio::test]
    async fn a_removed_log_refuses_writes_and_its_writes_reach_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let store = SqliteStore::open(&path, SECOND).unwrap();
        store.put_if_absent(&record("kept", &["a"])).await.unwrap();
        std::fs::remove_file(log_path(&path)).unwrap();
        let err = store
            .put_if_absent(&record("refused", &["a"]))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
        assert!(!err.is_outage());
        assert!(
            crate::report::chain(&err).contains("are copied into the database"),
            "{}",
            crate::report::chain(&err)
        );
        assert!(store.ping().await.is_err());
        // The database file alone, as a crash would leave it.
        let alone = dir.path().join("alone.sqlite3");
        std::fs::copy(&path, &alone).unwrap();
        let conn = rusqlite::Connection::open(&alone).unwrap();
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM rkms_keys")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, ["kept"]);
    }

    #[tokio::test]
    async fn add_missing_regions_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite3"), SECOND).unwrap();
        let rec = record("k", &["a"]);
        store.put_if_absent(&rec).await.unwrap();
        let keys = BTreeMap::from([(Region::new("a"), vec![7]), (Region::new("b"), vec![8])]);
        let arns = BTreeMap::from([(Region::new("b"), "arn:b".to_string())]);
        assert_eq!(
            store.add_missing_regions(&rec, &keys, &arns).await.unwrap(),
            1
        );
        assert_eq!(
            store.add_missing_regions(&rec, &keys, &arns).await.unwrap(),
            0
        );
        let got = store.get(&rec.id).await.unwrap().unwrap();
        assert_eq!(got.keys[&Region::new("a")], vec![1, 2, 3]);
        assert_eq!(got.keys[&Region::new("b")], vec![8]);
        assert_eq!(got.key_ids[&Region::new("b")], "arn:b");
    }

    /// A record deleted, or written again with another key, since it was
    /// read gains nothing: the check is in the update's transaction.
    #[tokio::test]
    async fn add_missing_regions_leaves_a_record_written_again_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db.sqlite3"), SECOND).unwrap();
        let read = record("k", &["a", "b"]);
        let mut again = read.clone();
        again.keys.insert(Region::new("a"), vec![9, 9]);
        again.keys.remove(&Region::new("b"));
        store.put_if_absent(&again).await.unwrap();
        let keys = BTreeMap::from([(Region::new("c"), vec![7])]);
        let arns = BTreeMap::from([(Region::new("c"), "arn:c".to_string())]);
        assert_eq!(
            store
                .add_missing_regions(&read, &keys, &arns)
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.get(&read.id).await.unwrap(), Some(again.clone()));
        let gone = record("gone", &["a"]);
        assert_eq!(
            store
                .add_missing_regions(&gone, &keys, &arns)
                .await
                .unwrap(),
            0
        );
        assert_eq!(store.get(&gone.id).await.unwrap(), None);
        // The record as it is now stored takes the region.
        assert_eq!(
            store
                .add_missing_regions(&again, &keys, &arns)
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.get(&read.id).await.unwrap().unwrap().keys.len(), 2);
    }

    /// Run `sql` on the store's file through a connection of its own, as
    /// another program (or a damaged disk) would write it.
    fn write_behind(path: &std::path::Path, sql: &str) {
        Connection::open(path).unwrap().execute(sql, []).unwrap();
    }

    /// `read` is `Corrupt`, naming `id` and saying `reason`.
    fn assert_corrupt(read: Result<Option<KeyRecord>, StoreError>, id: &str, reason: &str) {
        match read {
            Err(StoreError::Corrupt {
                id: named,
                reason: r,
            }) => {
                assert_eq!((named.as_str(), r.as_str()), (id, reason));
            }
            other => panic!("{id}: {other:?}"),
        }
    }

    /// A new store in its own directory, with `sql` written behind it.
    fn store_with_rows(sql: &str) -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        let store = SqliteStore::open(&path, SECOND).unwrap();
        write_behind(&path, sql);
        (dir, path, store)
    }

    #[tokio::test]
    async fn corrupt_rows_are_errors_not_absences() {
        let (_dir, _, store) = store_with_rows(
            "INSERT INTO rkms_keys (id, keys, v, key_ids) VALUES ('bad', '{\"a\":\"***\"}', 2, '{}'), ('worse', 'nope', 2, '{}')",
        );
        for id in ["bad", "worse"] {
            let err = store.get(&KeyId::parse(id).unwrap()).await.unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        }
    }

    /// The JSON maps are read from the row's text in place: any valid JSON
    /// object of strings reads as it would into a map (escapes, spacing,
    /// a region named twice keeps its last entry, and the entry it
    /// replaces is not read even when it is not base64), and anything else is
    /// `Corrupt` with the map it concerns named.
    #[tokio::test]
    async fn stored_maps_read_as_json_whatever_their_spelling() {
        let (_dir, _, store) = store_with_rows(
            "INSERT INTO rkms_keys (id, keys, v, key_ids) VALUES \
             ('escaped', '{\"\\u0061\":\"AQ\\u003d=\", \"b\" : \"!!!\", \"b\":\"Aw==\"}', 2, \
              ' { \"a\" : \"arn:\\/\\/k\\\"1\" } '), \
             ('empty', '{}', 2, '{}'), \
             ('nested', '{\"a\":{\"b\":\"AQ==\"}}', 2, '{}'), \
             ('array', '[[\"a\",\"AQ==\"]]', 2, '{}'), \
             ('ids', '{\"a\":\"AQ==\"}', 2, '{\"a\":1}'), \
             ('trailing', '{\"a\":\"AQ==\"} x', 2, '{}')",
        );
        let read = |id: &str| {
            let id = KeyId::parse(id).unwrap();
            let store = &store;
            async move { store.get(&id).await }
        };
        let escaped = read("escaped").await.unwrap().unwrap();
        let keys: Vec<(&str, &[u8])> = escaped
            .keys
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_slice()))
            .collect();
        assert_eq!(keys, [("a", &[1u8][..]), ("b", &[3u8][..])]);
        assert_eq!(
            escaped.key_ids.get(&Region::new("a")).map(String::as_str),
            Some("arn://k\"1")
        );
        for (id, reason) in [
            ("empty", "record has no ciphertexts"),
            ("nested", "keys is not a JSON object of strings"),
            ("array", "keys is not a JSON object of strings"),
            ("ids", "key_ids is not a JSON object of strings"),
            ("trailing", "keys is not a JSON object of strings"),
        ] {
            assert_corrupt(read(id).await, id, reason);
        }
    }

    /// Columns are read in place. A row whose columns hold the wrong
    /// type (a blob, a number, text that is not UTF-8), its id included,
    /// is `Corrupt` naming what is wrong, never a record or an absence:
    /// an id stored as a blob, which SQLite never takes for equal to text,
    /// would otherwise read as absent and get a second key. A scan reports
    /// each such row by its id and goes on past it.
    #[tokio::test]
    async fn rows_with_columns_of_the_wrong_type_are_corrupt() {
        let (_dir, path, store) = store_with_rows(
            "INSERT INTO rkms_keys (id, keys, v, key_ids, created_at) VALUES \
             ('blob', X'7B7D', 2, '{}', NULL), \
             ('number', '{\"a\":\"AQ==\"}', 2, 7, NULL), \
             ('latin1', CAST(X'7B2261223A2241513D3D227D' AS TEXT), 2, CAST(X'7BE97D' AS TEXT), NULL), \
             ('stamp', '{\"a\":\"AQ==\"}', 2, '{}', X'00'), \
             ('version', '{\"a\":\"AQ==\"}', 'two', '{}', NULL), \
             (CAST('bytes' AS BLOB), '{\"a\":\"AQ==\"}', 2, '{}', NULL)",
        );
        let cases = [
            ("blob", "column keys is of type blob, not text"),
            // The column's text affinity stores the number as text.
            ("number", "key_ids is not a JSON object of strings"),
            ("latin1", "column key_ids is not UTF-8 text"),
            ("stamp", "column created_at is of type blob, not text"),
            ("version", "column v is of type text, not an integer"),
            ("bytes", "the stored id is a blob, not text"),
        ];
        for (id, reason) in cases {
            assert_corrupt(store.get(&KeyId::parse(id).unwrap()).await, id, reason);
        }
        // A well-formed row beside them still reads, and a scan names
        // every bad row, where it lies, and reaches the good one after them.
        write_behind(
            &path,
            "INSERT INTO rkms_keys (id, keys, v, key_ids, created_at) VALUES \
             ('good', '{\"a\":\"AQ==\"}', 2, '{\"a\":\"k1\"}', '2026-11-27T00:00:00Z')",
        );
        let good = store
            .get(&KeyId::parse("good").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(good.keys.len(), 1);
        assert_eq!(good.created_at.as_deref(), Some("2026-11-27T00:00:00Z"));
        let page = store.scan(0, 1, None, 100).await.unwrap();
        let read: Vec<(String, Option<String>)> = page
            .records
            .into_iter()
            .map(|r| match r {
                Ok(record) => (record.id.to_string(), None),
                Err(StoreError::Corrupt { id, reason }) => (id, Some(reason)),
                Err(e) => panic!("{e:?}"),
            })
            .collect();
        let mut expected: Vec<(String, Option<String>)> = cases
            .iter()
            .zip(1..)
            .map(|((id, reason), rowid)| {
                let reason = format!("{reason} (SQLite rowid {rowid})");
                (id.to_string(), Some(reason))
            })
            .collect();
        expected.push(("good".into(), None));
        assert_eq!(read, expected);
        assert!(page.next.is_none());
        // Nor is a record for the id written beside its blob twin.
        match store.put_if_absent(&record("bytes", &["a"])).await {
            Err(StoreError::Corrupt { reason, .. }) => {
                assert_eq!(reason, "the stored id is a blob, not text");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A write that finds the disk full is `Unavailable` (503 with
    /// `Retry-After`), as another process's lock is: it passes once space
    /// is freed. SQLite's `max_page_count` gives the real "database or
    /// disk is full"; `tests/api/data_files.rs` fills a real file system.
    #[test]
    fn a_full_disk_is_unavailable_not_an_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("db.sqlite3")).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let pages: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        conn.pragma_update(None, "max_page_count", pages).unwrap();
        let err = conn
            .execute(
                "INSERT INTO rkms_keys (id, keys, v, key_ids) VALUES (?1, ?2, 2, '{}')",
                params!["k", "x".repeat(8192)],
            )
            .unwrap_err();
        match other("put_if_absent")(err) {
            StoreError::Unavailable { op, source } => {
                assert_eq!(op, "put_if_absent");
                assert!(source.to_string().contains("full"), "{source}");
            }
            e => panic!("expected Unavailable, got {e:?}"),
        }
    }

    /// An open that fails with too little room left says how much there
    /// is, with SQLite's own error kept as the cause; with room to spare,
    /// the error is left as it was.
    #[test]
    fn a_failed_open_on_a_full_file_system_says_how_much_room_is_left() {
        let failed = || StoreError::Other {
            op: "open",
            source: "disk I/O error".into(),
        };
        let dir = Path::new("data");
        for (bytes, inodes) in [(0, 100), (4096, 100), (1 << 30, 0)] {
            let text = crate::report::chain(&file::with_free_space(failed(), dir, bytes, inodes));
            assert!(
                text.contains(&format!("{bytes} bytes and {inodes} inodes free"))
                    && text.contains("data")
                    && text.ends_with("disk I/O error"),
                "{text}"
            );
        }
        let text = crate::report::chain(&file::with_free_space(failed(), dir, 1 << 30, 100));
        assert_eq!(text, "store open failed: disk I/O error");
    }
}

mod busy;

mod group_commit;
mod trust;
