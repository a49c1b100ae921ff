//! HTTP surface: the router, its layers and the shared state. Handlers
//! parse, authorize and shape JSON; key decisions belong to the broker.
//!
//! Must not: talk to KMS or the store directly.

mod health;
mod key;

pub use self::key::{parse_query, KeyQuery};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Extension, Router};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::{AuthFailure, Authenticator, PeerNames};
use crate::broker::KeyBroker;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Requests are GETs; anything with a body bigger than this is refused.
const BODY_LIMIT_BYTES: usize = 16 * 1024;

/// What every handler shares; one `Arc`, so the per-request clones axum
/// makes of the state cost one reference count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub broker: KeyBroker,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// Set when shutdown starts: readiness fails so load balancers drain us.
    pub draining: Arc<AtomicBool>,
    pub request_timeout: Duration,
    /// Preflight and key health, for `/readyz`.
    pub health: Arc<crate::preflight::Health>,
    pub limits: Limits,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Request limits from `[server]`.
#[derive(Clone)]
pub struct Limits {
    /// Permits for requests doing work (`server.max_concurrent_requests`).
    pub in_flight: Arc<Semaphore>,
    pub max_uri_bytes: u32,
    pub max_header_bytes: u32,
}

/// How long a shed client should wait: in-flight requests finish in
/// milliseconds when KMS is healthy, so a short pause is enough.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(1);

impl AppState {
    /// The 401 for a caller that was not identified, counted by reason.
    pub(crate) fn refuse(&self, failure: AuthFailure) -> ApiError {
        self.metrics
            .auth_failures
            .with_label_values(&[failure.reason()])
            .inc();
        ApiError::Unauthorized(failure.message(self.auth.mode()).into())
    }
}

pub fn router(state: AppState) -> Router {
    let key_route = get_only(key::get_key);
    // The backstop timeout sits a little above the handler's own, which
    // answers with the JSON error shape first.
    let backstop = state.request_timeout + Duration::from_millis(500);
    // Work that can pile up (KMS, the store) is admitted by the limiter;
    // probes are never shed.
    let limited = Router::new()
        .route("/key", key_route.clone())
        .route("/api/v1/key", key_route)
        .route("/metrics", get_only(authenticated_metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), shed_load));
    Router::new()
        .merge(limited)
        .route("/healthz", get_only(health::healthz))
        .route("/readyz", get_only(health::readyz))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .layer(
            ServiceBuilder::new()
                .map_request(drop_unusable_request_id)
                .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::new()))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(|req: &Request| {
                            // Field values are only evaluated when the span is enabled.
                            tracing::info_span!(
                                "request",
                                method = %req.method(),
                                route = req
                                    .extensions()
                                    .get::<MatchedPath>()
                                    .map_or("unmatched", MatchedPath::as_str),
                                request_id = req
                                    .headers()
                                    .get(REQUEST_ID)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or(""),
                                status = tracing::field::Empty,
                                latency_ms = tracing::field::Empty,
                            )
                        })
                        .on_request(())
                        // A failed request is logged once, with its error
                        // chain, where the error becomes a response.
                        .on_failure(())
                        .on_response(
                            |res: &axum::http::Response<_>,
                             latency: Duration,
                             span: &tracing::Span| {
                                span.record("status", res.status().as_u16());
                                span.record("latency_ms", latency.as_secs_f64() * 1000.0);
                                tracing::debug!(
                                    status = res.status().as_u16(),
                                    latency_ms = latency.as_secs_f64() * 1000.0,
                                    "request done"
                                );
                            },
                        ),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    backstop,
                )),
        )
        .with_state(state)
}

/// Refuse at once, with 503 and Retry-After, a request arriving while
/// `server.max_concurrent_requests` are in flight: queueing it would only
/// make every caller time out.
async fn shed_load(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match Arc::clone(&state.limits.in_flight).try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => {
            state
                .metrics
                .requests_shed
                .with_label_values(&["overload"])
                .inc();
            tracing::warn!("overloaded: request shed");
            ApiError::ServiceUnavailable {
                retry_after: SHED_RETRY_AFTER,
                source: None,
            }
            .into_response()
        }
    }
}

