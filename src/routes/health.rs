//! Liveness (no dependencies) and readiness (store and KMS regions).
//!
//! Must not: reveal secrets or ids; `/healthz` checks nothing outside
//! the process.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

/// Readiness answers within this, even when the store hangs.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the store answers, a KMS region can serve, and every
/// dependency check has passed since start. The body names each check
/// (`store`, `kms`, `kms.<region>`) with `ok` or why not: `failed` (the
/// configuration or resource is wrong; the log says why), `unreachable`
/// or `breaker_open`. Nothing secret.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "checks": {"shutdown": "draining"}})),
        );
    }
    let mut checks: BTreeMap<String, &str> = BTreeMap::new();
    let mut ready = true;
    for (name, outcome) in state.health.snapshot() {
        checks.insert(name, outcome.as_str());
    }
    if !state.health.passed_once() {
        ready = false;
    }
    for region in state.broker.open_regions() {
        let name = format!("kms.{region}");
        if checks.get(&name) == Some(&"ok") || !checks.contains_key(&name) {
            checks.insert(name, "breaker_open");
        }
    }
    checks.insert("kms".into(), "ok");
    match state.broker.readiness(READY_TIMEOUT).await {
        Ok(()) => {}
        Err(failed) => {
            ready = false;
            for (check, detail) in &failed {
                tracing::warn!(check, detail = %detail, "readiness check failed");
                checks.insert((*check).to_string(), "failed");
            }
        }
    }
    if ready {
        (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": checks})),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "checks": checks})),
        )
    }
}
