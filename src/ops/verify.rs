//! `rkms verify`: the disaster-recovery drill. For every record (or a
//! random sample), decrypt the ciphertext of each configured region in that
//! region alone, and check that every region yields the same data key. A
//! record is recoverable in a region only when that decrypt succeeds.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rand::Rng;
use serde::Serialize;

use super::{
    failed_id, list_lines, next_page, note, progress, Down, KmsBudget, SegmentState, PAGE,
};
use crate::domain::{KeyRecord, Region};
use crate::kms::{Context, Kms, KmsErrorKind};
use crate::report::chain;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct Options {
    pub segments: u32,
    pub max_rps: u32,
    /// Verify a uniform random sample of this many records.
    pub sample: Option<usize>,
}

/// Per region: how its ciphertexts fared.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RegionReport {
    pub ok: u64,
    /// The record has no ciphertext for this region.
    pub missing: u64,
    /// KMS refused the ciphertext (invalid, another id's, another key's,
    /// key disabled or not allowed).
    pub undecryptable: u64,
    /// KMS could not be asked (timeout, throttling, 5xx): not verified.
    pub unavailable: u64,
    pub missing_ids: Vec<String>,
    pub undecryptable_ids: Vec<String>,
    pub unavailable_ids: Vec<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub records: u64,
    /// Records decryptable in every configured region, to the same key.
    pub complete: u64,
    pub regions: BTreeMap<String, RegionReport>,
    /// Records whose regions decrypt to different keys.
    pub mismatched: u64,
    /// Records the store cannot decode.
    pub corrupt: u64,
    /// The first [`super::MAX_LISTED`] ids of each.
    pub mismatched_ids: Vec<String>,
    pub corrupt_ids: Vec<String>,
    /// Whether every record is recoverable in every region.
    pub recoverable: bool,
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = format!(
            "verify: {} records, {} complete in every region; {}\n",
            self.records,
            self.complete,
            if self.records == 0 {
                "NOTHING verified: the store holds no records (is this the store you meant?)"
            } else if self.recoverable {
                "every record is recoverable in every region"
            } else {
                "NOT every record is recoverable in every region"
            }
        );
        for (region, r) in &self.regions {
            out.push_str(&format!(
                "  {region}: {} ok, {} missing, {} undecryptable, {} unavailable\n",
                r.ok, r.missing, r.undecryptable, r.unavailable
            ));
            list_lines(&mut out, "    missing: ", &r.missing_ids, r.missing);
            list_lines(
                &mut out,
                "    undecryptable: ",
                &r.undecryptable_ids,
                r.undecryptable,
            );
            list_lines(
                &mut out,
                "    unavailable: ",
                &r.unavailable_ids,
                r.unavailable,
            );
        }
        list_lines(
            &mut out,
            "  regions disagree on the key of ",
            &self.mismatched_ids,
            self.mismatched,
        );
        list_lines(
            &mut out,
            "  corrupt record ",
            &self.corrupt_ids,
            self.corrupt,
        );
        out
    }
}

