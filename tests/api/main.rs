//! HTTP integration tests: the real server on port 0, driven over HTTP.
//! One binary; helpers in `helpers.rs`.

mod helpers;
mod key;
mod metrics;
mod process;
