//! The data files under an operator's mistakes: a full disk, the SQLite
//! file moved or deleted while rkms runs, the local keyring gone. Creates
//! are refused (503 with `Retry-After`, or no start), stored keys are
//! still served where they can be, and nothing is lost.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::{start, stop};
use crate::process::{command, fetch, refused_start};

/// A small tmpfs mounted on a new directory, unmounted when dropped: a
/// disk that really fills up (`ENOSPC`), as a full volume does.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// An error where this process may not mount (not root, or no
    /// `CAP_SYS_ADMIN`), with the reason.
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write zeros into a file until the disk refuses another byte.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        for chunk in [1 << 16, 1 << 12, 1] {
            let zeros = vec![0u8; chunk];
            while f.write_all(&zeros).and_then(|()| f.flush()).is_ok() {}
        }
        let err = f.write_all(&[0]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "ENOSPC: {err}");
    }

    fn free(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn expect_refused(client: &reqwest::Client, base: &str, id: &str) {
    let res = client
        .get(format!("{base}/key?id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503, "{id}");
    assert!(res.headers().contains_key("retry-after"), "{id}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error_type"], "ServiceUnavailable");
    let message = body["error_message"].as_str().unwrap();
    assert!(
        !message.contains("disk") && !message.contains("SQLite"),
        "a 5xx body says nothing internal: {message}"
    );
}

/// Create `n` keys, `{prefix}-0` and on: each id with the key served.
async fn create(
    client: &reqwest::Client,
    base: &str,
    prefix: &str,
    n: usize,
) -> Vec<(String, String)> {
    let mut served = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let (status, body) = fetch(client, base, &id, None).await;
        assert_eq!(status, 200, "{body}");
        served.push((id, body["key"].as_str().unwrap().to_owned()));
    }
    served
}

/// The key stored for `id` (`create=false`), or `None` if it is absent.
async fn stored(client: &reqwest::Client, base: &str, id: &str) -> Option<String> {
    let res = client
        .get(format!("{base}/key?id={id}&create=false"))
        .send()
        .await
        .unwrap();
    match res.status().as_u16() {
        200 => Some(
            res.json::<Value>().await.unwrap()["key"]
                .as_str()?
                .to_owned(),
        ),
        404 => None,
        other => panic!("{id}: {other} {}", res.text().await.unwrap_or_default()),
    }
}

/// Start rkms on `dir`, create `id`, stop it cleanly: the key it got.
async fn first_key(dir: &Path, id: &str) -> String {
    let server = start(command(dir));
    let (status, body) = fetch(&reqwest::Client::new(), &server.base, id, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = stop(server);
    assert!(status.success(), "exit {status:?}");
    body["key"].as_str().unwrap().to_owned()
}

/// Start rkms on `dir`: it serves `key` for `id`, and stops cleanly.
async fn still_serves(dir: &Path, id: &str, key: &str) {
    let server = start(command(dir));
    let client = reqwest::Client::new();
    assert_eq!(
        stored(&client, &server.base, id).await.as_deref(),
        Some(key)
    );
    let (status, _) = stop(server);
    assert!(status.success(), "exit {status:?}");
}

/// `rkms ARGS` on `dir`, run to its exit: its exit code and stderr.
fn exit_of(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = command(dir);
    cmd.args(args);
    crate::process::run_to_exit(cmd)
}

#[tokio::test]
async fn a_full_disk_refuses_creates_with_503_and_loses_nothing() {
    let disk = match SmallDisk::mount("2m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: cannot mount a tmpfs here to fill up: {why}");
            return;
        }
    };
    let client = reqwest::Client::new();
    let first = start(command(disk.path()));
    let served = create(&client, &first.base, "full", 10).await;

    disk.fill();
    for i in 0..3 {
        expect_refused(&client, &first.base, &format!("refused-{i}")).await;
    }
    for (id, key) in &served {
        assert_eq!(stored(&client, &first.base, id).await.as_ref(), Some(key));
    }
    let (status, logs) = stop(first);
    assert!(status.success(), "exit {status:?}");
    assert!(
        logs.iter().any(|l| l.contains("database or disk is full")),
        "the log names the cause: {logs:#?}"
    );

    // Restarted on the full disk: the keys come from the file, not a cache.
    let second = start(command(disk.path()));
    for (id, key) in &served {
        assert_eq!(stored(&client, &second.base, id).await.as_ref(), Some(key));
    }
    expect_refused(&client, &second.base, "refused-0").await;
    let (status, _) = stop(second);
    assert!(status.success(), "exit {status:?}");

    // Stopped with room to spare, SQLite folds its -wal file back and
    // removes it; with none left, it cannot open the file again.
    disk.free();
    let (status, _) = stop(start(command(disk.path())));
    assert!(status.success(), "exit {status:?}");
    disk.fill();
    let line = refused_start(command(disk.path()));
    assert!(
        line.contains("store.sqlite.path") && line.contains("is full or nearly (0 bytes"),
        "{line}"
    );

    // Space again: every served key is unchanged, and the refused ids,
    // which were never served, are created now.
    disk.free();
    let third = start(command(disk.path()));
    for (id, key) in &served {
        assert_eq!(stored(&client, &third.base, id).await.as_ref(), Some(key));
    }
    let (status, body) = fetch(&client, &third.base, "refused-0", None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = stop(third);
    assert!(status.success(), "exit {status:?}");
}

/// `/readyz`, past the interval in which it shares the store's last answer.
async fn readiness(client: &reqwest::Client, base: &str) -> (u16, Value) {
    tokio::time::sleep(rkms::broker::PING_EVERY).await;
    let res = client.get(format!("{base}/readyz")).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// The database's write-ahead log removed while rkms runs: SQLite went on
/// writing into the log it had open, which nothing reads after a crash, so
/// every key created since the last checkpoint was lost at a kill -9, and
/// the restart gave those ids new keys (found by a review: 400 of 400).
/// Now the writes the log held are copied into the database when its loss
/// is seen, creates are refused and `/readyz` fails until a restart, and a
/// kill -9 then loses nothing.
#[tokio::test]
async fn a_write_ahead_log_removed_while_running_loses_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("rkms.sqlite3-wal");
    let client = reqwest::Client::new();
    let first = start(command(dir.path()));
    let served = create(&client, &first.base, "in-the-log", 5).await;
    assert!(
        std::fs::metadata(&log).unwrap().len() > 0,
        "the keys are in the log"
    );

    std::fs::remove_file(&log).unwrap();
    expect_refused(&client, &first.base, "log-gone").await;
    let (status, body) = readiness(&client, &first.base).await;
    assert_eq!(
        (status, &body["checks"]["store"]),
        (503, &Value::from("failed"))
    );
    for (id, key) in &served {
        assert_eq!(stored(&client, &first.base, id).await.as_ref(), Some(key));
    }
    crate::common::stop_with(first, "KILL");

    let second = start(command(dir.path()));
    for (id, key) in &served {
        assert_eq!(
            stored(&client, &second.base, id).await.as_ref(),
            Some(key),
            "{id} kept its key"
        );
    }
    assert_eq!(stored(&client, &second.base, "log-gone").await, None);
    let (status, _) = stop(second);
    assert!(status.success(), "exit {status:?}");
}

/// A database of one page and no table beside a keyring (what a store
/// whose log was lost leaves) is no store: a start stops, as for a
/// missing or empty file, where it started an empty store and gave every
/// id a new key.
#[tokio::test]
async fn a_store_without_its_table_beside_a_keyring_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rkms.sqlite3");
    let client = reqwest::Client::new();
    let first = start(command(dir.path()));
    create(&client, &first.base, "k", 1).await;
    let (status, _) = stop(first);
    assert!(status.success(), "exit {status:?}");
    std::fs::remove_file(&db).unwrap();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    }
    assert!(std::fs::metadata(&db).unwrap().len() > 0);
    let line = refused_start(command(dir.path()));
    assert!(
        line.contains("store.sqlite.path") && line.contains("holds no keys table"),
        "{line}"
    );
}

