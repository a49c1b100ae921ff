//! What a SQLite error means for a call: another process's lock or a full
//! disk (an outage, 503), the file or table not as rkms made or left it
//! (an operator must look: 503, readiness `failed`), or the call's own.

use crate::store::StoreError;

/// Map a SQLite error to the store's. Another process's lock, and a full
/// disk, pass once someone acts (the other writer ends, an operator frees
/// space): `Unavailable`, so the client is told to retry and nothing is
/// written in the meantime (a failed write leaves the file as it was).
pub(super) fn other(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| match e {
        // Permissions changed, or a read-only mount: an operator's to
        // mend, and no fault of the request (it was a 500).
        rusqlite::Error::SqliteFailure(ref f, _) if f.code == rusqlite::ErrorCode::ReadOnly => {
            StoreError::Unavailable {
                op,
                source: Box::new(NotWritable(Box::new(e))),
            }
        }
        rusqlite::Error::SqliteFailure(ref f, _)
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
            ) =>
        {
            StoreError::Unavailable {
                op,
                source: Box::new(e),
            }
        }
        // The disk failed a read or write, or a write passed the process's
        // file size limit: no fault of the request (it was a 500).
        rusqlite::Error::SqliteFailure(ref f, _)
            if f.code == rusqlite::ErrorCode::SystemIoFailure =>
        {
            StoreError::Unavailable {
                op,
                source: Box::new(IoFailed::new(Box::new(e))),
            }
        }
        // The table dropped or altered while rkms runs: an operator's to
        // mend, not a fault of the request (it was a 500).
        rusqlite::Error::SqliteFailure(_, Some(ref m))
        | rusqlite::Error::SqlInputError { msg: ref m, .. }
            if m.starts_with("no such table") || m.starts_with("no such column") =>
        {
            StoreError::Unavailable {
                op,
                source: Box::new(TableChanged(m.clone())),
            }
        }
        // Found damaged while running: `Reopen::note` stops writes.
        ref e if super::check::says_damaged(e) => StoreError::Unavailable {
            op,
            source: Box::new(SaidDamaged(e.to_string())),
        },
        e => StoreError::Other {
            op,
            source: Box::new(e),
        },
    }
}

/// The `rkms_keys` table is gone or lost a column since rkms opened it.
#[derive(Debug, thiserror::Error)]
#[error("the rkms_keys table was dropped or altered while rkms ran (SQLite: {0}); restore it as rkms made it")]
pub(crate) struct TableChanged(pub(super) String);

/// SQLite answered a call that the file is damaged (`SQLITE_CORRUPT`,
/// `SQLITE_NOTADB`); the path is added where the store notes it.
#[derive(Debug, thiserror::Error)]
#[error("SQLite: {0}")]
pub(crate) struct SaidDamaged(pub(super) String);

/// SQLite refused a write to the database or its log.
#[derive(Debug, thiserror::Error)]
#[error("the database file or its -wal cannot be written (its owner or mode changed, or the file system is mounted read-only); keys are not created or repaired until it can be")]
pub(crate) struct NotWritable(#[source] pub(crate) crate::report::BoxError);

/// SQLite's read or write of the file failed: a disk fault, or a write
/// past the process's file size limit (`ulimit -f`), named when one is set.
#[derive(Debug, thiserror::Error)]
#[error("reading or writing the database file or its -wal failed (a disk fault{limit})")]
pub(crate) struct IoFailed {
    limit: String,
    #[source]
    source: crate::report::BoxError,
}

impl IoFailed {
    fn new(source: crate::report::BoxError) -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Fsize)
            .current
            .map(|bytes| format!(", or a write past the process's file size limit of {bytes} bytes (RLIMIT_FSIZE, `ulimit -f`)"))
            .unwrap_or_default();
        Self { limit, source }
    }
}

#[cfg(test)]
mod tests {
    /// A failed read or write of the file is 503 for an operator to look
    /// at, not a 500 for the request, nor an outage that passes by itself.
    #[test]
    fn an_io_error_is_unavailable_and_needs_an_operator() {
        let io = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE),
            None,
        );
        let e = super::other("put_if_absent")(io);
        assert!(
            matches!(e, crate::store::StoreError::Unavailable { .. }),
            "{e:?}"
        );
        assert!(!e.is_outage());
        assert!(
            crate::report::chain(&e).contains("failed (a disk fault"),
            "{e:?}"
        );
    }
}
