//! Domain types: validated key ids, data keys that cannot leak, regions and
//! the stored record. Nothing here does I/O.
//!
//! Must not: do I/O, or print key bytes in any Debug or Display.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use zeroize::{Zeroize, Zeroizing};

/// Longest id accepted, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 512;

/// Record format written by rkms: ciphertexts bound to `{"rkms:id": id}`.
pub const RECORD_VERSION: u32 = 2;

/// The encryption-context key that binds a ciphertext to its id.
pub const CONTEXT_KEY: &str = "rkms:id";

/// A key id as the client names it. Parsing is the only way to build one.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyIdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {0} bytes long; the limit is {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("id contains a control character at byte {0}")]
    ControlCharacter(usize),
}

impl KeyId {
    pub fn parse(raw: &str) -> Result<Self, KeyIdError> {
        if raw.is_empty() {
            return Err(KeyIdError::Empty);
        }
        if raw.len() > MAX_ID_BYTES {
            return Err(KeyIdError::TooLong(raw.len()));
        }
        // An ASCII id (the usual one) is checked a byte at a time: its
        // control characters are the ASCII ones.
        let control = if raw.is_ascii() {
            raw.bytes().position(|b| b.is_ascii_control())
        } else {
            raw.char_indices()
                .find(|(_, c)| c.is_control())
                .map(|(at, _)| at)
        };
        if let Some(at) = control {
            return Err(KeyIdError::ControlCharacter(at));
        }
        Ok(Self(raw.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({:?})", self.0)
    }
}

/// A KMS region name (or a local keyring's region label). Shared, not
/// copied, when cloned: a cache miss clones its regions about seven times
/// (the race between regions, the breaker, the answer's source).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(Arc<str>);

impl Region {
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.0)
    }
}

/// Plaintext data key. The bytes are wiped when the value drops, and neither
/// `Debug` nor any error ever prints them. They live on the heap, written
/// in place: moving a `DataKey` (through results, channels and tasks)
/// copies a pointer, never the key, so no unwiped copy is left behind.
pub struct DataKey {
    bytes: Zeroizing<Vec<u8>>,
}

impl DataKey {
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Self {
        Self { bytes }
    }

    /// `len` fresh bytes from the operating system's CSPRNG.
    pub fn random(len: usize) -> Self {
        use rand::RngCore;
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self { bytes }
    }

