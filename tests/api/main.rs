//! HTTP integration tests: the real server on port 0, driven over HTTP.
//! One binary; helpers in `helpers.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod auth;
#[path = "../common/mod.rs"]
mod common;
mod data_files;
mod helpers;
mod key;
mod metrics;
mod openapi;
mod ops;
mod process;
mod readme;
mod tls;
