//! `make bench`: drive the release server with wrk over keep-alive
//! connections and print every figure side by side, with a minimal axum
//! server from this file as the machine's ceiling in the same run. The table
//! also goes to BENCHMARKS.md with the date and `nproc`.
//!
//! Scenarios: warm reads (embedded default), the same at about half of peak
//! load, cold reads (cache off), creates, and the AWS provider against moto
//! with the preferred region healthy, frozen before its breaker opens, and
//! frozen after.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark run stops loudly

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/aws/moto.rs"]
#[allow(dead_code)]
mod moto;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const DURATION_S: u64 = 10;
const PEAK_CONNECTIONS: u32 = 64;
const EXISTING_IDS: usize = 1000;
const AWS_IDS: usize = 100;
const AWS_CONNECTIONS: u32 = 4;
const HEDGE_AFTER_MS: u64 = 250;

#[derive(Debug, Clone, Default)]
struct Row {
    name: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,

    kms_per_request: Option<f64>,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/wrk/bench.lua")
}

/// Run wrk against `base` for the standard duration.
fn wrk(name: &str, base: &str, mode: &str, ids: usize, connections: u32, delay_ms: u32) -> Row {
    wrk_for(name, base, mode, ids, connections, delay_ms, DURATION_S)
}

/// Run wrk against `base` and parse the script's RESULT line.
fn wrk_for(
    name: &str,
    base: &str,
    mode: &str,
    ids: usize,
    connections: u32,
    delay_ms: u32,
    secs: u64,
) -> Row {
    let threads = connections.clamp(1, 2);
    let out = Command::new("wrk")
        .args([
            &format!("-t{threads}"),
            &format!("-c{connections}"),
            &format!("-d{secs}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(script())
        .arg(base)
        .env("BENCH_MODE", mode)
        .env("BENCH_IDS", ids.to_string())
        .env("BENCH_DELAY_MS", delay_ms.to_string())
        .output()
        .expect("wrk is needed: `make bench` installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Value = serde_json::from_str(line).unwrap();
    let requests = v["requests"].as_u64().unwrap();
    let secs = v["duration_us"].as_f64().unwrap() / 1e6;
    Row {
        name: name.to_owned(),
        rps: requests as f64 / secs,
        p50_ms: v["p50_us"].as_f64().unwrap() / 1000.0,
        p99_ms: v["p99_us"].as_f64().unwrap() / 1000.0,
        p999_ms: v["p999_us"].as_f64().unwrap() / 1000.0,
        errors: v["errors"].as_u64().unwrap(),

        kms_per_request: None,
    }
}

/// Sum of a metric over all its series.
fn metric_sum(text: &str, name: &str, must_contain: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| l.contains(must_contain))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn counters(client: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (
        metric_sum(&text, "rkms_kms_requests_total", ""),
        metric_sum(&text, "rkms_http_requests_total", "route=\"/key\""),
    )
}

/// Run a scenario and attach KMS calls per request from /metrics.
async fn measured(
    client: &reqwest::Client,
    name: &str,
    base: &str,
    mode: &str,
    ids: usize,
    conns: u32,
    delay: u32,
) -> Row {
    let (kms0, req0) = counters(client, base).await;
    let mut row = tokio::task::block_in_place(|| wrk(name, base, mode, ids, conns, delay));
    let (kms1, req1) = counters(client, base).await;
    if req1 > req0 {
        row.kms_per_request = Some((kms1 - kms0) / (req1 - req0));
    }
    row
}

fn rkms(dir: &Path, env: &[(String, String)]) -> common::Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rkms"));
    cmd.current_dir(dir)
        .env_remove("RKMS_CONFIG")
        .env("RKMS__SERVER__LISTEN", "127.0.0.1:0")
        .env("RKMS__LOG__FORMAT", "json")
        // Production-like logging: warnings, the audit trail, the startup line.
        .env("RUST_LOG", "warn,audit=info,rkms::startup=info")
        .env("RKMS__KMS__HEDGE_AFTER_MS", HEDGE_AFTER_MS.to_string())
        .envs(env.iter().cloned());
    common::start_logging_to(cmd, &dir.join("rkms.log"))
}

async fn precreate(client: &reqwest::Client, base: &str, n: usize) {
    use futures::StreamExt;
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| async move {
            let res = client
                .get(format!("{base}/key?id=bench%2F{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), 200, "precreate bench/{i}");
        })
        .await;
}

async fn baseline_server() -> String {
    // Same size as an rkms answer for an id like "bench/123".
    let body = format!(
        "{{\"id\":\"bench/123\",\"key\":\"{}\"}}",
        "A".repeat(43) + "="
    );
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "application/json")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let client = reqwest::Client::new();
    let mut rows = Vec::new();

    eprintln!("baseline ...");
    let baseline_url = baseline_server().await;
    let baseline = tokio::task::block_in_place(|| {
        wrk(
            "baseline: fixed JSON from memory",
            &baseline_url,
            "fixed",
            1,
            PEAK_CONNECTIONS,
            0,
        )
    });
    rows.push(baseline.clone());

    eprintln!("embedded default: warm, half load, cold, creates ...");
    let dir = tempfile::tempdir().unwrap();
    let server = rkms(dir.path(), &[]);
    precreate(&client, &server.base, EXISTING_IDS).await;
    // One pass to warm the cache for every id.
    precreate(&client, &server.base, EXISTING_IDS).await;
    let warm = measured(
        &client,
        "warm reads, 1,000 ids (cache)",
        &server.base,
        "existing",
        EXISTING_IDS,
        PEAK_CONNECTIONS,
        0,
    )
    .await;
    // wrk cannot fix a rate; paced connections (1 ms pause per request) can.
    // Calibrate what one paced connection offers, then open enough of them
    // for about half of the warm peak.
    let probe = tokio::task::block_in_place(|| {
        wrk_for("probe", &server.base, "existing", EXISTING_IDS, 4, 1, 3)
    });
    let per_conn = (probe.rps / 4.0).max(1.0);
    let half_conns = ((warm.rps / 2.0) / per_conn).round().clamp(1.0, 512.0) as u32;
    let half = measured(
        &client,
        &format!("warm reads at ~half peak ({half_conns} conns, 1 ms pause)"),
        &server.base,
        "existing",
        EXISTING_IDS,
        half_conns,
        1,
    )
    .await;
    let baseline_half = tokio::task::block_in_place(|| {
        wrk(
            &format!("baseline at the same pacing ({half_conns} conns, 1 ms pause)"),
            &baseline_url,
            "fixed",
            1,
            half_conns,
            1,
        )
    });
    let creates = measured(
        &client,
        "creates of new ids",
        &server.base,
        "new",
        0,
        PEAK_CONNECTIONS,
        0,
    )
    .await;
    common::stop(server);
    let cold_server = rkms(
        dir.path(),
        &env(&[("RKMS__CACHE__TTL_SECONDS", "0".into())]),
    );
    let cold = measured(
        &client,
        "cold reads, cache off",
        &cold_server.base,
        "existing",
        EXISTING_IDS,
        PEAK_CONNECTIONS,
        0,
    )
    .await;
    common::stop(cold_server);
    rows.extend([
        warm.clone(),
        half.clone(),
        baseline_half.clone(),
        cold.clone(),
        creates,
    ]);

    eprintln!("AWS provider against moto ...");
    let cloud = moto::Cloud::start(true).await;
    let aws_dir = tempfile::tempdir().unwrap();
    let mut aws_env = cloud.env();
    aws_env.push(("RKMS__CACHE__TTL_SECONDS".into(), "0".into()));
    aws_env.retain(|(k, _)| k != "RKMS__KMS__HEDGE_AFTER_MS" && k != "RKMS__KMS__CALL_TIMEOUT_MS");
    aws_env.push(("RKMS__KMS__CALL_TIMEOUT_MS".into(), "2000".into()));
    let healthy_server = rkms(aws_dir.path(), &aws_env);
    precreate(&client, &healthy_server.base, AWS_IDS).await;
    let healthy = measured(
        &client,
        "AWS/moto cold reads, preferred healthy",
        &healthy_server.base,
        "existing",
        AWS_IDS,
        AWS_CONNECTIONS,
        0,
    )
    .await;
    common::stop(healthy_server);

    let mut never_opens = aws_env.clone();
    never_opens.push(("RKMS__KMS__BREAKER_FAILURES".into(), "1000000".into()));
    let before_server = rkms(aws_dir.path(), &never_opens);
    cloud.moto(moto::REGIONS[0]).freeze();
    let before = measured(
        &client,
        "AWS/moto preferred frozen, breaker closed",
        &before_server.base,
        "existing",
        AWS_IDS,
        AWS_CONNECTIONS,
        0,
    )
    .await;
    cloud.moto(moto::REGIONS[0]).thaw();
    common::stop(before_server);

    let mut opens = aws_env.clone();
    opens.push(("RKMS__KMS__BREAKER_FAILURES".into(), "3".into()));
    opens.push(("RKMS__KMS__BREAKER_OPEN_MS".into(), "600000".into()));
    let after_server = rkms(aws_dir.path(), &opens);
    cloud.moto(moto::REGIONS[0]).freeze();
    for i in 0..5 {
        let _ = client
            .get(format!("{}/key?id=bench%2F{i}", after_server.base))
            .send()
            .await;
    }
    let after = measured(
        &client,
        "AWS/moto preferred frozen, breaker open",
        &after_server.base,
        "existing",
        AWS_IDS,
        AWS_CONNECTIONS,
        0,
    )
    .await;
    cloud.moto(moto::REGIONS[0]).thaw();
    common::stop(after_server);
    rows.extend([healthy.clone(), before.clone(), after.clone()]);

    let report = render(
        &rows,
        &baseline,
        &warm,
        &half,
        &baseline_half,
        &cold,
        &healthy,
        &before,
        &after,
    );
    println!("{report}");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    std::fs::write(&path, report).unwrap();
    eprintln!("written to {}", path.display());
}

#[allow(clippy::too_many_arguments)]
fn render(
    rows: &[Row],
    baseline: &Row,
    warm: &Row,
    half: &Row,
    baseline_half: &Row,
    cold: &Row,
    healthy: &Row,
    before: &Row,
    after: &Row,
) -> String {
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "# rkms benchmarks\n");
    let _ = writeln!(
        out,
        "Run by `make bench` on {date}, nproc = {nproc}. wrk over keep-alive connections, {DURATION_S} s per scenario; \
         {PEAK_CONNECTIONS} connections at peak, {AWS_CONNECTIONS} against moto. Release build. \
         The baseline is a minimal axum server answering a fixed JSON body of the same size from memory, \
         measured in the same run. KMS calls per request come from rkms's own /metrics.\n"
    );
    let _ = writeln!(
        out,
        "| scenario | req/s | ÷ baseline | p50 ms | p99 ms | p99.9 ms | errors | KMS calls/req |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} | {} | {} |",
            r.name,
            r.rps,
            r.rps / baseline.rps,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors,
            r.kms_per_request.map_or("–".into(), |k| format!("{k:.2}"))
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let kms = |r: &Row| r.kms_per_request.unwrap_or(f64::NAN);
    let normal_call = healthy.p50_ms;
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | measured | |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| warm throughput >= 0.7 x baseline | {:.2} x | {} |",
        warm.rps / baseline.rps,
        verdict(warm.rps / baseline.rps >= 0.7)
    );
    let _ = writeln!(
        out,
        "| warm p99 <= 1 ms at about half of peak load ({:.0} req/s) | {:.3} ms (baseline at the same pacing: {:.3} ms) | {} |",
        half.rps,
        half.p99_ms,
        baseline_half.p99_ms,
        verdict(half.p99_ms <= 1.0)
    );
    let _ = writeln!(
        out,
        "| KMS calls per request 0.00 warm | {:.2} | {} |",
        kms(warm),
        verdict(kms(warm) == 0.0)
    );
    let _ = writeln!(
        out,
        "| KMS calls per request 1.00 cold, preferred healthy (local; at most 1) | {:.2} | {} |",
        kms(cold),
        verdict(kms(cold) <= 1.0 && kms(cold) >= 0.9)
    );
    let _ = writeln!(
        out,
        "| KMS calls per request 1.00 cold, preferred healthy (moto; at most 1) | {:.2} | {} |",
        kms(healthy),
        verdict(kms(healthy) <= 1.0 && kms(healthy) >= 0.9)
    );
    let bound = HEDGE_AFTER_MS as f64 + 2.0 * normal_call;
    let _ = writeln!(out, "| frozen preferred, breaker closed: p99 <= hedge_after ({HEDGE_AFTER_MS} ms) + 2 x a normal call ({normal_call:.1} ms) = {bound:.1} ms | {:.1} ms | {} |", before.p99_ms, verdict(before.p99_ms <= bound));
    let _ = writeln!(
        out,
        "| frozen preferred, breaker open: p99 <= 1.2 x healthy p99 ({:.1} ms) | {:.1} ms | {} |",
        1.2 * healthy.p99_ms,
        after.p99_ms,
        verdict(after.p99_ms <= 1.2 * healthy.p99_ms)
    );
    let _ = writeln!(out, "\nA normal call is the healthy moto scenario's p50 (one DynamoDB read plus one KMS Decrypt). Cold reads can cost slightly under one KMS call per request: concurrent requests for the same id share one resolution (single-flight). Every scenario logs the audit trail (one JSON event per request), as production does. Figures from one run on a shared 2-core machine where wrk, the servers and moto compete for the same cores; compare the ratios, not the absolute numbers.");
    out
}
