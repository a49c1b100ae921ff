//! Maintenance commands that walk the whole store: `backfill` (add every
//! configured region a record lacks), `verify` (decrypt every ciphertext in
//! its own region: the disaster-recovery drill), `copy` (records between
//! stores, without decrypting) and `convert-config` (an RKMS (Go) config to
//! an rkms one). Scans are paged and resumable through a checkpoint file.
//!
//! Must not: regenerate or replace a key or a ciphertext; print key
//! material.

pub mod backfill;
pub mod convert;
pub mod copy;
pub mod verify;

mod checkpoint;
pub use checkpoint::{next_page, read_again, Checkpoint, SegmentState, Walk, MAX_RETRY};

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::domain::Region;
use crate::kms::{KmsError, KmsErrorKind};
use crate::store::StoreError;

/// Records asked for per scan page.
pub const PAGE: usize = 100;

/// How long a region that could not be asked (a timeout, no credentials)
/// is left alone before the next record tries it again.
const DOWN_FOR: Duration = Duration::from_secs(10);

/// Calls in a row a region must fail to answer before it is left alone:
/// one reset connection or slow answer is not an outage.
const DOWN_AFTER: u32 = 3;

/// Regions that could not be asked, and until when they are left alone.
/// Without it a region that hangs costs every record a whole call timeout:
/// a walk over a million records would take days to say what the first
/// few calls had shown.
pub struct Down {
    regions: Mutex<HashMap<Region, Unanswered>>,
    /// Logged when a region is left alone: what the tool does meanwhile.
    meanwhile: &'static str,
}

/// A region's calls that went unanswered in a row, and until when it is
/// left alone.
#[derive(Default)]
struct Unanswered {
    in_a_row: u32,
    until: Option<Instant>,
}

impl Down {
    pub fn new(meanwhile: &'static str) -> Self {
        Self {
            regions: Mutex::default(),
            meanwhile,
        }
    }

    pub fn is_down(&self, region: &Region) -> bool {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(state) = regions.get_mut(region) else {
            return false;
        };
        match state.until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                state.until = None;
                false
            }
            None => false,
        }
    }

    /// A call answered (or was refused for the record alone): the region
    /// can be asked.
    pub fn answered(&self, region: &Region) {
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        regions.remove(region);
    }

    /// Count a call `error` says went unanswered (no answer, no
    /// credentials); the [`DOWN_AFTER`]th in a row leaves the region alone
    /// for [`DOWN_FOR`]. Whether the error was such.
    pub fn mark_if_unreachable(&self, region: &Region, error: &KmsError) -> bool {
        let unreachable = error.no_credentials() || error.kind == KmsErrorKind::Unavailable;
        if !unreachable {
            self.answered(region);
            return false;
        }
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        let state = regions.entry(region.clone()).or_default();
        state.in_a_row += 1;
        if state.in_a_row >= DOWN_AFTER {
            state.in_a_row = 0;
            if state.until.replace(Instant::now() + DOWN_FOR).is_none() {
                tracing::warn!(%region, "{}, for the next {}s", self.meanwhile, DOWN_FOR.as_secs());
            }
        }
        true
    }
}

/// Wait for every segment. On the first that fails, stop the others and
/// fail saying what had been done by then (`done`: the summary so far),
/// which a failed run printed nothing of.
pub async fn join_segments(
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    done: impl Fn() -> String,
) -> anyhow::Result<()> {
    while let Some(joined) = tasks.join_next().await {
        let failed = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(e) => anyhow::Error::new(e),
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let done = done();
        let first = done.lines().next().unwrap_or_default().to_string();
        return Err(failed.context(format!("stopped before the end, after {first}")));
    }
    Ok(())
}

/// The id a failed record decode names, for reports.
pub fn failed_id(error: &StoreError) -> String {
    corrupt_id(error).unwrap_or("<unknown>").to_string()
}

/// The id a failed record decode names, if it does.
pub fn corrupt_id(error: &StoreError) -> Option<&str> {
    match error {
        StoreError::Corrupt { id, .. } => Some(id),
        _ => None,
    }
}

/// For a summary's first line: how many of the records scanned the
/// checkpoint carried as unsettled, read again by id.
pub fn retried(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} read again by id, as the checkpoint carried them unsettled)"),
    }
}

/// A shared limit on KMS calls per second (`--max-rps`), so a maintenance
/// run cannot eat the quota production traffic needs.
#[derive(Clone)]
pub struct KmsBudget(Option<Arc<DefaultDirectRateLimiter>>);

impl KmsBudget {
    /// `0` = unlimited.
    pub fn per_second(rps: u32) -> Self {
        Self(NonZeroU32::new(rps).map(|r| Arc::new(RateLimiter::direct(Quota::per_second(r)))))
    }

