//! What a config error shows: one line whatever bytes a key or value
//! holds, no terminal escape codes, and nothing that may be a secret
//! (found by a config review).

use super::*;

/// A token pasted where a variable's name or a file's path goes is not
/// echoed; nor is one given where a variant name goes under `[auth]`.
#[test]
fn a_token_pasted_in_place_of_a_name_is_not_echoed() {
    let token = "Sup3rS3cretT0kenValue-xyz";
    for field in ["token_env", "token_file"] {
        let clients = format!(r#"[{{"name":"a","{field}":"{token}","ids":["*"]}}]"#);
        let env = env(&[
            ("RKMS__AUTH__MODE", "token"),
            ("RKMS__AUTH__CLIENTS", &clients),
        ]);
        let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.key, format!("auth.clients[0].{field}"), "{text}");
        assert!(!text.contains(token), "{field}: {text}");
    }
    // A name spelt as variables are is named: the operator must know which
    // to set.
    let clients = r#"[{"name":"a","token_env":"RKMS_APP_TOKEN_UNSET","ids":["*"]}]"#;
    let unset = env(&[
        ("RKMS__AUTH__MODE", "token"),
        ("RKMS__AUTH__CLIENTS", clients),
    ]);
    let err = Settings::load_with_env(&Source::Defaults, &unset).unwrap_err();
    assert!(
        err.to_string().contains("RKMS_APP_TOKEN_UNSET is not set"),
        "{err}"
    );
    let err = Settings::load_with_env(&Source::Defaults, &env(&[("RKMS__AUTH__MODE", token)]))
        .unwrap_err();
    assert!(!err.to_string().contains(token), "{err}");
}

/// A newline, ESC or a line separator in a key or value stays escaped on
/// the error's one line.
#[test]
fn odd_bytes_in_keys_and_values_stay_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "[server]\n\"lis\\nten\" = 1\n",
        "[server]\n\"lis\\u001b[2Jten\" = 1\n",
        "[\"ser\\u2028ver\"]\nlisten = \"x\"\n",
        "[kms]\nprovider = \"lo\\u001b]0;pwned\\u0007cal\"\n",
    ] {
        let path = dir.path().join("rkms.toml");
        std::fs::write(&path, text).unwrap();
        let err = Settings::load_with_env(&Source::File(path), &[]).unwrap_err();
        let shown = err.to_string();
        assert_eq!(shown.lines().count(), 1, "{text:?}: {shown:?}");
        assert!(
            !shown.contains(|c: char| c.is_control() || crate::config::breaks_a_line(c)),
            "{text:?}: {shown:?}"
        );
    }
    let err = Settings::load_with_env(&Source::Defaults, &env(&[("RKMS__SERVER__LIS\nTEN", "1")]))
        .unwrap_err();
    assert_eq!(err.to_string().lines().count(), 1, "{err:?}");
}

/// A syntax error shows its line, unless the line holds control bytes or
/// is long (another kind of file given as the config: an env file,
/// /proc/self/environ), or names a secret.
#[test]
fn a_syntax_error_in_a_file_that_is_not_a_config_shows_no_line() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY";
    for (text, hidden) in [
        (
            format!("AWS_SECRET_ACCESS_KEY={secret}\n"),
            secret.to_string(),
        ),
        (format!("A=1\0B={secret}\0"), secret.to_string()),
        (format!("x = {}\n", "y".repeat(100_000)), "y".repeat(300)),
        ("listen = \u{1b}[2J\n".to_string(), "\u{1b}".to_string()),
    ] {
        let path = dir.path().join("rkms.toml");
        std::fs::write(&path, &text).unwrap();
        let err = Settings::load_with_env(&Source::File(path), &[]).unwrap_err();
        let shown = err.to_string();
        assert!(shown.contains("TOML syntax error"), "{shown}");
        assert!(!shown.contains(&hidden), "{shown:?}");
        assert!(shown.len() < 1_000, "{} bytes", shown.len());
    }
}

/// A structured override that is not JSON (a trailing comma, single
/// quotes) says so, naming the variable, where it said a sequence was
/// expected of what was one.
#[test]
fn a_json_mistake_in_an_override_is_named() {
    let hash = "ab".repeat(32);
    for (name, raw) in [
        (
            "RKMS__AUTH__CLIENTS",
            format!(r#"[{{"name":"a","ids":["*"],"token_sha256":"{hash}",}}]"#),
        ),
        (
            "RKMS__KMS__AWS__KEY_IDS",
            r#"{"local-1":"alias/x",}"#.to_string(),
        ),
    ] {
        let env = env(&[("RKMS__AUTH__MODE", "token"), (name, &raw)]);
        let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(name) && text.contains("not usable JSON"),
            "{text}"
        );
        assert!(!text.contains(&hash[..16]), "{text}");
    }
    // The scalar syntax's lists still read.
    let env = env(&[
        ("RKMS__KMS__REGIONS", "[local-1, local-2]"),
        ("RKMS__KMS__MIN_REGIONS_ON_CREATE", "1"),
    ]);
    let settings = Settings::load_with_env(&Source::Defaults, &env).unwrap();
    assert_eq!(settings.kms.regions, ["local-1", "local-2"]);
}
