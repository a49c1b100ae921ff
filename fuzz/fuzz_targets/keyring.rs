//! Decoding of the local KMS keyring document (`decode_keyring`, what
//! `LocalKms::open` does with the file's text) on any UTF-8 text: never
//! panics; an error is one line and never contains a master key from the
//! document; an accepted document is a format-1 keyring whose regions are
//! exactly its `master_keys`, each the base64 of 32 bytes.
#![no_main]

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use rkms::domain::Region;
use rkms::kms::local::decode_keyring;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match decode_keyring(text) {
        Err(message) => {
            assert!(
                !message.chars().any(char::is_control),
                "error is not one line: {message:?}"
            );
            for key in key_like_values(text) {
                assert!(
                    !message.contains(key),
                    "error quotes the master key {key:?}: {message:?}"
                );
            }
        }
        Ok(keyring) => {
            let doc: serde_json::Value =
                serde_json::from_str(text).expect("an accepted keyring is JSON");
            let doc = doc.as_object().expect("an accepted keyring is an object");
            assert_eq!(doc.len(), 3, "only format, note and master_keys");
            assert_eq!(doc["format"], serde_json::json!(1));
            assert!(doc["note"].is_string());
            let keys = doc["master_keys"].as_object().expect("master_keys is an object");
            let want: Vec<Region> = keys.keys().map(|r| Region::new(r.as_str())).collect();
            let mut want = want;
            want.sort();
            let got: Vec<Region> = keyring.regions().cloned().collect();
            assert_eq!(got, want);
            for encoded in keys.values() {
                let encoded = encoded.as_str().expect("a master key is a string");
                assert_eq!(B64.decode(encoded).map(|k| k.len()).ok(), Some(32));
            }
            let shown = format!("{keyring:?}");
            for encoded in keys.values().filter_map(|v| v.as_str()) {
                assert!(!shown.contains(encoded), "Debug shows a master key");
            }
        }
    }
});

/// Runs of base64 characters in `text` that decode to exactly 32 bytes (a
/// master key's shape), except those used as a name anywhere (followed by
/// `"` and `:`): region and field names may be quoted in errors.
fn key_like_values(text: &str) -> Vec<&str> {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    let mut found = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), '\0')]) {
        match (is_b64(c) && i < text.len(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                let run = &text[s..i];
                if run.len() >= 43 && B64.decode(run).map(|k| k.len()) == Ok(32) {
                    found.push(run);
                }
                start = None;
            }
            _ => {}
        }
    }
    found.retain(|run| !used_as_name(text, run));
    found
}

fn used_as_name(text: &str, run: &str) -> bool {
    text.match_indices(run).any(|(at, _)| {
        let rest = &text[at + run.len()..];
        rest.strip_prefix('"')
            .is_some_and(|r| r.trim_start().starts_with(':'))
    })
}
