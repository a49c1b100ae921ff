//! The store port: durable key records. Adapters make one call per method,
//! do no caching and no retries, and keep the same fields as the DynamoDB
//! item in DESIGN (`id`, `keys`, `v`, `key_ids`, `created_at`).
//!
//! Must not: import `kms` (shared needs live in `aws` and `report`).

pub mod dynamodb;
pub mod exact;
pub mod memory;
pub mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use base64::Engine;

use crate::domain::{KeyId, KeyRecord, Region};
use crate::report::BoxError;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (no answer, throttling, or a resource
    /// that is not there: see [`StoreError::is_outage`]): 503, try again.
    #[error("store unavailable during {op}")]
    Unavailable {
        op: &'static str,
        #[source]
        source: BoxError,
    },
    /// A stored record cannot be read as a key record. Never repaired or
    /// replaced automatically: an operator must look.
    #[error("stored record for id {id:?} is corrupt: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("store {op} failed")]
    Other {
        op: &'static str,
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// The call found no AWS credentials to sign with, and none will come
    /// by themselves (not a metadata service that did not answer): a
    /// setting.
    pub fn no_credentials(&self) -> bool {
        match self {
            StoreError::Unavailable { source, .. } | StoreError::Other { source, .. } => {
                crate::aws::no_credentials_in(source.as_ref())
                    .is_some_and(crate::aws::NoCredentials::is_setting)
            }
            StoreError::Corrupt { .. } => false,
        }
    }

    /// An outage that may pass by itself (no answer, throttling), as
    /// against a store that is not where the settings say: a missing
    /// table, one with another key or refusing access, a database file
    /// moved away, no AWS credentials. Both are 503 to a request; only the
    /// second needs an operator, and readiness says `failed` for it.
    pub fn is_outage(&self) -> bool {
        let StoreError::Unavailable { source, .. } = self else {
            return false;
        };
        !crate::aws::sources(source.as_ref()).any(|e| {
            e.is::<sqlite::FileChanged>()
                || e.is::<sqlite::LogChanged>()
                || e.is::<sqlite::NotWritable>()
                || e.is::<sqlite::IoFailed>()
                || e.is::<sqlite::SaidDamaged>()
                || e.is::<sqlite::Damaged>()
                || e.is::<sqlite::Reshaped>()
                || e.is::<sqlite::TableChanged>()
                || e.is::<dynamodb::NoSuchTable>()
                || e.is::<dynamodb::TableRefused>()
                || e.is::<dynamodb::TableReplaced>()
                || e.is::<dynamodb::TableUnusable>()
                || e.downcast_ref::<crate::aws::NoCredentials>()
                    .is_some_and(crate::aws::NoCredentials::is_setting)
        })
    }
}

/// Result of a conditional create.
#[derive(Debug)]
pub enum PutOutcome {
    /// Our record is now stored.
    Created,
    /// A record already existed; it is returned and ours was not written.
    Exists(KeyRecord),
}

/// One page of a full scan, in one segment of the key space.
#[derive(Debug, Default)]
pub struct ScanPage {
    /// Each record decoded on its own: a corrupt record is reported with
    /// its id, and the scan goes on.
    pub records: Vec<Result<KeyRecord, StoreError>>,
    /// Where the next page of this segment starts; `None`: segment done.
    pub next: Option<String>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Strongly consistent read. `Ok(None)`: no record for `id`.
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;

    /// Store `record` only if no record for its id exists. Safe to retry: a
    /// retry after an unseen success returns `Exists` with our own record.
    async fn put_if_absent(&self, record: &KeyRecord) -> Result<PutOutcome, StoreError>;

    /// Whether `put_if_absent` is atomic by construction here (one
    /// transaction, one lock), so that a record it reports `Created` is
    /// the one stored. When not (the default: a DynamoDB table may be a
    /// replica that accepts a conflicting put elsewhere), the broker reads
    /// a created record back before serving its key.
    fn put_is_atomic(&self) -> bool {
        false
    }

    /// Add the ciphertexts in `keys` (and their `key_ids`) for regions the
    /// stored record lacks, if it is still the record `read` (the one whose
    /// key `keys` wrap): checked in the same atomic step as the update, by
    /// [`KeyRecord::same_key_as`]. A record deleted, or written again with
    /// another key, since `read` was read gains nothing, so one record
    /// never holds two keys. Never replaces an existing region's
    /// ciphertext. Returns how many regions were added (0 when the record
    /// is gone or changed). Idempotent.
    async fn add_missing_regions(
        &self,
        read: &KeyRecord,
        keys: &BTreeMap<Region, Vec<u8>>,
        key_ids: &BTreeMap<Region, String>,
    ) -> Result<usize, StoreError>;

    /// A cheap call proving the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Err once the store refuses every write until rkms restarts (a
    /// damaged SQLite file, a DynamoDB table deleted or replaced), known
    /// without a call: a repair asks before it spends KMS calls on a
    /// write that would be refused.
    fn refuses_writes(&self, _op: &'static str) -> Result<(), StoreError> {
        Ok(())
    }

    /// Up to `limit` records of segment `segment` of `segments` (which
    /// together cover every record once), after the opaque `cursor` a
    /// previous page returned. For maintenance tools (backfill, verify,
    /// copy), never on a request path.
    async fn scan(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError>;

    /// Preflight: the store is usable as configured (for DynamoDB: the
    /// table exists with hash key `id` of type S). Returns what was found,
    /// for the startup log.
    async fn check(&self) -> Result<String, StoreError> {
        self.ping().await.map(|()| "answers".to_string())
    }
}

/// Region -> base64 ciphertext, the stored `keys` map.
pub fn encode_keys(keys: &BTreeMap<Region, Vec<u8>>) -> BTreeMap<String, String> {
    keys.iter()
        .map(|(r, c)| (r.to_string(), B64.encode(c)))
        .collect()
}

/// Parse a stored `keys` map, given as its entries in the order stored:
/// a region named twice keeps its last entry, as a map read from them
/// would, and the entries it replaces are not read. Anything unreadable is
/// `Corrupt`, never skipped.
pub fn decode_keys<'a>(
    id: &str,
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<BTreeMap<Region, Vec<u8>>, StoreError> {
    let mut entries: Vec<(&str, &str)> = entries.into_iter().collect();
    // Stable: a region's entries keep their order, the last one last.
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut keys = BTreeMap::new();
    for (i, &(region, encoded)) in entries.iter().enumerate() {
        if entries.get(i + 1).is_some_and(|next| next.0 == region) {
            continue;
        }
        keys.insert(Region::new(region), decode_ciphertext(id, region, encoded)?);
    }
    if keys.is_empty() {
        return Err(StoreError::Corrupt {
            id: id.to_string(),
            reason: "record has no ciphertexts".into(),
        });
    }
    Ok(keys)
}

/// One stored ciphertext from its base64; `Corrupt` unless it decodes to
/// at least one byte. Line breaks inside it are skipped, as RKMS (Go)'s
/// decoder skips them: base64 written in lines of 76 was served by it.
fn decode_ciphertext(id: &str, region: &str, encoded: &str) -> Result<Vec<u8>, StoreError> {
    let encoded = encoded.trim();
    let joined: std::borrow::Cow<'_, str> = if encoded.contains(['\r', '\n']) {
        encoded
            .chars()
            .filter(|c| !matches!(c, '\r' | '\n'))
            .collect::<String>()
            .into()
    } else {
        encoded.into()
    };
    let raw = B64
        .decode(joined.as_bytes())
        .map_err(|_| StoreError::Corrupt {
            id: id.to_string(),
            reason: format!("ciphertext for region {region:?} is not base64"),
        })?;
    if raw.is_empty() {
        return Err(StoreError::Corrupt {
            id: id.to_string(),
            reason: format!("ciphertext for region {region:?} is empty"),
        });
    }
    Ok(raw)
}

/// Check a stored id and version; shared by the adapters.
pub fn decode_header(
    raw_id: &str,
    version: Option<i64>,
) -> Result<(KeyId, Option<u32>), StoreError> {
    let id = KeyId::parse(raw_id).map_err(|e| StoreError::Corrupt {
        id: raw_id.to_string(),
        reason: format!("stored id is invalid: {e}"),
    })?;
    let version = match version {
        None => None,
        Some(v) if v == i64::from(crate::domain::RECORD_VERSION) => {
            Some(crate::domain::RECORD_VERSION)
        }
        Some(v) => {
            return Err(StoreError::Corrupt {
                id: raw_id.to_string(),
                reason: format!("unknown record version {v}"),
            })
        }
    };
    Ok((id, version))
}

/// Add to `record` the ciphertexts (and key ARNs) of regions it lacks;
/// never replaces one it has. Returns how many regions were added. The one
/// rule of repair, shared by the stores that merge in memory.
pub fn merge_missing(
    record: &mut KeyRecord,
    keys: &BTreeMap<Region, Vec<u8>>,
    key_ids: &BTreeMap<Region, String>,
) -> usize {
    let mut added = 0;
    for (region, ciphertext) in keys {
        if let std::collections::btree_map::Entry::Vacant(slot) = record.keys.entry(region.clone())
        {
            slot.insert(ciphertext.clone());
            if let Some(arn) = key_ids.get(region) {
                record.key_ids.insert(region.clone(), arn.clone());
            }
            added += 1;
        }
    }
    added
}

/// Region -> text (the stored `key_ids`), from its entries in the order
/// stored: a region named twice keeps its last entry.
pub fn decode_region_map<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<Region, String> {
    let mut map = BTreeMap::new();
    for (region, value) in entries {
        map.insert(Region::new(region), value.to_owned());
    }
    map
}

pub fn region_map(map: &BTreeMap<Region, String>) -> BTreeMap<String, String> {
    map.iter()
        .map(|(r, v)| (r.to_string(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ciphertext stored as base64 in lines (as MIME writes it) reads as
    /// RKMS (Go) read it: it was corrupt, a 500, and `copy` left it out.
    /// Other spellings stay corrupt.
    #[test]
    fn line_broken_base64_reads_as_rkms_go_read_it() {
        let raw: Vec<u8> = (0..=255u8).cycle().take(180).collect();
        let one_line = B64.encode(&raw);
        let lines: String = one_line
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
            .collect();
        let keys = decode_keys("g", [("r", lines.as_str())]).unwrap();
        assert_eq!(keys[&Region::new("r")], raw);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&raw);
        assert!(matches!(
            decode_keys("g", [("r", url_safe.as_str())]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