/// SQLite keeps writing into the file it opened, wherever that file went:
/// moved, its creates would be missing from the file at the configured
/// path; deleted, they would be gone once rkms stops. Until the path names
/// that file again, creates are refused and `/readyz` fails its store
/// check; stored keys are still served.
#[tokio::test]
async fn a_database_file_moved_or_deleted_while_running_refuses_creates() {
    let dir = tempfile::tempdir().unwrap();
    let (db, moved) = (dir.path().join("rkms.sqlite3"), dir.path().join("moved"));
    let client = reqwest::Client::new();
    let first = start(command(dir.path()));
    let mut served = create(&client, &first.base, "kept", 3).await;

    std::fs::rename(&db, &moved).unwrap();
    expect_refused(&client, &first.base, "while-moved").await;
    let (status, body) = readiness(&client, &first.base).await;
    assert_eq!(
        (status, &body["checks"]["store"]),
        (503, &Value::from("failed"))
    );
    for (id, key) in &served {
        assert_eq!(stored(&client, &first.base, id).await.as_ref(), Some(key));
    }

    std::fs::rename(&moved, &db).unwrap();
    let (status, body) = fetch(&client, &first.base, "after-return", None).await;
    assert_eq!(status, 200, "{body}");
    served.push((
        "after-return".into(),
        body["key"].as_str().unwrap().to_owned(),
    ));
    assert_eq!(readiness(&client, &first.base).await.0, 200);
    let (status, logs) = stop(first);
    assert!(status.success(), "exit {status:?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("is no longer the database file rkms opened")),
        "the log names the cause: {logs:#?}"
    );

    // Every served key is in the file at the path, and none was created
    // while it was away.
    let second = start(command(dir.path()));
    for (id, key) in &served {
        assert_eq!(stored(&client, &second.base, id).await.as_ref(), Some(key));
    }
    assert_eq!(stored(&client, &second.base, "while-moved").await, None);

    // Deleted: a key created now would be gone at the next start.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("rkms.sqlite3{suffix}")));
    }
    expect_refused(&client, &second.base, "after-delete").await;
    assert_eq!(readiness(&client, &second.base).await.0, 503);
    let (status, _) = stop(second);
    assert!(status.success(), "exit {status:?}");

    // Nor does a restart start an empty store beside the keyring that
    // wrapped the lost keys: it would give every id a new key. Nor on an
    // empty file at the path.
    for _ in ["deleted", "emptied"] {
        let line = refused_start(command(dir.path()));
        assert!(
            line.contains("store.sqlite.path") && line.contains("kms.local.keyring"),
            "{line}"
        );
        std::fs::write(&db, b"").unwrap();
    }
    // The checks run before a start write nothing into the empty file
    // either: once it held a table it would pass for a store.
    for args in [
        &["check-config", "--connect"][..],
        &["verify"],
        &["backfill", "--dry-run"],
    ] {
        let (code, stderr) = exit_of(dir.path(), args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is empty"), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "left as it was");
    refused_start(command(dir.path()));
}

/// The local keyring moved away from a store that holds keys: a new
/// keyring would decrypt none of them, and keys wrapped by it could never
/// be merged with the old ones. Startup stops, names the file and makes
/// none; with the file back, every key is served unchanged.
#[tokio::test]
async fn a_missing_keyring_over_stored_keys_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let (keyring, moved) = (dir.path().join("keyring.json"), dir.path().join("moved"));
    let key = first_key(dir.path(), "wrapped").await;

    std::fs::rename(&keyring, &moved).unwrap();
    let line = refused_start(command(dir.path()));
    assert!(
        line.contains("kms.local.keyring") && line.contains("restore"),
        "{line}"
    );
    assert!(!keyring.exists(), "no new keyring was made");

    std::fs::rename(&moved, &keyring).unwrap();
    still_serves(dir.path(), "wrapped", &key).await;
}

