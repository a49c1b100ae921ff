//! Regions held back as slow: a region whose call took longer than
//! `hedge_after` goes behind the others in the order of the next calls,
//! until its hold is served and a probe answers fast.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::Region;

/// Regions whose last call took longer than `hedge_after`, until when.
/// A slow region that still answers never trips its breaker, and with the
/// hedge budget spent every request would wait on it; so it goes to the
/// back of the order for `breaker_open`, then gets one more chance as the
/// first choice. Regions that are all slow keep their order.
#[derive(Default)]
pub(super) struct SlowRegions {
    until: Mutex<std::collections::HashMap<Region, Held>>,
}

/// A slow region held back: until when, and whether its time was served
/// and a probe (one caller's call) is out.
#[derive(Clone, Copy)]
struct Held {
    until: Instant,
    probing: bool,
}

impl SlowRegions {
    /// A fast answer ends a region's hold only once its time is served (the
    /// probe's): one fast answer in a moment of a region that keeps
    /// freezing would put it first again for every request, and with the
    /// hedge budget spent they would all wait out its next freeze.
    pub(super) fn record(&self, region: &Region, took: Duration, limit: Duration, hold: Duration) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if took > limit && !hold.is_zero() {
            let held = Held {
                until: Instant::now() + hold,
                probing: false,
            };
            until.insert(region.clone(), held);
        } else if until
            .get(region)
            .is_some_and(|h| h.probing || h.until <= Instant::now())
        {
            until.remove(region);
        }
    }

    /// `order` with the regions slow now moved behind the others, each
    /// group in its configured order; unchanged when every region is slow.
    /// The first caller to find a region's time served takes it as a probe
    /// and holds it back from the others for `probe_for` (until the probe's
    /// own call has told), so a still-slow region delays one request per
    /// period, not every request of that moment. Borrowed, with nothing
    /// copied, when none of `order` has been slow: the usual case, on
    /// every KMS call.
    pub(super) fn reorder<'a>(
        &self,
        order: &'a [Region],
        probe_for: Duration,
    ) -> Cow<'a, [Region]> {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if !order.iter().any(|r| until.contains_key(r)) {
            return Cow::Borrowed(order);
        }
        let now = Instant::now();
        let mut probing = None;
        for r in order {
            if let Some(held) = until.get_mut(r) {
                if held.until <= now && probing.is_none() {
                    *held = Held {
                        until: now + probe_for,
                        probing: true,
                    };
                    probing = Some(r.clone());
                }
            }
        }
        let is_slow =
            |r: &Region| probing.as_ref() != Some(r) && until.get(r).is_some_and(|h| h.until > now);
        let (fast, slow): (Vec<Region>, Vec<Region>) =
            order.iter().cloned().partition(|r| !is_slow(r));
        if fast.is_empty() {
            return Cow::Borrowed(order);
        }
        Cow::Owned(fast.into_iter().chain(slow).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A region that keeps freezing answers fast now and then (a hedged
    /// call that lands in a moment it runs): that must not put it first
    /// again before its hold is served and a probe has answered fast.
    #[test]
    fn a_slow_region_is_held_back_until_its_probe_answers_fast() {
        let (a, b) = (Region::new("a"), Region::new("b"));
        let order = [a.clone(), b.clone()];
        let (limit, hold, probe_for) = (
            Duration::from_millis(10),
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        let slow = SlowRegions::default();
        slow.record(&a, Duration::from_millis(500), limit, hold);
        assert_eq!(&*slow.reorder(&order, probe_for), [b.clone(), a.clone()]);
        // A fast answer while held back changes nothing.
        slow.record(&a, Duration::from_millis(1), limit, hold);
        assert_eq!(&*slow.reorder(&order, probe_for), [b.clone(), a.clone()]);
        std::thread::sleep(hold);
        // Time served: one caller probes it first, the others still not.
        assert_eq!(&*slow.reorder(&order, probe_for), [a.clone(), b.clone()]);
        assert_eq!(&*slow.reorder(&order, probe_for), [b.clone(), a.clone()]);
        // The probe answers slow: held back again; fast: first for all.
        slow.record(&a, Duration::from_millis(500), limit, hold);
        std::thread::sleep(hold);
        assert_eq!(&*slow.reorder(&order, probe_for), [a.clone(), b.clone()]);
        slow.record(&a, Duration::from_millis(1), limit, hold);
        assert!(matches!(slow.reorder(&order, probe_for), Cow::Borrowed(_)));
    }
}
