//! Preflight against moto: a missing table and a wrong KMS alias are found
//! at start. Strict refuses to start with one line naming the check; warn
//! starts with /readyz failing by name until the dependency is fixed;
//! `check-config --connect` exits non-zero.

use std::process::{Command, Stdio};
use std::time::Duration;

use rkms::config::Preflight;
use serde_json::Value;

use crate::helpers::serve;
use crate::moto::{create_table, kms_client, Cloud, REGIONS};

const BROKEN_REGION: &str = REGIONS[1];

/// A broken deployment: the check that fails, the overrides that break
/// it, and what the message must name.
type Breakage = (&'static str, Vec<(String, String)>, String);

/// The two ways to break a deployment, as environment overrides.
fn breakages() -> Vec<Breakage> {
    let key_ids = REGIONS
        .iter()
        .map(|r| {
            let alias = if *r == BROKEN_REGION {
                "alias/rkms-wrong".to_string()
            } else {
                format!("alias/rkms-{r}")
            };
            format!("\"{r}\":\"{alias}\"")
        })
        .collect::<Vec<_>>()
        .join(",");
    vec![
        (
            "store",
            vec![(
                "RKMS__STORE__DYNAMODB__TABLE".to_string(),
                "rkms_missing".to_string(),
            )],
            "rkms_missing".to_string(),
        ),
        (
            "kms.us-west-2",
            vec![(
                "RKMS__KMS__AWS__KEY_IDS".to_string(),
                format!("{{{key_ids}}}"),
            )],
            "alias/rkms-wrong".to_string(),
        ),
    ]
}

fn rkms(cloud: &Cloud, dir: &std::path::Path, extra: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkms"));
    cmd.current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("RKMS_CONFIG")
        .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
        .env("RKMS__LOG__FORMAT", "json")
        .envs(cloud.env())
        .envs(extra.iter().cloned())
        .stdin(Stdio::null());
    cmd
}

#[tokio::test]
async fn a_strict_start_refuses_a_missing_table_or_a_wrong_alias_in_one_line() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    for (check, extra, named) in breakages() {
        let out = rkms(&cloud, dir.path(), &extra)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{check}: started anyway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("rkms: preflight failed"),
            "{check}: {stderr}"
        );
        assert!(
            last.contains(&format!("{check}: ")) && last.contains(&named),
            "{check}: {last}"
        );
        // What to do, told from the error's kind (KMS's NotFoundException,
        // the missing table), not from its text.
        let advice = match check {
            "store" => "does not exist in this region: create it",
            _ => "the key does not exist in us-west-2: fix kms.aws.key_ids.us-west-2",
        };
        assert!(last.contains(advice), "{check}: {last}");
        let failing = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["message"] == "preflight" && v["level"] == "ERROR")
            .count();
        assert_eq!(failing, 1, "one failed check logged: {stderr}");
    }
    // The healthy configuration passes the same checks.
    let out = rkms(&cloud, dir.path(), &[])
        .args(["check-config", "--connect"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok   ")).count(),
        4,
        "{stdout}"
    );
}

/// Run `cmd`, which must stop by itself: a server that starts anyway
/// would serve until stopped, so it is killed after 30 s and the test fails.
fn refused(mut cmd: Command) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("started anyway: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `cmd` with none of the test credentials the cloud's environment gives.
fn without_credentials(mut cmd: Command) -> Command {
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

/// No credentials anywhere in the SDK's chain: a setting to fix, not an
/// outage. A strict start stops and says so, where it took every check
/// for an unreachable dependency, started, and answered every key 503.
#[tokio::test]
async fn a_strict_start_without_credentials_stops_and_says_so() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let out = refused(without_credentials(rkms(&cloud, dir.path(), &[])));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("rkms: preflight failed"), "{stderr}");
    assert!(last.contains("no AWS credentials found"), "{last}");
}

