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
        said.to_ascii_lowercase().contains("collate nocase") && said.contains("rkms_keys"),
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

/// Only the table rkms made is used (its definition, with any spacing
/// and comments): a column collation (NOCASE beside a BINARY key), a
/// unique index or column with ON CONFLICT REPLACE (a create deleted
/// another record), a trigger (each create stored under another id, and
/// the id got a new key at each miss), a CHECK, a column added, or text in
/// UTF-16 (the blob-id check's cast then misses): each found by a review,
/// each refused at open, naming what is wrong.
#[test]
fn only_the_table_rkms_made_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let rebuilt = |definition: &str| {
        format!(
            "CREATE TABLE t ({definition});
             INSERT INTO t (id, keys, v, key_ids, created_at) SELECT id, keys, v, key_ids, created_at FROM rkms_keys;
             DROP TABLE rkms_keys; ALTER TABLE t RENAME TO rkms_keys;"
        )
    };
    let ours = "id TEXT PRIMARY KEY NOT NULL, keys TEXT NOT NULL, v INTEGER, key_ids TEXT NOT NULL, created_at TEXT";
    let cases = [
        (rebuilt(&format!("  {}  ", ours.replace(", ", ",\n -- a comment\n"))), None),
        (rebuilt("id TEXT COLLATE NOCASE NOT NULL, keys TEXT NOT NULL, v INTEGER, key_ids TEXT NOT NULL, created_at TEXT, PRIMARY KEY (id COLLATE BINARY)"), Some("definition")),
        (rebuilt(&format!("{ours}, slot INTEGER DEFAULT 0 UNIQUE ON CONFLICT REPLACE")), Some("definition")),
        (rebuilt(&format!("{ours}, CHECK (length(id) > 0)")), Some("definition")),
        ("ALTER TABLE rkms_keys ADD COLUMN note TEXT".to_string(), Some("definition")),
        ("CREATE UNIQUE INDEX odd ON rkms_keys (id, created_at)".to_string(), Some("unique index")),
        ("CREATE INDEX by_time ON rkms_keys (created_at)".to_string(), None),
        (
            "CREATE TRIGGER t AFTER INSERT ON rkms_keys BEGIN \
             UPDATE rkms_keys SET id = NEW.id || '~' WHERE rowid = NEW.rowid; END"
                .to_string(),
            Some("trigger"),
        ),
    ];
    for (i, (change, refused)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("db-{i}.sqlite3"));
        made_with(&path, 0..3);
        Connection::open(&path)
            .unwrap()
            .execute_batch(change)
            .unwrap();
        match (SqliteStore::open(&path, SECOND), refused) {
            (Ok(_), None) => {}
            (Err(e), Some(says)) => {
                let said = crate::report::chain(&e);
                assert!(
                    said.contains("not the shape rkms made") && said.contains(says),
                    "{change}: {said}"
                );
            }
            (Ok(_), Some(_)) => panic!("accepted: {change}"),
            (Err(e), None) => panic!("refused: {change}: {e:?}"),
        }
    }
    // Text stored as UTF-16.
    let path = dir.path().join("utf16.sqlite3");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA encoding = 'UTF-16le'; {}",
        super::super::SCHEMA
    ))
    .unwrap();
    drop(conn);
    let said = crate::report::chain(&SqliteStore::open(&path, SECOND).map(|_| ()).unwrap_err());
    assert!(said.contains("UTF-16"), "{said}");
}

/// The file's rows going back while rkms runs (an older copy written over
/// it in place, which keeps its inode): every id written since would get
/// a second key (found by a review: 1,500 of 1,500). Writes stop for good,
/// and the ping fails as a setting.
#[test]
fn rows_going_back_while_running_stop_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    made_with(&path, 0..3);
    let old = std::fs::read(&path).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(went_back(&path, &old));
}

async fn went_back(path: &Path, old: &[u8]) {
    let store = SqliteStore::open(path, SECOND).unwrap();
    for i in 0..20 {
        store
            .put_if_absent(&record(&format!("new-{i}"), &["a"]))
            .await
            .unwrap();
    }
    store.ping().await.unwrap();
    // Everything into the file, then the old copy written over it.
    Connection::open(path)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    std::fs::write(path, old).unwrap();
    let err = store
        .put_if_absent(&record("new-5", &["a"]))
        .await
        .unwrap_err();
    let said = crate::report::chain(&err);
    assert!(said.contains("went back") && !err.is_outage(), "{said}");
    assert!(store.ping().await.is_err());
    assert!(store.put_if_absent(&record("other", &["a"])).await.is_err());
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
    // Writes of another table left in the -wal, as a crash leaves them.
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; CREATE TABLE other (x); INSERT INTO other VALUES (1);",
    )
    .unwrap();
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    drop(conn);
    let wal = log_path(&path);
    let (db_before, wal_before) = (std::fs::read(&path).unwrap(), std::fs::read(&wal).unwrap());
    assert!(!wal_before.is_empty());

    let said = refusal(&path);
    assert!(
        said.contains("is damaged") && said.contains("integrity"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "{said}");
    // Refused, the file and its -wal are left as found, for the operator
    // to keep a copy of (a refused start copied a foreign -wal into it).
    assert_eq!(std::fs::read(&path).unwrap(), db_before);
    assert_eq!(std::fs::read(&wal).unwrap(), wal_before);
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

/// A trigger added while rkms runs (the open-time check cannot see it):
/// the record written is read back in the same transaction, and a create
/// whose record reads back otherwise is refused and rolled back, where its
/// key was served and then lost (found by a review).
#[tokio::test]
async fn a_create_that_reads_back_otherwise_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let store = SqliteStore::open(&path, SECOND).unwrap();
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER t AFTER INSERT ON rkms_keys BEGIN \
             UPDATE rkms_keys SET id = NEW.id || '~' WHERE rowid = NEW.rowid; END",
        )
        .unwrap();
    let err = store
        .put_if_absent(&record("victim", &["a"]))
        .await
        .unwrap_err();
    assert!(!err.is_outage(), "{err:?}");
    let rows: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM rkms_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "rolled back");
}

/// The -wal removed while rkms runs, and nothing written or probed after:
/// within a second the store copies the writes the -wal held into the
/// database by itself, so a crash then loses none (a runbook walkthrough
/// lost 10 of 10 keys to a kill -9 15 s after the removal).
#[tokio::test]
async fn a_removed_wal_is_rescued_without_a_write_or_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    let store = SqliteStore::open(&path, SECOND).unwrap();
    for i in 0..10 {
        store
            .put_if_absent(&record(&format!("held-{i}"), &["a"]))
            .await
            .unwrap();
    }
    std::fs::remove_file(log_path(&path)).unwrap();
    tokio::time::sleep(WATCH_EVERY * 2 + Duration::from_millis(500)).await;
    // What a start after a crash reads: the database file alone.
    let rows: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM rkms_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 10);
    drop(store);
}
