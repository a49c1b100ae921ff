//! Token authentication, per-id authorization, the create permission and
//! the limits, over HTTP. Existence of an id is never revealed to a client
//! that may not read it.

use rkms::config::{AuthClient, AuthMode, IdPattern};

use crate::helpers::*;

const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";

fn client(name: &str, token: &str, ids: &[&str], create: bool) -> AuthClient {
    AuthClient {
        name: name.into(),
        token_sha256: Some(rkms::auth::token_hash(token)),
        ids: ids.iter().map(|p| IdPattern::parse(p).unwrap()).collect(),
        create,
        ..AuthClient::default()
    }
}

async fn token_app(tweak: impl FnOnce(&mut rkms::config::Settings)) -> TestApp {
    spawn_with(|s| {
        s.auth.mode = AuthMode::Token;
        s.auth.clients = vec![
            client("writer", WRITER, &["billing/*"], true),
            client("reader", READER, &["billing/*", "shared"], false),
        ];
        // As the loader does for token_sha256.
        for c in &mut s.auth.clients {
            c.resolved = c.token_sha256.into_iter().collect();
        }
        tweak(s);
    })
    .await
}

impl TestApp {
    async fn as_client(&self, token: Option<&str>, path: &str) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        req.send().await.unwrap()
    }
}

async fn status_and_type(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    (
        status,
        body["error_type"].as_str().unwrap_or("").to_string(),
    )
}

