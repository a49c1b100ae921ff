//! Rows of `rkms_keys`: one read by id, a page of a scan by rowid, each
//! decoded into a [`KeyRecord`] straight from SQLite's buffers (the row's
//! text is not copied first), and the JSON that a write stores.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};

use super::other;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::domain::KeyRecord;
use crate::store::{decode_header, decode_keys, decode_region_map, ScanPage, StoreError};

/// A record by id: the columns [`decode`] reads, from the first.
const READ: &str = "SELECT id, keys, v, key_ids, created_at FROM rkms_keys WHERE id = ?1";

/// A page of a scan: the rowid, then the columns [`decode`] reads.
const SCAN: &str = "SELECT rowid, id, keys, v, key_ids, created_at FROM rkms_keys \
                    WHERE rowid > ?1 AND rowid % ?2 = ?3 ORDER BY rowid LIMIT ?4";

/// A row whose id is the same bytes as a blob. SQLite never takes a blob
/// for equal to text, so [`READ`] does not find such a row, and the unique
/// index lets a text row with the same id in beside it.
const BLOB_ID: &str = "SELECT 1 FROM rkms_keys WHERE id = CAST(?1 AS BLOB) LIMIT 1";

/// Whether the statements that read records still fit the table (a
/// column dropped or renamed while rkms runs fails every read).
/// Not from the statement cache: a cached statement is checked against
/// the table only when it next runs.
pub(super) fn fit(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare(READ)?;
    conn.prepare(SCAN)?;
    Ok(())
}

pub(super) fn read(
    conn: &Connection,
    id: &str,
    op: &'static str,
) -> Result<Option<KeyRecord>, StoreError> {
    // Cached: parsing the statement costs about as much as running it.
    let found = conn
        .prepare_cached(READ)
        .and_then(|mut stmt| stmt.query_row(params![id], |r| decode(r, 0)).optional())
        .map_err(other(op))?;
    if let Some(record) = found {
        return record.map(Some);
    }
    // An absence leads to a create: only absences pay for this lookup.
    refuse_blob_id(conn, id, op)?;
    Ok(None)
}

/// `Corrupt` when `id` has a record that another program wrote with its
/// id as bytes: read as absent, or written beside, it would give the id a
/// second key.
pub(super) fn refuse_blob_id(
    conn: &Connection,
    id: &str,
    op: &'static str,
) -> Result<(), StoreError> {
    let as_bytes = conn
        .prepare_cached(BLOB_ID)
        .and_then(|mut stmt| stmt.exists(params![id]))
        .map_err(other(op))?;
    if as_bytes {
        return Err(StoreError::Corrupt {
            id: id.to_string(),
            reason: "the stored id is a blob, not text".into(),
        });
    }
    Ok(())
}

/// One page of a scan by rowid; segment `n` holds the rows whose rowid is
/// `n` modulo `segments`. The cursor is the last rowid returned.
pub(super) fn scan_rows(
    conn: &Connection,
    segment: u32,
    segments: u32,
    after: i64,
    limit: usize,
) -> Result<ScanPage, StoreError> {
    const OP: &str = "scan";
    let mut stmt = conn.prepare_cached(SCAN).map_err(other(OP))?;
    // One row past the page says whether there is more.
    let limit_sql = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query_map(
            params![
                after,
                i64::from(segments.max(1)),
                i64::from(segment),
                limit_sql
            ],
            |r| Ok((r.get::<_, i64>(0)?, decode(r, 1)?)),
        )
        .map_err(other(OP))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(other(OP))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok(ScanPage {
        next: more
            .then(|| rows.last().map(|(rowid, _)| rowid.to_string()))
            .flatten(),
        // A corrupt row's id may be NULL, a blob or not UTF-8, and then
        // cannot be looked up by it: say where the row is.
        records: rows
            .into_iter()
            .map(|(rowid, record)| {
                record.map_err(|e| match e {
                    StoreError::Corrupt { id, reason } => StoreError::Corrupt {
                        id,
                        reason: format!("{reason} (SQLite rowid {rowid})"),
                    },
                    e => e,
                })
            })
            .collect(),
    })
}

