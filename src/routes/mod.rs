//! HTTP surface: the router, its layers and the shared state. Handlers
//! parse, authorize and shape JSON; key decisions belong to the broker.
//!
//! Must not: talk to KMS or the store directly.

mod health;
mod key;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::broker::KeyBroker;
use crate::error::ApiError;
use crate::metrics::Metrics;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Requests are GETs; anything with a body bigger than this is refused.
const BODY_LIMIT_BYTES: usize = 16 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub broker: KeyBroker,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Authenticator>,
    /// Set when shutdown starts: readiness fails so load balancers drain us.
    pub draining: Arc<AtomicBool>,
    pub request_timeout: Duration,
}

pub fn router(state: AppState) -> Router {
    let key_route = get_only(key::get_key);
    // The backstop timeout sits a little above the handler's own, which
    // answers with the JSON error shape first.
    let backstop = state.request_timeout + Duration::from_millis(500);
    Router::new()
        .route("/key", key_route.clone())
        .route("/api/v1/key", key_route)
        .route("/healthz", get_only(health::healthz))
        .route("/readyz", get_only(health::readyz))
        .route("/metrics", get_only(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_metrics,
        ))
        .layer(
            ServiceBuilder::new()
                .map_request(drop_unusable_request_id)
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
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

/// A router serving only /metrics, for `server.metrics_listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get_only(metrics_text))
        .fallback(not_found)
        .with_state(state)
}

async fn record_metrics(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // MatchedPath is an Arc<str>: cloning it does not copy the route.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let started = Instant::now();
    let response = next.run(request).await;
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