/// `store.sqlite.path` inside something that is not a directory: one line
/// naming the key and the directory that cannot be made, and no keyring
/// is made for a store that cannot open.
#[test]
fn a_store_path_under_a_file_names_the_directory_it_cannot_make() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("plain"), b"").unwrap();
    let mut cmd = command(dir.path());
    cmd.env(
        "RKMS__STORE__SQLITE__PATH",
        dir.path().join("plain/rkms.sqlite3"),
    );
    let line = refused_start(cmd);
    assert!(
        line.contains("store.sqlite.path") && line.contains("cannot create the directory"),
        "{line}"
    );
    assert!(!dir.path().join("keyring.json").exists());
}

/// A master key removed from the local keyring (a hand edit, a partial
/// restore) while stored records hold ciphertexts under it: a new master
/// key for that region could decrypt none of them. Startup stops naming
/// the region; checks and dry runs read the keyring without writing it;
/// with the keyring restored every key is served unchanged. It used to
/// get a new master key silently, and backfill then reported "complete".
#[tokio::test]
async fn a_keyring_missing_a_used_regions_master_key_is_never_completed() {
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring.json");
    let key = first_key(dir.path(), "wrapped").await;

    let original = std::fs::read(&keyring).unwrap();
    let mut doc: Value = serde_json::from_slice(&original).unwrap();
    doc["master_keys"]
        .as_object_mut()
        .unwrap()
        .remove("local-2")
        .unwrap();
    let edited = serde_json::to_vec(&doc).unwrap();
    std::fs::write(&keyring, &edited).unwrap();

    let line = refused_start(command(dir.path()));
    assert!(
        line.contains("kms.local.keyring")
            && line.contains("local-2")
            && line.contains("\"wrapped\"")
            && line.contains("restore"),
        "{line}"
    );
    // verify and the preflight find local-2 unusable; a dry run finds
    // nothing to fill (every record has its three regions). None writes.
    for (args, want) in [
        (&["verify"][..], 1),
        (&["check-config", "--connect"], 1),
        (&["backfill", "--dry-run"], 0),
    ] {
        let (code, stderr) = exit_of(dir.path(), args);
        assert_eq!(code, Some(want), "{args:?}: {stderr}");
    }
    let mut cmd = command(dir.path());
    cmd.arg("backfill");
    let line = refused_start(cmd);
    assert!(line.contains("local-2"), "{line}");
    assert_eq!(std::fs::read(&keyring).unwrap(), edited, "left as it was");

    // A record that cannot be read might need the missing master key too:
    // no start, naming it, until it is fixed or the keyring restored.
    let conn = rusqlite::Connection::open(dir.path().join("rkms.sqlite3")).unwrap();
    let keys: String = conn
        .query_row("SELECT keys FROM rkms_keys WHERE id = 'wrapped'", [], |r| {
            r.get(0)
        })
        .unwrap();
    conn.execute(
        "UPDATE rkms_keys SET keys = ?1 WHERE id = 'wrapped'",
        [r#"{"local-1":"***"}"#],
    )
    .unwrap();
    let line = refused_start(command(dir.path()));
    assert!(
        line.contains("cannot be read") && line.contains("wrapped"),
        "{line}"
    );
    assert_eq!(std::fs::read(&keyring).unwrap(), edited, "left as it was");
    conn.execute(
        "UPDATE rkms_keys SET keys = ?1 WHERE id = 'wrapped'",
        [keys],
    )
    .unwrap();
    drop(conn);

    std::fs::write(&keyring, &original).unwrap();
    still_serves(dir.path(), "wrapped", &key).await;
}

/// Commands that read or check a store (verify, backfill, check-config
/// --connect, copy's source) never make one: a mistyped or lost path is an
/// error naming it, not an empty store that "verifies" and a new keyring.
/// And a verify of an empty store is no passed drill.
#[test]
fn checks_make_no_store_or_keyring_and_an_empty_store_verifies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["verify"][..],
        &["backfill"],
        &["backfill", "--dry-run"],
        &["check-config", "--connect"],
    ] {
        let (code, stderr) = exit_of(dir.path(), args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("store.sqlite.path") && stderr.contains("does not exist"),
            "{args:?}: {stderr}"
        );
        let made: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(made.is_empty(), "{args:?} made {made:?}");
    }
    let config = dir.path().join("from.toml");
    std::fs::write(
        &config,
        format!(
            "[store.sqlite]\npath = {:?}\n",
            dir.path().join("typo/rkms.sqlite3")
        ),
    )
    .unwrap();
    let target = dir.path().join("to.toml");
    std::fs::write(
        &target,
        format!(
            "[store.sqlite]\npath = {:?}\n",
            dir.path().join("to.sqlite3")
        ),
    )
    .unwrap();
    let mut cmd = command(dir.path());
    cmd.arg("copy")
        .arg("--from")
        .arg(&config)
        .arg("--to")
        .arg(&target);
    let (code, stderr) = crate::process::run_to_exit(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!dir.path().join("typo").exists(), "{stderr}");
    assert!(!dir.path().join("to.sqlite3").exists(), "{stderr}");

    // The server makes the store, and says so (a mistyped path shows up
    // here); a store that exists and is empty: verify says so and fails.
    let server = start(command(dir.path()));
    let (status, logs) = stop(server);
    assert!(status.success());
    assert!(
        logs.iter()
            .any(|l| l.contains("made a new, empty SQLite store")),
        "{logs:#?}"
    );
    let out = command(dir.path()).arg("verify").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("NOTHING verified"), "{stdout}");
}

