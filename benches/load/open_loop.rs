//! An open-loop load: requests arrive at a fixed mean rate whatever the
//! server does (Poisson arrivals, as from many independent clients), and
//! each request's latency runs from the moment it was due, not from when
//! it could be sent. A slow server therefore sees requests pile up, and
//! their wait counts ("coordinated omission" corrected).
//!
//! wrk cannot do this: it paces a connection only by a whole-millisecond
//! pause after each answer, its timers fire on millisecond ticks, and so
//! all its paced connections end up sending in one burst per cycle. A p99
//! measured that way is the time to answer the whole burst back to back.
//!
//! One thread, non-blocking sockets and a poll that never sleeps: the
//! generator owns its core (core 1 when pinned), so a send is late by at
//! most one turn of its loop. How late the sends were is reported; any
//! lateness is in the latencies too, so it can only overstate them.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// What to send, how often and for how long.
pub struct Plan {
    pub addr: SocketAddr,
    /// Mean arrivals per second.
    pub rate: f64,
    pub duration: Duration,
    /// Keep-alive connections; one request in flight on each at most. A
    /// request due when every connection is busy waits for one.
    pub connections: usize,
    /// The request heads to send, one drawn at random for each arrival.
    pub requests: Vec<Vec<u8>>,
    pub seed: u64,
}

/// What a run measured. Latencies in microseconds, from when each request
/// was due to when its whole answer was read.
#[derive(Debug, Default)]
pub struct Outcome {
    pub completed: u64,
    pub errors: u64,
    /// From the first arrival to the last answer.
    pub elapsed: Duration,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// How late sends were against their due time (the generator's own
    /// delay, or every connection busy): the 99th percentile.
    pub send_lag_p99_us: f64,
    /// Turns of the generator's loop that took over [`STALL`]: time it
    /// was not running (preempted, or its core taken), in which it could
    /// neither send nor time answers. Their total, in microseconds.
    pub stalls: u64,
    pub stalled_us: u64,
}

/// Set to a file: each answer slower than [`SLOW`] is written there as
/// "due_offset_us latency_us", after a first line with the start's Unix
/// time in microseconds, to line slow answers up with other traces.
pub const SLOW_LOG_ENV: &str = "RKMS_BENCH_SLOW_LOG";
/// What [`SLOW_LOG_ENV`] counts as slow.
const SLOW: Duration = Duration::from_micros(400);

/// A turn of the loop longer than this counts as a stall of the generator.
pub const STALL: Duration = Duration::from_micros(100);

/// Requests still unanswered this long after the arrivals stop count as
/// errors.
const DRAIN: Duration = Duration::from_secs(10);

struct Connection {
    stream: TcpStream,
    /// Due time of the request in flight, if any.
    due: Option<Instant>,
    buf: Vec<u8>,
}

/// A small, fast, seeded generator (xorshift64*), for the arrival gaps and
/// the request drawn; the same seed gives the same schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// An exponentially distributed gap with the given mean rate.
    fn gap(&mut self, rate: f64) -> Duration {
        Duration::from_secs_f64(-self.unit().ln() / rate)
    }
}

