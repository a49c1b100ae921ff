//! KMS calls and the race between regions. Each call runs to its own end
//! (bounded by `call_timeout`), so the breaker learns what really happened
//! to it: a healthy region that merely lost a race counts as up, a frozen
//! one times out and counts as a fault, and a per-key error counts as
//! nothing. The caller stops waiting as soon as one region answers; the
//! others move to tasks of their own, and their results are dropped there
//! (and their keys wiped). A call that answers while its caller waits, as
//! nearly all do, costs no task: the caller polls it.
//!
//! Must not: retry inside a region (the SDK does) or cancel a call that
//! has started.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use super::breaker::{Health, Permit};
use super::error::{panic_message, NoAnswer};
use super::Inner;
use crate::domain::Region;
use crate::kms::{KmsError, KmsErrorKind};
use crate::metrics::KmsOp;

/// A call ready to start in one region.
pub(super) type Call<T> = BoxFuture<'static, Result<T, KmsError>>;

/// What a failed call says about its region (DESIGN "failure accounting").
fn health(kind: KmsErrorKind) -> Health {
    match kind {
        KmsErrorKind::Unavailable | KmsErrorKind::Throttled => Health::Fault,
        KmsErrorKind::Integrity
        | KmsErrorKind::Misconfigured
        | KmsErrorKind::Saturated
        | KmsErrorKind::Other => Health::Neutral,
    }
}

/// Caps hedges sent because the primary is slow to a share of primary
/// calls: a token bucket that gains `share` per primary call, holds at most
/// `burst`, and pays one per hedge. Failover after an error is free.
pub(super) struct HedgeBudget {
    /// In hundredths of a hedge, so shares add up exactly.
    tokens: Mutex<u64>,
    share: u64,
    burst: u64,
}

impl HedgeBudget {
    pub fn new(percent: u32, burst: u32) -> Self {
        let burst = u64::from(burst) * 100;
        Self {
            tokens: Mutex::new(burst),
            share: u64::from(percent),
            burst,
        }
    }

    fn deposit(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + self.share).min(self.burst);
    }

    fn try_spend(&self) -> bool {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *t >= 100 {
            *t -= 100;
            true
        } else {
            false
        }
    }
}

/// Per-region caps on KMS calls in flight, so one slow region cannot hold
/// every task (or push the region into throttling).
pub(super) struct InFlight {
    slots: std::collections::HashMap<Region, Arc<Semaphore>>,
}

impl InFlight {
    pub fn new(regions: &[Region], per_region: usize) -> Self {
        Self {
            slots: regions
                .iter()
                .map(|r| (r.clone(), Arc::new(Semaphore::new(per_region.max(1)))))
                .collect(),
        }
    }
}

/// Calls in flight, polled by the one who waits on them. Those still
/// running when the set is dropped (another region won, or the waiter gave
/// up) move to tasks of their own and run to their end there.
pub(super) struct Calls<T: Send + 'static> {
    inner: Arc<Inner>,
    pending: FuturesUnordered<BoxFuture<'static, (Region, Result<T, KmsError>)>>,
}

impl<T: Send + 'static> Calls<T> {
    pub fn new(inner: &Arc<Inner>) -> Self {
        Self {
            inner: Arc::clone(inner),
            pending: FuturesUnordered::new(),
        }
    }

    /// Start `call` in `region` under `permit`.
    pub fn start(&mut self, region: Region, op: KmsOp, permit: Permit, call: Call<T>) {
        let inner = Arc::clone(&self.inner);
        self.pending.push(Box::pin(async move {
            let result = inner.run_call(&region, op, permit, call).await;
            (region, result)
        }));
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The next call to end, `None` when none is left.
    pub async fn next(&mut self) -> Option<(Region, Result<T, KmsError>)> {
        self.pending.next().await
    }
}

