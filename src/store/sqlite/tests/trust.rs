//! A database that cannot be trusted with keys: a table altered from the
//! shape rkms made, or a file SQLite finds damaged. Each is refused when
//! the store opens; damage found while running stops writes.

use super::super::*;
use super::record;

const SECOND: Duration = Duration::from_secs(1);

fn made_with(path: &Path, ids: std::ops::Range<u32>) {
    let store = SqliteStore::open(path, SECOND).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for i in ids {
            store
                .put_if_absent(&record(&format!("k-{i:04}"), &["a"]))
                .await
                .unwrap();
        }
    });
    drop(store);
    // Every write in the database file itself, none left in a log.
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")
        .unwrap();
}

fn refusal(path: &Path) -> String {
    let open = SqliteStore::open(path, SECOND).map(|_| ()).unwrap_err();
    let read_only = SqliteStore::open_read_only(path, SECOND)
        .map(|_| ())
        .unwrap_err();
    let (open, read_only) = (
        crate::report::chain(&open),
        crate::report::chain(&read_only),
    );
    assert_eq!(open, read_only);
    open
}

/// The table rebuilt to compare ids without case (found by a review):
/// `alpha`, `ALPHA` and `Alpha` were served one key.
#[test]
fn a_table_that_compares_ids_without_case_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    made_with(&path, 0..3);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE loose (id TEXT PRIMARY KEY COLLATE NOCASE NOT NULL, keys TEXT NOT NULL, \
         v INTEGER, key_ids TEXT NOT NULL, created_at TEXT);
         INSERT INTO loose SELECT * FROM rkms_keys;
         DROP TABLE rkms_keys;
         ALTER TABLE loose RENAME TO rkms_keys;",
    )
    .unwrap();
    drop(conn);
    let said = refusal(&path);
    assert!(
        said.contains("NOCASE") && said.contains("rkms_keys"),
        "{said}"
    );
}

/// A column dropped: every read failed 500 while /readyz said ok. At open
/// it is refused; while running, the ping fails as a setting (not an
/// outage), so readiness says `failed`.
#[tokio::test]
async fn a_column_dropped_is_refused_and_fails_the_ping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let store = SqliteStore::open(&path, SECOND).unwrap();
    store.put_if_absent(&record("k", &["a"])).await.unwrap();
    store.ping().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("ALTER TABLE rkms_keys DROP COLUMN created_at")
        .unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(!err.is_outage(), "{err:?}");
    // A read is refused as the store not being as set up (503), not as a
    // fault of the request (500).
    let err = store.get(&KeyId::parse("k").unwrap()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && !err.is_outage(),
        "{err:?}"
    );
    drop((store, conn));
    let said = refusal(&path);
    assert!(said.contains("no column created_at"), "{said}");
}

/// Columns are found by name: another order, or a column added that a
/// write may leave out, is a table rkms can use (found by a review, which
/// had them refused); a column added that every write would have to give
/// is not.
#[test]
fn columns_in_another_order_or_one_added_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (change, accepted)) in [
        ("ALTER TABLE rkms_keys ADD COLUMN note TEXT", true),
        ("ALTER TABLE rkms_keys ADD COLUMN n INTEGER NOT NULL DEFAULT 0", true),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v INTEGER, keys TEXT NOT NULL, \
             key_ids TEXT NOT NULL, created_at TEXT);
             INSERT INTO t (id, v, keys, key_ids, created_at) SELECT id, v, keys, key_ids, created_at FROM rkms_keys;
             DROP TABLE rkms_keys; ALTER TABLE t RENAME TO rkms_keys;",
            true,
        ),
        (
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, keys TEXT NOT NULL, v INTEGER, \
             key_ids TEXT NOT NULL, created_at TEXT, owner TEXT NOT NULL);
             DROP TABLE rkms_keys; ALTER TABLE t RENAME TO rkms_keys;",
            false,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("db-{i}.sqlite3"));
        made_with(&path, 0..3);
        Connection::open(&path).unwrap().execute_batch(change).unwrap();
        match SqliteStore::open(&path, SECOND) {
            Ok(store) => {
                assert!(accepted, "{change}");
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let id = KeyId::parse("k-0001").unwrap();
                    assert!(store.get(&id).await.unwrap().is_some());
                    store.put_if_absent(&record("added", &["a"])).await.unwrap();
                });
            }
            Err(e) => {
                assert!(!accepted, "{change}: {e:?}");
                assert!(crate::report::chain(&e).contains("owner"), "{e:?}");
            }
        }
    }
}

/// One byte of the primary key's index changed on disk: the id it names
/// was not found, and a create gave it a second key beside its row (found
/// by a review). SQLite's integrity check at open finds it.
#[test]
fn an_index_that_hides_a_stored_id_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    made_with(&path, 0..50);
    let (page_size, root): (usize, usize) = {
        let conn = Connection::open(&path).unwrap();
        let size = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .unwrap();
        let root = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rkms_keys'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        (size as usize, root as usize)
    };
    let mut bytes = std::fs::read(&path).unwrap();
    let page = &mut bytes[(root - 1) * page_size..root * page_size];
    let at = page
        .windows(6)
        .position(|w| w == b"k-0044")
        .expect("the index entry");
    page[at + 2] = b'Z';
    std::fs::write(&path, &bytes).unwrap();

    let said = refusal(&path);
    assert!(
        said.contains("is damaged") && said.contains("integrity"),
        "{said}"
    );
}

/// SQLite answering that the file is damaged, while rkms runs: creates and
/// repairs are refused from then on, and the ping fails as a setting.
#[tokio::test]
async fn damage_found_while_running_stops_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let store = SqliteStore::open(&path, SECOND).unwrap();
    store
        .put_if_absent(&record("before", &["a"]))
        .await
        .unwrap();
    let said = other("get")(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some("database disk image is malformed".into()),
    ));
    assert!(!said.is_outage());
    store.reopen.note_error(&said);
    let err = store
        .put_if_absent(&record("after", &["a"]))
        .await
        .unwrap_err();
    let chain = crate::report::chain(&err);
    assert!(chain.contains("is damaged") && !err.is_outage(), "{chain}");
    assert!(store.ping().await.is_err());
    assert_eq!(
        store.get(&KeyId::parse("after").unwrap()).await.unwrap(),
        None
    );
    // Reads go on.
    assert!(store
        .get(&KeyId::parse("before").unwrap())
        .await
        .unwrap()
        .is_some());
}
