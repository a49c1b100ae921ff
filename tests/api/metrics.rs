//! /metrics: exact counters after a scripted sequence, and valid
//! Prometheus text (checked by promtool).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::helpers::{metric_value, spawn_app};

#[tokio::test]
async fn counters_match_a_scripted_sequence_exactly() {
    let app = spawn_app().await;
    // create, warm read, cold read, bad request, not found
    let made = app.key("m/1").await;
    assert_eq!(app.key("m/1").await, made);
    app.broker.clear_cache().await;
    assert_eq!(app.key("m/1").await, made);
    assert_eq!(app.get("/key?id=").await.0, 400);
    assert_eq!(app.get("/key?id=m/none&create=false").await.0, 404);

    let text = app.metrics().await;
    let v = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    assert_eq!(
        v(
            "rkms_http_requests_total",
            &[("route", "/key"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "rkms_http_requests_total",
            &[("route", "/key"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "rkms_http_requests_total",
            &[("route", "/key"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "rkms_http_request_duration_seconds_count",
            &[("route", "/key")]
        ),
        5.0
    );
    assert_eq!(v("rkms_cache_hits_total", &[]), 1.0);
    assert_eq!(v("rkms_cache_misses_total", &[]), 3.0);
    assert_eq!(v("rkms_keys_created_total", &[]), 1.0);
    assert_eq!(v("rkms_create_conflicts_total", &[]), 0.0);
    assert_eq!(
        v(
            "rkms_kms_requests_total",
            &[("op", "generate_data_key"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "rkms_kms_requests_total",
            &[("op", "encrypt"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        v(
            "rkms_kms_requests_total",
            &[("op", "decrypt"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "rkms_kms_requests_total",
            &[("region", "local-1"), ("op", "decrypt"), ("outcome", "ok")]
        ),
        1.0,
        "the preferred region decrypts"
    );
    assert_eq!(v("rkms_kms_request_duration_seconds_count", &[]), 4.0);
    assert_eq!(
        v(
            "rkms_store_requests_total",
            &[("op", "get"), ("outcome", "ok")]
        ),
        3.0,
        "three reads; the one create is not read back (SQLite's conditional put is atomic)"
    );
    assert_eq!(
        v(
            "rkms_store_requests_total",
            &[("op", "put_if_absent"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(v("rkms_store_request_duration_seconds_count", &[]), 4.0);
    assert_eq!(v("rkms_records_repaired_total", &[]), 0.0);
    for r in ["local-1", "local-2", "local-3"] {
        assert_eq!(v("rkms_region_up", &[("region", r)]), 1.0);
    }
    // No raw ids in labels: routes are templates.
    assert!(!text.contains("m/1") && !text.contains("m/none"));
    promtool_check(&text);
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (make test installs Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool exits 3 for lint warnings only; 1 means the text does not parse.
    assert_ne!(out.status.code(), Some(1), "promtool: {said}");
    assert!(!said.contains("error while linting"), "promtool: {said}");
}

/// The labelled counters alerts take `increase()` of are shown at zero
/// from the start, for every reason and every region, operation and
/// outcome: a series that first appears with its first event shows no
/// increase for that event, so the first burst of refusals or of
/// misconfigured KMS calls raised no alert.
#[tokio::test]
async fn alerting_counters_start_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::common::start(crate::process::command(dir.path()));
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "rkms_auth_failures_total{reason=\"forbidden\"} 0",
        "rkms_auth_failures_total{reason=\"unknown\"} 0",
        "rkms_requests_shed_total{reason=\"overload\"} 0",
        "rkms_requests_shed_total{reason=\"rate_limit\"} 0",
        "rkms_store_requests_total{op=\"get\",outcome=\"failed\"} 0",
        "rkms_dependency_check_failed{check=\"store\"} 0",
        "rkms_dependency_check_failed{check=\"kms.local-1\"} 0",
        "rkms_kms_requests_total{op=\"decrypt\",outcome=\"misconfigured\",region=\"local-3\"} 0",
        "rkms_kms_requests_total{op=\"generate_data_key\",outcome=\"integrity\",region=\"local-1\"} 0",
        "rkms_kms_requests_total{op=\"encrypt\",outcome=\"ok\",region=\"local-2\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line}: {text}");
    }
    // Every reason a 401 can give, and the reload gauge.
    for failure in rkms::auth::AuthFailure::ALL {
        let line = format!(
            "rkms_auth_failures_total{{reason=\"{}\"}} 0",
            failure.reason()
        );
        assert!(text.lines().any(|l| l == line), "no {line}: {text}");
    }
    // Every other refusal and shed reason, and every store operation and
    // outcome, from the lists the code counts them by.
    use rkms::metrics::{Refusal, Shed, StoreOp, StoreOutcome};
    let mut lines = Vec::new();
    for r in Refusal::ALL {
        lines.push(format!(
            "rkms_auth_failures_total{{reason=\"{}\"}} 0",
            r.as_str()
        ));
    }
    for r in Shed::ALL {
        lines.push(format!(
            "rkms_requests_shed_total{{reason=\"{}\"}} 0",
            r.as_str()
        ));
    }
    for op in StoreOp::ALL {
        for outcome in StoreOutcome::ALL {
            lines.push(format!(
                "rkms_store_requests_total{{op=\"{}\",outcome=\"{}\"}} 0",
                op.as_str(),
                outcome.as_str()
            ));
        }
    }
    for line in lines {
        assert!(text.lines().any(|l| l == line), "no {line}: {text}");
    }
    let line = "rkms_kms_hedges_total{region=\"local-2\"} 0";
    assert!(text.lines().any(|l| l == line), "no {line}: {text}");
    let line = "rkms_reload_failed{source=\"auth.token_files\"} 0";
    assert!(text.lines().any(|l| l == line), "no {line}: {text}");
    assert!(crate::common::stop(server).0.success());
}
