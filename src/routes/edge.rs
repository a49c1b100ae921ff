//! The edge of each listener: what every request goes through around its
//! handler, written as one service rather than a stack of layers. A layer
//! on an axum router is boxed and cloned per request, and a stack of them
//! cost more than the key lookup itself (benches/PROFILE.md).
//!
//! In order: the request id (the client's when usable, else a new one),
//! the size limits, load shedding, the request span, the handler, then the
//! request metrics and the `x-request-id` response header. `/key` is
//! answered from here directly; every other path goes to an axum router.
//!
//! Must not: know what a handler does beyond its route.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter};
use tower::ServiceExt;
use tracing::Instrument;

use super::request_id::RequestIds;
use super::{key, AppState, REQUEST_ID};
use crate::auth::Remembered;
use crate::error::ApiError;
use crate::metrics::Shed;

mod refused;
use refused::{bad_host, oversized};

/// How long a shed client should wait: in-flight requests finish in
/// milliseconds when KMS is healthy, so a short pause is enough.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Which listener an edge serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// `server.listen`: the key routes, `/metrics` (authenticated when auth
    /// is on) and the probes; load shedding and request metrics.
    Api,
    /// `server.metrics_listen`: `/metrics` and the probes only.
    Metrics,
}

/// A request's route, from its exact path (as axum matches it), for
/// dispatch and the `route` label.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Key,
    KeyV1,
    Metrics,
    Healthz,
    Readyz,
    Unmatched,
}

impl Route {
    const ALL: [Route; 6] = [
        Route::Key,
        Route::KeyV1,
        Route::Metrics,
        Route::Healthz,
        Route::Readyz,
        Route::Unmatched,
    ];

    fn of(path: &str) -> Self {
        match path {
            "/key" => Self::Key,
            "/api/v1/key" => Self::KeyV1,
            "/metrics" => Self::Metrics,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            _ => Self::Unmatched,
        }
    }

    /// The path, or `unmatched`: the router's paths are named here too,
    /// so each route has its label and its place in the shedding rules.
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::Key => "/key",
            Self::KeyV1 => "/api/v1/key",
            Self::Metrics => "/metrics",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Unmatched => "unmatched",
        }
    }

    /// Work that can pile up (KMS, the store, rendering metrics) is
    /// admitted by the concurrency limit; probes are never shed.
    fn limited(self) -> bool {
        matches!(self, Self::Key | Self::KeyV1 | Self::Metrics)
    }
}

/// The request metrics of one route, resolved once: a label lookup per
/// request hashes the label values under a lock.
struct RouteMetrics {
    /// `None` for unmatched paths, which never answer 200.
    ok: Option<IntCounter>,
    duration: Histogram,
}

/// The service a listener serves, one per connection
/// ([`Edge::for_connection`]). Cheap to clone (one `Arc`), as hyper clones
/// it per request; the clones share the connection's state.
#[derive(Clone)]
pub struct Edge(Arc<Conn>);

/// One connection's view of the edge.
struct Conn {
    edge: Arc<EdgeInner>,
    /// The `Authorization` header this connection last authenticated with.
    auth: Remembered,
}

struct EdgeInner {
    state: AppState,
    router: Router,
    listener: Listener,
    ids: &'static RequestIds,
    /// Per route, in [`Route::ALL`] order; empty on the metrics listener.
    metrics: Vec<RouteMetrics>,
    /// Above the handlers' own bound on their work, which answers with
    /// the JSON error shape first.
    backstop: Duration,
}

impl Edge {
    /// The API listener: `router` serves every path but the key routes.
    pub(super) fn api(state: AppState, router: Router) -> Self {
        let metrics = Route::ALL
            .iter()
            .map(|route| RouteMetrics {
                ok: (*route != Route::Unmatched).then(|| {
                    state
                        .metrics
                        .http_requests
                        .with_label_values(&[route.label(), "200"])
                }),
                duration: state
                    .metrics
                    .http_duration
                    .with_label_values(&[route.label()]),
            })
            .collect();
        Self::new(state, router, Listener::Api, metrics)
    }

    /// The metrics listener: `router` serves every path.
    pub(super) fn metrics(state: AppState, router: Router) -> Self {
        Self::new(state, router, Listener::Metrics, Vec::new())
    }