#[tokio::test]
async fn missing_or_wrong_credentials_are_401_with_a_bearer_challenge() {
    let app = token_app(|_| {}).await;
    let wrong_same_length = format!("Bearer {}", "x".repeat(WRITER.len()));
    for auth in [
        None,
        Some("Bearer nope"),
        Some(wrong_same_length.as_str()),
        Some("Basic d3JpdGVyOnB3"),
        Some("Bearer"),
        Some(WRITER),
    ] {
        let res = app.as_client(auth, "/key?id=billing/1").await;
        assert_eq!(
            res.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer realm=\"rkms\"",
            "{auth:?}"
        );
        assert_eq!(
            status_and_type(res).await,
            (401, "Unauthorized".to_string()),
            "{auth:?}"
        );
    }
    assert_eq!(app.kms.total_calls("generate_data_key"), 0);
    let text = app.metrics_text_as(Some(&format!("Bearer {WRITER}"))).await;
    assert!(
        text.contains("rkms_auth_failures_total{reason=\"missing\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("rkms_auth_failures_total{reason=\"unknown\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = token_app(|_| {}).await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let res = app
            .as_client(Some(&format!("{scheme} {WRITER}")), "/key?id=billing/1")
            .await;
        assert_eq!(res.status().as_u16(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn ids_outside_the_patterns_are_403_whether_or_not_they_exist() {
    let app = token_app(|s| {
        s.auth
            .clients
            .push(client("admin", "admin-token-0123456789", &["*"], true));
        s.auth.clients[2].resolved = s.auth.clients[2].token_sha256.into_iter().collect();
    })
    .await;
    let writer = format!("Bearer {WRITER}");
    let admin = "Bearer admin-token-0123456789";
    // "payroll/1" exists (the admin made it); "payroll/2" does not.
    assert_eq!(
        app.as_client(Some(admin), "/key?id=payroll/1")
            .await
            .status(),
        200
    );
    for path in [
        "/key?id=payroll/1",
        "/key?id=payroll/2",
        "/key?id=payroll/1&create=false",
        "/key?id=payroll/2&create=false",
        // No implicit prefix: "billing/*" does not match "billing".
        "/key?id=billing",
    ] {
        let res = app.as_client(Some(&writer), path).await;
        assert_eq!(
            status_and_type(res).await,
            (403, "Forbidden".to_string()),
            "{path}"
        );
    }
    assert_eq!(app.kms.total_calls("generate_data_key"), 1);
}

#[tokio::test]
async fn a_reader_reads_but_cannot_create() {
    let app = token_app(|_| {}).await;
    let writer = format!("Bearer {WRITER}");
    let reader = format!("Bearer {READER}");
    // Absent, allowed to read: create=false is 404, a create is 403.
    let res = app
        .as_client(Some(&reader), "/key?id=billing/new&create=false")
        .await;
    assert_eq!(status_and_type(res).await, (404, "NotFound".to_string()));
    let res = app.as_client(Some(&reader), "/key?id=billing/new").await;
    assert_eq!(status_and_type(res).await, (403, "Forbidden".to_string()));
    assert_eq!(app.kms.total_calls("generate_data_key"), 0);
    // Once the writer made it, the reader gets the same key either way.
    let made: serde_json::Value = app
        .as_client(Some(&writer), "/key?id=billing/new")
        .await
        .json()
        .await
        .unwrap();
    for path in ["/key?id=billing/new", "/key?id=billing/new&create=false"] {
        let read: serde_json::Value = app
            .as_client(Some(&reader), path)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(read["key"], made["key"], "{path}");
    }
}

#[tokio::test]
async fn metrics_on_the_api_listener_need_a_client_and_probes_do_not() {
    let app = token_app(|_| {}).await;
    let res = app.as_client(None, "/metrics").await;
    assert_eq!(
        status_and_type(res).await,
        (401, "Unauthorized".to_string())
    );
    let res = app
        .as_client(Some(&format!("Bearer {READER}")), "/metrics")
        .await;
    assert_eq!(res.status(), 200);
    for probe in ["/healthz", "/readyz"] {
        let res = app.as_client(None, probe).await;
        assert_eq!(res.status(), 200, "{probe}");
        let text = res.text().await.unwrap();
        assert!(
            !text.contains("writer") && !text.contains("billing"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let app = token_app(|s| {
        s.auth.clients[0].requests_per_second = 1;
        s.auth.clients[0].burst = 3;
    })
    .await;
    let writer = format!("Bearer {WRITER}");
    for _ in 0..3 {
        assert_eq!(
            app.as_client(Some(&writer), "/key?id=billing/r")
                .await
                .status(),
            200
        );
    }
    let res = app.as_client(Some(&writer), "/key?id=billing/r").await;
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    assert_eq!(
        status_and_type(res).await,
        (429, "TooManyRequests".to_string())
    );
    // A scrape on the API listener counts against the same rate.
    assert_eq!(app.as_client(Some(&writer), "/metrics").await.status(), 429);
    // Another client is not slowed by it.
    assert_eq!(
        app.as_client(Some(&format!("Bearer {READER}")), "/key?id=billing/r")
            .await
            .status(),
        200
    );
}

/// Two `Authorization` headers are refused, whichever comes first: a proxy
/// in front could act on the other one than rkms does.
#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let app = token_app(|_| {}).await;
    for (first, second) in [(WRITER, READER), (READER, WRITER), (WRITER, WRITER)] {
        let res = app
            .client
            .get(format!("{}/key?id=billing/two", app.base))
            .header("authorization", format!("Bearer {first}"))
            .header("authorization", format!("Bearer {second}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            status_and_type(res).await,
            (401, "Unauthorized".to_string())
        );
    }
    assert_eq!(app.kms.total_calls("generate_data_key"), 0);
}

#[tokio::test]
async fn oversized_targets_and_headers_are_414_and_431() {
    let app = token_app(|s| {
        s.server.max_uri_bytes = 256;
        s.server.max_header_bytes = 2048;
    })
    .await;
    let res = app
        .as_client(None, &format!("/key?id={}", "a".repeat(300)))
        .await;
    assert_eq!(status_and_type(res).await, (414, "UriTooLong".to_string()));
    // An absolute-form target counts whole, its authority too.
    let mut stream = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "GET http://{}.example/key?id=billing/abs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {WRITER}\r\nconnection: close\r\n\r\n",
        "h".repeat(300)
    );
    let answer = exchange(&mut stream, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 414"), "{answer}");
    let res = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-padding", "p".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        status_and_type(res).await,
        (431, "HeadersTooLarge".to_string())
    );
}

/// A request with two Host headers, an HTTP/1.1 request with none, or one
/// whose Host is not a host and port, is 400 before anything else is
/// looked at: which host it was for is not known. HTTP/1.0 needs none.
#[tokio::test]
async fn a_missing_or_repeated_host_is_400() {
    let app = token_app(|_| {}).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    for (head, status) in [
        ("GET /key?id=billing/h HTTP/1.1\r\n", "400"),
        (
            "GET /key?id=billing/h HTTP/1.1\r\nHost: a\r\nHost: b\r\n",
            "400",
        ),
        ("GET /healthz HTTP/1.1\r\n", "400"),
        (
            "GET /key?id=billing/h HTTP/1.0\r\nHost: a\r\nHost: a\r\n",
            "400",
        ),
        ("GET /key?id=billing/h HTTP/1.0\r\n", "200"),
        ("GET /key?id=billing/h HTTP/1.1\r\nHost: a\r\n", "200"),
        (
            "GET /key?id=billing/h HTTP/1.1\r\nHost: [::1]:8443\r\n",
            "200",
        ),
        ("GET /key?id=billing/h HTTP/1.1\r\nHost:\r\n", "200"),
        // Not a host and port: two joined, a space, user information, a
        // port past 16 bits, no host.
        ("GET /key?id=billing/h HTTP/1.1\r\nHost: a, b\r\n", "400"),
        ("GET /key?id=billing/h HTTP/1.1\r\nHost: a,b\r\n", "400"),
        ("GET /key?id=billing/h HTTP/1.1\r\nHost: a b\r\n", "400"),
        ("GET /key?id=billing/h HTTP/1.1\r\nHost: u@a\r\n", "400"),
        (
            "GET /key?id=billing/h HTTP/1.1\r\nHost: [::1]:99999\r\n",
            "400",
        ),
        ("GET /healthz HTTP/1.1\r\nHost: :80\r\n", "400"),
        ("GET /healthz HTTP/1.1\r\nHost: a:+80\r\n", "400"),
        ("GET /healthz HTTP/1.1\r\nHost: [::1\r\n", "400"),
        ("GET /healthz HTTP/1.1\r\nHost: [::1]x\r\n", "400"),
        ("GET /healthz HTTP/1.1\r\nHost: rkms.example:\r\n", "200"),
        ("GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:65535\r\n", "200"),
    ] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!("{head}authorization: Bearer {WRITER}\r\nconnection: close\r\n\r\n");
        let answer = exchange(&mut stream, request.as_bytes()).await;
        assert_eq!(answer.split(' ').nth(1), Some(status), "{head:?}: {answer}");
        if status == "400" {
            assert!(answer.contains("\"error_type\":\"BadRequest\""), "{answer}");
            assert!(answer.contains("Host header"), "{answer}");
        }
    }
}

/// More requests than `server.max_concurrent_requests` at once: the excess
/// is shed with 503 and Retry-After, probes still answer, and once the load
/// is gone every request succeeds again.
#[tokio::test]
async fn overload_is_shed_with_503_and_the_server_recovers() {
    let app = spawn_with(|s| {
        s.server.max_concurrent_requests = 2;
        s.kms.call_timeout_ms = 5_000;
        s.server.request_timeout_ms = 5_000;
    })
    .await;
    for r in ["local-1", "local-2", "local-3"] {
        app.kms.set_fault(
            &region(r),
            Some(rkms::kms::faulty::Fault::Delay(
                std::time::Duration::from_millis(400),
            )),
        );
    }
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let client = app.client.clone();
            let url = format!("{}/key?id=load-{i}", app.base);
            tokio::spawn(async move { client.get(url).send().await.unwrap() })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(app.get("/healthz").await.0, 200, "probes are never shed");
    let mut shed = 0;
    let mut served = 0;
    for r in requests {
        let res = r.await.unwrap();
        match res.status().as_u16() {
            200 => served += 1,
            503 => {
                assert!(res.headers().contains_key("retry-after"));
                shed += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(served, 2, "exactly the limit is admitted");
    assert_eq!(shed, 6);
    for r in ["local-1", "local-2", "local-3"] {
        app.kms.set_fault(&region(r), None);
    }
    for i in 0..8 {
        assert_eq!(app.get(&format!("/key?id=after-{i}")).await.0, 200);
    }
    let text = app.metrics_text_as(None).await;
    assert!(
        text.contains("rkms_requests_shed_total{reason=\"overload\"} 6"),
        "{text}"
    );
}

/// A client cannot hold connections open without sending requests. On the
/// API listener and on the metrics listener:
/// - a connection that sends nothing is closed (the head timeout, 10 s);
/// - so is one that sends its request head a byte a second;
/// - a keep-alive connection stays open while idle for longer than that
///   (load balancers keep idle connections for 60 s), serves its next
///   request, and is closed once that next head comes too slowly.
#[tokio::test]
async fn connections_that_do_not_send_a_request_are_closed() {
    let app = token_app(|s| s.server.metrics_listen = Some(([127, 0, 0, 1], 0).into())).await;
    let api = app.base.trim_start_matches("http://").to_string();
    let metrics = app.metrics_addr.unwrap().to_string();
    let within = std::time::Duration::from_secs(30);
    const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: rkms\r\n\r\n";

    let mut clients = Vec::new();
    for (listener, addr) in [("API", api), ("metrics", metrics)] {
        let silent = tokio::spawn({
            let addr = addr.clone();
            async move {
                let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
                read_until_closed(&mut silent, within).await
            }
        });
        let slow = tokio::spawn({
            let addr = addr.clone();
            async move {
                let slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
                trickle_head_until_closed(slow, within).await
            }
        });
        let kept = tokio::spawn(async move {
            let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let first = exchange(&mut kept, HEALTHZ).await;
            // Idle past the head timeout, then a second request.
            tokio::time::sleep(std::time::Duration::from_secs(12)).await;
            let second = exchange(&mut kept, HEALTHZ).await;
            let closed = trickle_head_until_closed(kept, within).await;
            (first, second, closed)
        });
        clients.push((listener, silent, slow, kept));
    }
    for (listener, silent, slow, kept) in clients {
        let silent = silent.await.unwrap();
        assert_eq!(silent.as_deref(), Some(""), "{listener}: silent connection");
        let slow = slow.await.unwrap();
        let slow = slow.unwrap_or_else(|| panic!("{listener}: slow head still open"));
        assert!(
            slow.is_empty() || slow.starts_with("HTTP/1.1 408"),
            "{listener}: slow head got {slow:?}"
        );
        let (first, second, closed) = kept.await.unwrap();
        assert!(first.starts_with("HTTP/1.1 200"), "{listener}: {first:?}");
        assert!(second.starts_with("HTTP/1.1 200"), "{listener}: {second:?}");
        let closed = closed.unwrap_or_else(|| panic!("{listener}: slow second head still open"));
        assert!(
            !closed.contains("HTTP/1.1 200"),
            "{listener}: a slow head was served: {closed:?}"
        );
    }
}

/// Send `request` and read one whole response (head and Content-Length body).
async fn exchange(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed mid-response: {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// Send a request head a byte a second, never finishing it; what was read
/// once the server closed the connection, `None` if still open after `within`.
async fn trickle_head_until_closed(
    stream: tokio::net::TcpStream,
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncWriteExt;
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"GET /healthz HTTP/1.1\r\nHost: rkms\r\nX-Slow: "
            .iter()
            .chain([b'a'; 64].iter())
        {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    let closed = read_until_closed(&mut reader, within).await;
    trickle.abort();
    closed
}

/// More connections than `server.max_connections`: the excess is closed
/// as it is accepted (no client can take every file descriptor or fill
/// memory with idle connections), counted as shed, the metrics listener
/// still answers, and a connection is accepted again once one ends.
#[tokio::test]
async fn connections_over_the_limit_are_closed_and_the_limit_frees_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_with(|s| {
        s.server.max_connections = 2;
        s.server.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    // One request on a connection; its answer's first bytes, or "" when the
    // connection is closed without one.
    async fn ask(conn: &mut tokio::net::TcpStream) -> String {
        let request = b"GET /healthz HTTP/1.1\r\nHost: rkms\r\n\r\n";
        if conn.write_all(request).await.is_err() {
            return String::new();
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(std::time::Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Ok(Err(_)) => String::new(),
            Err(_) => panic!("neither answered nor closed"),
        }
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        assert!(ask(&mut conn).await.starts_with("HTTP/1.1 200"));
        held.push(conn);
    }
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(ask(&mut third).await, "", "closed without an answer");

    let metrics = format!("http://{}/metrics", app.metrics_addr.unwrap());
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    assert!(
        text.contains("rkms_requests_shed_total{reason=\"connections\"} 1"),
        "{text}"
    );

    drop(held.pop());
    // The server sees the close and frees the slot.
    let mut answered = false;
    for _ in 0..50 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if ask(&mut conn).await.starts_with("HTTP/1.1 200") {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(answered, "a slot frees up when a connection ends");
}

/// A token rotated in the client's `token_file` (a Kubernetes Secret
/// updated in place) applies within seconds, with no restart: the new
/// token is accepted, and the old one refused, on a keep-alive connection
/// that used it too.
#[tokio::test]
async fn a_token_rotated_in_its_file_applies_without_a_restart() {
    const OLD: &str = "old-file-token-0123456789";
    const NEW: &str = "new-file-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{OLD}\n")).unwrap();
    let app = token_app(|s| {
        s.auth.clients.push(AuthClient {
            name: "rotating".into(),
            token_file: Some(file.clone()),
            resolved: rkms::config::token_file_hashes(&file, &[]).unwrap(),
            ids: vec![IdPattern::Any],
            create: true,
            ..AuthClient::default()
        });
    })
    .await;
    let status = |token: &'static str| {
        let req = app
            .client
            .get(format!("{}/key?id=rot/1", app.base))
            .bearer_auth(token);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(OLD).await, 200);
    assert_eq!(status(NEW).await, 401);

    std::fs::write(&file, format!("{NEW}\n")).unwrap();
    let started = std::time::Instant::now();
    while status(NEW).await != 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the new token was never accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(status(OLD).await, 401, "the old token is refused");
}
