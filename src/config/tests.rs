//! Config parsing and validation: every key named in its error.

use super::*;

fn hash_of(token: &str) -> TokenHash {
    use sha2::Digest as _;
    TokenHash(sha2::Sha256::digest(token.as_bytes()).into())
}

#[test]
fn defaults_are_valid_and_match_the_documented_embedded_default() {
    let defaults = Settings::default();
    defaults.validate().unwrap();
    let shipped = Settings::from_toml(include_str!("../../config.toml")).unwrap();
    assert_eq!(
        shipped, defaults,
        "config.toml must document the built-in defaults"
    );
}

#[test]
fn unknown_keys_are_errors_naming_the_key() {
    let err = Settings::from_toml("[server]\nlisten_addr = \"x\"\n").unwrap_err();
    assert_eq!(err.key, "server.listen_addr");
    let err = Settings::from_toml("[nope]\n").unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn bad_values_name_the_key() {
    let cases = [
        ("[server]\nlisten = \"localhost\"", "server.listen"),
        ("[server]\nmetrics_listen = \"9090\"", "server.metrics_listen"),
        // One port for both listeners: serve could not bind the second.
        ("[server]\nlisten = \"0.0.0.0:8080\"\nmetrics_listen = \"0.0.0.0:8080\"", "server.metrics_listen"),
        ("[server]\nlisten = \"0.0.0.0:8080\"\nmetrics_listen = \"127.0.0.1:8080\"", "server.metrics_listen"),
        ("[server]\nlisten = \"[::1]:8080\"\nmetrics_listen = \"[::]:8080\"", "server.metrics_listen"),
        ("[kms]\nmin_regions_on_create = 4", "kms.min_regions_on_create"),
        ("[kms]\nregions = []", "kms.regions"),
        ("[kms]\nregions = [\"a\", \"a\"]", "kms.regions"),
        ("[kms]\nprovider = \"gcp\"", "kms.provider"),
        ("[kms]\nprovider = \"aws\"\nregions = [\"us-east-1\"]\nmin_regions_on_create = 1", "kms.aws.key_ids.us-east-1"),
        (
            "[kms]\nprovider = \"aws\"\nregions = [\"r1\"]\nmin_regions_on_create = 1\n[kms.aws.key_ids]\nr1 = \"alias/x\"\n[kms.aws.endpoints]\nr1 = \"localhost:4566\"",
            "kms.aws.endpoints.r1",
        ),
        (
            "[kms]\nprovider = \"aws\"\nregions = [\"r1\"]\nmin_regions_on_create = 1\n[kms.aws]\nattempt_timeout_ms = 5000\n[kms.aws.key_ids]\nr1 = \"alias/x\"",
            "kms.aws.attempt_timeout_ms",
        ),
        // Two regions' ARNs swapped, and a key id with a newline in it.
        (
            "[kms]\nprovider = \"aws\"\nregions = [\"us-east-1\", \"us-west-2\"]\nmin_regions_on_create = 1\n[kms.aws.key_ids]\nus-east-1 = \"arn:aws:kms:us-west-2:1:key/b\"\nus-west-2 = \"arn:aws:kms:us-east-1:1:key/a\"",
            "kms.aws.key_ids.us-east-1",
        ),
        (
            "[kms]\nprovider = \"aws\"\nregions = [\"us-east-1\"]\nmin_regions_on_create = 1\n[kms.aws.key_ids]\nus-east-1 = \"alias/a\\nalias/b\"",
            "kms.aws.key_ids.us-east-1",
        ),
        ("[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\ntable = \"\"", "store.dynamodb.table"),
        ("[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\nregion = \"\"", "store.dynamodb.region"),
        ("[store.dynamodb]\nendpoint = \"ftp://x\"\n[store]\nbackend = \"dynamodb\"", "store.dynamodb.endpoint"),
        ("[keys]\ndata_key_bytes = 8", "keys.data_key_bytes"),
        ("[server]\nmax_uri_bytes = 70000", "server.max_uri_bytes"),
        ("[kms]\ncall_timeout_ms = -1", "kms.call_timeout_ms"),
        ("[log]\nlevel = \"loud\"", "log.level"),
        ("[auth]\nenabled = true", "auth.enabled"),
        ("[auth]\nmode = \"token\"", "auth.clients"),
        ("[auth]\nmode = \"basic\"", "auth.mode"),
        ("[server]\nlisten = \"0.0.0.0:8080\"", "auth.mode"),
        (
            "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"00zz\"\nids = [\"a/*\"]",
            "auth.clients[0].token_sha256",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\nids = [\"a/*\"]\n[[auth.clients]]\nname = \"b\"\ntoken_sha256 = \"{h}\"\nids = [\"b/*\"]", h = "ab".repeat(32)),
            "auth.clients[1].token",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nprefixes = [\"a/\"]", "ab".repeat(32)),
            "auth.clients[0].prefixes",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nids = [\"a*b\"]", "ab".repeat(32)),
            "auth.clients[0].ids[0]",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"", "ab".repeat(32)),
            "auth.clients[0].ids",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"Unauthenticated\"\ntoken_sha256 = \"{}\"\nids = [\"*\"]", "ab".repeat(32)),
            "auth.clients[0].name",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \" anonymous\"\ntoken_sha256 = \"{}\"\nids = [\"*\"]", "ab".repeat(32)),
            "auth.clients[0].name",
        ),
        (
            &format!("[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\ntoken_env = \"X\"\nids = [\"*\"]", "ab".repeat(32)),
            "auth.clients[0].token_sha256",
        ),
        (
            "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_env = \"RKMS_TEST_UNSET_TOKEN\"\nids = [\"*\"]",
            "auth.clients[0].token_env",
        ),
        (
            "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"a\"\ntoken_file = \"/nonexistent/token\"\nids = [\"*\"]",
            "auth.clients[0].token_file",
        ),
        (
            &format!("[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nids = [\"*\"]", "ab".repeat(32)),
            "auth.clients",
        ),
        ("[auth]\nmode = \"mtls\"\n[[auth.clients]]\nname = \"a\"\nids = [\"*\"]", "server.tls.client_ca"),
        ("[server.tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_ca = \"/ca\"\n[auth]\nmode = \"mtls\"\n[[auth.clients]]\nname = \"billing/web\"\nids = [\"*\"]", "auth.clients[0].name"),
        ("[server.tls]\ncert = \"/c.pem\"", "server.tls.key"),
        ("[server.tls]\nclient_ca = \"/ca.pem\"", "server.tls.cert"),
        ("[server.tls]\ncert = \"/c\"\nkey = \"/k\"\nclient_crl = \"/ca.crl\"", "server.tls.client_crl"),
        ("[server]\nmax_concurrent_requests = 0", "server.max_concurrent_requests"),
        ("[server]\nmax_connections = 0", "server.max_connections"),
        ("[store]\ncall_timeout_ms = 4000000000000", "store.call_timeout_ms"),
        ("[cache]\nstale_if_error_seconds = 9223372036854775807", "cache.stale_if_error_seconds"),
        ("[server]\nshutdown_grace_ms = 86400001", "server.shutdown_grace_ms"),
        ("[server]\npreflight = \"maybe\"", "server.preflight"),
        ("[kms.aws.key_ids]\nus_east_1 = \"alias/x\"", "kms.aws.key_ids.us_east_1"),
        ("[store]\nbackend = \"memory\"", "store.backend"),
        ("[kms]\nhedge_budget_percent = 101", "kms.hedge_budget_percent"),
        ("[kms]\nmax_in_flight_per_region = 0", "kms.max_in_flight_per_region"),
    ];
    for (text, key) in cases {
        let err = Settings::from_toml(text).unwrap_err();
        assert_eq!(err.key, key, "for {text:?}: {err}");
        assert!(!err.to_string().contains('\n'), "one line: {err}");
    }
}

