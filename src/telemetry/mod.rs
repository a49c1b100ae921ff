//! The tracing subscriber: text or JSON, level from `log.level` unless
//! RUST_LOG is set. Two writers share one output:
//!
//! - the application log, filtered by RUST_LOG or `log.level`;
//! - the audit trail ([`audit`], `"target":"audit"`), always written
//!   whatever RUST_LOG says: an operator silencing noisy logs must not
//!   silence the record of who got which key.
//!
//! Lines go to an in-memory buffer that a background thread writes to
//! stderr in batches (every [`FLUSH_EVERY`], or sooner when it fills up).
//! A request thread never writes to stderr itself, so a stalled log
//! pipeline can never hang request handling. When the buffer is full,
//! application lines are dropped and counted (`rkms_log_dropped_total`),
//! and so are the lines a failed write to stderr loses (a full disk).
//! Audit lines get a larger share of the buffer ([`AUDIT_LIMIT_BYTES`])
//! and are dropped and counted only past it: blocking would turn a stalled
//! log reader into an outage of every application that needs its keys,
//! and the counter tells the operator that the trail has a gap.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings};

pub mod audit;

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

/// Log lines dropped because the output could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    /// Set by the append that woke the flusher, cleared when the flusher
    /// takes the buffer: one wake-up per fill, not one per line appended
    /// until the flusher gets the core.
    woken: AtomicBool,
    stop: Mutex<bool>,
}

impl Shared {
    fn new() -> Self {
        Self {
            pending: Mutex::new(Vec::with_capacity(WAKE_BYTES)),
            wake: Condvar::new(),
            woken: AtomicBool::new(false),
            stop: Mutex::new(false),
        }
    }
}

/// A handle on the buffer that drops lines past `limit` bytes.
#[derive(Clone)]
struct Buffer {
    shared: Arc<Shared>,
    limit: usize,
}

impl Buffer {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves whole lines at worst.
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Append one whole line, or drop and count it past the limit.
    fn append(&self, line: &[u8]) {
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

/// Where audit lines go once [`init`] ran.
struct AuditSink {
    buffer: Buffer,
    format: LogFormat,
}

static AUDIT: OnceLock<AuditSink> = OnceLock::new();

fn audit_sink() -> Option<&'static AuditSink> {
    AUDIT.get()
}

/// One event's write: the formatter hands over a whole line at once.
struct LineWriter<'a>(&'a Buffer);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.append(line);
        // Reported as written either way: the formatter must not retry.
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self)
    }
}

/// Keep until exit: dropping it stops the flusher after a last write.
pub struct LogGuard {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_one();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// Write what is pending to `out`, outside the lock: appenders never wait
/// on the output.
fn flush_once(shared: &Shared, spare: &mut Vec<u8>, out: &mut impl Write) {
    {
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *pending, spare);
        shared.woken.store(false, Ordering::Relaxed);
    }
    if !spare.is_empty() {
        write_counting_losses(spare, out);
        spare.clear();
    }
}

