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
use crate::kms::{Kms, KmsError, KmsErrorKind};
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
}

impl Check {
    pub fn passed(&self) -> bool {
        self.result.is_ok()
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
    pub kms_timeout: Duration,
    pub store_timeout: Duration,
}

/// Run every check at once; each is bounded by its call timeout.
pub async fn run(deps: &Dependencies) -> Vec<Check> {
    let store = async {
        let result = match tokio::time::timeout(deps.store_timeout, deps.store.check()).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(store_problem(&deps.store_name, &e)),
            Err(_) => Err(format!(
                "{} did not answer within {:?} (store.call_timeout_ms)",
                deps.store_name, deps.store_timeout
            )),
        };
        Check {
            name: "store".into(),
            result,
        }
    };
    let keys = futures::future::join_all(deps.regions.iter().map(|region| async move {
        let result = match tokio::time::timeout(deps.kms_timeout, deps.kms.check_key(region)).await
        {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(kms_problem(region, &e)),
            Err(_) => Err(format!(
                "KMS in {region} did not answer within {:?} (kms.call_timeout_ms)",
                deps.kms_timeout
            )),
        };
        Check {
            name: format!("kms.{region}"),
            result,
        }
    }));
    let (store, keys) = futures::join!(store, keys);
    std::iter::once(store).chain(keys).collect()
}

fn store_problem(store: &str, e: &StoreError) -> String {
    let detail = chain(e);
    let fix = if detail.contains("ResourceNotFoundException") {
        "the table does not exist: create it (hash key id, type S) or fix store.dynamodb.table and store.dynamodb.region"
    } else if detail.contains("AccessDenied") {
        "access denied: the role needs dynamodb:DescribeTable, GetItem, PutItem and UpdateItem on the table"
    } else {
        "check the store settings and that it is reachable"
    };
    format!("{store}: {fix} ({detail})")
}

fn kms_problem(region: &Region, e: &KmsError) -> String {
    let detail = chain(e);
    let fix = match e.kind {
        _ if detail.contains("NotFoundException") => format!(
            "the key does not exist in {region}: fix kms.aws.key_ids.{region} (id, ARN or alias/...)"
        ),
        KmsErrorKind::Misconfigured if detail.contains("AccessDenied") => format!(
            "access denied in {region}: the role needs kms:DescribeKey, GenerateDataKey, Encrypt and Decrypt on the key"
        ),
        KmsErrorKind::Misconfigured => format!("the key in {region} cannot be used"),
        KmsErrorKind::Unavailable | KmsErrorKind::Throttled | KmsErrorKind::Saturated => {
            format!("KMS in {region} is unreachable or failing")
        }
        _ => format!("KMS in {region} refused the check"),
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
    checks: Mutex<BTreeMap<String, Result<(), String>>>,
    passed_once: AtomicBool,
}

impl Health {
    pub fn new(checks: &[Check]) -> Self {
        let health = Self::default();
        health.record(checks);
        health
    }

    pub fn record(&self, checks: &[Check]) {
        let mut map = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for check in checks {
            map.insert(
                check.name.clone(),
                check.result.as_ref().map(|_| ()).map_err(Clone::clone),
            );
        }
        if map.values().all(Result::is_ok) {
            self.passed_once.store(true, Ordering::Release);
        }
    }

    /// Whether every check has passed at least once since start.
    pub fn passed_once(&self) -> bool {
        self.passed_once.load(Ordering::Acquire)
    }

    /// Each check's name and whether it passed last time.
    pub fn snapshot(&self) -> Vec<(String, bool)> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(name, r)| (name.clone(), r.is_ok()))
            .collect()
    }

    fn any_failing(&self) -> bool {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(Result::is_err)
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
                let before: BTreeMap<String, bool> = health.snapshot().into_iter().collect();
                for check in &checks {
                    match (before.get(&check.name), check.passed()) {
                        (Some(false), true) => {
                            tracing::info!(check = %check.name, "dependency check passes again")
                        }
                        (Some(true) | None, false) => {
                            tracing::error!(check = %check.name, result = %check.line(), "dependency check failed")
                        }
                        _ => {}
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

    fn check(name: &str, ok: bool) -> Check {
        Check {
            name: name.into(),
            result: if ok {
                Ok("fine".into())
            } else {
                Err("broken".into())
            },
        }
    }

    #[test]
    fn health_gates_until_every_check_passed_once() {
        let health = Health::new(&[check("store", true), check("kms.r1", false)]);
        assert!(!health.passed_once());
        assert_eq!(
            health.snapshot(),
            vec![("kms.r1".to_string(), false), ("store".to_string(), true)]
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
