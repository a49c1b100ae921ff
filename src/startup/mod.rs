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
use crate::config::{AuthMode, KmsProvider, Preflight, Settings, StoreBackend};
use crate::domain::Region;
use crate::kms::aws::AwsKms;
use crate::kms::local::LocalKms;
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::preflight::{self, Health};
use crate::routes::{self, AppState, Limits, Shared};
use crate::store::dynamodb::DynamoStore;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::tls::Tls;

mod serve;
mod watchdog;
use serve::serve;

pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    /// Client connections `listener` holds at once.
    max_connections: usize,
    state: AppState,
    settings: Settings,
    /// Re-runs the dependency checks for `/readyz`.
    monitor: tokio::task::JoinHandle<()>,
    /// HTTPS on `server.listen` when `[server.tls]` is set.
    tls: Option<Tls>,
}

/// What a command may make or change as it opens the store and the
/// local keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Make the SQLite file (and its directory) when it is missing: the
    /// server's first start. Otherwise a missing file is an error, so a
    /// mistyped path is not taken for an empty store.
    pub make_store: bool,
    /// Make the local keyring, and add master keys for regions it lacks,
    /// each only where no stored record needs the one missing. Otherwise
    /// the keyring is read as it is, and a missing one is an error.
    pub add_master_keys: bool,
}

impl Access {
    /// The server: makes what a first start needs.
    pub const SERVE: Self = Self {
        make_store: true,
        add_master_keys: true,
    };
    /// Checks and reports (verify, dry runs, `check-config --connect`):
    /// make and change nothing.
    pub const READ: Self = Self {
        make_store: false,
        add_master_keys: false,
    };
}

/// Build the KMS and the store the settings name (no listener, no check).
/// The store comes first: the local KMS looks into it before making a
/// keyring or a master key.
pub async fn backends(
    settings: &Settings,
    access: Access,
) -> anyhow::Result<(Arc<dyn Kms>, Arc<dyn Store>)> {
    if access.make_store {
        refuse_new_store_beside_a_keyring(settings)?;
    }
    let store = store(settings, access.make_store).await?;
    let regions: Vec<Region> = settings.kms.regions.iter().map(Region::new).collect();
    let kms: Arc<dyn Kms> = match settings.kms.provider {
        KmsProvider::Local => {
            let path = settings.kms.local.keyring.clone();
            let local = if access.add_master_keys {
                refuse_new_master_keys_over_stored_keys(&path, &regions, store.as_ref()).await?;
                tokio::task::spawn_blocking(move || LocalKms::open(&path, &regions)).await??
            } else {
                tokio::task::spawn_blocking(move || LocalKms::open_existing(&path))
                    .await?
                    .context("kms.local.keyring")?
            };
            Arc::new(local)
        }
        KmsProvider::Aws => Arc::new(AwsKms::new(&settings.kms).await),
    };
    Ok((kms, store))
}

