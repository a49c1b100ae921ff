//! Per-region circuit breakers. `breaker_failures` consecutive failures open
//! a region for `breaker_open_ms`; then exactly one probe may test it
//! (half-open), and its outcome closes or reopens the breaker. Time is
//! `tokio::time::Instant` so tests with paused time are exact.
//!
//! Must not: classify errors (the caller passes `Health`) or make calls.

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

impl State {
    fn label(self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

const STATES: [&str; 3] = ["closed", "half_open", "open"];

/// Permission to call a region. A probe must be resolved with
/// [`Breakers::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Normal,
    Probe,
}

/// What a call's outcome says about its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The region answered.
    Up,
    /// A region fault: timeout of the call itself, throttling, 5xx,
    /// connection failure.
    Fault,
    /// Nothing about the region: a per-key error (disabled or missing key,
    /// access denied, invalid ciphertext or context), or a call that never
    /// reached the region.
    Neutral,
}

/// The gauges a breaker keeps current: `rkms_region_up{region}` and
/// `rkms_region_breaker{region,state}`.
#[derive(Clone)]
pub struct BreakerGauges {
    pub up: IntGaugeVec,
    pub state: IntGaugeVec,
}

pub struct Breakers {
    states: Mutex<HashMap<Region, State>>,
    threshold: u32,
    open_for: Duration,
    gauges: BreakerGauges,
}

