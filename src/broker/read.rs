//! A cache miss: read the record, then decrypt it in the preferred region
//! that can serve it. A record lacking a configured region is handed to
//! repair.
//!
//! Must not: create a key for an id that has a record, readable or not.

use std::borrow::Cow;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::FutureExt;

use super::error::BrokerError;
use super::{Inner, KeySource, Resolved};
use crate::domain::{KeyId, KeyRecord, Region};
use crate::kms::Context;
use crate::metrics::{KmsOp, StoreOp, StoreOutcome};
use crate::store::StoreError;

impl Inner {
    pub(super) async fn resolve(
        self: &Arc<Self>,
        id: &KeyId,
        allow_create: bool,
        creating: &AtomicBool,
    ) -> Result<Resolved, BrokerError> {
        match self.timed_store(StoreOp::Get, self.store.get(id)).await? {
            Some(record) => self.decrypt_record(Arc::new(record)).await,
            None if !allow_create => Err(BrokerError::NotFound),
            None => {
                creating.store(true, Ordering::Release);
                self.create(id).await
            }
        }
    }

    /// A store call bounded by `store.call_timeout_ms`, with its metrics.
    pub(super) async fn timed_store<T>(
        &self,
        op: StoreOp,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, BrokerError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.settings.store_timeout, call).await;
        self.metrics
            .store_duration
            .with_label_values(&[op.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(Ok(_)) => StoreOutcome::Ok,
            Ok(Err(StoreError::Corrupt { .. })) => StoreOutcome::Corrupt,
            // Not an outage: the store is not where the settings say (a
            // missing table, one with another key, no credentials, a file
            // moved away or not writable), which an operator must mend.
            Ok(Err(e @ StoreError::Unavailable { .. })) if !e.is_outage() => StoreOutcome::Failed,
            Ok(Err(StoreError::Unavailable { .. })) => StoreOutcome::Unavailable,
            Ok(Err(_)) => StoreOutcome::Error,
            Err(_) => StoreOutcome::Timeout,
        };
        self.metrics
            .store_requests
            .with_label_values(&[op.as_str(), outcome.as_str()])
            .inc();
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BrokerError::Store {
                source: Arc::new(e),
            }),
            Err(_) => Err(BrokerError::StoreTimeout(self.settings.store_timeout)),
        }
    }

    pub(super) async fn decrypt_record(
        self: &Arc<Self>,
        record: Arc<KeyRecord>,
    ) -> Result<Resolved, BrokerError> {
        // Preference order, among the regions this record can be read in:
        // the configured order itself, not a copy, when it has them all.
        let regions = &self.settings.regions;
        let order: Cow<'_, [Region]> = if regions.iter().all(|r| record.keys.contains_key(r)) {
            Cow::Borrowed(regions)
        } else {
            regions
                .iter()
                .filter(|r| record.keys.contains_key(*r))
                .cloned()
                .collect()
        };
        if order.is_empty() {
            return Err(BrokerError::NoConfiguredRegion {
                stored: record.keys.keys().cloned().collect(),
            });
        }
        let bound = record.bound_to_id();
        let (region, key) = self
            .hedged(KmsOp::Decrypt, &order, |region| {
                let kms = Arc::clone(&self.kms);
                let record = Arc::clone(&record);
                let region = region.clone();
                async move {
                    let ciphertext = record.keys.get(&region).map_or(&[][..], Vec::as_slice);
                    let context = if bound {
                        Context::Bound(&record.id)
                    } else {
                        Context::Legacy
                    };
                    kms.decrypt(&region, ciphertext, context).await
                }
                .boxed()
            })
            .await?;
        let key = Arc::new(key);
        // Records from RKMS (Go) are left as they are: one record, one format.
        if bound {
            self.repairs.queue(&record, &key);
        }
        Ok(Resolved {
            key,
            source: KeySource::Region(region),
            created: false,
        })
    }
}
