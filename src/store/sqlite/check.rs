//! Whether the database can be trusted with keys: its `rkms_keys` table
//! has the shape rkms made (ids compared byte for byte, one row per id),
//! and SQLite finds the file intact. A damaged file can hide a stored id
//! from a lookup (an index entry changed on disk, a backup restored beside
//! another file's `-wal`), and a create would then give that id a second
//! key. Both are checked when the store opens; a damaged file found while
//! rkms runs stops creates and repairs (see [`Damaged`]).

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::store::StoreError;

/// The columns rkms made, as `PRAGMA table_info` shows them: name,
/// declared type, NOT NULL, position in the primary key.
const COLUMNS: [(&str, &str, bool, i64); 5] = [
    ("id", "TEXT", true, 1),
    ("keys", "TEXT", true, 0),
    ("v", "INTEGER", false, 0),
    ("key_ids", "TEXT", true, 0),
    ("created_at", "TEXT", false, 0),
];

/// SQLite found the database file damaged. Reads go on (each record is
/// still checked against its id); creates and repairs are refused, as an
/// id whose record a damaged file hides would get a second key.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} is damaged ({problem}); keys are not created or repaired in it. \
     Stop every rkms using it, keep a copy of it with its -wal and -shm files, \
     and restore the latest good copy (README: a damaged database file)",
    path.display()
)]
pub(crate) struct Damaged {
    pub(super) path: PathBuf,
    pub(super) problem: String,
}

/// The `rkms_keys` table is not the one rkms made.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: the rkms_keys table is not the shape rkms made ({what}); \
     rkms will not use it, as ids could be matched loosely or records lost. \
     Restore the table as rkms made it (README: a table that is not the one rkms made)"
)]
pub(crate) struct Reshaped {
    path: PathBuf,
    what: String,
}

/// Whether `e` is SQLite saying the file is damaged or not a database.
pub(super) fn says_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Check the table's shape, then the whole file (`PRAGMA integrity_check`:
/// every page, every index entry against its row, and that no id is
/// stored twice). Takes about a second per million records.
pub(super) fn trustworthy(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    const OP: &str = "open";
    let refuse = |source: crate::report::BoxError| StoreError::Other { op: OP, source };
    let damaged = |problem: String| {
        refuse(Box::new(Damaged {
            path: path.to_path_buf(),
            problem,
        }))
    };
    let sql_error = |e: rusqlite::Error| {
        if says_damaged(&e) {
            damaged(e.to_string())
        } else {
            refuse(Box::new(e))
        }
    };
    if let Some(what) = shape(conn).map_err(sql_error)? {
        return Err(refuse(Box::new(Reshaped {
            path: path.to_path_buf(),
            what,
        })));
    }
    let started = std::time::Instant::now();
    let first: String = conn
        .query_row("PRAGMA integrity_check(1)", [], |row| row.get(0))
        .map_err(sql_error)?;
    if first != "ok" {
        // Its report spans lines: kept to the error's one.
        let first = first.split_whitespace().collect::<Vec<_>>().join(" ");
        return Err(damaged(format!("SQLite's integrity check: {first}")));
    }
    let took = started.elapsed();
    if took >= std::time::Duration::from_secs(1) {
        // A start that waited on it says so.
        tracing::info!(path = %path.display(), took_ms = took.as_millis(), "checked the database file's integrity");
    } else {
        tracing::debug!(
            took_ms = took.as_millis(),
            "checked the database file's integrity"
        );
    }
    Ok(())
}

/// `sql` with comments, letter case and spacing taken out, and without
/// `IF NOT EXISTS`: two definitions of one table compare equal.
fn normalized(sql: &str) -> String {
    let text: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
        .replace("if not exists", "")
        // Quoted names (a table renamed is written back as "rkms_keys").
        .replace(['"', '`', '[', ']'], "");
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        let glued = out.ends_with(['(', ',']) || word.starts_with([')', ',', ';']);
        if !out.is_empty() && !glued {
            out.push(' ');
        }
        out.push_str(word);
    }
    out.trim_end_matches(';').to_string()
}

