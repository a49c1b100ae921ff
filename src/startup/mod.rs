//! Build the application from settings (the only `match` on backend kinds),
//! bind its listeners, serve, and shut down gracefully.
//!
//! Must not: know request semantics (routes and the broker do).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::auth::Authenticator;
use crate::broker::{BrokerSettings, KeyBroker};
use crate::config::{AuthMode, IdPattern, Preflight, Settings};
use crate::domain::Region;
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::preflight::{self, Health};
use crate::routes::{self, AppState, Limits, Shared};
use crate::store::Store;
use crate::tls::Tls;

mod backends;
mod identity;
mod serve;
mod stored;
mod watchdog;
pub use backends::{backends, store, Access};
pub use identity::{same_store, store_identity};
use serve::serve;

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// Connections each listener holds at once.
    connections: serve::ConnectionLimits,
    state: AppState,
    settings: Settings,
    /// Re-runs the dependency checks for `/readyz`.
    monitor: tokio::task::JoinHandle<()>,
    /// HTTPS on `server.listen` when `[server.tls]` is set.
    tls: Option<Tls>,
}

/// What preflight checks, from the settings and the built backends.
pub fn dependencies(
    settings: &Settings,
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
) -> preflight::Dependencies {
    preflight::Dependencies {
        kms,
        store,
        regions: settings.kms.regions.iter().map(Region::new).collect(),
        store_name: store_identity(settings),
        store_settings: match settings.store.backend {
            crate::config::StoreBackend::Dynamodb => {
                "check store.dynamodb.table, store.dynamodb.region and store.dynamodb.endpoint"
            }
            crate::config::StoreBackend::Sqlite => "check store.sqlite.path",
            crate::config::StoreBackend::Memory => "check store.backend",
        },
        kms_timeout: Duration::from_millis(settings.kms.call_timeout_ms),
        store_timeout: Duration::from_millis(settings.store.call_timeout_ms),
    }
}

/// One line naming what this process serves with.
fn log_summary(settings: &Settings) {
    let auth = &settings.auth;
    let clients = auth.clients.len();
    tracing::info!(
        provider = ?settings.kms.provider,
        regions = %settings.kms.regions.join(","),
        min_regions_on_create = settings.kms.min_regions_on_create,
        store = %store_identity(settings),
        cache = %if settings.cache.ttl_seconds == 0 {
            "off".to_string()
        } else {
            format!("ttl {}s, {} entries", settings.cache.ttl_seconds, settings.cache.max_entries)
        },
        auth = %format!("{:?}, {clients} clients", auth.mode).to_ascii_lowercase(),
        tls = settings.server.tls.cert.is_some(),
        "rkms starting"
    );
    if auth.mode == AuthMode::None && !settings.server.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %settings.server.listen,
            "auth.mode = \"none\" on a non-loopback address (auth.allow_unauthenticated = true): anyone who can reach rkms gets any key"
        );
    }
    let plaintext = settings.server.tls.cert.is_none();
    if plaintext && !settings.server.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %settings.server.listen,
            "plain HTTP on a non-loopback address (server.allow_plaintext = true): data keys and client tokens cross the network unencrypted unless something else encrypts them"
        );
    }
    if !plaintext && settings.server.allow_plaintext {
        tracing::warn!(
            "server.allow_plaintext = true has no effect with [server.tls]: rkms serves HTTPS; remove it"
        );
    }
    if auth.mode != AuthMode::None && auth.allow_unauthenticated {
        tracing::warn!(
            "auth.allow_unauthenticated = true has no effect unless auth.mode = \"none\": every caller must authenticate; remove it"
        );
    }
    // "tenant1*" also grants tenant10/...: likely meant as tenant1/*.
    for (i, client) in auth.clients.iter().enumerate() {
        for pattern in &client.ids {
            if let IdPattern::Prefix(prefix) = pattern {
                if prefix.chars().last().is_some_and(char::is_alphanumeric) {
                    tracing::warn!(
                        client = %client.name,
                        pattern = %format!("{prefix}*"),
                        "auth.clients[{i}].ids: this glob grants every id that starts with {prefix:?}, {prefix}0 and {prefix}-x among them; end the prefix with a separator ({prefix}/*) if only ids under it are meant"
                    );
                }
            }
        }
    }
    if auth.mode != AuthMode::Mtls && settings.server.tls.client_ca.is_some() {
        tracing::info!(
            "server.tls.client_ca is set outside auth.mode = \"mtls\": a certificate a client presents must verify, but none is required and certificates identify no one"
        );
    }
}

