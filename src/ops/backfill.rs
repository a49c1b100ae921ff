//! `rkms backfill`: give every record a ciphertext in every configured
//! region. For each record lacking regions, the data key is decrypted in a
//! region that has it and encrypted (bound to the id) in each missing
//! region; the store adds only regions the record still lacks, so runs are
//! idempotent and never replace a ciphertext. Records written by RKMS (Go)
//! are left as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{failed_id, list_lines, note, progress, Checkpoint, KmsBudget, Walk, PAGE};
use crate::domain::{KeyRecord, Region};
use crate::kms::{Context, Kms};
use crate::report::chain;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Options {
    /// Parallel scan segments (DynamoDB Scan segments; SQLite rowid classes).
    pub segments: u32,
    /// KMS calls per second, at most; 0 = unlimited.
    pub max_rps: u32,
    /// Count what would be done; write nothing.
    pub dry_run: bool,
    /// Resume from, and save progress to, this file.
    pub checkpoint: Option<PathBuf>,
    /// Stop after this many records (a partial run; resume with the checkpoint).
    pub max_records: Option<u64>,
    /// The store and the regions, as the checkpoint records them.
    pub scope: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub scanned: u64,
    /// Records that already had every configured region.
    pub complete: u64,
    /// Records that gained at least one region (or would, in a dry run).
    pub repaired: u64,
    pub regions_added: u64,
    /// RKMS (Go) records, left unchanged.
    pub legacy_skipped: u64,
    pub failed: u64,
    /// Records the store cannot decode; never touched.
    pub corrupt: u64,
    /// The first [`super::MAX_LISTED`] ids of each.
    pub failed_ids: Vec<String>,
    pub corrupt_ids: Vec<String>,
    pub dry_run: bool,
    /// Stopped by `max_records` before the scan finished.
    pub partial: bool,
    /// Progress is saved to a checkpoint, so a run can resume.
    pub resumable: bool,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.corrupt == 0
    }

    pub fn text(&self) -> String {
        let verb = if self.dry_run { "would gain" } else { "gained" };
        let mut out = format!(
            "backfill{}: {} records scanned: {} complete, {} {verb} {} region ciphertexts, {} RKMS (Go) records left unchanged, {} failed, {} corrupt{}\n",
            if self.dry_run { " (dry run)" } else { "" },
            self.scanned,
            self.complete,
            self.repaired,
            self.regions_added,
            self.legacy_skipped,
            self.failed,
            self.corrupt,
            match (self.partial, self.resumable) {
                (false, _) => "",
                (true, true) => "; stopped at --max-records, run again with the same --checkpoint to go on",
                (true, false) => "; stopped at --max-records, and without --checkpoint another run starts from the beginning",
            },
        );
        list_lines(&mut out, "failed: ", &self.failed_ids, self.failed);
        list_lines(&mut out, "corrupt: ", &self.corrupt_ids, self.corrupt);
        out
    }
}

/// What one record needed.
enum Outcome {
    Complete,
    Legacy,
    Added(u64),
    Failed(String),
}

pub async fn run(
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
    regions: Vec<Region>,
    options: Options,
) -> anyhow::Result<Summary> {
    let segments = options.segments.max(1);
    let checkpoint = Checkpoint::load_or_new(
        options.checkpoint.as_deref(),
        "backfill",
        &options.scope,
        segments,
    )?;
    let checkpoint = Arc::new(Mutex::new(checkpoint));
    let summary = Arc::new(Mutex::new(Summary {
        dry_run: options.dry_run,
        resumable: options.checkpoint.is_some() && !options.dry_run,
        ..Summary::default()
    }));
    let budget = KmsBudget::per_second(options.max_rps);
    let taken = Arc::new(AtomicU64::new(0));
    let bar = progress("backfill");
    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..segments {
        let (kms, store, regions) = (Arc::clone(&kms), Arc::clone(&store), regions.clone());
        let (checkpoint, summary) = (Arc::clone(&checkpoint), Arc::clone(&summary));
        let (budget, taken, bar, options) = (
            budget.clone(),
            Arc::clone(&taken),
            bar.clone(),
            options.clone(),
        );
        tasks.spawn(async move {
            let mut walk = Walk::resume(&checkpoint, segment, segments);
            loop {
                // With --max-records, a page is no larger than what is left
                // of it, so the run stops at a page's end, where its place
                // is saved (stopping inside a page saved nothing, and each
                // run began again at the same records).
                let want = match options.max_records {
                    None => PAGE,
                    Some(max) => match reserve(&taken, max, PAGE) {
                        0 => {
                            if !walk.done() {
                                summary.lock().unwrap_or_else(|p| p.into_inner()).partial = true;
                            }
                            return anyhow::Ok(());
                        }
                        n => n,
                    },
                };
                let Some(page) = walk.next_up_to(&store, want).await? else {
                    return anyhow::Ok(());
                };
                // A short page gives back what it did not use.
                taken.fetch_sub(
                    want.saturating_sub(page.records.len()) as u64,
                    Ordering::SeqCst,
                );
                for record in page.records {
                    bar.inc(1);
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(error = %chain(&e), "corrupt record skipped");
                            walk.unsettled();
                            let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                            let s = &mut *s;
                            s.scanned += 1;
                            note(&mut s.corrupt, &mut s.corrupt_ids, &failed_id(&e));
                            continue;
                        }
                    };
                    let outcome =
                        fill(&kms, &store, &regions, &budget, &record, options.dry_run).await;
                    let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                    let s = &mut *s;
                    s.scanned += 1;
                    match outcome {
                        Outcome::Complete => s.complete += 1,
                        Outcome::Legacy => s.legacy_skipped += 1,
                        Outcome::Added(n) => {
                            s.repaired += 1;
                            s.regions_added += n;
                        }
                        Outcome::Failed(why) => {
                            tracing::error!(key_id = %record.id, reason = %why, "backfill failed for a record");
                            walk.unsettled();
                            note(&mut s.failed, &mut s.failed_ids, record.id.as_str());
                        }
                    }
                }
                let save = options.checkpoint.as_deref().filter(|_| !options.dry_run);
                walk.page_done(page.next, &checkpoint, save)?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    bar.finish_and_clear();
    let summary = summary.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(summary)
}

/// Take up to `page` of the `max` records a run may scan, shared by the
/// segments; 0 once they are all taken.
fn reserve(taken: &AtomicU64, max: u64, page: usize) -> usize {
    let mut got = 0;
    let _ = taken.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
        got = max.saturating_sub(t).min(page as u64);
        Some(t + got)
    });
    got as usize
}

