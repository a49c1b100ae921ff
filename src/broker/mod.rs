//! All key policy lives here: the plaintext cache, single-flight, region
//! preference, hedging, breakers, quorum creates, create races and repair
//! of records missing a region. Adapters below only make calls.
//!
//! - [`read`]: a cache miss: store read, then decrypt in the best region.
//! - [`create`]: a new key: generate, wrap in every region, conditional put.
//! - [`flight`]: single-flight: one resolution per id, shared by its callers.
//! - [`hedge`]: KMS calls, each run to its end; the race between regions.
//! - [`repair`]: the queue that fills in regions a record lacks.
//! - [`breaker`]: per-region circuit breakers; [`error`]: `BrokerError`.
//!
//! Must not: know SDK types, HTTP, or the config file format.

pub mod breaker;
mod create;
pub mod error;
mod flight;
mod hedge;
mod read;
mod ready;
mod repair;
mod slow;
mod unanswered;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use self::breaker::{BreakerGauges, Breakers};
pub use self::error::BrokerError;
use self::flight::{Flight, FlightKey};
use self::hedge::{HedgeBudget, InFlight};
use self::ready::StorePing;
pub use self::ready::{NotReady, PING_EVERY};
use self::repair::Repairs;
use self::slow::SlowRegions;
pub use self::unanswered::{Unanswered, Unwaited};
use crate::domain::{DataKey, KeyId, Region};
use crate::kms::Kms;
use crate::metrics::Metrics;
use crate::store::exact::ExactIds;
use crate::store::Store;

/// Broker tuning: typed values, built by the caller from its config.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Preference order.
    pub regions: Vec<Region>,
    pub min_regions_on_create: usize,
    pub data_key_bytes: usize,
    pub call_timeout: Duration,
    /// Zero: every region is asked at once.
    pub hedge_after: Duration,
    /// Hedges sent because a region is slow, as a percentage of calls.
    pub hedge_budget_percent: u32,
    pub hedge_budget_burst: u32,
    pub max_in_flight_per_region: usize,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    pub store_timeout: Duration,
    /// Zero disables the cache.
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    pub stale_if_error: Duration,
}

/// Where a served key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Cache,
    /// An expired cache entry, served because every region failed.
    StaleCache,
    /// Decrypted (or generated) by KMS in this region.
    Region(Region),
}

impl KeySource {
    /// Label for logs and the audit trail.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Cache => "cache",
            Self::StaleCache => "stale_cache",
            Self::Region(r) => r.as_str(),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Resolved {
    pub key: Arc<DataKey>,
    pub source: KeySource,
    pub created: bool,
}

#[derive(Clone)]
struct CacheEntry {
    key: Arc<DataKey>,
    fetched: Instant,
}

/// Plaintext keys by id. quick_cache: S3-FIFO eviction with a few bytes
/// of overhead per entry, and SipHash (the std hasher) because clients
/// choose the ids.
type KeyCache = quick_cache::sync::Cache<KeyId, CacheEntry>;

/// Longest pause between sweeps of expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// What a request ended up doing, for the audit trail: reading an existing
/// key, or creating one (whether or not it finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Create,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Create => "create",
        }
    }
}

/// The key broker. Cheap to clone; clones share cache, flights and breakers.
#[derive(Clone)]
pub struct KeyBroker {
    inner: Arc<Inner>,
}

struct Inner {
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
    settings: BrokerSettings,
    metrics: Arc<Metrics>,
    breakers: Breakers,
    budget: HedgeBudget,
    in_flight: InFlight,
    slow: SlowRegions,
    cache: Option<KeyCache>,
    flights: Mutex<HashMap<FlightKey, Flight>>,
    repairs: Repairs,
    ping: StorePing,
    /// Every task the broker starts: resolutions and KMS calls whose
    /// caller stopped waiting, repairs. Shutdown waits for them; a
    /// resolution its caller still polls is not one of them.
    tasks: TaskTracker,
}

impl KeyBroker {
    /// Build the broker and start its repair worker. Needs a Tokio runtime.
    pub fn new(
        kms: Arc<dyn Kms>,
        store: Arc<dyn Store>,
        settings: BrokerSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let breakers = Breakers::new(
            &settings.regions,
            settings.breaker_failures,
            settings.breaker_open,
            BreakerGauges {
                up: metrics.region_up.clone(),
                state: metrics.region_breaker.clone(),
            },
        );
        let cache = (!settings.cache_ttl.is_zero()).then(|| {
            KeyCache::new(usize::try_from(settings.cache_max_entries).unwrap_or(usize::MAX))
        });
        let inner = Arc::new(Inner {
            kms,
            store: Arc::new(ExactIds(store)),
            budget: HedgeBudget::new(settings.hedge_budget_percent, settings.hedge_budget_burst),
            in_flight: InFlight::new(&settings.regions, settings.max_in_flight_per_region),
            slow: SlowRegions::default(),
            repairs: Repairs::new(&settings.regions, metrics.repairs_queued.clone()),
            settings,
            metrics,
            breakers,
            cache,
            flights: Mutex::new(HashMap::new()),
            ping: StorePing::default(),
            tasks: TaskTracker::new(),
        });
        Repairs::start_worker(&inner);
        Self::start_sweeper(&inner);
        Self { inner }
    }

