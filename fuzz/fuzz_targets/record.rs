//! Stored record decoding (`decode_header` and `decode_keys`, shared by the
//! stores) on arbitrary ids, versions and region -> ciphertext maps: never
//! panics, and accepts exactly what it should.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use rkms::domain::{KeyId, Region, RECORD_VERSION};
use rkms::store::{decode_header, decode_keys};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Arbitrary, Debug)]
enum Version {
    Missing,
    Current,
    Other(i64),
}

/// How a stored ciphertext is written: mostly well-formed, sometimes not.
#[derive(Arbitrary, Debug)]
enum Cipher {
    /// The base64 of these bytes, as rkms writes it.
    Encoded(Vec<u8>),
    /// Base64 with whitespace around it (decode_keys trims).
    Padded { before: u8, bytes: Vec<u8>, after: u8 },
    /// Any text at all.
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    id: String,
    version: Version,
    keys: Vec<(String, Cipher)>,
}

fuzz_target!(|input: Input| {
    let version = match input.version {
        Version::Missing => None,
        Version::Current => Some(i64::from(RECORD_VERSION)),
        Version::Other(v) => Some(v),
    };
    match decode_header(&input.id, version) {
        Ok((id, v)) => {
            assert_eq!(id.as_str(), input.id);
            assert_eq!(v.map(i64::from), version);
            assert!(v.is_none_or(|v| v == RECORD_VERSION));
        }
        Err(e) => {
            let _ = e.to_string();
            let valid_version = version.is_none_or(|v| v == i64::from(RECORD_VERSION));
            assert!(KeyId::parse(&input.id).is_err() || !valid_version);
        }
    }

    let mut stored = BTreeMap::new();
    for (region, cipher) in input.keys {
        let text = match cipher {
            Cipher::Encoded(bytes) => B64.encode(bytes),
            Cipher::Padded {
                before,
                bytes,
                after,
            } => {
                let space = |b: u8| [" ", "\t", "\n", "\r\n"][usize::from(b % 4)];
                format!("{}{}{}", space(before), B64.encode(bytes), space(after))
            }
            Cipher::Text(text) => text,
        };
        stored.insert(region, text);
    }
    // What decode_keys should do, computed independently.
    let expected: Option<BTreeMap<Region, Vec<u8>>> = if stored.is_empty() {
        None
    } else {
        stored
            .iter()
            .map(|(region, text)| match B64.decode(text.trim()) {
                Ok(raw) if !raw.is_empty() => Some((Region::new(region.as_str()), raw)),
                _ => None,
            })
            .collect()
    };
    match decode_keys(&input.id, stored) {
        Ok(decoded) => assert_eq!(Some(decoded), expected),
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(expected, None);
        }
    }
});
