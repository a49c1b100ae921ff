//! All key policy lives here: the plaintext cache, single-flight, region
//! preference, hedged decrypts, breakers, quorum creates, create races and
//! repair of records missing a region. Adapters below only make calls.

pub mod breaker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use self::breaker::{Breakers, Permit};
use crate::config::Settings;
use crate::domain::{now_rfc3339, DataKey, KeyId, KeyRecord, Region, RECORD_VERSION};
use crate::kms::{Context, Kms, KmsError, KmsErrorKind, Wrapped};
use crate::metrics::Metrics;
use crate::store::{PutOutcome, Store, StoreError};

/// Records repaired at the same time, at most.
const MAX_CONCURRENT_REPAIRS: usize = 16;

/// Broker tuning, taken from [`Settings`].
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    pub regions: Vec<Region>,
    pub min_regions_on_create: usize,
    pub data_key_bytes: usize,
    pub call_timeout: Duration,
    pub hedge_after: Duration,
    pub breaker_failures: u32,
    pub breaker_open: Duration,
    pub store_timeout: Duration,
    /// Zero disables the cache.
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    pub stale_if_error: Duration,
}

impl From<&Settings> for BrokerSettings {
    fn from(s: &Settings) -> Self {
        Self {
            regions: s.kms.regions.iter().map(Region::new).collect(),
            min_regions_on_create: s.kms.min_regions_on_create,
            data_key_bytes: s.keys.data_key_bytes,
            call_timeout: Duration::from_millis(s.kms.call_timeout_ms),
            hedge_after: Duration::from_millis(s.kms.hedge_after_ms),
            breaker_failures: s.kms.breaker_failures,
            breaker_open: Duration::from_millis(s.kms.breaker_open_ms),
            store_timeout: Duration::from_millis(s.store.call_timeout_ms),
            cache_ttl: Duration::from_secs(s.cache.ttl_seconds),
            cache_max_entries: s.cache.max_entries,
            stale_if_error: Duration::from_secs(s.cache.stale_if_error_seconds),
        }
    }
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

#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    #[error("no key exists for this id")]
    NotFound,
    #[error("no KMS region could serve the request ({attempts} attempts)")]
    KmsUnavailable {
        attempts: usize,
        #[source]
        last: Option<Arc<KmsError>>,
    },
    #[error("only {got} of the {need} regions required to create a key answered")]
    NotEnoughRegions {
        got: usize,
        need: usize,
        #[source]
        last: Option<Arc<KmsError>>,
    },
    #[error("KMS refused the stored ciphertext for this id (invalid or bound to another id)")]
    Integrity {
        #[source]
        source: Arc<KmsError>,
    },
    #[error("store call failed")]
    Store {
        #[source]
        source: Arc<StoreError>,
    },
    #[error("store call timed out after {0:?}")]
    StoreTimeout(Duration),
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// Whether the failure is (probably) transient: the client should retry,
    /// and a stale cached key may be served instead.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::KmsUnavailable { .. } | Self::NotEnoughRegions { .. } | Self::StoreTimeout(_) => {
                true
            }
            Self::Store { source } => matches!(**source, StoreError::Unavailable { .. }),
            Self::NotFound | Self::Integrity { .. } | Self::Internal(_) => false,
        }
    }
}

struct CacheEntry {
    key: Arc<DataKey>,
    fetched: Instant,
}

type FlightKey = (KeyId, bool);
type Flight = Shared<BoxFuture<'static, Result<Resolved, BrokerError>>>;

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
    cache: Option<moka::future::Cache<KeyId, Arc<CacheEntry>>>,
    flights: Mutex<HashMap<FlightKey, Flight>>,
    repairs: Mutex<HashSet<KeyId>>,
}

