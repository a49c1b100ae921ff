//! AWS KMS: one SDK client per configured region, each with connect,
//! attempt and operation timeouts so a region that accepts connections but
//! never answers cannot hang a request. One SDK call per method; failures
//! are classified into [`KmsErrorKind`]s for the broker.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::Client;
use std::sync::Arc;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::{Context, Kms, KmsError, KmsErrorKind, Wrapped};
use crate::aws::sdk_timeouts;
use crate::config::KmsSettings;
use crate::domain::{DataKey, Region, CONTEXT_KEY};
use errors::{incomplete, map_err, wrapped_by};
pub use errors::{KeyRefused, LookupFailed};

struct RegionClient {
    client: Client,
    /// The configured key: id, ARN or alias.
    key_id: String,
    /// Its key ARN, resolved once (DescribeKey) unless configured as one:
    /// every call names it, and its answer must name it too, so one process
    /// wraps and unwraps with one key even if an alias is moved meanwhile.
    arn: OnceCell<String>,
    /// One lookup at a time; callers that waited for one that failed get
    /// its failure rather than each trying again in turn (a hung region
    /// cost each of them a call timeout, one after the other).
    lookup: tokio::sync::Mutex<()>,
    /// When the last lookup failed, and how.
    failed: std::sync::Mutex<Option<(std::time::Instant, Arc<KmsError>)>>,
}

pub struct AwsKms {
    clients: HashMap<Region, RegionClient>,
}

impl std::fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsKms")
            .field("regions", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `arn:aws:kms:REGION:ACCOUNT:key/ID` (any partition): already a key ARN.
fn is_key_arn(key_id: &str) -> bool {
    key_id.starts_with("arn:") && key_id.contains(":kms:") && key_id.contains(":key/")
}

impl AwsKms {
    pub async fn new(settings: &KmsSettings) -> Self {
        let (timeouts, retry) = sdk_timeouts(
            Duration::from_millis(settings.call_timeout_ms),
            Duration::from_millis(settings.aws.attempt_timeout_ms),
            Duration::from_millis(settings.aws.connect_timeout_ms),
            settings.aws.max_attempts,
        );
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(timeouts)
            .retry_config(retry)
            .load()
            .await;
        let clients = settings
            .regions
            .iter()
            .map(|name| {
                let mut conf = aws_sdk_kms::config::Builder::from(&shared)
                    .region(aws_sdk_kms::config::Region::new(name.clone()));
                if let Some(url) = settings.aws.endpoints.get(name) {
                    conf = conf.endpoint_url(url);
                }
                let key_id = settings.aws.key_ids.get(name).cloned().unwrap_or_default();
                let arn = if is_key_arn(&key_id) {
                    OnceCell::new_with(Some(key_id.clone()))
                } else {
                    OnceCell::new()
                };
                let client = RegionClient {
                    client: Client::from_conf(conf.build()),
                    key_id,
                    arn,
                    lookup: tokio::sync::Mutex::new(()),
                    failed: std::sync::Mutex::new(None),
                };
                (Region::new(name), client)
            })
            .collect();
        Self { clients }
    }

    fn region(&self, region: &Region, op: &'static str) -> Result<&RegionClient, KmsError> {
        self.clients.get(region).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Misconfigured,
                region,
                op,
                format!("region {region} is not configured"),
            )
        })
    }
}

/// The encryption context KMS receives: `{"rkms:id": id}`, or none for legacy records.
fn context_map(context: Context<'_>) -> Option<HashMap<String, String>> {
    match context {
        Context::Bound(id) => Some(HashMap::from([(
            CONTEXT_KEY.to_owned(),
            id.as_str().to_owned(),
        )])),
        Context::Legacy => None,
    }
}

#[async_trait]
impl Kms for AwsKms {
    async fn generate_data_key(
        &self,
        region: &Region,
        bytes: usize,
        context: Context<'_>,
    ) -> Result<(DataKey, Wrapped), KmsError> {
        const OP: &str = "generate_data_key";
        let rc = self.region(region, OP)?;
        let bytes = i32::try_from(bytes)
            .map_err(|_| KmsError::new(KmsErrorKind::Other, region, OP, "key size too large"))?;
        let expected = self.key_arn(region, rc).await?;
        let out = rc
            .client
            .generate_data_key()
            .key_id(expected)
            .number_of_bytes(bytes)
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(|e| map_err(e, region, OP))?;
        // Into a wiping buffer first: an answer refused below must not
        // leave its plaintext behind.
        let plaintext = out.plaintext.map(|b| Zeroizing::new(b.into_inner()));
        wrapped_by(expected, out.key_id.as_deref(), region, OP)?;
        let plaintext = plaintext.ok_or_else(|| incomplete(region, OP, "plaintext"))?;
        let ciphertext = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| incomplete(region, OP, "ciphertext"))?;
        Ok((
            DataKey::from_bytes(plaintext),
            Wrapped {
                ciphertext,
                key_arn: expected.clone(),
            },
        ))
    }

    async fn encrypt(
        &self,
        region: &Region,
        key: &DataKey,
        context: Context<'_>,
    ) -> Result<Wrapped, KmsError> {
        const OP: &str = "encrypt";
        let rc = self.region(region, OP)?;
        let expected = self.key_arn(region, rc).await?;
        let out = rc
            .client
            .encrypt()
            .key_id(expected)
            // Copies rkms cannot wipe: the SDK takes this Vec by value and
            // serialises it (base64) into its request body; both are the
            // SDK's to drop. Likewise the response bodies of Decrypt and
            // GenerateDataKey, which the SDK parses before `plaintext`
            // reaches us; from there on every copy is `Zeroizing`.
            .plaintext(Blob::new(key.expose().to_vec()))
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(|e| map_err(e, region, OP))?;
        wrapped_by(expected, out.key_id.as_deref(), region, OP)?;
        let ciphertext = out
            .ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| incomplete(region, OP, "ciphertext"))?;
        Ok(Wrapped {
            ciphertext,
            key_arn: expected.clone(),
        })
    }

    async fn decrypt(
        &self,
        region: &Region,
        ciphertext: &[u8],
        context: Context<'_>,
    ) -> Result<DataKey, KmsError> {
        const OP: &str = "decrypt";
        let rc = self.region(region, OP)?;
        let expected = self.key_arn(region, rc).await?;
        // KeyId pins the key: KMS refuses a ciphertext from any other key
        // (it would otherwise use whichever key the ciphertext names, and a
        // planted ciphertext under a key we may use would decrypt).
        let out = rc
            .client
            .decrypt()
            .key_id(expected)
            .ciphertext_blob(Blob::new(ciphertext.to_vec()))
            .set_encryption_context(context_map(context))
            .send()
            .await
            .map_err(|e| map_err(e, region, OP))?;
        let plaintext = out
            .plaintext
            .map(|b| Zeroizing::new(b.into_inner()))
            .ok_or_else(|| incomplete(region, OP, "plaintext"))?;
        // And the answer must say so too.
        wrapped_by(expected, out.key_id.as_deref(), region, OP)?;
        Ok(DataKey::from_bytes(plaintext))
    }

    async fn check_key(&self, region: &Region) -> Result<String, KmsError> {
        self.describe(region).await
    }
}

