//! The one error type at the HTTP edge. Every failure becomes
//! `{"error_type", "error_message"}` with the right status; 5xx bodies say
//! nothing internal, and the detail (with its source chain) is logged once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::BrokerError;

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed; use GET")]
    MethodNotAllowed,
    #[error("service unavailable")]
    ServiceUnavailable(#[source] Option<BrokerError>),
    #[error("internal error")]
    Internal(#[source] Option<BrokerError>),
}

#[derive(Serialize)]
struct Body<'a> {
    error_type: &'a str,
    error_message: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::ServiceUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound(_) => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::ServiceUnavailable(_) => "ServiceUnavailable",
            Self::Internal(_) => "InternalError",
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::ServiceUnavailable(_) => {
                "the key service cannot serve this request right now; retry later".into()
            }
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match &e {
            BrokerError::NotFound => Self::NotFound("no key exists for this id".into()),
            // Corrupt records, integrity failures and the like are 500s.
            _ if e.is_unavailable() => Self::ServiceUnavailable(Some(e)),
            _ => Self::Internal(Some(e)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %chain(&self), "request failed");
        }
        let body = Body {
            error_type: self.error_type(),
            error_message: self.public_message(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

/// An error and all its sources on one line: `outer: inner: root`.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
