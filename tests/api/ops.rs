//! `rkms backfill`, `verify`, `copy` and `convert-config` against the
//! embedded default (SQLite and the local KMS), run as the binary.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::{start, stop};

const FOUR_REGIONS: &str = r#"["local-1","local-2","local-3","local-4"]"#;

fn rkms(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkms"));
    cmd.current_dir(dir)
        .env_remove("RKMS_CONFIG")
        .env_remove("RUST_LOG")
        .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
        .env("RKMS__LOG__FORMAT", "json")
        .env("RKMS__KMS__LOCAL__KEYRING", dir.join("keyring.json"))
        .env("RKMS__STORE__SQLITE__PATH", dir.join("rkms.sqlite3"))
        .stdin(Stdio::null());
    cmd
}

/// Run a maintenance command; (exit code, stdout).
fn run(mut cmd: Command, args: &[&str]) -> (i32, String) {
    let out = cmd.args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    (code, stdout)
}

fn with_four_regions(dir: &Path) -> Command {
    let mut cmd = rkms(dir);
    cmd.env("RKMS__KMS__REGIONS", FOUR_REGIONS);
    cmd
}

/// Serve with three regions and create `n` keys.
async fn create_keys(dir: &Path, n: usize) -> Vec<String> {
    let server = start(rkms(dir));
    let client = reqwest::Client::new();
    let mut keys = Vec::new();
    for i in 0..n {
        let body: Value = client
            .get(format!("{}/key?id=ops%2F{i:03}", server.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push(body["key"].as_str().unwrap().to_string());
    }
    assert!(stop(server).0.success());
    keys
}

/// A config in `dir` whose store is the SQLite file `db`.
fn sqlite_config(dir: &Path, name: &str, db: &Path) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("[store.sqlite]\npath = {db:?}\n")).unwrap();
    path
}

