//! The embedded default store: one SQLite file in WAL mode. Calls run on the
//! blocking pool, never on the async runtime, and keep their tracing span.
//! Point reads queue for up to four tasks that keep reading while reads
//! arrive (see `reader`), so a stream of cache misses does not wake a
//! thread for each; WAL lets them read beside the writer. Checks and scans
//! take one of four pooled calls and wait for it without holding a thread.
//! Idle connections are shared between reads and these calls. Writes from
//! one process queue for one write connection and are committed in groups
//! (see `writer`): a burst of creates costs one WAL sync per group, not
//! one each. Statements are prepared once per connection, and rows are
//! decoded from SQLite's buffers (see `rows`).
//! Several rkms processes may share the file: creates and repairs run in
//! `BEGIN IMMEDIATE` transactions, and `busy_timeout` waits out the others,
//! for less than the store call timeout, so a busy database answers
//! `Unavailable` rather than leaving a thread behind a timed-out call.
//! A full disk is `Unavailable` too, and so are writes once the path no
//! longer names the file that was opened (see `file`, which also opens
//! the connections).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::Duration;
use tokio::sync::Semaphore;

use async_trait::async_trait;
use rusqlite::Connection;

use super::{PutOutcome, ScanPage, Store, StoreError};
use crate::domain::{KeyId, KeyRecord, Region};
use errors::other;
pub(crate) use errors::{IoFailed, NotWritable, SaidDamaged, TableChanged};
use file::{
    an_existing_store, connect, low_space_hint, refuse_foreign, until_not_busy, CreateDir, FileId,
    Mode, OPEN_PATIENCE,
};
use reader::Reader;
#[cfg(test)]
use reopen::WATCH_EVERY;
use reopen::{log_path, watch_log, Reopen};
use rows::{read, refuse_blob_id, scan_rows, to_json};
use writer::{Done, Write, Writer};

mod check;
mod errors;
mod file;
pub(crate) use check::{Damaged, Reshaped};
pub use file::holds_a_store;
pub(crate) use file::FileChanged;
pub(crate) use reopen::LogChanged;
mod reader;
mod reopen;
mod rows;
mod writer;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rkms_keys (
    id         TEXT PRIMARY KEY NOT NULL,
    keys       TEXT NOT NULL,   -- JSON: region -> base64 ciphertext
    v          INTEGER,         -- record format; NULL = RKMS (Go) record
    key_ids    TEXT NOT NULL,   -- JSON: region -> KMS key ARN
    created_at TEXT
);";

/// Connections in the read pool (writes have one of their own).
const POOL_SIZE: usize = 4;

