//! Per-region circuit breakers. `breaker_failures` consecutive failures open
//! a region for `breaker_open_ms`; then exactly one probe may test it
//! (half-open), and its outcome closes or reopens the breaker. Time is
//! `tokio::time::Instant` so tests with paused time are exact.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGaugeVec;
use tokio::time::Instant;

use crate::domain::Region;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Permission to call a region. A probe must be resolved with
/// [`Breakers::record`] or handed back with [`Breakers::release_probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Probe,
}

pub struct Breakers {
    states: Mutex<HashMap<Region, State>>,
    threshold: u32,
    open_for: Duration,
    gauge: IntGaugeVec,
}

impl Breakers {
    pub fn new(regions: &[Region], threshold: u32, open_for: Duration, gauge: IntGaugeVec) -> Self {
        let states = regions
            .iter()
            .map(|r| {
                gauge.with_label_values(&[r.as_str()]).set(1);
                (r.clone(), State::Closed { failures: 0 })
            })
            .collect();
        Self {
            states: Mutex::new(states),
            threshold: threshold.max(1),
            open_for,
            gauge,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Region, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call to `region` could be made now (no state change).
    pub fn usable(&self, region: &Region) -> bool {
        match self.lock().get(region) {
            Some(State::Closed { .. }) | None => true,
            Some(State::Open { until }) => Instant::now() >= *until,
            Some(State::HalfOpen { probing }) => !probing,
        }
    }

    /// Ask to call `region`. `None`: the breaker is open or another caller
    /// holds the probe.
    pub fn acquire(&self, region: &Region) -> Option<Permit> {
        let mut states = self.lock();
        let state = states
            .entry(region.clone())
            .or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { .. } => Some(Permit::Normal),
            State::Open { until } if Instant::now() >= until => {
                *state = State::HalfOpen { probing: true };
                Some(Permit::Probe)
            }
            State::Open { .. } => None,
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Some(Permit::Probe)
            }
            State::HalfOpen { probing: true } => None,
        }
    }

    /// Outcome of a call made under a permit. Returns true when this call
    /// opened the breaker.
    pub fn record(&self, region: &Region, ok: bool) -> bool {
        let mut states = self.lock();
        let state = states
            .entry(region.clone())
            .or_insert(State::Closed { failures: 0 });
        let gauge = self.gauge.with_label_values(&[region.as_str()]);
        if ok {
            *state = State::Closed { failures: 0 };
            gauge.set(1);
            return false;
        }
        let open = match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            // A failed probe reopens at once; a late failure while open
            // extends nothing.
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.open_for,
            };
            gauge.set(0);
        }
        open
    }

    /// A probe that ended without an outcome (its call was cancelled): let
    /// the next caller probe instead.
    pub fn release_probe(&self, region: &Region) {
        let mut states = self.lock();
        if let Some(state @ State::HalfOpen { probing: true }) = states.get_mut(region) {
            *state = State::HalfOpen { probing: false };
        }
    }

    pub fn any_usable(&self) -> bool {
        let regions: Vec<Region> = self.lock().keys().cloned().collect();
        regions.iter().any(|r| self.usable(r))
    }

    /// Regions whose breaker is open (for readiness output).
    pub fn open_regions(&self) -> Vec<Region> {
        let mut regions: Vec<Region> = self.lock().keys().cloned().collect();
        regions.retain(|r| !self.usable(r));
        regions.sort();
        regions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> (Breakers, Region) {
        let gauge = IntGaugeVec::new(prometheus::Opts::new("t", "t"), &["region"]).unwrap();
        let r = Region::new("r");
        (
            Breakers::new(std::slice::from_ref(&r), 3, Duration::from_secs(10), gauge),
            r,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_allows_one_probe() {
        let (b, r) = breakers();
        assert!(!b.record(&r, false));
        assert!(!b.record(&r, false));
        assert!(b.record(&r, false));
        assert_eq!(b.acquire(&r), None);
        assert!(!b.usable(&r));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.acquire(&r), Some(Permit::Probe));
        assert_eq!(b.acquire(&r), None, "only one probe at a time");
        b.release_probe(&r);
        assert_eq!(b.acquire(&r), Some(Permit::Probe));
        assert!(b.record(&r, false), "a failed probe reopens");
        assert_eq!(b.acquire(&r), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.acquire(&r), Some(Permit::Probe));
        b.record(&r, true);
        assert_eq!(b.acquire(&r), Some(Permit::Normal));
    }

    #[tokio::test]
    async fn success_resets_the_count() {
        let (b, r) = breakers();
        b.record(&r, false);
        b.record(&r, false);
        b.record(&r, true);
        b.record(&r, false);
        b.record(&r, false);
        assert_eq!(b.acquire(&r), Some(Permit::Normal));
    }
}
