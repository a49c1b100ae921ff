//! Where a maintenance scan has got to: the checkpoint file (each
//! segment's cursor and the records it carries as unsettled) and the walk
//! of one segment that keeps it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{corrupt_id, failed_id, PAGE};
use crate::domain::{KeyId, KeyRecord};
use crate::store::{ScanPage, Store, StoreError};

/// Where each segment of a scan has got to, saved after every page so an
/// interrupted run resumes where it stopped. Pages are processed before
/// their cursor is saved, so a resumed run may see the last page again;
/// every command is idempotent, so that costs a read, never a second write.
/// The records a segment passed without settling them are carried with
/// its cursor, and read again first (see [`Walk`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// What the checkpoint is for ("backfill", "copy"), so one command's
    /// file is not taken for another's.
    pub command: String,
    /// What the run is over (the stores, and for backfill the regions), so
    /// a checkpoint is never resumed against other stores: its cursors
    /// would skip records there. Empty in files from before it was kept.
    #[serde(default)]
    pub scope: String,
    /// Per segment: the cursor to continue after, and whether it is done.
    pub segments: Vec<SegmentState>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentState {
    pub cursor: Option<String>,
    pub done: bool,
    /// Ids before `cursor` whose records were not settled (they failed,
    /// were corrupt, or for `copy` differed): a resumed run reads each
    /// again, by its id, before it reads on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<String>,
    /// Corrupt records before `cursor` whose stored ids rkms cannot read
    /// a record by (not UTF-8, a control character, too long), as the
    /// store names them: every resumed run reports them again, unread,
    /// until the checkpoint is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl Checkpoint {
    /// Load `path` if it exists (it must be for `command` over `scope`
    /// with `segments`), else start fresh.
    pub fn load_or_new(
        path: Option<&Path>,
        command: &str,
        scope: &str,
        segments: u32,
    ) -> anyhow::Result<Self> {
        // Files are written under `backfill+retry+unreadable` (`copy+…`):
        // an rkms from before segments carried their records (by id, or
        // also by name) would drop them; it refuses another command's file.
        let written_as = format!("{command}{CARRIES}");
        let fresh = Self {
            command: written_as.clone(),
            scope: scope.into(),
            segments: vec![SegmentState::default(); segments as usize],
        };
        let Some(path) = path else {
            return Ok(fresh);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut loaded: Self = serde_json::from_str(&text).map_err(|e| {
                    anyhow::anyhow!("checkpoint {} is not readable: {e}", path.display())
                })?;
                // One written before segments carried records is resumed,
                // and written in the new form.
                let of = loaded
                    .command
                    .strip_suffix(CARRIES)
                    .or_else(|| loaded.command.strip_suffix(CARRIED_BY_ID))
                    .unwrap_or(&loaded.command);
                if of != command || loaded.segments.len() != segments as usize {
                    anyhow::bail!(
                        "checkpoint {} is for `{of}` with {} segments, not `{command}` with {segments}; remove it to start over",
                        path.display(),
                        loaded.segments.len()
                    );
                }
                loaded.command = written_as;
                if let Some(bad) = loaded
                    .segments
                    .iter()
                    .flat_map(|s| &s.retry)
                    .find(|id| KeyId::parse(id).is_err())
                {
                    anyhow::bail!(
                        "checkpoint {} is not readable: {bad:?} is not a key id; remove it to start over",
                        path.display()
                    );
                }
                if loaded.scope != scope {
                    anyhow::bail!(
                        "checkpoint {} is for {}, not {scope}: resuming it would skip records; remove it to start over",
                        path.display(),
                        if loaded.scope.is_empty() {
                            "a run that did not record its stores"
                        } else {
                            loaded.scope.as_str()
                        },
                    );
                }
                Ok(loaded)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(fresh),
            Err(e) => Err(anyhow::anyhow!(
                "cannot read checkpoint {}: {e}",
                path.display()
            )),
        }
    }

    /// Write atomically: a temporary file renamed over the old one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        // Beside it, by bytes: the path need not be UTF-8.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| anyhow::anyhow!("cannot write checkpoint {}: {e}", path.display()))
    }

    /// Every segment read to its end, with nothing left to read again.
    pub fn finished(&self) -> bool {
        self.segments.iter().all(|s| s.done && s.retry.is_empty())
    }

    /// Say that a resumed checkpoint records a finished run, once the run
    /// has checked that it may go on from it (a refusal says more).
    pub fn warn_if_finished(&self, path: Option<&Path>) {
        if let (true, Some(path)) = (self.finished(), path) {
            tracing::warn!(
                checkpoint = %path.display(),
                "the checkpoint records a finished run: nothing is scanned; remove it to run again"
            );
        }
    }

    /// Record where `segment` is, and save to `path` when given.
    pub fn set(
        &mut self,
        segment: u32,
        state: SegmentState,
        path: Option<&Path>,
    ) -> anyhow::Result<()> {
        if let Some(seg) = self.segments.get_mut(segment as usize) {
            *seg = state;
        }
        match path {
            Some(path) => self.save(path),
            None => Ok(()),
        }
    }
}