/// Write `lines` to `out`. What a failed write leaves unwritten (stderr
/// on a full disk, a closed pipe) is dropped and counted like an overflow,
/// a line cut short included: the trail has a gap, and the counter is how
/// the operator learns of it, as nothing can be logged.
fn write_counting_losses(lines: &[u8], out: &mut impl Write) {
    let mut written = 0;
    while written < lines.len() {
        match out.write(&lines[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let lost = lines[written..].iter().filter(|&&b| b == b'\n').count();
    if lost > 0 {
        DROPPED.fetch_add(lost as u64, Ordering::Relaxed);
    }
    let _ = out.flush();
}

fn run_flusher(shared: Arc<Shared>, mut out: impl Write) {
    let mut spare = Vec::new();
    loop {
        wait_for_lines(&shared, FLUSH_EVERY);
        let stopping = *shared.stop.lock().unwrap_or_else(|p| p.into_inner());
        flush_once(&shared, &mut spare, &mut out);
        if stopping {
            return;
        }
    }
}

/// Wait until an append wakes the flusher, or `longest`; not at all when
/// the buffer filled while the flusher was writing: that append's wake-up
/// came when nobody waited, and the next comes only after the next flush.
fn wait_for_lines(shared: &Shared, longest: Duration) {
    let pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
    if pending.len() < WAKE_BYTES {
        let _ = shared.wake.wait_timeout(pending, longest);
    }
}

/// Whether text logs should carry colour codes: only on a terminal, and
/// never when NO_COLOR is set (https://no-color.org).
fn use_colour() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn format_layer(format: LogFormat, writer: Buffer) -> BoxedLayer {
    let builder = fmt::layer().with_writer(writer).with_ansi(use_colour());
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => builder.boxed(),
    }
}

/// Install the global subscriber. Call once, from `main`.
pub fn init(settings: &LogSettings) -> Option<LogGuard> {
    let shared = Arc::new(Shared::new());
    let app_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let app = format_layer(
        settings.format,
        Buffer {
            shared: Arc::clone(&shared),
            limit: APP_LIMIT_BYTES,
        },
    )
    .with_filter(app_filter);
    if let Err(e) = tracing_subscriber::registry().with(app).try_init() {
        eprintln!("rkms: logging was already initialised: {e}");
        return None;
    }
    // The first `init` wins, as for the subscriber.
    let _ = AUDIT.set(AuditSink {
        buffer: Buffer {
            shared: Arc::clone(&shared),
            limit: AUDIT_LIMIT_BYTES,
        },
        format: settings.format,
    });
    let flushing = Arc::clone(&shared);
    let flusher = std::thread::Builder::new()
        .name("rkms-log-flush".into())
        .spawn(move || run_flusher(flushing, io::stderr()))
        .ok();
    Some(LogGuard { shared, flusher })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        flush_once(&shared, &mut Vec::new(), &mut out);
        assert_eq!(out, b"12345\n");
        assert!(shared.pending.lock().unwrap().is_empty());
    }

    #[test]
    fn a_full_buffer_wakes_the_flusher_once_and_is_flushed_without_waiting() {
        let shared = Arc::new(Shared::new());
        let buffer = Buffer {
            shared: Arc::clone(&shared),
            limit: AUDIT_LIMIT_BYTES,
        };
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let mut w = buffer.make_writer();
        for _ in 0..(2 * WAKE_BYTES / line.len()) {
            w.write_all(&line).unwrap();
        }
        assert!(
            shared.woken.load(Ordering::Relaxed),
            "the fill woke the flusher"
        );
        // The wake-up went to nobody (no flusher waited): with the buffer
        // full, the flusher must not wait for the next one. An hour-long
        // wait here would hang the test.
        wait_for_lines(&shared, Duration::from_secs(3600));
        let mut out = Vec::new();
        flush_once(&shared, &mut Vec::new(), &mut out);
        assert_eq!(out.len(), 2 * WAKE_BYTES);
        assert!(
            !shared.woken.load(Ordering::Relaxed),
            "the next fill wakes it again"
        );
    }

    /// Takes `room` bytes, then fails as a full disk does.
    struct FullDisk {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room - self.got.len());
            if n == 0 {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            // At most 4 bytes a call, so that the writer must loop.
            let n = n.min(4);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_a_failed_write_loses_are_counted_a_cut_line_included() {
        let lines = b"first line\nsecond line\nthird line\n";
        let mut out = FullDisk {
            got: Vec::new(),
            room: 15, // the first line and part of the second
        };
        let before = dropped_lines();
        write_counting_losses(lines, &mut out);
        assert_eq!(out.got, b"first line\nseco");
        // Other tests may drop lines at the same time: at least these two.
        assert!(dropped_lines() >= before + 2);

        let mut roomy = FullDisk {
            got: Vec::new(),
            room: 1024,
        };
        write_counting_losses(lines, &mut roomy);
        assert_eq!(roomy.got, lines, "written whole, in pieces");
    }
}