/// What clients meet: the TLS files and the listeners. Connections that
/// arrive before the server is built wait in the listen queue.
struct Front {
    tls: Option<Tls>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
}

impl Front {
    async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let tls = Tls::from_settings(&settings.server.tls)?;
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on server.listen {}", settings.server.listen)
            })?;
        let metrics_listener = match settings.server.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on server.metrics_listen {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            tls,
            listener,
            metrics_listener,
        })
    }
}

impl Application {
    /// Read the TLS files and bind the listeners, then build every backend
    /// named in `settings` and check them. In that order: a start refused
    /// for a TLS file or a port taken leaves no new store or keyring behind.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let front = Front::open(&settings).await?;
        let (kms, store) = backends(&settings, Access::SERVE).await?;
        Self::assemble(settings, front, kms, store).await
    }

    /// Build around given backends (tests inject fault wrappers here).
    pub async fn build_with(
        settings: Settings,
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        let front = Front::open(&settings).await?;
        Self::assemble(settings, front, kms, store).await
    }

    async fn assemble(
        settings: Settings,
        front: Front,
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        log_summary(&settings);
        let deps = dependencies(&settings, Arc::clone(&kms), Arc::clone(&store));
        let checks = preflight::run(&deps).await;
        for check in &checks {
            if check.passed() {
                tracing::info!(check = %check.name, result = %check.line(), "preflight");
            } else if check.transient {
                tracing::warn!(check = %check.name, result = %check.line(), "preflight: unreachable now; starting anyway, rechecked in the background");
            } else {
                tracing::error!(check = %check.name, result = %check.line(), "preflight");
            }
        }
        // Only a wrong configuration stops a start; an outage does not.
        let failed: Vec<String> = checks
            .iter()
            .filter(|c| c.broken())
            .filter_map(|c| c.result.as_ref().err().map(|p| format!("{}: {p}", c.name)))
            .collect();
        if !failed.is_empty() && settings.server.preflight == Preflight::Strict {
            anyhow::bail!(
                "preflight failed (server.preflight = \"strict\"): {}",
                failed.join("; ")
            );
        }
        if !failed.is_empty() {
            tracing::warn!(
                failed = failed.len(),
                "starting with failed preflight checks (server.preflight = \"warn\"); /readyz fails until they pass"
            );
        }
        let health = Arc::new(Health::new(&checks));
        let monitor = health.monitor(deps);

        let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
        let kms_outcomes: Vec<&str> = std::iter::once("ok")
            .chain(crate::kms::KmsErrorKind::ALL.map(|k| k.as_str()))
            .collect();
        let unidentified = crate::auth::AuthFailure::ALL.map(|f| f.reason());
        metrics.start_at_zero(&settings.kms.regions, &kms_outcomes, &unidentified);
        health.export(metrics.dependency_check_failed.clone());
        let broker = KeyBroker::new(kms, store, broker_settings(&settings), Arc::clone(&metrics));
        let state = AppState::new(Shared {
            broker,
            metrics,
            auth: Arc::new(Authenticator::new(&settings.auth)),
            draining: Arc::new(AtomicBool::new(false)),
            request_timeout: settings.request_timeout(),
            health,
            limits: Limits {
                in_flight: Arc::new(Semaphore::new(
                    settings.server.max_concurrent_requests as usize,
                )),
                max_uri_bytes: settings.server.max_uri_bytes,
                max_header_bytes: settings.server.max_header_bytes,
            },
        });
        Ok(Self {
            connections: serve::connection_limits(settings.server.max_connections),
            listener: front.listener,
            metrics_listener: front.metrics_listener,
            state,
            settings,
            monitor,
            tls: front.tls,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn broker(&self) -> KeyBroker {
        self.state.broker.clone()
    }

    /// Serve until `shutdown` completes; then stop accepting, fail
    /// readiness, and give in-flight requests `server.shutdown_grace_ms`.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let grace = self.settings.shutdown_grace();
        let draining = Arc::clone(&self.state.draining);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutdown requested: draining in-flight requests"
            );
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };

        let metrics_server = self.metrics_listener.map(|listener| {
            let app = routes::metrics_router(self.state.clone());
            let rx = stop_rx.clone();
            let metrics = Arc::clone(&self.state.metrics);
            tokio::spawn(serve(
                listener,
                app,
                None,
                self.connections.metrics,
                metrics,
                stopped(rx),
                serve::last_call(grace),
            ))
        });

        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, tls = self.tls.is_some(), "rkms serving");
        let app = routes::router(self.state.clone());
        let reload_failed = &self.state.metrics.reload_failed;
        let reloader = self
            .tls
            .as_ref()
            .map(|tls| tls.watch(reload_failed.with_label_values(&["server.tls"])));
        let token_files = watch_token_files(
            &self.state.auth,
            reload_failed.with_label_values(&["auth.token_files"]),
        );
        let server = serve(
            self.listener,
            app,
            self.tls,
            self.connections.api,
            Arc::clone(&self.state.metrics),
            stopped(stop_rx.clone()),
            serve::last_call(grace),
        );
        let deadline = {
            let rx = stop_rx.clone();
            async move {
                stopped(rx).await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(deadline);
        let grace_over = tokio::select! {
            () = server => false,
            () = &mut deadline => {
                tracing::warn!("shutdown grace period over; exiting with requests still in flight");
                true
            }
        };
        // Background work (KMS calls finishing, repairs) gets what is left
        // of the grace period. The deadline, once passed, is not waited on
        // again: a finished future must not be polled.
        if grace_over {
            tracing::warn!("shutdown grace period over; background work abandoned");
        } else {
            tokio::select! {
                () = self.state.broker.shutdown() => {}
                () = &mut deadline => tracing::warn!("shutdown grace period over; background work abandoned"),
            }
        }
        self.monitor.abort();
        for task in [reloader, token_files].into_iter().flatten() {
            task.abort();
        }
        if let Some(task) = metrics_server {
            task.abort();
            let _ = task.await;
        }
        tracing::info!("rkms stopped");
        Ok(())
    }
}

