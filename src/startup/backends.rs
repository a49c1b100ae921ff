//! Open the store and the KMS the settings name, as the command opening
//! them may (`Access`), with the guards that keep a start from making a
//! store or a master key over keys that live elsewhere, and the identity
//! of a store as checkpoints, the startup log and preflight name it.
//!
//! Must not: serve, or decide anything per request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::{KmsProvider, Settings, StoreBackend};
use crate::domain::Region;
use crate::kms::aws::AwsKms;
use crate::kms::local::{KeyringError, LocalKms};
use crate::kms::Kms;
use crate::store::dynamodb::DynamoStore;
use crate::store::memory::MemoryStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

use super::stored::{
    first_records, refuse_a_keyring_of_other_keys, refuse_keys_other_than_the_stored_ones,
    refuse_new_master_keys_over_stored_keys, refuse_regions_no_record_is_in,
};

/// What a command may make or change as it opens the store and the
/// local keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Make the SQLite file (and its directory) when it is missing: the
    /// server's first start. Otherwise a missing file is an error, so a
    /// mistyped path is not taken for an empty store.
    pub make_store: bool,
    /// Open the store for writing. Otherwise a SQLite file is opened
    /// read-only and left as it is (journal mode included), so a copy on a
    /// read-only mount can be checked.
    pub write_store: bool,
    /// Make the local keyring, and add master keys for regions it lacks,
    /// each only where no stored record needs the one missing. Otherwise
    /// the keyring is read as it is, and a missing one is an error.
    pub add_master_keys: bool,
}

impl Access {
    /// The server: makes what a first start needs.
    pub const SERVE: Self = Self {
        make_store: true,
        write_store: true,
        add_master_keys: true,
    };
    /// Checks and reports (verify, dry runs, `check-config --connect`):
    /// make and change nothing.
    pub const READ: Self = Self {
        make_store: false,
        write_store: false,
        add_master_keys: false,
    };
}

/// Build the KMS and the store the settings name (no listener, no check).
/// The store comes first: the local KMS looks into it before making a
/// keyring or a master key.
pub async fn backends(
    settings: &Settings,
    access: Access,
) -> anyhow::Result<(Arc<dyn Kms>, Arc<dyn Store>)> {
    if access.make_store {
        refuse_new_store_beside_a_keyring(settings)?;
    }
    let store = store(settings, access.make_store, access.write_store).await?;
    let regions: Vec<Region> = settings.kms.regions.iter().map(Region::new).collect();
    // Read once, for both checks of the store against the settings.
    let local = settings.kms.provider == KmsProvider::Local;
    let first = first_records(store.as_ref(), local).await;
    refuse_regions_no_record_is_in(&regions, first.as_ref())?;
    let kms: Arc<dyn Kms> = match settings.kms.provider {
        KmsProvider::Local => {
            let path = settings.kms.local.keyring.clone();
            let local = if access.add_master_keys {
                // Both checks look at the keyring as it is (`None`: no file
                // yet), before a master key is added to a file that may be
                // another deployment's.
                let existing = {
                    let path = path.clone();
                    match tokio::task::spawn_blocking(move || LocalKms::open_existing(&path))
                        .await?
                    {
                        Err(KeyringError::Missing { .. }) => None,
                        opened => Some(opened.context("kms.local.keyring")?),
                    }
                };
                refuse_new_master_keys_over_stored_keys(
                    &path,
                    existing.as_ref(),
                    &regions,
                    store.as_ref(),
                )
                .await?;
                if let Some(existing) = &existing {
                    refuse_a_keyring_of_other_keys(existing, settings, first.as_ref()).await?;
                }
                tokio::task::spawn_blocking(move || LocalKms::open(&path, &regions))
                    .await?
                    .context("kms.local.keyring")?
            } else {
                let existing = tokio::task::spawn_blocking(move || LocalKms::open_existing(&path))
                    .await?
                    .context("kms.local.keyring")?;
                // The tools and `check-config --connect` refuse what `serve`
                // refuses.
                refuse_a_keyring_of_other_keys(&existing, settings, first.as_ref()).await?;
                existing
            };
            Arc::new(local)
        }
        KmsProvider::Aws => {
            let aws = AwsKms::new(&settings.kms).await;
            refuse_keys_other_than_the_stored_ones(&aws, &regions, first.as_ref()).await?;
            Arc::new(aws)
        }
    };
    Ok((kms, store))
}

/// Build only the store the settings name; also for tools that move
/// stored records and never call KMS (`rkms copy`): no keyring is read or
/// made. `make`: make a missing SQLite file (else it is an error). A
/// SQLite file is opened read-only, and left as it is, unless `write`
/// (the DynamoDB client is the same either way).
pub async fn store(settings: &Settings, make: bool, write: bool) -> anyhow::Result<Arc<dyn Store>> {
    let store: Arc<dyn Store> = match settings.store.backend {
        StoreBackend::Sqlite => {
            let path = settings.store.sqlite.path.clone();
            let timeout = Duration::from_millis(settings.store.call_timeout_ms);
            let store = tokio::task::spawn_blocking(move || {
                if make {
                    SqliteStore::open(&path, timeout)
                } else if write {
                    SqliteStore::open_existing(&path, timeout)
                } else {
                    SqliteStore::open_read_only(&path, timeout)
                }
            })
            .await?
            .with_context(|| {
                format!(
                    "cannot open store.sqlite.path {}",
                    settings.store.sqlite.path.display()
                )
            })?;
            Arc::new(store)
        }
        StoreBackend::Dynamodb => {
            Arc::new(DynamoStore::new(&settings.store.dynamodb, &settings.store).await)
        }
        StoreBackend::Memory => Arc::new(MemoryStore::new()),
    };
    Ok(store)
}

/// The converse of [`refuse_new_master_keys_over_stored_keys`]: the local
/// keyring is there but the SQLite file is not (or is empty). The keys
/// that keyring wraps are in another file (a mistyped or changed
/// `store.sqlite.path`, a moved or deleted file), and a new empty store
/// would give every id a new key. Startup stops; to start over with no
/// keys, remove the keyring too.
fn refuse_new_store_beside_a_keyring(settings: &Settings) -> anyhow::Result<()> {
    if settings.kms.provider != KmsProvider::Local || settings.store.backend != StoreBackend::Sqlite
    {
        return Ok(());
    }
    let (keyring, path) = (&settings.kms.local.keyring, &settings.store.sqlite.path);
    let store_holds_something = match std::fs::metadata(path) {
        // A database without rkms's table holds nothing either: a store
        // whose log was lost leaves one page with no table. (The keyring
        // is written after the table, so a store that another process is
        // opening at this moment already has it.) A file that cannot be
        // read as one: opening the store reports it.
        Ok(meta) => meta.len() > 0 && crate::store::sqlite::holds_a_store(path).unwrap_or(true),
        // Cannot tell: opening the store reports it.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    };
    if store_holds_something || !keyring.try_exists().unwrap_or(false) {
        return Ok(());
    }
    // A keyring that does not load says so itself, as it would on any start.
    let wraps_keys = LocalKms::open_existing(keyring)
        .context("kms.local.keyring")?
        .has_master_keys();
    if !wraps_keys {
        return Ok(());
    }
    anyhow::bail!(
        "store.sqlite.path {} does not exist or holds no keys table, but kms.local.keyring {} does: the keys it wraps are stored in another file (or were, in a log since lost). \
         Fix store.sqlite.path or put the file back (to start over with no keys, remove the keyring too)",
        path.display(),
        keyring.display()
    )
}
