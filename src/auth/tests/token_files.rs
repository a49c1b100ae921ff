//! Tokens read from files, re-read while rkms runs, and configured hashes
//! that must never work as tokens.

use super::*;

/// A client's token file is re-read while rkms runs: a rotation that adds
/// the new token on a second line, then removes the old one, applies with
/// no restart, and a connection that authenticated with the old token is
/// checked again after the change. A file that goes bad, or that would
/// give two clients one token, changes nothing.
#[test]
fn token_files_are_re_read_and_a_rotation_applies_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    std::fs::write(file("app"), "old-token-0123456789abcdef\n").unwrap();
    std::fs::write(file("ops"), "ops-token-0123456789abcdef\n").unwrap();
    let from_file = |name: &str| AuthClient {
        name: name.into(),
        token_file: Some(file(name)),
        resolved: crate::config::token_file_hashes(&file(name), &[]).unwrap(),
        ids: vec![IdPattern::Any],
        ..AuthClient::default()
    };
    let auth = Authenticator::new(&AuthSettings {
        mode: AuthMode::Token,
        clients: vec![from_file("app"), from_file("ops")],
        ..AuthSettings::default()
    });
    assert!(auth.has_token_files());
    let conn = Remembered::default();
    let who = |token: &str, conn: Option<&Remembered>| {
        auth.authenticate_on(&with_auth(&format!("Bearer {token}")), None, conn)
            .map(|i| i.name().to_string())
    };
    assert_eq!(
        who("old-token-0123456789abcdef", Some(&conn)).unwrap(),
        "app"
    );

    // Overlap: both tokens name the client.
    std::fs::write(
        file("app"),
        "new-token-0123456789abcdef\nold-token-0123456789abcdef\n",
    )
    .unwrap();
    auth.reload_token_files();
    assert_eq!(who("new-token-0123456789abcdef", None).unwrap(), "app");
    assert_eq!(
        who("old-token-0123456789abcdef", Some(&conn)).unwrap(),
        "app"
    );

    // The old token removed: refused, on the connection that used it too.
    std::fs::write(file("app"), "new-token-0123456789abcdef\n").unwrap();
    auth.reload_token_files();
    assert_eq!(
        who("old-token-0123456789abcdef", Some(&conn)).unwrap_err(),
        AuthFailure::Unknown
    );
    assert_eq!(who("new-token-0123456789abcdef", None).unwrap(), "app");

    // A bad file (too short a token, or gone) keeps the tokens in use.
    std::fs::write(file("app"), "short\n").unwrap();
    auth.reload_token_files();
    assert_eq!(who("new-token-0123456789abcdef", None).unwrap(), "app");
    std::fs::remove_file(file("app")).unwrap();
    auth.reload_token_files();
    assert_eq!(who("new-token-0123456789abcdef", None).unwrap(), "app");

    // Another client's token: that change is not taken, and the other
    // clients' changes still are.
    std::fs::write(file("app"), "ops-token-0123456789abcdef\n").unwrap();
    std::fs::write(
        file("ops"),
        "ops-token-0123456789abcdef\nops-next-0123456789abcdef\n",
    )
    .unwrap();
    auth.reload_token_files();
    assert_eq!(who("ops-token-0123456789abcdef", None).unwrap(), "ops");
    assert_eq!(who("ops-next-0123456789abcdef", None).unwrap(), "ops");
    assert_eq!(who("new-token-0123456789abcdef", None).unwrap(), "app");
}

/// Emptying a client's token file revokes its tokens, on the keep-alive
/// connection that used them too, but only once two reads in a row find it
/// empty: a file caught empty in the middle of a rewrite (truncated, then
/// filled) at one read locks nobody out, nor does one empty, then
/// unreadable, then empty. A token written again is taken at once, and a
/// restart keeps the revocation.
#[test]
fn an_emptied_token_file_revokes_at_the_second_empty_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app");
    std::fs::write(&path, "app-token-0123456789abcdef\n").unwrap();
    // Started (or restarted) on the file as it is.
    let start = || {
        Authenticator::new(&AuthSettings {
            mode: AuthMode::Token,
            clients: vec![AuthClient {
                name: "app".into(),
                token_file: Some(path.clone()),
                resolved: crate::config::token_file_hashes(&path, &[]).unwrap(),
                ids: vec![IdPattern::Any],
                ..AuthClient::default()
            }],
            ..AuthSettings::default()
        })
    };
    let auth = start();
    let conn = Remembered::default();
    let who = |token: &str| {
        auth.authenticate_on(&with_auth(&format!("Bearer {token}")), None, Some(&conn))
            .map(|i| i.name().to_string())
    };
    assert_eq!(who("app-token-0123456789abcdef").unwrap(), "app");

    // Caught half-written once: nothing changes.
    std::fs::write(&path, "").unwrap();
    auth.reload_token_files();
    assert_eq!(who("app-token-0123456789abcdef").unwrap(), "app");
    std::fs::write(&path, "app-token-0123456789abcdef\n").unwrap();
    auth.reload_token_files();
    std::fs::write(&path, " \n\n").unwrap();
    auth.reload_token_files();
    assert_eq!(who("app-token-0123456789abcdef").unwrap(), "app");

    // Still empty at the next read: revoked.
    auth.reload_token_files();
    assert_eq!(
        who("app-token-0123456789abcdef").unwrap_err(),
        AuthFailure::Unknown
    );
    auth.reload_token_files();
    assert_eq!(
        who("app-token-0123456789abcdef").unwrap_err(),
        AuthFailure::Unknown
    );

    // A new token is taken at its first read.
    std::fs::write(&path, "new-token-0123456789abcdef\n").unwrap();
    auth.reload_token_files();
    assert_eq!(who("new-token-0123456789abcdef").unwrap(), "app");
    assert_eq!(
        who("app-token-0123456789abcdef").unwrap_err(),
        AuthFailure::Unknown
    );

    // A file gone (or unreadable) is not an empty one: nothing changes,
    // and an empty read after it is the first of a new count.
    std::fs::remove_file(&path).unwrap();
    auth.reload_token_files();
    auth.reload_token_files();
    assert_eq!(who("new-token-0123456789abcdef").unwrap(), "app");
    std::fs::write(&path, "").unwrap();
    auth.reload_token_files();
    std::fs::remove_file(&path).unwrap();
    auth.reload_token_files();
    std::fs::write(&path, "").unwrap();
    auth.reload_token_files();
    assert_eq!(who("new-token-0123456789abcdef").unwrap(), "app");
    auth.reload_token_files();
    assert_eq!(
        who("new-token-0123456789abcdef").unwrap_err(),
        AuthFailure::Unknown
    );

    // Restarted on the emptied file: the client has no token; a token
    // written later is taken at its first read.
    let restarted = start();
    let bearer = |token: &str| with_auth(&format!("Bearer {token}"));
    restarted.reload_token_files();
    assert_eq!(
        restarted
            .authenticate(&bearer("new-token-0123456789abcdef"), None)
            .unwrap_err(),
        AuthFailure::Unknown
    );
    std::fs::write(&path, "next-token-0123456789abcdef\n").unwrap();
    restarted.reload_token_files();
    assert!(restarted
        .authenticate(&bearer("next-token-0123456789abcdef"), None)
        .is_ok());
}

