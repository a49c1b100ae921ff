//! Development KMS: one random 256-bit master key per region, kept in a local
//! keyring file, AES-256-GCM with the encryption context as associated data.
//! It exists so `cargo run` works with no cloud account; it is not a KMS
//! (the master keys sit on the same disk as the data), and says so at start.
//!
//! Ciphertext format, version 1:
//! `0x01 | region length (u8) | region | nonce (12) | AES-GCM ciphertext+tag`.
//! The region is in the associated data too, so a ciphertext decrypts only
//! in the region that made it, as with a real KMS.
//!
//! Must not: overwrite or regenerate an existing master key.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{Context, Kms, KmsError, KmsErrorKind, Wrapped};
use crate::domain::{DataKey, Region, CONTEXT_KEY};

const FORMAT_VERSION: u8 = 1;
const KEYRING_FORMAT: u32 = 1;
const NONCE_LEN: usize = 12;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

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
struct KeyringFile {
    format: u32,
    note: String,
    /// Region -> base64 master key.
    master_keys: BTreeMap<String, String>,
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
    file: KeyringFile,
    keys: BTreeMap<Region, Aes256Gcm>,
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
        keys.insert(Region::new(region.clone()), cipher);
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
    let mut one_line = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            one_line.extend(c.escape_default());
        } else {
            one_line.push(c);
        }
    }
    format!("not a keyring document ({one_line})")
}

pub struct LocalKms {
    keys: BTreeMap<Region, Aes256Gcm>,
    path: PathBuf,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("path", &self.path)
            .field("regions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl LocalKms {
    /// Open the keyring at `path`, creating it if missing and adding a master
    /// key for every region it lacks. Existing keys are never changed; an
    /// unreadable, corrupt or group/world-readable keyring is an error.
    ///
    /// Several processes may open one keyring at once (two rkms sharing a
    /// data directory): the read-modify-write runs under an exclusive lock
    /// on `<keyring>.lock`, so a first start never writes over keys another
    /// process has just created and is already using.
    pub fn open(path: &Path, regions: &[Region]) -> Result<Self, KeyringError> {
        // Through a symbolic link: the file it names is the keyring, and a
        // new master key must reach it, not replace the link.
        let path = &through_links(path);
        let _lock = lock_keyring(path)?;
        let Keyring { mut file, mut keys } = read_keyring(path)?.unwrap_or_else(|| Keyring {
            file: KeyringFile {
                format: KEYRING_FORMAT,
                note: "rkms development keyring: master keys for the local KMS. Not for production. Losing this file loses every key it wraps.".into(),
                master_keys: BTreeMap::new(),
            },
            keys: BTreeMap::new(),
        });

        let mut added = false;
        for region in regions {
            if !file.master_keys.contains_key(region.as_str()) {
                let mut key = Zeroizing::new([0u8; 32]);
                rand::rngs::OsRng.fill_bytes(key.as_mut());
                file.master_keys
                    .insert(region.to_string(), B64.encode(key.as_ref()));
                keys.insert(region.clone(), Aes256Gcm::new(key.as_ref().into()));
                added = true;
            }
        }

        if added {
            write_atomically(path, &file)?;
        }
        tracing::warn!(
            keyring = %path.display(),
            "kms provider \"local\" keeps master keys in a local file: for development only, not for production"
        );
        Ok(Self {
            keys,
            path: path.to_path_buf(),
        })
    }

    /// Open the keyring at `path` as it is, for commands that must change
    /// nothing: a missing file is an error, and a region it lacks has no
    /// master key (calls for it fail as misconfigured).
    pub fn open_existing(path: &Path) -> Result<Self, KeyringError> {
        let Keyring { keys, .. } = read_keyring(path)?.ok_or_else(|| KeyringError::Missing {
            path: path.to_path_buf(),
        })?;
        Ok(Self {
            keys,
            path: path.to_path_buf(),
        })
    }

    /// Whether the keyring holds any master key (could have wrapped keys).
    pub fn has_master_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether the keyring holds a master key for `region`.
    pub fn has_master_key(&self, region: &Region) -> bool {
        self.keys.contains_key(region)
    }

    /// Which of `regions` the keyring at `path` has no master key for;
    /// `None` when there is no keyring file. Reads only.
    pub fn lacking(path: &Path, regions: &[Region]) -> Result<Option<Vec<Region>>, KeyringError> {
        Ok(read_keyring(path)?.map(|keyring| {
            regions
                .iter()
                .filter(|r| !keyring.keys.contains_key(*r))
                .cloned()
                .collect()
        }))
    }

    fn cipher(&self, region: &Region, op: &'static str) -> Result<&Aes256Gcm, KmsError> {
        self.keys.get(region).ok_or_else(|| {
            KmsError::new(
                KmsErrorKind::Misconfigured,
                region,
                op,
                format!("no master key for region {region} in the keyring"),
            )
        })
    }

    fn seal(
        &self,
        region: &Region,
        key: &[u8],
        context: Context<'_>,
        op: &'static str,
    ) -> Result<Wrapped, KmsError> {
        let cipher = self.cipher(region, op)?;
        let region_bytes = region.as_str().as_bytes();
        let region_len = u8::try_from(region_bytes.len()).map_err(|_| {
            KmsError::new(
                KmsErrorKind::Misconfigured,
                region,
                op,
                "region name longer than 255 bytes",
            )
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = associated_data(region, context);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                KmsError::new(KmsErrorKind::Other, region, op, "AES-GCM encryption failed")
            })?;
        let mut out = Vec::with_capacity(2 + region_bytes.len() + NONCE_LEN + sealed.len());
        out.push(FORMAT_VERSION);
        out.push(region_len);
        out.extend_from_slice(region_bytes);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Wrapped {
            ciphertext: out,
            key_arn: format!("local:{region}"),
        })
    }
}

