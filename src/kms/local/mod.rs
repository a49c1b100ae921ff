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
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use async_trait::async_trait;
use base64::Engine;
use rand::RngCore;
use zeroize::Zeroizing;

mod held;
mod keyring;

pub use self::keyring::{decode_keyring, Keyring, KeyringError};
use self::keyring::{
    lock_keyring, read_keyring, through_links, write_atomically, KeyringFile, KEYRING_FORMAT,
};
use super::{Context, Kms, KmsError, KmsErrorKind, Wrapped};
use crate::domain::{DataKey, Region, CONTEXT_KEY};

const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub struct LocalKms {
    keys: BTreeMap<Region, Aes256Gcm>,
    /// As configured (not through its links).
    path: PathBuf,
    /// Whether the file still holds the master keys: checked before a key
    /// is wrapped and at readiness.
    held: held::Held,
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
        // Checked later as configured: a link pointed at another file since
        // (a Secret mount's update) is followed to it.
        let configured = path.to_path_buf();
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
        let held = held::Held::new(path, &file, true);
        tracing::warn!(
            keyring = %path.display(),
            "kms provider \"local\" keeps master keys in a local file: for development only, not for production"
        );
        Ok(Self {
            keys,
            path: configured,
            held,
        })
    }

    /// Open the keyring at `path` as it is, for commands that must change
    /// nothing: a missing file is an error, and a region it lacks has no
    /// master key (calls for it fail as misconfigured).
    pub fn open_existing(path: &Path) -> Result<Self, KeyringError> {
        let Keyring { keys, file } = read_keyring(path)?.ok_or_else(|| KeyringError::Missing {
            path: path.to_path_buf(),
        })?;
        Ok(Self {
            keys,
            path: path.to_path_buf(),
            held: held::Held::new(path, &file, false),
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

    /// `Misconfigured` when the keyring file no longer holds the master
    /// keys: a key wrapped now could be unwrapped only while this process
    /// lives, so none is, until the file is restored.
    fn still_held(&self, region: &Region, op: &'static str) -> Result<(), KmsError> {
        self.held.still_in(&self.path).map_err(|why| {
            KmsError::new(
                KmsErrorKind::Misconfigured,
                region,
                op,
                format!(
                    "the keyring {} {why} while rkms ran: its master keys are now only in this process; \
                     restore the file from a backup (or copy it from another rkms, readable by this one): \
                     creates go on once it holds them again",
                    self.path.display()
                ),
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
        self.still_held(region, op)?;
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
        self.still_held(region, "check_key")?;
        Ok(format!("master key for {region} in the local keyring"))
    }
}

#[cfg(test)]
mod tests;
