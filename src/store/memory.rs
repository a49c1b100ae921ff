//! In-memory store: same semantics as the durable stores, and every key
//! lost when the process stops (so config refuses it unless asked for).
//! Builds with the `testing` feature (and unit tests) add what tests need:
//! call counters, a switch that makes the store unavailable, and direct
//! access to records. A release build has none of that.
//!
//! Must not: be used where keys must survive a restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{merge_missing, PutOutcome, ScanPage, Store, StoreError};
use crate::domain::{KeyId, KeyRecord, Region};

#[derive(Default)]
pub struct MemoryStore {
    records: Mutex<HashMap<KeyId, KeyRecord>>,
    #[cfg(any(test, feature = "testing"))]
    probe: probe::Probe,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyId, KeyRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(not(any(test, feature = "testing")))]
    fn enter(&self, _op: &'static str) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(any(test, feature = "testing"))]
mod probe {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::{KeyId, KeyRecord, MemoryStore, StoreError};

    #[derive(Default)]
    pub(super) struct Probe {
        down: AtomicBool,
        fenced: AtomicBool,
        panicking: AtomicBool,
        hanging: AtomicBool,
        gets: AtomicUsize,
        puts: AtomicUsize,
        pings: AtomicUsize,
    }

    impl MemoryStore {
        /// While `true`, every call fails with `Unavailable`.
        pub fn set_unavailable(&self, down: bool) {
            self.probe.down.store(down, Ordering::SeqCst);
        }

        /// From now on, writes are refused until restart (as a damaged
        /// file or a replaced table makes a real store refuse them).
        pub fn fence_writes(&self) {
            self.probe.fenced.store(true, Ordering::SeqCst);
        }

        pub(super) fn fenced(&self) -> bool {
            self.probe.fenced.load(Ordering::SeqCst)
        }

        /// While `true`, a ping never answers (a store that hangs).
        pub fn set_hang(&self, hanging: bool) {
            self.probe.hanging.store(hanging, Ordering::SeqCst);
        }

        /// Pings started.
        pub fn pings(&self) -> usize {
            self.probe.pings.load(Ordering::SeqCst)
        }

        /// Whether a ping is to hang.
        pub(super) fn hanging(&self) -> bool {
            self.probe.hanging.load(Ordering::SeqCst)
        }

        /// While `true`, every call panics (a bug in an adapter).
        pub fn set_panicking(&self, panicking: bool) {
            self.probe.panicking.store(panicking, Ordering::SeqCst);
        }

        pub fn get_calls(&self) -> usize {
            self.probe.gets.load(Ordering::SeqCst)
        }

        pub fn put_calls(&self) -> usize {
            self.probe.puts.load(Ordering::SeqCst)
        }

        /// Insert or replace a record directly (simulate old or tampered data).
        pub fn insert_raw(&self, record: KeyRecord) {
            self.lock().insert(record.id.clone(), record);
        }

        pub fn snapshot(&self, id: &KeyId) -> Option<KeyRecord> {
            self.lock().get(id).cloned()
        }

        /// Delete a record directly (simulate an out-of-band delete).
        pub fn remove(&self, id: &KeyId) {
            self.lock().remove(id);
        }

        /// Count the call, and fail it while switched off.
        pub(super) fn enter(&self, op: &'static str) -> Result<(), StoreError> {
            match op {
                "get" => self.probe.gets.fetch_add(1, Ordering::SeqCst),
                "put_if_absent" => self.probe.puts.fetch_add(1, Ordering::SeqCst),
                "ping" => self.probe.pings.fetch_add(1, Ordering::SeqCst),
                _ => 0,
            };
            assert!(
                !self.probe.panicking.load(Ordering::SeqCst),
                "injected panic in the store's {op}"
            );
            if self.probe.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable {
                    op,
                    source: "memory store switched off".into(),
                });
            }
            Ok(())
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.enter("get")?;
        Ok(self.lock().get(id).cloned())
    }

    async fn put_if_absent(&self, record: &KeyRecord) -> Result<PutOutcome, StoreError> {
        self.enter("put_if_absent")?;
        let mut records = self.lock();
        if let Some(existing) = records.get(&record.id) {
            return Ok(PutOutcome::Exists(existing.clone()));
        }
        records.insert(record.id.clone(), record.clone());
        Ok(PutOutcome::Created)
    }

    /// The check and the insert happen under one lock.
    fn put_is_atomic(&self) -> bool {
        true
    }

    /// The check and the update happen under one lock.
    async fn add_missing_regions(
        &self,
        read: &KeyRecord,
        keys: &BTreeMap<Region, Vec<u8>>,
        key_ids: &BTreeMap<Region, String>,
    ) -> Result<usize, StoreError> {
        self.enter("add_missing_regions")?;
        let mut records = self.lock();
        Ok(records
            .get_mut(&read.id)
            .filter(|stored| read.same_key_as(stored))
            .map_or(0, |stored| merge_missing(stored, keys, key_ids)))
    }

    fn refuses_writes(&self, op: &'static str) -> Result<(), StoreError> {
        #[cfg(any(test, feature = "testing"))]
        if self.fenced() {
            return Err(StoreError::Unavailable {
                op,
                source: "memory store's writes fenced".into(),
            });
        }
        let _ = op;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.enter("ping")?;
        #[cfg(any(test, feature = "testing"))]
        if self.hanging() {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// In id order; the cursor is the last id returned. Segment `n` holds
    /// the ids whose first byte is `n` modulo `segments`.
    async fn scan(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        self.enter("scan")?;
        let records = self.lock();
        // The map has no order: sort what is past the cursor, so pages
        // follow one another and the cursor is the greatest id returned.
        let mut after: Vec<&KeyRecord> = records
            .values()
            .filter(|r| cursor.is_none_or(|c| r.id.as_str() > c))
            .filter(|r| u32::from(r.id.as_str().as_bytes()[0]) % segments.max(1) == segment)
            .collect();
        after.sort_unstable_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let mut page: Vec<KeyRecord> = after
            .into_iter()
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let next = more
            .then(|| page.last().map(|r| r.id.as_str().to_string()))
            .flatten();
        Ok(ScanPage {
            records: page.into_iter().map(Ok).collect(),
            next,
        })
    }
}
