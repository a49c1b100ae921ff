//! Each connection's timeouts: the phase it is in, kept up to date by its
//! reads and its requests, and a watchdog that ends it when a phase
//! outlives its timeout.
//!
//! Every connection is in one of three phases, kept in one atomic word:
//! - **head**: a request head is arriving (from the first byte, or from the
//!   accept for a new connection). It must be complete within
//!   [`HEAD_TIMEOUT`], however slowly its bytes come.
//! - **busy**: hyper is polling a request's handler; the edge's
//!   `server.request_timeout_ms` bounds that. hyper polls a request only
//!   when it can write the response, so a client that does not read its
//!   responses stays idle, not busy.
//! - **idle**: the last response is done and no byte of the next request
//!   has come. After [`IDLE_TIMEOUT`] the connection is closed. Bytes read
//!   while busy start a head when the response is done; bytes of a next
//!   head read together with the current one cannot be told apart, and
//!   count as idle until more come.
//!
//! The watchdog looks at the phase when it could have expired, and at least
//! every [`HEAD_TIMEOUT`] (a head may begin at any moment), so a request
//! costs two clock reads, not a timer of its own.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A request head must be complete this long after its first byte (after
/// the accept, for a connection's first request).
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive connection with no request for this long is closed. Longer
/// than the 60 s idle timeout of common load balancers: the balancer must
/// be the side that closes an idle connection, or it may send a request
/// on one being closed and answer its client 502.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// Wrap one connection's stream and service so that they keep its phase;
/// the returned activity's [`Activity::expired`] is its watchdog.
pub(super) fn track<I, S>(stream: I, service: S) -> (Arc<Activity>, Watched<I>, Tracked<S>) {
    let activity = Arc::new(Activity::new());
    let stream = Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    let service = Tracked {
        inner: service,
        activity: Arc::clone(&activity),
    };
    (activity, stream, service)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Head = 0,
    Busy = 1,
    Idle = 2,
}

impl Phase {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Head => "head",
            Self::Busy => "busy",
            Self::Idle => "idle",
        }
    }
}

/// One connection's phase and when it began: the phase in the top two bits
/// of the word, milliseconds since `opened` in the rest.
pub(super) struct Activity {
    opened: Instant,
    word: AtomicU64,
    /// Bytes came while busy: the next request's head has begun.
    read_while_busy: AtomicBool,
}

const PHASE_SHIFT: u32 = 62;
const SINCE_MASK: u64 = (1 << PHASE_SHIFT) - 1;

impl Activity {
    /// A new connection waits for its first request head.
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            word: AtomicU64::new(pack(Phase::Head, 0)),
            read_while_busy: AtomicBool::new(false),
        }
    }

    fn enter(&self, phase: Phase) {
        let since = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(SINCE_MASK);
        self.word.store(pack(phase, since), Ordering::Relaxed);
    }

    /// Busy needs no start: its deadline is the request timeout's.
    fn enter_busy(&self) {
        self.word.store(pack(Phase::Busy, 0), Ordering::Relaxed);
    }

    fn phase(&self) -> Phase {
        unpack(self.word.load(Ordering::Relaxed)).0
    }

    /// Bytes were read: the first while idle start a head; any while busy
    /// start one when the response is done.
    fn on_read(&self) {
        match self.phase() {
            Phase::Idle => self.enter(Phase::Head),
            Phase::Busy => self.read_while_busy.store(true, Ordering::Relaxed),
            Phase::Head => {}
        }
    }

    /// The response is done: idle, or a head already begun.
    fn on_response(&self) {
        if self.read_while_busy.swap(false, Ordering::Relaxed) {
            self.enter(Phase::Head);
        } else {
            self.enter(Phase::Idle);
        }
    }

    /// Completes when the connection has stayed in the head or idle phase
    /// past that phase's timeout; returns that phase.
    pub(super) async fn expired(&self) -> Phase {
        let sleep = tokio::time::sleep(HEAD_TIMEOUT);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            let (phase, since) = unpack(self.word.load(Ordering::Relaxed));
            let began = self.opened + Duration::from_millis(since);
            let next = match phase {
                Phase::Head if began + HEAD_TIMEOUT <= now => return phase,
                Phase::Idle if began + IDLE_TIMEOUT <= now => return phase,
                Phase::Head => began + HEAD_TIMEOUT,
                // A head may begin at any moment: look again before one
                // that begins now could expire. The request timeout ends
                // a busy phase.
                Phase::Idle => (began + IDLE_TIMEOUT).min(now + HEAD_TIMEOUT),
                Phase::Busy => now + HEAD_TIMEOUT,
            };
            sleep.as_mut().reset(next);
        }
    }
}

