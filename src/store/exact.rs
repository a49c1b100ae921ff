//! Every record a store answers for an id must be that id's record. A
//! store that matches ids loosely (a table altered to compare them without
//! case, a buggy adapter) would otherwise hand one id's key to another:
//! the KMS binding cannot tell, as the record's ciphertext is bound to the
//! record's own id. The broker's store is wrapped in [`ExactIds`].

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{PutOutcome, ScanPage, Store, StoreError};
use crate::domain::{KeyId, KeyRecord, Region};

/// A store whose answers are checked against the id asked for.
pub struct ExactIds(pub Arc<dyn Store>);

/// `record`, if it is the record of `asked`; else `Corrupt`, so nothing is
/// served or created for `asked` until an operator looks.
fn exact(asked: &KeyId, record: KeyRecord) -> Result<KeyRecord, StoreError> {
    if record.id == *asked {
        return Ok(record);
    }
    Err(StoreError::Corrupt {
        id: asked.as_str().to_owned(),
        reason: format!(
            "the store answered with the record of another id, {:?}: it matches ids loosely (a table altered to compare ids without case, say); nothing is served or created for this id until that is mended",
            record.id.as_str()
        ),
    })
}

#[async_trait]
impl Store for ExactIds {
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.0
            .get(id)
            .await?
            .map(|record| exact(id, record))
            .transpose()
    }

    async fn put_if_absent(&self, record: &KeyRecord) -> Result<PutOutcome, StoreError> {
        match self.0.put_if_absent(record).await? {
            PutOutcome::Created => Ok(PutOutcome::Created),
            PutOutcome::Exists(stored) => exact(&record.id, stored).map(PutOutcome::Exists),
        }
    }

    fn put_is_atomic(&self) -> bool {
        self.0.put_is_atomic()
    }

    async fn add_missing_regions(
        &self,
        read: &KeyRecord,
        keys: &BTreeMap<Region, Vec<u8>>,
        key_ids: &BTreeMap<Region, String>,
    ) -> Result<usize, StoreError> {
        self.0.add_missing_regions(read, keys, key_ids).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }

    fn refuses_writes(&self, op: &'static str) -> Result<(), StoreError> {
        self.0.refuses_writes(op)
    }

    async fn scan(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        self.0.scan(segment, segments, cursor, limit).await
    }

    async fn check(&self) -> Result<String, StoreError> {
        self.0.check().await
    }
}
