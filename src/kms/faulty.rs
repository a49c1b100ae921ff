//! A fault-injecting wrapper around any [`Kms`], for tests: make a
//! region fail, hang or slow down at will, and count the calls each region
//! received. Production configs cannot select it.
//!
//! Must not: be built into a release binary (`testing` feature only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Context, Kms, KmsError, KmsErrorKind, Wrapped};
use crate::domain::{DataKey, Region};

/// What a region does on its next calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail at once with this kind.
    Fail(KmsErrorKind),
    /// Never answer (the caller's timeout must end the call).
    Hang,
    /// Answer normally after this delay.
    Delay(Duration),
    /// Panic (a bug in an adapter).
    Panic,
    /// Answer normally after waking itself this many times, as an HTTPS
    /// call wakes on connect, handshake, write, headers and body.
    Wakes(usize),
}

#[derive(Default)]
struct State {
    faults: HashMap<Region, Fault>,
    calls: HashMap<(Region, &'static str), usize>,
}

pub struct FaultyKms {
    inner: Arc<dyn Kms>,
    state: Mutex<State>,
}

impl FaultyKms {
    pub fn new(inner: Arc<dyn Kms>) -> Self {
        Self {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    pub fn set_fault(&self, region: &Region, fault: Option<Fault>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match fault {
            Some(f) => state.faults.insert(region.clone(), f),
            None => state.faults.remove(region),
        };
    }

    /// Calls made to `region` for `op` ("generate_data_key", "encrypt", "decrypt").
    pub fn calls(&self, region: &Region, op: &str) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .calls
            .iter()
            .filter(|((r, o), _)| r == region && *o == op)
            .map(|(_, n)| *n)
            .sum()
    }

    /// All calls of `op` across regions.
    pub fn total_calls(&self, op: &str) -> usize {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .calls
            .iter()
            .filter(|((_, o), _)| *o == op)
            .map(|(_, n)| *n)
            .sum()
    }

    async fn enter(&self, region: &Region, op: &'static str) -> Result<(), KmsError> {
        let fault = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            *state.calls.entry((region.clone(), op)).or_default() += 1;
            state.faults.get(region).copied()
        };
        match fault {
            None => Ok(()),
            Some(Fault::Fail(kind)) => Err(KmsError::new(kind, region, op, "injected fault")),
            Some(Fault::Hang) => {
                futures::future::pending::<()>().await;
                Ok(())
            }
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Some(Fault::Panic) => panic!("injected panic in {region}"),
            Some(Fault::Wakes(n)) => {
                for _ in 0..n {
                    tokio::task::yield_now().await;
                }
                Ok(())
            }
        }
    }
}

#[async_trait]
impl Kms for FaultyKms {
    async fn generate_data_key(
        &self,
        region: &Region,
        bytes: usize,
        context: Context<'_>,
    ) -> Result<(DataKey, Wrapped), KmsError> {
        self.enter(region, "generate_data_key").await?;
        self.inner.generate_data_key(region, bytes, context).await
    }

    async fn encrypt(
        &self,
        region: &Region,
        key: &DataKey,
        context: Context<'_>,
    ) -> Result<Wrapped, KmsError> {
        self.enter(region, "encrypt").await?;
        self.inner.encrypt(region, key, context).await
    }

    async fn decrypt(
        &self,
        region: &Region,
        ciphertext: &[u8],
        context: Context<'_>,
    ) -> Result<DataKey, KmsError> {
        self.enter(region, "decrypt").await?;
        self.inner.decrypt(region, ciphertext, context).await
    }

    async fn check_key(&self, region: &Region) -> Result<String, KmsError> {
        self.enter(region, "check_key").await?;
        self.inner.check_key(region).await
    }
}
