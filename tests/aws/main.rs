//! The AWS path against moto: KMS in three regions and DynamoDB, driven
//! through the real server over HTTP. Needs `make moto-venv` (make test).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod moto;
mod ops;
mod preflight;
mod table;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kms::primitives::Blob;
use base64::Engine;
use serde_json::Value;

use crate::helpers::{ciphertexts, item, no_cache, put_item, serve, urlencode, B64};
use crate::moto::{dynamo_client, kms_client, Cloud, REGIONS, TABLE};

#[tokio::test]
async fn get_or_create_wraps_in_three_regions_each_decryptable_with_the_id_context() {
    let cloud = Cloud::start(false).await;
    let server = serve(cloud.settings()).await;
    let key = server.key("orders/42").await;
    assert_eq!(server.key("orders/42").await, key);
    assert_eq!(B64.decode(&key).unwrap().len(), 32);

    let item = item(&cloud, "orders/42").await.expect("item stored");
    assert_eq!(item["v"].as_n().unwrap(), "2");
    assert!(item["created_at"].as_s().is_ok());
    let arns = item["key_ids"].as_m().unwrap();
    let wrapped = ciphertexts(&item);
    assert_eq!(wrapped.len(), 3);
    for region in REGIONS {
        assert_eq!(
            arns[region].as_s().unwrap(),
            &cloud.key_arns[region],
            "key_ids records the ARN"
        );
        let kms = kms_client(cloud.endpoint(region), region).await;
        let out = kms
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped[region].clone()))
            .encryption_context("rkms:id", "orders/42")
            .send()
            .await
            .unwrap();
        assert_eq!(B64.encode(out.plaintext.unwrap().as_ref()), key, "{region}");
        // Without the id's context the ciphertext does not open.
        let refused = kms
            .decrypt()
            .ciphertext_blob(Blob::new(wrapped[region].clone()))
            .send()
            .await;
        assert!(refused.is_err(), "{region}");
    }
}

#[tokio::test]
async fn a_dead_or_frozen_preferred_region_does_not_stop_reads() {
    let mut cloud = Cloud::start(true).await;
    let server = serve(no_cache(&cloud)).await;
    let keys: Vec<String> = futures::future::join_all((0..3).map(|i| {
        let server = &server;
        async move { server.key(&format!("k{i}")).await }
    }))
    .await;

    // Frozen (accepts connections, never answers): served within the timeouts.
    cloud.moto(REGIONS[0]).freeze();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(&server.key(&format!("k{i}")).await, key);
    }
    cloud.moto(REGIONS[0]).thaw();

    // Killed: still served, from another region.
    std::rc::Rc::get_mut(cloud.kms.get_mut(REGIONS[0]).unwrap())
        .expect("no other handle")
        .kill();
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(&server.key(&format!("k{i}")).await, key);
    }
}

#[tokio::test]
async fn creates_with_a_region_down_need_the_quorum() {
    let cloud = Cloud::start(true).await;
    cloud.moto(REGIONS[2]).freeze();
    let server = serve(no_cache(&cloud)).await;
    let key = server.key("two-of-three").await;
    let stored = ciphertexts(&item(&cloud, "two-of-three").await.unwrap());
    let mut regions: Vec<&str> = stored.keys().map(String::as_str).collect();
    regions.sort_unstable();
    assert_eq!(regions, vec!["us-east-1", "us-west-2"]);

    let mut strict = no_cache(&cloud);
    strict.kms.min_regions_on_create = 3;
    let strict = serve(strict).await;
    let (status, body) = strict.get("needs-three", true).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        item(&cloud, "needs-three").await.is_none(),
        "no item below the quorum"
    );

    // The region comes back: the record is repaired with no request for
    // it (the create queued the repair, which retries with backoff).
    cloud.moto(REGIONS[2]).thaw();
    tokio::time::timeout(Duration::from_secs(90), server.broker.repairs_idle())
        .await
        .expect("the queued repair finishes once the region answers");
    let repaired = ciphertexts(&item(&cloud, "two-of-three").await.unwrap()).len();
    assert_eq!(repaired, 3, "the missing region was added without a read");
    // The drill agrees: every record decrypts in every region, alone.
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = ops::run(ops::rkms(dir.path(), &cloud), &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("every record is recoverable in every region"),
        "{out}"
    );
    // The added ciphertext alone gives back the same key.
    let mut only_third = no_cache(&cloud);
    only_third.kms.regions = vec![REGIONS[2].to_string()];
    only_third.kms.min_regions_on_create = 1;
    only_third.kms.aws.key_ids.retain(|r, _| r == REGIONS[2]);
    only_third.kms.aws.endpoints.retain(|r, _| r == REGIONS[2]);
    let third = serve(only_third).await;
    let (status, body) = third.get("two-of-three", false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["key"], key.as_str());
}

