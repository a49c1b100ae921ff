//! Checks of every dependency the config names: the store (it answers, and
//! for DynamoDB the table has hash key `id` of type S) and every region's
//! KMS key (exists, enabled, symmetric, ENCRYPT_DECRYPT). Run in parallel
//! at start (`server.preflight`), by `rkms check-config --connect`, and
//! again in the background so `/readyz` reports key health per region.
//!
//! Must not: make a cryptographic call or touch a key record.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::Region;
use crate::kms::{KeyRefusal, Kms, KmsError, KmsErrorKind};
use crate::report::chain;
use crate::store::{Store, StoreError};

/// How often the background monitor re-checks while a check fails, and
/// while every check passes.
const RECHECK_FAILING: Duration = Duration::from_secs(5);
const RECHECK_PASSING: Duration = Duration::from_secs(60);

/// The result of one check, named `store` or `kms.<region>`.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    /// What was found, or the problem and what to fix.
    pub result: Result<String, String>,
    /// The failure is the dependency being unreachable or overloaded (a
    /// timeout, 5xx, throttling), not the configuration being wrong. It
    /// never stops a start: a region outage must not keep rkms down.
    pub transient: bool,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.result.is_ok()
    }

    /// Failed because the configuration or the resource is wrong.
    pub fn broken(&self) -> bool {
        self.result.is_err() && !self.transient
    }

    fn state(&self) -> State {
        match (&self.result, self.transient) {
            (Ok(_), _) => State::Ok,
            (Err(_), true) => State::Unreachable,
            (Err(_), false) => State::Failed,
        }
    }

    /// One line for the log or the terminal.
    pub fn line(&self) -> String {
        match &self.result {
            Ok(found) => format!("ok   {}: {found}", self.name),
            Err(problem) => format!("FAIL {}: {problem}", self.name),
        }
    }
}

/// What preflight needs: the backends and the bound for each check.
#[derive(Clone)]
pub struct Dependencies {
    pub kms: Arc<dyn Kms>,
    pub store: Arc<dyn Store>,
    pub regions: Vec<Region>,
    /// Description of the store for messages ("DynamoDB table t in r").
    pub store_name: String,
    /// The settings to look at when the store refuses for a reason that
    /// does not say (`check store.sqlite.path`).
    pub store_settings: &'static str,
    pub kms_timeout: Duration,
    pub store_timeout: Duration,
}

/// Run every check at once; each is bounded by its call timeout.
pub async fn run(deps: &Dependencies) -> Vec<Check> {
    let store = async {
        let (result, transient) = match tokio::time::timeout(deps.store_timeout, deps.store.check())
            .await
        {
            Ok(Ok(found)) => (Ok(found), false),
            Ok(Err(e)) => {
                let (problem, transient) = store_problem(&deps.store_name, deps.store_settings, &e);
                (Err(problem), transient)
            }
            Err(_) => (
                Err(format!(
                    "{} did not answer within {:?} (store.call_timeout_ms)",
                    deps.store_name, deps.store_timeout
                )),
                true,
            ),
        };
        Check {
            name: "store".into(),
            result,
            transient,
        }
    };
    let keys = futures::future::join_all(deps.regions.iter().map(|region| async move {
        let (result, transient) =
            match tokio::time::timeout(deps.kms_timeout, deps.kms.check_key(region)).await {
                Ok(Ok(found)) => (Ok(found), false),
                Ok(Err(e)) => (
                    Err(kms_problem(region, &e)),
                    matches!(
                        e.kind,
                        KmsErrorKind::Unavailable
                            | KmsErrorKind::Throttled
                            | KmsErrorKind::Saturated
                    ),
                ),
                Err(_) => (
                    Err(format!(
                        "KMS in {region} did not answer within {:?} (kms.call_timeout_ms)",
                        deps.kms_timeout
                    )),
                    true,
                ),
            };
        Check {
            name: format!("kms.{region}"),
            result,
            transient,
        }
    }));
    let (store, keys) = futures::join!(store, keys);
    std::iter::once(store).chain(keys).collect()
}

