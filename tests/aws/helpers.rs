//! What the AWS tests share: the server under test, driven over HTTP, and
//! direct reads of the table.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use base64::Engine;
use rkms::broker::KeyBroker;
use rkms::config::Settings;
use rkms::startup::Application;
use serde_json::Value;

use crate::moto::{dynamo_client, Cloud, TABLE};

pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    /// The server's broker, to await its background work.
    pub broker: KeyBroker,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub async fn serve(settings: Settings) -> Server {
    let app = Application::build(settings).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    let broker = app.broker();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Server {
        base,
        client: reqwest::Client::new(),
        broker,
        stop: Some(tx),
    }
}

impl Server {
    pub async fn get(&self, id: &str, create: bool) -> (u16, Value) {
        let url = format!("{}/key?id={}&create={create}", self.base, urlencode(id));
        let res = tokio::time::timeout(Duration::from_secs(20), self.client.get(url).send())
            .await
            .expect("a request must never hang")
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn key(&self, id: &str) -> String {
        let (status, body) = self.get(id, true).await;
        assert_eq!(status, 200, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }
}

/// The text of `{base}/metrics`.
pub async fn metrics_text(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_owned()
}

/// Write `item` into the table as it is, past rkms (planted or edited data).
pub async fn put_item(cloud: &Cloud, item: HashMap<String, AttributeValue>) {
    dynamo_client(&cloud.dynamo.endpoint)
        .await
        .put_item()
        .table_name(TABLE)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();
}

pub async fn item(cloud: &Cloud, id: &str) -> Option<HashMap<String, AttributeValue>> {
    dynamo_client(&cloud.dynamo.endpoint)
        .await
        .get_item()
        .table_name(TABLE)
        .key("id", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

pub fn ciphertexts(item: &HashMap<String, AttributeValue>) -> HashMap<String, Vec<u8>> {
    item["keys"]
        .as_m()
        .unwrap()
        .iter()
        .map(|(r, v)| (r.clone(), B64.decode(v.as_s().unwrap()).unwrap()))
        .collect()
}

pub fn no_cache(cloud: &Cloud) -> Settings {
    let mut s = cloud.settings();
    s.cache.ttl_seconds = 0;
    s
}
