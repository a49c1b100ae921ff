//! GET /key over real HTTP: same key every time, create semantics, bad
//! input, region failures and integrity.

use std::collections::HashSet;

use rkms::kms::faulty::Fault;
use rkms::kms::KmsErrorKind;

use crate::helpers::{decode_key, metric_value, region, spawn_app, spawn_with, urlencode};

#[tokio::test]
async fn same_id_same_key_and_different_ids_differ() {
    let app = spawn_app().await;
    let a1 = app.key("tenant/a").await;
    let a2 = app.key("tenant/a").await;
    let b = app.key("tenant/b").await;
    assert_eq!(a1, a2);
    assert_ne!(a1, b);
    assert_eq!(decode_key(&a1).len(), 32);
    // The RKMS path serves the same key.
    let (status, body) = app.get("/api/v1/key?id=tenant%2Fa").await;
    assert_eq!(status, 200);
    assert_eq!(body["key"], a1.as_str());
    assert_eq!(body["id"], "tenant/a");
}

#[tokio::test]
async fn unicode_and_maximum_length_ids_work() {
    let app = spawn_app().await;
    let long = "é".repeat(256); // 512 bytes
    let k = app.key(&long).await;
    assert_eq!(k, app.key(&long).await);
    let (status, body) = app
        .get(&format!("/key?id={}", urlencode(&format!("{long}x"))))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_hundred_concurrent_requests_for_a_new_id_get_one_key() {
    let app = spawn_with(|s| s.store.backend = rkms::config::StoreBackend::Memory).await;
    let requests = (0..100).map(|_| app.get("/key?id=burst"));
    let results = futures::future::join_all(requests).await;
    let keys: HashSet<String> = results
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200, "{body}");
            body["key"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 1);
    let store = app.memory.as_ref().unwrap();
    assert_eq!(store.len(), 1, "one record");
    assert_eq!(app.kms.total_calls("generate_data_key"), 1);
}

#[tokio::test]
async fn bad_input_is_a_json_400_and_stores_nothing() {
    let app = spawn_with(|s| s.store.backend = rkms::config::StoreBackend::Memory).await;
    let long = "x".repeat(513);
    for query in [
        "/key",
        "/key?id=",
        "/key?id=a%00b",
        "/key?id=a%0Ab",
        "/key?id=a%7Fb",
        &format!("/key?id={long}"),
        "/key?id=a&create=maybe",
        "/key?id=a&id=b",
        "/key?id=a&colour=red",
        "/key?id=x%FF",
        "/key?id=x%FE",
        "/key?id=a%2",
        "/key?id=a%ZZ",
    ] {
        let (status, body) = app.get(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error_type"], "BadRequest", "{query}");
        assert!(body["error_message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert!(app.memory.as_ref().unwrap().is_empty());
    assert_eq!(app.kms.total_calls("generate_data_key"), 0);
}

#[tokio::test]
async fn other_methods_are_405_and_never_create() {
    let app = spawn_with(|s| s.store.backend = rkms::config::StoreBackend::Memory).await;
    for method in [
        reqwest::Method::HEAD,
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
        reqwest::Method::OPTIONS,
    ] {
        let res = app
            .client
            .request(method.clone(), format!("{}/key?id=m", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 405, "{method}");
        assert_eq!(
            res.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some("GET"),
            "{method}"
        );
        if method != reqwest::Method::HEAD {
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["error_type"], "MethodNotAllowed");
        }
    }
    assert!(app.memory.as_ref().unwrap().is_empty());
    assert_eq!(app.memory.as_ref().unwrap().get_calls(), 0, "no store call");
    assert_eq!(app.kms.total_calls("generate_data_key"), 0, "no KMS call");
    let (status, body) = app.get("/nope").await;
    assert_eq!(
        (status, body["error_type"].as_str()),
        (404, Some("NotFound"))
    );
}

#[tokio::test]
async fn create_false_is_404_for_unknown_ids_and_stores_nothing() {
    let app = spawn_with(|s| s.store.backend = rkms::config::StoreBackend::Memory).await;
    let (status, body) = app.get("/key?id=ghost&create=false").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error_type"], "NotFound");
    assert!(app.memory.as_ref().unwrap().is_empty());
    let made = app.key("ghost").await;
    let (status, body) = app.get("/key?id=ghost&create=false").await;
    assert_eq!(status, 200);
    assert_eq!(body["key"], made.as_str());
}

#[tokio::test]
async fn one_region_down_reads_and_creates_still_work_fewer_than_quorum_is_503() {
    let app = spawn_with(|s| {
        s.store.backend = rkms::config::StoreBackend::Memory;
        s.cache.ttl_seconds = 0;
    })
    .await;
    let existing = app.key("existing").await;
    app.kms.set_fault(
        &region("local-1"),
        Some(Fault::Fail(KmsErrorKind::Unavailable)),
    );
    assert_eq!(
        app.key("existing").await,
        existing,
        "read served by another region"
    );
    let fresh = app.key("made-while-down").await;
    assert_eq!(app.key("made-while-down").await, fresh);
    let record = app
        .memory
        .as_ref()
        .unwrap()
        .snapshot(&rkms::domain::KeyId::parse("made-while-down").unwrap())
        .unwrap();
    assert_eq!(record.keys.len(), 2);

    app.kms.set_fault(
        &region("local-2"),
        Some(Fault::Fail(KmsErrorKind::Unavailable)),
    );
    app.expect_unavailable("/key?id=too-few").await;
    assert!(app
        .memory
        .as_ref()
        .unwrap()
        .snapshot(&rkms::domain::KeyId::parse("too-few").unwrap())
        .is_none());
}

#[tokio::test]
async fn a_ciphertext_copied_from_another_id_is_refused() {
    let app = spawn_with(|s| {
        s.store.backend = rkms::config::StoreBackend::Memory;
        s.cache.ttl_seconds = 0;
    })
    .await;
    let victim_key = app.key("victim").await;
    app.key("intruder").await;
    let store = app.memory.as_ref().unwrap();
    let mut forged = store
        .snapshot(&rkms::domain::KeyId::parse("victim").unwrap())
        .unwrap();
    forged.id = rkms::domain::KeyId::parse("intruder").unwrap();
    store.insert_raw(forged);
    let (status, body) = app.get("/key?id=intruder").await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_type"], "InternalError");
    assert_eq!(body["error_message"], "internal error");
    assert!(!body.to_string().contains(&victim_key));
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_with(|s| s.store.backend = rkms::config::StoreBackend::Memory).await;
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    app.memory.as_ref().unwrap().set_unavailable(true);
    // The store's answer is shared by the probes of the next second.
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
    tokio::time::sleep(rkms::broker::PING_EVERY).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["store"], "unreachable");
    assert_eq!(body["checks"]["kms"], "ok");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "liveness has no dependencies");
    app.memory.as_ref().unwrap().set_unavailable(false);
    tokio::time::sleep(rkms::broker::PING_EVERY).await;
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(format!("{}/key?id=r", app.base))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-123");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    let generated = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        generated.len(),
        25,
        "a process prefix and a counter: {generated}"
    );
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    let next = res.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(next, generated, "every request gets its own id");
    assert_eq!(next[..12], generated[..12], "one prefix per process");
    // An id of the generated form, even this process's own, is not taken
    // from a client: its log lines would pass for another request's.
    for unusable in ["has spaces", "quote\"d", &"x".repeat(129), &generated] {
        let res = app
            .client
            .get(format!("{}/healthz", app.base))
            .header("x-request-id", unusable)
            .send()
            .await
            .unwrap();
        let echoed = res.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(echoed, unusable);
        assert_eq!(echoed.len(), 25, "replaced by a generated id");
    }
}

#[tokio::test]
async fn a_request_past_the_request_timeout_is_a_json_503() {
    let app = spawn_with(|s| {
        s.server.request_timeout_ms = 300;
        s.kms.call_timeout_ms = 5000;
    })
    .await;
    for r in ["local-1", "local-2", "local-3"] {
        app.kms.set_fault(&region(r), Some(Fault::Hang));
    }
    app.expect_unavailable("/key?id=slow").await;
}

#[tokio::test]
async fn metrics_can_be_served_on_a_separate_listener() {
    let app = spawn_with(|s| s.server.metrics_listen = Some(([127, 0, 0, 1], 0).into())).await;
    app.key("sep").await;
    let addr = app.metrics_addr.expect("metrics listener bound");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("rkms_keys_created_total 1"), "{text}");
    let res = reqwest::get(format!("http://{addr}/key?id=sep"))
        .await
        .unwrap();
    assert_eq!(
        res.status().as_u16(),
        404,
        "no keys on the metrics listener"
    );
    let prefix =
        |res: &reqwest::Response| res.headers()["x-request-id"].to_str().unwrap()[..12].to_string();
    let api = reqwest::get(format!("{}/healthz", app.base)).await.unwrap();
    assert_eq!(
        prefix(&res),
        prefix(&api),
        "one request-id prefix per process"
    );
    for probe in ["/healthz", "/readyz"] {
        let res = reqwest::get(format!("http://{addr}{probe}")).await.unwrap();
        assert_eq!(res.status().as_u16(), 200, "{probe}");
    }
}