/// A store and a keyring that do not belong together (a path or a link
/// pointing at another deployment's), or an SQLite file of another
/// application: no start. Each used to serve, giving stored ids new keys
/// or errors, and mixing records of two keyrings in one store.
#[tokio::test]
async fn a_store_and_keyring_of_different_deployments_stop_startup() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for dir in [&one, &two] {
        first_key(dir.path(), "k1").await;
    }
    let other_store = two.path().join("rkms.sqlite3");
    let before = std::fs::read(&other_store).unwrap();
    let mut cmd = command(one.path());
    cmd.env("RKMS__STORE__SQLITE__PATH", &other_store);
    let line = refused_start(cmd);
    assert!(
        line.contains("do not belong together") && line.contains("\"k1\""),
        "{line}"
    );
    assert_eq!(std::fs::read(&other_store).unwrap(), before, "untouched");
    // `check-config --connect`, the check before a deploy, says the same
    // (it used to pass this pair).
    let mut cmd = command(one.path());
    cmd.env("RKMS__STORE__SQLITE__PATH", &other_store)
        .args(["check-config", "--connect"]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("do not belong together"), "{stderr}");

    // Another application's database at the store's path.
    let foreign = one.path().join("app.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE orders (id INTEGER)")
        .unwrap();
    let mut cmd = command(one.path());
    cmd.env("RKMS__STORE__SQLITE__PATH", &foreign).env(
        "RKMS__KMS__LOCAL__KEYRING",
        one.path().join("new-keyring.json"),
    );
    let line = refused_start(cmd);
    assert!(line.contains("another application"), "{line}");
    assert!(!one.path().join("new-keyring.json").exists());
}

