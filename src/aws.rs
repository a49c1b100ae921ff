//! What the AWS adapters share: SDK timeouts and retries, and a first look
//! at an SDK error. A leaf module below `kms::aws` and `store::dynamodb`,
//! so neither adapter imports the other. It knows nothing of policy.
//!
//! Must not: decide what a failure means for a region or a request (the
//! broker does), or hold clients.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};

/// Timeouts for one SDK client: the whole call (retries included) fits in
/// `call`; each attempt gets `attempt`, or an equal share of `call` when
/// `attempt` is zero; a connect never outlasts an attempt. Without these a
/// region that accepts connections but never answers hangs a call forever.
pub fn sdk_timeouts(
    call: Duration,
    attempt: Duration,
    connect: Duration,
    max_attempts: u32,
) -> (TimeoutConfig, RetryConfig) {
    let attempts = max_attempts.max(1);
    let attempt = if attempt.is_zero() {
        call / attempts
    } else {
        attempt.min(call)
    };
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(connect.min(attempt))
        .operation_attempt_timeout(attempt)
        .operation_timeout(call)
        .build();
    (
        timeouts,
        RetryConfig::standard().with_max_attempts(attempts),
    )
}

/// The facts about a failed SDK call that adapters classify by. Both SDK
/// crates use the same response type, so one function serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure<'a> {
    /// No usable answer arrived: timeout, connection failure, unreadable
    /// response. The service may work again soon.
    pub transport: bool,
    /// The service's error code, e.g. `ThrottlingException`.
    pub code: Option<&'a str>,
    /// The HTTP status, when an answer arrived.
    pub status: Option<u16>,
    /// No call was sent for want of AWS credentials, and why.
    pub credentials: Option<NoCredentialsWhy>,
}

/// Why the SDK had no credentials to sign a call with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoCredentialsWhy {
    /// Nothing in the chain to use (no variables, no profile, no role), or
    /// a chain set up wrong: a setting to fix, not an outage to wait out.
    Missing,
    /// The instance metadata service did not answer. On EC2 that is an
    /// outage that passes; off EC2 it is how missing credentials look
    /// unless `AWS_EC2_METADATA_DISABLED=true`. Never stops a start.
    MetadataUnreachable,
}

