//! Tests of the log buffer: dropping instead of blocking, the flusher and its wake-ups, escaping, and the last write at exit.

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
    let first: serde_json::Value = serde_json::from_str(pending.lines().next().unwrap()).unwrap();
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
