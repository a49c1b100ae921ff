//! The Prometheus registry and every metric rkms exports. Names and labels
//! are a public contract (DESIGN.md): add, never rename. Label values are
//! bounded: routes are matched route templates, regions come from config.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// From a cache hit (tens of microseconds) through multi-second KMS
/// timeouts.
const BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A closed set of label values: an enum, every value in `ALL` (shown at
/// zero from the start), and each value's label.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label),+
                }
            }
        }
    };
}

label_values! {
    /// The `op` label of `rkms_kms_requests_total` and
    /// `rkms_kms_request_duration_seconds`.
    KmsOp {
        GenerateDataKey => "generate_data_key",
        Decrypt => "decrypt",
        Encrypt => "encrypt",
    }
}

label_values! {
    /// The `op` label of `rkms_store_requests_total` and
    /// `rkms_store_request_duration_seconds`.
    StoreOp {
        Get => "get",
        PutIfAbsent => "put_if_absent",
        AddMissingRegions => "add_missing_regions",
    }
}

label_values! {
    /// The `outcome` label of `rkms_store_requests_total`.
    StoreOutcome {
        Ok => "ok",
        /// A record that does not parse.
        Corrupt => "corrupt",
        /// The store is not where the settings say (a missing table, no
        /// credentials, a file not writable): an operator must mend it.
        Failed => "failed",
        /// An outage: unreachable, throttled, busy.
        Unavailable => "unavailable",
        Error => "error",
        /// No answer within `store.call_timeout_ms`.
        Timeout => "timeout",
    }
}

label_values! {
    /// The `reason` label of `rkms_requests_shed_total`.
    Shed {
        /// `server.max_concurrent_requests` in flight (503).
        Overload => "overload",
        /// The client's rate limit (429).
        RateLimit => "rate_limit",
        /// A connection closed as accepted, past `server.max_connections`.
        Connections => "connections",
    }
}

label_values! {
    /// The `reason` labels of `rkms_auth_failures_total` other than a
    /// caller not identified (those are `auth::AuthFailure`'s).
    Refusal {
        /// 403: the client may not use this id.
        Forbidden => "forbidden",
        /// 403: the client may read this id but not create it.
        CreateDenied => "create_denied",
        /// A TLS handshake refused.
        Tls => "tls",
    }
}

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
    pub region_breaker: IntGaugeVec,
    pub kms_hedges: IntCounterVec,
    pub records_repaired: IntCounter,
    pub repairs_queued: IntGauge,
    pub integrity_failures: IntCounter,
    pub log_dropped: IntCounter,
    pub auth_failures: IntCounterVec,
    pub requests_shed: IntCounterVec,
    pub dependency_check_failed: IntGaugeVec,
    pub reload_failed: IntGaugeVec,
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

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
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
        let repairs_queued = IntGauge::new(
            "rkms_repairs_queued",
            "Records waiting for a missing region to be added",
        )?;
        r.register(Box::new(repairs_queued.clone()))?;
        Ok(Self {
            region_up: gauge_vec(
                &r,
                "rkms_region_up",
                "1 while the region's breaker is closed or half-open, 0 while open",
                &["region"],
            )?,
            dependency_check_failed: gauge_vec(
                &r,
                "rkms_dependency_check_failed",
                "1 while the dependency check (store, kms.<region>) last found a wrong configuration or resource, as /readyz says failed; 0 when it passed or could not reach it",
                &["check"],
            )?,
            reload_failed: gauge_vec(
                &r,
                "rkms_reload_failed",
                "Files re-read while rkms runs whose last change could not be taken, so what they held before is still in force: server.tls (certificate, key, client CA, revocation lists; 0 or 1) and auth.token_files (files)",
                &["source"],
            )?,
            region_breaker: gauge_vec(
                &r,
                "rkms_region_breaker",
                "1 for the region breaker's current state (closed, half_open, open)",
                &["region", "state"],
            )?,
            kms_hedges: counter_vec(
                &r,
                "rkms_kms_hedges_total",
                "KMS calls sent to this region because the preferred one was slow",
                &["region"],
            )?,
            repairs_queued,
            log_dropped: counter(
                &r,
                "rkms_log_dropped_total",
                "Log lines dropped because the log output could not keep up or failed",
            )?,
            auth_failures: counter_vec(
                &r,
                "rkms_auth_failures_total",
                "Requests refused 401 (missing, malformed, unknown, expired, ambiguous, untrusted), 403 (forbidden, create_denied), or TLS handshakes refused (tls)",
                &["reason"],
            )?,
            requests_shed: counter_vec(
                &r,
                "rkms_requests_shed_total",
                "Requests refused before any work: overload (503), rate_limit (429), or connections (a connection closed as accepted, past server.max_connections)",
                &["reason"],
            )?,
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

    /// Show the labelled counters an alert takes `increase()` of at zero
    /// from the start: a series that first appears at its first event
    /// shows no increase for it, and the alert misses the first burst.
    /// Auth refusals and sheds by reason; store calls by operation and
    /// outcome; KMS calls by region, operation and outcome.
    /// `kms_outcomes` are the outcome labels of a KMS call (`ok` and each
    /// kind of failure), `unidentified` the reasons a caller is not
    /// identified (401).
    pub fn start_at_zero(&self, regions: &[String], kms_outcomes: &[&str], unidentified: &[&str]) {
        let refusals = Refusal::ALL.iter().map(|r| r.as_str());
        for reason in unidentified.iter().copied().chain(refusals) {
            self.auth_failures.with_label_values(&[reason]);
        }
        for region in regions {
            self.kms_hedges.with_label_values(&[region.as_str()]);
        }
        for reason in Shed::ALL {
            self.requests_shed.with_label_values(&[reason.as_str()]);
        }
        for op in StoreOp::ALL {
            for outcome in StoreOutcome::ALL {
                self.store_requests
                    .with_label_values(&[op.as_str(), outcome.as_str()]);
            }
        }
        for region in regions {
            for op in KmsOp::ALL {
                for outcome in kms_outcomes {
                    self.kms_requests
                        .with_label_values(&[region.as_str(), op.as_str(), outcome]);
                }
            }
        }
    }

    /// A request turned away before its work.
    pub fn shed(&self, reason: Shed) {
        self.requests_shed
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// A request or handshake refused for a reason of [`Refusal`].
    pub fn refused(&self, reason: Refusal) {
        self.auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The text exposition format (0.0.4).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        // The log writer counts its drops itself (it must not depend on
        // metrics); bring the counter up to date at scrape time.
        let dropped = crate::telemetry::dropped_lines();
        let shown = self.log_dropped.get();
        if dropped > shown {
            self.log_dropped.inc_by(dropped - shown);
        }
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        String::from_utf8(buf).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }

    pub fn content_type() -> &'static str {
        "text/plain; version=0.0.4; charset=utf-8"
    }
}