/// The message, and whether the failure is transient. Told apart by the
/// errors' types, never their text: `settings` are what to look at when
/// the error does not say.
fn store_problem(store: &str, settings: &str, e: &StoreError) -> (String, bool) {
    let detail = chain(e);
    let (fix, transient) = if e.no_credentials() {
        ("the AWS SDK found no credentials to sign with", false)
    } else if e.is_outage() {
        ("the store is unreachable or failing", true)
    } else if matches!(e, StoreError::Unavailable { .. }) {
        // Not where the settings say (a missing table, access denied, a
        // file moved away or damaged): the error says what to do.
        return (format!("{store}: {detail}"), false);
    } else {
        (settings, false)
    };
    (format!("{store}: {fix} ({detail})"), transient)
}

fn kms_problem(region: &Region, e: &KmsError) -> String {
    let detail = chain(e);
    let fix = match (e.kind, e.refusal()) {
        // Not a metadata service that did not answer: an outage.
        (KmsErrorKind::Misconfigured, _) if e.no_credentials() => {
            format!("the AWS SDK found no credentials to sign with in {region}")
        }
        (_, Some(KeyRefusal::NotFound)) => format!(
            "the key does not exist in {region}: fix kms.aws.key_ids.{region} (id, ARN or alias/...)"
        ),
        (_, Some(KeyRefusal::AccessDenied)) => format!(
            "access denied in {region}: the role needs kms:DescribeKey, GenerateDataKey, Encrypt and Decrypt on the key"
        ),
        (KmsErrorKind::Misconfigured, None) => format!("the key in {region} cannot be used"),
        (KmsErrorKind::Unavailable | KmsErrorKind::Throttled | KmsErrorKind::Saturated, None) => {
            format!("KMS in {region} is unreachable or failing")
        }
        _ => format!(
            "KMS in {region} refused the check: check kms.aws.key_ids.{region}, and kms.aws.endpoints.{region} if it is set"
        ),
    };
    format!("{fix} ({detail})")
}

/// The latest result of each check, for `/readyz`. Until every check has
/// passed once since start (`server.preflight = "warn"` let it start with a
/// failure), readiness fails and names the failing checks. After that a
/// failing key is reported, but readiness follows what can still serve
/// (the store and at least one region): one region's key must not take
/// every replica out of service.
#[derive(Debug, Default)]
pub struct Health {
    checks: Mutex<BTreeMap<String, State>>,
    passed_once: AtomicBool,
    /// `rkms_dependency_check_failed{check}`, once exported.
    failed: std::sync::OnceLock<prometheus::IntGaugeVec>,
}

/// A check's last outcome, as `/readyz` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    /// The configuration or resource is wrong.
    Failed,
    /// Unreachable, timing out or overloaded.
    Unreachable,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Unreachable => "unreachable",
        }
    }
}

impl Health {
    pub fn new(checks: &[Check]) -> Self {
        let health = Self::default();
        health.record(checks);
        health
    }

    /// Show each check's last outcome in `gauge` from now on (1 while it
    /// is `failed`), so an alert sees what `/readyz` says.
    pub fn export(&self, gauge: prometheus::IntGaugeVec) {
        let gauge = self.failed.get_or_init(|| gauge);
        let map = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for (name, state) in map.iter() {
            gauge
                .with_label_values(&[name.as_str()])
                .set(i64::from(*state == State::Failed));
        }
    }

    pub fn record(&self, checks: &[Check]) {
        let mut map = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for check in checks {
            map.insert(check.name.clone(), check.state());
            if let Some(gauge) = self.failed.get() {
                gauge
                    .with_label_values(&[check.name.as_str()])
                    .set(i64::from(check.state() == State::Failed));
            }
        }
        if map.values().all(|s| *s != State::Failed) {
            self.passed_once.store(true, Ordering::Release);
        }
    }

    /// Whether every check has passed at least once since start (an
    /// unreachable dependency does not count against it: the breakers and
    /// the store's own readiness deal with outages). Once set, it stays:
    /// a check found broken later shows in `/readyz`'s body and in
    /// `rkms_dependency_check_failed`.
    pub fn passed_once(&self) -> bool {
        self.passed_once.load(Ordering::Acquire)
    }

