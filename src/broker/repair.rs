//! Repair: give a record the configured regions it lacks. A record is
//! queued the moment it is seen short (created during an outage, or read
//! after a region was added), and its repair retries with backoff until the
//! missing regions answer: until then, losing one more region could lose
//! the key. The queue is bounded and owned by the broker; at shutdown,
//! unfinished repairs are logged by id and left for a later read, which
//! queues them again.
//!
//! Must not: replace a stored ciphertext (the store only fills gaps), add
//! a ciphertext to a record written again since it was read (each attempt
//! checks), or repair records written by RKMS (Go).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::domain::{DataKey, KeyId, KeyRecord, Region};
use crate::metrics::StoreOp;

/// Records waiting for repair, at most. Past it a short record is left for
/// its next read; the warning says so.
pub(super) const QUEUE_CAPACITY: usize = 10_000;
/// Repairs making KMS calls at the same time, at most: after an outage
/// many records lack a region at once, and the Encrypt burst must stay
/// under the KMS quota.
const CONCURRENT_REPAIRS: usize = 16;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const FULL_WARN_EVERY: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Job {
    id: KeyId,
    key: Arc<DataKey>,
    present: BTreeSet<Region>,
    /// The record as it was read: one deleted and written again with
    /// another key since (out of band) must not gain this key's
    /// ciphertexts.
    read: KeyRecord,
}

pub(super) struct Repairs {
    regions: Vec<Region>,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    pending: Mutex<HashSet<KeyId>>,
    /// When "queue full" was last said, and records turned away since.
    full: Mutex<(Option<std::time::Instant>, u64)>,
    idle: Notify,
    gauge: IntGauge,
    pub(super) cancel: CancellationToken,
}

