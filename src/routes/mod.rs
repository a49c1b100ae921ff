//! HTTP surface: the edge service, the routes and the shared state.
//! Handlers parse, authorize and shape JSON; key decisions belong to the
//! broker.
//!
//! Must not: talk to KMS or the store directly.

mod edge;
mod health;
mod key;
mod request_id;

pub use self::edge::Edge;
use self::edge::Route;
pub use self::key::{parse_query, KeyQuery};

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Extension, Router};
use tokio::sync::Semaphore;

use crate::auth::{AuthFailure, Authenticator, PeerNames};
use crate::broker::KeyBroker;
use crate::error::{ApiError, Challenge};
use crate::metrics::{Metrics, Shed};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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
pub struct Limits {
    /// Permits for requests doing work (`server.max_concurrent_requests`).
    /// A request whose client stopped waiting hands its permit to the key
    /// decision it started or joined, which holds it to its end.
    pub in_flight: Arc<Semaphore>,
    pub max_uri_bytes: u32,
    pub max_header_bytes: u32,
}

impl AppState {
    /// The 401 for a caller that was not identified, counted by reason.
    pub(crate) fn refuse(&self, failure: AuthFailure) -> Response {
        self.metrics
            .auth_failures
            .with_label_values(&[failure.reason()])
            .inc();
        let challenge = if self.auth.by_certificate() {
            Challenge::ClientCertificate
        } else {
            Challenge::Bearer
        };
        let mut response =
            ApiError::Unauthorized(failure.message(self.auth.mode()).into(), challenge)
                .into_response();
        // The connection's certificate will not do again: close it, so a
        // client reconnects (and a revoked one is refused at the handshake).
        if failure.ends_connection() {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

/// The API listener's service: `/key` and `/api/v1/key` are answered by
/// the edge itself, the rest by an axum router.
pub fn router(state: AppState) -> Edge {
    let rest = Router::new()
        .route(Route::Metrics.label(), get_only(authenticated_metrics))
        .route(Route::Healthz.label(), get_only(health::healthz))
        .route(Route::Readyz.label(), get_only(health::readyz))
        .fallback(not_found)
        .with_state(state.clone());
    Edge::api(state, rest)
}

/// A route that answers GET and nothing else (axum would run a GET
/// handler for HEAD too); every other method gets the same 405.
fn get_only<H, T>(handler: H) -> axum::routing::MethodRouter<AppState>
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    on(MethodFilter::GET, handler)
        .on(MethodFilter::HEAD, method_not_allowed)
        .fallback(method_not_allowed)
}

/// The service for `server.metrics_listen`: `/metrics` unauthenticated,
/// and the probes (plain HTTP even when the API listener serves TLS, for
/// `rkms healthcheck` and scrapers); the same request ids, size limits and
/// error shape as the API.
pub fn metrics_router(state: AppState) -> Edge {
    let routes = Router::new()
        .route(Route::Metrics.label(), get_only(metrics_text))
        .route(Route::Healthz.label(), get_only(health::healthz))
        .route(Route::Readyz.label(), get_only(health::readyz))
        .fallback(not_found)
        .with_state(state.clone());
    Edge::metrics(state, routes)
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
        // A scrape counts against the client's rate, as a key request does.
        Ok(identity) => match identity.check_rate() {
            Ok(()) => metrics_text(State(state)).await,
            Err(wait) => {
                state.metrics.shed(Shed::RateLimit);
                ApiError::TooManyRequests { retry_after: wait }.into_response()
            }
        },
        Err(failure) => state.refuse(failure),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    state.broker.refresh_gauges();
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
