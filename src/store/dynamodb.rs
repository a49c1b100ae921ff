//! DynamoDB store: the DESIGN item on a table with hash key `id` (S).
//! Reads are strongly consistent; creates are conditional puts; repairs
//! are updates that set a region only where it does not exist yet. Items
//! written by RKMS (Go) (`id` and `keys`, no `v`) read unchanged.
//!
//! Must not: cache, retry beyond the SDK, or replace an existing item.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use super::{
    decode_header, decode_keys, decode_region_map, encode_keys, region_map, PutOutcome, ScanPage,
    Store, StoreError,
};
use crate::aws::sdk_timeouts;
use crate::config::{DynamoSettings, StoreSettings};
use crate::domain::{KeyId, KeyRecord, Region};

mod errors;
mod table;
use errors::map_err;
pub(crate) use errors::{NoSuchTable, TableRefused};
pub(crate) use table::{TableReplaced, TableUnusable};

pub struct DynamoStore {
    client: Client,
    table: String,
    watch: table::TableWatch,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish()
    }
}

impl DynamoStore {
    pub async fn new(settings: &DynamoSettings, store: &StoreSettings) -> Self {
        let call = Duration::from_millis(store.call_timeout_ms);
        let (timeouts, retry) = sdk_timeouts(call, Duration::ZERO, Duration::from_millis(500), 2);
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(settings.region.clone()))
            .timeout_config(timeouts)
            .retry_config(retry)
            .load()
            .await;
        let mut conf = aws_sdk_dynamodb::config::Builder::from(&shared);
        if !settings.endpoint.is_empty() {
            conf = conf.endpoint_url(&settings.endpoint);
        }
        Self {
            client: Client::from_conf(conf.build()),
            table: settings.table.clone(),
            watch: table::TableWatch::new(&settings.table),
        }
    }

    /// A failed call, classified; one that found no table tells the watch.
    fn failed<E>(
        &self,
        err: aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
        op: &'static str,
    ) -> StoreError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        let err = map_err(err, op, &self.table);
        if let StoreError::Unavailable { source, .. } = &err {
            if source.is::<NoSuchTable>() {
                self.watch.missing(op);
                // Once the table rkms used is gone, "create it" is the
                // wrong advice: a new empty table gives ids new keys.
                if let Err(fenced) = self.watch.refuse(op) {
                    return fenced;
                }
            }
        }
        err
    }

    /// Before a create: the table described again when the last look is
    /// over [`table::RECHECK_EVERY`] old, so that a table made again since
    /// is seen before a key goes into it. Only the watch's verdict stops
    /// the create: a description that fails for another reason (throttled,
    /// not permitted) leaves it to the put.
    async fn recheck_table(&self, op: &'static str) -> Result<(), StoreError> {
        let mut last = self.watch.last_look.lock().await;
        if last.is_some_and(|at| at.elapsed() < table::RECHECK_EVERY) {
            return Ok(());
        }
        let described = self.describe(op).await;
        *last = Some(std::time::Instant::now());
        drop(last);
        match described {
            Ok(_) => Ok(()),
            Err(e) => self.watch.refuse(op).map_err(|_| e),
        }
    }

    /// `DescribeTable`, its answer checked against the table first seen.
    async fn describe(
        &self,
        op: &'static str,
    ) -> Result<aws_sdk_dynamodb::types::TableDescription, StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| self.failed(e, op))?;
        let table = out.table.ok_or_else(|| StoreError::Other {
            op,
            source: format!("table {} is not described in the answer", self.table).into(),
        })?;
        self.watch.described(&table, op)?;
        Ok(table)
    }

    async fn read(&self, id: &str, op: &'static str) -> Result<Option<KeyRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.failed(e, op))?;
        if out.item.is_none() {
            // No record in a table that is not the one first seen says
            // nothing of whether the id has a key.
            self.watch.refuse(op)?;
        }
        out.item.map(|item| decode_item(id, item)).transpose()
    }
}