    /// Each check's name and last outcome.
    pub fn snapshot(&self) -> Vec<(String, State)> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, state)| (name.clone(), *state))
            .collect()
    }

    fn any_failing(&self) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|s| *s != State::Ok)
    }

    /// Re-run the checks for as long as the returned task lives: every few
    /// seconds while one fails, every minute otherwise. A change is logged.
    pub fn monitor(self: &Arc<Self>, deps: Dependencies) -> tokio::task::JoinHandle<()> {
        let health = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let pause = if health.any_failing() {
                    RECHECK_FAILING
                } else {
                    RECHECK_PASSING
                };
                tokio::time::sleep(pause).await;
                let checks = run(&deps).await;
                let before: BTreeMap<String, State> = health.snapshot().into_iter().collect();
                for check in &checks {
                    let was = before.get(&check.name).copied();
                    match (was, check.state()) {
                        (Some(a), b) if a == b => {}
                        (_, State::Ok) => {
                            tracing::info!(check = %check.name, "dependency check passes again")
                        }
                        (_, _) => {
                            tracing::error!(check = %check.name, result = %check.line(), "dependency check failed")
                        }
                    }
                }
                health.record(&checks);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A check that fails for a reason without a hint of its own names
    /// the settings to look at, for the store the settings name.
    #[test]
    fn fallback_messages_name_the_settings() {
        let other = |why: &str| StoreError::Other {
            op: "describe_table",
            source: why.to_string().into(),
        };
        let dynamo_settings =
            "check store.dynamodb.table, store.dynamodb.region and store.dynamodb.endpoint";
        let (dynamo, transient) =
            store_problem("DynamoDB table t in r at x", dynamo_settings, &other("odd"));
        assert!(!transient);
        assert!(
            dynamo.contains(
                "store.dynamodb.table, store.dynamodb.region and store.dynamodb.endpoint"
            ),
            "{dynamo}"
        );
        let (sqlite, _) = store_problem("SQLite /tmp/x", "check store.sqlite.path", &other("odd"));
        assert!(sqlite.contains("check store.sqlite.path"), "{sqlite}");
        let outage = StoreError::Unavailable {
            op: "ping",
            source: "timed out".into(),
        };
        let (down, transient) =
            store_problem("DynamoDB table t in r at x", dynamo_settings, &outage);
        assert!(
            transient && down.contains("unreachable or failing"),
            "{down}"
        );
        let region = Region::new("eu-west-1");
        let refused = KmsError::new(KmsErrorKind::Other, &region, "describe_key", "Error");
        let kms = kms_problem(&region, &refused);
        assert!(
            kms.contains("kms.aws.key_ids.eu-west-1, and kms.aws.endpoints.eu-west-1"),
            "{kms}"
        );
    }

    fn check(name: &str, ok: bool) -> Check {
        Check {
            name: name.into(),
            result: if ok {
                Ok("fine".into())
            } else {
                Err("broken".into())
            },
            transient: false,
        }
    }

    #[test]
    fn an_unreachable_dependency_does_not_gate_readiness() {
        let mut down = check("kms.r2", false);
        down.transient = true;
        assert!(!down.broken());
        let health = Health::new(&[check("store", true), down]);
        assert!(health.passed_once());
        assert_eq!(
            health.snapshot()[0],
            ("kms.r2".to_string(), State::Unreachable)
        );
    }

    /// What `/readyz` says failed is a gauge an alert can watch: 1 while
    /// a check finds a wrong configuration, 0 once it passes, and 0 for
    /// one that only cannot reach its dependency.
    #[test]
    fn failed_checks_are_exported_for_alerts() {
        let gauge =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("f", "f"), &["check"]).unwrap();
        let mut down = check("kms.r2", false);
        down.transient = true;
        let health = Health::new(&[check("store", true), check("kms.r1", false), down]);
        health.export(gauge.clone());
        let value = |name: &str| gauge.with_label_values(&[name]).get();
        assert_eq!(
            (value("store"), value("kms.r1"), value("kms.r2")),
            (0, 1, 0)
        );
        health.record(&[check("kms.r1", true)]);
        assert_eq!(value("kms.r1"), 0);
        health.record(&[check("store", false)]);
        assert_eq!(value("store"), 1);
    }

    #[test]
    fn health_gates_until_every_check_passed_once() {
        let health = Health::new(&[check("store", true), check("kms.r1", false)]);
        assert!(!health.passed_once());
        assert_eq!(
            health.snapshot(),
            vec![
                ("kms.r1".to_string(), State::Failed),
                ("store".to_string(), State::Ok)
            ]
        );
        health.record(&[check("kms.r1", true)]);
        assert!(health.passed_once());
        // A later failure is reported but does not reset the gate.
        health.record(&[check("kms.r1", false)]);
        assert!(health.passed_once());
        assert!(health.any_failing());
        assert!(check("x", false).line().starts_with("FAIL x: broken"));
    }
}