#[test]
fn env_overrides_win_and_are_validated() {
    let env = vec![
        (
            "RKMS__SERVER__LISTEN".to_string(),
            "127.0.0.2:9999".to_string(),
        ),
        ("RKMS__CACHE__TTL_SECONDS".to_string(), "7".to_string()),
        (
            "RKMS__KMS__REGIONS".to_string(),
            "[\"a\", \"b\"]".to_string(),
        ),
        ("UNRELATED".to_string(), "1".to_string()),
    ];
    let s = Settings::load_with_env(&Source::Defaults, &env).unwrap();
    assert_eq!(s.server.listen.to_string(), "127.0.0.2:9999");
    assert_eq!(s.cache.ttl_seconds, 7);
    assert_eq!(s.kms.regions, vec!["a", "b"]);

    let env = vec![("RKMS__CACHE__TTL_SECONDS".to_string(), "soon".to_string())];
    let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
    assert_eq!(err.key, "cache.ttl_seconds", "{err}");
    assert!(
        err.to_string()
            .contains("set by the environment variable RKMS__CACHE__TTL_SECONDS"),
        "{err}"
    );

    let env = vec![("RKMS__SERVER__LISTN".to_string(), "x".to_string())];
    let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn structured_values_come_from_the_environment_as_json() {
    let vars = env(&[
        ("RKMS__KMS__PROVIDER", "aws"),
        ("RKMS__KMS__REGIONS", r#"["us-east-1","us-west-2"]"#),
        (
            "RKMS__KMS__AWS__KEY_IDS",
            r#"{"us-east-1":"alias/rkms","us-west-2":"alias/rkms-west"}"#,
        ),
        ("RKMS__AUTH__MODE", "token"),
        (
            "RKMS__AUTH__CLIENTS",
            r#"[{"name":"app","token_env":"APP_TOKEN","ids":["app/*"],"create":true,"requests_per_second":50}]"#,
        ),
        ("APP_TOKEN", "app-token-0123456789abcdef\n"),
    ]);
    let s = Settings::load_with_env(&Source::Defaults, &vars).unwrap();
    assert_eq!(s.kms.aws.key_ids["us-west-2"], "alias/rkms-west");
    let app = &s.auth.clients[0];
    assert_eq!(app.name, "app");
    assert!(app.create);
    assert_eq!(app.requests_per_second, 50);
    assert_eq!(app.ids, vec![IdPattern::parse("app/*").unwrap()]);
    // The trailing newline of a Secret is not part of the token.
    assert_eq!(app.resolved, vec![hash_of("app-token-0123456789abcdef")]);
}

/// A map set from the environment replaces the file's whole: a region
/// left out of it is gone, not kept from the file (which then failed as a
/// region not listed, blamed on the variable).
#[test]
fn a_map_from_the_environment_replaces_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rkms.toml");
    std::fs::write(
        &path,
        "[kms]\nprovider = \"aws\"\nregions = [\"us-east-1\", \"us-west-2\"]\n[kms.aws.key_ids]\nus-east-1 = \"alias/a\"\nus-west-2 = \"alias/b\"\n",
    )
    .unwrap();
    let vars = env(&[
        ("RKMS__KMS__REGIONS", r#"["us-east-1"]"#),
        ("RKMS__KMS__MIN_REGIONS_ON_CREATE", "1"),
        ("RKMS__KMS__AWS__KEY_IDS", r#"{"us-east-1":"alias/c"}"#),
    ]);
    let s = Settings::load_with_env(&Source::File(path.clone()), &vars).unwrap();
    assert_eq!(
        s.kms.aws.key_ids.iter().collect::<Vec<_>>(),
        [(&"us-east-1".to_string(), &"alias/c".to_string())]
    );

    // Any other table given as JSON is merged into the file's by key, and
    // a child variable wins over its parent in either order.
    std::fs::write(
        &path,
        "[server.tls]\ncert = \"/c1\"\nkey = \"/k1\"\nclient_ca = \"/ca\"\n",
    )
    .unwrap();
    let parent = ("RKMS__SERVER__TLS", r#"{"cert":"/c2","key":"/k2"}"#);
    let child = ("RKMS__SERVER__TLS__KEY", "/k3");
    for vars in [env(&[parent, child]), env(&[child, parent])] {
        let s = Settings::load_with_env(&Source::File(path.clone()), &vars).unwrap();
        let tls = &s.server.tls;
        assert_eq!(
            (
                tls.cert.as_deref(),
                tls.key.as_deref(),
                tls.client_ca.as_deref()
            ),
            (
                Some(std::path::Path::new("/c2")),
                Some(std::path::Path::new("/k3")),
                Some(std::path::Path::new("/ca"))
            )
        );
    }
}

#[test]
fn a_map_key_naming_no_configured_region_is_rejected_under_every_provider() {
    for provider in ["local", "aws"] {
        let vars = env(&[
            ("RKMS__KMS__PROVIDER", provider),
            ("RKMS__KMS__REGIONS", r#"["us-east-1"]"#),
            ("RKMS__KMS__MIN_REGIONS_ON_CREATE", "1"),
            ("RKMS__KMS__AWS__KEY_IDS__US_EAST_1", "alias/rkms"),
        ]);
        let err = Settings::load_with_env(&Source::Defaults, &vars).unwrap_err();
        assert_eq!(err.key, "kms.aws.key_ids.us_east_1", "{provider}: {err}");
        let text = err.to_string();
        assert!(text.contains("did you mean \"us-east-1\""), "{text}");
        assert!(text.contains("RKMS__KMS__AWS__KEY_IDS='{"), "{text}");
        assert!(
            text.contains("RKMS__KMS__AWS__KEY_IDS__US_EAST_1"),
            "{text}"
        );
    }
}

#[test]
fn a_bad_client_list_in_the_environment_never_echoes_a_secret() {
    let hash = "cd".repeat(32);
    let cases = [
        // A wrong type for a field next to the hash.
        format!(r#"[{{"name":"app","token_sha256":"{hash}","ids":"app/*"}}]"#),
        // An unknown field.
        format!(r#"[{{"name":"app","token_sha256":"{hash}","ids":["*"],"tokn":1}}]"#),
        // A hash of the wrong length.
        format!(
            r#"[{{"name":"app","token_sha256":"{}","ids":["*"]}}]"#,
            &hash[..60]
        ),
        // Not JSON at all.
        format!("[{{name = app, token_sha256 = {hash}"),
    ];
    for clients in cases {
        let vars = env(&[
            ("RKMS__AUTH__MODE", "token"),
            ("RKMS__AUTH__CLIENTS", &clients),
        ]);
        let err = Settings::load_with_env(&Source::Defaults, &vars).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("config error: auth"), "{text}");
        assert!(!text.contains(&hash[..40]), "secret echoed: {text}");
        assert!(text.contains("RKMS__AUTH__CLIENTS"), "{text}");
    }
}

#[test]
fn toml_syntax_errors_give_file_line_and_the_line_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rkms.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:8080\"\nrequest_timeout_ms = = 5\n",
    )
    .unwrap();
    let err = Settings::load_with_env(&Source::File(path.clone()), &[]).unwrap_err();
    assert_eq!(err.key, format!("{}:3:22", path.display()), "{err}");
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].contains("TOML syntax error"), "{text}");
    assert_eq!(lines[1], " 3 | request_timeout_ms = = 5");
    assert_eq!(lines[2], "   |                      ^");
    assert!(!text.contains("``"), "{text}");
}

/// A syntax error on a line holding a token hash shows the line with the
/// hash taken out: README promises secrets never appear in these messages.
#[test]
fn toml_syntax_errors_never_echo_a_token_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rkms.toml");
    let hash = hex::encode(hash_of("a-token-0123456789abcdef").0);
    std::fs::write(
        &path,
        format!("[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{hash}\" x\n"),
    )
    .unwrap();
    let err = Settings::load_with_env(&Source::File(path.clone()), &[]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("TOML syntax error"), "{text}");
    assert!(text.contains(" 3 | token_sha256 = [REDACTED]"), "{text}");
    assert!(!text.contains(&hash[..32]), "a hash echoed: {text}");
}

#[test]
fn tokens_from_files_are_hashed_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "file-token-0123456789abcdef\n").unwrap();
    let text = format!(
        "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"app\"\ntoken_file = \"{}\"\nids = [\"*\"]\n",
        token.display()
    );
    let s = Settings::from_toml(&text).unwrap();
    assert_eq!(
        s.auth.clients[0].resolved,
        vec![hash_of("file-token-0123456789abcdef")]
    );
    // Several tokens, one per line (a rotation's overlap); blank lines and
    // spaces around a token are ignored.
    std::fs::write(
        &token,
        "\nnew-token-0123456789abcdef\n  file-token-0123456789abcdef \n\n",
    )
    .unwrap();
    let two = Settings::from_toml(&text).unwrap();
    assert_eq!(
        two.auth.clients[0].resolved,
        vec![
            hash_of("new-token-0123456789abcdef"),
            hash_of("file-token-0123456789abcdef")
        ]
    );
    // A file emptied to revoke the client's tokens stays so through a
    // restart: the client starts with none, and the others are served.
    std::fs::write(&token, "\n \n").unwrap();
    assert!(Settings::from_toml(&text).unwrap().auth.clients[0]
        .resolved
        .is_empty());
    // A byte-order mark is no part of the token.
    std::fs::write(&token, "\u{feff}file-token-0123456789abcdef\r\n").unwrap();
    assert_eq!(
        Settings::from_toml(&text).unwrap().auth.clients[0].resolved,
        vec![hash_of("file-token-0123456789abcdef")]
    );
    // Not a regular file (a FIFO would block every later read, /dev/zero
    // never end), too large, or too many tokens: refused, naming why.
    std::fs::remove_file(&token).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(&token)
        .status()
        .unwrap()
        .success());
    let err = Settings::from_toml(&text).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    std::fs::remove_file(&token).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &token).unwrap();
    let err = Settings::from_toml(&text).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    std::fs::remove_file(&token).unwrap();
    let many: String = (0..17)
        .map(|n| format!("token-number-{n:04}-abcdef\n"))
        .collect();
    std::fs::write(&token, many).unwrap();
    let err = Settings::from_toml(&text).unwrap_err();
    assert!(err.to_string().contains("more than 16"), "{err}");
    std::fs::write(&token, "x".repeat(70_000)).unwrap();
    let err = Settings::from_toml(&text).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
    std::fs::write(&token, "file-token-0123456789abcdef\n").unwrap();
    let shown = s.redacted_toml();
    assert!(!shown.contains("file-token-0123456789abcdef"), "{shown}");
    assert!(!format!("{s:?}").contains("file-token"));
    // Too short a token is refused, naming the source and not the token.
    std::fs::write(&token, "short").unwrap();
    let err = Settings::from_toml(&text).unwrap_err();
    assert_eq!(err.key, "auth.clients[0].token_file");
    assert!(!err.to_string().contains("short\""), "{err}");
}

#[test]
fn redacted_output_hides_token_hashes() {
    let text = format!(
        "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{}\"\nids = [\"app/*\"]\n",
        "ab".repeat(32)
    );
    let s = Settings::from_toml(&text).unwrap();
    let shown = s.redacted_toml();
    assert!(!shown.contains(&"ab".repeat(32)));
    assert!(shown.contains("REDACTED"));
    assert!(!format!("{s:?}").contains(&"ab".repeat(32)));
    // What check-config prints loads again as the same settings.
    let reloaded =
        Settings::from_toml(&shown.replace("\"[REDACTED]\"", &format!("\"{}\"", "ab".repeat(32))))
            .unwrap();
    assert_eq!(reloaded, s);
}

mod echo;
mod refusals;