/// Appended to a checkpoint's `command` by an rkms whose segments carry
/// their unsettled records, by id (`retry`) and by name (`unreadable`).
/// An rkms that knows only `retry` refuses it, where it would drop the
/// `unreadable` list.
const CARRIES: &str = "+retry+unreadable";

/// What an rkms that carried records by id only appended: resumed.
const CARRIED_BY_ID: &str = "+retry";

/// Unsettled records a segment carries in its checkpoint, at most. Past
/// that (every record failing, as when a region's key is gone), the
/// checkpoint holds where it is.
pub const MAX_RETRY: usize = 1000;

/// One segment's walk through a store: first the records its checkpoint
/// carries as unsettled, each read again by its id, then page by page from
/// where the checkpoint left it. A record that failed, is corrupt or (for
/// `copy`) differs is carried in the checkpoint saved after its page, so a
/// resumed run reads it again and reports it (where it would pass it by
/// and exit 0), and a run limited to N records moves on past it. A corrupt
/// record whose id cannot be read by is carried by name and reported
/// again, unread. A record that cannot be carried (the store does not name
/// it, or the segment already carries [`MAX_RETRY`]) holds the checkpoint
/// where it is for the rest of the run, which still reads on and reports
/// every record; a resumed run then reads those pages again. Every command is idempotent, so records
/// read again cost reads, never a second write.
pub struct Walk {
    segment: u32,
    segments: u32,
    /// How far the pages have been read (`retry` unused).
    at: SegmentState,
    /// Carried from the checkpoint, not yet read again in this run.
    to_retry: std::collections::VecDeque<String>,
    /// Read in this run, again or in a page, and not settled.
    unsettled: Vec<String>,
    /// Corrupt records with ids no record can be read by: carried from
    /// the checkpoint, and passed in this run.
    unreadable: Vec<String>,
    /// An unsettled record could not be carried: save nothing more.
    held: bool,
}

impl Walk {
    /// Segment `segment` of `segments`, from where `checkpoint` left it.
    pub fn resume(checkpoint: &Mutex<Checkpoint>, segment: u32, segments: u32) -> Self {
        let mut at = checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .segments
            .get(segment as usize)
            .cloned()
            .unwrap_or_default();
        let to_retry = std::mem::take(&mut at.retry).into();
        let unreadable = std::mem::take(&mut at.unreadable);
        Self {
            segment,
            segments,
            at,
            to_retry,
            unsettled: Vec::new(),
            unreadable,
            held: false,
        }
    }

    /// Corrupt records the checkpoint carries that cannot be read again by
    /// their ids: the run reports them as it starts.
    pub fn carried_unreadable(&self) -> &[String] {
        &self.unreadable
    }

    fn carried(&self) -> usize {
        self.unsettled.len() + self.to_retry.len() + self.unreadable.len()
    }

    /// Whether records carried from the checkpoint are still to be read
    /// again.
    pub fn retrying(&self) -> bool {
        !self.to_retry.is_empty()
    }

    /// Up to `n` of the records carried from the checkpoint, to read again
    /// by id. Until [`Walk::keep`] saves, the checkpoint still carries them.
    pub fn next_retries(&mut self, n: usize) -> Vec<KeyId> {
        let n = n.min(self.to_retry.len());
        self.to_retry
            .drain(..n)
            // Checked when the checkpoint was loaded.
            .filter_map(|id| KeyId::parse(&id).ok())
            .collect()
    }