#[tokio::test]
async fn rkms_go_items_without_context_are_served_unchanged() {
    let cloud = Cloud::start(false).await;
    let plaintext = [7u8; 32];
    let mut keys = HashMap::new();
    for region in REGIONS {
        let out = kms_client(cloud.endpoint(region), region)
            .await
            .encrypt()
            .key_id(format!("alias/rkms-{region}"))
            .plaintext(Blob::new(plaintext.to_vec()))
            .send()
            .await
            .unwrap();
        keys.insert(
            region.to_string(),
            AttributeValue::S(B64.encode(out.ciphertext_blob.unwrap().as_ref())),
        );
    }
    dynamo_client(&cloud.dynamo.endpoint)
        .await
        .put_item()
        .table_name(TABLE)
        .item("id", AttributeValue::S("legacy-1".into()))
        .item("keys", AttributeValue::M(keys.clone()))
        .send()
        .await
        .unwrap();
    let server = serve(no_cache(&cloud)).await;
    assert_eq!(server.key("legacy-1").await, B64.encode(plaintext));
    let after = item(&cloud, "legacy-1").await.unwrap();
    assert_eq!(
        after["keys"].as_m().unwrap(),
        &keys,
        "the item is left as RKMS wrote it"
    );
    assert!(!after.contains_key("v"));
}

/// A ciphertext made under another KMS key the service may use (planted
/// in the table with the right context) is refused: Decrypt pins the
/// configured key and checks the key KMS reports.
#[tokio::test]
async fn a_ciphertext_under_a_foreign_key_is_refused() {
    let cloud = Cloud::start(false).await;
    let region = REGIONS[0];
    let kms = kms_client(cloud.endpoint(region), region).await;
    let foreign = kms
        .create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id;
    let planted = [9u8; 32];
    let out = kms
        .encrypt()
        .key_id(&foreign)
        .plaintext(Blob::new(planted.to_vec()))
        .encryption_context("rkms:id", "planted")
        .send()
        .await
        .unwrap();
    let keys = HashMap::from([(
        region.to_string(),
        AttributeValue::S(B64.encode(out.ciphertext_blob.unwrap().as_ref())),
    )]);
    dynamo_client(&cloud.dynamo.endpoint)
        .await
        .put_item()
        .table_name(TABLE)
        .item("id", AttributeValue::S("planted".into()))
        .item("v", AttributeValue::N("2".into()))
        .item("keys", AttributeValue::M(keys))
        .item("key_ids", AttributeValue::M(HashMap::new()))
        .send()
        .await
        .unwrap();
    let server = serve(no_cache(&cloud)).await;
    let (status, body) = server.get("planted", false).await;
    // AWS answers IncorrectKeyException (500 here), moto AccessDenied (a
    // per-key refusal: 503); either way the planted key is never served.
    assert!(status == 500 || status == 503, "{status} {body}");
    assert!(body.get("key").is_none(), "{body}");
    assert!(!body.to_string().contains(&B64.encode(planted)));
    // Keys under the configured key still work.
    server.key("fine").await;
}

#[tokio::test]
async fn a_ciphertext_copied_to_another_id_is_refused() {
    let cloud = Cloud::start(false).await;
    let server = serve(no_cache(&cloud)).await;
    let victim = server.key("victim").await;
    let mut stolen = item(&cloud, "victim").await.unwrap();
    stolen.insert("id".into(), AttributeValue::S("thief".into()));
    put_item(&cloud, stolen).await;
    let (status, body) = server.get("thief", true).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_type"], "InternalError");
    assert!(!body.to_string().contains(&victim));
}