fn pack(phase: Phase, since_ms: u64) -> u64 {
    ((phase as u64) << PHASE_SHIFT) | (since_ms & SINCE_MASK)
}

fn unpack(word: u64) -> (Phase, u64) {
    let phase = match word >> PHASE_SHIFT {
        0 => Phase::Head,
        1 => Phase::Busy,
        _ => Phase::Idle,
    };
    (phase, word & SINCE_MASK)
}

/// The connection's stream: the first byte read while idle starts a head.
pub(super) struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection's service: a request being handled makes it busy, its
/// response idle. A request that carries a body is answered with
/// `Connection: close`: no route reads one, and the rest of it arriving
/// after the response would look like the next request's head.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B, R> tower::Service<axum::http::Request<B>> for Tracked<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Unpin,
    B: hyper::body::Body,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let has_body = !request.body().is_end_stream();
        TrackedFuture {
            inner: self.inner.call(request),
            activity: Arc::clone(&self.activity),
            polled: false,
            has_body,
        }
    }
}

pub(super) struct TrackedFuture<F> {
    inner: F,
    activity: Arc<Activity>,
    polled: bool,
    has_body: bool,
}

impl<F, R, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<axum::http::Response<R>, E>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Busy from the first poll, not from the call: hyper polls a request
        // only once it can write its response, and a client that does not
        // read its responses must stay subject to the idle timeout.
        if !self.polled {
            self.polled = true;
            self.activity.enter_busy();
        }
        let Poll::Ready(mut output) = Pin::new(&mut self.inner).poll(cx) else {
            return Poll::Pending;
        };
        if self.has_body {
            if let Ok(response) = &mut output {
                response.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
        }
        self.activity.on_response();
        Poll::Ready(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_and_its_start_survive_packing() {
        for phase in [Phase::Head, Phase::Busy, Phase::Idle] {
            for since in [0, 1, 75_000, SINCE_MASK] {
                assert_eq!(unpack(pack(phase, since)), (phase, since));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_phase_expires_after_its_own_timeout() {
        // A new connection that sends nothing: its head timeout.
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired().await, Phase::Head);
        assert_eq!(started.elapsed(), HEAD_TIMEOUT);

        // Idle after a response: the idle timeout, counted from the response.
        let activity = Arc::new(Activity::new());
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.enter(Phase::Idle);
        let idle_from = Instant::now();
        assert_eq!(activity.expired().await, Phase::Idle);
        assert_eq!(idle_from.elapsed(), IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_begins_early_in_an_idle_phase_gets_the_head_timeout() {
        let activity = Arc::new(Activity::new());
        activity.enter(Phase::Idle);
        let watchdog = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(12)).await;
        activity.enter(Phase::Head);
        let head_from = Instant::now();
        assert_eq!(watchdog.await.unwrap(), Phase::Head);
        assert_eq!(head_from.elapsed(), HEAD_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_never_expires_and_a_new_head_restarts_the_clock() {
        let activity = Arc::new(Activity::new());
        activity.enter_busy();
        let watchdog = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move { activity.expired().await }
        });
        // Busy for far longer than either timeout: still open.
        tokio::time::sleep(IDLE_TIMEOUT * 3).await;
        assert!(!watchdog.is_finished());
        // The response is done; 70 s idle, then a head starts arriving.
        activity.enter(Phase::Idle);
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(5)).await;
        assert!(!watchdog.is_finished());
        activity.enter(Phase::Head);
        let head_from = Instant::now();
        assert_eq!(watchdog.await.unwrap(), Phase::Head);
        assert!(head_from.elapsed() >= HEAD_TIMEOUT);
        assert!(head_from.elapsed() < HEAD_TIMEOUT + Duration::from_secs(1));
    }
}
