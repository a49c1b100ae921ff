//! Broker policy against in-process fakes: the local KMS behind a
//! fault-injecting wrapper, and the memory store. Time-based behaviour runs
//! under tokio's paused clock, so delays are exact rather than slept.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use tokio::time::Instant;

use super::*;
use crate::domain::RECORD_VERSION;
use crate::kms::faulty::{Fault, FaultyKms};
use crate::kms::local::LocalKms;
use crate::kms::KmsErrorKind;
use crate::store::memory::MemoryStore;

struct Rig {
    broker: KeyBroker,
    kms: Arc<FaultyKms>,
    store: Arc<MemoryStore>,
    _dir: tempfile::TempDir,
}

/// A memory store with the faults a real one may have, for the broker to
/// meet: a conditional put that is not atomic (`rival` lands on top of the
/// first accepted put before anyone reads it), a record written again by
/// someone else just as an update comes (`rival` lands right before the
/// first update), an in-place update that applies to nothing while
/// reporting no error (`updates_apply: false`, as DynamoDB's does for an
/// item without `key_ids`), and ids matched without case (`loose_ids`, a
/// table altered so).
struct OddStore {
    inner: Arc<MemoryStore>,
    rival: std::sync::Mutex<Option<crate::domain::KeyRecord>>,
    updates_apply: bool,
    loose_ids: bool,
}

impl OddStore {
    /// The id this store looks `id` up by.
    fn key(&self, id: &KeyId) -> KeyId {
        if self.loose_ids {
            KeyId::parse(&id.as_str().to_lowercase()).unwrap()
        } else {
            id.clone()
        }
    }
}

#[async_trait::async_trait]
impl Store for OddStore {
    async fn get(
        &self,
        id: &KeyId,
    ) -> Result<Option<crate::domain::KeyRecord>, crate::store::StoreError> {
        self.inner.get(&self.key(id)).await
    }

    async fn put_if_absent(
        &self,
        record: &crate::domain::KeyRecord,
    ) -> Result<crate::store::PutOutcome, crate::store::StoreError> {
        if let Some(stored) = self.inner.get(&self.key(&record.id)).await? {
            return Ok(crate::store::PutOutcome::Exists(stored));
        }
        let outcome = self.inner.put_if_absent(record).await;
        if let Some(rival) = self.rival.lock().unwrap().take() {
            self.inner.insert_raw(rival);
        }
        outcome
    }

    async fn add_missing_regions(
        &self,
        read: &crate::domain::KeyRecord,
        keys: &std::collections::BTreeMap<Region, Vec<u8>>,
        key_ids: &std::collections::BTreeMap<Region, String>,
    ) -> Result<usize, crate::store::StoreError> {
        if let Some(rival) = self.rival.lock().unwrap().take() {
            self.inner.insert_raw(rival);
        }
        if !self.updates_apply {
            return Ok(0);
        }
        self.inner.add_missing_regions(read, keys, key_ids).await
    }

    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        self.inner.ping().await
    }

    async fn scan(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<crate::store::ScanPage, crate::store::StoreError> {
        self.inner.scan(segment, segments, cursor, limit).await
    }
}

fn regions() -> Vec<Region> {
    ["r1", "r2", "r3"].into_iter().map(Region::new).collect()
}

fn settings() -> BrokerSettings {
    BrokerSettings {
        regions: regions(),
        min_regions_on_create: 2,
        data_key_bytes: 32,
        call_timeout: Duration::from_millis(2000),
        hedge_after: Duration::from_millis(250),
        hedge_budget_percent: 10,
        hedge_budget_burst: 10,
        max_in_flight_per_region: 256,
        breaker_failures: 3,
        breaker_open: Duration::from_millis(10_000),
        store_timeout: Duration::from_millis(2000),
        cache_ttl: Duration::from_secs(300),
        cache_max_entries: 1000,
        stale_if_error: Duration::ZERO,
    }
}

fn rig_with(settings: BrokerSettings) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalKms::open(&dir.path().join("keyring.json"), &settings.regions).unwrap();
    let kms = Arc::new(FaultyKms::new(Arc::new(local)));
    let store = Arc::new(MemoryStore::new());
    let metrics = Arc::new(Metrics::new().unwrap());
    let broker = KeyBroker::new(kms.clone(), store.clone(), settings, metrics);
    Rig {
        broker,
        kms,
        store,
        _dir: dir,
    }
}

/// Log lines written while the returned guard lives (this thread only).
#[derive(Clone, Default)]
struct Lines(Arc<std::sync::Mutex<Vec<u8>>>);

impl Lines {
    fn containing(&self, text: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(text))
            .map(str::to_string)
            .collect()
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_lines() -> (Lines, tracing::subscriber::DefaultGuard) {
    // tracing decides once per log statement, for the whole process,
    // whether anyone wants it; with one subscriber registered it asks only
    // the thread that reaches the statement first, which may be another
    // test's with no subscriber. A second one, wanting every line and kept
    // for the process, makes it ask them all.
    static WANTS_ALL: std::sync::OnceLock<tracing::Dispatch> = std::sync::OnceLock::new();
    WANTS_ALL.get_or_init(|| {
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(std::io::sink)
                .finish(),
        )
    });
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (lines, tracing::subscriber::set_default(subscriber))
}

fn rig() -> Rig {
    rig_with(settings())
}

fn no_cache() -> BrokerSettings {
    BrokerSettings {
        cache_ttl: Duration::ZERO,
        ..settings()
    }
}

fn id(s: &str) -> KeyId {
    KeyId::parse(s).unwrap()
}

fn r(name: &str) -> Region {
    Region::new(name)
}

mod creates;
mod hedging;
mod reads;
mod repair;
mod store;
mod unanswered;