impl Repairs {
    pub fn new(regions: &[Region], gauge: IntGauge) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        gauge.set(0);
        Self {
            regions: regions.to_vec(),
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashSet::new()),
            full: Mutex::new((None, 0)),
            idle: Notify::new(),
            gauge,
            cancel: CancellationToken::new(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashSet<KeyId>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a repair of `record` (whose key is `key`) when it lacks a
    /// configured region. At most one repair per id is pending.
    pub fn queue(&self, record: &KeyRecord, key: &Arc<DataKey>) {
        let id = &record.id;
        if self.regions.iter().all(|r| record.keys.contains_key(r)) || self.cancel.is_cancelled() {
            return;
        }
        let mut pending = self.pending();
        if pending.contains(id) {
            return;
        }
        // Pending counts repairs retrying as well as those queued: a region
        // that keeps refusing must not grow this without bound.
        if pending.len() >= QUEUE_CAPACITY {
            drop(pending);
            self.warn_full();
            return;
        }
        pending.insert(id.clone());
        let job = Job {
            id: id.clone(),
            key: Arc::clone(key),
            present: record.keys.keys().cloned().collect(),
            read: record.clone(),
        };
        if self.tx.try_send(job).is_err() {
            pending.remove(id);
            tracing::warn!(key_id = %id, capacity = QUEUE_CAPACITY, "repair queue full; the record is repaired on a later read");
        }
        self.gauge.set(pending.len() as i64);
    }

    /// Say the queue is full at most once a minute, with how many records
    /// were turned away meanwhile: during an outage every short record
    /// read would otherwise log a line.
    fn warn_full(&self) {
        let mut full = self.full.lock().unwrap_or_else(|p| p.into_inner());
        full.1 += 1;
        if full.0.is_some_and(|at| at.elapsed() < FULL_WARN_EVERY) {
            return;
        }
        tracing::warn!(
            capacity = QUEUE_CAPACITY,
            turned_away = full.1,
            "repair queue full; short records are repaired on a later read"
        );
        *full = (Some(std::time::Instant::now()), 0);
    }

    fn done(&self, id: &KeyId) {
        let mut pending = self.pending();
        pending.remove(id);
        self.gauge.set(pending.len() as i64);
        if pending.is_empty() {
            self.idle.notify_waiters();
        }
    }

    /// Completes when no repair is pending.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.pending().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Start the worker that takes jobs off the queue (once).
    pub(super) fn start_worker(inner: &Arc<Inner>) {
        let Some(mut rx) = inner
            .repairs
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        // The worker holds the broker weakly: a broker nobody uses any more
        // drops (and wipes its cache) even with repairs outstanding.
        let weak = Arc::downgrade(inner);
        let slots = Arc::new(Semaphore::new(CONCURRENT_REPAIRS));
        let cancel = inner.repairs.cancel.clone();
        let tasks = inner.tasks.clone();
        inner.tasks.spawn(async move {
            loop {
                let job = tokio::select! {
                    job = rx.recv() => job,
                    () = cancel.cancelled() => None,
                };
                let Some(job) = job else { break };
                tasks.spawn(repair(
                    weak.clone(),
                    job,
                    Arc::clone(&slots),
                    cancel.clone(),
                ));
            }
            // Jobs still queued at shutdown: say which records stay short.
            rx.close();
            while let Ok(job) = rx.try_recv() {
                abandon(&weak, &job);
            }
        });
    }
}

/// Retry one record until every configured region is present, with
/// exponential backoff between attempts.
async fn repair(
    inner: Weak<Inner>,
    mut job: Job,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut added_total = 0;
    let mut failures: u32 = 0;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let outcome = {
            let Ok(_slot) = slots.acquire().await else {
                return;
            };
            attempt(&strong, &mut job).await
        };
        match outcome {
            Ok(Step::Added(added)) => added_total += added,
            Ok(Step::Dropped(why)) => {
                // This key is not the stored one any more: stop serving it.
                if let Some(cache) = &strong.cache {
                    cache.remove_if(&job.id, |entry| Arc::ptr_eq(&entry.key, &job.key));
                }
                tracing::warn!(key_id = %job.id, "{why}; repair dropped, and this key no longer served from the cache");
                strong.repairs.done(&job.id);
                return;
            }
            Err(failed) if failed.is_final() => {
                tracing::error!(key_id = %job.id, error = %failed, "record repair given up; run rkms backfill once the record is fixed");
                strong.repairs.done(&job.id);
                return;
            }
            // The first failure and every tenth: a region that keeps
            // refusing retries each record every minute.
            Err(failed) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    tracing::warn!(key_id = %job.id, attempts = failures, error = %failed, "record repair failed; retrying");
                }
            }
        }
        let missing = strong
            .settings
            .regions
            .iter()
            .filter(|r| !job.present.contains(*r))
            .count();
        if missing == 0 {
            if added_total > 0 {
                strong.metrics.records_repaired.inc();
                tracing::info!(key_id = %job.id, regions_added = added_total, "repaired record: every configured region is present");
            }
            strong.repairs.done(&job.id);
            return;
        }
        drop(strong);
        let wait = backoff.mul_f64(1.0 + rand::random::<f64>() * 0.2);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => {
                abandon(&inner, &job);
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What an attempt did.
enum Step {
    /// Added this many regions (perhaps 0: another writer filled them).
    Added(usize),
    /// The record is gone, or is no longer the one read: nothing to do.
    Dropped(&'static str),
}

/// Why an attempt added nothing.
enum Failed {
    /// No missing region wrapped the key: its error, if a call was made
    /// (none is when every missing region's breaker is open).
    Kms(Option<crate::kms::KmsError>),
    Store(super::BrokerError),
    /// The update applied to nothing, and the stored record still lacks
    /// the regions (a record the store cannot update in place, such as a
    /// DynamoDB item without `key_ids`).
    NotTaken(Vec<Region>),
}

impl Failed {
    /// Retrying cannot help: the record must be fixed first.
    fn is_final(&self) -> bool {
        match self {
            Self::NotTaken(_) => true,
            Self::Store(super::BrokerError::Store { source }) => {
                matches!(**source, crate::store::StoreError::Corrupt { .. })
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kms(Some(e)) => f.write_str(&crate::report::chain(e)),
            Self::Kms(None) => f.write_str("every missing region's breaker is open"),
            Self::Store(e) => f.write_str(&crate::report::chain(e)),
            Self::NotTaken(regions) => {
                let names: Vec<&str> = regions.iter().map(Region::as_str).collect();
                write!(
                    f,
                    "the store did not add {} to the record, which still lacks them; it cannot be updated in place (in DynamoDB: an item without key_ids, or with a ciphertext not in canonical base64, such as one with a trailing newline)",
                    names.join(",")
                )
            }
        }
    }
}

/// The stored record, if it is still the one the job read.
async fn still_read(inner: &Arc<Inner>, job: &Job) -> Result<Option<KeyRecord>, Failed> {
    let stored = inner
        .timed_store(StoreOp::Get, inner.store.get(&job.id))
        .await
        .map_err(Failed::Store)?;
    Ok(stored.filter(|s| job.read.same_key_as(s)))
}

/// One pass: wrap the key under every missing region that answers, and
/// add those ciphertexts to the record if it is still the one read (the
/// store checks that in the same step as the update).
async fn attempt(inner: &Arc<Inner>, job: &mut Job) -> Result<Step, Failed> {
    let missing: Vec<Region> = inner
        .settings
        .regions
        .iter()
        .filter(|r| !job.present.contains(*r))
        .cloned()
        .collect();
    // No KMS call for a write the store refuses until rkms restarts.
    if let Err(e) = inner.store.refuses_writes("add_missing_regions") {
        return Err(Failed::Store(super::BrokerError::Store {
            source: std::sync::Arc::new(e),
        }));
    }
    // No I/O while every missing region's breaker is open.
    let (wrapped, error) = inner
        .encrypt_under(&job.id, &missing, &job.key, missing.len())
        .await;
    if wrapped.is_empty() {
        return Err(Failed::Kms(error));
    }
    let mut keys = BTreeMap::new();
    let mut arns = BTreeMap::new();
    for (region, w) in wrapped {
        arns.insert(region.clone(), w.key_arn);
        keys.insert(region, w.ciphertext);
    }
    let added = inner
        .timed_store(
            StoreOp::AddMissingRegions,
            inner.store.add_missing_regions(&job.read, &keys, &arns),
        )
        .await
        .map_err(Failed::Store)?;
    if added == keys.len() {
        job.present.extend(keys.into_keys());
        return Ok(Step::Added(added));
    }
    // Fewer added than wrapped: another writer filled the rest (the update
    // never replaces a ciphertext, only fills gaps), the record was
    // deleted or written again with another key (the update then adds
    // nothing), or the store could not update it. The stored record says
    // which.
    let Some(stored) = still_read(inner, job).await? else {
        return Ok(Step::Dropped(
            "the record was deleted or written again since it was read",
        ));
    };
    let not_taken: Vec<Region> = keys
        .into_keys()
        .filter(|r| !stored.keys.contains_key(r))
        .collect();
    job.present.extend(stored.keys.into_keys());
    if not_taken.is_empty() {
        Ok(Step::Added(added))
    } else {
        Err(Failed::NotTaken(not_taken))
    }
}

fn abandon(inner: &Weak<Inner>, job: &Job) {
    let present: Vec<&str> = job.present.iter().map(Region::as_str).collect();
    tracing::warn!(key_id = %job.id, present = %present.join(","), "record repair not finished at shutdown; the next read of this id queues it again");
    if let Some(inner) = inner.upgrade() {
        inner.repairs.done(&job.id);
    }
}
