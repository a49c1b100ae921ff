//! Maintenance commands against moto: backfill a fourth region, verify the
//! whole table, and copy records between SQLite and DynamoDB.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::helpers::{ciphertexts, item, put_item, serve};
use crate::moto::{aws_env, kms_client, Cloud, REGIONS, TABLE};

const FOURTH: &str = "ap-southeast-2";

pub fn rkms(dir: &Path, cloud: &Cloud) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkms"));
    cmd.current_dir(dir)
        .env_remove("RKMS_CONFIG")
        .env_remove("RUST_LOG")
        .env("RKMS__LOG__FORMAT", "json")
        .envs(cloud.env())
        .stdin(Stdio::null());
    cmd
}

pub fn run(mut cmd: Command, args: &[&str]) -> (i32, String) {
    let out = cmd.args(args).output().unwrap();
    if !out.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The environment for four regions: the three of the cloud plus one more
/// on the same moto.
fn four_regions(cloud: &Cloud) -> Vec<(String, String)> {
    let all: Vec<&str> = REGIONS.iter().copied().chain([FOURTH]).collect();
    let endpoint = cloud.endpoint(REGIONS[0]).to_string();
    let json = |f: &dyn Fn(&str) -> String| {
        format!(
            "{{{}}}",
            all.iter()
                .map(|r| format!("\"{r}\":\"{}\"", f(r)))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    vec![
        (
            "RKMS__KMS__REGIONS".into(),
            serde_json::to_string(&all).unwrap(),
        ),
        (
            "RKMS__KMS__AWS__KEY_IDS".into(),
            json(&|r| format!("alias/rkms-{r}")),
        ),
        (
            "RKMS__KMS__AWS__ENDPOINTS".into(),
            json(&|_| endpoint.clone()),
        ),
    ]
}

#[tokio::test]
async fn a_fourth_region_is_backfilled_and_verified_against_moto() {
    let cloud = Cloud::start(false).await;
    let server = serve(cloud.settings()).await;
    for i in 0..20 {
        server.key(&format!("bf/{i:02}")).await;
    }
    drop(server);
    let kms = kms_client(cloud.endpoint(REGIONS[0]), FOURTH).await;
    let key = kms.create_key().send().await.unwrap().key_metadata.unwrap();
    kms.create_alias()
        .alias_name(format!("alias/rkms-{FOURTH}"))
        .target_key_id(key.key_id)
        .send()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let four = || {
        let mut cmd = rkms(dir.path(), &cloud);
        cmd.envs(four_regions(&cloud));
        cmd
    };
    let (code, out) = run(four(), &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{FOURTH}: 0 ok, 20 missing")),
        "{out}"
    );

    let (code, out) = run(four(), &["backfill", "--max-rps", "500"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("20 records scanned: 0 complete, 20 gained 20"),
        "{out}"
    );
    let stored = ciphertexts(&item(&cloud, "bf/07").await.unwrap());
    assert_eq!(stored.len(), 4);

    let (code, out) = run(four(), &["verify", "--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["recoverable"], true);
    assert_eq!(report["complete"], 20);
    assert_eq!(report["regions"][FOURTH]["ok"], 20);

    let (code, out) = run(four(), &["backfill"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("20 complete, 0 gained 0"), "{out}");
    assert_eq!(
        ciphertexts(&item(&cloud, "bf/07").await.unwrap()),
        stored,
        "nothing rewritten"
    );

    // A ciphertext swapped for another id's: verify names it, in its region.
    let other = item(&cloud, "bf/01").await.unwrap();
    let mut broken = item(&cloud, "bf/07").await.unwrap();
    let mut keys = broken["keys"].as_m().unwrap().clone();
    keys.insert(
        REGIONS[1].into(),
        other["keys"].as_m().unwrap()[REGIONS[1]].clone(),
    );
    broken.insert(
        "keys".into(),
        aws_sdk_dynamodb::types::AttributeValue::M(keys),
    );
    put_item(&cloud, broken).await;
    let (code, out) = run(four(), &["verify", "--json"]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        report["regions"][REGIONS[1]]["undecryptable_ids"],
        serde_json::json!(["bf/07"])
    );
    assert_eq!(report["regions"][REGIONS[0]]["ok"], 20);

    // An item the update cannot apply to (no key_ids map, as another tool
    // may write): backfill says so and fails, rather than count it done.
    let mut bare = item(&cloud, "bf/05").await.unwrap();
    let mut keys = bare["keys"].as_m().unwrap().clone();
    keys.remove(FOURTH);
    bare.insert(
        "keys".into(),
        aws_sdk_dynamodb::types::AttributeValue::M(keys),
    );
    bare.remove("key_ids");
    put_item(&cloud, bare).await;
    let (code, out) = run(four(), &["backfill"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("19 complete") && out.contains("failed: \"bf/05\""),
        "{out}"
    );
    assert_eq!(ciphertexts(&item(&cloud, "bf/05").await.unwrap()).len(), 3);
}

fn write_config(path: &Path, store: &str) {
    std::fs::write(path, store).unwrap();
}

/// Every record of a SQLite file, as stored.
fn sqlite_rows(path: &Path) -> Vec<(String, String, Option<i64>, String)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, keys, v, key_ids FROM rkms_keys ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn copy_from_sqlite_to_dynamodb_and_back_keeps_every_record() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Records made by the embedded default.
    {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkms"));
        cmd.current_dir(d)
            .env_remove("RKMS_CONFIG")
            .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
            .env("RKMS__LOG__FORMAT", "json")
            .env("RKMS__KMS__LOCAL__KEYRING", d.join("keyring.json"))
            .env("RKMS__STORE__SQLITE__PATH", d.join("a.sqlite3"));
        let server = crate::common::start(cmd);
        let client = reqwest::Client::new();
        for i in 0..15 {
            let res = client
                .get(format!("{}/key?id=cp%2F{i:02}", server.base))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
        assert!(crate::common::stop(server).0.success());
    }
    // The DynamoDB table already holds a different record for one id.
    let rkms_on_moto = serve(cloud.settings()).await;
    rkms_on_moto.key("cp/05").await;
    drop(rkms_on_moto);
    let before = item(&cloud, "cp/05").await.unwrap();

    let keyring = d.join("keyring.json");
    let sqlite = |name: &str| {
        format!(
            "[kms.local]\nkeyring = {:?}\n[store]\nbackend = \"sqlite\"\n[store.sqlite]\npath = {:?}\n",
            keyring,
            d.join(name)
        )
    };
    write_config(&d.join("a.toml"), &sqlite("a.sqlite3"));
    write_config(&d.join("b.toml"), &sqlite("b.sqlite3"));
    write_config(
        &d.join("dynamo.toml"),
        &format!(
            "[kms.local]\nkeyring = {:?}\n[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\nregion = \"us-east-1\"\ntable = \"{TABLE}\"\nendpoint = \"{}\"\n",
            keyring, cloud.dynamo.endpoint
        ),
    );
    let copy = |from: &str, to: &str, extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkms"));
        cmd.current_dir(d)
            .env_remove("RKMS_CONFIG")
            .envs(aws_env())
            .args(["copy", "--from", from, "--to", to])
            .args(extra);
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = copy("a.toml", "dynamo.toml", &["--dry-run"]);
    assert_eq!(code, 1, "cp/05 differs: {out}");
    assert!(out.contains("14 would be copied"), "{out}");
    assert!(
        item(&cloud, "cp/00").await.is_none(),
        "a dry run writes nothing"
    );

    let checkpoint = d.join("copy.json");
    let (code, out) = copy(
        "a.toml",
        "dynamo.toml",
        &["--checkpoint", checkpoint.to_str().unwrap()],
    );
    // An id whose record differs in the target fails the copy (exit 1):
    // the target now holds records of two histories for one set of ids.
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("15 records scanned: 14 copied, 0 already present and identical, 1 present with a different record"),
        "{out}"
    );
    assert!(out.contains("different: \"cp/05\""), "{out}");
    assert_eq!(item(&cloud, "cp/05").await.unwrap(), before, "untouched");

    // That checkpoint is for a copy into the table: resumed against another
    // target, its cursors would skip records there. Refused.
    let (code, out) = copy(
        "a.toml",
        "b.toml",
        &["--checkpoint", checkpoint.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{out}");
    assert!(!out.contains("records scanned"), "{out}");

    // Back into a new SQLite file: identical records.
    let (code, out) = copy("dynamo.toml", "b.toml", &[]);
    assert_eq!(code, 0, "{out}");
    let a = sqlite_rows(&d.join("a.sqlite3"));
    let b = sqlite_rows(&d.join("b.sqlite3"));
    assert_eq!(a.len(), 15);
    assert_eq!(b.len(), 15);
    for (x, y) in a.iter().zip(&b) {
        if x.0 == "cp/05" {
            assert_ne!(x.1, y.1, "the table's own record came back");
        } else {
            assert_eq!(x, y, "{} changed on the round trip", x.0);
        }
    }
    // Again: nothing to do, and cp/05 still differs.
    let (code, out) = copy("a.toml", "dynamo.toml", &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("0 copied, 14 already present and identical"),
        "{out}"
    );
}

/// A tool pointed at a table that is not there says which table, and
/// exits non-zero (it said only "store unavailable during scan").
#[tokio::test]
async fn a_tool_on_a_missing_table_names_it() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    for tool in ["verify", "backfill"] {
        let out = rkms(dir.path(), &cloud)
            .env("RKMS__STORE__DYNAMODB__TABLE", "rkms_nosuch")
            .arg(tool)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{tool}: {stderr}");
        assert!(
            stderr.contains("table \"rkms_nosuch\" does not exist"),
            "{tool}: {stderr}"
        );
    }
}
