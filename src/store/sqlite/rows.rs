//! Rows of `rkms_keys`: one read by id, a page of a scan by rowid, each
//! decoded into a [`KeyRecord`] straight from SQLite's buffers (the row's
//! text is not copied first), and the JSON that a write stores.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use rusqlite::{params, Connection, OptionalExtension};

use super::other;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::domain::{KeyRecord, Region};
use crate::store::{decode_ciphertext, decode_header, no_ciphertexts, ScanPage, StoreError};

/// A record by id: the columns [`decode`] reads, from the first.
const READ: &str = "SELECT id, keys, v, key_ids, created_at FROM rkms_keys WHERE id = ?1";

/// A page of a scan: the rowid, then the columns [`decode`] reads.
const SCAN: &str = "SELECT rowid, id, keys, v, key_ids, created_at FROM rkms_keys \
                    WHERE rowid > ?1 AND rowid % ?2 = ?3 ORDER BY rowid LIMIT ?4";

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
    found.transpose()
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
        records: rows.into_iter().map(|(_, record)| record).collect(),
    })
}

/// The record in columns `id, keys, v, key_ids, created_at`, from column
/// `first` on. A column that is not text is SQLite's error; text that does
/// not decode is `Corrupt`.
fn decode(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Result<KeyRecord, StoreError>> {
    let raw_id = r.get_ref(first)?.as_str()?;
    let keys = r.get_ref(first + 1)?.as_str()?;
    let v: Option<i64> = r.get(first + 2)?;
    let key_ids = r.get_ref(first + 3)?.as_str()?;
    let created_at = r.get_ref(first + 4)?.as_str_or_null()?;
    Ok(record(raw_id, keys, v, key_ids, created_at))
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
    if keys.0.is_empty() {
        return Err(no_ciphertexts(raw_id));
    }
    // Inserted one by one: a region named twice keeps its last entry, as a
    // JSON object read into a map does.
    let mut ciphertexts = BTreeMap::new();
    for (region, encoded) in &keys.0 {
        let raw = decode_ciphertext(raw_id, &region.0, &encoded.0)?;
        ciphertexts.insert(Region::new(&*region.0), raw);
    }
    Ok(KeyRecord {
        keys: ciphertexts,
        id,
        version,
        key_ids: key_ids
            .0
            .into_iter()
            .map(|(region, arn)| (Region::new(region.0), arn.0.into_owned()))
            .collect(),
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
