//! The open store's hold on its files: which database and write-ahead log
//! it opened, checked before each group of writes and at readiness (writes
//! after either went away would be lost), whether it may still write them,
//! and opening another connection to the same file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::file::{connect, FileId, Mode};
use super::{lock, Damaged};
use crate::store::StoreError;

/// What an open store needs to open another connection (for one lost to a
/// panic, or a reading or writing task's own), to the file it opened and
/// no other.
#[derive(Debug)]
pub(super) struct Reopen {
    pub(super) path: PathBuf,
    /// The file opened at `path`; writes and pings check it is still there.
    pub(super) opened: FileId,
    /// Its write-ahead log (`-wal`) as opened, when the store writes: the
    /// latest writes are only there until SQLite copies them into the
    /// database. SQLite keeps writing to the log it opened when the file
    /// at its path is removed, and nothing reads that log after a crash.
    pub(super) log: Option<FileId>,
    pub(super) busy_timeout: Duration,
    pub(super) mode: Mode,
    /// What SQLite said when it first answered that the file is damaged.
    pub(super) damaged: std::sync::OnceLock<String>,
    /// The highest rowid of `rkms_keys` seen: rkms never deletes a row, so
    /// a lower one means the file's rows went back (an older copy written
    /// over it in place, rows deleted by hand), and the ids written since
    /// would be given second keys.
    pub(super) high_water: std::sync::atomic::AtomicI64,
}

impl Reopen {
    pub(super) fn connect(&self) -> Result<Connection, StoreError> {
        self.still_there("open", None)?;
        let conn = connect(&self.path, self.busy_timeout, self.mode)?;
        self.still_there("open", None)?;
        Ok(conn)
    }

    /// `Unavailable` unless the path still names the database opened and,
    /// for a store that writes, the log opened beside it. Keys written
    /// while either is away would be lost. When the log is gone, the
    /// writes it holds are first copied into the database through `conn`
    /// (a checkpoint), so a crash later loses none of them.
    pub(super) fn still_there(
        &self,
        op: &'static str,
        conn: Option<&Connection>,
    ) -> Result<(), StoreError> {
        self.opened.still_at(&self.path, op)?;
        let Some(log) = self.log else {
            return Ok(());
        };
        let path = log_path(&self.path);
        if FileId::of(&path).is_ok_and(|now| now == log) {
            return Ok(());
        }
        let copied = conn.map(|conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            })
        });
        let rescued = match copied {
            // Not blocked, and every page of the log is in the database.
            Some(Ok((0, pages, done))) if pages == done => true,
            Some(Ok(_)) | Some(Err(_)) | None => false,
        };
        Err(StoreError::Unavailable {
            op,
            source: Box::new(LogChanged { path, rescued }),
        })
    }
}

impl Reopen {
    /// Note an answer of SQLite's that the file is damaged: from then on,
    /// writes and pings are refused (see [`Damaged`]). Logged once.
    pub(super) fn note<T>(&self, answer: &Result<T, StoreError>) {
        if let Err(e) = answer {
            self.note_error(e);
        }
    }

    /// As [`Reopen::note`], for an error.
    pub(super) fn note_error(&self, e: &StoreError) {
        let StoreError::Unavailable { source, .. } = e else {
            return;
        };
        let Some(said) = source.downcast_ref::<super::SaidDamaged>() else {
            return;
        };
        self.mark_damaged(said.to_string());
    }

    /// From now on writes and pings are refused with `problem`; logged the
    /// first time only.
    fn mark_damaged(&self, problem: String) {
        if self.damaged.set(problem.clone()).is_ok() {
            tracing::error!(
                path = %self.path.display(),
                %problem,
                "the database file is damaged: creates and repairs are refused from now on; /readyz fails its store check"
            );
        }
    }