    /// Wait for one call's worth of budget.
    pub async fn take(&self) {
        if let Some(limiter) = &self.0 {
            limiter.until_ready().await;
        }
    }
}

/// How often a tool whose stderr is no terminal (a job's log) says how
/// far it got.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// A progress bar on a terminal (stderr); otherwise a line on stderr every
/// [`PROGRESS_EVERY`] saying how far the run got, so that a long run in a
/// job's log is seen to move.
pub fn progress(what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::hidden();
        say_progress(what, &bar, PROGRESS_EVERY, std::io::stderr());
        return bar;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} {pos} records [{elapsed}] {per_sec}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Write `rkms: WHAT: N records so far (S s)` to `out` every `every`
/// until `bar` is finished or dropped, from a thread of its own.
fn say_progress(
    what: &str,
    bar: &indicatif::ProgressBar,
    every: std::time::Duration,
    mut out: impl std::io::Write + Send + 'static,
) {
    let bar = bar.downgrade();
    let what = what.to_owned();
    let started = std::time::Instant::now();
    let tick = every.min(std::time::Duration::from_millis(200));
    let _ = std::thread::Builder::new()
        .name("rkms-progress".into())
        .spawn(move || {
            let mut next = started + every;
            loop {
                std::thread::sleep(tick);
                let Some(bar) = bar.upgrade() else { return };
                if bar.is_finished() {
                    return;
                }
                if std::time::Instant::now() >= next {
                    next += every;
                    let _ = writeln!(
                        out,
                        "rkms: {what}: {} records so far ({} s)",
                        bar.position(),
                        started.elapsed().as_secs()
                    );
                }
            }
        });
}

/// Ids listed in a report, at most.
pub const MAX_LISTED: usize = 1000;

/// Count a record in `count` and list its id, up to [`MAX_LISTED`] ids.
pub fn note(count: &mut u64, list: &mut Vec<String>, id: &str) {
    *count += 1;
    if list.len() < MAX_LISTED {
        list.push(id.to_string());
    }
}

/// `{prefix}{id:?}` for each listed id, and a line for those counted but
/// not listed.
pub fn list_lines(out: &mut String, prefix: &str, ids: &[String], count: u64) {
    for id in ids {
        out.push_str(&format!("{prefix}{id:?}\n"));
    }
    let unlisted = count.saturating_sub(ids.len() as u64);
    if unlisted > 0 {
        out.push_str(&format!(
            "{prefix}{unlisted} more not listed (the first {MAX_LISTED} are; the log names each)\n"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One reset connection or slow answer is not an outage: a region is
    /// left alone only after calls in a row go unanswered, and an answer
    /// starts the count again.
    #[test]
    fn a_region_is_left_alone_after_calls_in_a_row_go_unanswered() {
        let region = Region::new("r");
        let unanswered = KmsError::new(KmsErrorKind::Unavailable, &region, "decrypt", "timeout");
        let refused = KmsError::new(KmsErrorKind::Other, &region, "decrypt", "bad ciphertext");
        let down = Down::new("test");
        for _ in 0..DOWN_AFTER - 1 {
            assert!(down.mark_if_unreachable(&region, &unanswered));
        }
        assert!(!down.is_down(&region));
        down.answered(&region);
        for _ in 0..DOWN_AFTER - 1 {
            down.mark_if_unreachable(&region, &unanswered);
        }
        // A refusal of one record is an answer.
        assert!(!down.mark_if_unreachable(&region, &refused));
        down.mark_if_unreachable(&region, &unanswered);
        assert!(!down.is_down(&region));
        for _ in 0..DOWN_AFTER - 1 {
            down.mark_if_unreachable(&region, &unanswered);
        }
        assert!(down.is_down(&region));
    }

    /// A run in a job's log says how far it got while it runs, and stops
    /// saying it once finished.
    #[test]
    fn a_run_without_a_terminal_says_how_far_it_got() {
        #[derive(Clone, Default)]
        struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let bar = indicatif::ProgressBar::hidden();
        say_progress(
            "verify",
            &bar,
            std::time::Duration::from_millis(50),
            lines.clone(),
        );
        bar.inc(7);
        std::thread::sleep(std::time::Duration::from_millis(300));
        bar.finish_and_clear();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let said = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(said.lines().count() >= 2, "{said}");
        assert!(
            said.lines()
                .all(|l| l.starts_with("rkms: verify: 7 records so far (")),
            "{said}"
        );
        let after = said.len();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(
            lines.0.lock().unwrap().len(),
            after,
            "nothing after the end"
        );
    }
}
