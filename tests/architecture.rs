//! The layering in DESIGN.md, enforced: each module of `src/` may name
//! only the modules listed for it below. Imports run one way, from the
//! HTTP edge down to the adapters and the domain; a store never imports
//! `kms` (nor the reverse); the broker never imports the edge (`routes`,
//! `error`, `auth`) or the config file format; nothing imports `routes`
//! except `startup`, and nothing imports `startup`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module -> the crate modules it may use. This table is the contract;
/// DESIGN.md's "Modules" section describes the same graph.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "startup",
        &[
            "auth",
            "broker",
            "config",
            "domain",
            "kms",
            "metrics",
            "preflight",
            "routes",
            "store",
            "telemetry",
            "report",
            "tls",
        ],
    ),
    ("preflight", &["domain", "kms", "report", "store"]),
    ("ops", &["config", "domain", "kms", "report", "store"]),
    ("tls", &["config"]),
    ("hardening", &[]),
    // The binary's own module: it names the library as `rkms::`.
    ("commands", &[]),
    (
        "routes",
        &[
            "auth",
            "broker",
            "domain",
            "error",
            "metrics",
            "preflight",
            "report",
            "telemetry",
        ],
    ),
    ("error", &["broker", "report"]),
    ("auth", &["config", "domain"]),
    ("broker", &["domain", "kms", "metrics", "report", "store"]),
    ("kms", &["aws", "config", "domain", "report"]),
    ("store", &["aws", "config", "domain", "report"]),
    ("aws", &[]),
    ("config", &["domain"]),
    ("metrics", &["telemetry"]),
    ("telemetry", &["config"]),
    ("domain", &[]),
    ("report", &[]),
];

/// The crate modules a source text names through `crate::NAME`.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups.
            if let Some(group) = after.strip_prefix('{') {
                let group = group.split('}').next().unwrap_or("");
                for item in group.split(',') {
                    let item = item.trim();
                    let head: String = item
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !head.is_empty() {
                        found.insert(head);
                    }
                }
            } else if !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

/// Violations in `files` (module name, file label, source text).
fn violations(files: &[(String, String, String)]) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut out = Vec::new();
    for (module, label, source) in files {
        let Some(may) = allowed.get(module.as_str()) else {
            out.push(format!(
                "{label}: module `{module}` is not in the layering table"
            ));
            continue;
        };
        for used in crate_paths(source) {
            if used != *module && !may.contains(&used.as_str()) {
                out.push(format!("{label}: `{module}` must not use `crate::{used}`"));
            }
        }
    }
    out
}

fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, root, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        // The crate root and the binary only declare and wire modules.
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        out.push((module, rel.display().to_string(), text));
    }
}

#[test]
fn every_module_imports_only_what_the_layering_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    assert!(
        files.len() > 20,
        "read the source tree ({} files)",
        files.len()
    );
    let found = violations(&files);
    assert!(
        found.is_empty(),
        "layering violations:\n{}",
        found.join("\n")
    );
}

/// The check itself can fail: a forbidden import in any of the ways Rust
/// can write one is reported.
#[test]
fn a_forbidden_import_is_reported() {
    let cases = [
        ("broker", "use crate::routes::AppState;"),
        ("broker", "let e = crate::error::chain(&x);"),
        ("broker", "use crate::config::Settings;"),
        ("store", "use crate::{domain::KeyId, kms::BoxError};"),
        ("kms", "    crate::store::StoreError::Other"),
        ("domain", "use crate::metrics::Metrics;"),
        ("routes", "use crate::startup::Application;"),
    ];
    for (module, line) in cases {
        let files = vec![(module.to_string(), "probe.rs".to_string(), line.to_string())];
        assert_eq!(violations(&files).len(), 1, "{module}: {line}");
    }
    let fine = vec![(
        "broker".to_string(),
        "probe.rs".to_string(),
        "use crate::kms::Kms; // not crate::routes\nuse crate::{domain::KeyId, store::Store};"
            .to_string(),
    )];
    assert!(violations(&fine).is_empty(), "{:?}", violations(&fine));
}