#[tokio::test]
async fn two_processes_racing_on_new_ids_agree_on_every_key() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rkms"));
        cmd.current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
            .env("RKMS__LOG__FORMAT", "json")
            .envs(cloud.env());
        common::start(cmd)
    };
    let (a, b) = (spawn(), spawn());
    let client = reqwest::Client::new();
    let ids: Vec<String> = (0..20).map(|i| format!("race/{i}")).collect();
    let mut requests = Vec::new();
    for id in &ids {
        for base in [&a.base, &b.base, &a.base, &b.base] {
            let url = format!("{base}/key?id={}", urlencode(id));
            let client = client.clone();
            let id = id.clone();
            requests.push(async move {
                let res = client.get(url).send().await.unwrap();
                assert_eq!(res.status().as_u16(), 200);
                let body: Value = res.json().await.unwrap();
                (id, body["key"].as_str().unwrap().to_owned())
            });
        }
    }
    let mut by_id: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, key) in futures::future::join_all(requests).await {
        by_id.entry(id).or_default().insert(key);
    }
    for id in &ids {
        assert_eq!(by_id[id].len(), 1, "{id} got several keys");
    }
    let (sa, logs_a) = common::stop(a);
    let (sb, logs_b) = common::stop(b);
    assert!(sa.success() && sb.success());
    let all_keys: Vec<&String> = by_id.values().flatten().collect();
    for line in logs_a.iter().chain(&logs_b) {
        for key in &all_keys {
            assert!(!line.contains(key.as_str()), "key material logged: {line}");
        }
    }
}

/// A KMS endpoint that refuses every call with the given AWS error code.
async fn refusing_kms(code: &'static str) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::BAD_REQUEST,
            [("content-type", "application/x-amz-json-1.1")],
            format!("{{\"__type\":\"{code}\",\"message\":\"refused by test\"}}"),
        )
            .into_response()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A KMS endpoint that takes every request and never answers (a hung
/// region), counting the requests it got.
async fn hung_kms() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let got = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&got);
    let app = axum::Router::new().fallback(move || {
        let counter = std::sync::Arc::clone(&counter);
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

/// Calls that wait for the key's lookup (DescribeKey) in a hung region
/// get that lookup's failure: one request to the region, where each
/// waiter tried again in turn, each costing a call timeout (`verify
/// --segments 8` took 8 of them per round). Only the call that made the
/// lookup counts it against the region (a review found one throttled
/// lookup opening the breaker for 5 waiting creates).
#[tokio::test]
async fn callers_waiting_for_a_hung_key_lookup_share_its_failure() {
    use rkms::kms::{Context, Kms};
    let cloud = Cloud::start(false).await;
    let (hung, got) = hung_kms().await;
    let mut settings = cloud.settings();
    settings.kms.call_timeout_ms = 300;
    settings.kms.aws.endpoints.insert("us-east-1".into(), hung);
    let kms = rkms::kms::aws::AwsKms::new(&settings.kms).await;
    let region = rkms::domain::Region::new("us-east-1");
    let id = rkms::domain::KeyId::parse("x").unwrap();
    let calls = (0..4).map(|_| kms.decrypt(&region, b"ciphertext", Context::Bound(&id)));
    let failed: Vec<_> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap_err)
        .collect();
    assert_eq!(got.load(std::sync::atomic::Ordering::SeqCst), 1);
    // One failure, counted against the region's breaker once: by the call
    // that made the lookup, not by each that waited for it.
    let waited = failed.iter().filter(|e| e.waited_for_another()).count();
    assert_eq!(waited, 3, "{failed:?}");
}

#[tokio::test]
async fn throttling_or_access_denied_in_one_region_falls_back_and_is_logged() {
    let cloud = Cloud::start(false).await;
    let writer = serve(cloud.settings()).await;
    let key = writer.key("fallback").await;
    let dir = tempfile::tempdir().unwrap();
    for (code, kind) in [
        ("ThrottlingException", "throttled"),
        ("AccessDeniedException", "misconfigured"),
    ] {
        let refusing = refusing_kms(code).await;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rkms"));
        cmd.current_dir(dir.path())
            .env_remove("RUST_LOG")
            .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
            .env("RKMS__LOG__FORMAT", "json")
            .envs(cloud.env())
            .env(
                "RKMS__KMS__AWS__ENDPOINTS",
                format!(
                    "{{\"us-east-1\"=\"{refusing}\",\"us-west-2\"=\"{}\",\"eu-west-1\"=\"{}\"}}",
                    cloud.endpoint("us-west-2"),
                    cloud.endpoint("eu-west-1")
                ),
            );
        let proc = common::start(cmd);
        let res = reqwest::get(format!("{}/key?id=fallback", proc.base))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["key"].as_str().unwrap(), key);
        let metrics = crate::helpers::metrics_text(&proc.base).await;
        assert!(
            metrics.contains(&format!(
                "rkms_kms_requests_total{{op=\"decrypt\",outcome=\"{kind}\",region=\"us-east-1\"}}"
            )),
            "{metrics}"
        );
        let (status, logs) = common::stop(proc);
        assert!(status.success());
        let logged = logs
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| {
                v["region"] == "us-east-1"
                    && v["kind"] == kind
                    && v["error"].as_str().is_some_and(|e| !e.is_empty())
            });
        assert!(
            logged,
            "the {code} from us-east-1 is in the logs: {logs:#?}"
        );
    }
}

