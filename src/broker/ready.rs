//! Readiness: whether the store answers, and whether a KMS region can
//! serve. Probes are not authenticated and may come in floods, so the
//! store is asked at most once at a time and at most once per
//! [`PING_EVERY`]; probes in between share the last answer.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::KeyBroker;
use crate::domain::Region;
use crate::store::Store;

/// How long one answer of the store serves every probe.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// A readiness check that did not pass.
#[derive(Debug, Clone)]
pub struct NotReady {
    /// `store` or `kms`.
    pub check: &'static str,
    /// An outage (no answer, a timeout, every breaker open), not a wrong
    /// configuration.
    pub unreachable: bool,
    /// Why, for the log.
    pub detail: String,
    /// Found by this probe; false for the answer of an earlier one, shared
    /// (and logged when it was found).
    pub fresh: bool,
}

/// The store's last answer to a ping, and the turn to ask it again.
#[derive(Default)]
pub(super) struct StorePing {
    last: Mutex<Option<(Instant, Option<NotReady>)>>,
    turn: tokio::sync::Mutex<()>,
}

impl StorePing {
    /// The last answer, if it is recent enough to share.
    fn recent(&self) -> Option<Option<NotReady>> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (at, answer) = last.as_ref()?;
        (at.elapsed() < PING_EVERY).then(|| {
            answer.clone().map(|mut n| {
                n.fresh = false;
                n
            })
        })
    }

    /// Ask the store, or share a recent answer. At most one ping runs at a
    /// time: a store that hangs holds one call, not one per probe.
    async fn ask(&self, store: &dyn Store, timeout: Duration) -> Option<NotReady> {
        let no_answer = || NotReady {
            check: "store",
            unreachable: true,
            detail: format!("no answer within {timeout:?}"),
            fresh: true,
        };
        let asked = async {
            if let Some(recent) = self.recent() {
                return recent;
            }
            let _turn = self.turn.lock().await;
            // Another probe may have asked while this one waited.
            if let Some(recent) = self.recent() {
                return recent;
            }
            let answer = match tokio::time::timeout(timeout, store.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(NotReady {
                    check: "store",
                    unreachable: e.is_outage(),
                    detail: crate::report::chain(&e),
                    fresh: true,
                }),
                Err(_) => Some(no_answer()),
            };
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((Instant::now(), answer.clone()));
            answer
        };
        // Waiting for another probe's ping counts against this one's time.
        tokio::time::timeout(timeout, asked)
            .await
            .unwrap_or_else(|_| Some(no_answer()))
    }
}

impl KeyBroker {
    /// Whether the store answers within `timeout` (a recent answer is
    /// shared, see [`PING_EVERY`]) and at least one region's breaker
    /// allows calls.
    pub async fn readiness(&self, timeout: Duration) -> Result<(), Vec<NotReady>> {
        let mut failed = Vec::new();
        if let Some(store) = self
            .inner
            .ping
            .ask(self.inner.store.as_ref(), timeout)
            .await
        {
            failed.push(store);
        }
        if !self.inner.breakers.any_usable() {
            let open: Vec<String> = self
                .inner
                .breakers
                .open_regions()
                .iter()
                .map(Region::to_string)
                .collect();
            failed.push(NotReady {
                check: "kms",
                unreachable: true,
                detail: format!("every region's breaker is open: {}", open.join(", ")),
                fresh: true,
            });
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}