impl<T: Send + 'static> Drop for Calls<T> {
    fn drop(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // Outside a runtime (it is going away) nothing can run them.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Their log lines keep the request that started them.
        let span = tracing::Span::current();
        for call in std::mem::take(&mut self.pending) {
            // The result, a key included, is dropped here and wiped.
            self.inner.tasks.spawn_on(
                async move {
                    let _ = call.await;
                }
                .instrument(span.clone()),
                &runtime,
            );
        }
    }
}

impl Inner {
    /// One call: wait for a slot, call within `call_timeout` (slot wait
    /// included), then metrics, a log line on failure and the breaker.
    async fn run_call<T>(
        &self,
        region: &Region,
        op: KmsOp,
        permit: Permit,
        call: Call<T>,
    ) -> Result<T, KmsError> {
        let timeout = self.settings.call_timeout;
        let deadline = Instant::now() + timeout;
        let slot = match self.in_flight.slots.get(region) {
            Some(sem) => {
                match tokio::time::timeout_at(deadline, Arc::clone(sem).acquire_owned()).await {
                    // A slot freed at the deadline leaves no time for the call.
                    Ok(Ok(slot)) if Instant::now() < deadline => Some(slot),
                    _ => None,
                }
            }
            None => None,
        };
        // Tokio's clock: real time in production, and the paused clock in
        // tests, so a simulated delay counts.
        let started = Instant::now();
        let result = if slot.is_none() && self.in_flight.slots.contains_key(region) {
            Err(KmsError::new(
                KmsErrorKind::Saturated,
                region,
                op.as_str(),
                format!(
                    "{} calls already in flight to this region for {timeout:?}",
                    self.settings.max_in_flight_per_region
                ),
            ))
        } else {
            // A call that panics (a bug in an adapter) fails in its region
            // alone, as a call run in a task of its own would.
            match tokio::time::timeout_at(deadline, AssertUnwindSafe(call).catch_unwind()).await {
                Ok(Ok(r)) => r,
                Ok(Err(panic)) => Err(KmsError::new(
                    KmsErrorKind::Other,
                    region,
                    op.as_str(),
                    panic_message(panic.as_ref()),
                )),
                Err(_) => Err(KmsError::new(
                    KmsErrorKind::Unavailable,
                    region,
                    op.as_str(),
                    format!("no answer within {timeout:?}"),
                )),
            }
        };
        drop(slot);
        let took = started.elapsed();
        // A call refused at once (per-key error, saturation) says nothing
        // about the region's speed.
        let speaks_for_the_region = match &result {
            Ok(_) => true,
            Err(e) => e.kind == KmsErrorKind::Unavailable,
        };
        if speaks_for_the_region && !self.settings.hedge_after.is_zero() {
            self.slow.record(
                region,
                took,
                self.settings.hedge_after,
                self.settings.breaker_open,
            );
        }
        self.observe(region, op, took, &result);
        let health = match &result {
            Ok(_) => Health::Up,
            // Counted once, by the call that failed.
            Err(e) if e.waited_for_another() => Health::Neutral,
            Err(e) => health(e.kind),
        };
        if self.breakers.record(region, permit, health) {
            tracing::warn!(
                region = %region,
                open_for_ms = self.settings.breaker_open.as_millis() as u64,
                "region breaker opened after consecutive failures; skipping the region"
            );
        }
        result
    }

    fn observe<T>(&self, region: &Region, op: KmsOp, took: Duration, result: &Result<T, KmsError>) {
        self.metrics
            .kms_duration
            .with_label_values(&[region.as_str(), op.as_str()])
            .observe(took.as_secs_f64());
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        self.metrics
            .kms_requests
            .with_label_values(&[region.as_str(), op.as_str(), outcome])
            .inc();
        let Err(e) = result else { return };
        let chain = crate::report::chain(e);
        match e.kind {
            KmsErrorKind::Misconfigured => {
                tracing::error!(region = %region, op = op.as_str(), kind = e.kind.as_str(), error = %chain, "KMS refused for this key or region (access denied, key missing or disabled); trying the next region")
            }
            KmsErrorKind::Integrity => {
                self.metrics.integrity_failures.inc();
                tracing::error!(region = %region, op = op.as_str(), kind = e.kind.as_str(), error = %chain, "KMS refused a stored ciphertext: invalid, bound to another id, or wrapped by a foreign key")
            }
            _ => {
                tracing::warn!(region = %region, op = op.as_str(), kind = e.kind.as_str(), error = %chain, "KMS call failed")
            }
        }
    }