    pub fn expose(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
        #[cfg(test)]
        test_support::record_drop(&self.bytes);
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DataKey([REDACTED; {} bytes])", self.len())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WIPED_DROPS: AtomicUsize = AtomicUsize::new(0);

    /// Called from `DataKey::drop` after wiping: counts drops whose buffer
    /// really is all zeros, so tests can observe eviction without reading
    /// freed memory.
    pub(crate) fn record_drop(bytes: &[u8]) {
        if bytes.iter().all(|b| *b == 0) {
            WIPED_DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn wiped_drops() -> usize {
        WIPED_DROPS.load(Ordering::SeqCst)
    }
}

/// The stored form of one data key: one KMS ciphertext per region.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    /// Region -> raw KMS ciphertext of the data key.
    pub keys: BTreeMap<Region, Vec<u8>>,
    /// `Some(2)`: ciphertexts bound to `{"rkms:id": id}`. `None`: a record
    /// written by RKMS (Go), whose ciphertexts carry no encryption context.
    pub version: Option<u32>,
    /// Region -> ARN of the KMS key that wrapped the data key.
    pub key_ids: BTreeMap<Region, String>,
    /// RFC 3339 creation time; RKMS (Go) records have none.
    pub created_at: Option<String>,
}

impl KeyRecord {
    /// Whether decrypts must pass the id's encryption context.
    pub fn bound_to_id(&self) -> bool {
        self.version.is_some()
    }

    /// Whether `other` still wraps the key this record wraps, as far as
    /// ciphertexts show: they share a region at least, and every region
    /// both hold has the same ciphertext. A record deleted and written
    /// again with another key shares none.
    pub fn same_key_as(&self, other: &KeyRecord) -> bool {
        let mut shared = self
            .keys
            .iter()
            .filter_map(|(r, c)| other.keys.get(r).map(|o| o == c))
            .peekable();
        shared.peek().is_some() && shared.all(|same| same)
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &self.id)
            .field("regions", &self.keys.keys().collect::<Vec<_>>())
            .field("version", &self.version)
            .field("key_ids", &self.key_ids)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The current time as RFC 3339, for `created_at`.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record is the same key's as long as every region both hold has the
    /// same ciphertext and they share one: regions added or removed do not
    /// change that, another ciphertext in a shared region does.
    #[test]
    fn same_key_as_compares_the_shared_regions() {
        let record = |keys: &[(&str, &[u8])]| KeyRecord {
            id: KeyId::parse("k").unwrap(),
            keys: keys
                .iter()
                .map(|(r, c)| (Region::new(*r), c.to_vec()))
                .collect(),
            version: Some(RECORD_VERSION),
            key_ids: BTreeMap::new(),
            created_at: None,
        };
        let read = record(&[("a", b"1"), ("b", b"2")]);
        assert!(read.same_key_as(&record(&[("a", b"1"), ("b", b"2"), ("c", b"3")])));
        assert!(read.same_key_as(&record(&[("b", b"2")])));
        assert!(!read.same_key_as(&record(&[("a", b"1"), ("b", b"9")])));
        assert!(!read.same_key_as(&record(&[("c", b"3")])));
        assert!(!read.same_key_as(&record(&[])));
    }

    #[test]
    fn key_id_accepts_utf8_up_to_the_limit() {
        assert!(KeyId::parse("a").is_ok());
        assert!(KeyId::parse("tenant/öß/日本").is_ok());
        assert!(KeyId::parse(&"x".repeat(MAX_ID_BYTES)).is_ok());
    }

    #[test]
    fn key_id_rejects_bad_input() {
        assert_eq!(KeyId::parse(""), Err(KeyIdError::Empty));
        assert_eq!(
            KeyId::parse(&"x".repeat(MAX_ID_BYTES + 1)),
            Err(KeyIdError::TooLong(MAX_ID_BYTES + 1))
        );
        // Multi-byte characters count in bytes, not characters.
        assert!(matches!(
            KeyId::parse(&"é".repeat(257)),
            Err(KeyIdError::TooLong(514))
        ));
        assert_eq!(KeyId::parse("ab\ncd"), Err(KeyIdError::ControlCharacter(2)));
        assert!(KeyId::parse("\u{7f}").is_err());
        assert!(KeyId::parse("a\u{0085}").is_err());
    }

    #[test]
    fn data_key_debug_hides_bytes() {
        let key = DataKey::from_bytes(Zeroizing::new(vec![0xAB; 32]));
        let shown = format!("{key:?}");
        assert!(!shown.contains("171") && !shown.to_lowercase().contains("ab, "));
        assert!(shown.contains("REDACTED"));
    }

    /// Every allowed size (`keys.data_key_bytes`, 16 to 64) keeps its bytes.
    #[test]
    fn keys_of_every_allowed_size_keep_their_bytes() {
        for len in [16, 31, 32, 33, 48, 64] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5A).collect();
            let key = DataKey::from_bytes(Zeroizing::new(bytes.clone()));
            assert_eq!(key.expose(), &bytes[..], "{len}");
            assert_eq!(key.len(), len);
            let random = DataKey::random(len);
            assert_eq!(random.len(), len);
            assert_ne!(random.expose(), &vec![0u8; len][..], "{len}");
        }
        assert_eq!(
            format!("{:?}", DataKey::random(48)),
            "DataKey([REDACTED; 48 bytes])"
        );
    }

    #[test]
    fn random_keys_differ_and_have_the_requested_length() {
        let a = DataKey::random(32);
        let b = DataKey::random(32);
        assert_eq!(a.len(), 32);
        assert_ne!(a.expose(), b.expose());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever parses satisfies every invariant; whatever satisfies
        /// them parses, unchanged.
        #[test]
        fn key_id_parse_matches_its_rules(raw in "\\PC{0,200}|[\\x00-\\x7f]{0,20}|.{500,520}|\\PC{0,20}[\\x00-\\x1f\\x7f-\\u{9f}]\\PC{0,20}") {
            let valid = !raw.is_empty() && raw.len() <= MAX_ID_BYTES && !raw.chars().any(char::is_control);
            match KeyId::parse(&raw) {
                Ok(id) => {
                    prop_assert!(valid);
                    prop_assert_eq!(id.as_str(), raw.as_str());
                }
                // The first control character, at its byte offset, whether
                // the id is ASCII (checked a byte at a time) or not.
                Err(KeyIdError::ControlCharacter(at)) => prop_assert_eq!(
                    raw.char_indices().find(|(_, c)| c.is_control()).map(|(at, _)| at),
                    Some(at)
                ),
                Err(_) => prop_assert!(!valid),
            }
        }
    }
}
