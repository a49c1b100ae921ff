//! The table rkms works on, as it was when first described. A table
//! deleted, or replaced by a new one of the same name, holds none of the
//! records written before: a create there would give an id that had a key
//! a second one, while instances that cached the first still serve it. So
//! once the table is seen gone or replaced, this process creates and
//! repairs nothing until it restarts, answers 503 where the table has no
//! record (rather than 404), and readiness fails. A record the table does
//! hold is still served: its ciphertexts are bound to its id.
//!
//! Seen when: a call finds no table (any call, after the table was
//! described once), or a `DescribeTable` (each readiness probe, and the
//! dependency re-check) answers another table id, or creation time, or
//! status `DELETING`.

use std::sync::OnceLock;

use aws_sdk_dynamodb::types::TableDescription;

use crate::store::StoreError;

/// The table this process started with is gone, or is another table now.
#[derive(Debug, thiserror::Error)]
#[error("table {table:?} {why}: keys are not created or repaired until rkms restarts (restore the table, or restart to accept the new one: ids whose records it lacks get new keys)")]
pub(crate) struct TableReplaced {
    table: String,
    why: String,
}

/// The table is there and is rkms's, but cannot be used in its state.
#[derive(Debug, thiserror::Error)]
#[error("table {table:?} is {status}: {fix}")]
pub(crate) struct TableUnusable {
    table: String,
    status: String,
    fix: &'static str,
}

