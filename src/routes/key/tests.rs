//! Tests of the `/key` handler: query decoding and the key body.

use super::*;
use proptest::prelude::*;

proptest! {
    /// Any valid id, form-encoded as a client library would, parses
    /// back to exactly itself.
    #[test]
    fn encoded_ids_round_trip(id in "[^\\p{Cc}]{1,64}", create in proptest::bool::ANY) {
        prop_assume!(id.len() <= 512);
        let query = serde_urlencoded::to_string([("id", id.as_str()), ("create", if create { "true" } else { "false" })]).unwrap();
        let parsed = parse_query(Some(&query)).unwrap();
        prop_assert_eq!(parsed.id.as_str(), id.as_str());
        prop_assert_eq!(parsed.create, create);
    }

    /// The body's id is written as serde_json writes it, byte for
    /// byte, whatever the id holds (ASCII ids take a faster path),
    /// but for characters that break a line, written as `\uXXXX`.
    #[test]
    fn key_bodies_encode_any_id_as_serde_json_does(id in "[ -~]{1,64}|[^\\p{Cc}]{1,32}", key in proptest::collection::vec(any::<u8>(), 32)) {
        use base64::Engine;
        let response = key_response(&id, &DataKey::from_bytes(Zeroizing::new(key.clone())));
        let body = futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 16)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(v["id"].as_str(), Some(id.as_str()));
        prop_assert_eq!(v["key"].as_str().map(str::to_owned), Some(base64::engine::general_purpose::STANDARD.encode(&key)));
        let serde = serde_json::to_vec(&serde_json::json!({"id": id, "key": v["key"]})).unwrap();
        let breaks = crate::telemetry::audit::breaks_a_line;
        if id.contains(breaks) {
            let text = String::from_utf8_lossy(&body).into_owned();
            prop_assert!(!text.contains(breaks), "{}", text);
        } else {
            prop_assert_eq!(body.to_vec(), serde);
        }
    }

    /// Arbitrary query strings never panic, and whatever parses is a
    /// valid id.
    #[test]
    fn any_query_is_parsed_or_refused(raw in "[a-z=&%+0-9A-F\\x00-\\x7f\\u{80}-\\u{10ffff}]{0,80}") {
        if let Ok(q) = parse_query(Some(&raw)) {
            prop_assert!(KeyId::parse(q.id.as_str()).is_ok());
        }
    }

    /// Decoding gives what a byte-at-a-time decoder gives, for any
    /// text: the same bytes, or a refusal where it refuses.
    #[test]
    fn components_decode_as_byte_at_a_time(raw in "[a%+0-9A-Fa-gz\\x00-\\x7f\\u{80}-\\u{10ffff}]{0,40}") {
        let input = raw.as_bytes();
        let mut expected = Some(Vec::new());
        let mut i = 0;
        while let (Some(out), Some(&b)) = (expected.as_mut(), input.get(i)) {
            match b {
                b'+' => out.push(b' '),
                b'%' => match input.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    Some(h) => {
                        out.push(u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap());
                        i += 2;
                    }
                    None => expected = None,
                },
                b => out.push(b),
            }
            i += 1;
        }
        let expected = expected.and_then(|out| String::from_utf8(out).ok());
        prop_assert_eq!(decode_component(&raw).ok().map(|c| c.into_owned()), expected);
    }

    /// Two different byte strings never decode to the same id.
    #[test]
    fn distinct_encodings_of_distinct_bytes_stay_distinct(a in proptest::collection::vec(any::<u8>(), 1..16), b in proptest::collection::vec(any::<u8>(), 1..16)) {
        let enc = |bytes: &[u8]| format!("id={}", bytes.iter().map(|x| format!("%{x:02X}")).collect::<String>());
        if let (Ok(x), Ok(y)) = (parse_query(Some(&enc(&a))), parse_query(Some(&enc(&b)))) {
            prop_assert_eq!(a == b, x.id == y.id);
        }
    }
}

/// The 200 body is written by hand: it must be JSON for any id, and
/// carry the key whole for every allowed key size.
#[tokio::test]
async fn key_bodies_are_json_for_any_id_and_key_size() {
    use base64::Engine;
    for (id, len) in [
        ("a", 16),
        ("quo\"te\\back/é ✓", 32),
        ("tab\u{7f}", 33),
        ("x", 64),
    ] {
        let key = DataKey::random(len);
        let response = key_response(id, &key);
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], id);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(v["key"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, key.expose(), "{len}");
    }
}

#[test]
fn query_parsing_is_strict() {
    let ok = parse_query(Some("id=a%2Fb&create=false")).unwrap();
    assert_eq!(ok.id.as_str(), "a/b");
    assert!(!ok.create);
    assert!(parse_query(Some("id=x")).unwrap().create);
    // U+FFFD sent as valid UTF-8 is an id of its own, and `+` is a space.
    assert_eq!(
        parse_query(Some("id=%EF%BF%BD")).unwrap().id.as_str(),
        "\u{FFFD}"
    );
    assert_eq!(parse_query(Some("id=a+b%2B")).unwrap().id.as_str(), "a b+");
    assert_eq!(
        parse_query(Some("id=a&&create=0")).unwrap().id.as_str(),
        "a"
    );
    for bad in [
        None,
        Some(""),
        Some("id="),
        Some("id=a&id=b"),
        Some("id=a&create=maybe"),
        Some("id=a&foo=1"),
        Some("id=a%0Ab"),
        Some("id=x%FF"),
        Some("id=x%FE"),
        Some("id=%C3"),
        Some("id=a%2"),
        Some("id=a%zz"),
        Some("id=a%+5"),
        Some("id=a%-1"),
        Some("id=a&cre%FFate=1"),
    ] {
        assert!(
            matches!(parse_query(bad), Err(ApiError::BadRequest(_))),
            "{bad:?}"
        );
    }
}
