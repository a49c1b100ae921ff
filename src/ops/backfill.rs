//! `rkms backfill`: give every record a ciphertext in every configured
//! region. For each record lacking regions, the data key is decrypted in a
//! region that has it and encrypted (bound to the id) in each missing
//! region; the store adds only regions the record still lacks, so runs are
//! idempotent and never replace a ciphertext. Records written by RKMS (Go)
//! are left as they are.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{
    join_segments, list_lines, note, progress, read_again, retried, Checkpoint, Down, KmsBudget,
    Walk, PAGE,
};
use crate::domain::{KeyRecord, Region};
use crate::kms::{Context, Kms};
use crate::report::chain;
use crate::store::{Store, StoreError};

mod limit;
use limit::Limit;

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
    /// Records the checkpoint carried as unsettled, read again by id
    /// (counted in `scanned` unless deleted since).
    pub retried: u64,
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
            "backfill{}: {} records scanned{}: {} complete, {} {verb} {} region ciphertexts, {} RKMS (Go) records left unchanged, {} failed, {} corrupt{}\n",
            if self.dry_run { " (dry run)" } else { "" },
            self.scanned,
            retried(self.retried),
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
        if self.dry_run && self.repaired > 0 {
            out.push_str("a dry run decrypts and writes nothing: a record counted as would gain can still fail in a real run (one no region decrypts, or the store cannot update)\n");
        }
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
    checkpoint.warn_if_finished(options.checkpoint.as_deref());
    let checkpoint = Arc::new(Mutex::new(checkpoint));
    let summary = Arc::new(Mutex::new(Summary {
        dry_run: options.dry_run,
        resumable: options.checkpoint.is_some() && !options.dry_run,
        ..Summary::default()
    }));
    let budget = KmsBudget::per_second(options.max_rps);
    let limit = options.max_records.map(|max| Arc::new(Limit::new(max)));
    let bar = progress("backfill");
    let down = Arc::new(Down::new(
        "backfill: KMS in this region cannot be asked; records that need it fail without a call (a resumed run retries them)",
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..segments {
        let (kms, store, regions) = (Arc::clone(&kms), Arc::clone(&store), regions.clone());
        let (checkpoint, summary) = (Arc::clone(&checkpoint), Arc::clone(&summary));
        let (budget, limit, bar, options) =
            (budget.clone(), limit.clone(), bar.clone(), options.clone());
        let down = Arc::clone(&down);
        tasks.spawn(async move {
            let mut walk = Walk::resume(&checkpoint, segment, segments);
            let save = options.checkpoint.as_deref().filter(|_| !options.dry_run);
            let each = Each {
                kms,
                store: Arc::clone(&store),
                regions,
                budget,
                down,
                summary: Arc::clone(&summary),
                dry_run: options.dry_run,
            };
            // Corrupt records that cannot be read by their ids are reported
            // again, unread, by every run that resumes past them.
            for id in walk.carried_unreadable() {
                let mut s = lock(&summary);
                let s = &mut *s;
                note(&mut s.corrupt, &mut s.corrupt_ids, id);
            }
            // First the records the checkpoint carries as unsettled, each
            // read again by its id (one deleted since needs nothing). A
            // limited run gives them half of what it takes (at least one),
            // once, and reads on with the rest: records that stay failed
            // would otherwise take every limited run whole.
            while walk.retrying() {
                let Some(want) = take(limit.as_deref(), &summary).await else {
                    return anyhow::Ok(());
                };
                let share = if limit.is_some() {
                    (want / 2).max(1)
                } else {
                    want
                };
                let ids = walk.next_retries(share);
                if let Some(limit) = &limit {
                    limit.settle(want, ids.len());
                }
                for id in ids {
                    bar.inc(1);
                    let read = read_again(&store, &id).await.map_err(|e| {
                        anyhow::Error::new(e)
                            .context(format!("reading {id} again, as the checkpoint asks"))
                    })?;
                    lock(&summary).retried += 1;
                    if let Some(read) = read {
                        each.settle(read, &mut walk).await;
                    }
                }
                walk.keep(&checkpoint, save)?;
                if limit.is_some() {
                    break;
                }
            }
            loop {
                // With --max-records, a page is no larger than what is left
                // of it, so the run stops at a page's end, where its place
                // is saved (stopping inside a page saved nothing, and each
                // run began again at the same records).
                // A segment read to its end takes nothing from the others.
                if walk.done() {
                    return anyhow::Ok(());
                }
                let Some(want) = take(limit.as_deref(), &summary).await else {
                    return anyhow::Ok(());
                };
                let page = walk.next_up_to(&store, want).await;
                // What the page did not use (all of it, when there was none)
                // goes back for the other segments.
                if let Some(limit) = &limit {
                    let used = match &page {
                        Ok(Some(p)) => p.records.len(),
                        _ => 0,
                    };
                    limit.settle(want, used);
                }
                let Some(page) = page? else {
                    return anyhow::Ok(());
                };
                for record in page.records {
                    bar.inc(1);
                    each.settle(record, &mut walk).await;
                }
                walk.page_done(page.next, &checkpoint, save)?;
            }
        });
    }
    let so_far = || lock(&summary).text();
    let joined = join_segments(&mut tasks, so_far).await;
    bar.finish_and_clear();
    joined?;
    let summary = lock(&summary).clone();
    Ok(summary)
}

fn lock(summary: &Mutex<Summary>) -> std::sync::MutexGuard<'_, Summary> {
    summary.lock().unwrap_or_else(|p| p.into_inner())
}