pub struct SqliteStore {
    idle: Arc<Mutex<Vec<Connection>>>,
    /// All writes of this process, committed in groups by one task at a
    /// time. Were each write its own writer, SQLite would let one in and
    /// the others poll with growing sleeps, so under a burst of creates a
    /// writer could sleep past `busy_timeout` and fail with "database is
    /// locked" while the lock was free most of the time. `busy_timeout`
    /// still waits out other processes.
    writer: Writer,
    /// Point reads, answered by a few tasks that keep reading while reads
    /// queue (see `reader`), on connections from `idle`.
    reader: Reader,
    slots: Semaphore,
    /// The file, as opened, and how to open another connection to it.
    reopen: Arc<Reopen>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.reopen.path)
            .finish()
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and its directory.
    /// `call_timeout` is the store call timeout the broker applies; the
    /// busy timeout is kept below it.
    /// A file that holds another application's tables (and not rkms's)
    /// is refused: rkms would add its table there and give every id a new
    /// key.
    pub fn open(path: &Path, call_timeout: Duration) -> Result<Self, StoreError> {
        refuse_foreign(path)
            .and_then(|()| Self::open_file(path, call_timeout, Mode::ReadWrite))
            .map_err(|e| low_space_hint(e, path))
    }

    /// Open the database at `path`, which must exist: for commands that
    /// read or check a store, where a missing file is a mistyped path or
    /// a lost file, never an empty store to start.
    /// It must already be an rkms store: an empty file, or a database
    /// without the `rkms_keys` table, is refused before anything writes to
    /// it (opening would make the table, and the file would then pass for
    /// a store beside a keyring whose keys are elsewhere).
    pub fn open_existing(path: &Path, call_timeout: Duration) -> Result<Self, StoreError> {
        an_existing_store(path)?;
        Self::open(path, call_timeout)
    }

    /// Open the rkms store at `path`, which must exist, for reading only:
    /// for commands that check and change nothing. The file is left as it
    /// is (its journal mode included), so a copy on a read-only mount can
    /// be checked; a write through this store fails.
    pub fn open_read_only(path: &Path, call_timeout: Duration) -> Result<Self, StoreError> {
        an_existing_store(path)?;
        Self::open_file(path, call_timeout, Mode::ReadOnly)
    }

    fn open_file(path: &Path, call_timeout: Duration, mode: Mode) -> Result<Self, StoreError> {
        const OP: &str = "open";
        let made_here = |d: &&Path| mode == Mode::ReadWrite && !d.as_os_str().is_empty();
        if let Some(dir) = path.parent().filter(made_here) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StoreError::Other {
                    op: OP,
                    source: Box::new(CreateDir {
                        dir: dir.to_path_buf(),
                        source,
                    }),
                })?;
        }
        // Wrapped keys are not secrets on their own, but nobody else needs
        // them: create the file owner-only (SQLite gives its -wal and -shm
        // files the same mode). Another process starting on the same
        // directory may create it first.
        if mode == Mode::ReadWrite && !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => tracing::warn!(
                    path = %path.display(),
                    "made a new, empty SQLite store: expected at a first start; otherwise check store.sqlite.path, as every id asked for gets a new key"
                ),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::Other {
                        op: OP,
                        source: Box::new(e),
                    })
                }
            }
        }
        let opened = FileId::of(path).map_err(|e| StoreError::Other {
            op: OP,
            source: Box::new(e),
        })?;
        let busy_timeout = (call_timeout * 3 / 4).max(Duration::from_millis(1));
        let mut idle = Vec::with_capacity(POOL_SIZE);
        for _ in 0..POOL_SIZE {
            idle.push(connect(path, busy_timeout, mode)?);
        }
        opened.still_at(path, OP)?;
        if let Some(first) = idle.first().filter(|_| mode == Mode::ReadWrite) {
            until_not_busy(busy_timeout.max(OPEN_PATIENCE), || {
                first.execute_batch(SCHEMA)
            })?;
        }
        if let Some(Err(e)) = idle.first().map(|first| check::trustworthy(first, path)) {
            // Leave the file as it was found: the last connection to close
            // would copy its -wal into it (a foreign one, beside a backup
            // restored), before anyone could keep a copy of the two.
            for conn in &idle {
                let _ = conn.set_db_config(
                    rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                    true,
                );
            }
            return Err(e);
        }
        // The log exists once a connection has written (the schema): one
        // that cannot be found is not checked.
        let log = match mode {
            Mode::ReadWrite => FileId::of(&log_path(path)).ok(),
            Mode::ReadOnly => None,
        };
        let reopen = Arc::new(Reopen {
            path: path.to_path_buf(),
            opened,
            log,
            busy_timeout,
            mode,
            damaged: std::sync::OnceLock::new(),
            high_water: std::sync::atomic::AtomicI64::new(0),
        });
        if let Some(first) = idle.first() {
            reopen.not_gone_back(first, OP)?;
        }
        let idle = Arc::new(Mutex::new(idle));
        if mode == Mode::ReadWrite {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(watch_log(Arc::downgrade(&reopen), Arc::downgrade(&idle)));
            }
        }
        Ok(Self {
            reader: Reader::new(Arc::clone(&idle), Arc::clone(&reopen)),
            idle,
            writer: Writer::new(Arc::clone(&reopen)),
            slots: Semaphore::new(POOL_SIZE),
            reopen,
        })
    }

    /// How long a call waits for another writer's lock.
    pub fn busy_timeout(&self) -> Duration {
        self.reopen.busy_timeout
    }

    /// Run `f` with a pooled connection on the blocking pool, inside the
    /// caller's span. Waiting for a connection is async: no thread waits.
    async fn with_conn<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _slot = self.slots.acquire().await.map_err(|e| StoreError::Other {
            op,
            source: Box::new(e),
        })?;
        let idle = Arc::clone(&self.idle);
        let reopen = Arc::clone(&self.reopen);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let pooled = lock(&idle).pop();
            // A connection lost to a panic is replaced here.
            let mut conn = match pooled {
                Some(c) => c,
                None => reopen.connect()?,
            };
            let result = f(&mut conn);
            lock(&idle).push(conn);
            reopen.note(&result);
            result
        })
        .await
        .map_err(|e| StoreError::Other {
            op,
            source: Box::new(e),
        })?
    }
}

