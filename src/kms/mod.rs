//! The KMS port: wrap and unwrap data keys under a master key in one region.
//! Adapters make exactly one remote call per method and map failures to a
//! [`KmsError`] kind the broker can act on; retry and failover policy lives
//! in `broker`, never here.

pub mod aws;
#[cfg(any(test, feature = "testing"))]
pub mod faulty;
pub mod local;

use async_trait::async_trait;

use crate::domain::{DataKey, KeyId, Region};

pub use crate::report::BoxError;

/// A data key wrapped under one region's master key.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    pub ciphertext: Vec<u8>,
    /// The master key's ARN (or local label) as KMS reports it.
    pub key_arn: String,
}

impl std::fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Wrapped({} bytes under {})",
            self.ciphertext.len(),
            self.key_arn
        )
    }
}

/// Encryption context of a call: `Bound(id)` is `{"rkms:id": id}`; `Legacy`
/// is no context at all, only for decrypting records written by RKMS (Go).
#[derive(Debug, Clone, Copy)]
pub enum Context<'a> {
    Bound(&'a KeyId),
    Legacy,
}

/// What went wrong, in the terms the broker decides by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KmsErrorKind {
    /// Timeout, connection failure, 5xx: the region may work again soon.
    Unavailable,
    /// KMS refused for rate: another region may take the call.
    Throttled,
    /// The ciphertext is invalid or bound to another context. Never retried
    /// into a success elsewhere as if nothing happened: it is reported.
    Integrity,
    /// Access denied, key not found, key disabled: the region is
    /// misconfigured and an operator must look.
    Misconfigured,
    /// The call never left rkms: too many calls to the region were already
    /// in flight (`kms.max_in_flight_per_region`) for the whole call timeout.
    Saturated,
    /// Anything else.
    Other,
}

impl KmsErrorKind {
    /// Every kind, for metrics that start at zero.
    pub const ALL: [Self; 6] = [
        Self::Unavailable,
        Self::Throttled,
        Self::Integrity,
        Self::Misconfigured,
        Self::Saturated,
        Self::Other,
    ];

    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Throttled => "throttled",
            Self::Integrity => "integrity",
            Self::Misconfigured => "misconfigured",
            Self::Saturated => "saturated",
            Self::Other => "error",
        }
    }
}

/// What KMS refused a call for, when the answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The key, alias or ARN names nothing in the region.
    NotFound,
    /// The credentials may not use the key.
    AccessDenied,
}

#[derive(Debug, thiserror::Error)]
#[error("KMS {op} in region {region} failed ({})", kind.as_str())]
pub struct KmsError {
    pub kind: KmsErrorKind,
    pub region: Region,
    pub op: &'static str,
    #[source]
    pub source: BoxError,
}

impl KmsError {
    /// The call found no AWS credentials to sign with: a setting, the same
    /// for every call, not a verdict on the ciphertext or the key.
    pub fn no_credentials(&self) -> bool {
        crate::aws::no_credentials_in(self.source.as_ref()).is_some()
    }

    /// What KMS said is wrong with the key or the permissions, when it said
    /// (`NotFoundException`, `AccessDeniedException`): preflight's advice.
    pub fn refusal(&self) -> Option<KeyRefusal> {
        crate::aws::sources(self.source.as_ref())
            .find_map(|e| e.downcast_ref::<aws::KeyRefused>().map(|r| r.why))
    }

    /// The failure of another call's lookup of the key, which this call
    /// waited for: it says nothing more of the region than that call's own
    /// failure did.
    pub fn waited_for_another(&self) -> bool {
        self.source
            .downcast_ref::<aws::LookupFailed>()
            .is_some_and(|lookup| lookup.waited)
    }

    pub fn new(
        kind: KmsErrorKind,
        region: &Region,
        op: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            kind,
            region: region.clone(),
            op,
            source: source.into(),
        }
    }
}

/// Per-region master-key operations. Implementations are `Send + Sync` and
/// shared as `Arc<dyn Kms>`.
#[async_trait]
pub trait Kms: Send + Sync {
    /// New random data key of `bytes` bytes, wrapped under `region`'s master
    /// key with `context`. Not idempotent: every call yields a new key.
    async fn generate_data_key(
        &self,
        region: &Region,
        bytes: usize,
        context: Context<'_>,
    ) -> Result<(DataKey, Wrapped), KmsError>;

    /// Wrap an existing data key under `region`'s master key with `context`.
    /// Idempotent in effect (the ciphertext differs, the key does not).
    async fn encrypt(
        &self,
        region: &Region,
        key: &DataKey,
        context: Context<'_>,
    ) -> Result<Wrapped, KmsError>;

    /// Unwrap `ciphertext` in `region`. Fails with `Integrity` when the
    /// ciphertext was not made in this region or under another context.
    async fn decrypt(
        &self,
        region: &Region,
        ciphertext: &[u8],
        context: Context<'_>,
    ) -> Result<DataKey, KmsError>;

    /// Preflight: `region`'s master key exists and can wrap data keys (for
    /// AWS: enabled, symmetric, ENCRYPT_DECRYPT). Returns what was found,
    /// for the startup log. Makes no cryptographic call.
    async fn check_key(&self, region: &Region) -> Result<String, KmsError>;
}
