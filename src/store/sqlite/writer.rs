//! Group commit: the writes of one process go through one queue, and one
//! blocking task at a time commits what has queued in a single `BEGIN
//! IMMEDIATE` transaction, so a burst of creates costs one WAL sync rather
//! than one each. Every caller is answered only after the transaction that
//! holds its write has committed; a crash before that loses only writes no
//! caller was told about.
//!
//! If any write of a batch fails (a corrupt stored row, a full disk), the
//! batch is rolled back and each of its writes is run again in a
//! transaction of its own, so a failure reaches only the writes it
//! concerns. If the transaction cannot start (another process holds the
//! lock past `busy_timeout`), every write of the batch gets that answer.
//! Writes whose caller stopped waiting before their batch began are
//! skipped: nobody was told of them, and under overload they would only
//! lengthen the queue.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use super::{lock, other, read, refuse_blob_id, spawn_queue_task, to_json, Reopen};
use crate::domain::{KeyRecord, Region};
use crate::store::{encode_keys, merge_missing, region_map, PutOutcome, StoreError};

/// Writes committed together at most. Bounds how long one transaction
/// holds the database's write lock against other processes.
const MAX_BATCH: usize = 256;

/// One queued write.
pub(super) enum Write {
    Put(KeyRecord),
    AddMissing {
        /// The record whose key `keys` wrap, as it was read.
        read: KeyRecord,
        keys: BTreeMap<Region, Vec<u8>>,
        key_ids: BTreeMap<Region, String>,
    },
}

/// What a write did.
#[derive(Debug)]
pub(super) enum Done {
    Put(PutOutcome),
    Added(usize),
}

impl Write {
    pub(super) fn op(&self) -> &'static str {
        match self {
            Write::Put(_) => "put_if_absent",
            Write::AddMissing { .. } => "add_missing_regions",
        }
    }

    /// Apply the write inside the caller's open transaction.
    fn apply(&self, conn: &Connection) -> Result<Done, StoreError> {
        let op = self.op();
        match self {
            Write::Put(record) => {
                // The unique index takes a blob id for another id than the
                // same text: such a record is refused, never written beside.
                refuse_blob_id(conn, record.id.as_str(), op)?;
                let keys = to_json(&encode_keys(&record.keys), op)?;
                let key_ids = to_json(&region_map(&record.key_ids), op)?;
                let inserted = conn
                    .prepare_cached(
                        "INSERT INTO rkms_keys (id, keys, v, key_ids, created_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(id) DO NOTHING",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            record.id.as_str(),
                            keys,
                            record.version.map(i64::from),
                            key_ids,
                            record.created_at,
                        ])
                    })
                    .map_err(other(op))?;
                if inserted == 1 {
                    // Read back in the same transaction: a table that
                    // changes what is written (a trigger, say) would
                    // otherwise have its key served and then lost.
                    let stored: Option<String> = conn
                        .prepare_cached("SELECT keys FROM rkms_keys WHERE id = ?1")
                        .and_then(|mut stmt| {
                            stmt.query_row(params![record.id.as_str()], |r| r.get(0))
                                .optional()
                        })
                        .map_err(other(op))?;
                    return match stored {
                        Some(stored) if stored == keys => Ok(Done::Put(PutOutcome::Created)),
                        _ => Err(StoreError::Unavailable {
                            op,
                            source: Box::new(super::TableChanged(
                                "the record just written reads back otherwise (a trigger or constraint on the table changes what is written)".into(),
                            )),
                        }),
                    };
                }
                match read(conn, record.id.as_str(), op)? {
                    Some(existing) => Ok(Done::Put(PutOutcome::Exists(existing))),
                    None => Err(StoreError::Other {
                        op,
                        source: "insert ignored but no record found".into(),
                    }),
                }
            }
            Write::AddMissing {
                read: expected,
                keys,
                key_ids,
            } => {
                let id = &expected.id;
                // Checked inside the write transaction: no other writer can
                // replace the record between the check and the update.
                let Some(mut record) =
                    read(conn, id.as_str(), op)?.filter(|stored| expected.same_key_as(stored))
                else {
                    return Ok(Done::Added(0));
                };
                let added = merge_missing(&mut record, keys, key_ids);
                if added > 0 {
                    let keys = to_json(&encode_keys(&record.keys), op)?;
                    let key_ids = to_json(&region_map(&record.key_ids), op)?;
                    conn.prepare_cached(
                        "UPDATE rkms_keys SET keys = ?2, key_ids = ?3 WHERE id = ?1",
                    )
                    .and_then(|mut stmt| stmt.execute(params![id.as_str(), keys, key_ids]))
                    .map_err(other(op))?;
                }
                Ok(Done::Added(added))
            }
        }
    }
}