/// How often token files are read again.
const TOKEN_FILES_EVERY: Duration = Duration::from_secs(5);

/// Re-read the clients' token files every few seconds, when some client
/// has one, so a rotated token applies without a restart.
fn watch_token_files(
    auth: &Arc<Authenticator>,
    refused: prometheus::IntGauge,
) -> Option<tokio::task::JoinHandle<()>> {
    if !auth.has_token_files() {
        return None;
    }
    let auth = Arc::clone(auth);
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(TOKEN_FILES_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is now: the files were just read at start.
        every.tick().await;
        loop {
            every.tick().await;
            let auth = Arc::clone(&auth);
            // A file on a stalled volume blocks its reader, not a worker.
            if let Ok(files) = tokio::task::spawn_blocking(move || auth.reload_token_files()).await
            {
                refused.set(i64::try_from(files).unwrap_or(i64::MAX));
            }
        }
    }))
}

/// The broker's typed tuning, from the config file's fields.
fn broker_settings(s: &Settings) -> BrokerSettings {
    BrokerSettings {
        regions: s.kms.regions.iter().map(Region::new).collect(),
        min_regions_on_create: s.kms.min_regions_on_create,
        data_key_bytes: s.keys.data_key_bytes,
        call_timeout: Duration::from_millis(s.kms.call_timeout_ms),
        hedge_after: Duration::from_millis(s.kms.hedge_after_ms),
        hedge_budget_percent: s.kms.hedge_budget_percent,
        hedge_budget_burst: s.kms.hedge_budget_burst,
        max_in_flight_per_region: s.kms.max_in_flight_per_region as usize,
        breaker_failures: s.kms.breaker_failures,
        breaker_open: Duration::from_millis(s.kms.breaker_open_ms),
        store_timeout: Duration::from_millis(s.store.call_timeout_ms),
        cache_ttl: Duration::from_secs(s.cache.ttl_seconds),
        cache_max_entries: s.cache.max_entries,
        stale_if_error: Duration::from_secs(s.cache.stale_if_error_seconds),
    }
}

/// Completes on ctrl-c, SIGTERM or SIGHUP. rkms has no config reload (TLS
/// files are watched on their own), so a hangup, whether a terminal closing
/// or an operator expecting a reload, drains and exits like SIGTERM instead
/// of killing the process with requests in flight and log lines unwritten.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            futures::future::pending::<()>().await;
        }
    };
    let signal = |kind, name: &'static str| async move {
        match tokio::signal::unix::signal(kind) {
            Ok(mut s) => {
                s.recv().await;
                tracing::info!(signal = name, "signal received");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                futures::future::pending::<()>().await;
            }
        }
    };
    use tokio::signal::unix::SignalKind;
    tokio::select! {
        () = ctrl_c => {},
        () = signal(SignalKind::terminate(), "SIGTERM") => {},
        () = signal(SignalKind::hangup(), "SIGHUP") => {},
    }
}
