//! The tracing subscriber: text or JSON, level from `log.level` unless
//! RUST_LOG is set. Audit events go to the `audit` target on the same
//! output, so a log pipeline can route them by target.
//!
//! Lines are written by a background thread, in batches: formatting stays
//! on the request path, but the write syscalls do not. The writer is not lossy
//! (audit events must not be dropped): when its buffer is full, logging
//! callers wait.

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogSettings};

/// Install the global subscriber. Call once, from `main`, and keep the
/// guard until exit: dropping it flushes the lines still buffered.
pub fn init(settings: &LogSettings) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},audit=info", settings.level)));
    // The worker flushes whenever its queue runs dry, so buffering only
    // batches lines that were already waiting into one write.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default().lossy(false).finish(stderr);
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    let result = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    match result {
        Ok(()) => Some(guard),
        Err(e) => {
            eprintln!("rkms: logging was already initialised: {e}");
            None
        }
    }
}