fn string_map(
    id: &str,
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.to_owned(),
        reason,
    };
    match item.get(name) {
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(AttributeValue::M(map)) => map
            .iter()
            .map(|(k, v)| match v {
                AttributeValue::S(s) => Ok((k.clone(), s.clone())),
                _ => Err(corrupt(format!("{name}.{k} is not a string"))),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(corrupt(format!("{name} is not a map"))),
    }
}

fn decode_item(
    requested: &str,
    item: HashMap<String, AttributeValue>,
) -> Result<KeyRecord, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        id: requested.to_owned(),
        reason,
    };
    let raw_id = match item.get("id") {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => return Err(corrupt("id is missing or not a string".into())),
    };
    let version = match item.get("v") {
        None => None,
        Some(AttributeValue::N(n)) => Some(
            n.parse::<i64>()
                .map_err(|_| corrupt(format!("v {n:?} is not an integer")))?,
        ),
        Some(_) => return Err(corrupt("v is not a number".into())),
    };
    let (id, version) = decode_header(&raw_id, version)?;
    let keys =
        string_map(requested, &item, "keys")?.ok_or_else(|| corrupt("keys is missing".into()))?;
    let key_ids = string_map(requested, &item, "key_ids")?.unwrap_or_default();
    let created_at = match item.get("created_at") {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        None => None,
        Some(_) => return Err(corrupt("created_at is not a string".into())),
    };
    Ok(KeyRecord {
        keys: decode_keys(
            requested,
            keys.iter().map(|(r, c)| (r.as_str(), c.as_str())),
        )?,
        id,
        version,
        key_ids: decode_region_map(key_ids.iter().map(|(r, k)| (r.as_str(), k.as_str()))),
        created_at,
    })
}

fn s_map(map: BTreeMap<String, String>) -> AttributeValue {
    AttributeValue::M(
        map.into_iter()
            .map(|(k, v)| (k, AttributeValue::S(v)))
            .collect(),
    )
}