impl AwsKms {
    /// The ARN of the key this process uses in `region`: looked up once,
    /// then fixed for the process's life.
    pub async fn key_arn_in(&self, region: &Region) -> Result<String, KmsError> {
        let rc = self.region(region, "describe_key")?;
        self.key_arn(region, rc).await.cloned()
    }

    /// DescribeKey, with what preflight requires of the key.
    async fn describe(&self, region: &Region) -> Result<String, KmsError> {
        const OP: &str = "describe_key";
        let rc = self.region(region, OP)?;
        let out = rc
            .client
            .describe_key()
            .key_id(&rc.key_id)
            .send()
            .await
            .map_err(|e| map_err(e, region, OP))?;
        let meta = out
            .key_metadata
            .ok_or_else(|| incomplete(region, OP, "key metadata"))?;
        let unusable = |why: String| {
            KmsError::new(
                KmsErrorKind::Misconfigured,
                region,
                OP,
                format!("key {} {why}", rc.key_id),
            )
        };
        if let Some(state) = meta.key_state.as_ref().filter(|s| s.as_str() != "Enabled") {
            return Err(unusable(format!("is {} (must be Enabled)", state.as_str())));
        }
        if !meta.enabled {
            return Err(unusable("is disabled".into()));
        }
        if let Some(spec) = meta
            .key_spec
            .as_ref()
            .filter(|s| s.as_str() != "SYMMETRIC_DEFAULT")
        {
            return Err(unusable(format!(
                "has key spec {} (must be SYMMETRIC_DEFAULT)",
                spec.as_str()
            )));
        }
        if let Some(usage) = meta
            .key_usage
            .as_ref()
            .filter(|u| u.as_str() != "ENCRYPT_DECRYPT")
        {
            return Err(unusable(format!(
                "has key usage {} (must be ENCRYPT_DECRYPT)",
                usage.as_str()
            )));
        }
        let arn = meta.arn.ok_or_else(|| incomplete(region, OP, "key ARN"))?;
        // An alias moved while rkms runs: calls go on naming the key it
        // named at first use, and this check must not call the new one ok.
        if let Some(pinned) = rc.arn.get().filter(|pinned| **pinned != arn) {
            return Err(unusable(format!(
                "now names {arn}, but this process wraps and unwraps with {pinned}, which it named when first used: it was moved while rkms ran. Move it back; rkms started now would use {arn}, which cannot unwrap the ciphertexts stored for this region"
            )));
        }
        let _ = rc.arn.set(arn.clone());
        Ok(format!("{} is {arn}, enabled, symmetric", rc.key_id))
    }

    /// The configured key's ARN in `region`, looked up once. Callers that
    /// waited while a lookup failed get that failure.
    async fn key_arn<'a>(
        &self,
        region: &Region,
        rc: &'a RegionClient,
    ) -> Result<&'a String, KmsError> {
        const OP: &str = "describe_key";
        if let Some(arn) = rc.arn.get() {
            return Ok(arn);
        }
        let asked = std::time::Instant::now();
        let _turn = rc.lookup.lock().await;
        if let Some(arn) = rc.arn.get() {
            return Ok(arn);
        }
        let failed = |e: &Arc<KmsError>, waited: bool| {
            let lookup = LookupFailed {
                failure: Arc::clone(e),
                waited,
            };
            KmsError::new(e.kind, region, OP, lookup)
        };
        let last = rc.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((_, e)) = last.filter(|(at, _)| *at >= asked) {
            return Err(failed(&e, true));
        }
        let looked_up = rc
            .client
            .describe_key()
            .key_id(&rc.key_id)
            .send()
            .await
            .map_err(|e| map_err(e, region, OP))
            .and_then(|out| {
                out.key_metadata
                    .and_then(|m| m.arn)
                    .ok_or_else(|| incomplete(region, OP, "key ARN"))
            });
        match looked_up {
            Ok(arn) => {
                let _ = rc.arn.set(arn);
                rc.arn
                    .get()
                    .ok_or_else(|| incomplete(region, OP, "key ARN"))
            }
            Err(e) => {
                let e = Arc::new(e);
                *rc.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((std::time::Instant::now(), Arc::clone(&e)));
                Err(failed(&e, false))
            }
        }
    }
}

mod errors;

#[cfg(test)]
mod tests;
