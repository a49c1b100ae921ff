//! What a DynamoDB failure means for a request: an outage (503, it may
//! pass), the table not being where the settings say or not rkms's (503,
//! an operator must look), or the call's own error.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

use crate::aws::{inspect, is_throttling};
use crate::store::StoreError;

/// The table the settings name is not there (or not in this region).
#[derive(Debug, thiserror::Error)]
#[error("table {table:?} does not exist in this region: create it (hash key id, type S) or fix store.dynamodb.table and store.dynamodb.region")]
pub(crate) struct NoSuchTable {
    table: String,
    #[source]
    source: crate::report::BoxError,
}

/// The table answers, but not as rkms's table: it has another key (the
/// settings name another table), or the credentials may not use it.
/// Like a missing table, it needs an operator: 503, readiness `failed`.
#[derive(Debug, thiserror::Error)]
#[error("table {table:?} {why}")]
pub(crate) struct TableRefused {
    table: String,
    why: &'static str,
    #[source]
    source: crate::report::BoxError,
}

/// What makes the table refuse every call: its key is not rkms's, access
/// is denied, or the credentials are refused (expired, unknown, wrongly
/// signed). Other validation errors are the call's own.
fn refused_why(
    code: Option<&str>,
    status: Option<u16>,
    message: Option<&str>,
) -> Option<&'static str> {
    const CREDENTIALS: &str = "refused rkms's AWS credentials (expired, unknown or wrongly signed): give the process valid credentials";
    if crate::aws::refuses_credentials(code) || (code.is_none() && status == Some(401)) {
        return Some(CREDENTIALS);
    }
    let message = message.unwrap_or_default().to_ascii_lowercase();
    match code? {
        "AccessDeniedException" => Some(
            "refused the call (access denied): give rkms's role the table's permissions (terraform/ has the policy)",
        ),
        "ValidationException"
            if message.contains("key element does not match the schema")
                || message.contains("missing the key") =>
        {
            Some("does not have rkms's key: its only key must be the hash key id, type S; fix store.dynamodb.table")
        }
        _ => None,
    }
}

pub(super) fn map_err<E>(
    err: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
    op: &'static str,
    table: &str,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let f = inspect(&err);
    // 503 to a request, as every store failure that is not the request's
    // own; readiness and preflight say `failed` (see `is_outage`).
    if let Some(why) = f.credentials {
        return StoreError::Unavailable {
            op,
            source: Box::new(crate::aws::NoCredentials::new(why, Box::new(err))),
        };
    }
    let transient = f.transport
        || is_throttling(f.code, f.status)
        || matches!(f.code, Some("InternalServerError" | "ServiceUnavailable"))
        || f.status.is_some_and(|s| s >= 500);
    if let Some(why) = refused_why(f.code, f.status, err.message()) {
        let table = table.to_string();
        return StoreError::Unavailable {
            op,
            source: Box::new(TableRefused {
                table,
                why,
                source: Box::new(err),
            }),
        };
    }
    if f.code == Some("ResourceNotFoundException") {
        let source = Box::new(err);
        let table = table.to_string();
        return StoreError::Unavailable {
            op,
            source: Box::new(NoSuchTable { table, source }),
        };
    }
    if transient {
        StoreError::Unavailable {
            op,
            source: Box::new(err),
        }
    } else {
        StoreError::Other {
            op,
            source: Box::new(err),
        }
    }
}

#[cfg(test)]
mod tests {
    /// Access denied and a key that is not rkms's make the table refuse
    /// every call (an operator must look); other validation errors are
    /// the call's own.
    #[test]
    fn calls_a_table_refuses_are_told_from_the_calls_own_errors() {
        use super::refused_why;
        let denied = refused_why(Some("AccessDeniedException"), Some(400), None);
        assert!(denied.is_some_and(|why| why.contains("access denied")));
        let schema = Some("The provided key element does not match the schema");
        assert!(refused_why(Some("ValidationException"), Some(400), schema).is_some());
        let size = Some("Item size has exceeded the maximum allowed size");
        assert!(refused_why(Some("ValidationException"), Some(400), size).is_none());
        assert!(refused_why(None, Some(400), schema).is_none());
        // Credentials the service refuses are named as such: they were a
        // 500 saying nothing of them.
        for code in [
            "ExpiredTokenException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
        ] {
            let why = refused_why(Some(code), Some(400), None);
            assert!(why.is_some_and(|why| why.contains("credentials")), "{code}");
        }
        assert!(refused_why(None, Some(401), None).is_some_and(|why| why.contains("credentials")));
        assert!(refused_why(None, Some(500), None).is_none());
    }
}
