//! The Prometheus registry and every metric rkms exports. Names and labels
//! are a public contract (DESIGN.md): add, never rename. Label values are
//! bounded: routes are matched route templates, regions come from config.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// From a 100 µs cache hit through multi-second KMS timeouts.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub kms_requests: IntCounterVec,
    pub kms_duration: HistogramVec,
    pub store_requests: IntCounterVec,
    pub store_duration: HistogramVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_stale_served: IntCounter,
    pub keys_created: IntCounter,
    pub create_conflicts: IntCounter,
    pub region_up: IntGaugeVec,
    pub records_repaired: IntCounter,
    pub integrity_failures: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let region_up = IntGaugeVec::new(
            Opts::new(
                "rkms_region_up",
                "1 while the region's breaker is closed or probing, 0 while open",
            ),
            &["region"],
        )?;
        r.register(Box::new(region_up.clone()))?;
        Ok(Self {
            http_requests: counter_vec(
                &r,
                "rkms_http_requests_total",
                "HTTP requests by matched route and status",
                &["route", "status"],
            )?,
            http_duration: histogram_vec(
                &r,
                "rkms_http_request_duration_seconds",
                "HTTP request latency by matched route",
                &["route"],
            )?,
            kms_requests: counter_vec(
                &r,
                "rkms_kms_requests_total",
                "KMS calls by region, operation and outcome",
                &["region", "op", "outcome"],
            )?,
            kms_duration: histogram_vec(
                &r,
                "rkms_kms_request_duration_seconds",
                "KMS call latency by region and operation",
                &["region", "op"],
            )?,
            store_requests: counter_vec(
                &r,
                "rkms_store_requests_total",
                "Store calls by operation and outcome",
                &["op", "outcome"],
            )?,
            store_duration: histogram_vec(
                &r,
                "rkms_store_request_duration_seconds",
                "Store call latency by operation",
                &["op"],
            )?,
            cache_hits: counter(
                &r,
                "rkms_cache_hits_total",
                "Reads answered from the plaintext cache",
            )?,
            cache_misses: counter(
                &r,
                "rkms_cache_misses_total",
                "Reads that had to resolve the key (store and KMS)",
            )?,
            cache_stale_served: counter(
                &r,
                "rkms_cache_stale_served_total",
                "Expired cache entries served because every region failed (stale_if_error)",
            )?,
            keys_created: counter(&r, "rkms_keys_created_total", "New data keys stored")?,
            create_conflicts: counter(
                &r,
                "rkms_create_conflicts_total",
                "Creates that lost the conditional put to another writer",
            )?,
            region_up,
            records_repaired: counter(
                &r,
                "rkms_records_repaired_total",
                "Records that gained a missing region's ciphertext",
            )?,
            integrity_failures: counter(
                &r,
                "rkms_integrity_failures_total",
                "Ciphertexts KMS refused as invalid or bound to another id",
            )?,
            registry: r,
        })
    }

    /// The text exposition format (0.0.4).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    pub fn content_type() -> &'static str {
        "text/plain; version=0.0.4; charset=utf-8"
    }
}
