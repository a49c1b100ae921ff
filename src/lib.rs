//! rkms: a stateless multi-region key broker. `GET /key?id=ID` returns the
//! same data key for an id every time, creating it on first use; at rest the
//! key exists only wrapped by a KMS master key in each of several regions.
//!
//! - [`config`]: the TOML schema, env overrides and validation.
//! - [`startup`]: builds the app from config (the one `match` on backends),
//!   binds, serves, shuts down gracefully.
//! - [`routes`]: the edge service of each listener and the HTTP handlers;
//!   [`error`]: the one `ApiError`.
//! - [`auth`]: clients by bearer token or TLS certificate; per-id-pattern
//!   authorization, the create permission and per-client rate limits.
//! - [`preflight`]: checks of the store and every region's KMS key, at
//!   start, by `check-config --connect`, and behind `/readyz`.
//! - [`ops`]: maintenance over the whole store: backfill, verify, copy,
//!   and converting an RKMS (Go) config.
//! - [`tls`]: the rustls server config, re-read when its files change.
//! - [`hardening`]: process settings that keep keys out of core dumps.
//! - [`domain`]: `KeyId`, `DataKey` (wiped on drop), `KeyRecord`, `Region`.
//! - [`broker`]: all policy: cache, single-flight, hedging, breakers,
//!   quorum creates, create races, repair.
//! - [`kms`]: `trait Kms` with the `aws` and `local` adapters.
//! - [`store`]: `trait Store` with `dynamodb`, `sqlite` and `memory`.
//! - [`metrics`], [`telemetry`]: Prometheus registry, tracing subscriber,
//!   the always-on audit trail and the non-blocking log writer.
//! - [`aws`]: SDK timeouts and error inspection shared by the AWS adapters;
//!   [`report`]: the boxed error type and one-line error chains.
//!
//! Imports run one way, from the edge down (`tests/architecture.rs` holds
//! the allowed graph): `startup` → `routes` → `broker` → `kms`, `store` →
//! `domain`; `kms` and `store` never import each other.

#![forbid(unsafe_code)]

pub mod auth;
pub mod aws;
pub mod broker;
pub mod config;
pub mod domain;
pub mod error;
pub mod hardening;
pub mod kms;
pub mod metrics;
pub mod ops;
pub mod preflight;
pub mod report;
pub mod routes;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