    /// The data key for `id`: from the cache, else the store and KMS, else
    /// (when `allow_create`) a new key. Concurrent misses for one id share one
    /// resolution, which the caller that started it drives: poll the future
    /// to its end or drop it (then the resolution goes on in a task). A
    /// future kept without being polled holds up every caller of that id.
    pub async fn get_or_create(
        &self,
        id: &KeyId,
        allow_create: bool,
    ) -> Result<Resolved, BrokerError> {
        self.get_or_create_within(id, allow_create, None, || None)
            .await
            .0
    }

    /// As [`KeyBroker::get_or_create`], giving up after `timeout` (the
    /// resolution itself goes on for other callers and the cache), and
    /// telling whether the id was read or a create was attempted. When the
    /// caller stops waiting before the resolution ends (the timeout, or
    /// its future dropped), the hook that `unanswered` makes, called only
    /// then, is told what the resolution did once it ends.
    pub async fn get_or_create_within(
        &self,
        id: &KeyId,
        allow_create: bool,
        timeout: Option<Duration>,
        unanswered: impl FnOnce() -> Option<Unanswered>,
    ) -> (Result<Resolved, BrokerError>, Action) {
        let inner = &self.inner;
        let mut stale = None;
        if let Some(cache) = &inner.cache {
            if let Some(entry) = cache.get(id) {
                let age = entry.fetched.elapsed();
                if age < inner.settings.cache_ttl {
                    inner.metrics.cache_hits.inc();
                    let resolved = Resolved {
                        key: Arc::clone(&entry.key),
                        source: KeySource::Cache,
                        created: false,
                    };
                    return (Ok(resolved), Action::Read);
                }
                if age < inner.settings.cache_ttl + inner.settings.stale_if_error {
                    stale = Some(entry);
                }
            }
        }
        inner.metrics.cache_misses.inc();
        let (flight, mut resolution) = self.flight(id, allow_create);
        let watch = unanswered::Watch::new(flight.clone(), unanswered, &inner.tasks);
        let wait = async {
            if let Some(resolution) = resolution.as_mut() {
                resolution.await;
            }
            flight.done.clone().await
        };
        let result = match timeout {
            Some(limit) => tokio::time::timeout(limit, wait)
                .await
                .unwrap_or(Err(BrokerError::Timeout(limit))),
            None => wait.await,
        };
        // Unfinished (the timeout), it goes on in a task of its own.
        drop(resolution);
        let action = flight.action();
        let result = match (result, stale) {
            (Err(e), Some(entry)) if e.is_unavailable() => {
                inner.metrics.cache_stale_served.inc();
                tracing::warn!(
                    key_id = %id,
                    age_s = entry.fetched.elapsed().as_secs(),
                    error = %crate::report::chain(&e),
                    "refresh failed in every region; serving the expired cached key (stale_if_error)"
                );
                Ok(Resolved {
                    key: Arc::clone(&entry.key),
                    source: KeySource::StaleCache,
                    created: false,
                })
            }
            (result, _) => result,
        };
        // Only a caller answered with its timeout did not learn what the
        // resolution did; one served the stale key was answered for good.
        if matches!(result, Err(BrokerError::Timeout(_))) {
            watch.timed_out();
        } else {
            watch.answered();
        }
        (result, action)
    }

    /// Regions whose breaker is open now.
    pub fn open_regions(&self) -> Vec<Region> {
        self.inner.breakers.open_regions()
    }

    /// Bring the region gauges up to the time (before a metrics scrape).
    pub fn refresh_gauges(&self) {
        self.inner.breakers.refresh_gauges();
    }

    /// Drop every cached key (they are wiped as their last reference goes).
    pub async fn clear_cache(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.clear();
        }
    }

    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.as_ref().map_or(0, |c| c.len() as u64)
    }

    /// Entries are checked for freshness when read; this drops (and so
    /// wipes) the ones past `cache_ttl + stale_if_error` that nobody reads,
    /// at least every [`SWEEP_EVERY`], so that plaintext keys do not stay
    /// in memory until the cache fills up.
    fn start_sweeper(inner: &Arc<Inner>) {
        if inner.cache.is_none() {
            return;
        }
        let keep_for = inner.settings.cache_ttl + inner.settings.stale_if_error;
        let every = keep_for.clamp(Duration::from_secs(1), SWEEP_EVERY);
        let weak = Arc::downgrade(inner);
        let cancel = inner.repairs.cancel.clone();
        inner.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = cancel.cancelled() => return,
                }
                let Some(inner) = weak.upgrade() else { return };
                if let Some(cache) = &inner.cache {
                    // One clock read for the whole pass, which holds each
                    // shard's lock in turn.
                    let now = Instant::now();
                    cache
                        .retain(|_, entry| now.saturating_duration_since(entry.fetched) < keep_for);
                }
            }
        });
    }

    /// Completes when no record repair is pending (tests, drills).
    pub async fn repairs_idle(&self) {
        self.inner.repairs.idle().await;
    }

    /// Records waiting for repair.
    pub fn repairs_pending(&self) -> i64 {
        self.inner.metrics.repairs_queued.get()
    }

    /// Stop: repairs still waiting on a region give up (they are logged by
    /// id), and every task the broker started finishes (so stop serving
    /// first: a resolution a request still polls is not a task). KMS and
    /// store calls are bounded by their timeouts, so this is too.
    pub async fn shutdown(&self) {
        self.inner.repairs.cancel.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

#[cfg(test)]
mod tests;