impl KeyBroker {
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
            metrics.region_up.clone(),
        );
        let cache = (!settings.cache_ttl.is_zero()).then(|| {
            // moka's own TTL only bounds memory; freshness is judged against
            // `CacheEntry::fetched` so that stale-if-error can still see an
            // expired entry during its grace window.
            moka::future::Cache::builder()
                .max_capacity(settings.cache_max_entries)
                .time_to_live(settings.cache_ttl + settings.stale_if_error)
                .build()
        });
        Self {
            inner: Arc::new(Inner {
                kms,
                store,
                settings,
                metrics,
                breakers,
                cache,
                flights: Mutex::new(HashMap::new()),
                repairs: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The data key for `id`: from the cache, else the store and KMS, else
    /// (when `allow_create`) a new key. Concurrent misses for one id share one
    /// resolution.
    pub async fn get_or_create(
        &self,
        id: &KeyId,
        allow_create: bool,
    ) -> Result<Resolved, BrokerError> {
        let inner = &self.inner;
        let mut stale = None;
        if let Some(cache) = &inner.cache {
            if let Some(entry) = cache.get(id).await {
                let age = entry.fetched.elapsed();
                if age < inner.settings.cache_ttl {
                    inner.metrics.cache_hits.inc();
                    return Ok(Resolved {
                        key: Arc::clone(&entry.key),
                        source: KeySource::Cache,
                        created: false,
                    });
                }
                if age < inner.settings.cache_ttl + inner.settings.stale_if_error {
                    stale = Some(entry);
                }
            }
        }
        inner.metrics.cache_misses.inc();
        match (self.flight(id, allow_create).await, stale) {
            (Err(e), Some(entry)) if e.is_unavailable() => {
                inner.metrics.cache_stale_served.inc();
                tracing::warn!(
                    key_id = %id,
                    age_s = entry.fetched.elapsed().as_secs(),
                    error = %crate::error::chain(&e),
                    "refresh failed in every region; serving the expired cached key (stale_if_error)"
                );
                Ok(Resolved {
                    key: Arc::clone(&entry.key),
                    source: KeySource::StaleCache,
                    created: false,
                })
            }
            (result, _) => result,
        }
    }

    fn flight(&self, id: &KeyId, allow_create: bool) -> Flight {
        let key = (id.clone(), allow_create);
        let mut flights = self.inner.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(&key) {
            return flight.clone();
        }
        let inner = Arc::clone(&self.inner);
        let id = id.clone();
        let flight_key = key.clone();
        // Spawned so a client hanging up mid-create cannot cancel the
        // conditional put half-way; waiters share the outcome.
        let task = tokio::spawn(async move {
            let result = Arc::clone(&inner).resolve(&id, allow_create).await;
            if let (Ok(resolved), Some(cache)) = (&result, &inner.cache) {
                let entry = Arc::new(CacheEntry {
                    key: Arc::clone(&resolved.key),
                    fetched: Instant::now(),
                });
                cache.insert(id.clone(), entry).await;
            }
            inner
                .flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&flight_key);
            result
        });
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(BrokerError::Internal(format!(
                    "key resolution task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        flights.insert(key, flight.clone());
        flight
    }

    /// Readiness: the store answers within `timeout`, and at least one region's
    /// breaker lets calls through. Returns the failing checks by name.
    pub async fn readiness(&self, timeout: Duration) -> Result<(), Vec<(&'static str, String)>> {
        let mut failed = Vec::new();
        match tokio::time::timeout(timeout, self.inner.store.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(("store", crate::error::chain(&e))),
            Err(_) => failed.push(("store", format!("no answer within {timeout:?}"))),
        }
        if !self.inner.breakers.any_usable() {
            let open: Vec<String> = self
                .inner
                .breakers
                .open_regions()
                .iter()
                .map(Region::to_string)
                .collect();
            failed.push((
                "kms",
                format!("every region's breaker is open: {}", open.join(", ")),
            ));
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// Drop every cached key (they are wiped as their last reference goes).
    pub async fn clear_cache(&self) {
        if let Some(cache) = &self.inner.cache {
            let ids: Vec<Arc<KeyId>> = cache.iter().map(|(id, _)| id).collect();
            for id in ids {
                cache.invalidate(id.as_ref()).await;
            }
            cache.run_pending_tasks().await;
        }
    }

    pub fn cached_entries(&self) -> u64 {
        self.inner.cache.as_ref().map_or(0, |c| c.entry_count())
    }

    #[cfg(test)]
    async fn run_cache_maintenance(&self) {
        if let Some(cache) = &self.inner.cache {
            cache.run_pending_tasks().await;
        }
    }

    /// Wait until queued repairs are done (tests, shutdown).
    pub async fn settle_repairs(&self) {
        for _ in 0..500 {
            if self
                .inner
                .repairs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One region's call in flight, for [`Inner::hedged`].
type Attempt<'a, T> = Pin<Box<dyn Future<Output = (Region, Result<T, KmsError>)> + Send + 'a>>;

/// Why a hedged call got no answer: every region tried failed.
struct NoAnswer {
    attempts: usize,
    last: Option<KmsError>,
    integrity: Option<KmsError>,
}

impl From<NoAnswer> for BrokerError {
    fn from(failed: NoAnswer) -> Self {
        match failed.integrity {
            Some(e) => BrokerError::Integrity {
                source: Arc::new(e),
            },
            None => BrokerError::KmsUnavailable {
                attempts: failed.attempts,
                last: failed.last.map(Arc::new),
            },
        }
    }
}

impl Inner {
    async fn resolve(
        self: Arc<Self>,
        id: &KeyId,
        allow_create: bool,
    ) -> Result<Resolved, BrokerError> {
        match self.store_get(id).await? {
            Some(record) => self.decrypt_record(id, record).await,
            None if !allow_create => Err(BrokerError::NotFound),
            None => self.create(id).await,
        }
    }

    async fn timed_store<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, BrokerError> {
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.settings.store_timeout, call).await;
        self.metrics
            .store_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(Ok(_)) => "ok",
            Ok(Err(StoreError::Corrupt { .. })) => "corrupt",
            Ok(Err(_)) => "error",
            Err(_) => "timeout",
        };
        self.metrics
            .store_requests
            .with_label_values(&[op, outcome])
            .inc();
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(BrokerError::Store {
                source: Arc::new(e),
            }),
            Err(_) => Err(BrokerError::StoreTimeout(self.settings.store_timeout)),
        }
    }

    async fn store_get(&self, id: &KeyId) -> Result<Option<KeyRecord>, BrokerError> {
        self.timed_store("get", self.store.get(id)).await
    }

    /// One KMS call with the call timeout, metrics and a log line on failure.
    async fn kms_call<T>(
        &self,
        region: &Region,
        op: &'static str,
        call: impl Future<Output = Result<T, KmsError>>,
    ) -> Result<T, KmsError> {
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.settings.call_timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(KmsError::new(
                KmsErrorKind::Unavailable,
                region,
                op,
                format!("no answer within {:?}", self.settings.call_timeout),
            )),
        };
        self.metrics
            .kms_duration
            .with_label_values(&[region.as_str(), op])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        self.metrics
            .kms_requests
            .with_label_values(&[region.as_str(), op, outcome])
            .inc();
        if let Err(e) = &result {
            let chain = crate::error::chain(e);
            match e.kind {
                KmsErrorKind::Misconfigured => {
                    tracing::error!(region = %region, op, kind = e.kind.as_str(), error = %chain, "KMS region is misconfigured (access denied, key missing or disabled); trying the next region")
                }
                KmsErrorKind::Integrity => {
                    self.metrics.integrity_failures.inc();
                    tracing::error!(region = %region, op, kind = e.kind.as_str(), error = %chain, "KMS refused a stored ciphertext: invalid or bound to another id")
                }
                _ => {
                    tracing::warn!(region = %region, op, kind = e.kind.as_str(), error = %chain, "KMS call failed; trying the next region")
                }
            }
        }
        result
    }

    /// Outcome of a call for the region's breaker. Integrity errors prove
    /// the region answers, so they count as healthy.
    fn record_outcome(&self, region: &Region, result: Result<(), KmsErrorKind>) {
        let ok = matches!(result, Ok(()) | Err(KmsErrorKind::Integrity));
        if self.breakers.record(region, ok) {
            tracing::warn!(
                region = %region,
                open_for_ms = self.settings.breaker_open.as_millis() as u64,
                "region breaker opened after consecutive failures; skipping the region"
            );
        }
    }

    /// Configured regions among `available`, usable ones first, in preference
    /// order. When none is usable every one is tried: a stale breaker must
    /// not turn a recovered region into an outage.
    fn order(&self, available: impl Fn(&Region) -> bool) -> Vec<Region> {
        let candidates: Vec<Region> = self
            .settings
            .regions
            .iter()
            .filter(|r| available(r))
            .cloned()
            .collect();
        let (mut usable, rest): (Vec<Region>, Vec<Region>) = candidates
            .into_iter()
            .partition(|r| self.breakers.usable(r));
        if usable.is_empty() {
            usable = rest;
        }
        usable
    }

    fn permit(&self, region: &Region, last_resort: bool) -> Option<Permit> {
        self.breakers
            .acquire(region)
            .or(last_resort.then_some(Permit::Normal))
    }

    async fn decrypt_record(
        self: Arc<Self>,
        id: &KeyId,
        record: KeyRecord,
    ) -> Result<Resolved, BrokerError> {
        let context = if record.bound_to_id() {
            Context::Bound(id)
        } else {
            Context::Legacy
        };
        let order = self.order(|r| record.keys.contains_key(r));
        if order.is_empty() {
            return Err(BrokerError::Internal(format!(
                "the record for {id} has no ciphertext for any configured region"
            )));
        }
        let last_resort = !order.iter().any(|r| self.breakers.usable(r));
        let (region, key) = self
            .hedged("decrypt", &order, last_resort, |region| {
                let ciphertext = record.keys.get(region).map_or(&[][..], Vec::as_slice);
                self.kms.decrypt(region, ciphertext, context)
            })
            .await?;
        let key = Arc::new(key);
        if record.bound_to_id()
            && self
                .settings
                .regions
                .iter()
                .any(|r| !record.keys.contains_key(r))
        {
            Arc::clone(&self).queue_repair(record, Arc::clone(&key));
        }
        Ok(Resolved {
            key,
            source: KeySource::Region(region),
            created: false,
        })
    }

    /// Call `call` in the first region of `order` whose breaker allows it;
    /// when that fails or has not answered within `hedge_after`, call the
    /// next one too. The first success wins and calls still running are
    /// cancelled; one that outlived the hedge delay counts as a failure for
    /// its breaker (a region that keeps losing hedges is effectively down).
    async fn hedged<'a, T, F>(
        &'a self,
        op: &'static str,
        order: &'a [Region],
        last_resort: bool,
        call: F,
    ) -> Result<(Region, T), NoAnswer>
    where
        T: Send + 'a,
        F: Fn(&'a Region) -> BoxFuture<'a, Result<T, KmsError>>,
    {
        let mut pending: FuturesUnordered<Attempt<'a, T>> = FuturesUnordered::new();
        let mut started: HashMap<Region, (Instant, Permit)> = HashMap::new();
        let mut queue = order.iter();
        let mut failed = NoAnswer {
            attempts: 0,
            last: None,
            integrity: None,
        };
        // Start the next region whose breaker allows a call; false when none is left.
        let mut launch = |pending: &mut FuturesUnordered<Attempt<'a, T>>,
                          started: &mut HashMap<Region, (Instant, Permit)>|
         -> bool {
            for region in queue.by_ref() {
                let Some(permit) = self.permit(region, last_resort) else {
                    continue;
                };
                started.insert(region.clone(), (Instant::now(), permit));
                let future = call(region);
                pending.push(Box::pin(async move {
                    (region.clone(), self.kms_call(region, op, future).await)
                }));
                return true;
            }
            false
        };

        let mut more = launch(&mut pending, &mut started);
        failed.attempts += usize::from(more);
        while !pending.is_empty() {
            let hedge = tokio::time::sleep(self.settings.hedge_after);
            tokio::select! {
                biased;
                Some((region, result)) = pending.next() => {
                    started.remove(&region);
                    match result {
                        Ok(value) => {
                            self.record_outcome(&region, Ok(()));
                            self.settle_losers(op, &region, started);
                            return Ok((region, value));
                        }
                        Err(e) => {
                            self.record_outcome(&region, Err(e.kind));
                            if e.kind == KmsErrorKind::Integrity {
                                failed.integrity = Some(e);
                            } else {
                                failed.last = Some(e);
                            }
                            if more {
                                more = launch(&mut pending, &mut started);
                                failed.attempts += usize::from(more);
                            }
                        }
                    }
                }
                () = hedge, if more => {
                    more = launch(&mut pending, &mut started);
                    failed.attempts += usize::from(more);
                }
            }
        }
        Err(failed)
    }

    /// Calls cancelled because another region answered first.
    fn settle_losers(&self, op: &str, winner: &Region, losers: HashMap<Region, (Instant, Permit)>) {
        for (loser, (since, permit)) in losers {
            self.metrics
                .kms_requests
                .with_label_values(&[loser.as_str(), op, "cancelled"])
                .inc();
            if since.elapsed() >= self.settings.hedge_after {
                tracing::warn!(
                    region = %loser,
                    served_by = %winner,
                    op,
                    waited_ms = since.elapsed().as_millis() as u64,
                    "KMS region did not answer within hedge_after_ms; another region answered"
                );
                self.record_outcome(&loser, Err(KmsErrorKind::Unavailable));
            } else if permit == Permit::Probe {
                self.breakers.release_probe(&loser);
            }
        }
    }

    async fn create(self: Arc<Self>, id: &KeyId) -> Result<Resolved, BrokerError> {
        let context = Context::Bound(id);
        let order = self.order(|_| true);
        let last_resort = !order.iter().any(|r| self.breakers.usable(r));
        // GenerateDataKey, hedged like a read: a hedge loser's key is
        // cancelled with its call and never used.
        let bytes = self.settings.data_key_bytes;
        let (first, (key, wrapped)) = self
            .hedged("generate_data_key", &order, last_resort, |region| {
                self.kms.generate_data_key(region, bytes, context)
            })
            .await?;
        let mut last_error = None;

        let mut wrapped_by_region = BTreeMap::from([(first.clone(), wrapped)]);
        let others: Vec<Region> = self
            .settings
            .regions
            .iter()
            .filter(|r| **r != first && self.breakers.usable(r))
            .cloned()
            .collect();
        let (more, error) = self.encrypt_under(&others, &key, context).await;
        wrapped_by_region.extend(more);
        if let Some(e) = error {
            last_error = Some(e);
        }

        let need = self.settings.min_regions_on_create;
        if wrapped_by_region.len() < need {
            // `key` drops (and is wiped) here; nothing was stored.
            return Err(BrokerError::NotEnoughRegions {
                got: wrapped_by_region.len(),
                need,
                last: last_error.map(Arc::new),
            });
        }

        let record = KeyRecord {
            id: id.clone(),
            key_ids: wrapped_by_region
                .iter()
                .map(|(r, w)| (r.clone(), w.key_arn.clone()))
                .collect(),
            keys: wrapped_by_region
                .into_iter()
                .map(|(r, w)| (r, w.ciphertext))
                .collect(),
            version: Some(RECORD_VERSION),
            created_at: Some(now_rfc3339()),
        };
        let missing = self.settings.regions.len() - record.keys.len();
        match self
            .timed_store("put_if_absent", self.store.put_if_absent(&record))
            .await?
        {
            PutOutcome::Created => {
                self.metrics.keys_created.inc();
                if missing > 0 {
                    tracing::warn!(key_id = %id, missing, "key created without every region; a later read repairs the record");
                }
                Ok(Resolved {
                    key: Arc::new(key),
                    source: KeySource::Region(first),
                    created: true,
                })
            }
            PutOutcome::Exists(winner) => {
                self.metrics.create_conflicts.inc();
                drop(key);
                tracing::debug!(key_id = %id, "another writer created this key first; serving theirs");
                self.decrypt_record(id, winner).await
            }
        }
    }

    /// Wrap `key` under each of `regions` in parallel. Waits for every call
    /// until enough regions for a create have answered, then at most
    /// `hedge_after` more for the rest: a slow region is repaired later
    /// rather than delaying the create.
    async fn encrypt_under(
        &self,
        regions: &[Region],
        key: &DataKey,
        context: Context<'_>,
    ) -> (BTreeMap<Region, Wrapped>, Option<KmsError>) {
        let mut running: HashSet<Region> = HashSet::new();
        let mut calls: FuturesUnordered<_> = regions
            .iter()
            .filter_map(|region| {
                let permit = self.breakers.acquire(region)?;
                running.insert(region.clone());
                Some(async move {
                    let r = self
                        .kms_call(region, "encrypt", self.kms.encrypt(region, key, context))
                        .await;
                    (region.clone(), permit, r)
                })
            })
            .collect();
        let mut out = BTreeMap::new();
        let mut last_error = None;
        let mut deadline: Option<Instant> = None;
        let need_others = self.settings.min_regions_on_create.saturating_sub(1);
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, calls.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => calls.next().await,
            };
            let Some((region, _permit, result)) = next else {
                break;
            };
            running.remove(&region);
            match result {
                Ok(w) => {
                    self.record_outcome(&region, Ok(()));
                    out.insert(region, w);
                }
                Err(e) => {
                    self.record_outcome(&region, Err(e.kind));
                    last_error = Some(e);
                }
            }
            if deadline.is_none() && out.len() >= need_others {
                deadline = Some(Instant::now() + self.settings.hedge_after);
            }
        }
        // Calls still running are cancelled when `calls` drops. They were
        // slower than the quorum plus `hedge_after`: a failure for their
        // breaker, which also settles any probe among them.
        drop(calls);
        for region in running {
            self.metrics
                .kms_requests
                .with_label_values(&[region.as_str(), "encrypt", "cancelled"])
                .inc();
            self.record_outcome(&region, Err(KmsErrorKind::Unavailable));
        }
        (out, last_error)
    }

    /// Add the configured regions a record lacks, in the background. One
    /// repair per id at a time; regions with open breakers wait for a later read.
    fn queue_repair(self: Arc<Self>, record: KeyRecord, key: Arc<DataKey>) {
        {
            let mut repairs = self.repairs.lock().unwrap_or_else(|p| p.into_inner());
            // After an outage many records lack a region at once; a bounded
            // number of repairs keeps the Encrypt burst under KMS quotas.
            // The rest are repaired on a later read.
            if repairs.len() >= MAX_CONCURRENT_REPAIRS || !repairs.insert(record.id.clone()) {
                return;
            }
        }
        tokio::spawn(async move {
            let id = record.id.clone();
            let missing: Vec<Region> = self
                .settings
                .regions
                .iter()
                .filter(|r| !record.keys.contains_key(*r) && self.breakers.usable(r))
                .cloned()
                .collect();
            let (added, _) = self
                .encrypt_under(&missing, &key, Context::Bound(&id))
                .await;
            drop(key);
            if !added.is_empty() {
                let keys: BTreeMap<Region, Vec<u8>> = added
                    .iter()
                    .map(|(r, w)| (r.clone(), w.ciphertext.clone()))
                    .collect();
                let arns: BTreeMap<Region, String> = added
                    .iter()
                    .map(|(r, w)| (r.clone(), w.key_arn.clone()))
                    .collect();
                match self
                    .timed_store(
                        "add_missing_regions",
                        self.store.add_missing_regions(&id, &keys, &arns),
                    )
                    .await
                {
                    Ok(n) if n > 0 => {
                        self.metrics.records_repaired.inc();
                        tracing::info!(key_id = %id, regions_added = n, "repaired record: added missing regions");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(key_id = %id, error = %crate::error::chain(&e), "record repair failed; a later read retries")
                    }
                }
            }
            self.repairs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        });
    }
}

#[cfg(test)]
mod tests;
