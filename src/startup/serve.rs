//! The listeners: accept connections and serve HTTP/1.1 on each, over TLS
//! when it is configured, each under its timeouts ([`super::watchdog`]),
//! up to a number of connections open at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::watchdog;
use crate::auth::PeerNames;
use crate::metrics::{Metrics, Refusal, Shed};
use crate::routes;
use crate::tls::Tls;

/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause before accepting again after the listener failed (out of file
/// descriptors and the like), so the log is not flooded while it lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Connections the metrics listener holds at once, at most: scrapes and
/// probes. Fewer under a small open-file limit: half the descriptors kept
/// back from `listen`.
const METRICS_MAX_CONNECTIONS: u64 = 256;

/// File descriptors kept out of reach of client connections on `listen`,
/// beyond those open at start and at most half the rest: the store, the
/// KMS and DynamoDB connection pools, token and certificate re-reads and
/// the metrics listener need theirs.
const RESERVED_FDS: u64 = 1024;

/// "Connection limit reached" is logged at most this often.
const FULL_WARN_EVERY: Duration = Duration::from_secs(60);

/// How many connections each listener may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnectionLimits {
    pub api: usize,
    pub metrics: usize,
}

/// Raise the soft open-file limit to the hard one, and return how many
/// client connections each listener may hold ([`limits_for`]), with a
/// warning when the limit leaves no room for `configured` on `listen`.
pub(super) fn connection_limits(configured: u32) -> ConnectionLimits {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => soft = limit.maximum,
            Err(e) => tracing::debug!(error = %e, "cannot raise the open-file limit"),
        }
    }
    // Open now: stdio, the listeners, the store's files, the log.
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count() as u64);
    let limits = limits_for(soft, open_now, configured);
    if limits.api < configured as usize {
        tracing::warn!(
            configured,
            effective = limits.api,
            open_file_limit = soft.unwrap_or(u64::MAX),
            "server.max_connections is more than the open-file limit leaves room for; raise the limit (ulimit -n, systemd LimitNOFILE) to allow that many"
        );
    }
    limits
}

/// The limits for a soft open-file limit (`None`: unlimited) with
/// `open_now` descriptors already in use: of the rest, up to 1,024 (at
/// most half) are kept back, the metrics listener may take half of those
/// (at most 256), and `listen` the others, up to `configured`. Each
/// listener gets at least one connection, however small the limit.
pub(super) fn limits_for(soft: Option<u64>, open_now: u64, configured: u32) -> ConnectionLimits {
    let free = soft.map_or(u64::MAX, |soft| soft.saturating_sub(open_now));
    let kept = RESERVED_FDS.min(free / 2);
    let count = |n: u64| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
    ConnectionLimits {
        api: count(u64::from(configured).min(free - kept)),
        metrics: count(METRICS_MAX_CONNECTIONS.min(kept / 2)),
    }
}

/// Connections turned away since "connection limit reached" was last said.
struct Full {
    max: usize,
    said: Option<Instant>,
    since: u64,
}