    /// Race `call` across `order` (regions slow of late moved to the back,
    /// see [`super::slow::SlowRegions`]): start the first region whose
    /// breaker allows it; when it fails, start the next at once; when it
    /// has not answered within `hedge_after` and the hedge budget allows, start the
    /// next as well. With `hedge_after` zero every region starts at once.
    /// The first success wins.
    pub(super) async fn hedged<T, F>(
        self: &Arc<Self>,
        op: KmsOp,
        order: &[Region],
        call: F,
    ) -> Result<(Region, T), NoAnswer>
    where
        T: Send + 'static,
        F: Fn(&Region) -> Call<T>,
    {
        let mut pending = Calls::new(self);
        let order = self.slow.reorder(order, self.settings.call_timeout);
        let mut queue = order.iter();
        let mut failed = NoAnswer::default();
        let mut launch = |pending: &mut Calls<T>| -> Option<Region> {
            for region in queue.by_ref() {
                let Some(permit) = self.breakers.acquire(region) else {
                    continue;
                };
                pending.start(region.clone(), op, permit, call(region));
                return Some(region.clone());
            }
            None
        };

        self.budget.deposit();
        if launch(&mut pending).is_none() {
            failed.all_open = Some(self.breakers.next_probe_in(&order));
            return Err(failed);
        }
        failed.attempts = 1;
        let all_at_once = self.settings.hedge_after.is_zero();
        let mut exhausted = false;
        if all_at_once {
            while launch(&mut pending).is_some() {
                failed.attempts += 1;
            }
            exhausted = true;
        }
        let mut may_hedge = !all_at_once;
        while !pending.is_empty() {
            let hedge = tokio::time::sleep(self.settings.hedge_after);
            tokio::select! {
                biased;
                Some((region, outcome)) = pending.next() => {
                    let error = match outcome {
                        Ok(value) => return Ok((region, value)),
                        Err(e) => e,
                    };
                    if error.kind == KmsErrorKind::Integrity {
                        failed.integrity = Some(error);
                    } else {
                        failed.last = Some(error);
                    }
                    if !exhausted {
                        match launch(&mut pending) {
                            Some(_) => failed.attempts += 1,
                            None => exhausted = true,
                        }
                    }
                }
                () = hedge, if may_hedge && !exhausted => {
                    if self.budget.try_spend() {
                        match launch(&mut pending) {
                            Some(next) => {
                                failed.attempts += 1;
                                self.metrics.kms_hedges.with_label_values(&[next.as_str()]).inc();
                            }
                            None => exhausted = true,
                        }
                    } else {
                        // Out of budget: wait for the primary to answer or fail.
                        may_hedge = false;
                        tracing::debug!(op = op.as_str(), "hedge budget spent; waiting on the slow region");
                    }
                }
            }
        }
        Err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_share_of_primaries_after_its_burst() {
        let b = HedgeBudget::new(10, 2);
        assert!(b.try_spend());
        assert!(b.try_spend());
        assert!(!b.try_spend(), "burst spent");
        for _ in 0..9 {
            b.deposit();
        }
        assert!(!b.try_spend(), "0.9 of a token");
        b.deposit();
        assert!(b.try_spend(), "one hedge per ten primaries");
        for _ in 0..1000 {
            b.deposit();
        }
        assert!(
            b.try_spend() && b.try_spend() && !b.try_spend(),
            "capped at the burst"
        );
        let none = HedgeBudget::new(0, 0);
        none.deposit();
        assert!(!none.try_spend());
    }
}