/// Every record's `keys` JSON, by id, straight from the file.
fn stored(dir: &Path) -> std::collections::BTreeMap<String, Value> {
    let conn = rusqlite::Connection::open(dir.join("rkms.sqlite3")).unwrap();
    let mut stmt = conn.prepare("SELECT id, keys FROM rkms_keys").unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(|row| {
            let (id, keys) = row.unwrap();
            (id, serde_json::from_str(&keys).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_new_region_is_backfilled_verified_and_a_second_backfill_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let keys = create_keys(dir.path(), 30).await;

    // Before: verify with the fourth region names every record missing it.
    let (code, out) = run(with_four_regions(dir.path()), &["verify", "--json"]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["recoverable"], false);
    assert_eq!(report["regions"]["local-4"]["missing"], 30);
    assert_eq!(report["regions"]["local-1"]["ok"], 30);

    let (code, out) = run(with_four_regions(dir.path()), &["backfill", "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("30 would gain 30"), "{out}");
    assert!(out.contains("can still fail in a real run"), "{out}");
    assert!(stored(dir.path())
        .values()
        .all(|k| k.get("local-4").is_none()));

    let (code, out) = run(with_four_regions(dir.path()), &["backfill"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("30 records scanned: 0 complete, 30 gained 30"),
        "{out}"
    );
    let after = stored(dir.path());

    let (code, out) = run(with_four_regions(dir.path()), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("every record is recoverable in every region"),
        "{out}"
    );
    assert!(out.contains("local-4: 30 ok, 0 missing"), "{out}");

    let (code, out) = run(with_four_regions(dir.path()), &["backfill"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("30 complete, 0 gained 0"), "{out}");
    assert_eq!(
        stored(dir.path()),
        after,
        "a second backfill writes nothing"
    );

    // The server on four regions serves the same keys, from the new region too.
    let mut cmd = with_four_regions(dir.path());
    cmd.env("RKMS__CACHE__TTL_SECONDS", "0");
    let server = start(cmd);
    let body: Value = reqwest::get(format!("{}/key?id=ops%2F007&create=false", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["key"].as_str().unwrap(), keys[7]);
    assert!(stop(server).0.success());
}

#[tokio::test]
async fn an_interrupted_backfill_resumes_without_rewriting_or_skipping() {
    let dir = tempfile::tempdir().unwrap();
    create_keys(dir.path(), 25).await;
    let checkpoint = dir.path().join("backfill.json");
    let cp = checkpoint.to_str().unwrap();
    let (code, out) = run(
        with_four_regions(dir.path()),
        &[
            "backfill",
            "--segments",
            "1",
            "--checkpoint",
            cp,
            "--max-records",
            "12",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("12 records scanned") && out.contains("stopped at --max-records, run again"),
        "{out}"
    );
    let halfway = stored(dir.path());
    let done: Vec<&String> = halfway
        .iter()
        .filter(|(_, k)| k.get("local-4").is_some())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(done.len(), 12, "{out}");

    // Stopped at a page's end, its place saved: the next run reads only
    // the rest (it used to save nothing and read all 25 again).
    assert!(checkpoint.exists(), "{out}");
    let (code, out) = run(
        with_four_regions(dir.path()),
        &["backfill", "--segments", "1", "--checkpoint", cp],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("13 records scanned") && out.contains("gained 13"),
        "the rest, and only the rest: {out}"
    );
    let after = stored(dir.path());
    for id in done {
        assert_eq!(after[id], halfway[id], "{id} was written twice");
    }
    assert!(
        after.values().all(|k| k.get("local-4").is_some()),
        "none skipped"
    );
    let (code, out) = run(with_four_regions(dir.path()), &["verify"]);
    assert_eq!(code, 0, "{out}");

    // A checkpoint of another command is refused, not misread.
    let (code, _) = run(
        rkms(dir.path()),
        &[
            "copy",
            "--from",
            "x.toml",
            "--to",
            "y.toml",
            "--checkpoint",
            cp,
        ],
    );
    assert_ne!(code, 0);
}

#[tokio::test]
async fn verify_names_a_broken_ciphertext_in_its_region() {
    let dir = tempfile::tempdir().unwrap();
    create_keys(dir.path(), 5).await;
    let conn = rusqlite::Connection::open(dir.path().join("rkms.sqlite3")).unwrap();
    let keys: String = conn
        .query_row("SELECT keys FROM rkms_keys WHERE id = 'ops/003'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut map: serde_json::Map<String, Value> = serde_json::from_str(&keys).unwrap();
    let ciphertext = map["local-2"].as_str().unwrap().to_string();
    // Another record's ciphertext: valid, but bound to another id.
    let other: String = conn
        .query_row("SELECT keys FROM rkms_keys WHERE id = 'ops/001'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let other: Value = serde_json::from_str(&other).unwrap();
    assert_ne!(other["local-2"].as_str().unwrap(), ciphertext);
    map.insert("local-2".into(), other["local-2"].clone());
    conn.execute(
        "UPDATE rkms_keys SET keys = ?1 WHERE id = 'ops/003'",
        [serde_json::to_string(&map).unwrap()],
    )
    .unwrap();
    drop(conn);

    let (code, out) = run(rkms(dir.path()), &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("local-2: 4 ok, 0 missing, 1 undecryptable"),
        "{out}"
    );
    assert!(out.contains("undecryptable: \"ops/003\""), "{out}");
    let (code, out) = run(rkms(dir.path()), &["verify", "--json", "--sample", "5"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["regions"]["local-2"]["undecryptable_ids"],
        serde_json::json!(["ops/003"])
    );
    assert_eq!(report["regions"]["local-1"]["ok"], 5);
}

#[test]
fn convert_config_prints_a_config_rkms_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("rkms-go.toml");
    std::fs::write(
        &go,
        "[server]\nport = 8000\n[kms]\nregions = [\"us-east-1\", \"us-west-2\"]\nkey_ids = [\"alias/a\", \"alias/b\"]\ndata_key_size_in_bytes = 32\n[dynamodb]\nregion = \"us-east-1\"\ntable_name = \"keys\"\n",
    )
    .unwrap();
    let out = rkms(dir.path())
        .args(["convert-config"])
        .arg(&go)
        .output()
        .unwrap();
    assert!(out.status.success());
    let converted = dir.path().join("rkms.toml");
    std::fs::write(&converted, &out.stdout).unwrap();
    let out = rkms(dir.path())
        .env_remove("RKMS__SERVER__LISTEN")
        .args(["check-config", "--config"])
        .arg(&converted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("table = \"keys\""), "{text}");
    assert!(text.contains("listen = \"0.0.0.0:8000\""), "{text}");

    // Not a config file: refused in one line, not read without end.
    let newline = dir.path().join("newline.toml");
    std::fs::write(
        &newline,
        "[kms]\nregions = [\"us-east-1\\n\"]\nkey_ids = [\"alias/a\"]\n[dynamodb]\ntable_name = \"keys\"\n",
    )
    .unwrap();
    for (given, says) in [
        (Path::new("/dev/zero"), "more than a config"),
        (dir.path(), "a directory"),
        (&newline, "kms.regions holds"),
    ] {
        let out = rkms(dir.path())
            .arg("convert-config")
            .arg(given)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
    // Given through a pipe, as `/dev/stdin`.
    let mut child = rkms(dir.path())
        .args(["convert-config", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&std::fs::read(&go).unwrap()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `copy` reads each config as `serve` would, clients and their tokens
/// included: a client whose token comes from the environment (it used to
/// be refused as unset, or as not UTF-8, whatever the environment held).
#[tokio::test]
async fn copy_takes_configs_whose_clients_read_tokens_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    create_keys(dir.path(), 3).await;
    let config = |name: &str, db: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"app\"\ntoken_env = \"RKMS_COPY_TEST_TOKEN\"\nids = [\"*\"]\n[store.sqlite]\npath = {:?}\n",
                dir.path().join(db)
            ),
        )
        .unwrap();
        path
    };
    let (from, to) = (
        config("from.toml", "rkms.sqlite3"),
        config("to.toml", "copy.sqlite3"),
    );
    let mut cmd = rkms(dir.path());
    cmd.env("RKMS_COPY_TEST_TOKEN", "copy-test-token-0123456789");
    let (code, out) = run(
        cmd,
        &[
            "copy",
            "--from",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let copied: i64 = rusqlite::Connection::open(dir.path().join("copy.sqlite3"))
        .unwrap()
        .query_row("SELECT count(*) FROM rkms_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(copied, 3, "{out}");
}

/// A copy of a store onto itself is refused, however the two configs spell
/// the file: by another path, or through a hard link.
#[tokio::test]
async fn a_copy_onto_its_own_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    create_keys(dir.path(), 1).await;
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::hard_link(
        dir.path().join("rkms.sqlite3"),
        dir.path().join("linked.sqlite3"),
    )
    .unwrap();
    let config = |name: &str, db: &Path| sqlite_config(dir.path(), name, db);
    let from = config("from.toml", &dir.path().join("rkms.sqlite3"));
    for (name, db) in [
        ("same.toml", dir.path().join("sub/../rkms.sqlite3")),
        ("linked.toml", dir.path().join("linked.sqlite3")),
    ] {
        let to = config(name, &db);
        let out = rkms(dir.path())
            .args(["copy", "--from"])
            .arg(&from)
            .arg("--to")
            .arg(&to)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("name the same store"), "{name}: {stderr}");
    }
    // A config file that is missing is named by its flag.
    let out = rkms(dir.path())
        .args(["copy", "--from"])
        .arg(&from)
        .args(["--to", "missing.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("config error: --to: cannot read missing.toml"),
        "{stderr}"
    );
}

/// A `--checkpoint` that cannot be written is refused before anything
/// opens: `backfill` with a new region had already added it to the
/// keyring, and `copy` had already made its target store, when the first
/// save failed (found by a review).
#[tokio::test]
async fn a_checkpoint_that_cannot_be_written_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    create_keys(dir.path(), 2).await;
    let keyring = std::fs::read(dir.path().join("keyring.json")).unwrap();
    for bad in [
        "/proc/no-such/dir/cp.json",
        "/tmp",
        "cp.json/",
        "/proc/self/cp.json",
    ] {
        let out = with_four_regions(dir.path())
            .args(["backfill", "--checkpoint", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--checkpoint"), "{bad}: {stderr}");
        assert_eq!(
            std::fs::read(dir.path().join("keyring.json")).unwrap(),
            keyring,
            "the keyring gained no region"
        );

        let target = dir.path().join("target.sqlite3");
        let to = sqlite_config(dir.path(), "to.toml", &target);
        let from = sqlite_config(dir.path(), "from.toml", &dir.path().join("rkms.sqlite3"));
        let out = rkms(dir.path())
            .args(["copy", "--checkpoint", bad, "--from"])
            .arg(&from)
            .arg("--to")
            .arg(&to)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(!target.exists(), "no target made: {stderr}");
    }
    // A dry run saves nothing: a checkpoint it could not write is fine.
    let out = with_four_regions(dir.path())
        .args([
            "backfill",
            "--dry-run",
            "--checkpoint",
            "/proc/self/cp.json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
