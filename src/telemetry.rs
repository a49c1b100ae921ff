//! The tracing subscriber: text or JSON, level from `log.level` unless
//! RUST_LOG is set. Audit events go to the `audit` target on the same
//! output, so a log pipeline can route them by target.
//!
//! Lines are appended to one in-memory buffer and written to stderr in
//! batches: when the buffer fills, every [`FLUSH_EVERY`] from a background
//! thread, and when the guard drops at exit. Writing each line with its own
//! syscall (or waking a writer thread per line) cost a fifth of a warm read.

use std::io::{self, BufWriter, Stderr, Write};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Longest a log line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
const BUFFER_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct BufferedStderr(Arc<Mutex<BufWriter<Stderr>>>);

impl BufferedStderr {
    fn lock(&self) -> MutexGuard<'_, BufWriter<Stderr>> {
        // A panic while holding the lock leaves whole lines at worst.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One event's write: the formatter hands over a whole line at once.
struct LineWriter<'a>(MutexGuard<'a, BufWriter<Stderr>>);

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(self.lock())
    }
}

/// Keep until exit: dropping it stops the flusher and writes what is left.
pub struct LogGuard {
    buffer: BufferedStderr,
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        let _ = self.buffer.lock().flush();
    }
}

/// Install the global subscriber. Call once, from `main`.
pub fn init(settings: &LogSettings) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},audit=info", settings.level)));
    let buffer = BufferedStderr(Arc::new(Mutex::new(BufWriter::with_capacity(
        BUFFER_BYTES,
        io::stderr(),
    ))));
    let builder = fmt().with_env_filter(filter).with_writer(buffer.clone());
    let result = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(e) = result {
        eprintln!("rkms: logging was already initialised: {e}");
        return None;
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let flushing = buffer.clone();
    let flusher = std::thread::Builder::new()
        .name("rkms-log-flush".into())
        .spawn(move || loop {
            match stopped.recv_timeout(FLUSH_EVERY) {
                Err(RecvTimeoutError::Timeout) => {
                    let _ = flushing.lock().flush();
                }
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
        })
        .ok();
    Some(LogGuard {
        buffer,
        stop: Some(stop),
        flusher,
    })
}
