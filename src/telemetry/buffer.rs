//! The in-memory log buffer and the thread that writes it to stderr.
//!
//! Lines go to the buffer whole, and a background thread writes them to
//! stderr in batches (every [`FLUSH_EVERY`], or sooner once
//! [`WAKE_BYTES`] wait). A request thread never writes to stderr itself,
//! so a stalled log pipeline can never hang request handling. When the
//! buffer is full, application lines are dropped and counted
//! (`rkms_log_dropped_total`), and so are the lines a failed write to
//! stderr loses (a full disk). Audit lines get a larger share of the
//! buffer ([`AUDIT_LIMIT_BYTES`]) and are dropped and counted only past
//! it: blocking would turn a stalled log reader into an outage of every
//! application that needs its keys, and the counter tells the operator
//! that the trail has a gap.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Longest a log line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes past which the flusher is woken early.
const WAKE_BYTES: usize = 64 * 1024;
/// Buffered bytes past which application lines are dropped.
pub const APP_LIMIT_BYTES: usize = 4 * 1024 * 1024;
/// Buffered bytes past which audit lines are dropped.
pub const AUDIT_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// Lines dropped since start, across every buffer (there is one per process).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the output could not keep up, or lost when a
/// write to it failed.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

pub(super) struct Shared {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Set by the append that woke the flusher, cleared when the flusher
    /// takes the buffer: one wake-up per fill, not one per line appended
    /// until the flusher gets the core.
    woken: AtomicBool,
    /// Set under the `pending` lock, so a flusher about to wait sees it.
    stop: AtomicBool,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            pending: Mutex::new(Vec::with_capacity(WAKE_BYTES)),
            wake: Condvar::new(),
            woken: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }
    }

    /// Tell the flusher to write what is left and return.
    fn stop(&self) {
        {
            let _pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            self.stop.store(true, Ordering::Relaxed);
        }
        self.wake.notify_one();
    }
}

/// A handle on the buffer that drops lines past `limit` bytes.
#[derive(Clone)]
pub(super) struct Buffer {
    shared: Arc<Shared>,
    limit: usize,
}

impl Buffer {
    pub(super) fn new(shared: &Arc<Shared>, limit: usize) -> Self {
        Self {
            shared: Arc::clone(shared),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves whole lines at worst.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Append one whole line, or drop and count it past the limit.
    pub(super) fn append(&self, line: &[u8]) {
        let wake = {
            let mut pending = self.lock();
            if pending.len() + line.len() > self.limit {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                false
            } else {
                pending.extend_from_slice(line);
                // `woken` changes only under the lock.
                pending.len() >= WAKE_BYTES && !self.shared.woken.swap(true, Ordering::Relaxed)
            }
        };
        // Outside the lock, so that the woken flusher does not find it held.
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

/// One event's write: the formatter hands over a whole line at once.
pub(super) struct LineWriter<'a>(&'a Buffer);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        match escaped(line) {
            Some(line) => self.0.append(&line),
            None => self.0.append(line),
        }
        // Reported as written either way: the formatter must not retry.
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `line` with the characters that split a line for some readers or
/// display it other than it reads (an id a client chose, in a log field)
/// written as `\uXXXX`, as the audit lines write them; `None` when it
/// holds none. Their UTF-8 starts with 0xE2 or 0xD8: lines without those
/// bytes are not decoded.
fn escaped(line: &[u8]) -> Option<Vec<u8>> {
    if !line.iter().any(|&b| b == 0xE2 || b == 0xD8) {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    if !text.contains(crate::config::breaks_a_line) {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    super::audit::escape_breaks(&mut out, text);
    Some(out)
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

/// How long an exiting process waits for its last lines to be written.
/// A reader that takes none (a pipe no one reads) would hold the exit for
/// as long as it stalls; past this the lines are lost with the process.
const LAST_WRITE: Duration = Duration::from_secs(5);

/// Start the thread that writes the buffer to stderr.
pub(super) fn start_flusher(shared: Arc<Shared>) -> LogGuard {
    start_flusher_to(shared, io::stderr(), LAST_WRITE)
}

fn start_flusher_to(
    shared: Arc<Shared>,
    out: impl Write + Send + 'static,
    last_write: Duration,
) -> LogGuard {
    let flushing = Arc::clone(&shared);
    let (done, finished) = std::sync::mpsc::channel();
    let flusher = std::thread::Builder::new()
        .name("rkms-log-flush".into())
        .spawn(move || {
            run_flusher(flushing, out);
            let _ = done.send(());
        })
        .ok();
    LogGuard {
        shared,
        flusher,
        finished,
        last_write,
    }
}

/// Keep until exit: dropping it stops the flusher after a last write,
/// waiting for it at most [`LAST_WRITE`].
pub struct LogGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    finished: std::sync::mpsc::Receiver<()>,
    last_write: Duration,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.stop();
        let Some(flusher) = self.flusher.take() else {
            return;
        };
        match self.finished.recv_timeout(self.last_write) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = flusher.join();
            }
            // Stuck in a write: left to end with the process.
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The flusher's state between writes.
#[derive(Default)]
struct Flusher {
    /// The buffer handed back and forth with `Shared::pending`.
    spare: Vec<u8>,
    /// The last write stopped in the middle of a line.
    cut: bool,
}

impl Flusher {
    /// Write what is pending to `out`, outside the lock: appenders never
    /// wait on the output. Lines a failed write loses are counted.
    fn flush(&mut self, shared: &Shared, out: &mut impl Write) {
        {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *pending, &mut self.spare);
            shared.woken.store(false, Ordering::Relaxed);
        }
        if !self.spare.is_empty() {
            let lost = write_lines(&self.spare, &mut self.cut, out);
            if lost > 0 {
                DROPPED.fetch_add(lost as u64, Ordering::Relaxed);
            }
            self.spare.clear();
        }
    }
}

/// Write whole `lines` to `out` and return how many a failed write (stderr
/// on a full disk, a closed pipe) left unwritten, a line cut short
/// included: they are dropped and counted like an overflow, since nothing
/// can be logged about them. `cut` carries a cut-short line from one call
/// to the next, so that once writes succeed again the next line starts a
/// line of its own rather than finishing the fragment.
fn write_lines(lines: &[u8], cut: &mut bool, out: &mut impl Write) -> usize {
    if *cut {
        if write_some(b"\n", out) == 0 {
            return count_lines(lines);
        }
        *cut = false;
    }
    let written = write_some(lines, out);
    let _ = out.flush();
    *cut = written > 0 && written < lines.len() && lines[written - 1] != b'\n';
    count_lines(&lines[written..])
}

/// Write what `out` takes of `bytes` until it fails; how much it took.
fn write_some(bytes: &[u8], out: &mut impl Write) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        match out.write(&bytes[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    written
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn run_flusher(shared: Arc<Shared>, mut out: impl Write) {
    let mut flusher = Flusher::default();
    loop {
        wait_for_lines(&shared, FLUSH_EVERY);
        let stopping = shared.stop.load(Ordering::Relaxed);
        flusher.flush(&shared, &mut out);
        if stopping {
            return;
        }
    }
}

/// Wait until an append wakes the flusher, or `longest`. Not at all when
/// the buffer filled while the flusher was writing (that append's wake-up
/// came when nobody waited, and the next comes only after the next flush),
/// nor once told to stop.
fn wait_for_lines(shared: &Shared, longest: Duration) {
    let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    if pending.len() < WAKE_BYTES && !shared.stop.load(Ordering::Relaxed) {
        let _ = shared.wake.wait_timeout(pending, longest);
    }
}

#[cfg(test)]
mod tests;