#[derive(Debug)]
pub(super) struct TableWatch {
    table: String,
    /// The table's id (`TableId`), else its creation time, when first
    /// described in use (`ACTIVE` or `UPDATING`).
    first: OnceLock<String>,
    /// Why the table is no longer the one first described; never cleared.
    lost: OnceLock<String>,
    /// When a create last had the table described (one at a time).
    pub(super) last_look: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// How old the last look at the table may be when a create goes ahead.
pub(super) const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl TableWatch {
    pub(super) fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            first: OnceLock::new(),
            lost: OnceLock::new(),
            last_look: tokio::sync::Mutex::new(None),
        }
    }

    /// A `DescribeTable` answer: noted the first time the table is in use
    /// (`ACTIVE` or `UPDATING`), compared with every answer after. Returns
    /// the table's status for the startup log.
    pub(super) fn described(
        &self,
        table: &TableDescription,
        op: &'static str,
    ) -> Result<String, StoreError> {
        let status = table.table_status().map_or("UNKNOWN", |s| s.as_str());
        let in_use = matches!(status, "ACTIVE" | "UPDATING");
        // A table being made answers "no such table" to reads and writes
        // until it is ACTIVE: not yet the table to note, and those answers
        // not a deletion. It passes by itself: an outage, not a refusal.
        if status == "CREATING" && self.first.get().is_none() {
            return Err(StoreError::Unavailable {
                op,
                source: format!(
                    "table {:?} is CREATING: keys are served once it is ACTIVE",
                    self.table
                )
                .into(),
            });
        }
        let identity = table
            .table_id()
            .map(|id| format!("table id {id}"))
            .or_else(|| {
                table.creation_date_time().map(|t| {
                    let at = t
                        .fmt(aws_sdk_dynamodb::primitives::DateTimeFormat::DateTimeWithOffset)
                        .unwrap_or_else(|_| t.as_nanos().to_string());
                    format!("created at {at}")
                })
            });
        if let Some(identity) = identity {
            if in_use {
                let _ = self.first.set(identity.clone());
            }
            if let Some(first) = self.first.get().filter(|first| **first != identity) {
                self.lose(
                    format!(
                        "was replaced by another table of the same name ({first} when first seen, {identity} now)"
                    ),
                    op,
                );
            }
        }
        if status == "DELETING" {
            self.lose("is being deleted".into(), op);
        }
        self.refuse(op)?;
        let fix = match status {
            "ARCHIVING" | "ARCHIVED" => "restore it from its archive",
            "INACCESSIBLE_ENCRYPTION_CREDENTIALS" => {
                "its encryption key cannot be used: enable the table's KMS key and grant DynamoDB its use"
            }
            _ => return Ok(status.to_owned()),
        };
        Err(StoreError::Unavailable {
            op,
            source: Box::new(TableUnusable {
                table: self.table.clone(),
                status: status.to_owned(),
                fix,
            }),
        })
    }

    /// A call found no table: if this process had seen it in use, it was
    /// deleted.
    pub(super) fn missing(&self, op: &'static str) {
        if self.first.get().is_some() {
            self.lose("was deleted".into(), op);
        }
    }

    /// Err once the table is gone or replaced.
    pub(super) fn refuse(&self, op: &'static str) -> Result<(), StoreError> {
        match self.lost.get() {
            None => Ok(()),
            Some(why) => Err(StoreError::Unavailable {
                op,
                source: Box::new(TableReplaced {
                    table: self.table.clone(),
                    why: why.clone(),
                }),
            }),
        }
    }

    fn lose(&self, why: String, op: &'static str) {
        if self.lost.set(why).is_ok() {
            if let Err(e) = self.refuse(op) {
                tracing::error!(error = %crate::report::chain(&e), "the store's table is not the one rkms started with");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::primitives::DateTime;
    use aws_sdk_dynamodb::types::TableStatus;

    fn table(id: Option<&str>, created: i64, status: TableStatus) -> TableDescription {
        TableDescription::builder()
            .set_table_id(id.map(str::to_owned))
            .creation_date_time(DateTime::from_secs(created))
            .table_status(status)
            .build()
    }

    /// A table of another id, or (where the answer has no id) another
    /// creation time, or one being deleted, stops writes for good: a
    /// later answer of the first table does not lift it.
    #[test]
    fn a_replaced_or_deleted_table_stops_writes_until_restart() {
        let replaced = TableWatch::new("t");
        assert!(replaced
            .described(&table(Some("a"), 1, TableStatus::Active), "ping")
            .is_ok());
        assert!(replaced
            .described(&table(Some("a"), 1, TableStatus::Active), "ping")
            .is_ok());
        assert!(replaced.refuse("put_if_absent").is_ok());
        let e = replaced
            .described(&table(Some("b"), 1, TableStatus::Active), "ping")
            .unwrap_err();
        assert!(!e.is_outage(), "an operator must look");
        assert!(crate::report::chain(&e).contains("replaced"), "{e:?}");
        assert!(replaced
            .described(&table(Some("a"), 1, TableStatus::Active), "ping")
            .is_err());
        assert!(replaced.refuse("put_if_absent").is_err());

        // Made again within a second: the creation times still differ.
        let quick = TableWatch::new("t");
        let at = |nanos| {
            TableDescription::builder()
                .creation_date_time(DateTime::from_secs_and_nanos(1, nanos))
                .table_status(TableStatus::Active)
                .build()
        };
        assert!(quick.described(&at(1_000), "ping").is_ok());
        assert!(quick.described(&at(2_000_000), "ping").is_err());

        let no_id = TableWatch::new("t");
        assert!(no_id
            .described(&table(None, 1, TableStatus::Active), "ping")
            .is_ok());
        assert!(no_id
            .described(&table(None, 2, TableStatus::Active), "ping")
            .is_err());

        let deleting = TableWatch::new("t");
        assert!(deleting
            .described(&table(Some("a"), 1, TableStatus::Deleting), "ping")
            .is_err());
        assert!(deleting.refuse("put_if_absent").is_err());
    }

    /// No table found: a deletion only once the table was seen (a start
    /// before the table exists waits for it, as before).
    #[test]
    fn a_table_missing_before_it_was_seen_is_not_a_deletion() {
        let watch = TableWatch::new("t");
        watch.missing("get");
        assert!(watch.refuse("put_if_absent").is_ok());
        // Being made: not ready, and its "no such table" answers are not a
        // deletion (a review had such a start refuse creates for good).
        let creating = watch
            .described(&table(Some("a"), 1, TableStatus::Creating), "ping")
            .unwrap_err();
        assert!(creating.is_outage(), "it passes by itself");
        watch.missing("get");
        assert!(watch.refuse("put_if_absent").is_ok());
        assert!(watch
            .described(&table(Some("a"), 1, TableStatus::Active), "ping")
            .is_ok());
        watch.missing("get");
        assert!(watch.refuse("put_if_absent").is_err());
    }

    /// A table rkms cannot use in its state fails the call, naming the fix,
    /// and does not stop writes for good: it may come back as it was.
    #[test]
    fn an_archived_or_locked_table_is_refused_while_it_is() {
        let watch = TableWatch::new("t");
        let e = watch
            .described(
                &table(Some("a"), 1, TableStatus::InaccessibleEncryptionCredentials),
                "ping",
            )
            .unwrap_err();
        assert!(crate::report::chain(&e).contains("KMS key"), "{e:?}");
        assert!(!e.is_outage());
        assert!(watch.refuse("put_if_absent").is_ok());
        assert!(watch
            .described(&table(Some("a"), 1, TableStatus::Active), "ping")
            .is_ok());
    }
}
