//! Config mistakes that stop a start in one line naming the key: spellings
//! of environment overrides, values that would be ignored unseen, names
//! and paths that could never work, and plain HTTP or no authentication
//! off loopback unless said so.

use super::*;

/// A JSON override that names a field twice is refused, as the same in
/// the file is: the last entry won, and could widen a client unseen.
#[test]
fn a_json_override_naming_a_field_twice_is_refused() {
    let hash = "11".repeat(32);
    let clients =
        format!(r#"[{{"name":"a","ids":["billing/*"],"ids":["*"],"token_sha256":"{hash}"}}]"#);
    let env = env(&[
        ("RKMS__AUTH__MODE", "token"),
        ("RKMS__AUTH__CLIENTS", &clients),
    ]);
    let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
    assert_eq!(err.key, "auth.clients", "{err}");
    let text = err.to_string();
    assert!(text.contains(r#"names "ids" twice"#), "{text}");
    assert!(text.contains("RKMS__AUTH__CLIENTS"), "{text}");
    assert!(!text.contains(&hash), "{text}");
}

/// Near misses of the override prefix are refused, naming the variable,
/// where they were ignored and the file's value used unseen; two
/// spellings of one key are refused, where the one listed last won.
#[test]
fn misspelt_and_doubled_overrides_are_refused() {
    for name in [
        "rkms__server__listen",
        "Rkms__SERVER__LISTEN",
        "RKMS_SERVER_LISTEN",
        "RKMS_CACHE_TTL_SECONDS",
        // Found by a review: ignored, so a mistyped store and keyring path
        // started an empty store, and an existing id got a new key.
        "RKMS_STORE_SQLITE_PATH",
        "RKMS_KMS_LOCAL_KEYRING",
        "RKMS_CACHE__TTL_SECONDS",
        "RKMS_CACHE_TTL__SECONDS",
        "RKMS_SERVER_TLS__CERT",
        "RKMS_SERVER_TLS_CLIENT_CRL",
        "RKMS_SERVER_METRICS_LISTEN",
    ] {
        let err = Settings::load_with_env(&Source::Defaults, &env(&[(name, "1")])).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains("is not read"),
            "{name}: {text}"
        );
    }
    let err = Settings::load_with_env(
        &Source::Defaults,
        &env(&[("RKMS_STORE_SQLITE__PATH", "elsewhere.sqlite3")]),
    )
    .unwrap_err();
    assert_eq!(err.key, "store.sqlite.path", "{err}");
    // A variable of the app's own that only starts like one is left alone,
    // and so is one that spells a table, not a setting.
    for name in [
        "RKMS_AUTH_TOKEN",
        "RKMS_TOKEN",
        "RKMS_CONFIG",
        "RKMS_LOG",
        "RKMS_SERVER",
        "rkms_store",
        "RKMS_SERVER_TLS",
        "RKMS_SERVICE_HOST",
        "RKMS_PORT_8080_TCP",
    ] {
        Settings::load_with_env(&Source::Defaults, &env(&[(name, "x")])).unwrap();
    }
    let err = Settings::load_with_env(
        &Source::Defaults,
        &env(&[
            ("RKMS__SERVER__LISTEN", "127.0.0.1:1"),
            ("RKMS__server__listen", "127.0.0.1:2"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.key, "server.listen", "{err}");
    assert!(
        err.to_string()
            .contains("two environment variables, RKMS__SERVER__LISTEN and RKMS__server__listen"),
        "{err}"
    );
}

/// RUST_LOG that is not a filter stops the start naming it (it was
/// dropped for log.level unseen); a blank one counts as unset.
#[test]
fn rust_log_must_be_a_filter_when_set() {
    let err =
        Settings::load_with_env(&Source::Defaults, &env(&[("RUST_LOG", "garbage[[")])).unwrap_err();
    assert_eq!(err.key, "RUST_LOG", "{err}");
    for ok in ["", " ", "debug", "rkms=debug,hyper=warn"] {
        Settings::load_with_env(&Source::Defaults, &env(&[("RUST_LOG", ok)])).unwrap();
    }
}

/// Stale keys come from the cache: with the cache off, a stale window
/// would be ignored unseen.
#[test]
fn stale_keys_need_the_cache() {
    let err = Settings::from_toml("[cache]\nttl_seconds = 0\nstale_if_error_seconds = 3600\n")
        .unwrap_err();
    assert_eq!(err.key, "cache.stale_if_error_seconds", "{err}");
    Settings::from_toml("[cache]\nttl_seconds = 0\nstale_if_error_seconds = 0\n").unwrap();
}

/// A region name too long for the records and the local keyring is a
/// config error; it passed, and every wrap in that region failed.
#[test]
fn an_overlong_region_name_is_refused() {
    let long = "r".repeat(300);
    let err = Settings::from_toml(&format!(
        "[kms]\nregions = [\"{long}\", \"local-2\"]\nmin_regions_on_create = 1\n"
    ))
    .unwrap_err();
    assert_eq!(err.key, "kms.regions", "{err}");
    assert!(err.to_string().contains("300 bytes"), "{err}");
}

/// In mtls mode two clients whose names differ only in letter case would
/// match the same certificates: refused.
#[test]
fn mtls_client_names_differing_only_in_case_are_refused() {
    let text = |a: &str, b: &str| {
        format!(
            "[server.tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n[auth]\nmode = \"mtls\"\n\
             [[auth.clients]]\nname = \"{a}\"\nids = [\"*\"]\n[[auth.clients]]\nname = \"{b}\"\nids = [\"*\"]\n"
        )
    };
    let err = Settings::from_toml(&text("billing", "BILLING")).unwrap_err();
    assert_eq!(err.key, "auth.clients[1].name", "{err}");
    assert!(err.to_string().contains("auth.clients[0]"), "{err}");
    let err = Settings::from_toml(&text("spiffe://td/a", "SPIFFE://TD/a")).unwrap_err();
    assert_eq!(err.key, "auth.clients[1].name", "{err}");
    // A URI's path keeps its case.
    Settings::from_toml(&text("spiffe://td/a", "spiffe://td/A")).unwrap();
    // A URI without an authority: its scheme alone.
    let err = Settings::from_toml(&text("urn:example:billing", "URN:example:billing")).unwrap_err();
    assert_eq!(err.key, "auth.clients[1].name", "{err}");
    Settings::from_toml(&text("urn:example:billing", "urn:EXAMPLE:billing")).unwrap();
    assert_eq!(
        crate::config::certificate_name("Web.Example"),
        "web.example"
    );
}

/// A path with a control character is refused naming its key; it was
/// printed raw, splitting the one-line error (or cutting it at a NUL).
#[test]
fn paths_with_control_characters_are_refused() {
    for (text, key) in [
        ("[kms.local]\nkeyring = \"data/k\\n.json\"\n", "kms.local.keyring"),
        ("[store.sqlite]\npath = \"data/a\\u0000b\"\n", "store.sqlite.path"),
        (
            "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\nids = [\"*\"]\ntoken_file = \"t\\n\"\n",
            "auth.clients[0].token_file",
        ),
    ] {
        let err = Settings::from_toml(text).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(!err.to_string().contains(['\n', '\0']), "{err}");
    }
}

/// An override with an empty part names no setting as written: refused,
/// where it was applied without saying it came from the environment.
#[test]
fn an_override_with_an_empty_part_is_refused() {
    for name in ["RKMS__SERVER__LISTEN__", "RKMS__SERVER____LISTEN"] {
        let err =
            Settings::load_with_env(&Source::Defaults, &env(&[(name, "1.2.3.4:5")])).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
    }
}

/// Nor a token pasted where its hash should go, unquoted or with its
/// closing quote missing, nor one pasted on a line of its own: only
/// runs of hex digits were taken out, and these lines were shown whole.
#[test]
fn toml_syntax_errors_never_echo_a_pasted_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rkms.toml");
    let token = "tok_9fK2LmQp7RzX8vW1-Super+Secret/Value";
    for (text, shown) in [
        (
            format!("[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{token}\n"),
            " 3 | token_sha256 = [REDACTED]",
        ),
        (
            format!("[[auth.clients]]\nname = \"app\"\ntoken_sha256 = {token}\n"),
            " 3 | token_sha256 = [REDACTED]",
        ),
        (
            format!("[auth]\nmode = \"token\"\n{token}\n"),
            " 3 | [REDACTED]",
        ),
        (
            format!("[server]\nlisten = \"127.0.0.1:8080\"\n{token}\n"),
            " 3 | [REDACTED]",
        ),
        (
            format!("auth.clients = [{{ name = \"a\", token_sha256 = {token} }}]\n"),
            " 1 | auth.clients = [REDACTED]",
        ),
    ] {
        std::fs::write(&path, &text).unwrap();
        let err = Settings::load_with_env(&Source::File(path.clone()), &[]).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("TOML syntax error"), "{message}");
        assert!(message.contains(shown), "{message}");
        assert!(!message.contains("Secret"), "a token echoed: {message}");
    }
}

#[test]
fn unauthenticated_is_allowed_off_loopback_only_when_said_so() {
    let text = "[server]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n[auth]\nallow_unauthenticated = true\n";
    let s = Settings::from_toml(text).unwrap();
    assert_eq!(s.auth.mode, AuthMode::None);
    assert!(Settings::from_toml("[server]\nlisten = \"[::1]:8080\"\n").is_ok());
    let err = Settings::from_toml("[server]\nlisten = \"[::]:8080\"\n").unwrap_err();
    assert_eq!(err.key, "auth.mode");
}

#[test]
fn plain_http_is_allowed_off_loopback_only_when_said_so() {
    let token = "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\nids = [\"*\"]\n";
    // Tokens and data keys in the clear on the network: refused, naming the key.
    for listen in [
        "0.0.0.0:8080",
        "[::]:8080",
        "10.0.0.7:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        let err =
            Settings::from_toml(&format!("[server]\nlisten = \"{listen}\"\n{token}")).unwrap_err();
        assert_eq!(err.key, "server.listen", "{listen}: {err}");
        assert!(err.to_string().contains("server.allow_plaintext"), "{err}");
    }
    // On loopback, or said so, it is accepted.
    assert!(
        Settings::from_toml(&format!("[server]\nlisten = \"127.0.0.1:8080\"\n{token}")).is_ok()
    );
    assert!(Settings::from_toml(&format!("[server]\nlisten = \"[::1]:8080\"\n{token}")).is_ok());
    let s = Settings::from_toml(&format!(
        "[server]\nlisten = \"0.0.0.0:8080\"\nallow_plaintext = true\n{token}"
    ))
    .unwrap();
    assert!(s.server.allow_plaintext);
}

/// The files rkms makes: a directory named for one (`.`, a path cut
/// short), or one file for both, is refused naming the key (`serve` then
/// advised `chmod 600` on the directory, or left an empty database where
/// the keyring belongs).
#[test]
fn a_keyring_or_store_path_that_cannot_be_its_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let file = dir.path().join("both").to_str().unwrap().to_owned();
    for (pairs, key) in [
        (vec![("RKMS__KMS__LOCAL__KEYRING", d)], "kms.local.keyring"),
        (vec![("RKMS__STORE__SQLITE__PATH", d)], "store.sqlite.path"),
        (
            vec![
                ("RKMS__KMS__LOCAL__KEYRING", file.as_str()),
                ("RKMS__STORE__SQLITE__PATH", file.as_str()),
            ],
            "kms.local.keyring",
        ),
    ] {
        let err = Settings::load_with_env(&Source::Defaults, &env(&pairs)).unwrap_err();
        assert_eq!(err.key, key, "{err}");
    }
}
