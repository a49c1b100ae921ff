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

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "checks": {"shutdown": "draining"}})),
        );
    }
    let mut checks = BTreeMap::from([("store", "ok"), ("kms", "ok")]);
    match state.broker.readiness(READY_TIMEOUT).await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": checks})),
        ),
        Err(failed) => {
            for (check, detail) in &failed {
                tracing::warn!(check, detail = %detail, "readiness check failed");
                checks.insert(check, "failed");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "checks": checks})),
            )
        }
    }
}