/// Build only the store the settings name, for tools that move stored
/// records and never call KMS (`rkms copy`): no keyring is read or made.
/// `make`: make a missing SQLite file (else it is an error).
pub async fn store(settings: &Settings, make: bool) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match settings.store.backend {
        StoreBackend::Sqlite => {
            let path = settings.store.sqlite.path.clone();
            let timeout = Duration::from_millis(settings.store.call_timeout_ms);
            let store = tokio::task::spawn_blocking(move || {
                if make {
                    SqliteStore::open(&path, timeout)
                } else {
                    SqliteStore::open_existing(&path, timeout)
                }
            })
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
    Ok(store)
}

/// The converse of [`refuse_new_master_keys_over_stored_keys`]: the local
/// keyring is there but the SQLite file is not (or is empty). The keys
/// that keyring wraps are in another file (a mistyped or changed
/// `store.sqlite.path`, a moved or deleted file), and a new empty store
/// would give every id a new key. Startup stops; to start over with no
/// keys, remove the keyring too.
fn refuse_new_store_beside_a_keyring(settings: &Settings) -> anyhow::Result<()> {
    if settings.kms.provider != KmsProvider::Local || settings.store.backend != StoreBackend::Sqlite
    {
        return Ok(());
    }
    let (keyring, path) = (&settings.kms.local.keyring, &settings.store.sqlite.path);
    let store_holds_something = match std::fs::metadata(path) {
        Ok(meta) => meta.len() > 0,
        // Cannot tell: opening the store reports it.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    if store_holds_something || !keyring.try_exists().unwrap_or(false) {
        return Ok(());
    }
    // A keyring that does not load says so itself, as it would on any start.
    let wraps_keys = LocalKms::open_existing(keyring)
        .context("kms.local.keyring")?
        .has_master_keys();
    if !wraps_keys {
        return Ok(());
    }
    anyhow::bail!(
        "store.sqlite.path {} does not exist or is empty, but kms.local.keyring {} does: the keys it wraps are stored in another file. \
         Fix store.sqlite.path or put the file back (to start over with no keys, remove the keyring too)",
        path.display(),
        keyring.display()
    )
}

/// The local KMS makes its keyring when the file is missing, and a master
/// key for each configured region it lacks. Over stored records that
/// need one of those (a lost or misplaced keyring, a master key removed
/// from it), a new master key could decrypt none of them, and keys it then
/// wrapped could never be merged with the old ones: startup stops instead.
/// A region no record uses yet (one just added to `kms.regions`) gets its
/// master key.
async fn refuse_new_master_keys_over_stored_keys(
    keyring: &std::path::Path,
    regions: &[Region],
    store: &dyn Store,
) -> anyhow::Result<()> {
    let lacking = {
        let (path, regions) = (keyring.to_path_buf(), regions.to_vec());
        tokio::task::spawn_blocking(move || LocalKms::lacking(&path, &regions)).await??
    };
    let Some(lacking) = lacking else {
        let page = store.scan(0, 1, None, 1).await.with_context(|| {
            format!(
                "kms.local.keyring {} does not exist, and rkms makes one only for an empty store: \
                 cannot tell whether the store holds keys (a scan of one record failed)",
                keyring.display()
            )
        })?;
        if page.records.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "kms.local.keyring {} does not exist, but the store already holds keys wrapped by the master keys in it: \
             restore that file (rkms makes a new keyring only for an empty store)",
            keyring.display()
        )
    };
    if lacking.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = lacking.iter().map(Region::as_str).collect();
    let cannot_tell = || {
        format!(
            "kms.local.keyring {} has no master key for {}, and rkms makes one only for a region no stored record uses: \
             cannot tell whether one does (a store scan failed)",
            keyring.display(),
            names.join(",")
        )
    };
    let mut cursor = None;
    loop {
        let page = store
            .scan(0, 1, cursor.as_deref(), 1000)
            .await
            .with_context(cannot_tell)?;
        // A record that cannot be read might need the missing key: its
        // ciphertext under that region may be the one a keyring backup can
        // still decrypt. Say so rather than guess.
        if let Some(Err(unreadable)) = page.records.iter().find(|r| r.is_err()) {
            anyhow::bail!(
                "kms.local.keyring {} has no master key for {}, and rkms makes one only for a region no stored record uses, \
                 but a stored record cannot be read to tell: {unreadable}. Fix or remove that record, or restore the keyring",
                keyring.display(),
                names.join(",")
            );
        }
        let needs = page.records.iter().flatten().find_map(|record| {
            lacking
                .iter()
                .find(|r| record.keys.contains_key(*r))
                .map(|r| (r, &record.id))
        });
        if let Some((region, id)) = needs {
            anyhow::bail!(
                "kms.local.keyring {} has no master key for region {region}, but stored records hold ciphertexts under it (id {:?}, for one): \
                 restore the keyring from a backup (rkms makes a master key only for a region no stored record uses)",
                keyring.display(),
                id.as_str()
            );
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
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
        store_name: store_name(settings),
        kms_timeout: Duration::from_millis(settings.kms.call_timeout_ms),
        store_timeout: Duration::from_millis(settings.store.call_timeout_ms),
    }
}

/// The store the settings name, as a checkpoint records it: an SQLite
/// file by its real path (links, `.` and `..` resolved, however it was
/// spelt and from whichever directory), a table by its name, region and
/// endpoint.
pub fn store_identity(settings: &Settings) -> String {
    match settings.store.backend {
        StoreBackend::Sqlite => {
            format!("SQLite {}", resolved(&settings.store.sqlite.path).display())
        }
        StoreBackend::Dynamodb => format!(
            "DynamoDB table {} in {} at {}",
            settings.store.dynamodb.table,
            settings.store.dynamodb.region,
            if settings.store.dynamodb.endpoint.is_empty() {
                "the AWS endpoint"
            } else {
                settings.store.dynamodb.endpoint.as_str()
            }
        ),
        StoreBackend::Memory => "memory".into(),
    }
}

/// `path` with links, `.` and `..` resolved by the file system, as far as
/// it exists; the rest (a file a first run makes) appended as written, so
/// the answer is the same before and after the file exists.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut cur = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                cur = parent;
            }
            _ => return absolute,
        }
    }
}

