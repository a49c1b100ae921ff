//! The listener loop and the connection limits, driven in-process.

use std::pin::Pin;

use tokio::time::Instant;

use super::watchdog::{HEAD_TIMEOUT, IDLE_TIMEOUT};
use super::*;

/// The last call for requests at shutdown never takes more than half
/// the grace period, so in-flight work keeps the rest.
#[test]
fn the_last_call_fits_in_the_grace_period() {
    assert_eq!(last_call(Duration::from_secs(10)), Duration::from_secs(1));
    assert_eq!(
        last_call(Duration::from_millis(600)),
        Duration::from_millis(300)
    );
    assert_eq!(last_call(Duration::ZERO), Duration::ZERO);
}

/// The soft open-file limit is raised to the hard one.
#[test]
fn the_soft_open_file_limit_is_raised() {
    use rustix::process::{getrlimit, Resource};
    assert_eq!(connection_limits(10).api, 10);
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit (macOS) cannot be the soft one.
    if limit.maximum.is_some() {
        assert_eq!(limit.current, limit.maximum, "soft raised to hard");
    }
}

/// The listeners' limits leave the descriptors already open, and some
/// for the store and KMS, whatever the open-file limit.
#[test]
fn connection_limits_fit_the_open_file_limit() {
    let at = |soft, open_now, configured| {
        let l = limits_for(soft, open_now, configured);
        (l.api, l.metrics)
    };
    // (soft limit, open now, configured) -> (listen, metrics)
    assert_eq!(at(Some(20_000), 22, 10_000), (10_000, 256));
    assert_eq!(at(Some(20_000), 22, 50_000), (18_954, 256));
    assert_eq!(at(Some(1_024), 22, 10_000), (501, 250));
    assert_eq!(at(Some(64), 22, 10_000), (21, 10));
    assert_eq!(at(None, 22, 10_000), (10_000, 256));
    // Below what is open already: one each, no more.
    assert_eq!(at(Some(2), 22, 10_000), (1, 1));
    assert_eq!(at(Some(1), 0, 10_000), (1, 1));
    for soft in [64, 256, 1_024, 4_096, 65_536] {
        let (api, metrics) = at(Some(soft), 22, u32::MAX);
        let free = soft as usize - 22;
        let left = free - api - metrics;
        assert!(left >= 512.min(free / 4), "{soft}: {left} left");
    }
}

type Boxed = Pin<
    Box<dyn Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send>,
>;

/// A connection served by `serve_connection` over an in-memory pipe;
/// every request is answered "ok" after `handling`. The shutdown handle
/// is returned because dropping it would shut the connection down.
fn connect(
    handling: Duration,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<()>,
    hyper_util::server::graceful::GracefulShutdown,
) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let service = tower::service_fn(
        move |_request: axum::http::Request<hyper::body::Incoming>| {
            Box::pin(async move {
                tokio::time::sleep(handling).await;
                Ok(axum::response::Response::new(axum::body::Body::from("ok")))
            }) as Boxed
        },
    );
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let served = tokio::spawn(serve_connection(
        server,
        service,
        graceful.watcher(),
        ([127, 0, 0, 1], 1).into(),
    ));
    (client, served, graceful)
}

/// Read until `until` is in what was read (or the end): what was read.
async fn read_until(client: &mut tokio::io::DuplexStream, until: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = client.read(&mut buf).await.unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if n == 0 || text.contains(until) {
            return text;
        }
    }
}

/// Send `request` (then `more`, if any, a second later), and read the
/// response to the first: it must be a 200.
async fn ask(client: &mut tokio::io::DuplexStream, request: &[u8], more: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    client.write_all(request).await.unwrap();
    if !more.is_empty() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(more).await.unwrap();
    }
    let response = read_until(client, "ok").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    response
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

#[tokio::test(start_paused = true)]
async fn a_slow_request_is_not_cut_and_its_connection_then_idles() {
    let (mut client, served, _graceful) = connect(Duration::from_secs(25));
    let start = Instant::now();
    let response = ask(&mut client, GET, b"").await;
    assert!(!response.to_ascii_lowercase().contains("connection: close"));
    let answered = start.elapsed();
    assert!(answered >= Duration::from_secs(25));
    // Nothing more: closed when the idle timeout is over.
    assert_eq!(read_until(&mut client, "\0").await, "");
    let idled = start.elapsed() - answered;
    assert!(
        idled >= IDLE_TIMEOUT && idled < IDLE_TIMEOUT + Duration::from_secs(1),
        "{idled:?}"
    );
    served.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_head_begun_while_a_request_is_handled_gets_the_head_timeout() {
    let (mut client, served, _graceful) = connect(Duration::from_secs(5));
    // The next head begins before the response and never ends.
    let start = Instant::now();
    ask(&mut client, GET, b"GET / HTTP/1.1\r\nX-Slow: a").await;
    let answered = start.elapsed();
    let rest = read_until(&mut client, "\0").await;
    assert!(!rest.contains("200"), "{rest:?}");
    let waited = start.elapsed() - answered;
    assert!(
        waited >= HEAD_TIMEOUT && waited < HEAD_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
    served.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_request_with_a_body_is_answered_and_its_connection_closed() {
    let (mut client, served, _graceful) = connect(Duration::ZERO);
    let start = Instant::now();
    let response = ask(
        &mut client,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
        b"",
    )
    .await;
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response:?}"
    );
    // The rest of the body is not waited for: closed at once.
    assert_eq!(read_until(&mut client, "\0").await, "");
    assert!(start.elapsed() < Duration::from_secs(1));
    served.await.unwrap();
}
