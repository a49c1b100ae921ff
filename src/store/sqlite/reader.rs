//! Point reads queue for a few blocking tasks, each of which answers reads
//! one after the other until the queue is empty. Under a stream of cache
//! misses a reading thread stays busy instead of being woken for each
//! read, which costs more than a read from a warm page cache. A read that
//! finds no task reading first yields to the other requests its worker
//! has ready, so that the misses of one turn of the worker share one
//! thread wake-up rather than paying one each. A task is
//! added when more reads wait than tasks read (up to `POOL_SIZE`), so a
//! read waits for at most the read in progress of a task. Reads whose
//! caller stopped waiting are skipped. The tasks take their connections
//! from the store's idle ones and open one if none is idle.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{connect, lock, read, spawn_queue_task, POOL_SIZE};
use crate::domain::{KeyId, KeyRecord};
use crate::store::StoreError;

const OP: &str = "get";

struct Job {
    id: KeyId,
    span: tracing::Span,
    reply: oneshot::Sender<Result<Option<KeyRecord>, StoreError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Tasks reading now.
    active: usize,
}

pub(super) struct Reader {
    queue: Arc<Mutex<Queue>>,
    /// Idle connections, shared with the store's other calls.
    idle: Arc<Mutex<Vec<Connection>>>,
    path: PathBuf,
    busy_timeout: Duration,
}

impl Reader {
    pub(super) fn new(
        idle: Arc<Mutex<Vec<Connection>>>,
        path: &Path,
        busy_timeout: Duration,
    ) -> Self {
        Self {
            queue: Arc::default(),
            idle,
            path: path.to_path_buf(),
            busy_timeout,
        }
    }

    pub(super) async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let none_reading = {
            let mut queue = lock(&self.queue);
            queue.jobs.push_back(Job {
                id: id.clone(),
                span: tracing::Span::current(),
                reply,
            });
            queue.active == 0
        };
        if none_reading {
            // Waking a thread costs more than a read from a warm page
            // cache. Let the other requests this worker has ready queue
            // their reads first, so that one wake-up answers all of them.
            tokio::task::yield_now().await;
        }
        let start = {
            let mut queue = lock(&self.queue);
            let start = queue.jobs.len() > queue.active && queue.active < POOL_SIZE;
            queue.active += usize::from(start);
            start
        };
        if start {
            let (queue, abandoned) = (Arc::clone(&self.queue), Arc::clone(&self.queue));
            let idle = Arc::clone(&self.idle);
            let (path, busy) = (self.path.clone(), self.busy_timeout);
            // A task that ends normally stops counting itself under the
            // lock with which it found the queue empty, so no read is left
            // behind. One that does not end so stops being counted, and if
            // it was the last, the reads still queued are dropped.
            spawn_queue_task(
                move || drain(&queue, &idle, &path, busy),
                move || {
                    let mut queue = lock(&abandoned);
                    queue.active = queue.active.saturating_sub(1);
                    if queue.active == 0 {
                        queue.jobs.clear();
                    }
                },
            );
        }
        answer.await.map_err(|e| StoreError::Other {
            op: OP,
            source: Box::new(ReaderStopped(e)),
        })?
    }
}

/// The read was never answered: the task reading it panicked, or the
/// runtime shut down before it ran.
#[derive(Debug, thiserror::Error)]
#[error("the read task stopped before answering")]
struct ReaderStopped(#[source] oneshot::error::RecvError);

/// Answer queued reads until none is left.
fn drain(queue: &Mutex<Queue>, idle: &Mutex<Vec<Connection>>, path: &Path, busy: Duration) {
    let mut conn: Option<Connection> = None;
    loop {
        let job = {
            let mut queue = lock(queue);
            match queue.jobs.pop_front() {
                Some(job) => job,
                None => {
                    queue.active -= 1;
                    drop(queue);
                    if let Some(conn) = conn {
                        lock(idle).push(conn);
                    }
                    return;
                }
            }
        };
        if job.reply.is_closed() {
            continue;
        }
        let _entered = job.span.enter();
        if conn.is_none() {
            conn = match lock(idle).pop().map_or_else(|| connect(path, busy), Ok) {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            };
        }
        if let Some(c) = &conn {
            let _ = job.reply.send(read(c, job.id.as_str(), OP));
        }
    }
}