impl Breakers {
    pub fn new(
        regions: &[Region],
        threshold: u32,
        open_for: Duration,
        gauges: BreakerGauges,
    ) -> Self {
        let breakers = Self {
            states: Mutex::new(HashMap::new()),
            threshold: threshold.max(1),
            open_for,
            gauges,
        };
        {
            let mut states = breakers.lock();
            for r in regions {
                states.insert(r.clone(), State::Closed { failures: 0 });
                breakers.publish(r, State::Closed { failures: 0 });
            }
        }
        breakers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Region, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep the gauges in step with a state change. Half-open is its own
    /// state and counts as up: the region is being tried again.
    fn publish(&self, region: &Region, state: State) {
        let name = region.as_str();
        for label in STATES {
            self.gauges
                .state
                .with_label_values(&[name, label])
                .set(i64::from(label == state.label()));
        }
        self.gauges
            .up
            .with_label_values(&[name])
            .set(i64::from(!matches!(state, State::Open { .. })));
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
                self.publish(region, *state);
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

    /// Outcome of a call made under `permit`. Returns true when this call
    /// opened the breaker.
    pub fn record(&self, region: &Region, permit: Permit, health: Health) -> bool {
        let mut states = self.lock();
        let state = states
            .entry(region.clone())
            .or_insert(State::Closed { failures: 0 });
        let before = *state;
        let opened = match (health, before) {
            (Health::Up, _) => {
                *state = State::Closed { failures: 0 };
                false
            }
            // A neutral probe proves nothing: let the next caller probe.
            (Health::Neutral, State::HalfOpen { probing: true }) if permit == Permit::Probe => {
                *state = State::HalfOpen { probing: false };
                false
            }
            (Health::Neutral, _) => false,
            (Health::Fault, State::Closed { failures }) if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            // A failed probe reopens at once.
            (Health::Fault, State::Closed { .. } | State::HalfOpen { .. }) => {
                *state = State::Open {
                    until: Instant::now() + self.open_for,
                };
                true
            }
            // A late failure while open extends nothing.
            (Health::Fault, State::Open { .. }) => false,
        };
        if state.label() != before.label() {
            self.publish(region, *state);
        }
        opened
    }

    pub fn any_usable(&self) -> bool {
        let regions: Vec<Region> = self.lock().keys().cloned().collect();
        regions.iter().any(|r| self.usable(r))
    }

    /// Bring the gauges up to the time: a breaker whose open time has
    /// passed shows as half-open (up), as it would be at the next call. It
    /// turns half-open only at a call, so with none (every read served from
    /// the cache) the gauges said down long after the region came back.
    pub fn refresh_gauges(&self) {
        let now = Instant::now();
        let states = self.lock();
        for (region, state) in states.iter() {
            let shown = match *state {
                State::Open { until } if now >= until => State::HalfOpen { probing: false },
                other => other,
            };
            self.publish(region, shown);
        }
    }

    /// Regions whose breaker is open (for readiness output).
    pub fn open_regions(&self) -> Vec<Region> {
        let mut regions: Vec<Region> = self.lock().keys().cloned().collect();
        regions.retain(|r| !self.usable(r));
        regions.sort();
        regions
    }

    /// Time until the first of `regions` may be probed again; zero when one
    /// is usable now.
    pub fn next_probe_in(&self, regions: &[Region]) -> Duration {
        let states = self.lock();
        let now = Instant::now();
        regions
            .iter()
            .map(|r| match states.get(r) {
                Some(State::Open { until }) => until.saturating_duration_since(now),
                _ => Duration::ZERO,
            })
            .min()
            .unwrap_or(Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers() -> (Breakers, Region, BreakerGauges) {
        let gauges = BreakerGauges {
            up: IntGaugeVec::new(prometheus::Opts::new("u", "u"), &["region"]).unwrap(),
            state: IntGaugeVec::new(prometheus::Opts::new("s", "s"), &["region", "state"]).unwrap(),
        };
        let r = Region::new("r");
        (
            Breakers::new(
                std::slice::from_ref(&r),
                3,
                Duration::from_secs(10),
                gauges.clone(),
            ),
            r,
            gauges,
        )
    }

    fn state(g: &BreakerGauges) -> (&'static str, i64) {
        let current = STATES
            .into_iter()
            .filter(|s| g.state.with_label_values(&["r", s]).get() == 1)
            .collect::<Vec<_>>();
        assert_eq!(current.len(), 1, "exactly one state is 1: {current:?}");
        (current[0], g.up.with_label_values(&["r"]).get())
    }

    /// With no call to the region, the gauges still stop saying down once
    /// the breaker's open time has passed (at the next scrape), where they
    /// said down until a call came: an alert on rkms_region_up == 0 kept
    /// firing on an instance serving from its cache.
    #[tokio::test(start_paused = true)]
    async fn the_gauges_follow_the_time_without_a_call() {
        let (b, r, g) = breakers();
        for _ in 0..3 {
            b.record(&r, Permit::Normal, Health::Fault);
        }
        b.refresh_gauges();
        assert_eq!(state(&g), ("open", 0));
        tokio::time::advance(Duration::from_secs(10)).await;
        b.refresh_gauges();
        assert_eq!(state(&g), ("half_open", 1));
        // The state itself moves only at a call, as before.
        assert_eq!(b.acquire(&r), Some(Permit::Probe));
        assert!(b.record(&r, Permit::Probe, Health::Fault));
        b.refresh_gauges();
        assert_eq!(state(&g), ("open", 0));
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_then_allows_one_probe() {
        let (b, r, g) = breakers();
        let n = Permit::Normal;
        assert_eq!(state(&g), ("closed", 1));
        assert!(!b.record(&r, n, Health::Fault));
        assert!(!b.record(&r, n, Health::Fault));
        assert!(b.record(&r, n, Health::Fault));
        assert_eq!(state(&g), ("open", 0));
        assert_eq!(b.acquire(&r), None);
        assert!(!b.usable(&r));
        assert_eq!(
            b.next_probe_in(std::slice::from_ref(&r)),
            Duration::from_secs(10)
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            b.next_probe_in(std::slice::from_ref(&r)),
            Duration::from_secs(6)
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.acquire(&r), Some(Permit::Probe));
        assert_eq!(state(&g), ("half_open", 1), "half-open is not down");
        assert_eq!(b.acquire(&r), None, "only one probe at a time");
        b.record(&r, Permit::Probe, Health::Neutral);
        assert_eq!(
            b.acquire(&r),
            Some(Permit::Probe),
            "a neutral probe hands over"
        );
        assert!(
            b.record(&r, Permit::Probe, Health::Fault),
            "a failed probe reopens"
        );
        assert_eq!(state(&g), ("open", 0));
        assert_eq!(b.acquire(&r), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.acquire(&r), Some(Permit::Probe));
        b.record(&r, Permit::Probe, Health::Up);
        assert_eq!(state(&g), ("closed", 1));
        assert_eq!(b.acquire(&r), Some(Permit::Normal));
    }

    #[tokio::test]
    async fn success_resets_the_count_and_per_key_errors_count_nothing() {
        let (b, r, _) = breakers();
        let n = Permit::Normal;
        b.record(&r, n, Health::Fault);
        b.record(&r, n, Health::Fault);
        b.record(&r, n, Health::Up);
        b.record(&r, n, Health::Fault);
        b.record(&r, n, Health::Fault);
        for _ in 0..100 {
            assert!(!b.record(&r, n, Health::Neutral));
        }
        assert_eq!(b.acquire(&r), Some(Permit::Normal));
    }
}