pub async fn run(
    kms: Arc<dyn Kms>,
    store: Arc<dyn Store>,
    regions: Vec<Region>,
    options: Options,
) -> anyhow::Result<Report> {
    let segments = options.segments.max(1);
    let report = Arc::new(Mutex::new(Report {
        regions: regions
            .iter()
            .map(|r| (r.to_string(), RegionReport::default()))
            .collect(),
        ..Report::default()
    }));
    let budget = KmsBudget::per_second(options.max_rps);
    let down = Arc::new(Down::new(
        "verify: KMS in this region cannot be asked; its ciphertexts count as unavailable, without a call",
    ));
    let bar = progress("verify");
    // With a sample, the scan only collects (reservoir sampling, per
    // segment in proportion), then the sample is verified.
    let sampled: Arc<Mutex<(u64, Vec<KeyRecord>)>> = Arc::new(Mutex::new((0, Vec::new())));
    let mut tasks = tokio::task::JoinSet::new();
    for segment in 0..segments {
        let (kms, store, regions) = (Arc::clone(&kms), Arc::clone(&store), regions.clone());
        let (report, budget, bar, sampled, down) = (
            Arc::clone(&report),
            budget.clone(),
            bar.clone(),
            Arc::clone(&sampled),
            Arc::clone(&down),
        );
        let sample = options.sample;
        tasks.spawn(async move {
            let mut state = SegmentState::default();
            while let Some(page) = next_page(&store, segment, segments, &state, PAGE).await? {
                for record in page.records {
                    bar.inc(1);
                    let record = match record {
                        Ok(r) => r,
                        Err(e) => {
                            // The report lists the id; the log says why.
                            tracing::error!(error = %crate::report::chain(&e), "corrupt record");
                            let id = failed_id(&e);
                            let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                            let r = &mut *r;
                            r.records += 1;
                            note(&mut r.corrupt, &mut r.corrupt_ids, &id);
                            continue;
                        }
                    };
                    match sample {
                        Some(n) => reservoir(&sampled, n, record),
                        None => check(&kms, &regions, &budget, &down, &record, &report).await,
                    }
                }
                state.done = page.next.is_none();
                state.cursor = page.next;
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let picked = std::mem::take(&mut sampled.lock().unwrap_or_else(|p| p.into_inner()).1);
    for record in picked {
        check(&kms, &regions, &budget, &down, &record, &report).await;
    }
    bar.finish_and_clear();
    let mut report = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // Nothing checked proves nothing: an empty store (or a sample of none)
    // is not a passed drill.
    report.recoverable = report.records > 0 && report.complete == report.records;
    Ok(report)
}

fn reservoir(sampled: &Mutex<(u64, Vec<KeyRecord>)>, n: usize, record: KeyRecord) {
    let mut guard = sampled.lock().unwrap_or_else(|p| p.into_inner());
    let (seen, kept) = &mut *guard;
    *seen += 1;
    if kept.len() < n {
        kept.push(record);
    } else {
        let j = rand::thread_rng().gen_range(0..*seen);
        if let Ok(j) = usize::try_from(j) {
            if j < n {
                kept[j] = record;
            }
        }
    }
}

async fn check(
    kms: &Arc<dyn Kms>,
    regions: &[Region],
    budget: &KmsBudget,
    down: &Down,
    record: &KeyRecord,
    report: &Mutex<Report>,
) {
    let context = if record.bound_to_id() {
        Context::Bound(&record.id)
    } else {
        Context::Legacy
    };
    let mut outcomes = Vec::new();
    let mut keys = Vec::new();
    for region in regions {
        let outcome = match record.keys.get(region) {
            None => "missing",
            Some(_) if down.is_down(region) => "unavailable",
            Some(ciphertext) => {
                budget.take().await;
                match kms.decrypt(region, ciphertext, context).await {
                    Ok(key) => {
                        down.answered(region);
                        keys.push(key);
                        "ok"
                    }
                    Err(e) => {
                        tracing::warn!(key_id = %record.id, %region, error = %chain(&e), "verify: decrypt failed");
                        match e.kind {
                            // Not verified, and the same for every record:
                            // never "undecryptable", which reads as a lost key.
                            _ if down.mark_if_unreachable(region, &e) => "unavailable",
                            KmsErrorKind::Throttled => "unavailable",
                            KmsErrorKind::Saturated => "unavailable",
                            _ => "undecryptable",
                        }
                    }
                }
            }
        };
        outcomes.push((region, outcome));
    }
    let agree = keys.windows(2).all(|w| w[0].expose() == w[1].expose());
    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
    r.records += 1;
    let id = record.id.as_str();
    for (region, outcome) in &outcomes {
        let entry = r.regions.entry(region.to_string()).or_default();
        match *outcome {
            "ok" => entry.ok += 1,
            "missing" => note(&mut entry.missing, &mut entry.missing_ids, id),
            "unavailable" => note(&mut entry.unavailable, &mut entry.unavailable_ids, id),
            _ => note(&mut entry.undecryptable, &mut entry.undecryptable_ids, id),
        }
    }
    if !agree {
        let r = &mut *r;
        note(&mut r.mismatched, &mut r.mismatched_ids, id);
    }
    if agree && outcomes.iter().all(|(_, o)| *o == "ok") {
        r.complete += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyId;
    use crate::kms::faulty::{Fault, FaultyKms};
    use crate::kms::local::LocalKms;
    use crate::store::memory::MemoryStore;

    /// A region that cannot be asked costs one call, not one per record:
    /// the records after it count as unavailable there at once, and the
    /// drill fails, as it would had each call timed out.
    #[tokio::test]
    async fn a_region_that_cannot_be_asked_is_left_alone() {
        let (a, b) = (Region::new("a"), Region::new("b"));
        let dir = tempfile::tempdir().unwrap();
        let local =
            LocalKms::open(&dir.path().join("keyring.json"), &[a.clone(), b.clone()]).unwrap();
        let store = MemoryStore::new();
        for i in 0..30 {
            let id = KeyId::parse(&format!("v/{i:02}")).unwrap();
            let context = Context::Bound(&id);
            let (key, in_a) = local.generate_data_key(&a, 32, context).await.unwrap();
            let in_b = local.encrypt(&b, &key, context).await.unwrap();
            let record = KeyRecord {
                id: id.clone(),
                keys: [(a.clone(), in_a.ciphertext), (b.clone(), in_b.ciphertext)].into(),
                version: Some(2),
                key_ids: [(a.clone(), in_a.key_arn), (b.clone(), in_b.key_arn)].into(),
                created_at: None,
            };
            store.put_if_absent(&record).await.unwrap();
        }
        let kms = Arc::new(FaultyKms::new(Arc::new(local)));
        kms.set_fault(&b, Some(Fault::Fail(KmsErrorKind::Unavailable)));
        let options = Options {
            segments: 1,
            max_rps: 0,
            sample: None,
        };
        let report = run(
            Arc::clone(&kms) as Arc<dyn Kms>,
            Arc::new(store),
            vec![a.clone(), b.clone()],
            options,
        )
        .await
        .unwrap();
        assert_eq!(report.regions["a"].ok, 30);
        assert_eq!(report.regions["b"].unavailable, 30);
        assert!(!report.recoverable);
        assert_eq!(kms.calls(&a, "decrypt"), 30);
        assert_eq!(
            kms.calls(&b, "decrypt"),
            3,
            "asked three times in a row, then left alone"
        );
    }
}
