//! The database file and connections to it: whether a file is an rkms
//! store (never another application's database), opening a connection
//! (which never creates the file), waiting out other processes opening it, which
//! file the store opened (so that writes never follow it when it is moved,
//! replaced or deleted), and how much room its file system has left when
//! an open fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::other;
use crate::store::StoreError;

/// SQLite's page cache per connection (its default is 2 MiB).
const PAGE_CACHE_KIB: i64 = 256;

/// Which file a path named when the store opened it. SQLite keeps using
/// the file it opened when that file is moved, replaced or deleted, and in
/// WAL mode it notices none of these: a key created then would go into a
/// file nobody opens again (lost when rkms stops), or be split from the
/// keys in the file now at the path. So every write batch, and `/readyz`,
/// first checks that the path still names this file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(super) fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// `Unavailable` (503) unless `path` still names this file.
    pub(super) fn still_at(self, path: &Path, op: &'static str) -> Result<(), StoreError> {
        let now = match FileId::of(path) {
            Ok(id) if id == self => return Ok(()),
            Ok(_) => None,
            // The path cannot be looked at (a directory's mode or owner
            // changed): nothing says the file moved, and a restart would be
            // refused the same way, not start an empty store.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(StoreError::Unavailable {
                    op,
                    source: Box::new(super::NotWritable(Box::new(CannotLook {
                        path: path.to_path_buf(),
                        source: e,
                    }))),
                });
            }
            Err(e) => Some(e),
        };
        Err(StoreError::Unavailable {
            op,
            source: Box::new(FileChanged {
                path: path.to_path_buf(),
                now,
            }),
        })
    }
}

/// The database path could not be looked at (permission denied).
#[derive(Debug, thiserror::Error)]
#[error("{} cannot be looked at", path.display())]
struct CannotLook {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{path} is no longer the database file rkms opened (moved, replaced or deleted while rkms ran); \
     keys are not created or repaired until it is back, because they would be lost. Put the file back{}",
    if now.is_some() {
        " (restarting rkms now would start an EMPTY store, and make new keys for ids that have keys)"
    } else {
        ", or restart rkms to use the file now at that path"
    }
)]
pub(crate) struct FileChanged {
    path: PathBuf,
    /// Why the path names no file at all.
    #[source]
    now: Option<std::io::Error>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create the directory {dir}")]
pub(super) struct CreateDir {
    pub(super) dir: PathBuf,
    #[source]
    pub(super) source: std::io::Error,
}

/// Below this much free space, a failed open says how much is left.
const LOW_SPACE_BYTES: u64 = 1 << 20;

/// A failed open on a file system that is (nearly) full: SQLite needs room
/// for its `-wal` and `-shm` files before it can read anything, and says
/// only "disk I/O error" when it has none.
#[derive(Debug, thiserror::Error)]
#[error(
    "the file system holding {dir} is full or nearly ({bytes} bytes and {inodes} inodes free); \
     SQLite needs room for its -wal and -shm files"
)]
struct LowSpace {
    dir: PathBuf,
    bytes: u64,
    inodes: u64,
    #[source]
    source: crate::report::BoxError,
}

pub(super) fn low_space_hint(e: StoreError, path: &Path) -> StoreError {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match rustix::fs::statvfs(dir) {
        Ok(s) => with_free_space(e, dir, s.f_bavail.saturating_mul(s.f_frsize), s.f_favail),
        Err(_) => e,
    }
}

/// `e`, telling how much room is left when it is too little to open.
pub(super) fn with_free_space(e: StoreError, dir: &Path, bytes: u64, inodes: u64) -> StoreError {
    if bytes >= LOW_SPACE_BYTES && inodes > 0 {
        return e;
    }
    let wrap = |source| {
        Box::new(LowSpace {
            dir: dir.to_path_buf(),
            bytes,
            inodes,
            source,
        })
    };
    match e {
        StoreError::Unavailable { op, source } => StoreError::Unavailable {
            op,
            source: wrap(source),
        },
        StoreError::Other { op, source } => StoreError::Other {
            op,
            source: wrap(source),
        },
        corrupt @ StoreError::Corrupt { .. } => corrupt,
    }
}

/// How a store opens its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// The server and the tools that write: WAL mode, synchronous commits.
    ReadWrite,
    /// The tools that only check (`verify`, `check-config --connect`, dry
    /// runs): the file is opened read-only and left as it is, journal mode
    /// included, so a copy on a read-only mount can be checked.
    ReadOnly,
}

/// A connection to the file `open_file` made: never creates one, so a
/// connection opened while the file is away fails instead of starting an
/// empty database at the path.
pub(super) fn connect(
    path: &Path,
    busy_timeout: Duration,
    mode: Mode,
) -> Result<Connection, StoreError> {
    const OP: &str = "open";
    let access = match mode {
        Mode::ReadWrite => rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        Mode::ReadOnly => rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    };
    let flags =
        access | rusqlite::OpenFlags::SQLITE_OPEN_URI | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match mode {
        Mode::ReadWrite => Connection::open_with_flags(path, flags),
        Mode::ReadOnly => open_to_read(path, flags, busy_timeout),
    }
    .map_err(other(OP))?;
    conn.busy_timeout(busy_timeout).map_err(other(OP))?;
    if mode == Mode::ReadOnly {
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(other(OP))?;
        return Ok(conn);
    }
    // Switching to WAL needs a moment alone with the file and SQLite does
    // not always wait for it: another process opening the file at the same
    // instant answers "database is locked" at once. Wait it out.
    until_not_busy(busy_timeout.max(OPEN_PATIENCE), || {
        conn.pragma_update(None, "journal_mode", "WAL")
    })?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(other(OP))?;
    // Negative: KiB. Records are read once per cache miss, so a page cache
    // per connection buys little over the operating system's own.
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
        .map_err(other(OP))?;
    Ok(conn)
}

