//! Config parsing and validation: every key named in its error.

use super::*;

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
        ("[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\ntable = \"\"", "store.dynamodb.table"),
        ("[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\nregion = \"\"", "store.dynamodb.region"),
        ("[store.dynamodb]\nendpoint = \"ftp://x\"\n[store]\nbackend = \"dynamodb\"", "store.dynamodb.endpoint"),
        ("[keys]\ndata_key_bytes = 8", "keys.data_key_bytes"),
        ("[kms]\ncall_timeout_ms = -1", "kms.call_timeout_ms"),
        ("[log]\nlevel = \"loud\"", "log.level"),
        ("[auth]\nenabled = true", "auth.clients"),
        (
            "[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"00zz\"\nprefixes = [\"a/\"]",
            "auth.clients.0.token_sha256",
        ),
        (
            &format!("[[auth.clients]]\nname = \"a\"\ntoken_sha256 = \"{h}\"\nprefixes = [\"a/\"]\n[[auth.clients]]\nname = \"b\"\ntoken_sha256 = \"{h}\"\nprefixes = [\"b/\"]", h = "ab".repeat(32)),
            "auth.clients[1].token_sha256",
        ),
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
            "0.0.0.0:9999".to_string(),
        ),
        ("RKMS__CACHE__TTL_SECONDS".to_string(), "7".to_string()),
        (
            "RKMS__KMS__REGIONS".to_string(),
            "[\"a\", \"b\"]".to_string(),
        ),
        ("UNRELATED".to_string(), "1".to_string()),
    ];
    let s = Settings::load_with_env(&Source::Defaults, &env).unwrap();
    assert_eq!(s.server.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(s.cache.ttl_seconds, 7);
    assert_eq!(s.kms.regions, vec!["a", "b"]);

    let env = vec![("RKMS__CACHE__TTL_SECONDS".to_string(), "soon".to_string())];
    let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
    assert_eq!(err.key, "cache.ttl_seconds", "{err}");

    let env = vec![("RKMS__SERVER__LISTN".to_string(), "x".to_string())];
    let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");
}

#[test]
fn redacted_output_hides_token_hashes() {
    let text = format!(
        "[auth]\nenabled = true\n[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{}\"\nprefixes = [\"app/\"]\n",
        "ab".repeat(32)
    );
    let s = Settings::from_toml(&text).unwrap();
    let shown = s.redacted_toml();
    assert!(!shown.contains(&"ab".repeat(32)));
    assert!(shown.contains("REDACTED"));
    assert!(!format!("{s:?}").contains(&"ab".repeat(32)));
}