/// A start after an alias was moved to another key stops, naming the
/// setting and both keys: it would unwrap none of the region's stored
/// ciphertexts and wrap new keys under a key the rest cannot be read
/// with. It started, and the region failed every stored id.
#[tokio::test]
async fn a_start_refuses_a_key_the_stored_records_were_not_wrapped_under() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let server = serve(cloud.settings()).await;
        server.key("kept").await;
    }
    let west = "us-west-2";
    let other = cloud.move_alias(west).await;
    for args in [
        &["serve"][..],
        &["check-config", "--connect"][..],
        &["verify"][..],
    ] {
        let mut cmd = rkms(&cloud, dir.path(), &[]);
        cmd.args(args);
        let out = refused(cmd);
        assert!(!out.status.success(), "{args:?}: started anyway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("kms.aws.key_ids.{west} names {other}"))
                && last.contains(&cloud.key_arns[west]),
            "{args:?}: {stderr}"
        );
    }
    // Pointed back, it starts.
    cloud.point_alias(west, &cloud.key_arns[west]).await;
    let out = rkms(&cloud, dir.path(), &[])
        .args(["check-config", "--connect"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Key ARNs edited in the stored records (the ciphertexts untouched) do
/// not stop a start: the configured key unwraps the ciphertexts, which
/// KMS is asked to show. Anyone who could edit the first records stopped
/// every start, and `verify` with them.
#[tokio::test]
async fn a_start_goes_on_when_only_the_stored_key_arns_were_edited() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    {
        let server = serve(cloud.settings()).await;
        server.key("kept").await;
    }
    let west = "us-west-2";
    let dynamo = crate::moto::dynamo_client(&cloud.dynamo.endpoint).await;
    dynamo
        .update_item()
        .table_name(crate::moto::TABLE)
        .key(
            "id",
            aws_sdk_dynamodb::types::AttributeValue::S("kept".into()),
        )
        .update_expression("SET key_ids.#r = :k")
        .expression_attribute_names("#r", west)
        .expression_attribute_values(
            ":k",
            aws_sdk_dynamodb::types::AttributeValue::S(
                "arn:aws:kms:us-west-2:123456789012:key/00000000-0000-0000-0000-000000000000"
                    .into(),
            ),
        )
        .send()
        .await
        .unwrap();
    for args in [&["check-config", "--connect"][..], &["verify"][..]] {
        let out = rkms(&cloud, dir.path(), &[]).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stderr.contains("the key_ids were edited"),
            "{args:?}: {stderr} / {stdout}"
        );
    }
}

/// verify without credentials, keys named by alias (so each region's key
/// is looked up first): every ciphertext is unavailable, never
/// undecryptable, which reads as a lost key. The lookup's failure hid the
/// missing credentials from the check, and verify said undecryptable.
#[tokio::test]
async fn verify_without_credentials_finds_nothing_undecryptable() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.sqlite3");
    let mut settings = cloud.settings();
    settings.store.backend = rkms::config::StoreBackend::Sqlite;
    settings.store.sqlite.path = db.clone();
    {
        let server = serve(settings).await;
        server.key("a").await;
        server.key("b").await;
    }
    let sqlite = [
        ("RKMS__STORE__BACKEND".to_string(), "sqlite".to_string()),
        (
            "RKMS__STORE__SQLITE__PATH".to_string(),
            db.to_string_lossy().into_owned(),
        ),
    ];
    let out = without_credentials(rkms(&cloud, dir.path(), &sqlite))
        .arg("verify")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    for region in REGIONS {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{region}:")))
            .unwrap_or_else(|| panic!("no line for {region}: {stdout}"));
        assert!(
            line.contains("0 undecryptable") && line.contains("2 unavailable"),
            "{line}"
        );
    }
}

/// No credentials, and an instance metadata service that does not answer
/// (off EC2 with it left enabled): an outage, as on EC2 it passes, so not
/// a reason to stop a start; the checks say why in terms of credentials.
#[tokio::test]
async fn an_unreachable_metadata_service_is_an_outage_named_as_such() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = without_credentials(rkms(&cloud, dir.path(), &[]))
        .env("AWS_EC2_METADATA_DISABLED", "false")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)
        .args(["check-config", "--connect"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 4, "the store and three regions: {stdout}");
    for line in failed {
        assert!(line.contains("unreachable"), "an outage: {line}");
        assert!(line.contains("no AWS credentials yet"), "{line}");
    }
}

