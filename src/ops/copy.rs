//! `rkms copy --from A --to B`: every record of one store into another
//! (SQLite to DynamoDB, an RKMS (Go) table into a new one), as stored:
//! nothing is decrypted, and an id already present in the target is left
//! untouched (reported when its record differs).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{failed_id, list_id, next_page, progress, Checkpoint};
use crate::report::chain;
use crate::store::{PutOutcome, Store};

#[derive(Debug, Clone)]
pub struct Options {
    pub segments: u32,
    pub dry_run: bool,
    pub checkpoint: Option<PathBuf>,
    /// The two stores, as the checkpoint records them.
    pub scope: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub scanned: u64,
    /// Written to the target (or would be, in a dry run).
    pub copied: u64,
    /// Already in the target with the same record.
    pub identical: u64,
    /// Already in the target with a different record: left untouched.
    pub different_ids: Vec<String>,
    pub failed_ids: Vec<String>,
    pub corrupt_ids: Vec<String>,
    pub dry_run: bool,
}

impl Summary {
    /// No failure, and no id whose record differs between the stores:
    /// the target then holds two keyrings' or two histories' records.
    pub fn ok(&self) -> bool {
        self.failed_ids.is_empty() && self.corrupt_ids.is_empty() && self.different_ids.is_empty()
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "copy{}: {} records scanned: {} {}, {} already present and identical, {} present with a different record (untouched), {} failed, {} corrupt\n",
            if self.dry_run { " (dry run)" } else { "" },
            self.scanned,
            self.copied,
            if self.dry_run { "would be copied" } else { "copied" },
            self.identical,
            self.different_ids.len(),
            self.failed_ids.len(),
            self.corrupt_ids.len(),
        );
        for (what, ids) in [
            ("different", &self.different_ids),
            ("failed", &self.failed_ids),
            ("corrupt", &self.corrupt_ids),
        ] {
            for id in ids {
                out.push_str(&format!("{what}: {id:?}\n"));
            }
        }
        out
    }
}

pub async fn run(
    from: Arc<dyn Store>,
    to: Arc<dyn Store>,
    options: Options,
) -> anyhow::Result<Summary> {
    let segments = options.segments.max(1);
    let checkpoint = Checkpoint::load_or_new(
        options.checkpoint.as_deref(),
        "copy",
        &options.scope,
        segments,
    )?;
    let checkpoint = Arc::new(Mutex::new(checkpoint));
    let summary = Arc::new(Mutex::new(Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    }));
    let bar = progress("copy");
    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..segments {
        let (from, to) = (Arc::clone(&from), Arc::clone(&to));
        let (checkpoint, summary, bar, options) = (
            Arc::clone(&checkpoint),
            Arc::clone(&summary),
            bar.clone(),
            options.clone(),
        );
        tasks.spawn(async move {
            loop {
                let state = checkpoint.lock().unwrap_or_else(|p| p.into_inner()).segments
                    [segment as usize]
                    .clone();
                let Some(page) = next_page(&from, segment, segments, &state).await? else {
                    return anyhow::Ok(());
                };
                for record in page.records {
                    bar.inc(1);
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            let id = failed_id(&e);
                            tracing::error!(error = %chain(&e), "corrupt record not copied");
                            let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                            s.scanned += 1;
                            list_id(&mut s.corrupt_ids, &id);
                            continue;
                        }
                    };
                    let outcome = if options.dry_run {
                        to.get(&record.id).await.map(|found| match found {
                            Some(existing) => PutOutcome::Exists(existing),
                            None => PutOutcome::Created,
                        })
                    } else {
                        to.put_if_absent(&record).await
                    };
                    let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                    s.scanned += 1;
                    match outcome {
                        Ok(PutOutcome::Created) => s.copied += 1,
                        Ok(PutOutcome::Exists(existing)) if existing == record => {
                            s.identical += 1;
                        }
                        Ok(PutOutcome::Exists(_)) => {
                            tracing::warn!(key_id = %record.id, "the target holds a different record for this id; left untouched");
                            list_id(&mut s.different_ids, record.id.as_str());
                        }
                        Err(e) => {
                            tracing::error!(key_id = %record.id, error = %chain(&e), "copy failed for a record");
                            list_id(&mut s.failed_ids, record.id.as_str());
                        }
                    }
                }
                let save = options.checkpoint.as_deref().filter(|_| !options.dry_run);
                checkpoint
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .advance(segment, page.next, save)?;
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
