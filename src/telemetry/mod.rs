//! The tracing subscriber: text or JSON, level from `log.level` unless
//! RUST_LOG is set. Two writers share one output:
//!
//! - the application log, filtered by RUST_LOG or `log.level`;
//! - the audit trail ([`audit`], `"target":"audit"`), always written
//!   whatever RUST_LOG says: an operator silencing noisy logs must not
//!   silence the record of who got which key.
//!
//! Both go through one in-memory buffer (`buffer.rs`) that a background
//! thread writes to stderr, so that no request thread ever writes there.

use std::io::{self, IsTerminal};
use std::sync::{Arc, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings};

pub mod audit;
mod buffer;

pub use buffer::{dropped_lines, LogGuard, APP_LIMIT_BYTES, AUDIT_LIMIT_BYTES, FLUSH_EVERY};
use buffer::{Buffer, Shared};

/// Where audit lines go once [`init`] ran.
struct AuditSink {
    buffer: Buffer,
    format: LogFormat,
}

static AUDIT: OnceLock<AuditSink> = OnceLock::new();

fn audit_sink() -> Option<&'static AuditSink> {
    AUDIT.get()
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
    // A blank RUST_LOG is unset (as a filter it would hide all but
    // errors); one that is not a filter is refused with the config.
    let app_filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&settings.level));
    let app = format_layer(settings.format, Buffer::new(&shared, APP_LIMIT_BYTES))
        .with_filter(app_filter);
    if let Err(e) = tracing_subscriber::registry().with(app).try_init() {
        eprintln!("rkms: logging was already initialised: {e}");
        return None;
    }
    // The first `init` wins, as for the subscriber.
    let _ = AUDIT.set(AuditSink {
        buffer: Buffer::new(&shared, AUDIT_LIMIT_BYTES),
        format: settings.format,
    });
    Some(buffer::start_flusher(shared))
}
