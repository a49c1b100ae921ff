//! Point reads queue for a few blocking tasks, each of which answers reads
//! one after the other until the queue is empty. Under a stream of cache
//! misses a reading thread stays busy instead of being woken for each
//! read, which costs more than a read from a warm page cache.
//!
//! A read that finds no task reading first yields to the other requests
//! its worker has ready. The first of them back starts one task, which
//! answers them all: the misses of one turn of the worker share one thread
//! wake-up. Such a read waits for that turn to end (tokio resumes a
//! yielded task when its worker next checks for I/O: when it has nothing
//! else to run, or periodically), then for the reads queued before it.
//! While a task reads, a read that comes adds another task if more reads
//! wait than tasks read (up to `POOL_SIZE`), so a backlog is shared out.
//! A read that waits behind busy tasks for longer than [`STUCK_AFTER`]
//! without being taken adds a task too: a read stuck in its task (a
//! stalled disk, another process's lock) holds up no read behind it, even
//! when no other read comes to add one. A stream of quick reads never
//! waits that long, so it keeps one task busy, not one per read.
//!
//! Reads whose caller stopped waiting are skipped, and those left queued
//! with no task coming for them are dropped. The tasks take their
//! connections from the store's idle ones and open one if none is idle.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::{lock, read, spawn_queue_task, Reopen, POOL_SIZE};
use crate::domain::{KeyId, KeyRecord};
use crate::store::StoreError;

const OP: &str = "get";

/// How long a read may wait, not yet taken, behind tasks that are all
/// inside reads before it adds a task of its own. A read from SQLite's
/// page cache takes microseconds, and one from disk a few milliseconds.
const STUCK_AFTER: Duration = Duration::from_millis(20);

struct Job {
    /// The read's number in the queue: a waiting read finds itself by it.
    seq: u64,
    id: KeyId,
    span: tracing::Span,
    reply: oneshot::Sender<Result<Option<KeyRecord>, StoreError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Tasks reading now.
    active: usize,
    /// Tasks started so far.
    started: u64,
    /// The next read's number.
    next_seq: u64,
    /// A read to hold in its task until the test lets it go: a stalled
    /// disk, for one read only.
    #[cfg(test)]
    hold: Option<(KeyId, std::sync::mpsc::Receiver<()>)>,
    /// [`STUCK_AFTER`], longer for a test that counts tasks on a machine
    /// that may be slow.
    #[cfg(test)]
    stuck_after: Option<Duration>,
}

impl Queue {
    fn stuck_after(&self) -> Duration {
        #[cfg(test)]
        if let Some(d) = self.stuck_after {
            return d;
        }
        STUCK_AFTER
    }

    /// Count a task about to be started when `start`; returns `start`.
    fn count_start(&mut self, start: bool) -> bool {
        self.active += usize::from(start);
        self.started += u64::from(start);
        start
    }
}

pub(super) struct Reader {
    queue: Arc<Mutex<Queue>>,
    /// Idle connections, shared with the store's other calls.
    idle: Arc<Mutex<Vec<Connection>>>,
    reopen: Arc<Reopen>,
}

impl Reader {
    pub(super) fn new(idle: Arc<Mutex<Vec<Connection>>>, reopen: Arc<Reopen>) -> Self {
        Self {
            queue: Arc::default(),
            idle,
            reopen,
        }
    }

