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
    let breaks = super::audit::breaks_a_line;
    if !line.iter().any(|&b| b == 0xE2 || b == 0xD8) {
        return None;
    }
    let text = std::str::from_utf8(line).ok()?;
    if !text.contains(breaks) {
        return None;
    }
    let mut out = Vec::with_capacity(line.len() + 16);
    for c in text.chars() {
        if breaks(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
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
mod tests {
    use super::*;

    /// A log reader that takes nothing (a pipe no one reads) does not hold
    /// the exit: dropping the guard gives up on the last write after its
    /// bound. It waited for the reader, for ever if it never went away.
    #[test]
    fn a_stalled_reader_does_not_hold_the_exit() {
        struct Stalled(std::sync::mpsc::Receiver<()>);
        impl Write for Stalled {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                let _ = self.0.recv();
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (_never, stalled) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::new());
        let buffer = Buffer {
            shared: Arc::clone(&shared),
            limit: 1 << 20,
        };
        let guard = start_flusher_to(
            Arc::clone(&shared),
            Stalled(stalled),
            Duration::from_millis(100),
        );
        buffer.make_writer().write_all(b"a line\n").unwrap();
        let (dropped, done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(guard);
            let _ = dropped.send(());
        });
        assert!(
            done.recv_timeout(Duration::from_secs(30)).is_ok(),
            "the guard waited for a reader that takes nothing"
        );
    }

    /// Application lines carry ids a client chose: line and paragraph
    /// separators and bidirectional controls in them are escaped, as in the
    /// audit lines; other text is written as it is.
    #[test]
    fn log_lines_escape_what_would_split_them() {
        let shared = Arc::new(Shared::new());
        let buffer = Buffer {
            shared: Arc::clone(&shared),
            limit: 1 << 20,
        };
        let line = "{\"key_id\":\"a\u{2028}b\u{202e}c é\"}\n";
        buffer.make_writer().write_all(line.as_bytes()).unwrap();
        buffer
            .make_writer()
            .write_all("plain é\n".as_bytes())
            .unwrap();
        let pending = String::from_utf8(shared.pending.lock().unwrap().clone()).unwrap();
        assert_eq!(pending, "{\"key_id\":\"a\\u2028b\\u202ec é\"}\nplain é\n");
        let first: serde_json::Value =
            serde_json::from_str(pending.lines().next().unwrap()).unwrap();
        assert_eq!(first["key_id"], "a\u{2028}b\u{202e}c é");
    }

    /// A reader that takes the lines gets every one before the guard's drop
    /// returns.
    #[test]
    fn the_last_lines_are_written_before_exit() {
        #[derive(Clone, Default)]
        struct Taken(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Taken {
            fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let taken = Taken::default();
        let shared = Arc::new(Shared::new());
        let buffer = Buffer {
            shared: Arc::clone(&shared),
            limit: 1 << 20,
        };
        let guard = start_flusher_to(Arc::clone(&shared), taken.clone(), LAST_WRITE);
        buffer.make_writer().write_all(b"last\n").unwrap();
        drop(guard);
        assert_eq!(*taken.0.lock().unwrap(), b"last\n");
    }

    #[test]
    fn a_full_buffer_drops_and_counts_instead_of_blocking() {
        let shared = Arc::new(Shared::new());
        let small = Buffer {
            shared: Arc::clone(&shared),
            limit: 10,
        };
        let before = dropped_lines();
        let mut w = small.make_writer();
        assert_eq!(w.write(b"12345\n").unwrap(), 6);
        assert_eq!(
            w.write(b"67890\n").unwrap(),
            6,
            "dropped, reported as written"
        );
        assert!(dropped_lines() > before);
        let mut out = Vec::new();
        Flusher::default().flush(&shared, &mut out);
        assert_eq!(out, b"12345\n");
        assert!(shared.pending.lock().unwrap().is_empty());
    }

    /// Runs `wait_for_lines` with an hour's timeout on a thread; the
    /// receiver gets a message when it returns.
    fn waiting(shared: &Arc<Shared>) -> std::sync::mpsc::Receiver<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::clone(shared);
        std::thread::spawn(move || {
            wait_for_lines(&shared, Duration::from_secs(3600));
            let _ = tx.send(());
        });
        rx
    }

    /// Long enough for a thread to return on any machine; far shorter
    /// than the hour it would otherwise wait.
    const RETURNS_WITHIN: Duration = Duration::from_secs(30);

    fn fill(buffer: &Buffer, bytes: usize) {
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let mut w = buffer.make_writer();
        for _ in 0..(bytes / line.len()) {
            w.write_all(&line).unwrap();
        }
    }

    fn audit_buffer(shared: &Arc<Shared>) -> Buffer {
        Buffer {
            shared: Arc::clone(shared),
            limit: AUDIT_LIMIT_BYTES,
        }
    }

    #[test]
    fn a_fill_wakes_a_waiting_flusher() {
        let shared = Arc::new(Shared::new());
        let returned = waiting(&shared);
        // Most often the thread waits by now; if not, it finds the buffer
        // full and does not wait. Either way it must return.
        std::thread::sleep(Duration::from_millis(100));
        fill(&audit_buffer(&shared), WAKE_BYTES);
        assert!(returned.recv_timeout(RETURNS_WITHIN).is_ok());
        assert!(shared.woken.load(Ordering::Relaxed), "one wake-up sent");
    }

    #[test]
    fn a_buffer_that_filled_unseen_is_flushed_without_waiting() {
        let shared = Arc::new(Shared::new());
        // Filled while no flusher waited: its wake-up went to nobody.
        fill(&audit_buffer(&shared), 2 * WAKE_BYTES);
        assert!(waiting(&shared).recv_timeout(RETURNS_WITHIN).is_ok());
        let mut flusher = Flusher::default();
        let mut out = Vec::new();
        flusher.flush(&shared, &mut out);
        assert_eq!(out.len(), 2 * WAKE_BYTES);
        assert!(
            !shared.woken.load(Ordering::Relaxed),
            "the next fill wakes it again"
        );
    }

    #[test]
    fn stop_ends_a_wait_and_any_wait_after_it() {
        let shared = Arc::new(Shared::new());
        let returned = waiting(&shared);
        std::thread::sleep(Duration::from_millis(100));
        shared.stop();
        assert!(returned.recv_timeout(RETURNS_WITHIN).is_ok());
        assert!(waiting(&shared).recv_timeout(RETURNS_WITHIN).is_ok());
    }

    /// Takes `room` bytes, at most 4 a call (so the writer must loop),
    /// then fails as a full disk does.
    struct FullDisk {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.got.len()).min(4);
            if n == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const LINES: &[u8] = b"first line\nsecond line\nthird line\n";

    #[test]
    fn lines_a_failed_write_loses_are_counted_a_cut_line_included() {
        let mut out = FullDisk {
            got: Vec::new(),
            room: 15, // the first line and part of the second
        };
        let mut cut = false;
        assert_eq!(write_lines(LINES, &mut cut, &mut out), 2);
        assert_eq!(out.got, b"first line\nseco");
        assert!(cut);
        // Room again: the fragment is ended before the next lines.
        out.room = 1024;
        assert_eq!(write_lines(LINES, &mut cut, &mut out), 0);
        assert_eq!(
            out.got,
            b"first line\nseco\nfirst line\nsecond line\nthird line\n"
        );
        assert!(!cut);
    }

    #[test]
    fn a_write_that_takes_nothing_loses_every_line_and_cuts_none() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut cut = false;
        assert_eq!(write_lines(LINES, &mut cut, &mut Closed), 3);
        assert!(!cut);
    }

    #[test]
    fn an_interrupted_write_is_retried_and_loses_nothing() {
        struct Interrupts {
            got: Vec<u8>,
            interrupted: bool,
        }
        impl Write for Interrupts {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if !self.interrupted {
                    self.interrupted = true;
                    return Err(io::ErrorKind::Interrupted.into());
                }
                self.got.extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Interrupts {
            got: Vec::new(),
            interrupted: false,
        };
        let mut cut = false;
        assert_eq!(write_lines(LINES, &mut cut, &mut out), 0);
        assert_eq!(out.got, LINES);
    }
}
