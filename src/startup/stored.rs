//! The settings held against the store's first records at start: the
//! regions, the local keyring and the AWS keys must be the ones the
//! stored keys were wrapped in and under. A start that would serve errors
//! for every stored id, or wrap new keys no other process could read,
//! stops with one line naming the setting.
//!
//! Must not: write to the store, or to a keyring that holds master keys.

use anyhow::Context as _;

use crate::config::Settings;
use crate::domain::Region;
use crate::kms::aws::AwsKms;
use crate::kms::local::LocalKms;
use crate::kms::{Context, Kms};
use crate::store::{ScanPage, Store};

use super::identity::store_identity;

/// Each region's configured key must be one the stored records were
/// wrapped under: of the records sampled ([`first_records`]) with a key ARN in
/// a region, one must name the key its configured id (an alias, usually)
/// names now. An alias moved to another key, or a key id changed in the
/// config, would unwrap none of the region's ciphertexts (calls name the
/// key), and wrap new keys under a key the rest cannot be read with.
/// A region that cannot be asked now passes (an outage, for readiness),
/// as do an empty store and records without key ARNs (RKMS (Go)). Key
/// ARNs that differ are confirmed with KMS: a ciphertext the key unwraps
/// passes (its record's key ARNs were edited); any other answer, or none,
/// stops the start.
pub(super) async fn refuse_keys_other_than_the_stored_ones(
    kms: &AwsKms,
    regions: &[Region],
    first: Option<&ScanPage>,
) -> anyhow::Result<()> {
    let Some(page) = first else {
        return Ok(());
    };
    let stored_in = |region: &Region| -> std::collections::BTreeSet<&str> {
        page.records
            .iter()
            .flatten()
            .filter_map(|r| r.key_ids.get(region).map(String::as_str))
            .collect()
    };
    let asked: Vec<&Region> = regions
        .iter()
        .filter(|r| !stored_in(r).is_empty())
        .collect();
    // The regions at once: a hung one costs one call timeout, not one each.
    let arns = futures::future::join_all(asked.iter().map(|r| kms.key_arn_in(r))).await;
    for (region, arn) in asked.into_iter().zip(arns) {
        let stored = stored_in(region);
        let Ok(arn) = arn else {
            continue;
        };
        if stored.contains(arn.as_str()) {
            continue;
        }
        // A record's key ARNs are what it says of itself, and can be
        // edited; its ciphertext is what KMS reads. One the key unwraps
        // settles it.
        let mut why = String::new();
        let sample = page.records.iter().flatten().find(|r| {
            r.keys.contains_key(region) && r.key_ids.get(region).is_some_and(|k| *k != arn)
        });
        if let Some(record) = sample {
            let ciphertext = record.keys.get(region).map_or(&[][..], Vec::as_slice);
            let context = if record.bound_to_id() {
                Context::Bound(&record.id)
            } else {
                Context::Legacy
            };
            match kms.decrypt(region, ciphertext, context).await {
                Ok(_) => {
                    tracing::warn!(
                        %region,
                        key_arn = %arn,
                        key_id = %record.id,
                        "stored records name other keys in their key_ids than the key that unwraps their ciphertexts: the key_ids were edited"
                    );
                    continue;
                }
                // KMS could not say (busy, no answer) or refused: the key
                // ARNs stand, and the start stops; a start again asks again.
                Err(e) => {
                    why = format!(
                        " (unwrapping {}'s: {})",
                        record.id,
                        crate::report::chain(&e)
                    )
                }
            }
        }
        anyhow::bail!(
            "kms.aws.key_ids.{region} names {arn}, but the stored records were wrapped in {region} under {}: \
             their ciphertexts there cannot be unwrapped with it{why} (an alias moved to another key, or another key configured). \
             Point the alias (or the setting) back at that key; rotate keys with KMS's own rotation, which keeps the key. \
             If that key is gone for good, {region}'s ciphertexts are lost: remove {region} from kms.regions, check with `rkms verify` that every record reads in the regions left, \
             then add another region with a new key (not {region}: its records keep the lost key's ciphertexts, which rkms never replaces) and run `rkms backfill` (README, runbook: a region whose key is lost)",
            stored.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// Segments of the key space sampled at start, and records read from each.
const SAMPLE_SEGMENTS: u32 = 4;
const SAMPLE_PER_SEGMENT: usize = 10;

/// The first stored records of each of [`SAMPLE_SEGMENTS`] scan segments
/// (up to 40 in all), which the checks at start hold against the
/// settings. DynamoDB's segments split its key space, so a few stray
/// records (written by hand, or by something else) do not make the
/// sample; SQLite's are its first rows. A store that does not answer now
/// is an outage, which never stops a start (readiness says so): `None`,
/// and the checks wait for the next start.
pub(super) async fn first_records(store: &dyn Store, local_kms: bool) -> Option<ScanPage> {
    let pages = futures::future::try_join_all(
        (0..SAMPLE_SEGMENTS)
            .map(|segment| store.scan(segment, SAMPLE_SEGMENTS, None, SAMPLE_PER_SEGMENT)),
    )
    .await;
    match pages {
        Ok(pages) => Some(ScanPage {
            records: pages.into_iter().flat_map(|page| page.records).collect(),
            next: None,
        }),
        Err(e) => {
            let what = if local_kms {
                "cannot check that kms.local.keyring belongs to the store, nor that kms.regions does: reading its first records failed"
            } else {
                "cannot check that kms.regions fits the stored records: reading its first records failed"
            };
            tracing::warn!(
                error = %crate::report::chain(&e),
                "{what}"
            );
            None
        }
    }
}

/// `kms.regions` must share a region with the stored records: of the
/// records sampled ([`first_records`]), one must hold a ciphertext in a configured
/// region. A list replaced rather than extended (`RKMS__KMS__REGIONS` set
/// to new regions only) would serve a 500 for every stored id, and with
/// the local KMS add master keys for the new regions to the keyring for
/// good. An empty store, or one that does not answer now (an outage, for
/// readiness to report), passes.
pub(super) fn refuse_regions_no_record_is_in(
    regions: &[Region],
    first: Option<&ScanPage>,
) -> anyhow::Result<()> {
    let Some(page) = first else {
        return Ok(());
    };
    let records: Vec<_> = page.records.iter().flatten().collect();
    if records.is_empty()
        || records
            .iter()
            .any(|r| r.keys.keys().any(|region| regions.contains(region)))
    {
        return Ok(());
    }
    let stored: std::collections::BTreeSet<&str> = records
        .iter()
        .flat_map(|r| r.keys.keys().map(Region::as_str))
        .collect();
    let configured: Vec<&str> = regions.iter().map(Region::as_str).collect();
    let shown: Vec<String> = records
        .iter()
        .take(3)
        .map(|r| format!("{:?}", crate::config::printable(r.id.as_str())))
        .collect();
    anyhow::bail!(
        "kms.regions {configured:?} holds none of the regions the stored records are wrapped in ({stored:?}; {} records sampled, e.g. {}): every stored id would fail to read. Keep at least one of those regions listed (add new regions beside them and run `rkms backfill`, rather than replacing them); if those records were written by something else, remove them",
        records.len(),
        shown.join(", ")
    )
}

/// The keyring and the store must belong together: of the records
/// sampled ([`first_records`]), one with a ciphertext under a region the keyring
/// has must decrypt there. A keyring or a store from another deployment
/// (a link or a path pointing at the wrong one, a file copied over) would
/// serve errors for every stored id and wrap new keys that the right
/// keyring could never read, or give every id a new key. One bad record
/// among good ones does not stop a start (it answers its own errors).
pub(super) async fn refuse_a_keyring_of_other_keys(
    kms: &LocalKms,
    settings: &Settings,
    first: Option<&ScanPage>,
) -> anyhow::Result<()> {
    let keyring = &settings.kms.local.keyring;
    let Some(page) = first else {
        return Ok(());
    };
    let mut undecryptable = None;
    for record in page.records.iter().flatten() {
        let context = if record.bound_to_id() {
            Context::Bound(&record.id)
        } else {
            Context::Legacy
        };
        for (region, ciphertext) in &record.keys {
            if !kms.has_master_key(region) {
                continue;
            }
            if kms.decrypt(region, ciphertext, context).await.is_ok() {
                return Ok(());
            }
            undecryptable.get_or_insert(record);
        }
    }
    let Some(record) = undecryptable else {
        return Ok(());
    };
    anyhow::bail!(
        "kms.local.keyring {} decrypts none of the ciphertexts of stored record {:?} in the store ({}): the keyring and the store do not belong together \
         (one was replaced, or a path points at another deployment's). Restore the keyring or the store that goes with the other",
        keyring.display(),
        record.id.as_str(),
        store_identity(settings)
    )
}

/// The local KMS makes its keyring when the file is missing, and a master
/// key for each configured region it lacks. Over stored records that
/// need one of those (a lost or misplaced keyring, a master key removed
/// from it), a new master key could decrypt none of them, and keys it then
/// wrapped could never be merged with the old ones: startup stops instead.
/// A region no record uses yet (one just added to `kms.regions`) gets its
/// master key.
pub(super) async fn refuse_new_master_keys_over_stored_keys(
    keyring: &std::path::Path,
    existing: Option<&LocalKms>,
    regions: &[Region],
    store: &dyn Store,
) -> anyhow::Result<()> {
    let Some(existing) = existing else {
        let page = store.scan(0, 1, None, 1).await.with_context(|| {
            format!(
                "kms.local.keyring {} does not exist, and rkms makes one only for an empty store: \
                 cannot tell whether the store holds keys (a scan of one record failed)",
                keyring.display()
            )
        })?;
        if page.records.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "kms.local.keyring {} does not exist, but the store already holds keys wrapped by the master keys in it: \
             restore that file (rkms makes a new keyring only for an empty store)",
            keyring.display()
        )
    };
    let lacking: Vec<&Region> = regions
        .iter()
        .filter(|r| !existing.has_master_key(r))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = lacking.iter().map(|r| r.as_str()).collect();
    let cannot_tell = || {
        format!(
            "kms.local.keyring {} has no master key for {}, and rkms makes one only for a region no stored record uses: \
             cannot tell whether one does (a store scan failed)",
            keyring.display(),
            names.join(",")
        )
    };
    let mut cursor = None;
    loop {
        let page = store
            .scan(0, 1, cursor.as_deref(), 1000)
            .await
            .with_context(cannot_tell)?;
        // A record that cannot be read might need the missing key: its
        // ciphertext under that region may be the one a keyring backup can
        // still decrypt. Say so rather than guess.
        if let Some(Err(unreadable)) = page.records.iter().find(|r| r.is_err()) {
            anyhow::bail!(
                "kms.local.keyring {} has no master key for {}, and rkms makes one only for a region no stored record uses, \
                 but a stored record cannot be read to tell: {unreadable}. Fix or remove that record, or restore the keyring",
                keyring.display(),
                names.join(",")
            );
        }
        let needs = page.records.iter().flatten().find_map(|record| {
            lacking
                .iter()
                .find(|r| record.keys.contains_key(*r))
                .map(|r| (r, &record.id))
        });
        if let Some((region, id)) = needs {
            anyhow::bail!(
                "kms.local.keyring {} has no master key for region {region}, but stored records hold ciphertexts under it (id {:?}, for one): \
                 restore the keyring from a backup (rkms makes a master key only for a region no stored record uses)",
                keyring.display(),
                id.as_str()
            );
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(()),
        }
    }
}