#[tokio::test]
async fn check_config_connect_names_the_failing_dependency_and_exits_non_zero() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    for (check, extra, named) in breakages() {
        let out = rkms(&cloud, dir.path(), &extra)
            .args(["check-config", "--connect"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{check}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
        assert_eq!(failed.len(), 1, "{stdout}");
        assert!(
            failed[0].starts_with(&format!("FAIL {check}: ")) && failed[0].contains(&named),
            "{stdout}"
        );
    }
}

pub(crate) async fn readyz(base: &str) -> (u16, Value) {
    let res = reqwest::get(format!("{base}/readyz")).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

/// Wait (within the monitor's re-check period) for /readyz to say 200.
async fn until_ready(base: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readyz(base).await;
        if status == 200 {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn under_warn_a_wrong_alias_fails_readiness_by_name_until_fixed() {
    let cloud = Cloud::start(false).await;
    let mut settings = cloud.settings();
    settings.server.preflight = Preflight::Warn;
    settings
        .kms
        .aws
        .key_ids
        .insert(BROKEN_REGION.into(), "alias/rkms-wrong".into());
    let server = serve(settings).await;
    let (status, body) = readyz(&server.base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["kms.us-west-2"], "failed", "{body}");
    assert_eq!(body["checks"]["kms.us-east-1"], "ok", "{body}");
    assert_eq!(body["checks"]["store"], "ok", "{body}");
    // Keys are still served from the regions that work.
    server.key("warn/1").await;

    // The operator creates the alias: readiness follows without a restart.
    let client = kms_client(cloud.endpoint(BROKEN_REGION), BROKEN_REGION).await;
    let arn = &cloud.key_arns[BROKEN_REGION];
    client
        .create_alias()
        .alias_name("alias/rkms-wrong")
        .target_key_id(arn)
        .send()
        .await
        .unwrap();
    let body = until_ready(&server.base).await;
    assert_eq!(body["checks"]["kms.us-west-2"], "ok", "{body}");
}

#[tokio::test]
async fn under_warn_a_missing_table_is_503_on_key_never_500() {
    let cloud = Cloud::start(false).await;
    let mut settings = cloud.settings();
    settings.server.preflight = Preflight::Warn;
    settings.store.dynamodb.table = "rkms_later".into();
    let server = serve(settings).await;
    let (status, body) = readyz(&server.base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["store"], "failed", "{body}");
    let (status, body) = server.get("table/1", true).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error_type"], "ServiceUnavailable");

    create_table(&cloud.dynamo.endpoint, "rkms_later").await;
    until_ready(&server.base).await;
    server.key("table/1").await;
}

/// A table whose key is not rkms's (the settings name another table):
/// under `preflight = "warn"`, a request is 503 naming nothing internal,
/// as for a missing table, and readiness fails. It was a 500.
#[tokio::test]
async fn under_warn_a_table_with_another_key_is_503_on_key_never_500() {
    let cloud = Cloud::start(false).await;
    crate::moto::create_table_keyed(&cloud.dynamo.endpoint, "other_app", "key").await;
    let mut settings = cloud.settings();
    settings.server.preflight = Preflight::Warn;
    settings.store.dynamodb.table = "other_app".into();
    let server = serve(settings).await;
    let (status, body) = readyz(&server.base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["store"], "failed", "{body}");
    for create in [true, false] {
        let (status, body) = server.get("schema/1", create).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error_type"], "ServiceUnavailable", "{body}");
    }
    // Counted as the store being misconfigured, which the chart alerts on,
    // not as an outage.
    let metrics = crate::helpers::metrics_text(&server.base).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "rkms_store_requests_total{op=\"get\",outcome=\"failed\"} 2"),
        "{metrics}"
    );
}