    pub(super) async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let (reply, answer) = oneshot::channel();
        // Whether this read must wait for a task to be started, and if a
        // task is reading already, whether to add one: decided under the
        // lock that queues the read.
        let (seq, stuck_after, none_reading, start) = {
            let mut queue = lock(&self.queue);
            let seq = queue.next_seq;
            queue.next_seq += 1;
            queue.jobs.push_back(Job {
                seq,
                id: id.clone(),
                span: tracing::Span::current(),
                reply,
            });
            let stuck_after = queue.stuck_after();
            if queue.active == 0 {
                (seq, stuck_after, true, false)
            } else {
                let start = queue.jobs.len() > queue.active && queue.active < POOL_SIZE;
                (seq, stuck_after, false, queue.count_start(start))
            }
        };
        let mut pending = Unstarted {
            queue: &self.queue,
            answer,
            armed: none_reading,
        };
        let start = if none_reading {
            // Waking a thread costs more than a read from a warm page
            // cache. Let the other requests this worker has ready queue
            // their reads first; the first of them back starts one task,
            // which answers them all.
            tokio::task::yield_now().await;
            let mut queue = lock(&self.queue);
            let start = queue.active == 0 && !queue.jobs.is_empty();
            queue.count_start(start)
        } else {
            start
        };
        pending.armed = false;
        if start {
            self.start_task();
        } else {
            // Queued behind tasks that are all inside reads: if none of
            // them takes this read soon, one may be stuck.
            let answered = tokio::time::timeout(stuck_after, &mut pending.answer).await;
            if let Ok(answer) = answered {
                return answer.map_err(stopped)?;
            }
            let start = {
                let mut queue = lock(&self.queue);
                let waiting = queue.jobs.iter().any(|job| job.seq == seq);
                let start = waiting && queue.active < POOL_SIZE;
                queue.count_start(start)
            };
            if start {
                self.start_task();
            }
        }
        (&mut pending.answer).await.map_err(stopped)?
    }

    /// Start a reading task, already counted in `active`. A task that
    /// ends normally stops counting itself under the lock with which it
    /// found the queue empty, so no read is left behind. One that does not
    /// end so stops being counted, and if it was the last, the reads still
    /// queued are dropped.
    fn start_task(&self) {
        let (queue, abandoned) = (Arc::clone(&self.queue), Arc::clone(&self.queue));
        let idle = Arc::clone(&self.idle);
        let reopen = Arc::clone(&self.reopen);
        spawn_queue_task(
            move || drain(&queue, &idle, &reopen),
            move || {
                let mut queue = lock(&abandoned);
                queue.active = queue.active.saturating_sub(1);
                if queue.active == 0 {
                    queue.jobs.clear();
                }
            },
        );
    }
}

/// The read's task ended (or never ran) without answering it.
fn stopped(e: oneshot::error::RecvError) -> StoreError {
    StoreError::Other {
        op: OP,
        source: Box::new(ReaderStopped(e)),
    }
}

/// A read queued before a task was chosen to answer it. If the caller
/// stops waiting in between (a timeout, a client gone), no task may come
/// for the queue: reads left without a reader are dropped rather than
/// kept until the next read.
struct Unstarted<'a> {
    queue: &'a Mutex<Queue>,
    answer: oneshot::Receiver<Result<Option<KeyRecord>, StoreError>>,
    /// Until a task is started for the read or found reading.
    armed: bool,
}

impl Drop for Unstarted<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Closed first, so this read counts as abandoned below.
            self.answer.close();
            let mut queue = lock(self.queue);
            if queue.active == 0 {
                queue.jobs.retain(|job| !job.reply.is_closed());
            }
        }
    }
}

#[cfg(test)]
impl Reader {
    /// Hold the read of `id` inside its task until `release` is sent to
    /// (or dropped).
    pub(super) fn hold(&self, id: &KeyId, release: std::sync::mpsc::Receiver<()>) {
        lock(&self.queue).hold = Some((id.clone(), release));
    }

    /// Let reads wait `d` behind busy tasks before they add one.
    pub(super) fn set_stuck_after(&self, d: Duration) {
        lock(&self.queue).stuck_after = Some(d);
    }

    /// Reading tasks started so far.
    pub(super) fn tasks_started(&self) -> u64 {
        lock(&self.queue).started
    }

    /// Reads waiting for a task.
    pub(super) fn queued(&self) -> usize {
        lock(&self.queue).jobs.len()
    }
}

/// The read was never answered: a reading task panicked, or the runtime
/// shut down before one ran, and the reads still queued were dropped.
#[derive(Debug, thiserror::Error)]
#[error("the read task stopped before answering")]
struct ReaderStopped(#[source] oneshot::error::RecvError);

/// Answer queued reads until none is left.
fn drain(queue: &Mutex<Queue>, idle: &Mutex<Vec<Connection>>, reopen: &Reopen) {
    let mut conn: Option<Connection> = None;
    loop {
        let job = {
            let mut queue = lock(queue);
            match queue.jobs.pop_front() {
                Some(job) => {
                    #[cfg(test)]
                    if let Some(held) = queue.hold.take_if(|(id, _)| *id == job.id) {
                        drop(queue);
                        let _ = held.1.recv();
                    }
                    job
                }
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
            conn = match lock(idle).pop().map_or_else(|| reopen.connect(), Ok) {
                Ok(c) => Some(c),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            };
        }
        if let Some(c) = &conn {
            let answer = read(c, job.id.as_str(), OP);
            reopen.note(&answer);
            let _ = job.reply.send(answer);
        }
    }
}
