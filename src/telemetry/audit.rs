//! The audit trail: one line per key decision, written whatever RUST_LOG
//! says, in the format of the log (`log.format`), into the same buffer.
//!
//! Lines are written here with a fixed schema rather than through a
//! tracing layer: the generic formatter (a field visitor, a JSON map and a
//! timestamp formatted per event) cost about 6% of warm-read throughput
//! (benches/PROFILE.md). The JSON line has the fields and order a tracing
//! event had:
//!
//! `{"timestamp":"…","level":"INFO","message":"key decision","request_id":"…","client":"…","key_id":"…","action":"…","source":"…","outcome":"…","target":"audit"}`
//!
//! Must not: be handed key material; every field is an id, a name or a word.

pub(crate) use crate::config::breaks_a_line;
use std::cell::RefCell;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::LogFormat;

/// One key decision.
pub struct Event<'a> {
    pub request_id: &'a str,
    /// The client's configured name, or `anonymous` / `unauthenticated`.
    pub client: &'a str,
    pub key_id: &'a str,
    /// `read`, `create` or `denied`.
    pub action: &'a str,
    /// `cache`, `stale_cache`, a region, or `none`.
    pub source: &'a str,
    /// `ok`, or why not.
    pub outcome: &'a str,
}

thread_local! {
    /// The line being built, reused by each event on this thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    /// `YYYY-MM-DDTHH:MM:SS` of the last second an event on this thread
    /// was stamped in.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// Write one audit line. Before [`super::init`] (tests, tools) it goes
/// nowhere, as a tracing event would.
pub fn record(event: &Event<'_>) {
    let Some(sink) = super::audit_sink() else {
        return;
    };
    let now = SystemTime::now();
    let reused = LINE.try_with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return false;
        };
        line.clear();
        format(&mut line, sink.format, now, event);
        sink.buffer.append(&line);
        true
    });
    // The thread's line is in use (an event written while one is built) or
    // gone (the thread is ending): build this one apart, never skip it.
    if reused != Ok(true) {
        let mut line = Vec::with_capacity(512);
        format(&mut line, sink.format, now, event);
        sink.buffer.append(&line);
    }
}

fn format(out: &mut Vec<u8>, format: LogFormat, now: SystemTime, event: &Event<'_>) {
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    match format {
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(out, since_epoch.as_secs(), since_epoch.subsec_micros());
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"key decision\"");
            for (name, value) in fields(event) {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                json_string(out, value);
            }
            out.extend_from_slice(b",\"target\":\"audit\"}\n");
        }
        LogFormat::Text => {
            timestamp(out, since_epoch.as_secs(), since_epoch.subsec_micros());
            out.extend_from_slice(b"  INFO audit: key decision");
            for (name, value) in fields(event) {
                // Debug quoting: an id may hold spaces or `=`.
                let _ = write!(out, " {name}={value:?}");
            }
            out.push(b'\n');
        }
    }
}

/// Bytes a JSON string holds as they are: printable ASCII but `"` and `\`.
/// A table lookup per byte: this runs over every field of every line.
const PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        plain[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    plain
};

/// `value` as a JSON string, as `serde_json` writes it, but for the
/// characters [`breaks_a_line`] names, written as `\uXXXX`. Most values
/// need no escaping and are copied as they are (the key response uses it
/// too).
pub(crate) fn json_string(out: &mut Vec<u8>, value: &str) {
    if value.bytes().all(|b| PLAIN[usize::from(b)]) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    let start = out.len();
    // A `&str` always serializes; the writer is a `Vec`.
    let _ = serde_json::to_writer(&mut *out, value);
    if value.contains(breaks_a_line) {
        let written = out.split_off(start);
        escape_breaks(out, &String::from_utf8_lossy(&written));
    }
}

