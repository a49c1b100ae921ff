//! The keyring file the running process took its master keys from, and
//! whether it still holds them. Removed or replaced while rkms runs, it no
//! longer holds the master keys new keys would be wrapped under: those
//! keys would be readable only while this process lives.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::keyring::{read_keyring, KeyringFile};

/// What identifies one version of the file, through symbolic links (a
/// link pointed elsewhere is another file): a change to any of these (a
/// rename over it, an edit in place, a new mode or owner, which change its
/// ctime) has the file read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Version {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The master keys a process holds, by a digest of each (never the key),
/// and the version of the file it last found them in. No `Debug`: the
/// digests are not for printing either.
pub(super) struct Held {
    digests: BTreeMap<String, [u8; 32]>,
    seen: Mutex<Option<Version>>,
}

fn digest(encoded: &str) -> [u8; 32] {
    Sha256::digest(encoded.as_bytes()).into()
}

impl Held {
    /// The keys of `file`, read from `path` just now, by this process
    /// holding the keyring's lock (`locked`: the file is as it was read), or
    /// without it (then the first check reads it again: it may have been
    /// replaced since it was read).
    pub(super) fn new(path: &Path, file: &KeyringFile, locked: bool) -> Self {
        Self {
            digests: file
                .master_keys
                .iter()
                .map(|(region, encoded)| (region.clone(), digest(encoded)))
                .collect(),
            seen: Mutex::new(locked.then(|| Version::of(path).ok()).flatten()),
        }
    }

    /// `Err(why)` when the file at `path` no longer holds every master
    /// key this process holds: removed, unreadable, or another keyring. A
    /// file written again with the same keys (another rkms added a region
    /// to it) still holds them.
    pub(super) fn still_in(&self, path: &Path) -> Result<(), String> {
        let now = Version::of(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "was removed".to_string(),
            _ => format!("cannot be read ({e})"),
        })?;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == Some(now) {
            return Ok(());
        }
        let keyring = match read_keyring(path) {
            Ok(Some(keyring)) => keyring,
            Ok(None) => return Err("was removed".into()),
            Err(e) => return Err(format!("cannot be read ({e})")),
        };
        let lost = self.digests.iter().find(|(region, held)| {
            keyring
                .file
                .master_keys
                .get(*region)
                .is_none_or(|encoded| digest(encoded) != **held)
        });
        if let Some((region, _)) = lost {
            return Err(format!(
                "no longer holds the master key for {region} (it was replaced)"
            ));
        }
        *seen = Some(now);
        Ok(())
    }
}