struct Job {
    write: Write,
    span: tracing::Span,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Job>,
    /// A blocking task is committing; it takes whatever queues meanwhile.
    draining: bool,
    /// The write connection, while no task holds it. `None` at first and
    /// after a panic: the next batch opens one.
    conn: Option<Connection>,
}

pub(super) struct Writer {
    queue: Arc<Mutex<Queue>>,
    /// A store opened read-only writes through a read-only connection:
    /// each write fails, and nothing is written.
    reopen: Arc<Reopen>,
    batches: Arc<AtomicU64>,
}

impl Writer {
    pub(super) fn new(reopen: Arc<Reopen>) -> Self {
        Self {
            queue: Arc::default(),
            reopen,
            batches: Arc::default(),
        }
    }

    /// Queue `write` and wait for the commit of the batch that holds it.
    /// If the caller stops waiting, a write already in a batch is still
    /// committed; one still queued is dropped.
    pub(super) async fn submit(&self, write: Write) -> Result<Done, StoreError> {
        let op = write.op();
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = lock(&self.queue);
            queue.jobs.push(Job {
                write,
                span: tracing::Span::current(),
                reply,
            });
            !std::mem::replace(&mut queue.draining, true)
        };
        if start {
            let (queue, abandoned) = (Arc::clone(&self.queue), Arc::clone(&self.queue));
            let reopen = Arc::clone(&self.reopen);
            let batches = Arc::clone(&self.batches);
            // A drain that ends normally marks the queue idle under the
            // lock with which it found the queue empty, so no write is
            // left behind. One that does not end so drops what is queued.
            spawn_queue_task(
                move || drain(&queue, &reopen, &batches),
                move || {
                    let mut queue = lock(&abandoned);
                    queue.draining = false;
                    queue.jobs.clear();
                },
            );
        }
        answer.await.map_err(|e| StoreError::Other {
            op,
            source: Box::new(WriterStopped(e)),
        })?
    }

    /// Transactions committed or attempted so far.
    #[cfg(test)]
    pub(super) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    /// Writes waiting for a batch.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        lock(&self.queue).jobs.len()
    }
}