/// Lock a mutex even if a holder panicked: every section under these locks
/// is a push, a pop or a flag, so the data is whole either way.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run a queue's `task` on the blocking pool. If the task panics, or the
/// runtime drops it unrun while shutting down, `abandoned` runs instead of
/// leaving the queue marked as served, so its callers get an error at
/// once rather than waiting for their timeout.
fn spawn_queue_task(
    task: impl FnOnce() + Send + 'static,
    abandoned: impl FnOnce() + Send + 'static,
) {
    struct OnAbandon<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for OnAbandon<F> {
        fn drop(&mut self) {
            if let Some(abandoned) = self.0.take() {
                abandoned();
            }
        }
    }
    let guard = OnAbandon(Some(abandoned));
    tokio::task::spawn_blocking(move || {
        let mut guard = guard;
        task();
        guard.0 = None;
    });
}

/// A write answered with another kind of write's outcome; cannot happen,
/// and is an error rather than a panic.
fn mismatch(op: &'static str) -> StoreError {
    StoreError::Other {
        op,
        source: "the writer answered with another write's outcome".into(),
    }
}

#[async_trait]
impl Store for SqliteStore {
    #[tracing::instrument(level = "debug", skip(self), fields(id = %id))]
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.reader.get(id).await
    }

    #[tracing::instrument(level = "debug", skip(self, record), fields(id = %record.id))]
    async fn put_if_absent(&self, record: &KeyRecord) -> Result<PutOutcome, StoreError> {
        match self.writer.submit(Write::Put(record.clone())).await? {
            Done::Put(outcome) => Ok(outcome),
            Done::Added(_) => Err(mismatch("put_if_absent")),
        }
    }

    /// The insert and the check for an existing row are one `BEGIN
    /// IMMEDIATE` transaction, which holds the file's write lock against
    /// every other process too.
    fn put_is_atomic(&self) -> bool {
        true
    }

    /// The check and the update are one `BEGIN IMMEDIATE` transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %read.id))]
    async fn add_missing_regions(
        &self,
        read: &KeyRecord,
        keys: &BTreeMap<Region, Vec<u8>>,
        key_ids: &BTreeMap<Region, String>,
    ) -> Result<usize, StoreError> {
        let write = Write::AddMissing {
            read: read.clone(),
            keys: keys.clone(),
            key_ids: key_ids.clone(),
        };
        match self.writer.submit(write).await? {
            Done::Added(added) => Ok(added),
            Done::Put(_) => Err(mismatch("add_missing_regions")),
        }
    }

    fn refuses_writes(&self, op: &'static str) -> Result<(), StoreError> {
        self.reopen.intact(op)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let reopen = Arc::clone(&self.reopen);
        self.with_conn("ping", move |conn| {
            reopen.still_there("ping", Some(conn))?;
            reopen.writable("ping")?;
            reopen.intact("ping")?;
            // The query first: it brings the connection's view of the
            // table up to date, which the statements are then held to.
            conn.query_row(
                "SELECT count(*) FROM (SELECT 1 FROM rkms_keys LIMIT 1)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(other("ping"))?;
            rows::fit(conn).map_err(other("ping"))?;
            reopen.not_gone_back(conn, "ping")
        })
        .await
    }

    async fn scan(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        let after = match cursor {
            None => 0,
            Some(c) => c.parse::<i64>().map_err(|_| StoreError::Other {
                op: "scan",
                source: format!("{c:?} is not an SQLite scan cursor").into(),
            })?,
        };
        self.with_conn("scan", move |conn| {
            scan_rows(conn, segment, segments, after, limit)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
