//! The keyring file of the local KMS: its JSON document (decoded and
//! checked, master keys wiped when dropped), and reading, locking and
//! writing it (atomically, owner-only, through symbolic links).
//!
//! Must not: make or change a master key (`LocalKms` decides that).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::B64;
use crate::domain::Region;

pub(super) const KEYRING_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring {path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path}: cannot write")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path}: mode is {mode:o}, must not be readable by group or others (chmod 600 {path})")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("keyring {path}: corrupt: {reason}; it was left untouched")]
    Corrupt { path: PathBuf, reason: String },
    #[error("keyring {path} does not exist (this command makes none)")]
    Missing { path: PathBuf },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyringFile {
    pub(super) format: u32,
    pub(super) note: String,
    /// Region -> base64 master key.
    #[serde(deserialize_with = "each_region_once")]
    pub(super) master_keys: BTreeMap<String, String>,
}

/// `master_keys`, refused when it names a region twice: a map would keep
/// the last entry only, and the next write of the keyring would drop the
/// other master key, and every key wrapped by it, for good.
fn each_region_once<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    /// The entries read so far, wiped when dropped (on an error too).
    struct Read(BTreeMap<String, String>);
    impl Drop for Read {
        fn drop(&mut self) {
            for encoded in self.0.values_mut() {
                zeroize::Zeroize::zeroize(encoded);
            }
        }
    }
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of region to base64 master key")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut read = Read(BTreeMap::new());
            while let Some(region) = map.next_key::<String>()? {
                let mut encoded = Zeroizing::new(map.next_value::<String>()?);
                if read.0.contains_key(&region) {
                    // Named without quotes, so the message is kept (see
                    // `describe_json_error`); the line and column find it.
                    return Err(serde::de::Error::custom(
                        "master_keys names one region twice, and only one of its two master keys could be kept",
                    ));
                }
                read.0.insert(region, std::mem::take(&mut *encoded));
            }
            Ok(std::mem::take(&mut read.0))
        }
    }
    deserializer.deserialize_map(Entries)
}

impl Drop for KeyringFile {
    fn drop(&mut self) {
        for encoded in self.master_keys.values_mut() {
            zeroize::Zeroize::zeroize(encoded);
        }
    }
}

/// A keyring document, decoded and checked: every master key is the base64
/// of 32 bytes. Only its region names can be seen from outside.
pub struct Keyring {
    pub(super) file: KeyringFile,
    pub(super) keys: BTreeMap<Region, Aes256Gcm>,
}

impl Keyring {
    /// The regions that have a master key, in order.
    pub fn regions(&self) -> impl Iterator<Item = &Region> {
        self.keys.keys()
    }
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("regions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Decode and check the text of a keyring file (no I/O; public for the fuzz
/// targets). The error is one line and never holds key material: a JSON
/// data error that would echo a string from the document is replaced by a
/// generic one, and region names are escaped.
pub fn decode_keyring(text: &str) -> Result<Keyring, String> {
    let file: KeyringFile = serde_json::from_str(text).map_err(|e| describe_json_error(&e))?;
    if file.format != KEYRING_FORMAT {
        return Err(format!("unknown format {}", file.format));
    }
    let mut keys = BTreeMap::new();
    for (region, encoded) in &file.master_keys {
        let raw = Zeroizing::new(
            B64.decode(encoded)
                .map_err(|_| format!("master key for {region:?} is not base64"))?,
        );
        let cipher = Aes256Gcm::new_from_slice(&raw)
            .map_err(|_| format!("master key for {region:?} is {} bytes, not 32", raw.len()))?;
        keys.insert(Region::new(region), cipher);
    }
    Ok(Keyring { file, keys })
}

/// serde_json's message, unless it is a data error that names anything but
/// the three known fields: an invalid type quotes the value, an unknown
/// field its name, and either may be a master key (a value left where a
/// name should be, say). Those get a generic message.
fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    if e.classify() == serde_json::error::Category::Data {
        let rest = ["`format`", "`note`", "`master_keys`"]
            .iter()
            .fold(message.clone(), |rest, known| rest.replace(known, ""));
        if rest.contains(['`', '"']) {
            return format!(
                "not a keyring document (an unknown field, or a field of the wrong type, at line {} column {}; \
                 want {{\"format\": 1, \"note\": string, \"master_keys\": {{region: base64 key}}}})",
                e.line(),
                e.column()
            );
        }
    }
    format!(
        "not a keyring document ({})",
        crate::config::printable(&message)
    )
}

/// The keyring's directory, created owner-only when missing.
pub(super) fn keyring_dir(path: &Path) -> Result<PathBuf, KeyringError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        // Only the owner needs the directory that holds master keys.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| KeyringError::Write {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(dir)
}