/// The write was never answered: the task committing it panicked, or the
/// runtime shut down before it ran.
#[derive(Debug, thiserror::Error)]
#[error("the write task stopped before answering")]
struct WriterStopped(#[source] oneshot::error::RecvError);

/// Commit queued writes, a batch at a time, until none is left.
fn drain(queue: &Mutex<Queue>, reopen: &Reopen, batches: &AtomicU64) {
    loop {
        let (batch, conn) = {
            let mut queue = lock(queue);
            if queue.jobs.is_empty() {
                queue.draining = false;
                return;
            }
            let take = queue.jobs.len().min(MAX_BATCH);
            let rest = queue.jobs.split_off(take);
            (std::mem::replace(&mut queue.jobs, rest), queue.conn.take())
        };
        let batch: Vec<Job> = batch
            .into_iter()
            .filter(|job| !job.reply.is_closed())
            .collect();
        if batch.is_empty() {
            lock(queue).conn = conn;
            continue;
        }
        let op = batch.first().map_or("write", |job| job.write.op());
        // A file whose owner or mode no longer lets this process write is
        // refused as readiness reports it: the open handle would go on
        // writing, and a restart could not.
        if let Err(e) = reopen
            .still_there(op, conn.as_ref())
            .and_then(|()| reopen.writable(op))
            .and_then(|()| reopen.intact(op))
        {
            lock(queue).conn = conn;
            answer_all(batch, e);
            continue;
        }
        let mut conn = match conn.map_or_else(|| reopen.connect(), Ok) {
            Ok(conn) => conn,
            Err(e) => {
                answer_all(batch, e);
                continue;
            }
        };
        batches.fetch_add(1, Ordering::Relaxed);
        commit(&mut conn, batch, reopen);
        // A transaction left open (its rollback failed, the file went
        // away) would fail every later BEGIN: open a new connection next.
        if conn.is_autocommit() {
            lock(queue).conn = Some(conn);
        } else {
            tracing::warn!(
                "the SQLite write connection is left inside a transaction; reconnecting"
            );
        }
    }
}

/// Commit `batch` in one transaction, or each write alone if one fails.
fn commit(conn: &mut Connection, batch: Vec<Job>, reopen: &Reopen) {
    if let [_] = batch.as_slice() {
        for job in batch {
            alone(conn, job, reopen);
        }
        return;
    }
    let tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let op = batch.first().map_or("write", |job| job.write.op());
            let e = other(op)(e);
            reopen.note_error(&e);
            answer_all(batch, e);
            return;
        }
    };
    if let Err(e) = reopen.not_gone_back(&tx, "write") {
        drop(tx);
        answer_all(batch, e);
        return;
    }
    let mut done = Vec::with_capacity(batch.len());
    for job in &batch {
        let _entered = job.span.enter();
        match job.write.apply(&tx) {
            Ok(d) => done.push(d),
            Err(e) => {
                tracing::debug!(error = %crate::report::chain(&e), "a write of a batch failed; committing each alone");
                break;
            }
        }
    }
    let committed = if done.len() == batch.len() {
        // A failed commit rolls back as the transaction drops.
        tx.commit()
            .map_err(|e| tracing::debug!(error = %crate::report::chain(&e), "a batch failed to commit; committing each write alone"))
            .is_ok()
    } else {
        drop(tx); // rolls back
        false
    };
    if committed {
        // What this group wrote counts as seen.
        reopen.saw(conn.last_insert_rowid());
        for (job, d) in batch.into_iter().zip(done) {
            let _ = job.reply.send(Ok(d));
        }
        return;
    }
    for job in batch.into_iter().filter(|job| !job.reply.is_closed()) {
        alone(conn, job, reopen);
    }
}

/// Run one write in a transaction of its own and answer it.
fn alone(conn: &mut Connection, job: Job, reopen: &Reopen) {
    let _entered = job.span.enter();
    let op = job.write.op();
    // Checked again for each: the write before it, in the same group, may
    // have found the file damaged.
    let result = reopen
        .intact(op)
        .and_then(|()| {
            conn.transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(other(op))
        })
        .and_then(|tx| {
            reopen.not_gone_back(&tx, op)?;
            let done = job.write.apply(&tx)?;
            tx.commit().map_err(other(op))?;
            Ok(done)
        });
    if result.is_ok() {
        // What it wrote counts as seen.
        reopen.saw(conn.last_insert_rowid());
    }
    reopen.note(&result);
    let _ = job.reply.send(result);
}

/// The cause of a batch's failure, shared by the errors of all its
/// writes: shows as the cause itself.
#[derive(Debug, Clone)]
struct Shared(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("its group of writes failed")
    }
}

/// The cause itself is the source, so that what looks through an error's
/// sources for a cause (`StoreError::is_outage`) finds it.
impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Answer every write of `batch` with `failure`, each in its own error of
/// the same kind, for its own operation.
fn answer_all(batch: Vec<Job>, failure: StoreError) {
    let (unavailable, cause) = match failure {
        StoreError::Unavailable { source, .. } => (true, Shared(Arc::from(source))),
        StoreError::Other { source, .. } => (false, Shared(Arc::from(source))),
        corrupt @ StoreError::Corrupt { .. } => (false, Shared(Arc::new(corrupt))),
    };
    for job in batch {
        let (op, source) = (job.write.op(), Box::new(cause.clone()));
        let _ = job.reply.send(Err(if unavailable {
            StoreError::Unavailable { op, source }
        } else {
            StoreError::Other { op, source }
        }));
    }
}