impl Full {
    fn turn_away(&mut self, peer: SocketAddr, metrics: &Metrics) {
        metrics.shed(Shed::Connections);
        self.since += 1;
        if self.said.is_none_or(|t| t.elapsed() >= FULL_WARN_EVERY) {
            tracing::warn!(
                max_connections = self.max,
                closed = self.since,
                last_peer = %peer,
                "connection limit reached: new connections are closed until open ones end"
            );
            self.said = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// Serve `app` on `listener` (over TLS when `tls` is set) until `stop`
/// completes, then let open connections finish (the caller bounds that by
/// the grace period). Over TLS, each connection's verified client
/// certificate names go into its requests' extensions. A connection
/// accepted while `max_connections` are open is closed at once: the
/// client sees the connection end, and can try another instance.
pub(super) async fn serve(
    listener: TcpListener,
    app: routes::Edge,
    tls: Option<Tls>,
    max_connections: usize,
    metrics: Arc<Metrics>,
    stop: impl Future<Output = ()> + Send,
    last_call: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(max_connections));
    let mut full = Full {
        max: max_connections,
        said: None,
        since: 0,
    };
    tokio::pin!(stop);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                // The client gave up before it was accepted: nothing wrong here.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "cannot accept a connection; pausing");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                        () = &mut stop => break,
                    }
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            drop(tcp);
            full.turn_away(peer_addr, &metrics);
            continue;
        };
        let app = app.for_connection();
        let watcher = graceful.watcher();
        let Some(tls) = &tls else {
            tokio::spawn(async move {
                serve_connection(tcp, app, watcher, peer_addr).await;
                drop(permit);
            });
            continue;
        };
        let (acceptor, loaded) = tls.acceptor();
        let tls = tls.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    // A client gone before or during the handshake (a TCP
                    // health check, a port scan) failed no TLS check.
                    match e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    {
                        Some(refused) => {
                            metrics.refused(Refusal::Tls);
                            tracing::info!(peer = %peer_addr, error = %refused, "TLS handshake failed");
                        }
                        None => {
                            tracing::debug!(peer = %peer_addr, error = %e, "connection ended before its TLS handshake did")
                        }
                    }
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %peer_addr, "TLS handshake timed out");
                    return;
                }
            };
            // Only a connection that presented a (verified) certificate
            // has peer names.
            let peer = stream.get_ref().1.peer_certificates().and_then(|chain| {
                let (names, not_after) = crate::tls::peer_names(chain.first()?);
                let verified = tls.verified(chain, loaded);
                Some(PeerNames {
                    names,
                    not_after,
                    still_trusted: Some(Arc::new(move || verified.still_trusted())),
                })
            });
            let service = tower::ServiceExt::map_request(
                app,
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    if let Some(peer) = &peer {
                        request.extensions_mut().insert(peer.clone());
                    }
                    request
                },
            );
            serve_connection(stream, service, watcher, peer_addr).await;
        });
    }
    drop(listener);
    // Last call: for a moment, connections stay open and each is closed
    // after its next answer (`Connection: close` while draining). A request
    // a client had already sent on a keep-alive connection is answered,
    // rather than lost with a connection closed at once; only connections
    // idle all along are closed after it.
    let last_call = tokio::time::Instant::now() + last_call;
    while open.available_permits() < max_connections && tokio::time::Instant::now() < last_call {
        tokio::time::sleep(LAST_CALL_POLL).await;
    }
    graceful.shutdown().await;
}

/// How long open connections may still send a request once shutdown
/// starts, before the idle ones are closed: at most half the grace period,
/// which bounds the whole shutdown.
pub(super) fn last_call(grace: Duration) -> Duration {
    Duration::from_secs(1).min(grace / 2)
}

const LAST_CALL_POLL: Duration = Duration::from_millis(10);

/// HTTP/1.1 on one accepted connection until the client or the server
/// ends it, or one of its phases outlives its timeout.
async fn serve_connection<I, S>(
    stream: I,
    service: S,
    watcher: hyper_util::server::graceful::Watcher,
    peer_addr: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            axum::http::Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Unpin + Send + 'static,
{
    let (activity, stream, service) = watchdog::track(stream, service);
    let io = hyper_util::rt::TokioIo::new(stream);
    let connection = hyper::server::conn::http1::Builder::new()
        // The watchdog times heads; hyper's own timeout would arm a timer
        // per request.
        .header_read_timeout(None)
        .serve_connection(io, hyper_util::service::TowerToHyperService::new(service));
    tokio::select! {
        served = watcher.watch(connection) => {
            if let Err(e) = served {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended with an error");
            }
        }
        phase = activity.expired() => {
            tracing::debug!(peer = %peer_addr, phase = phase.as_str(), "closing a connection that outlived its timeout");
        }
    }
}

/// Accept failures that concern one client (it reset or gave up before
/// the accept, or the network to it failed), not the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(EPROTO)
}

/// Linux's errno for a protocol error on one incoming connection.
const EPROTO: i32 = 71;

#[cfg(test)]
mod tests;