/// A configured `token_sha256` written into another client's token file
/// (in any mix of cases), or hashed again into another client's
/// `token_sha256`, is not taken: the hash, which may be shown or committed,
/// would otherwise let anyone who read it in as that client. Refused at
/// start, and on a re-read the client's tokens stay.
#[test]
fn a_configured_hash_never_works_as_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app");
    let ops_hash = crate::auth::token_digest("ops-token-0123456789abcdef");
    let config = |path: &std::path::Path| {
        format!(
            "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"ops\"\ntoken_sha256 = \"{ops_hash}\"\nids = [\"*\"]\n[[auth.clients]]\nname = \"app\"\ntoken_file = \"{}\"\nids = [\"*\"]\n",
            path.display()
        )
    };
    let mixed: String = ops_hash
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect();
    for line in [
        ops_hash.clone(),
        ops_hash.to_ascii_uppercase(),
        mixed.clone(),
    ] {
        std::fs::write(&path, format!("app-token-0123456789abcdef\n{line}\n")).unwrap();
        let err = crate::config::Settings::from_toml(&config(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth.clients[1].token_file:"), "{err}");
        assert!(err.contains("holds auth.clients[0].token_sha256"), "{err}");
        assert!(!err.to_ascii_lowercase().contains(&ops_hash), "{err}");
    }

    // Hashed again into another client's token_sha256 (`rkms hash-token`
    // run on the hash): refused too.
    let rehashed = crate::auth::token_digest(&ops_hash);
    let text = format!(
        "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"ops\"\ntoken_sha256 = \"{ops_hash}\"\nids = [\"*\"]\n[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{rehashed}\"\nids = [\"*\"]\n"
    );
    let err = crate::config::Settings::from_toml(&text)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "auth.clients[1].token_sha256: is the SHA-256 of auth.clients[0].token_sha256"
        ),
        "{err}"
    );

    std::fs::write(&path, "app-token-0123456789abcdef\n").unwrap();
    let settings = crate::config::Settings::from_toml(&config(&path)).unwrap();
    let auth = Authenticator::new(&settings.auth);
    let who = |token: &str| {
        auth.authenticate(&with_auth(&format!("Bearer {token}")), None)
            .map(|i| i.name().to_string())
    };
    assert_eq!(who("app-token-0123456789abcdef").unwrap(), "app");
    std::fs::write(&path, format!("{}\n", ops_hash.to_ascii_uppercase())).unwrap();
    auth.reload_token_files();
    assert_eq!(
        who(&ops_hash.to_ascii_uppercase()).unwrap_err(),
        AuthFailure::Unknown
    );
    assert_eq!(who("app-token-0123456789abcdef").unwrap(), "app");

    // Hashed again from a spelling the config check cannot list (mixed
    // case): the config is taken, but the spelling, a configured hash,
    // still lets no one in.
    let mixed_case = mixed;
    let text = format!(
        "[auth]\nmode = \"token\"\n[[auth.clients]]\nname = \"ops\"\ntoken_sha256 = \"{mixed_case}\"\nids = [\"*\"]\n[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{}\"\nids = [\"*\"]\n",
        crate::auth::token_digest(&mixed_case)
    );
    let auth = Authenticator::new(&crate::config::Settings::from_toml(&text).unwrap().auth);
    assert_eq!(
        auth.authenticate(&with_auth(&format!("Bearer {mixed_case}")), None)
            .map(|i| i.name().to_string())
            .unwrap_err(),
        AuthFailure::Unknown
    );
}