/// `text` into `out`, with each character [`breaks_a_line`] names written
/// as `\uXXXX` (a JSON escape, and plain to read in a text line).
pub(crate) fn escape_breaks(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        if breaks_a_line(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            let mut utf8 = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

fn fields<'a>(event: &Event<'a>) -> [(&'static str, &'a str); 6] {
    [
        ("request_id", event.request_id),
        ("client", event.client),
        ("key_id", event.key_id),
        ("action", event.action),
        ("source", event.source),
        ("outcome", event.outcome),
    ]
}

/// RFC 3339 in UTC with microseconds, as the application log stamps its
/// lines; the date and time of day are formatted once per second.
fn timestamp(out: &mut Vec<u8>, secs: u64, micros: u32) {
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, civil(secs));
        }
        out.extend_from_slice(&cached.1);
    });
    // Six digits by hand: `write!` runs the formatting machinery, a
    // measurable share of a warm read (benches/PROFILE.md).
    let mut digits = *b".000000Z";
    let mut rest = micros.min(999_999);
    for d in digits[1..7].iter_mut().rev() {
        *d = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits);
}

/// `YYYY-MM-DDTHH:MM:SS` for seconds since the Unix epoch (UTC).
fn civil(secs: u64) -> [u8; 19] {
    let mut text = [0u8; 19];
    let at = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, mo, d) = (at.year(), u8::from(at.month()), at.day());
    let (h, mi, s) = (at.hour(), at.minute(), at.second());
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    let _ = write!(cursor, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    proptest::proptest! {
        /// The hand-written JSON string is what serde_json writes, byte for
        /// byte, over all of ASCII (the plain path and every escape) and
        /// any text without the characters that break a line; with them,
        /// it reads back as the same text and holds none of them raw.
        #[test]
        fn json_strings_are_what_serde_json_writes(
            value in "[\\x00-\\x7f]{0,40}|\\PC{0,20}|.{0,20}|[a\"\u{2028}\u{2029}\u{202e}\u{2066}\u{200f}\u{61c}\u{2027}\u{202f}é]{0,12}"
        ) {
            let mut ours = Vec::new();
            json_string(&mut ours, &value);
            if value.contains(breaks_a_line) {
                let text = String::from_utf8(ours.clone()).unwrap();
                proptest::prop_assert!(!text.contains(breaks_a_line), "{}", text);
                proptest::prop_assert_eq!(serde_json::from_slice::<String>(&ours).unwrap(), value);
            } else {
                proptest::prop_assert_eq!(ours, serde_json::to_vec(&value).unwrap());
            }
        }
    }

    fn event<'a>(key_id: &'a str) -> Event<'a> {
        Event {
            request_id: "req-1",
            client: "billing",
            key_id,
            action: "read",
            source: "cache",
            outcome: "ok",
        }
    }

    #[test]
    fn json_lines_carry_every_field_escaped() {
        let at = UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789);
        let mut out = Vec::new();
        format(&mut out, LogFormat::Json, at, &event("a \"quoted\"\\ id/é"));
        assert_eq!(out.last(), Some(&b'\n'), "one line");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "2026-11-18T11:06:40.123456Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "key decision");
        assert_eq!(v["target"], "audit");
        assert_eq!(v["key_id"], "a \"quoted\"\\ id/é");
        for (name, value) in [
            ("request_id", "req-1"),
            ("client", "billing"),
            ("action", "read"),
            ("source", "cache"),
            ("outcome", "ok"),
        ] {
            assert_eq!(v[name], value, "{name}");
        }
    }

    #[test]
    fn text_lines_quote_values() {
        let at = UNIX_EPOCH + Duration::new(0, 5_000);
        let mut out = Vec::new();
        format(&mut out, LogFormat::Text, at, &event("x y=z"));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000005Z  INFO audit: key decision request_id=\"req-1\" \
             client=\"billing\" key_id=\"x y=z\" action=\"read\" source=\"cache\" outcome=\"ok\"\n"
        );
    }

    #[test]
    fn the_cached_second_follows_the_clock() {
        let mut out = Vec::new();
        timestamp(&mut out, 59, 999_999);
        timestamp(&mut out, 60, 0);
        timestamp(&mut out, 86_400 * 366, 1);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:59.999999Z1970-01-01T00:01:00.000000Z1971-01-02T00:00:00.000001Z"
        );
    }
}