    /// Check, on `conn` (inside a write's transaction, or for a ping), that
    /// the table's rows have not gone back since last seen, and note how
    /// far they go. Rows gone back are damage: writes stop for good.
    pub(super) fn not_gone_back(
        &self,
        conn: &Connection,
        op: &'static str,
    ) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let now: i64 = conn
            .query_row("SELECT coalesce(max(rowid), 0) FROM rkms_keys", [], |r| {
                r.get(0)
            })
            .map_err(super::other(op))?;
        let seen = self.high_water.fetch_max(now, Ordering::AcqRel);
        if now >= seen {
            return Ok(());
        }
        let problem = format!(
            "its rows went back: the highest row is {now}, where rkms saw {seen} (an older copy written over the file in place, or rows deleted)"
        );
        self.mark_damaged(problem);
        self.intact(op)
    }

    /// A committed write's row: it counts as seen.
    pub(super) fn saw(&self, rowid: i64) {
        self.high_water
            .fetch_max(rowid, std::sync::atomic::Ordering::AcqRel);
    }

    /// `Unavailable` once the file was found damaged.
    pub(super) fn intact(&self, op: &'static str) -> Result<(), StoreError> {
        match self.damaged.get() {
            None => Ok(()),
            Some(said) => Err(StoreError::Unavailable {
                op,
                source: Box::new(Damaged {
                    path: self.path.clone(),
                    problem: said.clone(),
                }),
            }),
        }
    }

    /// For a store that writes: `Unavailable` when the database or its log
    /// can no longer be written by this process (its owner or mode
    /// changed), which readiness then reports before a create fails.
    pub(super) fn writable(&self, op: &'static str) -> Result<(), StoreError> {
        if self.mode == Mode::ReadOnly {
            return Ok(());
        }
        for path in [self.path.clone(), log_path(&self.path)] {
            // As the process's effective user, which is who writes.
            match rustix::fs::accessat(
                rustix::fs::CWD,
                &path,
                rustix::fs::Access::WRITE_OK,
                rustix::fs::AtFlags::EACCESS,
            ) {
                Ok(()) => {}
                // No log yet (nothing written): nothing to check.
                Err(rustix::io::Errno::NOENT) if path != self.path => {}
                Err(e) => {
                    return Err(StoreError::Unavailable {
                        op,
                        source: Box::new(super::NotWritable(
                            format!("{}: {e}", path.display()).into(),
                        )),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The write-ahead log beside the database at `path`.
pub(super) fn log_path(path: &Path) -> PathBuf {
    let mut log = path.as_os_str().to_owned();
    log.push("-wal");
    PathBuf::from(log)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{path}, the store's write-ahead log, was removed or replaced while rkms ran; keys are not created or repaired until rkms restarts, because they would be written where no later start reads them. {}",
    if *rescued {
        "The writes it held are copied into the database"
    } else {
        "The writes it held are not yet copied into the database: stop rkms with SIGTERM (a clean stop copies them), never with kill -9"
    }
)]
pub(crate) struct LogChanged {
    path: PathBuf,
    rescued: bool,
}

/// How often a store that writes checks, by itself, that its file and
/// -wal are still the ones it opened.
pub(super) const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Check every [`WATCH_EVERY`] that the database and its -wal are the files
/// opened, so that a -wal removed while rkms runs has its writes copied
/// into the database within that time, not at the next write or probe: a
/// crash in between lost every key it held (found by a runbook
/// walkthrough). Ends with the store.
pub(super) async fn watch_log(
    reopen: std::sync::Weak<Reopen>,
    idle: std::sync::Weak<std::sync::Mutex<Vec<Connection>>>,
) {
    let mut said = false;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let (Some(reopen), Some(idle)) = (reopen.upgrade(), idle.upgrade()) else {
            return;
        };
        let checked = tokio::task::spawn_blocking(move || {
            let conn = lock(&idle).pop();
            let result = reopen.still_there("watch", conn.as_ref());
            if let Some(conn) = conn {
                lock(&idle).push(conn);
            }
            result
        })
        .await;
        match checked {
            Ok(Ok(())) => said = false,
            Ok(Err(e)) if !said => {
                said = true;
                tracing::error!(error = %crate::report::chain(&e), "the store's files changed while rkms ran; creates and repairs are refused");
            }
            _ => {}
        }
    }
}