/// Ids that look alike are different ids with different keys; a literal
/// U+FFFD is an id of its own, not what an invalid byte decodes to.
#[tokio::test]
async fn look_alike_ids_get_distinct_keys() {
    let app = spawn_app().await;
    let ids = [
        "t1",
        "t10",
        "T1",
        "t1 ",
        "t1/",
        " t1",
        "t1\u{FFFD}",
        "\u{FFFD}",
        "t1+",
        "t1%",
    ];
    let keys: HashSet<String> = futures::future::join_all(ids.iter().map(|id| app.key(id)))
        .await
        .into_iter()
        .collect();
    assert_eq!(keys.len(), ids.len(), "one key per id");
    // `+` in a query is a space; `%2B` is a plus.
    let (_, body) = app.get("/key?id=t1+").await;
    assert_eq!(body["id"], "t1 ");
    let (_, body) = app.get("/key?id=t1%2B").await;
    assert_eq!(body["id"], "t1+");
    let (status, body) = app.get("/key?id=%EF%BF%BD").await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], "\u{FFFD}");
}

/// With every region's breaker open, a request is a 503 at once, and
/// Retry-After names when the next probe is due, not a constant.
#[tokio::test]
async fn a_full_outage_is_a_503_with_the_time_of_the_next_probe() {
    let app = spawn_with(|s| {
        s.cache.ttl_seconds = 0;
        s.kms.breaker_open_ms = 30_000;
    })
    .await;
    app.key("known").await;
    for name in ["local-1", "local-2", "local-3"] {
        app.kms
            .set_fault(&region(name), Some(Fault::Fail(KmsErrorKind::Unavailable)));
    }
    for _ in 0..3 {
        app.expect_unavailable("/key?id=known").await;
    }
    let calls = app.kms.total_calls("decrypt");
    let res = app
        .client
        .get(format!("{}/key?id=known", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(app.kms.total_calls("decrypt"), calls, "no KMS call");
    let metrics = app.metrics().await;
    for name in ["local-1", "local-2", "local-3"] {
        assert_eq!(
            metric_value(
                &metrics,
                "rkms_region_breaker",
                &[("region", name), ("state", "open")]
            ),
            1.0
        );
    }
}