pub fn inspect<E>(err: &SdkError<E, HttpResponse>) -> Failure<'_>
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let failure = |transport, code, status| Failure {
        transport,
        code,
        status,
        credentials: None,
    };
    match err {
        SdkError::DispatchFailure(_) => match lacks_credentials(err) {
            Some(NoCredentialsWhy::Missing) => Failure {
                credentials: Some(NoCredentialsWhy::Missing),
                ..failure(false, None, None)
            },
            why => Failure {
                credentials: why,
                ..failure(true, None, None)
            },
        },
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => failure(true, None, None),
        SdkError::ServiceError(se) => {
            failure(false, se.err().code(), Some(se.raw().status().as_u16()))
        }
        _ => failure(false, None, None),
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A call that found no credentials, said so that an operator can act on
/// it (the SDK says only that a provider "was not enabled").
#[derive(Debug, thiserror::Error)]
pub enum NoCredentials {
    #[error("no AWS credentials found: give the process AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity token (IRSA) or an instance role (an instance metadata service that answers 403 is turned off)")]
    Missing(#[source] Source),
    #[error("no AWS credentials yet: the instance metadata service did not answer (on EC2 this passes once it answers; elsewhere give the process credentials, or set AWS_EC2_METADATA_DISABLED=true so that missing credentials are reported as such)")]
    MetadataUnreachable(#[source] Source),
}

impl NoCredentials {
    pub fn new(why: NoCredentialsWhy, source: Source) -> Self {
        match why {
            NoCredentialsWhy::Missing => Self::Missing(source),
            NoCredentialsWhy::MetadataUnreachable => Self::MetadataUnreachable(source),
        }
    }

    /// A setting to fix, rather than an outage.
    pub fn is_setting(&self) -> bool {
        matches!(self, Self::Missing(_))
    }
}

/// `err` and its sources, outermost first.
pub fn sources<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The [`NoCredentials`] among `err` and its sources, if any.
pub fn no_credentials_in<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a NoCredentials> {
    sources(err).find_map(|e| e.downcast_ref::<NoCredentials>())
}

/// Whether the credential chain found nothing to use (no variables, no
/// profile, no role) or was set up wrong, or could not reach the instance
/// metadata service. A provider that timed out or failed otherwise may
/// work on the next call: `None`, a plain transport failure.
fn lacks_credentials(err: &(dyn std::error::Error + 'static)) -> Option<NoCredentialsWhy> {
    use aws_credential_types::provider::error::CredentialsError;
    let c = sources(err).find_map(|e| e.downcast_ref::<CredentialsError>())?;
    // An instance metadata service that answers 403 is turned off: no
    // credentials will come from it, which is a setting, not an outage.
    let forbidden = matches!(c, CredentialsError::ProviderError(_))
        && sources(c).any(|e| e.to_string().contains(IMDS_FORBIDDEN));
    let not_loaded = forbidden
        || matches!(
            c,
            CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_)
        );
    // The chain also says "not loaded" when the instance metadata service
    // could not be reached (a node at boot, a network blip): an outage,
    // which must never stop a start. The SDK names it only in text; the
    // type is private.
    let unreachable = sources(c).any(|e| e.to_string().contains(IMDS_UNREACHABLE));
    match (not_loaded, unreachable) {
        (false, _) => None,
        (true, false) => Some(NoCredentialsWhy::Missing),
        (true, true) => Some(NoCredentialsWhy::MetadataUnreachable),
    }
}

/// How the SDK's credential chain says the instance metadata service did
/// not answer.
const IMDS_UNREACHABLE: &str = "could not communicate with IMDS";

/// How the SDK says the instance metadata service answered 403.
const IMDS_FORBIDDEN: &str = "IMDS is disabled or the caller has insufficient permissions";

/// Codes every AWS service uses for credentials it refuses: unknown,
/// expired or wrongly signed. A setting to fix, never an outage.
pub fn refuses_credentials(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "UnrecognizedClientException"
                | "InvalidClientTokenId"
                | "InvalidSignatureException"
                | "ExpiredTokenException"
                | "IncompleteSignature"
                | "MissingAuthenticationToken"
        )
    )
}

/// Codes every AWS service uses for "too many requests".
pub fn is_throttling(code: Option<&str>, status: Option<u16>) -> bool {
    matches!(
        code,
        Some(
            "ThrottlingException"
                | "TooManyRequestsException"
                | "RequestLimitExceeded"
                | "LimitExceededException"
                | "ProvisionedThroughputExceededException"
        )
    ) || status == Some(429)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing in the chain is a setting to fix; an instance metadata
    /// service that did not answer, or a provider that timed out, is an
    /// outage.
    #[test]
    fn only_a_chain_with_nothing_to_use_lacks_credentials() {
        use aws_credential_types::provider::error::CredentialsError;
        use NoCredentialsWhy::{MetadataUnreachable, Missing};
        let imds = std::io::Error::other(format!("Ec2InstanceMetadata: {IMDS_UNREACHABLE}"));
        let missing = CredentialsError::not_loaded("no credentials found in chain");
        assert_eq!(lacks_credentials(&missing), Some(Missing));
        let wrong = CredentialsError::invalid_configuration("bad profile");
        assert_eq!(lacks_credentials(&wrong), Some(Missing));
        let unreachable = CredentialsError::not_loaded(imds);
        assert_eq!(lacks_credentials(&unreachable), Some(MetadataUnreachable));
        let slow = CredentialsError::provider_timed_out(std::time::Duration::from_secs(1));
        assert_eq!(lacks_credentials(&slow), None);
        assert_eq!(
            lacks_credentials(&CredentialsError::provider_error("IMDS 500")),
            None
        );
        let forbidden = std::io::Error::other(format!("request forbidden: {IMDS_FORBIDDEN}."));
        assert_eq!(
            lacks_credentials(&CredentialsError::provider_error(forbidden)),
            Some(Missing)
        );
        assert_eq!(lacks_credentials(&std::io::Error::other("refused")), None);
    }

    #[test]
    fn every_call_is_bounded_by_the_call_timeout() {
        let ms = Duration::from_millis;
        let (t, r) = sdk_timeouts(ms(2000), Duration::ZERO, ms(500), 2);
        assert_eq!(t.operation_timeout(), Some(ms(2000)));
        assert_eq!(t.operation_attempt_timeout(), Some(ms(1000)));
        assert_eq!(t.connect_timeout(), Some(ms(500)));
        assert_eq!(r.max_attempts(), 2);
        let (t, _) = sdk_timeouts(ms(2000), ms(300), ms(500), 1);
        assert_eq!(t.operation_attempt_timeout(), Some(ms(300)));
        assert_eq!(
            t.connect_timeout(),
            Some(ms(300)),
            "connect fits in an attempt"
        );
    }
}
