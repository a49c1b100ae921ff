use std::path::Path;
use std::sync::Arc;

use rkms::config::{Settings, StoreBackend};
use rkms::domain::Region;
use rkms::kms::faulty::FaultyKms;
use rkms::kms::local::LocalKms;
use rkms::kms::Kms;
use rkms::startup::Application;
use rkms::store::memory::MemoryStore;
use rkms::store::sqlite::SqliteStore;
use rkms::store::Store;
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub kms: Arc<FaultyKms>,
    pub memory: Option<Arc<MemoryStore>>,
    pub broker: rkms::broker::KeyBroker,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Holds the data directory for the app's lifetime.
    pub _dir: tempfile::TempDir,
    pub stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_settings(dir: &Path) -> Settings {
    let mut s = Settings::default();
    s.server.listen = ([127, 0, 0, 1], 0).into();
    s.kms.local.keyring = dir.join("keyring.json");
    s.store.sqlite.path = dir.join("rkms.sqlite3");
    s
}

pub fn region(name: &str) -> Region {
    Region::new(name)
}

/// Start an in-process server: local KMS behind a fault injector, and the
/// store the settings name (SQLite or memory).
pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
    init_test_log();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    tweak(&mut settings);
    let regions: Vec<Region> = settings.kms.regions.iter().map(Region::new).collect();
    let local: Arc<dyn Kms> =
        Arc::new(LocalKms::open(&settings.kms.local.keyring, &regions).unwrap());
    let kms = Arc::new(FaultyKms::new(local));
    let (store, memory): (Arc<dyn Store>, Option<Arc<MemoryStore>>) = match settings.store.backend {
        StoreBackend::Memory => {
            let m = Arc::new(MemoryStore::new());
            (m.clone(), Some(m))
        }
        _ => (
            Arc::new(
                SqliteStore::open(
                    &settings.store.sqlite.path,
                    std::time::Duration::from_millis(settings.store.call_timeout_ms),
                )
                .unwrap(),
            ),
            None,
        ),
    };
    let app = Application::build_with(settings, kms.clone(), store)
        .await
        .unwrap();
    let addr = app.local_addr().unwrap();
    let broker = app.broker();
    let metrics_addr = app.metrics_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        kms,
        memory,
        broker,
        metrics_addr,
        _dir: dir,
        stop: Some(tx),
        done: Some(done),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

impl TestApp {
    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let res = self
            .client
            .get(format!("{}{}", self.base, path_and_query))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `/metrics` on the API listener, with this Authorization header.
    pub async fn metrics_text_as(&self, authorization: Option<&str>) -> String {
        let mut req = self.client.get(format!("{}/metrics", self.base));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        res.text().await.unwrap()
    }

    pub async fn key(&self, id: &str) -> String {
        let (status, body) = self.get(&format!("/key?id={}", urlencode(id))).await;
        assert_eq!(status, 200, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// GET `path` and check it is a JSON 503 with `Retry-After`.
    pub async fn expect_unavailable(&self, path: &str) {
        let res = self
            .client
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 503);
        assert!(res.headers().get("retry-after").is_some());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error_type"], "ServiceUnavailable");
        let message = body["error_message"].as_str().unwrap();
        assert!(
            !message.contains("local-"),
            "5xx bodies say nothing internal: {message}"
        );
    }

    pub async fn metrics(&self) -> String {
        crate::common::get_text(&self.client, &format!("{}/metrics", self.base)).await
    }
}

pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_owned()
}

pub fn decode_key(b64: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// `rkms_log_dropped_total` of a server running as its own process.
pub async fn dropped_log_lines(client: &reqwest::Client, base: &str) -> f64 {
    let text = crate::common::get_text(client, &format!("{base}/metrics")).await;
    metric_value(&text, "rkms_log_dropped_total", &[])
}

/// The value of one sample in Prometheus text, e.g.
/// `metric_value(text, "rkms_http_requests_total", &[("route","/key"),("status","200")])`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let matches = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_test_writer()
            .try_init();
    }
}

/// Read from `stream` until the server closes it; `None` when it is still
/// open after `within`. Returns what was read.
pub async fn read_until_closed(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: std::time::Duration,
) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}
