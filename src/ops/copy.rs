//! `rkms copy --from A --to B`: every record of one store into another
//! (SQLite to DynamoDB, an RKMS (Go) table into a new one), as stored:
//! nothing is decrypted, and an id already present in the target is left
//! untouched (reported when its record differs).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    join_segments, list_lines, note, progress, read_again, retried, Checkpoint, Walk, PAGE,
};
use crate::domain::KeyRecord;
use crate::report::chain;
use crate::store::{PutOutcome, Store, StoreError};

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
    /// Records the checkpoint carried as unsettled, read again by id
    /// (counted in `scanned` unless deleted since).
    pub retried: u64,
    /// Written to the target (or would be, in a dry run).
    pub copied: u64,
    /// Already in the target with the same record.
    pub identical: u64,
    /// Already in the target with a different record: left untouched.
    pub different: u64,
    pub failed: u64,
    /// Records the source cannot decode: not copied.
    pub corrupt: u64,
    /// The first [`super::MAX_LISTED`] ids of each.
    pub different_ids: Vec<String>,
    pub failed_ids: Vec<String>,
    pub corrupt_ids: Vec<String>,
    pub dry_run: bool,
}

impl Summary {
    /// No failure, and no id whose record differs between the stores:
    /// the target then holds two keyrings' or two histories' records.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.corrupt == 0 && self.different == 0
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "copy{}: {} records scanned{}: {} {}, {} already present and identical, {} present with a different record (untouched), {} failed, {} corrupt\n",
            if self.dry_run { " (dry run)" } else { "" },
            self.scanned,
            retried(self.retried),
            self.copied,
            if self.dry_run { "would be copied" } else { "copied" },
            self.identical,
            self.different,
            self.failed,
            self.corrupt,
        );
        list_lines(&mut out, "different: ", &self.different_ids, self.different);
        list_lines(&mut out, "failed: ", &self.failed_ids, self.failed);
        list_lines(&mut out, "corrupt: ", &self.corrupt_ids, self.corrupt);
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
    // A checkpoint past some records, resumed onto a target that holds
    // none (its file removed and made again, its table re-created): the
    // records before the checkpoint would never be copied, and the run
    // would end with no error.
    let empty = |store: &Arc<dyn Store>| {
        let store = Arc::clone(store);
        async move {
            store
                .scan(0, 1, None, 1)
                .await
                .map(|page| page.records.is_empty())
        }
    };
    if checkpoint
        .segments
        .iter()
        .any(|s| s.cursor.is_some() || s.done)
        && empty(&to).await?
        && !empty(&from).await?
    {
        anyhow::bail!(
            "checkpoint {} records a copy that got past some records, but the target store (--to) holds none: \
             it was emptied or made again since, and resuming would leave out every record before the checkpoint; \
             remove the checkpoint to copy from the start",
            options
                .checkpoint
                .as_deref()
                .map_or_else(String::new, |p| p.display().to_string())
        );
    }
    checkpoint.warn_if_finished(options.checkpoint.as_deref());
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
            let mut walk = Walk::resume(&checkpoint, segment, segments);
            let save = options.checkpoint.as_deref().filter(|_| !options.dry_run);
            let each = Each {
                to,
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
            // read again by its id (one deleted from the source since needs
            // nothing).
            while walk.retrying() {
                for id in walk.next_retries(PAGE) {
                    bar.inc(1);
                    let read = read_again(&from, &id).await.map_err(|e| {
                        anyhow::Error::new(e).context(format!(
                            "reading {id} again from the source store (--from), as the checkpoint asks"
                        ))
                    })?;
                    lock(&summary).retried += 1;
                    if let Some(read) = read {
                        each.settle(read, &mut walk).await;
                    }
                }
                walk.keep(&checkpoint, save)?;
            }
            loop {
                // A copy has two stores: say which one failed.
                let page = walk.next(&from).await;
                let Some(page) = page.context("reading the source store (--from)")? else {
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

/// What a segment needs to settle a record.
struct Each {
    to: Arc<dyn Store>,
    summary: Arc<Mutex<Summary>>,
    dry_run: bool,
}

impl Each {
    /// Copy `read` unless the target has its id, and count it; one not
    /// settled is carried by `walk`.
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
        let outcome = if self.dry_run {
            self.to.get(&record.id).await.map(|found| match found {
                Some(existing) => PutOutcome::Exists(existing),
                None => PutOutcome::Created,
            })
        } else {
            self.to.put_if_absent(&record).await
        };
        let mut s = lock(&self.summary);
        let s = &mut *s;
        s.scanned += 1;
        match outcome {
            Ok(PutOutcome::Created) => s.copied += 1,
            Ok(PutOutcome::Exists(existing)) if existing == record => {
                s.identical += 1;
            }
            Ok(PutOutcome::Exists(_)) => {
                tracing::warn!(key_id = %record.id, "the target holds a different record for this id; left untouched");
                walk.unsettled(Some(record.id.as_str()));
                note(&mut s.different, &mut s.different_ids, record.id.as_str());
            }
            Err(e) => {
                tracing::error!(key_id = %record.id, error = %chain(&e), "copy failed for a record");
                walk.unsettled(Some(record.id.as_str()));
                note(&mut s.failed, &mut s.failed_ids, record.id.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{KeyId, Region};
    use crate::store::memory::MemoryStore;

    fn record(id: &str, ciphertext: u8) -> KeyRecord {
        let region = Region::new("local-1");
        KeyRecord {
            id: KeyId::parse(id).unwrap(),
            keys: [(region.clone(), vec![ciphertext; 8])].into(),
            version: Some(2),
            key_ids: [(region, "arn:local-1".to_string())].into(),
            created_at: None,
        }
    }

    async fn store_of(records: impl IntoIterator<Item = KeyRecord>) -> Arc<dyn Store> {
        let store = MemoryStore::new();
        for r in records {
            store.put_if_absent(&r).await.unwrap();
        }
        Arc::new(store)
    }

    fn options(checkpoint: Option<PathBuf>) -> Options {
        Options {
            segments: 1,
            dry_run: false,
            checkpoint,
            scope: "copy from A to B".into(),
        }
    }

    /// A checkpoint never passes a record the copy could not settle by:
    /// it carries it, and a resumed run reads it again and fails again,
    /// where it used to resume after it, scan nothing and exit 0.
    #[tokio::test]
    async fn a_resumed_copy_meets_again_what_it_could_not_settle() {
        let ids: Vec<String> = (0..250).map(|i| format!("c/{i:03}")).collect();
        let from = store_of(ids.iter().map(|id| record(id, 1))).await;
        // The target holds another history for one id of the first page.
        let to = store_of([record("c/042", 2)]).await;
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("cp.json");

        let first = run(
            Arc::clone(&from),
            Arc::clone(&to),
            options(Some(cp.clone())),
        )
        .await
        .unwrap();
        assert_eq!(
            (first.scanned, first.copied, first.different),
            (250, 249, 1)
        );
        assert!(!first.ok());
        let again = run(
            Arc::clone(&from),
            Arc::clone(&to),
            options(Some(cp.clone())),
        )
        .await
        .unwrap();
        assert_eq!(again.different_ids, vec!["c/042".to_string()]);
        assert!(!again.ok(), "{}", again.text());
        // Read again by its id; the pages after it are not read again.
        assert_eq!((again.scanned, again.retried), (1, 1), "{}", again.text());
        assert!(
            again
                .text()
                .contains("1 records scanned (1 read again by id"),
            "{}",
            again.text()
        );
        // Settled by hand: the next run passes it, and then the checkpoint
        // records a finished run.
        let to = store_of(ids.iter().map(|id| record(id, 1))).await;
        let settled = run(
            Arc::clone(&from),
            Arc::clone(&to),
            options(Some(cp.clone())),
        )
        .await
        .unwrap();
        assert!(settled.ok(), "{}", settled.text());
        let saved = Checkpoint::load_or_new(Some(&cp), "copy", "copy from A to B", 1).unwrap();
        assert!(saved.finished());
    }

    /// A copy that cannot read its source fails saying which store and
    /// how far it got, where it printed nothing of what it had done.
    #[tokio::test]
    async fn a_copy_that_fails_says_how_far_it_got() {
        let from = MemoryStore::new();
        from.put_if_absent(&record("e/1", 1)).await.unwrap();
        from.set_unavailable(true);
        let to = store_of([]).await;
        let err = run(Arc::new(from), to, options(None)).await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("stopped before the end, after copy: 0 records scanned"),
            "{text}"
        );
        assert!(text.contains("reading the source store (--from)"), "{text}");
    }

    /// Counts are of every record; only the list of ids is cut short.
    #[tokio::test]
    async fn counts_go_past_the_listed_ids() {
        let n = super::super::MAX_LISTED + 5;
        let ids: Vec<String> = (0..n).map(|i| format!("d/{i:05}")).collect();
        let from = store_of(ids.iter().map(|id| record(id, 1))).await;
        let to = store_of(ids.iter().map(|id| record(id, 2))).await;
        let summary = run(from, to, options(None)).await.unwrap();
        assert_eq!(summary.different, n as u64);
        assert_eq!(summary.different_ids.len(), super::super::MAX_LISTED);
        let text = summary.text();
        assert!(
            text.contains(&format!("{n} present with a different record")),
            "{text}"
        );
        assert!(text.contains("different: 5 more not listed"), "{text}");
    }

    /// A checkpoint resumed onto a target emptied since (its file removed
    /// and made again): refused, where it copied only the records after
    /// the checkpoint and exited 0 (found by a review: 2,051 of 3,054).
    #[tokio::test]
    async fn a_checkpoint_resumed_onto_an_emptied_target_is_refused() {
        let ids: Vec<String> = (0..250).map(|i| format!("e/{i:03}")).collect();
        let from = store_of(ids.iter().map(|id| record(id, 1))).await;
        let dir = tempfile::tempdir().unwrap();
        let cp = dir.path().join("cp.json");
        let mut partial = options(Some(cp.clone()));
        partial.dry_run = false;
        let first = run(Arc::clone(&from), store_of([]).await, partial)
            .await
            .unwrap();
        assert!(first.ok() && first.copied == 250, "{}", first.text());
        // The checkpoint records the run finished, past every record; a
        // target made again holds none of them.
        let emptied = store_of([]).await;
        let err = run(
            Arc::clone(&from),
            Arc::clone(&emptied),
            options(Some(cp.clone())),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("holds none"), "{err}");
        // Removing the checkpoint copies from the start.
        std::fs::remove_file(&cp).unwrap();
        let again = run(from, emptied, options(Some(cp))).await.unwrap();
        assert_eq!(again.copied, 250, "{}", again.text());
    }
}