/// Whether the database at `path` holds rkms's table (read without
/// writing to it, its log included). A file of one page and no tables is
/// what a store whose log was lost leaves: it holds no store.
pub fn holds_a_store(path: &Path) -> Result<bool, StoreError> {
    Ok(tables(path)?.rkms_keys > 0)
}
/// How long opening waits for other processes opening the same file.
pub(super) const OPEN_PATIENCE: Duration = Duration::from_secs(5);

/// Retry `step` while the database is busy or locked, up to `patience`.
/// Used only while opening, on a blocking thread.
pub(super) fn until_not_busy(
    patience: Duration,
    mut step: impl FnMut() -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other_result => return other_result.map_err(other("open")),
        }
    }
}

/// `path` is an rkms store already: a regular file, not empty, with the
/// `rkms_keys` table; checked without writing to it.
pub(super) fn an_existing_store(path: &Path) -> Result<(), StoreError> {
    let refuse = |why: String| StoreError::Other {
        op: "open",
        source: why.into(),
    };
    let meta = std::fs::metadata(path).map_err(|source| StoreError::Other {
        op: "open",
        source: Box::new(NotThere {
            path: path.to_path_buf(),
            source,
        }),
    })?;
    if !meta.is_file() {
        return Err(refuse(format!("{} is not a file", path.display())));
    }
    if meta.len() == 0 {
        return Err(refuse(format!(
            "{} is empty: it holds no store (this command makes none)",
            path.display()
        )));
    }
    if tables(path)?.rkms_keys == 0 {
        return Err(refuse(format!(
            "{} is an SQLite database without an rkms_keys table: not an rkms store (this command makes none)",
            path.display()
        )));
    }
    Ok(())
}

/// An existing database with other tables and no `rkms_keys` is another
/// application's. One with no table at all is a file another rkms
/// process is making now.
pub(super) fn refuse_foreign(path: &Path) -> Result<(), StoreError> {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        return Ok(());
    }
    let found = tables(path)?;
    if found.rkms_keys == 0 && found.all > 0 {
        return Err(StoreError::Other {
            op: "open",
            source: format!(
                "{} is an SQLite database with other tables and no rkms_keys table: another application's, not an rkms store",
                path.display()
            )
            .into(),
        });
    }
    Ok(())
}

/// The tables of the database at `path`, read without writing to it.
struct Tables {
    all: i64,
    rkms_keys: i64,
}

fn tables(path: &Path) -> Result<Tables, StoreError> {
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    open_to_read(path, flags, OPEN_PATIENCE)
        .and_then(|conn| {
            conn.query_row(
                "SELECT count(*), count(*) FILTER (WHERE name = 'rkms_keys') FROM sqlite_master WHERE type = 'table'",
                [],
                |r| {
                    Ok(Tables {
                        all: r.get(0)?,
                        rkms_keys: r.get(1)?,
                    })
                },
            )
        })
        .map_err(other("open"))
}

/// Whether `path` is on a file system mounted read-only, where nobody can
/// change the file.
fn on_a_read_only_file_system(path: &Path) -> bool {
    rustix::fs::statvfs(path)
        .is_ok_and(|fs| fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// A read-only connection, tried with a first read. A database in WAL mode
/// on a read-only file system, with no `-shm` file beside it, cannot be
/// read even so: SQLite needs to make the `-shm`. Such a file cannot
/// change, so it is then opened as immutable, which SQLite reads without
/// the `-shm` or any lock.
fn open_to_read(
    path: &Path,
    flags: rusqlite::OpenFlags,
    busy: Duration,
) -> rusqlite::Result<Connection> {
    // The first read waits out another process's moment alone with the
    // file (a checkpoint, a recovery), as later reads do.
    let first_read = |conn: Connection| {
        conn.busy_timeout(busy)?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map(|()| conn)
    };
    match Connection::open_with_flags(path, flags).and_then(first_read) {
        Err(_) if on_a_read_only_file_system(path) => {
            refuse_an_unread_log(path)?;
            open_immutable(path, flags).and_then(first_read)
        }
        opened => opened,
    }
}

/// An immutable open reads the main file alone. A `-wal` file beside it
/// may hold committed writes not yet copied into the file (the server was
/// killed, or the copy was taken while it ran), and such a read would not
/// see them: `verify` would pass over those records and `copy` would leave
/// them out, both exiting 0. Whether the log holds anything the file lacks
/// cannot be told without the `-shm`, so a log that is not empty is refused.
fn refuse_an_unread_log(path: &Path) -> rusqlite::Result<()> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let why = match std::fs::metadata(&wal) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Ok(m) if m.len() == 0 => return Ok(()),
        Ok(_) => String::new(),
        Err(e) => format!(" ({e})"),
    };
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(format!(
            "{} may hold writes that are not in {} yet{why}, and on a read-only file system SQLite cannot read them without its -shm file: copy the database file with its -wal (and -shm, if there is one) to a writable directory and run there",
            wal.display(),
            path.display(),
        )),
    ))
}

fn open_immutable(path: &Path, flags: rusqlite::OpenFlags) -> rusqlite::Result<Connection> {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(uri, flags)
}

/// The database file of a command that makes none is missing.
#[derive(Debug, thiserror::Error)]
#[error("{path} does not exist (this command makes no store)")]
struct NotThere {
    path: std::path::PathBuf,
    #[source]
    source: std::io::Error,
}
