//! Single-flight: one resolution per id (and create flag) at a time in the
//! process. The caller that starts it polls it; callers that join wait for
//! its outcome; a resolution whose caller stops waiting goes on in a task.
//!
//! Must not: cancel a resolution that has started, or leave one in the
//! in-flight map once it has ended. (A resolution dropped off the runtime,
//! which happens only as the runtime goes away, cannot be moved to a task:
//! it ends there, and its callers get `ResolutionFailed`.)

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::error::panic_message;
use super::{Action, BrokerError, CacheEntry, Inner, KeyBroker, Resolved};
use crate::domain::KeyId;

pub(super) type FlightKey = (KeyId, bool);

/// One resolution in progress, shared by every caller waiting on the id.
#[derive(Clone)]
pub(super) struct Flight {
    /// Ends with the resolution's outcome, for every caller. It wakes its
    /// waiters once, at the end: only the caller that started the
    /// resolution polls the resolution itself (see [`Resolution`]).
    pub(super) done: Shared<BoxFuture<'static, Result<Resolved, BrokerError>>>,
    /// Set once the store said the id is absent and a create began.
    creating: Arc<AtomicBool>,
}

impl Flight {
    /// What the resolution has done so far: a create once the store said
    /// the id is absent, else a read.
    pub(super) fn action(&self) -> Action {
        if self.creating.load(Ordering::Acquire) {
            Action::Create
        } else {
            Action::Read
        }
    }
}

/// A resolution, polled by the caller that started it, so that a miss
/// whose call answers at once costs no task. Dropped before its end (its
/// caller stopped waiting: hung up, timed out, or was served a stale key)
/// it moves to a task of its own and runs to its end there, so a client
/// hanging up mid-create cannot cancel the conditional put half-way.
pub(super) struct Resolution {
    run: Option<BoxFuture<'static, ()>>,
    tasks: TaskTracker,
}

impl Future for Resolution {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(());
        };
        ready!(run.poll_unpin(cx));
        self.run = None;
        Poll::Ready(())
    }
}

impl Drop for Resolution {
    fn drop(&mut self) {
        let Some(run) = self.run.take() else { return };
        // Outside a runtime (it is going away) nothing can run it: the
        // callers get `ResolutionFailed`, and a breaker probe it held is
        // not recorded.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Its log lines keep the request that started it.
        self.tasks
            .spawn_on(run.instrument(tracing::Span::current()), &runtime);
    }
}

/// Takes a resolution out of the in-flight map when it ends, panics or is
/// dropped: later misses for its id start a new one.
struct Leave {
    inner: Arc<Inner>,
    key: Option<FlightKey>,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inner
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

impl KeyBroker {
    /// The flight for `id`: joined when one is under way, else started,
    /// with the resolution for the caller to poll.
    pub(super) fn flight(&self, id: &KeyId, allow_create: bool) -> (Flight, Option<Resolution>) {
        let key = (id.clone(), allow_create);
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&key) {
            return (flight.clone(), None);
        }
        let inner = Arc::clone(&self.inner);
        let id = id.clone();
        let creating = Arc::new(AtomicBool::new(false));
        let marker = Arc::clone(&creating);
        // Nothing from here to the return can panic (only an allocation
        // could, which aborts): unwinding would drop `leave`, which locks
        // `flights`, while this function holds it.
        let leave = Leave {
            inner: Arc::clone(&self.inner),
            key: Some(key.clone()),
        };
        let (tell, told) = oneshot::channel();
        let resolve = async move {
            let _leave = leave;
            let result = inner.resolve(&id, allow_create, &marker).await;
            if let (Ok(resolved), Some(cache)) = (&result, &inner.cache) {
                let entry = CacheEntry {
                    key: Arc::clone(&resolved.key),
                    fetched: Instant::now(),
                };
                cache.insert(id.clone(), entry);
            }
            result
        };
        let run = AssertUnwindSafe(resolve)
            .catch_unwind()
            .map(move |ended| {
                // A bug that panicked fails this resolution alone.
                let result = ended.unwrap_or_else(|panic| {
                    Err(BrokerError::ResolutionFailed {
                        why: panic_message(panic.as_ref()),
                    })
                });
                let _ = tell.send(result);
            })
            .boxed();
        let done = told
            .map(|told| {
                told.unwrap_or_else(|_| {
                    Err(BrokerError::ResolutionFailed {
                        why: "dropped off the runtime before its end".into(),
                    })
                })
            })
            .boxed()
            .shared();
        let flight = Flight { done, creating };
        flights.insert(key, flight.clone());
        let resolution = Resolution {
            run: Some(run),
            tasks: self.inner.tasks.clone(),
        };
        (flight, Some(resolution))
    }
}