    /// The next page, or `None` when the segment is done.
    pub async fn next(&self, store: &Arc<dyn Store>) -> Result<Option<ScanPage>, StoreError> {
        self.next_up_to(store, PAGE).await
    }

    /// The next page of at most `limit` records, or `None` when the
    /// segment is done.
    pub async fn next_up_to(
        &self,
        store: &Arc<dyn Store>,
        limit: usize,
    ) -> Result<Option<ScanPage>, StoreError> {
        next_page(store, self.segment, self.segments, &self.at, limit).await
    }

    /// Whether the segment has been read to its end.
    pub fn done(&self) -> bool {
        self.at.done
    }

    /// A record read was not settled: carry it (`id`, when the store could
    /// name it) to the next run.
    pub fn unsettled(&mut self, id: Option<&str>) {
        let carried = self.carried();
        match id.filter(|id| KeyId::parse(id).is_ok()) {
            Some(id) if self.unsettled.iter().any(|u| u == id) => {}
            Some(id) if carried < MAX_RETRY => self.unsettled.push(id.to_string()),
            _ => self.held = true,
        }
    }

    /// A record the store cannot decode, left as it is: logged, and
    /// carried (to be read again when its id can be, else to be reported
    /// again). Its id for the summary.
    pub fn corrupt(&mut self, error: &StoreError) -> String {
        tracing::error!(error = %crate::report::chain(error), "corrupt record left as it is");
        match corrupt_id(error) {
            // An id that is not the stored one (not UTF-8 there, shown with
            // U+FFFD in its place) would not find the record again: read by
            // it, the record would seem deleted and leave the checkpoint.
            // Neither would one rkms cannot take as a key id (a control
            // character, too long), which no request can ask for.
            Some(id) if id.contains('\u{FFFD}') || KeyId::parse(id).is_err() => {
                if !self.unreadable.iter().any(|u| u == id) {
                    if self.carried() < MAX_RETRY {
                        self.unreadable.push(id.to_string());
                    } else {
                        self.held = true;
                    }
                }
            }
            id => self.unsettled(id),
        }
        failed_id(error)
    }

    /// The page ending at `next` is processed: move on, and [`Walk::keep`].
    pub fn page_done(
        &mut self,
        next: Option<String>,
        checkpoint: &Mutex<Checkpoint>,
        save: Option<&Path>,
    ) -> anyhow::Result<()> {
        self.at = SegmentState {
            done: next.is_none(),
            cursor: next,
            ..SegmentState::default()
        };
        self.keep(checkpoint, save)
    }

    /// Record where the segment is in `checkpoint` (saved to `save`, when
    /// given), with what it carries: unless it is held.
    pub fn keep(&self, checkpoint: &Mutex<Checkpoint>, save: Option<&Path>) -> anyhow::Result<()> {
        if self.held {
            return Ok(());
        }
        let state = SegmentState {
            retry: self
                .to_retry
                .iter()
                .chain(&self.unsettled)
                .cloned()
                .collect(),
            unreadable: self.unreadable.clone(),
            ..self.at.clone()
        };
        checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set(self.segment, state, save)
    }
}

/// A record the checkpoint carries, read again by its id: `None` when it
/// is gone (nothing left to settle), a corrupt one as the scan gives it.
pub async fn read_again(
    store: &Arc<dyn Store>,
    id: &KeyId,
) -> Result<Option<Result<KeyRecord, StoreError>>, StoreError> {
    match store.get(id).await {
        Ok(found) => Ok(found.map(Ok)),
        Err(e @ StoreError::Corrupt { .. }) => Ok(Some(Err(e))),
        Err(e) => Err(e),
    }
}

/// Read the next page (at most `limit` records) of `segment`, or `None`
/// when it is done.
pub async fn next_page(
    store: &Arc<dyn Store>,
    segment: u32,
    segments: u32,
    state: &SegmentState,
    limit: usize,
) -> Result<Option<ScanPage>, StoreError> {
    if state.done {
        return Ok(None);
    }
    store
        .scan(segment, segments, state.cursor.as_deref(), limit)
        .await
        .map(Some)
}

#[cfg(test)]
mod tests;
