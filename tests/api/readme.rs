//! The README's curl examples are the real output, byte for byte (key
//! order included); only the random key itself differs.

use crate::helpers::*;

/// `(path and query, expected body)` for every `$ curl -s '…'` line in a
/// console block of the README, with the line that follows it.
fn examples() -> Vec<(String, String)> {
    let readme = include_str!("../../README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let mut found = Vec::new();
    for pair in lines.windows(2) {
        let Some(rest) = pair[0].strip_prefix("$ curl -s 'http://127.0.0.1:8080") else {
            continue;
        };
        let path = rest.strip_suffix('\'').expect("a quoted URL");
        found.push((path.to_string(), pair[1].to_string()));
    }
    found
}

/// The body with the value of `"key"` replaced, and that value.
fn without_key(body: &str) -> (String, Option<String>) {
    let Some(start) = body.find("\"key\":\"") else {
        return (body.to_string(), None);
    };
    let value_start = start + "\"key\":\"".len();
    let len = body[value_start..].find('"').unwrap();
    let key = body[value_start..value_start + len].to_string();
    (
        format!("{}KEY{}", &body[..value_start], &body[value_start + len..]),
        Some(key),
    )
}

#[tokio::test]
async fn the_readme_examples_are_what_the_server_answers() {
    let examples = examples();
    assert!(examples.len() >= 4, "{examples:?}");
    let app = spawn_app().await;
    let mut keys = std::collections::HashMap::new();
    for (path, expected) in examples {
        let body = crate::common::get_text(&app.client, &format!("{}{path}", app.base)).await;
        let (got, key) = without_key(&body);
        let (want, readme_key) = without_key(&expected);
        assert_eq!(got, want, "README example for {path}");
        if let (Some(key), Some(readme_key)) = (key, readme_key) {
            assert_eq!(key.len(), readme_key.len(), "{path}");
            // The same id answers the same key, in the README and here.
            let first = keys.entry(path.clone()).or_insert_with(|| key.clone());
            assert_eq!(*first, key, "{path}");
        }
    }
}
