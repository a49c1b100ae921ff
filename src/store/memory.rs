//! In-memory store for tests: same semantics as the durable stores, plus a
//! switch that makes it unavailable.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{PutOutcome, Store, StoreError};
use crate::domain::{KeyId, KeyRecord, Region};

#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<KeyId, KeyRecord>>,
    down: AtomicBool,
    gets: AtomicUsize,
    puts: AtomicUsize,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, every call fails with `Unavailable`.
    pub fn set_unavailable(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn get_calls(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }

    pub fn put_calls(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Insert or replace a record directly (tests only: simulate old or
    /// tampered data).
    pub fn insert_raw(&self, record: KeyRecord) {
        self.lock().insert(record.id.clone(), record);
    }

    pub fn snapshot(&self, id: &KeyId) -> Option<KeyRecord> {
        self.lock().get(id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, KeyRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, op: &'static str) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                op,
                source: "memory store switched off".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        self.check("get")?;
        Ok(self.lock().get(id).cloned())
    }

    async fn put_if_absent(&self, record: &KeyRecord) -> Result<PutOutcome, StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.check("put_if_absent")?;
        let mut records = self.lock();
        if let Some(existing) = records.get(&record.id) {
            return Ok(PutOutcome::Exists(existing.clone()));
        }
        records.insert(record.id.clone(), record.clone());
        Ok(PutOutcome::Created)
    }

    async fn add_missing_regions(
        &self,
        id: &KeyId,
        keys: &BTreeMap<Region, Vec<u8>>,
        key_ids: &BTreeMap<Region, String>,
    ) -> Result<usize, StoreError> {
        self.check("add_missing_regions")?;
        let mut records = self.lock();
        let Some(record) = records.get_mut(id) else {
            return Ok(0);
        };
        let mut added = 0;
        for (region, ciphertext) in keys {
            if !record.keys.contains_key(region) {
                record.keys.insert(region.clone(), ciphertext.clone());
                if let Some(arn) = key_ids.get(region) {
                    record.key_ids.insert(region.clone(), arn.clone());
                }
                added += 1;
            }
        }
        Ok(added)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check("ping")
    }
}
