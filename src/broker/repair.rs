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

/// Records waiting for repair, at most. Past it a short record is left for
/// its next read; the warning says so.
pub(super) const QUEUE_CAPACITY: usize = 10_000;
/// Repairs making KMS calls at the same time, at most: after an outage
/// many records lack a region at once, and the Encrypt burst must stay
/// under the KMS quota.
const CONCURRENT_REPAIRS: usize = 16;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

struct Job {
    id: KeyId,
    key: Arc<DataKey>,
    present: BTreeSet<Region>,
    /// One region's ciphertext in the record as it was read: a record
    /// deleted and written again with another key since (out of band) must
    /// not gain this key's ciphertexts.
    anchor: Option<(Region, Vec<u8>)>,
}

pub(super) struct Repairs {
    regions: Vec<Region>,
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    pending: Mutex<HashSet<KeyId>>,
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
        let present: BTreeSet<Region> = record.keys.keys().cloned().collect();
        if self.regions.iter().all(|r| present.contains(r)) || self.cancel.is_cancelled() {
            return;
        }
        let mut pending = self.pending();
        if pending.contains(id) {
            return;
        }
        // Pending counts repairs retrying as well as those queued: a region
        // that keeps refusing must not grow this without bound.
        if pending.len() >= QUEUE_CAPACITY {
            tracing::warn!(key_id = %id, capacity = QUEUE_CAPACITY, "repair queue full; the record is repaired on a later read");
            return;
        }
        pending.insert(id.clone());
        let job = Job {
            id: id.clone(),
            key: Arc::clone(key),
            present,
            anchor: record
                .keys
                .iter()
                .next()
                .map(|(r, c)| (r.clone(), c.clone())),
        };
        if self.tx.try_send(job).is_err() {
            pending.remove(id);
            tracing::warn!(key_id = %id, capacity = QUEUE_CAPACITY, "repair queue full; the record is repaired on a later read");
        }
        self.gauge.set(pending.len() as i64);
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
            Ok(added) => added_total += added,
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
                    "the store did not add {} to the record, which still lacks them; it cannot be updated in place (in DynamoDB, an item without key_ids)",
                    names.join(",")
                )
            }
        }
    }
}

/// One pass: wrap the key under every missing region that answers and add
/// those ciphertexts to the stored record. Returns how many were added.
async fn attempt(inner: &Arc<Inner>, job: &mut Job) -> Result<usize, Failed> {
    let stored = inner
        .timed_store("get", inner.store.get(&job.id))
        .await
        .map_err(Failed::Store)?;
    let replaced = match (&stored, &job.anchor) {
        (None, _) => true,
        (Some(s), Some((region, ciphertext))) => s.keys.get(region) != Some(ciphertext),
        (Some(_), None) => false,
    };
    if replaced {
        tracing::warn!(key_id = %job.id, "the record to repair was deleted or replaced since it was read; repair dropped (a replaced record is queued again on its next read)");
        job.present.extend(inner.settings.regions.iter().cloned());
        return Ok(0);
    }
    if let Some(stored) = stored {
        job.present.extend(stored.keys.into_keys());
    }
    let missing: Vec<Region> = inner
        .settings
        .regions
        .iter()
        .filter(|r| !job.present.contains(*r))
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
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
            "add_missing_regions",
            inner.store.add_missing_regions(&job.id, &keys, &arns),
        )
        .await
        .map_err(Failed::Store)?;
    if added == keys.len() {
        job.present.extend(keys.into_keys());
        return Ok(added);
    }
    // Fewer added than wrapped: another writer filled the rest (the update
    // never replaces a ciphertext, only fills gaps), the record is gone,
    // or the store could not update it. The stored record says which.
    let stored = inner
        .timed_store("get", inner.store.get(&job.id))
        .await
        .map_err(Failed::Store)?;
    let Some(stored) = stored else {
        tracing::warn!(key_id = %job.id, "the record to repair is no longer stored; repair dropped");
        job.present.extend(inner.settings.regions.iter().cloned());
        return Ok(added);
    };
    let not_taken: Vec<Region> = keys
        .into_keys()
        .filter(|r| !stored.keys.contains_key(r))
        .collect();
    job.present.extend(stored.keys.into_keys());
    if not_taken.is_empty() {
        Ok(added)
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