/// 414 for a request target over `server.max_uri_bytes`, 431 for headers
/// over `server.max_header_bytes`, 413 for a declared body over
/// [`BODY_LIMIT_BYTES`] (no route reads a body; a chunked one is never read).
fn oversized(limits: &Limits, request: &Request) -> Option<ApiError> {
    let uri_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes as usize {
        return Some(ApiError::UriTooLong(limits.max_uri_bytes));
    }
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes as usize {
        return Some(ApiError::HeadersTooLarge(limits.max_header_bytes));
    }
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > BODY_LIMIT_BYTES as u64) {
        return Some(ApiError::PayloadTooLarge(BODY_LIMIT_BYTES));
    }
    None
}

/// The size limits alone, for the metrics listener.
async fn check_sizes(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    match oversized(&limits, &request) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    }
}

/// Every API request, after routing: the size limits, then the handler,
/// then the request metrics (by matched route and status). One middleware
/// rather than two: each costs a boxed future and a state clone per request.
async fn edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // MatchedPath is an Arc<str>: cloning it does not copy the route.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let started = Instant::now();
    let response = match oversized(&state.limits, &request) {
        Some(refused) => refused.into_response(),
        None => next.run(request).await,
    };
    state
        .metrics
        .http_requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Request ids: a random per-process prefix and a counter. Unique within
/// the process and across restarts, and far cheaper than a UUID per request.
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

impl RequestIds {
    fn new() -> Self {
        Self {
            prefix: uuid::Uuid::new_v4().simple().to_string()[..12].into(),
            next: Arc::new(std::sync::atomic::AtomicU64::new(1)),
        }
    }
}

impl tower_http::request_id::MakeRequestId for RequestIds {
    fn make_request_id<B>(
        &mut self,
        _request: &axum::http::Request<B>,
    ) -> Option<tower_http::request_id::RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}-{n:012x}", self.prefix);
        axum::http::HeaderValue::from_str(&id)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// A route that answers GET and nothing else. Axum runs a GET handler for
/// HEAD too, which on `/key` would create keys, so HEAD is refused
/// explicitly; every other method falls through to the same 405.
fn get_only<H, T>(handler: H) -> axum::routing::MethodRouter<AppState>
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    on(MethodFilter::GET, handler)
        .on(MethodFilter::HEAD, method_not_allowed)
        .fallback(method_not_allowed)
}

/// A client's `x-request-id` goes into logs and the audit trail: keep it
/// only when it is a short token, else replace it with a generated one.
fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = request.headers().get(REQUEST_ID).is_none_or(|v| {
        (1..=128).contains(&v.len())
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    });
    if !usable {
        request.headers_mut().remove(REQUEST_ID);
    }
    request
}

/// The router for `server.metrics_listen`: `/metrics` unauthenticated,
/// and the probes (plain HTTP even when the API listener serves TLS, for
/// `rkms healthcheck` and scrapers); the same request ids and error shape
/// as the API.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get_only(metrics_text))
        .route("/healthz", get_only(health::healthz))
        .route("/readyz", get_only(health::readyz))
        .fallback(not_found)
        .layer(
            ServiceBuilder::new()
                .map_request(drop_unusable_request_id)
                .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::new()))
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(middleware::from_fn_with_state(
                    state.limits.clone(),
                    check_sizes,
                ))
                .layer(RequestBodyLimitLayer::new(BODY_LIMIT_BYTES)),
        )
        .with_state(state)
}

/// `/metrics` on the API listener: any authenticated client when auth is on.
async fn authenticated_metrics(
    State(state): State<AppState>,
    peer: Option<Extension<PeerNames>>,
    headers: HeaderMap,
) -> Response {
    match state
        .auth
        .authenticate(&headers, peer.as_ref().map(|Extension(p)| p))
    {
        Ok(_) => metrics_text(State(state)).await,
        Err(failure) => state.refuse(failure).into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, Metrics::content_type())],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            ApiError::Internal(None).into_response()
        }
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
