//! `KeyId::parse` on any UTF-8 text: never panics, and accepts exactly the
//! non-empty ids of at most `MAX_ID_BYTES` bytes with no control character,
//! unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkms::domain::{KeyId, KeyIdError, MAX_ID_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let first_control = raw.char_indices().find(|(_, c)| c.is_control()).map(|(at, _)| at);
    match KeyId::parse(raw) {
        Ok(id) => {
            assert!(!raw.is_empty() && raw.len() <= MAX_ID_BYTES && first_control.is_none());
            assert_eq!(id.as_str(), raw);
            assert_eq!(id.to_string(), raw);
            assert_eq!(KeyId::parse(id.as_str()).as_ref(), Ok(&id));
            let _ = format!("{id:?}");
        }
        Err(KeyIdError::Empty) => assert!(raw.is_empty()),
        Err(KeyIdError::TooLong(n)) => assert!(n == raw.len() && n > MAX_ID_BYTES),
        Err(KeyIdError::ControlCharacter(at)) => {
            assert!(!raw.is_empty() && raw.len() <= MAX_ID_BYTES);
            assert_eq!(Some(at), first_control);
        }
    }
});