/// An alias moved to another key while rkms runs: the process goes on
/// wrapping with the key it named at first use, as it unwraps with it. It
/// wrapped new keys under the alias's new key, which its own decrypts
/// refused: with the other regions down, such a key could not be read.
#[tokio::test]
async fn an_alias_moved_while_running_does_not_split_the_keys_used() {
    let cloud = Cloud::start(true).await;
    let server = serve(no_cache(&cloud)).await;
    server.key("before").await;
    let west = "us-west-2";
    cloud.move_alias(west).await;

    let key = server.key("after").await;
    let stored = item(&cloud, "after").await.unwrap();
    assert_eq!(
        stored["key_ids"].as_m().unwrap()[west].as_s().unwrap(),
        &cloud.key_arns[west],
        "wrapped under the key named at first use"
    );
    for region in ["us-east-1", "eu-west-1"] {
        cloud.moto(region).freeze();
    }
    let (status, body) = server.get("after", false).await;
    assert_eq!(
        (status, body["key"].as_str()),
        (200, Some(key.as_str())),
        "{body}"
    );
    for region in ["us-east-1", "eu-west-1"] {
        cloud.moto(region).thaw();
    }
}

#[tokio::test]
async fn readiness_follows_the_store() {
    let cloud = Cloud::start(true).await;
    let server = serve(cloud.settings()).await;
    // Each past the interval in which /readyz shares the store's answer.
    let ready = || async {
        tokio::time::sleep(rkms::broker::PING_EVERY).await;
        let res = server
            .client
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    };
    assert_eq!(ready().await.0, 200);
    cloud.dynamo.freeze();
    let (status, body) = ready().await;
    assert_eq!(status, 503);
    // An outage, not a wrong configuration.
    assert_eq!(body["checks"]["store"], "unreachable", "{body}");
    cloud.dynamo.thaw();
    let (status, body) = ready().await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let cloud = Cloud::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rkms"));
    cmd.current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
        .env("RKMS__LOG__FORMAT", "json")
        .env("RKMS__CACHE__TTL_SECONDS", "0")
        .env("RKMS__KMS__CALL_TIMEOUT_MS", "10000")
        .env("RKMS__KMS__HEDGE_AFTER_MS", "10000")
        .envs(
            cloud
                .env()
                .into_iter()
                .filter(|(k, _)| !k.contains("TIMEOUT") && !k.contains("HEDGE")),
        );
    let mut proc = common::start(cmd);
    let client = reqwest::Client::new();
    let url = format!("{}/key?id=drain", proc.base);
    assert_eq!(
        client.get(&url).send().await.unwrap().status().as_u16(),
        200
    );

    // Freeze the one moto behind the table and every region: the next
    // requests wait inside their store and KMS calls.
    cloud.moto(REGIONS[0]).freeze();
    let in_flight: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    // Generous: the requests only need to be connected and waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    common::sigterm(&proc.child);
    assert!(
        common::refuses_connections(&proc.base).await,
        "no new connections while draining"
    );
    cloud.moto(REGIONS[0]).thaw();
    for r in futures::future::join_all(in_flight).await {
        assert_eq!(r.unwrap().unwrap(), 200);
    }
    let status = proc.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn corrupt_items_are_errors_and_never_overwritten() {
    let cloud = Cloud::start(false).await;
    let dynamo = dynamo_client(&cloud.dynamo.endpoint).await;
    let bad_items: Vec<(&str, HashMap<String, AttributeValue>)> = vec![
        (
            "no-keys",
            HashMap::from([("id".into(), AttributeValue::S("no-keys".into()))]),
        ),
        (
            "keys-not-a-map",
            HashMap::from([
                ("id".into(), AttributeValue::S("keys-not-a-map".into())),
                ("keys".into(), AttributeValue::S("oops".into())),
            ]),
        ),
        (
            "not-base64",
            HashMap::from([
                ("id".into(), AttributeValue::S("not-base64".into())),
                (
                    "keys".into(),
                    AttributeValue::M(HashMap::from([(
                        "us-east-1".into(),
                        AttributeValue::S("***".into()),
                    )])),
                ),
                ("v".into(), AttributeValue::N("2".into())),
            ]),
        ),
        (
            "future-version",
            HashMap::from([
                ("id".into(), AttributeValue::S("future-version".into())),
                (
                    "keys".into(),
                    AttributeValue::M(HashMap::from([(
                        "us-east-1".into(),
                        AttributeValue::S("AAAA".into()),
                    )])),
                ),
                ("v".into(), AttributeValue::N("9".into())),
            ]),
        ),
    ];
    for (_, item) in &bad_items {
        dynamo
            .put_item()
            .table_name(TABLE)
            .set_item(Some(item.clone()))
            .send()
            .await
            .unwrap();
    }
    let server = serve(no_cache(&cloud)).await;
    for (id, original) in &bad_items {
        let (status, body) = server.get(id, true).await;
        assert_eq!(status, 500, "{id}: {body}");
        assert_eq!(body["error_message"], "internal error");
        assert_eq!(
            &item(&cloud, id).await.unwrap(),
            original,
            "{id} left as it was"
        );
    }
}

/// A repair's update is conditional on the record it read: an item deleted,
/// or written again with another key, since then gains nothing (one item
/// never holds two keys), checked by DynamoDB in the same call.
#[tokio::test]
async fn a_repair_update_leaves_an_item_written_again_alone() {
    use rkms::domain::{KeyId, KeyRecord, Region};
    use rkms::store::{dynamodb::DynamoStore, Store};
    let cloud = Cloud::start(false).await;
    let settings = cloud.settings();
    let store = DynamoStore::new(&settings.store.dynamodb, &settings.store).await;
    let record = |id: &str, keys: &[(&str, &[u8])]| KeyRecord {
        id: KeyId::parse(id).unwrap(),
        keys: keys
            .iter()
            .map(|(r, c)| (Region::new(*r), c.to_vec()))
            .collect(),
        version: Some(rkms::domain::RECORD_VERSION),
        key_ids: keys
            .iter()
            .map(|(r, _)| (Region::new(*r), format!("arn:{r}")))
            .collect(),
        created_at: None,
    };
    let read = record("race", &[("a", b"old-a"), ("b", b"old-b")]);
    let again = record("race", &[("a", b"new-a")]);
    store.put_if_absent(&again).await.unwrap();
    let before = item(&cloud, "race").await.unwrap();
    let keys = [(Region::new("c"), b"wrapped-c".to_vec())].into();
    let arns = [(Region::new("c"), "arn:c".to_string())].into();

    assert_eq!(
        store
            .add_missing_regions(&read, &keys, &arns)
            .await
            .unwrap(),
        0
    );
    assert_eq!(item(&cloud, "race").await.unwrap(), before, "untouched");
    // No region in common with what is stored: not the same key either.
    let other_region = record("race", &[("b", b"new-b")]);
    assert_eq!(
        store
            .add_missing_regions(&other_region, &keys, &arns)
            .await
            .unwrap(),
        0
    );
    assert_eq!(item(&cloud, "race").await.unwrap(), before, "untouched");
    let gone = record("gone", &[("a", b"old-a")]);
    assert_eq!(
        store
            .add_missing_regions(&gone, &keys, &arns)
            .await
            .unwrap(),
        0
    );
    assert_eq!(item(&cloud, "gone").await, None, "not written back");

    // The item as stored takes the region, once.
    assert_eq!(
        store
            .add_missing_regions(&again, &keys, &arns)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .add_missing_regions(&again, &keys, &arns)
            .await
            .unwrap(),
        0
    );
    let now = store.get(&again.id).await.unwrap().unwrap();
    assert_eq!(now.keys[&Region::new("a")], b"new-a");
    assert_eq!(now.keys[&Region::new("c")], b"wrapped-c");
    assert_eq!(now.key_ids[&Region::new("c")], "arn:c");
}