/// The keyring-and-store check never turns a store outage into a refused
/// start: with the local KMS over a DynamoDB endpoint that refuses
/// connections, rkms starts and readiness says the store is down.
#[tokio::test]
async fn a_store_outage_at_start_does_not_stop_a_local_kms_start() {
    let dir = tempfile::tempdir().unwrap();
    rkms::kms::local::LocalKms::open(
        &dir.path().join("keyring.json"),
        &["local-1", "local-2", "local-3"].map(rkms::domain::Region::new),
    )
    .unwrap();
    let mut cmd = command(dir.path());
    cmd.env("RKMS__STORE__BACKEND", "dynamodb")
        .env("RKMS__STORE__DYNAMODB__ENDPOINT", "http://127.0.0.1:1")
        .env("RKMS__STORE__DYNAMODB__TABLE", "rkms-keys")
        .env("RKMS__STORE__DYNAMODB__REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let server = start(cmd);
    let client = reqwest::Client::new();
    assert_eq!(readiness(&client, &server.base).await.0, 503);
    let (status, logs) = stop(server);
    assert!(status.success(), "exit {status:?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("cannot check that kms.local.keyring belongs")),
        "{logs:#?}"
    );
}

/// One undecryptable record ahead of good ones (tampered, say) is no sign
/// of another deployment's store: the start goes on, and that record
/// answers its own error.
#[tokio::test]
async fn one_bad_record_among_good_ones_does_not_stop_a_start() {
    use rkms::store::Store;
    let dir = tempfile::tempdir().unwrap();
    let key = first_key(dir.path(), "good").await;
    // Scans go by rowid: "good" is deleted and inserted again after a
    // "bad" record, so "bad" is the first record a start looks at.
    let path = dir.path().join("rkms.sqlite3");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let good: (String, String, Option<i64>, String) = conn
        .query_row(
            "SELECT id, keys, v, key_ids FROM rkms_keys WHERE id = 'good'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    conn.execute("DELETE FROM rkms_keys WHERE id = 'good'", [])
        .unwrap();
    drop(conn);
    let store =
        rkms::store::sqlite::SqliteStore::open(&path, std::time::Duration::from_secs(2)).unwrap();
    let bad = rkms::domain::KeyRecord {
        id: rkms::domain::KeyId::parse("bad").unwrap(),
        keys: [(rkms::domain::Region::new("local-1"), vec![7u8; 60])].into(),
        version: Some(2),
        key_ids: Default::default(),
        created_at: None,
    };
    store.put_if_absent(&bad).await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO rkms_keys (id, keys, v, key_ids) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![good.0, good.1, good.2, good.3],
    )
    .unwrap();
    drop(conn);

    let server = start(command(dir.path()));
    let client = reqwest::Client::new();
    assert_eq!(
        stored(&client, &server.base, "good").await.as_deref(),
        Some(key.as_str())
    );
    let res = client
        .get(format!("{}/key?id=bad&create=false", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 500);
    assert!(stop(server).0.success());
}

/// A few stray records in regions rkms does not know (written by hand, or
/// by something else), first in the store's order, do not stop a start:
/// the sample (40 rows of SQLite) reaches past them. Once every record
/// sampled is a stray, the refusal names some of them.
#[tokio::test]
async fn a_few_stray_records_first_in_the_store_do_not_stop_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(command(dir.path()));
    let client = reqwest::Client::new();
    let served = create(&client, &server.base, "good", 40).await;
    assert!(stop(server).0.success());
    let conn = rusqlite::Connection::open(dir.path().join("rkms.sqlite3")).unwrap();
    // The good records move after twelve strays, which take the first rows.
    conn.execute("UPDATE rkms_keys SET rowid = rowid + 1000", [])
        .unwrap();
    for i in 0..12 {
        conn.execute(
            "INSERT INTO rkms_keys (rowid, id, v, keys, key_ids, created_at) VALUES (?1, ?2, 2, ?3, '{}', NULL)",
            rusqlite::params![i + 1, format!("stray/{i}"), r#"{"x-9":"AAAA"}"#],
        )
        .unwrap();
    }
    drop(conn);
    let server = start(command(dir.path()));
    let (id, key) = &served[7];
    assert_eq!(stored(&client, &server.base, id).await.as_ref(), Some(key));
    assert!(stop(server).0.success());

    let conn = rusqlite::Connection::open(dir.path().join("rkms.sqlite3")).unwrap();
    conn.execute("DELETE FROM rkms_keys WHERE id LIKE 'good-%'", [])
        .unwrap();
    drop(conn);
    let (code, stderr) = crate::process::run_to_exit(command(dir.path()));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("12 records sampled"), "{stderr}");
    assert!(stderr.contains("e.g. \"stray/"), "{stderr}");
}

/// `kms.regions` replaced rather than extended (the stored records hold
/// none of the listed regions): no start, with one line naming the key,
/// and the keyring gains no master key for the new regions. It used to
/// start ready, answer 500 for every stored id and add the keys for good.
#[tokio::test]
async fn regions_that_no_stored_record_is_in_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(command(dir.path()));
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}/key?id=kept%2F1", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(stop(server).0.success());
    let keyring = std::fs::read(dir.path().join("keyring.json")).unwrap();

    let mut cmd = command(dir.path());
    cmd.env("RKMS__KMS__REGIONS", r#"["x-1","x-2"]"#);
    let (code, stderr) = crate::process::run_to_exit(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("kms.regions [\"x-1\", \"x-2\"] holds none of the regions the stored records are wrapped in"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("keyring.json")).unwrap(),
        keyring,
        "the keyring changed"
    );
    // Extended rather than replaced, it starts.
    let mut cmd = command(dir.path());
    cmd.env("RKMS__KMS__REGIONS", r#"["local-1","x-2"]"#);
    let server = start(cmd);
    let res = client
        .get(format!("{}/key?id=kept%2F1&create=false", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(stop(server).0.success());
}

/// `check-config`, with or without `--connect`, reads the TLS files as
/// `serve` does: files that `serve` cannot load fail the check (it passed
/// them and `serve` then stopped), and an empty path is a config error
/// naming its key.
#[test]
fn check_config_connect_reads_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(stop(start(command(dir.path()))).0.success());
    let missing = dir.path().join("nonexistent.pem");
    let mut cmd = command(dir.path());
    cmd.env("RKMS__SERVER__TLS__CERT", &missing)
        .env("RKMS__SERVER__TLS__KEY", &missing)
        .args(["check-config", "--connect"]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("tls: failed:"), "{stdout}");

    // Without --connect too: the files are local, and a file `serve`
    // cannot load is a config mistake, one line naming its key.
    let mut cmd = command(dir.path());
    cmd.env("RKMS__SERVER__TLS__CERT", &missing)
        .env("RKMS__SERVER__TLS__KEY", &missing)
        .arg("check-config");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("server.tls.cert") && stderr.contains("nonexistent.pem"),
        "{stderr}"
    );

    let mut cmd = command(dir.path());
    cmd.env("RKMS__SERVER__TLS__CERT", "")
        .env("RKMS__SERVER__TLS__KEY", &missing)
        .arg("check-config");
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.tls.cert: is empty"), "{stderr}");
}

/// `verify` changes nothing, not even the file's journal mode (it used to
/// open the store read-write and switch it to WAL), and checks a copy on
/// a read-only mount, where a WAL-mode file cannot make its `-shm` (it
/// used to fail with "unable to open database file").
#[tokio::test]
async fn verify_reads_a_store_and_leaves_it_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    first_key(dir.path(), "ro/1").await;
    let db = dir.path().join("rkms.sqlite3");
    let journal = |mode: &str| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap()
    };
    assert_eq!(journal("DELETE"), "delete");
    let before = std::fs::read(&db).unwrap();
    let out = command(dir.path()).arg("verify").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "verify changed the file"
    );
    assert_eq!(journal("DELETE"), "delete");

    // In WAL mode, as rkms leaves it, bind-mounted read-only elsewhere.
    assert_eq!(journal("WAL"), "wal");
    let mounted = tempfile::tempdir().unwrap();
    let bind = |args: &[&str]| Command::new("mount").args(args).output();
    let ok = bind(&[
        "--bind",
        &dir.path().to_string_lossy(),
        &mounted.path().to_string_lossy(),
    ])
    .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipped: cannot bind-mount here");
        return;
    }
    let remounted = bind(&["-o", "remount,ro,bind", &mounted.path().to_string_lossy()])
        .is_ok_and(|o| o.status.success());
    let mut cmd = command(mounted.path());
    cmd.env(
        "RKMS__STORE__SQLITE__PATH",
        mounted.path().join("rkms.sqlite3"),
    )
    .env(
        "RKMS__KMS__LOCAL__KEYRING",
        mounted.path().join("keyring.json"),
    )
    .arg("verify");
    let out = cmd.output().unwrap();
    let _ = Command::new("umount").arg(mounted.path()).output();
    assert!(remounted, "could bind-mount but not remount read-only");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every record is recoverable"), "{stdout}");

    // A copy taken with writes still in the -wal (a server killed, or
    // running) and no -shm: SQLite reads such a file on a read-only mount
    // only as immutable, which leaves the log out, so verify would pass
    // over those records. It refuses instead, naming the log.
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    writer
        .execute(
            "INSERT INTO rkms_keys SELECT 'ro/2', keys, v, key_ids, created_at FROM rkms_keys",
            [],
        )
        .unwrap();
    let snapshot = tempfile::tempdir().unwrap();
    for name in ["rkms.sqlite3", "rkms.sqlite3-wal", "keyring.json"] {
        std::fs::copy(dir.path().join(name), snapshot.path().join(name)).unwrap();
    }
    drop(writer);
    assert!(
        std::fs::metadata(snapshot.path().join("rkms.sqlite3-wal"))
            .unwrap()
            .len()
            > 0
    );
    assert!(bind(&[
        "--bind",
        &snapshot.path().to_string_lossy(),
        &mounted.path().to_string_lossy(),
    ])
    .is_ok_and(|o| o.status.success()));
    let remounted = bind(&["-o", "remount,ro,bind", &mounted.path().to_string_lossy()])
        .is_ok_and(|o| o.status.success());
    let out = cmd.output().unwrap();
    let _ = Command::new("umount").arg(mounted.path()).output();
    assert!(remounted);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("rkms.sqlite3-wal may hold writes"),
        "{stderr}"
    );
}