#[async_trait]
impl Store for DynamoStore {
    #[tracing::instrument(level = "debug", skip(self), fields(id = %id))]
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.read(id.as_str(), "get").await
    }

    #[tracing::instrument(level = "debug", skip(self, record), fields(id = %record.id))]
    async fn put_if_absent(&self, record: &KeyRecord) -> Result<PutOutcome, StoreError> {
        const OP: &str = "put_if_absent";
        self.refuses_writes(OP)?;
        self.recheck_table(OP).await?;
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("id", AttributeValue::S(record.id.as_str().to_owned()))
            .item("keys", s_map(encode_keys(&record.keys)))
            .item("key_ids", s_map(region_map(&record.key_ids)))
            .condition_expression("attribute_not_exists(id)");
        if let Some(v) = record.version {
            put = put.item("v", AttributeValue::N(v.to_string()));
        }
        if let Some(created) = &record.created_at {
            put = put.item("created_at", AttributeValue::S(created.clone()));
        }
        match put.send().await {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                match self.read(record.id.as_str(), OP).await? {
                    Some(winner) => Ok(PutOutcome::Exists(winner)),
                    None => Err(StoreError::Other {
                        op: OP,
                        source: "conditional put failed but no item is readable".into(),
                    }),
                }
            }
            Err(e) => Err(self.failed(e, OP)),
        }
    }

    /// One conditional update: the condition is `KeyRecord::same_key_as`
    /// on the stored ciphertexts (compared as the base64 strings this
    /// store writes), so a record written again in between fails it.
    #[tracing::instrument(level = "debug", skip_all, fields(id = %read.id))]
    async fn add_missing_regions(
        &self,
        read: &KeyRecord,
        keys: &BTreeMap<Region, Vec<u8>>,
        key_ids: &BTreeMap<Region, String>,
    ) -> Result<usize, StoreError> {
        const OP: &str = "add_missing_regions";
        self.refuses_writes(OP)?;
        let id = &read.id;
        if keys.is_empty() || read.keys.is_empty() {
            return Ok(0);
        }
        let encoded = encode_keys(keys);
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("id", AttributeValue::S(id.as_str().to_owned()))
            .expression_attribute_names("#keys", "keys")
            .expression_attribute_names("#key_ids", "key_ids")
            .return_values(ReturnValue::AllOld);
        // Still the record read: it shares a region with it, and every
        // region it shares holds the ciphertext read.
        let mut shares = Vec::new();
        let mut same = Vec::new();
        for (i, (region, ciphertext)) in encode_keys(&read.keys).into_iter().enumerate() {
            shares.push(format!("attribute_exists(#keys.#h{i})"));
            same.push(format!(
                "(attribute_not_exists(#keys.#h{i}) OR #keys.#h{i} = :h{i})"
            ));
            update = update
                .expression_attribute_names(format!("#h{i}"), region)
                .expression_attribute_values(format!(":h{i}"), AttributeValue::S(ciphertext));
        }
        update = update.condition_expression(format!(
            "attribute_exists(id) AND attribute_exists(#keys) AND attribute_exists(#key_ids) AND ({}) AND {}",
            shares.join(" OR "),
            same.join(" AND ")
        ));
        let mut sets = Vec::new();
        for (i, (region, ciphertext)) in encoded.iter().enumerate() {
            // if_not_exists keeps whatever ciphertext is already there.
            sets.push(format!("#keys.#r{i} = if_not_exists(#keys.#r{i}, :c{i})"));
            update = update
                .expression_attribute_names(format!("#r{i}"), region)
                .expression_attribute_values(
                    format!(":c{i}"),
                    AttributeValue::S(ciphertext.clone()),
                );
            if let Some(arn) = key_ids.get(&Region::new(region)) {
                sets.push(format!(
                    "#key_ids.#r{i} = if_not_exists(#key_ids.#r{i}, :a{i})"
                ));
                update = update
                    .expression_attribute_values(format!(":a{i}"), AttributeValue::S(arn.clone()));
            }
        }
        let result = update
            .update_expression(format!("SET {}", sets.join(", ")))
            .send()
            .await;
        match result {
            Ok(out) => {
                let before = out.attributes.unwrap_or_default();
                let existing = string_map(id.as_str(), &before, "keys")?.unwrap_or_default();
                Ok(encoded
                    .keys()
                    .filter(|r| !existing.contains_key(*r))
                    .count())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(0)
            }
            Err(e) => Err(self.failed(e, OP)),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.describe("ping").await.map(|_| ())
    }

    fn refuses_writes(&self, op: &'static str) -> Result<(), StoreError> {
        self.watch.refuse(op)
    }

    async fn scan(
        &self,
        segment: u32,
        segments: u32,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ScanPage, StoreError> {
        const OP: &str = "scan";
        let limit_i32 = i32::try_from(limit.clamp(1, 1000)).unwrap_or(1000);
        let mut request = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .limit(limit_i32);
        if segments > 1 {
            request = request
                .segment(i32::try_from(segment).unwrap_or(0))
                .total_segments(i32::try_from(segments).unwrap_or(1));
        }
        if let Some(after) = cursor {
            request = request.exclusive_start_key("id", AttributeValue::S(after.to_owned()));
        }
        let out = request.send().await.map_err(|e| self.failed(e, OP))?;
        let next = out
            .last_evaluated_key
            .as_ref()
            .and_then(|k| k.get("id"))
            .and_then(|v| v.as_s().ok())
            .cloned();
        let records = out
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|item| {
                let id = match item.get("id") {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => String::from("<no id>"),
                };
                decode_item(&id, item)
            })
            .collect();
        Ok(ScanPage { records, next })
    }

    async fn check(&self) -> Result<String, StoreError> {
        const OP: &str = "describe_table";
        let table = self.describe(OP).await?;
        let wrong = |why: String| StoreError::Other {
            op: OP,
            source: format!("table {} {why}", self.table).into(),
        };
        let hash = table
            .key_schema()
            .iter()
            .find(|k| k.key_type().as_str() == "HASH")
            .map(|k| k.attribute_name().to_string());
        if hash.as_deref() != Some("id") {
            return Err(wrong(format!(
                "has hash key {:?}; rkms needs hash key \"id\" of type S",
                hash.unwrap_or_default()
            )));
        }
        if table.key_schema().len() != 1 {
            return Err(wrong(
                "has a range key; rkms needs hash key \"id\" alone".into(),
            ));
        }
        let id_type = table
            .attribute_definitions()
            .iter()
            .find(|a| a.attribute_name() == "id")
            .map(|a| a.attribute_type().as_str().to_string());
        if id_type.as_deref() != Some("S") {
            return Err(wrong(format!(
                "has hash key \"id\" of type {}; rkms needs type S",
                id_type.unwrap_or_default()
            )));
        }
        let status = table.table_status().map_or("UNKNOWN", |s| s.as_str());
        Ok(format!("table {} ({status}), hash key id (S)", self.table))
    }
}
