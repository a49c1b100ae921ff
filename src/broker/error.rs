//! What the broker reports when it cannot serve a key. Each variant keeps
//! its source so the edge can log the whole chain once; none carries key
//! material.
//!
//! Must not: know HTTP statuses (the edge maps them).

use std::sync::Arc;
use std::time::Duration;

use crate::domain::Region;
use crate::kms::KmsError;
use crate::store::StoreError;

/// How long a client should wait before retrying when nothing more
/// specific is known (a timeout, a failed region that may recover).
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("no key exists for this id")]
    NotFound,
    /// Every region that could serve is behind an open breaker: answered at
    /// once instead of waiting on regions known to be down.
    #[error("every KMS region that could serve is marked down; the next probe is due in {retry_after:?}")]
    AllRegionsOpen { retry_after: Duration },
    #[error("no KMS region could serve the request ({attempts} attempts)")]
    KmsUnavailable {
        attempts: usize,
        #[source]
        last: Option<Arc<KmsError>>,
    },
    #[error("only {got} of the {need} regions required to create a key answered")]
    NotEnoughRegions {
        got: usize,
        need: usize,
        #[source]
        last: Option<Arc<KmsError>>,
    },
    #[error("KMS refused the stored ciphertext for this id (invalid, bound to another id, or wrapped by a foreign key)")]
    Integrity {
        #[source]
        source: Arc<KmsError>,
    },
    /// The stored record only has ciphertexts for regions this deployment
    /// does not use (e.g. after a region was removed from `kms.regions`).
    #[error("the stored record has ciphertexts only for regions that are not configured: {}", join(.stored))]
    NoConfiguredRegion { stored: Vec<Region> },
    #[error("store call failed")]
    Store {
        #[source]
        source: Arc<StoreError>,
    },
    #[error("store call timed out after {0:?}")]
    StoreTimeout(Duration),
    /// The caller's deadline (`server.request_timeout_ms`) passed first.
    #[error("the request timed out after {0:?}")]
    Timeout(Duration),
    /// The key's resolution ended without an outcome: it panicked (a bug;
    /// `why` holds the panic's message), or the runtime stopped under it.
    #[error("key resolution ended without an answer: {why}")]
    ResolutionFailed { why: String },
    /// The process stopped before the resolution ended, which may or may
    /// not have created a key: told only to the hooks of callers that had
    /// stopped waiting.
    #[error("the process stopped before the key resolution ended")]
    CutOff,
}

fn join(regions: &[Region]) -> String {
    regions
        .iter()
        .map(Region::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

impl BrokerError {
    /// Whether the failure is (probably) transient: the client should retry,
    /// and a stale cached key may be served instead.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::AllRegionsOpen { .. }
            | Self::KmsUnavailable { .. }
            | Self::NotEnoughRegions { .. }
            | Self::StoreTimeout(_)
            | Self::Timeout(_) => true,
            Self::Store { source } => matches!(**source, StoreError::Unavailable { .. }),
            Self::NotFound
            | Self::Integrity { .. }
            | Self::NoConfiguredRegion { .. }
            | Self::ResolutionFailed { .. }
            | Self::CutOff => false,
        }
    }

    /// When a retry can help, for `Retry-After`: the next breaker probe when
    /// every region is down, else a short default.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::AllRegionsOpen { retry_after } => *retry_after,
            _ => DEFAULT_RETRY_AFTER,
        }
    }
}

/// Why a raced KMS call got no answer.
#[derive(Default)]
pub(super) struct NoAnswer {
    pub attempts: usize,
    pub last: Option<KmsError>,
    pub integrity: Option<KmsError>,
    /// Set when no region could even be tried: all breakers open.
    pub all_open: Option<Duration>,
}

impl From<NoAnswer> for BrokerError {
    fn from(failed: NoAnswer) -> Self {
        if let Some(e) = failed.integrity {
            return BrokerError::Integrity {
                source: Arc::new(e),
            };
        }
        match failed.all_open {
            Some(retry_after) if failed.attempts == 0 => {
                BrokerError::AllRegionsOpen { retry_after }
            }
            _ => BrokerError::KmsUnavailable {
                attempts: failed.attempts,
                last: failed.last.map(Arc::new),
            },
        }
    }
}

/// The message a panic was raised with, for an error that reports it.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with no message");
    format!("panicked: {text}")
}