    fn new(
        state: AppState,
        router: Router,
        listener: Listener,
        metrics: Vec<RouteMetrics>,
    ) -> Self {
        let backstop = state.request_timeout + Duration::from_millis(500);
        Self::on(Arc::new(EdgeInner {
            state,
            router,
            listener,
            ids: RequestIds::process(),
            metrics,
            backstop,
        }))
    }

    fn on(edge: Arc<EdgeInner>) -> Self {
        Self(Arc::new(Conn {
            edge,
            auth: Remembered::default(),
        }))
    }

    /// The same edge with a new connection's state.
    pub fn for_connection(&self) -> Self {
        Self::on(Arc::clone(&self.0.edge))
    }
}

impl<B> tower::Service<axum::http::Request<B>> for Edge
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let conn = Arc::clone(&self.0);
        Box::pin(async move { Ok(conn.edge.handle(request.map(Body::new), &conn.auth).await) })
    }
}

impl EdgeInner {
    async fn handle(&self, request: Request, remembered: &Remembered) -> Response {
        let started = Instant::now();
        let request_id = self.ids.assign(&request);
        let route = Route::of(request.uri().path());
        // Field values are only evaluated when the span is enabled.
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            route = route.label(),
            request_id = request_id.to_str().unwrap_or(""),
            status = tracing::field::Empty,
            latency_ms = tracing::field::Empty,
        );
        let mut response = if span.is_disabled() {
            self.respond(route, request, &request_id, remembered).await
        } else {
            let response = self
                .respond(route, request, &request_id, remembered)
                .instrument(span.clone())
                .await;
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            span.record("status", response.status().as_u16());
            span.record("latency_ms", latency_ms);
            span.in_scope(|| {
                tracing::debug!(
                    status = response.status().as_u16(),
                    latency_ms,
                    "request done"
                );
            });
            response
        };
        response.headers_mut().insert(REQUEST_ID, request_id);
        // Draining: each connection is closed after its next answer, so a
        // client that sent a request gets its answer, then reconnects
        // elsewhere, rather than find its connection closed unanswered.
        if self
            .state
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if let Some(metrics) = self.metrics.get(route as usize) {
            match &metrics.ok {
                Some(ok) if response.status() == axum::http::StatusCode::OK => ok.inc(),
                _ => self
                    .state
                    .metrics
                    .http_requests
                    .with_label_values(&[route.label(), response.status().as_str()])
                    .inc(),
            }
            metrics.duration.observe(started.elapsed().as_secs_f64());
        }
        response
    }

    async fn respond(
        &self,
        route: Route,
        request: Request,
        request_id: &HeaderValue,
        remembered: &Remembered,
    ) -> Response {
        if let Some(refused) = oversized(&self.state.limits, &request) {
            return refused.into_response();
        }
        if let Some(refused) = bad_host(&request) {
            return refused.into_response();
        }
        let api = self.listener == Listener::Api;
        let permit = if api && route.limited() {
            match Arc::clone(&self.state.limits.in_flight).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return self.shed(),
            }
        } else {
            None
        };
        match route {
            Route::Key | Route::KeyV1 if api => {
                // Axum would run a GET handler for HEAD too, which here
                // would create keys: GET alone.
                if request.method() != Method::GET {
                    return ApiError::MethodNotAllowed.into_response();
                }
                // Ours or checked by `usable`: always visible ASCII.
                let request_id = request_id.to_str().unwrap_or("");
                key::get_key(&self.state, request, request_id, remembered, permit).await
            }
            _ => match tokio::time::timeout(self.backstop, self.router.clone().oneshot(request))
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::ServiceUnavailable {
                    retry_after: SHED_RETRY_AFTER,
                    source: None,
                }
                .into_response(),
            },
        }
    }

    /// Refuse at once, with 503 and Retry-After, a request arriving while
    /// `server.max_concurrent_requests` are in flight: queueing it would
    /// only make every caller time out.
    fn shed(&self) -> Response {
        self.state.metrics.shed(Shed::Overload);
        tracing::warn!("overloaded: request shed");
        ApiError::ServiceUnavailable {
            retry_after: SHED_RETRY_AFTER,
            source: None,
        }
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_matched_exactly() {
        assert!(Route::of("/key") == Route::Key);
        assert!(Route::of("/api/v1/key") == Route::KeyV1);
        for other in ["/key/", "/KEY", "/k%65y", "/key?id=a", "/", ""] {
            assert!(Route::of(other) == Route::Unmatched, "{other}");
        }
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(*route as usize, i, "ALL is in declaration order");
        }
    }
}
