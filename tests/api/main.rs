//! HTTP integration tests: the real server on port 0, driven over HTTP.
//! One binary; helpers in `helpers.rs`.

#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod key;
mod metrics;
mod process;
