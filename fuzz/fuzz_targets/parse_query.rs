//! The strict `/key` query parser on any UTF-8 query string: never panics;
//! an accepted id is a valid `KeyId`, and encoding the parsed query again
//! (form-urlencoded, as a client would) parses back to the same query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rkms::domain::KeyId;
use rkms::routes::parse_query;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let query = match parse_query(Some(raw)) {
        Ok(query) => query,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let id = KeyId::parse(query.id.as_str()).expect("an accepted id is a valid KeyId");
    assert_eq!(id, query.id);

    let encoded = form_urlencoded::Serializer::new(String::new())
        .append_pair("id", query.id.as_str())
        .append_pair("create", if query.create { "true" } else { "false" })
        .finish();
    let again = parse_query(Some(&encoded))
        .unwrap_or_else(|e| panic!("re-encoded query {encoded:?} is refused: {e}"));
    assert_eq!(again, query, "re-encoded as {encoded:?}");

    // The id alone, as most clients send it: `create` defaults to true.
    let id_only = form_urlencoded::Serializer::new(String::new())
        .append_pair("id", query.id.as_str())
        .finish();
    let again = parse_query(Some(&id_only))
        .unwrap_or_else(|e| panic!("re-encoded query {id_only:?} is refused: {e}"));
    assert_eq!(again.id, query.id);
    assert!(again.create);
});