async fn fill(
    kms: &Arc<dyn Kms>,
    store: &Arc<dyn Store>,
    regions: &[Region],
    budget: &KmsBudget,
    record: &KeyRecord,
    dry_run: bool,
) -> Outcome {
    let missing: Vec<&Region> = regions
        .iter()
        .filter(|r| !record.keys.contains_key(*r))
        .collect();
    if missing.is_empty() {
        return Outcome::Complete;
    }
    if !record.bound_to_id() {
        return Outcome::Legacy;
    }
    if dry_run {
        return Outcome::Added(missing.len() as u64);
    }
    let context = Context::Bound(&record.id);
    let mut key = None;
    let mut last_error = String::from("no configured region holds a ciphertext");
    for region in regions.iter().filter(|r| record.keys.contains_key(*r)) {
        budget.take().await;
        match kms.decrypt(region, &record.keys[region], context).await {
            Ok(k) => {
                key = Some(k);
                break;
            }
            Err(e) => last_error = chain(&e),
        }
    }
    let Some(key) = key else {
        return Outcome::Failed(format!("cannot decrypt in any region: {last_error}"));
    };
    let mut keys = BTreeMap::new();
    let mut key_ids = BTreeMap::new();
    let mut failures = Vec::new();
    for region in missing {
        budget.take().await;
        match kms.encrypt(region, &key, context).await {
            Ok(wrapped) => {
                keys.insert(region.clone(), wrapped.ciphertext);
                key_ids.insert(region.clone(), wrapped.key_arn);
            }
            Err(e) => failures.push(chain(&e)),
        }
    }
    // The update adds nothing to a record deleted, or written again with
    // another key, since it was scanned (the store checks in the same step).
    let added = if keys.is_empty() {
        0
    } else {
        match store.add_missing_regions(record, &keys, &key_ids).await {
            Ok(n) => n as u64,
            Err(e) => return Outcome::Failed(format!("store: {}", chain(&e))),
        }
    };
    // Fewer added than wrapped: another writer filled the rest, the record
    // changed, or the store could not update it. The stored record says
    // which.
    if (added as usize) < keys.len() {
        match store.get(&record.id).await {
            Ok(Some(stored)) if record.same_key_as(&stored) => {
                let not_taken: Vec<&str> = keys
                    .keys()
                    .filter(|r| !stored.keys.contains_key(*r))
                    .map(Region::as_str)
                    .collect();
                if !not_taken.is_empty() {
                    return Outcome::Failed(format!(
                        "the store did not add {} to the record, which cannot be updated in place (in DynamoDB: an item without key_ids, or with a ciphertext not in canonical base64, such as one with a trailing newline)",
                        not_taken.join(",")
                    ));
                }
            }
            Ok(_) => return Outcome::Failed(
                "the record was deleted or written again since it was scanned; run backfill again"
                    .into(),
            ),
            Err(e) => return Outcome::Failed(format!("store: {}", chain(&e))),
        }
    }
    match (failures.is_empty(), added) {
        (true, 0) => Outcome::Complete,
        (true, n) => Outcome::Added(n),
        (false, _) => Outcome::Failed(failures.join("; ")),
    }
}