/// The store file's mode changed while rkms runs, so that its user may no
/// longer write it: creates are 503 and readiness fails, as a restart
/// would find it; mode restored, creates work again. SQLite's open handle
/// went on writing, and only readiness said so. Run as `nobody` when the
/// tests run as root (root may write whatever the mode); skipped otherwise.
#[tokio::test]
async fn a_store_file_made_read_only_while_running_refuses_creates() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run rkms as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let mut cmd = command(dir.path());
    cmd.uid(65534).gid(65534);
    let server = start(cmd);
    let client = reqwest::Client::new();
    let served = create(&client, &server.base, "before", 1).await;
    let (id, key) = &served[0];
    let db = dir.path().join("rkms.sqlite3");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o400)).unwrap();

    let res = client
        .get(format!("{}/key?id=while-read-only", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let (status, body) = readiness(&client, &server.base).await;
    assert_eq!(
        (status, &body["checks"]["store"]),
        (503, &Value::from("failed")),
        "{body}"
    );
    // Stored keys are still served.
    assert_eq!(
        stored(&client, &server.base, id).await.as_deref(),
        Some(key.as_str())
    );

    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let res = client
        .get(format!("{}/key?id=while-read-only", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(stop(server).0.success());
}

/// A start refused for a TLS file, or for a port already taken, leaves no
/// new store or keyring behind: they were made first, and a later start
/// with the mistake fixed (or a start elsewhere) found files it took for
/// someone's store.
#[test]
fn a_start_refused_before_serving_makes_no_store_or_keyring() {
    let dir = tempfile::tempdir().unwrap();
    let made = |dir: &Path| {
        ["keyring.json", "rkms.sqlite3"]
            .iter()
            .filter(|f| dir.join(f).exists())
            .count()
    };
    let missing = dir.path().join("nonexistent.pem");
    let mut cmd = command(dir.path());
    cmd.env("RKMS__SERVER__TLS__CERT", &missing)
        .env("RKMS__SERVER__TLS__KEY", &missing);
    let (code, stderr) = crate::process::run_to_exit(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("server.tls.cert"), "{stderr}");
    assert_eq!(made(dir.path()), 0, "{stderr}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = command(dir.path());
    cmd.env(
        "RKMS__SERVER__LISTEN",
        taken.local_addr().unwrap().to_string(),
    );
    let (code, stderr) = crate::process::run_to_exit(cmd);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on server.listen"),
        "{stderr}"
    );
    assert_eq!(made(dir.path()), 0, "{stderr}");
}