/// How many records the next read may take: a page, or no more than is
/// left of `--max-records`; `None` once that is used up (the run is then
/// partial).
async fn take(limit: Option<&Limit>, summary: &Mutex<Summary>) -> Option<usize> {
    let Some(limit) = limit else {
        return Some(PAGE);
    };
    match limit.reserve(PAGE).await {
        0 => {
            lock(summary).partial = true;
            None
        }
        n => Some(n),
    }
}

/// What a segment needs to settle a record.
struct Each {
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
    regions: Vec<Region>,
    budget: KmsBudget,
    /// Regions that did not answer, left alone for a while (shared by the
    /// segments).
    down: Arc<Down>,
    summary: Arc<Mutex<Summary>>,
    dry_run: bool,
}

impl Each {
    /// Fill the regions `read` lacks and count it; one not settled is
    /// carried by `walk`.
    async fn settle(&self, read: Result<KeyRecord, StoreError>, walk: &mut Walk) {
        let record = match read {
            Ok(r) => r,
            Err(e) => {
                let id = walk.corrupt(&e);
                let mut s = lock(&self.summary);
                let s = &mut *s;
                s.scanned += 1;
                note(&mut s.corrupt, &mut s.corrupt_ids, &id);
                return;
            }
        };
        let outcome = fill(self, &record).await;
        let mut s = lock(&self.summary);
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
                walk.unsettled(Some(record.id.as_str()));
                note(&mut s.failed, &mut s.failed_ids, record.id.as_str());
            }
        }
    }
}

async fn fill(each: &Each, record: &KeyRecord) -> Outcome {
    let (kms, store, regions, budget, down) = (
        &each.kms,
        &each.store,
        &each.regions,
        &each.budget,
        &each.down,
    );
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
    if each.dry_run {
        return Outcome::Added(missing.len() as u64);
    }
    let context = Context::Bound(&record.id);
    let mut key = None;
    let mut last_error = String::from("no configured region holds a ciphertext");
    for region in regions.iter().filter(|r| record.keys.contains_key(*r)) {
        if down.is_down(region) {
            last_error = format!("{region} did not answer a moment ago and is left alone for now");
            continue;
        }
        budget.take().await;
        match kms.decrypt(region, &record.keys[region], context).await {
            Ok(k) => {
                down.answered(region);
                key = Some(k);
                break;
            }
            Err(e) => {
                down.mark_if_unreachable(region, &e);
                last_error = chain(&e);
            }
        }
    }
    let Some(key) = key else {
        return Outcome::Failed(format!("cannot decrypt in any region: {last_error}"));
    };
    let mut keys = BTreeMap::new();
    let mut key_ids = BTreeMap::new();
    let mut failures = Vec::new();
    for region in missing {
        if down.is_down(region) {
            failures.push(format!(
                "{region} did not answer a moment ago and is left alone for now"
            ));
            continue;
        }
        budget.take().await;
        match kms.encrypt(region, &key, context).await {
            Ok(wrapped) => {
                down.answered(region);
                keys.insert(region.clone(), wrapped.ciphertext);
                key_ids.insert(region.clone(), wrapped.key_arn);
            }
            Err(e) => {
                down.mark_if_unreachable(region, &e);
                failures.push(chain(&e));
            }
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

#[cfg(test)]
mod tests;