/// The record in columns `id, keys, v, key_ids, created_at`, from column
/// `first` on. A column of the wrong type, or text that does not decode,
/// is `Corrupt` for this row alone, so a scan reports it and goes on; the
/// `Err` is SQLite's own failure.
fn decode(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Result<KeyRecord, StoreError>> {
    let raw_id = match r.get_ref(first)? {
        ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(id) => id,
            Err(_) => return Ok(Err(corrupt_row(t, "the stored id is not UTF-8"))),
        },
        ValueRef::Blob(b) => return Ok(Err(corrupt_row(b, "the stored id is a blob, not text"))),
        other => {
            let reason = format!("the stored id is of type {}, not text", type_name(other));
            return Ok(Err(corrupt_row(b"", &reason)));
        }
    };
    let corrupt = |reason: String| StoreError::Corrupt {
        id: raw_id.to_string(),
        reason,
    };
    let keys = match text(r.get_ref(first + 1)?, "keys") {
        Ok(Some(keys)) => keys,
        Ok(None) => return Ok(Err(corrupt("column keys is NULL".into()))),
        Err(reason) => return Ok(Err(corrupt(reason))),
    };
    let v = match r.get_ref(first + 2)? {
        ValueRef::Null => None,
        ValueRef::Integer(v) => Some(v),
        other => {
            let reason = format!("column v is of type {}, not an integer", type_name(other));
            return Ok(Err(corrupt(reason)));
        }
    };
    let key_ids = match text(r.get_ref(first + 3)?, "key_ids") {
        Ok(Some(key_ids)) => key_ids,
        Ok(None) => return Ok(Err(corrupt("column key_ids is NULL".into()))),
        Err(reason) => return Ok(Err(corrupt(reason))),
    };
    let created_at = match text(r.get_ref(first + 4)?, "created_at") {
        Ok(created_at) => created_at,
        Err(reason) => return Ok(Err(corrupt(reason))),
    };
    Ok(record(raw_id, keys, v, key_ids, created_at))
}

/// A column read as text in place; the reason when it is not text.
fn text<'r>(value: ValueRef<'r>, column: &str) -> Result<Option<&'r str>, String> {
    match value {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(Some)
            .map_err(|_| format!("column {column} is not UTF-8 text")),
        other => Err(format!(
            "column {column} is of type {}, not text",
            type_name(other)
        )),
    }
}

/// SQLite's name for the type of a value, as its `typeof()` gives it.
fn type_name(value: ValueRef<'_>) -> &'static str {
    match value {
        ValueRef::Null => "null",
        ValueRef::Integer(_) => "integer",
        ValueRef::Real(_) => "real",
        ValueRef::Text(_) => "text",
        ValueRef::Blob(_) => "blob",
    }
}

/// A row that cannot be named by a text id: named by its bytes, with
/// anything that is not UTF-8 replaced.
fn corrupt_row(id: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt {
        id: String::from_utf8_lossy(id).into_owned(),
        reason: reason.to_string(),
    }
}

/// A record from its stored text. The JSON maps are read entry by entry
/// from the row's own text, with no intermediate map of copied strings:
/// every cache miss runs this.
fn record(
    raw_id: &str,
    keys: &str,
    v: Option<i64>,
    key_ids: &str,
    created_at: Option<&str>,
) -> Result<KeyRecord, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt {
        id: raw_id.to_string(),
        reason: format!("{what} is not a JSON object of strings"),
    };
    let keys: Entries<'_> = serde_json::from_str(keys).map_err(|_| corrupt("keys"))?;
    let key_ids: Entries<'_> = serde_json::from_str(key_ids).map_err(|_| corrupt("key_ids"))?;
    let (id, version) = decode_header(raw_id, v)?;
    Ok(KeyRecord {
        keys: decode_keys(raw_id, keys.pairs())?,
        id,
        version,
        key_ids: decode_region_map(key_ids.pairs()),
        created_at: created_at.map(str::to_owned),
    })
}

/// A JSON string, borrowed from the row's text unless it holds escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The entries of a JSON object of strings, in the order written.
struct Entries<'a>(Vec<(Text<'a>, Text<'a>)>);

impl Entries<'_> {
    /// Each entry as text, in the order written.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&*k.0, &*v.0))
    }
}

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // A record holds a few regions; the hint is not trusted
                // beyond that.
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(V)
    }
}

pub(super) fn to_json(
    map: &BTreeMap<String, String>,
    op: &'static str,
) -> Result<String, StoreError> {
    serde_json::to_string(map).map_err(|e| StoreError::Other {
        op,
        source: Box::new(e),
    })
}