/// What differs from the table rkms made, if anything: its columns (named
/// first, for the message), then its whole definition (a collation, a
/// constraint, a column added: anything else may match ids loosely or
/// drop records), no trigger on it, no unique index but the id's, and
/// text stored as UTF-8 (what the blob-id check assumes).
fn shape(conn: &Connection) -> rusqlite::Result<Option<String>> {
    if let Some(what) = columns(conn)? {
        return Ok(Some(what));
    }
    let sql: String = conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'rkms_keys'",
        [],
        |row| row.get(0),
    )?;
    if normalized(&sql) != normalized(super::SCHEMA) {
        return Ok(Some(format!(
            "its definition is not the one rkms made: {:?}",
            crate::config::printable(&normalized(&sql))
        )));
    }
    let triggers: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'rkms_keys'",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if let Some(name) = triggers.first() {
        return Ok(Some(format!(
            "a trigger, {:?}, changes what is written",
            crate::config::printable(name)
        )));
    }
    let encoding: String = conn.query_row("PRAGMA encoding", [], |row| row.get(0))?;
    if encoding != "UTF-8" {
        return Ok(Some(format!(
            "the database stores text as {encoding}, not UTF-8"
        )));
    }
    keyed_by_id(conn)
}

/// Rkms's columns, found by name: which one differs, said plainly.
fn columns(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA table_info(rkms_keys)")?;
    // name, declared type, NOT NULL, position in the key
    let columns: Vec<(String, String, bool, i64)> = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, bool>(3)?,
                row.get::<_, i64>(5)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let described = |(name, kind, not_null, pk): (&str, &str, bool, i64)| {
        let mut c = format!("{name} {kind}");
        if pk > 0 {
            c.push_str(" PRIMARY KEY");
        }
        if not_null {
            c.push_str(" NOT NULL");
        }
        c
    };
    for want @ (name, kind, not_null, pk) in COLUMNS {
        let found = columns.iter().find(|c| c.0 == name);
        match found {
            Some((_, k, nn, p)) if k.eq_ignore_ascii_case(kind) && *nn == not_null && *p == pk => {}
            Some((n, k, nn, p)) => {
                return Ok(Some(format!(
                    "column {:?} where rkms made {:?}",
                    described((n, k, *nn, *p)),
                    described(want)
                )))
            }
            None => {
                return Ok(Some(format!(
                    "no column {name}, where rkms made {:?}",
                    described(want)
                )))
            }
        }
    }
    Ok(None)
}

/// The id alone is unique, compared byte for byte: under another
/// collation (NOCASE, say) `a` and `A` would be one id, and another unique
/// index (`ON CONFLICT REPLACE`) could delete a record as another is
/// written.
fn keyed_by_id(conn: &Connection) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare("PRAGMA index_list(rkms_keys)")?;
    let indexes: Vec<(String, bool, String)> = stmt
        .query_map([], |row| Ok((row.get(1)?, row.get(2)?, row.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    if let Some((name, _, _)) = indexes
        .iter()
        .find(|(_, unique, origin)| *unique && origin != "pk")
    {
        return Ok(Some(format!(
            "a unique index, {:?}, besides the id's",
            crate::config::printable(name)
        )));
    }
    let Some((pk, _, _)) = indexes
        .iter()
        .find(|(_, unique, origin)| *unique && origin == "pk")
    else {
        return Ok(Some("no unique index on its primary key".into()));
    };
    let mut stmt = conn.prepare("SELECT name, coll FROM pragma_index_xinfo(?1) WHERE key = 1")?;
    let keyed: Vec<(Option<String>, Option<String>)> = stmt
        .query_map([pk], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    match keyed.as_slice() {
        [(Some(name), Some(coll))] if name == "id" && coll.eq_ignore_ascii_case("BINARY") => {
            Ok(None)
        }
        [(_, Some(coll))] => Ok(Some(format!(
            "ids are compared with the collation {coll}, where rkms compares them byte for byte (BINARY)"
        ))),
        _ => Ok(Some("its primary key is not the id alone".into())),
    }
}