/// Hold an exclusive lock on `<keyring>.lock` until the file drops.
pub(super) fn lock_keyring(path: &Path) -> Result<fs::File, KeyringError> {
    keyring_dir(path)?;
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let err = |source| KeyringError::Write {
        path: PathBuf::from(&name),
        source,
    };
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&name)
        .map_err(err)?;
    lock.lock().map_err(err)?;
    Ok(lock)
}

/// The file `path` names once symbolic links are followed, whether or not
/// it exists yet (at most 16 links).
pub(super) fn through_links(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    for _ in 0..16 {
        match fs::read_link(&path) {
            Ok(target) => {
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Err(_) => break,
        }
    }
    path
}

/// The keyring at `path`, checked (owner-only, well-formed); `None` when
/// the file does not exist.
pub(super) fn read_keyring(path: &Path) -> Result<Option<Keyring>, KeyringError> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KeyringError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyringError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = Zeroizing::new(
        fs::read_to_string(path).map_err(|source| KeyringError::Read {
            path: path.to_path_buf(),
            source,
        })?,
    );
    decode_keyring(&text)
        .map(Some)
        .map_err(|reason| KeyringError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })
}

/// More than the pretty JSON of `file` takes: every string six times over
/// (the longest escape, `\u0001`, is six bytes for one) and a line of
/// indentation and punctuation each.
pub(super) fn room_for(file: &KeyringFile) -> usize {
    let strings: usize = file
        .master_keys
        .iter()
        .map(|(region, key)| region.len() + key.len() + 64)
        .sum();
    6 * (strings + file.note.len()) + 256
}

pub(super) fn write_atomically(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let err = |source| KeyringError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = keyring_dir(path)?;
    // Written into a buffer with room for it all: one outgrown as it fills
    // would be freed unwiped, with master keys in it.
    let mut body = Zeroizing::new(Vec::with_capacity(room_for(file)));
    serde_json::to_writer_pretty(&mut *body, file).map_err(|e| err(std::io::Error::other(e)))?;
    // A name of its own each time: a process id repeats (a container's
    // server is often process 1 at every start), and a file left by a
    // write that was killed would then block every later one.
    let prefix = format!(
        ".{}.tmp-",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("keyring")
    );
    let tmp = dir.join(format!("{prefix}{}", uuid::Uuid::new_v4().simple()));
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    // The file it replaces keeps its owner: a tool run as root that adds a
    // region must not leave the server's keyring readable by root alone.
    // (Only root can give a file away; for anyone else this is a no-op.)
    if let Ok(old) = fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        let _ = std::os::unix::fs::fchown(&out, Some(old.uid()), Some(old.gid()));
    }
    // A write that fails (a full disk) leaves no file behind.
    if let Err(e) = out.write_all(&body).and_then(|()| out.sync_all()) {
        drop(out);
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    drop(out);
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })?;
    // The rename is durable only once the directory entry is.
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    remove_abandoned(&dir, &prefix);
    Ok(())
}

/// Temporary files of writes killed mid-way (each may hold master keys),
/// once old enough that no other process can still be writing one.
fn remove_abandoned(dir: &Path, prefix: &str) {
    const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > ABANDONED_AFTER));
        // Exactly our names: the prefix and a 32-digit hex UUID, so that
        // no other file (another keyring named like one) is touched.
        let ours = name.to_str().is_some_and(|n| {
            n.strip_prefix(prefix)
                .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if ours && old {
            let _ = fs::remove_file(entry.path());
        }
    }
}
