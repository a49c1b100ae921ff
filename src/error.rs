//! The one error type at the HTTP edge. Every failure becomes
//! `{"error_type", "error_message"}` with the right status; 5xx bodies say
//! nothing internal, and the detail (with its source chain) is logged once.
//!
//! Must not: put an error chain or any internal detail in a 5xx body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::BrokerError;

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String, Challenge),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed; use GET")]
    MethodNotAllowed,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("too many requests from this client; retry later")]
    TooManyRequests { retry_after: Duration },
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(u32),
    #[error("the request headers are larger than {0} bytes")]
    HeadersTooLarge(u32),
    #[error("service unavailable")]
    ServiceUnavailable {
        /// When a retry can help; sent as `Retry-After` in whole seconds.
        retry_after: Duration,
        #[source]
        source: Option<BrokerError>,
    },
    #[error("internal error")]
    Internal(#[source] Option<BrokerError>),
}

/// What a 401's `WWW-Authenticate` asks for: the credential of the
/// configured `auth.mode`, so a client refused for want of a certificate
/// is not told to send a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `auth.mode = "token"`: `Authorization: Bearer <token>`.
    Bearer,
    /// `auth.mode = "mtls"`: a client certificate in the TLS handshake.
    /// No registered HTTP scheme names one, so the scheme is our own.
    ClientCertificate,
}

impl Challenge {
    /// The `WWW-Authenticate` value.
    pub fn header(self) -> &'static str {
        match self {
            Self::Bearer => "Bearer realm=\"rkms\"",
            Self::ClientCertificate => "ClientCertificate realm=\"rkms\"",
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error_type: &'a str,
    error_message: String,
}

impl ApiError {
    /// A 503 with the default retry hint.
    pub fn unavailable() -> Self {
        Self::ServiceUnavailable {
            retry_after: crate::broker::error::DEFAULT_RETRY_AFTER,
            source: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(..) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadRequest",
            Self::Unauthorized(..) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
            Self::NotFound(_) => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::PayloadTooLarge(_) => "PayloadTooLarge",
            Self::TooManyRequests { .. } => "TooManyRequests",
            Self::UriTooLong(_) => "UriTooLong",
            Self::HeadersTooLarge(_) => "HeadersTooLarge",
            Self::ServiceUnavailable { .. } => "ServiceUnavailable",
            Self::Internal(_) => "InternalError",
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::ServiceUnavailable { .. } => {
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
            _ if e.is_unavailable() => Self::ServiceUnavailable {
                retry_after: e.retry_after(),
                source: Some(e),
            },
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
        match &self {
            Self::ServiceUnavailable { retry_after, .. }
            | Self::TooManyRequests { retry_after } => {
                // Whole seconds, rounded up: "0" would invite a retry storm.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Self::Unauthorized(_, challenge) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge.header()),
                );
            }
            Self::MethodNotAllowed => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            _ => {}
        }
        response
    }
}

pub use crate::report::chain;
