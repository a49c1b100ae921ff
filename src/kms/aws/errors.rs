//! What an AWS KMS failure means for the broker (its kind), and the
//! failures rkms itself finds in an answer: a key other than the configured
//! one, a field missing, a key lookup that failed for several callers.

use std::sync::Arc;

use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

use super::super::{KeyRefusal, KmsError, KmsErrorKind};
use crate::aws::{inspect, is_throttling, refuses_credentials};
use crate::domain::Region;

pub(super) fn classify_code(code: Option<&str>, status: u16) -> KmsErrorKind {
    match code {
        _ if is_throttling(code, Some(status)) => KmsErrorKind::Throttled,
        Some("InvalidCiphertextException" | "IncorrectKeyException") => KmsErrorKind::Integrity,
        _ if refuses_credentials(code) => KmsErrorKind::Misconfigured,
        Some(
            "AccessDeniedException"
            | "NotFoundException"
            | "DisabledException"
            | "KMSInvalidStateException"
            | "InvalidKeyUsageException",
        ) => KmsErrorKind::Misconfigured,
        Some(
            "KMSInternalException"
            | "DependencyTimeoutException"
            | "KeyUnavailableException"
            | "InternalFailure"
            | "ServiceUnavailable",
        ) => KmsErrorKind::Unavailable,
        _ if status >= 500 => KmsErrorKind::Unavailable,
        _ if status == 401 || status == 403 => KmsErrorKind::Misconfigured,
        _ => KmsErrorKind::Other,
    }
}

pub(super) fn map_err<E>(
    err: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
    region: &Region,
    op: &'static str,
) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let failure = inspect(&err);
    if let Some(why) = failure.credentials {
        let kind = match why {
            crate::aws::NoCredentialsWhy::Missing => KmsErrorKind::Misconfigured,
            crate::aws::NoCredentialsWhy::MetadataUnreachable => KmsErrorKind::Unavailable,
        };
        let err = crate::aws::NoCredentials::new(why, Box::new(err));
        return KmsError::new(kind, region, op, err);
    }
    let kind = match failure {
        f if f.transport => KmsErrorKind::Unavailable,
        crate::aws::Failure {
            code,
            status: Some(status),
            ..
        } => classify_code(code, status),
        _ => KmsErrorKind::Other,
    };
    let why = match failure.code {
        Some("NotFoundException") => Some(KeyRefusal::NotFound),
        Some("AccessDeniedException") => Some(KeyRefusal::AccessDenied),
        _ => None,
    };
    match why {
        Some(why) => KmsError::new(
            kind,
            region,
            op,
            KeyRefused {
                why,
                source: err.into(),
            },
        ),
        None => KmsError::new(kind, region, op, err),
    }
}

/// KMS's answer said what it refused the call for: shown as the answer
/// itself (whose text a report of the chain then does not repeat), told
/// apart by [`KmsError::refusal`](crate::kms::KmsError::refusal).
#[derive(Debug)]
pub struct KeyRefused {
    pub why: KeyRefusal,
    source: crate::report::BoxError,
}

impl std::fmt::Display for KeyRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for KeyRefused {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// KMS answered 200 without a field it must send.
pub(super) fn incomplete(region: &Region, op: &'static str, field: &str) -> KmsError {
    KmsError::new(
        KmsErrorKind::Other,
        region,
        op,
        format!("response has no {field}"),
    )
}

/// A call's answer must name the configured key: a ciphertext from any
/// other is refused, never stored or unwrapped.
pub(super) fn wrapped_by(
    expected: &str,
    named: Option<&str>,
    region: &Region,
    op: &'static str,
) -> Result<(), KmsError> {
    if named == Some(expected) {
        return Ok(());
    }
    Err(KmsError::new(
        KmsErrorKind::Integrity,
        region,
        op,
        format!(
            "KMS answered with {}, not the configured key {expected}",
            named.unwrap_or("an unnamed key")
        ),
    ))
}

/// A failed key lookup (DescribeKey), as the call that made it and each
/// call that waited for it see it. Its cause is its source, so what looks
/// through an error's sources (no AWS credentials) finds it. Only the call
/// that made the lookup counts against the region's breaker: one failure
/// shared by several waiting calls is one failure.
#[derive(Debug)]
pub struct LookupFailed {
    pub(super) failure: Arc<KmsError>,
    /// Given to a call that waited for another's lookup.
    pub waited: bool,
}

impl std::fmt::Display for LookupFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.waited {
            "the key lookup this call waited for failed"
        } else {
            "looking up the key failed"
        })
    }
}

impl std::error::Error for LookupFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.failure.source)
    }
}
