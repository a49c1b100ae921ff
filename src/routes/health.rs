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
/// dependency check has passed once since start (a region's key found
/// wrong later is `failed` in the body, not unready: others serve). The
/// body names each check (`store`, `kms`, `kms.<region>`) with `ok` or
/// why not: `failed` (the
/// configuration or resource is wrong; the log says why), `unreachable`
/// (no answer, a timeout, every breaker open) or `breaker_open`. `kms` is
/// `ok` while any region's key checks ok. Nothing secret.
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
    let kms = kms_as_a_whole(&checks);
    // No region's key can serve (every one wrong, or no credentials): no
    // breaker opens for that, so say it here.
    if kms == "failed" {
        ready = false;
    }
    checks.insert("kms".into(), kms);
    match state.broker.readiness(READY_TIMEOUT).await {
        Ok(()) => {}
        Err(failed) => {
            ready = false;
            for not in &failed {
                // A shared answer was logged by the probe that found it.
                if not.fresh {
                    tracing::warn!(check = not.check, detail = %not.detail, "readiness check failed");
                }
                // A check that found a wrong configuration keeps saying so
                // (a missing table also fails to answer).
                let outcome = if not.unreachable {
                    "unreachable"
                } else {
                    "failed"
                };
                let entry = checks.entry(not.check.to_string()).or_insert(outcome);
                if *entry != "failed" {
                    *entry = outcome;
                }
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

/// KMS as a whole: `ok` while a region's key checks ok (or none has been
/// checked yet); `failed` when every region's key is wrong (no
/// credentials, say); else `unreachable`.
fn kms_as_a_whole(checks: &BTreeMap<String, &str>) -> &'static str {
    let regions: Vec<&str> = checks
        .iter()
        .filter(|(name, _)| name.starts_with("kms."))
        .map(|(_, outcome)| *outcome)
        .collect();
    if regions.is_empty() || regions.contains(&"ok") {
        "ok"
    } else if regions.iter().all(|o| *o == "failed") {
        "failed"
    } else {
        "unreachable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_as_a_whole_follows_its_regions() {
        let of = |regions: &[&'static str]| {
            let checks: BTreeMap<String, &str> = regions
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("kms.r{i}"), *o))
                .chain([("store".to_string(), "failed")])
                .collect();
            kms_as_a_whole(&checks)
        };
        assert_eq!(of(&[]), "ok");
        assert_eq!(of(&["failed", "ok", "breaker_open"]), "ok");
        assert_eq!(of(&["failed", "failed"]), "failed", "no credentials");
        assert_eq!(of(&["failed", "breaker_open"]), "unreachable");
        assert_eq!(of(&["unreachable", "unreachable"]), "unreachable");
    }
}