fn store_name(settings: &Settings) -> String {
    match settings.store.backend {
        StoreBackend::Sqlite => format!("SQLite {}", settings.store.sqlite.path.display()),
        StoreBackend::Dynamodb => format!(
            "DynamoDB table {} in {}",
            settings.store.dynamodb.table, settings.store.dynamodb.region
        ),
        StoreBackend::Memory => "memory (lost on exit)".into(),
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
        store = %store_name(settings),
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
    if auth.mode != AuthMode::None && auth.allow_unauthenticated {
        tracing::warn!(
            "auth.allow_unauthenticated = true has no effect unless auth.mode = \"none\": every caller must authenticate; remove it"
        );
    }
    if auth.mode != AuthMode::Mtls && settings.server.tls.client_ca.is_some() {
        tracing::info!(
            "server.tls.client_ca is set outside auth.mode = \"mtls\": a certificate a client presents must verify, but none is required and certificates identify no one"
        );
    }
}

impl Application {
    /// Build every backend named in `settings`, check them, and bind the
    /// listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let (kms, store) = backends(&settings, Access::SERVE).await?;
        Self::build_with(settings, kms, store).await
    }

    /// Build around given backends (tests inject fault wrappers here).
    pub async fn build_with(
        settings: Settings,
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
        let tls = Tls::from_settings(&settings.server.tls)?;
        let health = Arc::new(Health::new(&checks));
        let monitor = health.monitor(deps);

        let metrics = Arc::new(Metrics::new().context("cannot register metrics")?);
        let broker = KeyBroker::new(kms, store, broker_settings(&settings), Arc::clone(&metrics));
        let state = AppState::new(Shared {
            broker,
            metrics,
            auth: Arc::new(Authenticator::new(&settings.auth)),
            draining: Arc::new(AtomicBool::new(false)),
            request_timeout: settings.request_timeout(),
            health,
            limits: Limits {
                in_flight: Semaphore::new(settings.server.max_concurrent_requests as usize),
                max_uri_bytes: settings.server.max_uri_bytes,
                max_header_bytes: settings.server.max_header_bytes,
            },
        });
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
            max_connections: serve::connection_limit(settings.server.max_connections),
            listener,
            metrics_listener,
            state,
            settings,
            monitor,
            tls,
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
                serve::METRICS_MAX_CONNECTIONS,
                metrics,
                stopped(rx),
            ))
        });

        let addr = self.listener.local_addr()?;
        tracing::info!(%addr, tls = self.tls.is_some(), "rkms serving");
        let app = routes::router(self.state.clone());
        let reloader = self.tls.as_ref().map(Tls::watch);
        let token_files = watch_token_files(&self.state.auth);
        let server = serve(
            self.listener,
            app,
            self.tls,
            self.max_connections,
            Arc::clone(&self.state.metrics),
            stopped(stop_rx.clone()),
        );
        let deadline = {
            let rx = stop_rx.clone();
            async move {
                stopped(rx).await;
                tokio::time::sleep(grace).await;
            }
        };
        tokio::pin!(deadline);
        tokio::select! {
            () = server => {}
            () = &mut deadline => {
                tracing::warn!("shutdown grace period over; exiting with requests still in flight");
            }
        }
        // Background work (KMS calls finishing, repairs) gets what is left
        // of the grace period.
        tokio::select! {
            () = self.state.broker.shutdown() => {}
            () = &mut deadline => tracing::warn!("shutdown grace period over; background work abandoned"),
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

/// The broker's typed tuning, from the config file's fields.
/// How often token files are read again.
const TOKEN_FILES_EVERY: Duration = Duration::from_secs(5);

/// Re-read the clients' token files every few seconds, when some client
/// has one, so a rotated token applies without a restart.
fn watch_token_files(auth: &Arc<Authenticator>) -> Option<tokio::task::JoinHandle<()>> {
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
            let _ = tokio::task::spawn_blocking(move || auth.reload_token_files()).await;
        }
    }))
}

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

#[cfg(test)]
mod resolved_tests {
    use super::resolved;

    /// One store, however its path is spelt, reads the same, before and
    /// after its file exists; `..` after a link goes where the file
    /// system goes, not where the spelling suggests.
    #[test]
    fn a_store_path_resolves_through_links_before_and_after_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::os::unix::fs::symlink("a/sub", root.join("link")).unwrap();

        let direct = root.join("a/sub/db");
        assert_eq!(resolved(&direct), direct, "not there yet");
        assert_eq!(resolved(&root.join("link/db")), direct);
        assert_eq!(resolved(&root.join("link/../db")), root.join("a/db"));
        std::fs::write(&direct, b"").unwrap();
        assert_eq!(resolved(&root.join("link/./db")), direct, "there now");
        assert_eq!(
            resolved(&root.join("a/new/dir/db")),
            root.join("a/new/dir/db")
        );
    }
}
