//! Build the application from settings (the only `match` on backend kinds),
//! bind its listeners, serve, and shut down gracefully.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::broker::{BrokerSettings, KeyBroker};
use crate::config::{KmsProvider, Settings, StoreBackend};
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
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
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
        let broker = KeyBroker::new(
            kms,
            store,
            BrokerSettings::from(&settings),
            Arc::clone(&metrics),
        );
        let state = AppState {
            broker,
            metrics,
            auth: Arc::new(Authenticator::new(&settings.auth)),
            draining: Arc::new(AtomicBool::new(false)),
            request_timeout: settings.request_timeout(),
        };
        let listener = TcpListener::bind(settings.listen_addr())
            .await
            .with_context(|| {
                format!("cannot listen on server.listen {}", settings.server.listen)
            })?;
        let metrics_listener = match settings.metrics_addr() {
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

        if let Some(listener) = self.metrics_listener {
            let app = routes::metrics_router(self.state.clone());
            let rx = stop_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped(rx))
                    .await
                {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            });
        }

        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, "rkms serving");
        let app = routes::router(self.state.clone());
        let server =
            axum::serve(self.listener, app).with_graceful_shutdown(stopped(stop_rx.clone()));
        let deadline = async {
            stopped(stop_rx).await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = server => result.context("server failed")?,
            () = deadline => tracing::warn!("shutdown grace period over; exiting with requests still in flight"),
        }
        tracing::info!("rkms stopped");
        Ok(())
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