/// Run the plan. Errors only when the server cannot be reached at all.
pub fn run(plan: &Plan) -> io::Result<Outcome> {
    assert!(plan.rate > 0.0 && !plan.requests.is_empty() && plan.connections > 0);
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(plan.connections);
    for i in 0..plan.connections {
        conns.push(connect(&poll, plan.addr, i)?);
    }
    // Let the connections finish their handshakes before the clock starts.
    std::thread::sleep(Duration::from_millis(100));

    let mut rng = Rng(plan.seed | 1);
    let mut events = Events::with_capacity(1024);
    let mut free: Vec<usize> = (0..conns.len()).rev().collect();
    let mut waiting: VecDeque<Instant> = VecDeque::new();
    let expected = (plan.rate * plan.duration.as_secs_f64()) as usize;
    let mut latencies: Vec<u32> = Vec::with_capacity(expected + expected / 8);
    let mut lags: Vec<u32> = Vec::with_capacity(expected + expected / 8);
    let mut out = Outcome::default();
    let mut slow: Vec<(u32, u32)> = Vec::new();

    let start = Instant::now();
    let wall_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let stop_arrivals = start + plan.duration;
    let give_up = stop_arrivals + DRAIN;
    let mut next_due = start + rng.gap(plan.rate);
    let mut last_answer = start;
    let mut last_turn = start;
    loop {
        let now = Instant::now();
        let turn = now.saturating_duration_since(last_turn);
        if turn > STALL {
            out.stalls += 1;
            out.stalled_us += u64::from(micros(turn));
        }
        last_turn = now;
        while next_due <= now && next_due < stop_arrivals {
            waiting.push_back(next_due);
            next_due += rng.gap(plan.rate);
        }
        while let (Some(&due), Some(&c)) = (waiting.front(), free.last()) {
            let pick = (rng.next() % plan.requests.len() as u64) as usize;
            if send(&mut conns[c].stream, &plan.requests[pick]).is_err() {
                out.errors += 1;
                conns[c] = connect(&poll, plan.addr, c)?;
                continue;
            }
            waiting.pop_front();
            free.pop();
            conns[c].due = Some(due);
            lags.push(micros(now.saturating_duration_since(due)));
        }
        let in_flight = conns.len() - free.len();
        if now >= stop_arrivals && waiting.is_empty() && in_flight == 0 {
            break;
        }
        if now >= give_up {
            out.errors += (in_flight + waiting.len()) as u64;
            break;
        }
        poll.poll(&mut events, Some(Duration::ZERO))?;
        for event in events.iter() {
            let c = event.token().0;
            let conn = &mut conns[c];
            match read_answer(conn) {
                Ok(None) => {}
                Ok(Some(ok)) => {
                    let done = Instant::now();
                    if let Some(due) = conn.due.take() {
                        let latency = micros(done.saturating_duration_since(due));
                        latencies.push(latency);
                        if latency > micros(SLOW) {
                            slow.push((micros(due.saturating_duration_since(start)), latency));
                        }
                        if ok {
                            out.completed += 1;
                        } else {
                            out.errors += 1;
                        }
                        last_answer = done;
                        free.push(c);
                    }
                }
                Err(_) => {
                    // Closed or reset: the request in flight failed.
                    if conn.due.take().is_some() {
                        out.errors += 1;
                        free.push(c);
                    }
                    poll.registry().deregister(&mut conn.stream)?;
                    conns[c] = connect(&poll, plan.addr, c)?;
                }
            }
        }
    }
    if let Some(path) = std::env::var_os(SLOW_LOG_ENV) {
        let text: String = std::iter::once(format!("{}\n", wall_start.as_micros()))
            .chain(slow.iter().map(|(t, l)| format!("{t} {l}\n")))
            .collect();
        std::fs::write(path, text)?;
    }
    out.elapsed = last_answer.saturating_duration_since(start);
    latencies.sort_unstable();
    lags.sort_unstable();
    out.p50_us = percentile(&latencies, 50.0);
    out.p99_us = percentile(&latencies, 99.0);
    out.p999_us = percentile(&latencies, 99.9);
    out.send_lag_p99_us = percentile(&lags, 99.0);
    Ok(out)
}

fn connect(poll: &Poll, addr: SocketAddr, token: usize) -> io::Result<Connection> {
    let std_stream = std::net::TcpStream::connect(addr)?;
    std_stream.set_nodelay(true)?;
    std_stream.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(std_stream);
    poll.registry()
        .register(&mut stream, Token(token), Interest::READABLE)?;
    Ok(Connection {
        stream,
        due: None,
        buf: Vec::with_capacity(512),
    })
}

/// A request head is far smaller than the socket's buffer, and an idle
/// keep-alive connection has nothing queued: it goes out whole, or the
/// connection is broken.
fn send(stream: &mut TcpStream, request: &[u8]) -> io::Result<()> {
    let mut rest = request;
    let mut spins = 0;
    while !rest.is_empty() {
        match stream.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && spins < 1_000 => spins += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read what arrived. `Some(status was 200)` once a whole answer is in
/// (its head and `content-length` bytes of body); `None` until then.
fn read_answer(conn: &mut Connection) -> io::Result<Option<bool>> {
    let mut chunk = [0u8; 4096];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let Some(head_end) = conn.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &conn.buf[..head_end];
    let body_len = content_length(head).ok_or(io::ErrorKind::InvalidData)?;
    let total = head_end + 4 + body_len;
    if conn.buf.len() < total {
        return Ok(None);
    }
    let ok = head.starts_with(b"HTTP/1.1 200 ");
    if conn.buf.len() > total {
        // Nothing was asked for beyond this answer.
        return Err(io::ErrorKind::InvalidData.into());
    }
    conn.buf.clear();
    Ok(Some(ok))
}

fn content_length(head: &[u8]) -> Option<usize> {
    head.split(|&b| b == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = line.split_at(colon);
        if !name.eq_ignore_ascii_case(b"content-length") {
            return None;
        }
        std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok()
    })
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Nearest-rank percentile of sorted values, in microseconds.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

/// GET request heads for `/key?id=<prefix><n>`, n in `ids`.
pub fn key_requests(
    host: &str,
    prefix: &str,
    ids: std::ops::Range<usize>,
    token: Option<&str>,
) -> Vec<Vec<u8>> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    ids.map(|n| {
        format!("GET /key?id={prefix}{n} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n").into_bytes()
    })
    .collect()
}
