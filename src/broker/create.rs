//! A new key: GenerateDataKey in the first healthy region (raced like a
//! read), Encrypt under every other usable region in parallel, store the
//! record only with at least `min_regions_on_create` ciphertexts, and hand
//! the regions still missing to repair at once.
//!
//! Must not: overwrite a stored record, store one below the quorum, or
//! serve a new key before the store has shown it holds that key.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use tokio::time::Instant;

use super::error::BrokerError;
use super::hedge::Calls;
use super::{Inner, KeySource, Resolved};
use crate::domain::{now_rfc3339, DataKey, KeyId, KeyRecord, Region, RECORD_VERSION};
use crate::kms::{Context, KmsError, Wrapped};
use crate::metrics::{KmsOp, StoreOp};
use crate::store::PutOutcome;

impl Inner {
    pub(super) async fn create(self: &Arc<Self>, id: &KeyId) -> Result<Resolved, BrokerError> {
        let bytes = self.settings.data_key_bytes;
        let (first, (key, wrapped)) = self
            .hedged(KmsOp::GenerateDataKey, &self.settings.regions, |region| {
                let kms = Arc::clone(&self.kms);
                let (region, id) = (region.clone(), id.clone());
                async move {
                    kms.generate_data_key(&region, bytes, Context::Bound(&id))
                        .await
                }
                .boxed()
            })
            .await?;
        let key = Arc::new(key);

        let others: Vec<Region> = self
            .settings
            .regions
            .iter()
            .filter(|r| **r != first)
            .cloned()
            .collect();
        let need_others = self.settings.min_regions_on_create.saturating_sub(1);
        let (more, last_error) = self.encrypt_under(id, &others, &key, need_others).await;
        let mut wrapped_by_region = BTreeMap::from([(first.clone(), wrapped)]);
        wrapped_by_region.extend(more);

        let need = self.settings.min_regions_on_create;
        if wrapped_by_region.len() < need {
            // `key` is wiped as its last reference drops; nothing was stored.
            return Err(BrokerError::NotEnoughRegions {
                got: wrapped_by_region.len(),
                need,
                last: last_error.map(Arc::new),
            });
        }

        let record = assemble(id, wrapped_by_region);
        match self
            .timed_store(StoreOp::PutIfAbsent, self.store.put_if_absent(&record))
            .await?
        {
            PutOutcome::Created => {
                // Read it back unless the store's put is atomic by
                // construction: a store whose conditional put is not (a
                // misconfigured replica, a test double) could have let a
                // concurrent create overwrite ours, and serving our key then
                // would lose whatever the client encrypts with it. The
                // stored record is the truth; an unreadable answer leaves
                // ours, as the put said.
                if !self.store.put_is_atomic() {
                    if let Ok(Some(stored)) =
                        self.timed_store(StoreOp::Get, self.store.get(id)).await
                    {
                        if stored.keys != record.keys {
                            self.metrics.create_conflicts.inc();
                            drop(key);
                            tracing::warn!(key_id = %id, "the store holds another record than the one it just accepted (a non-atomic conditional put?); serving the stored one");
                            return self.decrypt_record(Arc::new(stored)).await;
                        }
                    }
                }
                self.metrics.keys_created.inc();
                let present: BTreeSet<Region> = record.keys.keys().cloned().collect();
                if present.len() < self.settings.regions.len() {
                    tracing::warn!(
                        key_id = %id,
                        regions = present.len(),
                        configured = self.settings.regions.len(),
                        "key created without every region; repair is queued"
                    );
                    self.repairs.queue(&record, &key);
                }
                Ok(Resolved {
                    key,
                    source: KeySource::Region(first),
                    created: true,
                })
            }
            PutOutcome::Exists(winner) => {
                self.metrics.create_conflicts.inc();
                drop(key);
                tracing::debug!(key_id = %id, "another writer created this key first; serving theirs");
                self.decrypt_record(Arc::new(winner)).await
            }
        }
    }

    /// Wrap `key` under each of `regions` whose breaker allows a call, in
    /// parallel. Waits until `need` have answered, then at most
    /// `hedge_after` more for the rest: a slow region is left to repair
    /// rather than delaying the caller. Calls still running finish in the
    /// background, so their regions' breakers see the real outcome.
    pub(super) async fn encrypt_under(
        self: &Arc<Self>,
        id: &KeyId,
        regions: &[Region],
        key: &Arc<DataKey>,
        need: usize,
    ) -> (BTreeMap<Region, Wrapped>, Option<KmsError>) {
        let mut calls = Calls::new(self);
        for region in regions {
            let Some(permit) = self.breakers.acquire(region) else {
                continue;
            };
            let kms = Arc::clone(&self.kms);
            let (r, id, key) = (region.clone(), id.clone(), Arc::clone(key));
            let call = async move { kms.encrypt(&r, &key, Context::Bound(&id)).await }.boxed();
            calls.start(region.clone(), KmsOp::Encrypt, permit, call);
        }
        let mut out = BTreeMap::new();
        let mut last_error = None;
        let mut deadline: Option<Instant> = None;
        if need == 0 {
            deadline = Some(Instant::now() + self.settings.hedge_after);
        }
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, calls.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => calls.next().await,
            };
            let Some((region, outcome)) = next else {
                break;
            };
            match outcome {
                Ok(w) => {
                    out.insert(region, w);
                }
                Err(e) => last_error = Some(e),
            }
            if deadline.is_none() && out.len() >= need {
                deadline = Some(Instant::now() + self.settings.hedge_after);
            }
        }
        (out, last_error)
    }
}

/// The stored record for a new key.
fn assemble(id: &KeyId, wrapped: BTreeMap<Region, Wrapped>) -> KeyRecord {
    let mut keys = BTreeMap::new();
    let mut key_ids = BTreeMap::new();
    for (region, w) in wrapped {
        key_ids.insert(region.clone(), w.key_arn);
        keys.insert(region, w.ciphertext);
    }
    KeyRecord {
        id: id.clone(),
        keys,
        key_ids,
        version: Some(RECORD_VERSION),
        created_at: Some(now_rfc3339()),
    }
}
