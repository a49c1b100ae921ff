//! A resolution whose caller stopped waiting (its client hung up, or its
//! request timed out) goes on in a task of its own (see `Resolution`), and
//! may still create a key.
//! What it ends up doing is handed to the caller's [`Unanswered`] hook, so
//! the audit trail holds a line for every key decision, answered or not.

use tokio_util::task::TaskTracker;

use super::{Action, BrokerError, Flight, Resolved};

/// Why the caller did not get the resolution's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwaited {
    /// The caller's future was dropped: its client hung up.
    Gone,
    /// The caller's timeout passed first; it was answered with that.
    TimedOut,
}

/// Told, once the resolution ends, what it did for a caller that stopped
/// waiting for it.
pub type Unanswered = Box<dyn FnOnce(&Result<Resolved, BrokerError>, Action, Unwaited) + Send>;

/// Armed while a caller waits on `flight`: dropped armed (the caller's
/// future dropped), or [`Watch::timed_out`], it makes the caller's hook
/// and leaves a task behind that waits for the flight's end and tells it.
/// The hook is made only then: a caller that gets its answer, the usual
/// case, pays for nothing.
pub(super) struct Watch<F: FnOnce() -> Option<Unanswered>> {
    armed: Option<(Flight, F)>,
    tasks: TaskTracker,
}

impl<F: FnOnce() -> Option<Unanswered>> Watch<F> {
    pub(super) fn new(flight: Flight, make_hook: F, tasks: &TaskTracker) -> Self {
        Self {
            armed: Some((flight, make_hook)),
            tasks: tasks.clone(),
        }
    }

    /// The caller got the flight's own outcome: nothing to tell.
    pub(super) fn answered(mut self) {
        self.armed = None;
    }

    /// The caller was answered with its timeout.
    pub(super) fn timed_out(mut self) {
        self.hand_off(Unwaited::TimedOut);
    }

    fn hand_off(&mut self, why: Unwaited) {
        let Some((flight, make_hook)) = self.armed.take() else {
            return;
        };
        let Some(hook) = make_hook() else {
            return;
        };
        let tell = Tell {
            hook: Some(hook),
            flight,
            why,
        };
        // No runtime here (a caller dropped outside one): nothing can run
        // the task, and `tell` says so as it drops. A runtime shutting down
        // drops the task, and with it `tell`, the same way.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.tasks.spawn(async move {
            let result = tell.flight.done.clone().await;
            tell.tell(&result);
        });
    }
}

impl<F: FnOnce() -> Option<Unanswered>> Drop for Watch<F> {
    fn drop(&mut self) {
        self.hand_off(Unwaited::Gone);
    }
}

/// A hook waiting for its resolution's end. Dropped before it (the process
/// is stopping and its tasks are dropped), it is told `CutOff`: the line is
/// written, saying the decision's end is not known.
struct Tell {
    hook: Option<Unanswered>,
    flight: Flight,
    why: Unwaited,
}

impl Tell {
    fn tell(mut self, result: &Result<Resolved, BrokerError>) {
        if let Some(hook) = self.hook.take() {
            hook(result, self.flight.action(), self.why);
        }
    }
}

impl Drop for Tell {
    fn drop(&mut self) {
        if let Some(hook) = self.hook.take() {
            hook(&Err(BrokerError::CutOff), self.flight.action(), self.why);
        }
    }
}
