//! Which store a config names: the identity checkpoints record and the
//! startup log and preflight print, and whether two configs name one store.
//!
//! Must not: open a store.

use crate::config::{Settings, StoreBackend};

/// The store the settings name, as checkpoints record it and the startup
/// log and preflight name it: an SQLite file by its real path (links, `.`
/// and `..` resolved, however it was spelt and from whichever directory),
/// a table by its name, region and endpoint.
pub fn store_identity(settings: &Settings) -> String {
    match settings.store.backend {
        StoreBackend::Sqlite => {
            format!("SQLite {}", resolved(&settings.store.sqlite.path).display())
        }
        StoreBackend::Dynamodb => format!(
            "DynamoDB table {} in {} at {}",
            settings.store.dynamodb.table,
            settings.store.dynamodb.region,
            if settings.store.dynamodb.endpoint.is_empty() {
                "the AWS endpoint"
            } else {
                settings.store.dynamodb.endpoint.as_str()
            }
        ),
        StoreBackend::Memory => "memory (lost on exit)".into(),
    }
}

/// Whether two configs name one store: the same identity (see
/// [`store_identity`]), or for SQLite one file reached by two paths (a hard
/// link). Two memory stores are two stores.
pub fn same_store(a: &Settings, b: &Settings) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.store.backend, b.store.backend) {
        (StoreBackend::Memory, _) | (_, StoreBackend::Memory) => false,
        (StoreBackend::Sqlite, StoreBackend::Sqlite) => {
            let file = |s: &Settings| {
                std::fs::metadata(&s.store.sqlite.path)
                    .ok()
                    .map(|m| (m.dev(), m.ino()))
            };
            store_identity(a) == store_identity(b) || file(a).is_some_and(|f| Some(f) == file(b))
        }
        _ => store_identity(a) == store_identity(b),
    }
}

/// `path` with links, `.` and `..` resolved by the file system, as far as
/// it exists; the rest (a file a first run makes) appended as written, so
/// the answer is the same before and after the file exists.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut cur = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                cur = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod resolved_tests {
    use super::resolved;

    /// One store, however its path is spelt, reads the same, before and
    /// after its file exists; `..` after a link goes where the file
    /// system goes, not where the spelling suggests.
    #[test]
    fn a_store_path_resolves_through_links_before_and_after_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir_all(root.join("a/sub")).unwrap();
        std::os::unix::fs::symlink("a/sub", root.join("link")).unwrap();

        let direct = root.join("a/sub/db");
        assert_eq!(resolved(&direct), direct, "not there yet");
        assert_eq!(resolved(&root.join("link/db")), direct);
        assert_eq!(resolved(&root.join("link/../db")), root.join("a/db"));
        std::fs::write(&direct, b"").unwrap();
        assert_eq!(resolved(&root.join("link/./db")), direct, "there now");
        assert_eq!(
            resolved(&root.join("a/new/dir/db")),
            root.join("a/new/dir/db")
        );
    }
}
