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

use crate::auth::Authenticator;
use crate::broker::{BrokerSettings, KeyBroker};
use crate::config::{KmsProvider, Settings, StoreBackend};
use crate::domain::Region;
use crate::kms::aws::AwsKms;
use crate::kms::local::LocalKms;
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::routes::{self, AppState};
use crate::store::dynamodb::DynamoStore;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    settings: Settings,
}

impl Application {
    /// Build every backend named in `settings` and bind the listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let regions: Vec<crate::domain::Region> = settings
            .kms
            .regions
            .iter()
            .map(crate::domain::Region::new)
            .collect();
        let kms: Arc<dyn Kms> = match settings.kms.provider {
            KmsProvider::Local => {
                let path = settings.kms.local.keyring.clone();
                let local =
                    tokio::task::spawn_blocking(move || LocalKms::open(&path, &regions)).await??;
                Arc::new(local)
            }
            KmsProvider::Aws => Arc::new(AwsKms::new(&settings.kms).await),
        };
        let store: Arc<dyn Store> = match settings.store.backend {
            StoreBackend::Sqlite => {
                let path = settings.store.sqlite.path.clone();
                let timeout = Duration::from_millis(settings.store.call_timeout_ms);
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, timeout))
                    .await?
                    .with_context(|| {
                        format!(
                            "cannot open store.sqlite.path {}",
                            settings.store.sqlite.path.display()
                        )
                    })?;
                Arc::new(store)
            }
            StoreBackend::Dynamodb => {
                Arc::new(DynamoStore::new(&settings.store.dynamodb, &settings.store).await)
            }
            StoreBackend::Memory => Arc::new(MemoryStore::new()),
        };
        Self::build_with(settings, kms, store).await
    }

    /// Build around given backends (tests inject fault wrappers here).
    pub async fn build_with(
        settings: Settings,
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
        let broker = KeyBroker::new(kms, store, broker_settings(&settings), Arc::clone(&metrics));
        let state = AppState {
            broker,
            metrics,
            auth: Arc::new(Authenticator::new(&settings.auth)),
            draining: Arc::new(AtomicBool::new(false)),
            request_timeout: settings.request_timeout(),
        };
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
            listener,
            metrics_listener,
            state,
            settings,
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
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(rx))
                    .await
                {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        });

        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "rkms serving");
        let app = routes::router(self.state.clone());
        let server =
            axum::serve(self.listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
        let deadline = {
            let rx = stop_rx.clone();
            async move {
                stopped(rx).await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(deadline);
        let served = tokio::select! {
            result = server => result.context("server failed"),
            () = &mut deadline => {
                tracing::warn!("shutdown grace period over; exiting with requests still in flight");
                Ok(())
            }
        };
        // Background work (KMS calls finishing, repairs) gets what is left
        // of the grace period.
        tokio::select! {
            () = self.state.broker.shutdown() => {}
            () = &mut deadline => tracing::warn!("shutdown grace period over; background work abandoned"),
        }
        if let Some(task) = metrics_server {
            task.abort();
            let _ = task.await;
        }
        served?;
        tracing::info!("rkms stopped");
        Ok(())
    }
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

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            futures::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                futures::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