/// The associated data binds region and context; `Legacy` binds the region only.
fn associated_data(region: &Region, context: Context<'_>) -> Vec<u8> {
    let mut aad = Vec::new();
    aad.extend_from_slice(region.as_str().as_bytes());
    aad.push(0);
    if let Context::Bound(id) = context {
        let map: BTreeMap<&str, &str> = [(CONTEXT_KEY, id.as_str())].into();
        aad.extend_from_slice(serde_json::to_string(&map).unwrap_or_default().as_bytes());
    }
    aad
}

/// The keyring's directory, created owner-only when missing.
fn keyring_dir(path: &Path) -> Result<PathBuf, KeyringError> {
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
fn lock_keyring(path: &Path) -> Result<fs::File, KeyringError> {
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
fn through_links(path: &Path) -> PathBuf {
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
fn read_keyring(path: &Path) -> Result<Option<Keyring>, KeyringError> {
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

fn write_atomically(path: &Path, file: &KeyringFile) -> Result<(), KeyringError> {
    let err = |source| KeyringError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = keyring_dir(path)?;
    let body =
        Zeroizing::new(serde_json::to_vec_pretty(file).map_err(|e| err(std::io::Error::other(e)))?);
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("keyring"),
        std::process::id()
    ));
    {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        out.write_all(&body).map_err(err)?;
        out.sync_all().map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(e)
    })?;
    // The rename is durable only once the directory entry is.
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(err)?;
    Ok(())
}

#[async_trait]
impl Kms for LocalKms {
    async fn generate_data_key(
        &self,
        region: &Region,
        bytes: usize,
        context: Context<'_>,
    ) -> Result<(DataKey, Wrapped), KmsError> {
        let key = DataKey::random(bytes);
        let wrapped = self.seal(region, key.expose(), context, "generate_data_key")?;
        Ok((key, wrapped))
    }

    async fn encrypt(
        &self,
        region: &Region,
        key: &DataKey,
        context: Context<'_>,
    ) -> Result<Wrapped, KmsError> {
        self.seal(region, key.expose(), context, "encrypt")
    }

    async fn decrypt(
        &self,
        region: &Region,
        ciphertext: &[u8],
        context: Context<'_>,
    ) -> Result<DataKey, KmsError> {
        const OP: &str = "decrypt";
        let cipher = self.cipher(region, OP)?;
        let invalid =
            |why: &str| KmsError::new(KmsErrorKind::Integrity, region, OP, why.to_string());
        let (&version, rest) = ciphertext
            .split_first()
            .ok_or_else(|| invalid("empty ciphertext"))?;
        if version != FORMAT_VERSION {
            return Err(invalid("unknown ciphertext format"));
        }
        let (&region_len, rest) = rest
            .split_first()
            .ok_or_else(|| invalid("truncated ciphertext"))?;
        let region_len = usize::from(region_len);
        if rest.len() < region_len + NONCE_LEN {
            return Err(invalid("truncated ciphertext"));
        }
        let (made_in, rest) = rest.split_at(region_len);
        if made_in != region.as_str().as_bytes() {
            return Err(invalid("ciphertext was made in another region"));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let aad = associated_data(region, context);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| {
                invalid("ciphertext does not authenticate under this key and encryption context")
            })?;
        Ok(DataKey::from_bytes(Zeroizing::new(plain)))
    }

    async fn check_key(&self, region: &Region) -> Result<String, KmsError> {
        self.cipher(region, "check_key")?;
        Ok(format!("master key for {region} in the local keyring"))
    }
}

#[cfg(test)]
mod tests;
