//! Tests of authentication and authorization.

use super::*;
use crate::config::AuthClient;
use proptest::prelude::*;

fn client(name: &str, token: &str, ids: &[&str], create: bool) -> AuthClient {
    AuthClient {
        name: name.into(),
        token_sha256: Some(token_hash(token)),
        ids: ids.iter().map(|p| IdPattern::parse(p).unwrap()).collect(),
        create,
        resolved: vec![token_hash(token)],
        ..AuthClient::default()
    }
}

fn token_auth(clients: Vec<AuthClient>) -> Authenticator {
    Authenticator::new(&AuthSettings {
        mode: AuthMode::Token,
        clients,
        ..AuthSettings::default()
    })
}

fn with_auth(value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value.parse().unwrap());
    headers
}

/// A connection's remembered header names its client again only for
/// the very same bytes: another token, a wrong one, a malformed one or
/// none are judged in full, and a failure leaves the last good header
/// remembered.
#[test]
fn a_connection_remembers_the_header_it_authenticated_with_and_nothing_else() {
    let auth = token_auth(vec![
        client("billing", "s3cret-billing-token", &["billing/*"], true),
        client("reader", "s3cret-reader-token!", &["shared"], false),
    ]);
    let conn = Remembered::default();
    let name = |header: Option<&str>| {
        let headers = header.map_or_else(HeaderMap::new, with_auth);
        auth.authenticate_on(&headers, None, Some(&conn))
            .map(|who| who.name().to_string())
    };
    assert_eq!(conn.recall(b"Bearer s3cret-billing-token", 0), None);
    assert_eq!(
        name(Some("Bearer s3cret-billing-token")).unwrap(),
        "billing"
    );
    assert_eq!(conn.recall(b"Bearer s3cret-billing-token", 0), Some(0));
    assert_eq!(
        name(Some("Bearer s3cret-billing-token")).unwrap(),
        "billing"
    );
    for (header, failure) in [
        (Some("Bearer s3cret-billing-tokem"), AuthFailure::Unknown),
        (Some("Bearer s3cret-billing-token-"), AuthFailure::Unknown),
        (Some("Bearer s3cret-billing"), AuthFailure::Unknown),
        (Some("Basic s3cret-billing-token"), AuthFailure::Malformed),
        (None, AuthFailure::Missing),
    ] {
        assert_eq!(name(header).unwrap_err(), failure, "{header:?}");
        assert_eq!(conn.recall(b"Bearer s3cret-billing-token", 0), Some(0));
    }
    // Another client on the same connection (a proxy's) is itself.
    assert_eq!(name(Some("Bearer s3cret-reader-token!")).unwrap(), "reader");
    assert_eq!(conn.recall(b"Bearer s3cret-billing-token", 0), None);
    assert_eq!(
        name(Some("bearer s3cret-billing-token")).unwrap(),
        "billing"
    );
    assert_eq!(format!("{conn:?}"), "Remembered(..)");
    // A remembered header is answered without the digests: one that
    // never authenticated (put there by hand) names the client it was
    // filed under. Only a full match ever files one.
    let planted = Remembered::default();
    planted.keep(b"Bearer not-a-configured-token", 1, 0);
    let who = auth
        .authenticate_on(
            &with_auth("Bearer not-a-configured-token"),
            None,
            Some(&planted),
        )
        .unwrap();
    assert_eq!(who.name(), "reader");
}

#[test]
fn tokens_identify_clients_and_patterns_bound_them() {
    let auth = token_auth(vec![
        client("billing", "s3cret-billing-token", &["billing/*"], true),
        client(
            "reader",
            "s3cret-reader-token!",
            &["shared", "team/*"],
            false,
        ),
    ]);
    assert_eq!(
        auth.authenticate(&HeaderMap::new(), None).unwrap_err(),
        AuthFailure::Missing
    );
    for bad in ["Bearer wrong", "Bearer s3cret-billing-tokem", "Bearer x"] {
        assert_eq!(
            auth.authenticate(&with_auth(bad), None).unwrap_err(),
            AuthFailure::Unknown,
            "{bad}"
        );
    }
    for malformed in ["Basic abc", "Bearer", "Bearer a b", "s3cret-billing-token"] {
        assert_eq!(
            auth.authenticate(&with_auth(malformed), None).unwrap_err(),
            AuthFailure::Malformed,
            "{malformed}"
        );
    }
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let who = auth
            .authenticate(&with_auth(&format!("{scheme} s3cret-billing-token")), None)
            .unwrap();
        assert_eq!(who.name(), "billing");
    }
    let billing = auth
        .authenticate(&with_auth("Bearer s3cret-billing-token"), None)
        .unwrap();
    assert!(billing.may_read(&KeyId::parse("billing/1").unwrap()));
    assert!(!billing.may_read(&KeyId::parse("billing").unwrap()));
    assert!(!billing.may_read(&KeyId::parse("payroll/1").unwrap()));
    assert!(billing.may_create());
    let reader = auth
        .authenticate(&with_auth("Bearer s3cret-reader-token!"), None)
        .unwrap();
    assert!(reader.may_read(&KeyId::parse("shared").unwrap()));
    assert!(!reader.may_read(&KeyId::parse("shared2").unwrap()));
    assert!(reader.may_read(&KeyId::parse("team/x").unwrap()));
    assert!(!reader.may_create());
    assert!(format!("{billing:?}").contains("billing"));
    assert!(!format!("{billing:?}").contains(&token_digest("s3cret-billing-token")));
}

#[test]
fn mtls_matches_any_certificate_name() {
    let auth = Authenticator::new(&AuthSettings {
        mode: AuthMode::Mtls,
        clients: vec![AuthClient {
            name: "spiffe://prod/ns/app/sa/web".into(),
            ids: vec![IdPattern::Any],
            ..AuthClient::default()
        }],
        ..AuthSettings::default()
    });
    let headers = with_auth("Bearer ignored-in-mtls-mode");
    assert_eq!(
        auth.authenticate(&headers, None).unwrap_err(),
        AuthFailure::Missing
    );
    let peer = |names: &[&str], not_after: Option<i64>| PeerNames {
        names: names.iter().map(|n| n.to_string()).collect(),
        not_after,
        still_trusted: None,
    };
    let other = peer(&["web.example"], None);
    assert_eq!(
        auth.authenticate(&headers, Some(&other)).unwrap_err(),
        AuthFailure::Unknown
    );
    // A verified certificate with no usable name is not "missing".
    assert_eq!(
        auth.authenticate(&headers, Some(&peer(&[], None)))
            .unwrap_err(),
        AuthFailure::Unknown
    );
    let good = peer(&["web.example", "spiffe://prod/ns/app/sa/web"], None);
    let who = auth.authenticate(&headers, Some(&good)).unwrap();
    assert_eq!(who.name(), "spiffe://prod/ns/app/sa/web");
    // The certificate's notAfter passed while its connection stayed open.
    let expired = peer(&["spiffe://prod/ns/app/sa/web"], Some(1_600_000_000));
    assert_eq!(
        auth.authenticate(&headers, Some(&expired)).unwrap_err(),
        AuthFailure::Expired
    );
    let later = peer(&["spiffe://prod/ns/app/sa/web"], Some(i64::MAX));
    assert!(auth.authenticate(&headers, Some(&later)).is_ok());
    // The TLS files changed since its handshake and no longer verify it.
    let revoked = PeerNames {
        still_trusted: Some(std::sync::Arc::new(|| false)),
        ..peer(&["spiffe://prod/ns/app/sa/web"], None)
    };
    assert_eq!(
        auth.authenticate(&headers, Some(&revoked)).unwrap_err(),
        AuthFailure::Untrusted
    );
}

/// A certificate naming two clients is refused, whatever the order of its
/// names, instead of being whichever client its first name is.
#[test]
fn a_certificate_naming_two_clients_is_refused() {
    let auth = Authenticator::new(&AuthSettings {
        mode: AuthMode::Mtls,
        clients: ["alice", "bob"]
            .into_iter()
            .map(|name| AuthClient {
                name: name.into(),
                ids: vec![IdPattern::Any],
                ..AuthClient::default()
            })
            .collect(),
        ..AuthSettings::default()
    });
    let headers = HeaderMap::new();
    for names in [["alice", "bob"], ["bob", "alice"]] {
        let peer = PeerNames {
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: None,
            still_trusted: None,
        };
        assert_eq!(
            auth.authenticate(&headers, Some(&peer)).unwrap_err(),
            AuthFailure::Ambiguous
        );
    }
    // One client's name twice (DNS and URI alike) is that client.
    let twice = PeerNames {
        names: vec!["alice".into(), "alice".into()],
        not_after: None,
        still_trusted: None,
    };
    assert_eq!(
        auth.authenticate(&headers, Some(&twice)).unwrap().name(),
        "alice"
    );
}

#[test]
fn rate_limits_refuse_past_the_burst_with_a_wait() {
    let mut c = client("slow", "s3cret-slow-token-1", &["*"], false);
    c.requests_per_second = 1;
    c.burst = 2;
    let auth = token_auth(vec![c]);
    let who = auth
        .authenticate(&with_auth("Bearer s3cret-slow-token-1"), None)
        .unwrap();
    assert!(who.check_rate().is_ok());
    assert!(who.check_rate().is_ok());
    let wait = who.check_rate().unwrap_err();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    assert!(Identity::Anonymous.check_rate().is_ok());
}

/// A slice that is the other's prefix, cut at a whole number of words
/// with tails of one length, is not equal: the words and tails alone would
/// say so.
#[test]
fn same_bytes_refuses_a_prefix_whatever_its_words() {
    assert!(!same_bytes(&[0; 16], &[0; 8]));
    assert!(!same_bytes(&[7; 19], &[7; 11]));
    assert!(!same_bytes(&[7; 8], &[]));
    assert!(same_bytes(&[], &[]));
}

proptest! {
    /// The word-at-a-time compare of a remembered header answers what a
    /// byte-at-a-time one does, for any lengths and for a change of any
    /// one byte, in the words or in the tail.
    #[test]
    fn same_bytes_is_byte_equality(
        a in proptest::collection::vec(any::<u8>(), 0..80),
        b in proptest::collection::vec(any::<u8>(), 0..80),
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        prop_assert_eq!(same_bytes(&a, &b), a == b);
        prop_assert!(same_bytes(&a, &a.clone()));
        if !a.is_empty() {
            let mut changed = a.clone();
            changed[at.index(a.len())] ^= flip;
            prop_assert!(!same_bytes(&a, &changed));
            prop_assert!(!same_bytes(&a, &a[..a.len() - 1]));
        }
    }

    #[test]
    fn patterns_match_exactly_what_they_say(
        prefix in "[a-z/]{1,8}",
        rest in "[a-z0-9/]{0,8}",
        other in "[a-z0-9/]{1,16}",
    ) {
        let id = format!("{prefix}{rest}");
        let glob = IdPattern::parse(&format!("{prefix}*")).unwrap();
        prop_assert!(glob.matches(&id));
        prop_assert_eq!(glob.matches(&other), other.starts_with(&prefix));
        let exact = IdPattern::parse(&prefix).unwrap();
        prop_assert_eq!(exact.matches(&id), rest.is_empty());
        prop_assert!(IdPattern::parse("*").unwrap().matches(&other));
        // Round trip through the config text.
        prop_assert_eq!(IdPattern::parse(&glob.to_string()).unwrap(), glob);
    }

    #[test]
    fn a_star_inside_a_pattern_is_refused(a in "[a-z]{1,4}", b in "[a-z]{1,4}") {
        let inner = format!("{a}*{b}");
        prop_assert!(IdPattern::parse(&inner).is_err());
        let double = format!("{a}**");
        prop_assert!(IdPattern::parse(&double).is_err());
    }

    #[test]
    fn no_token_but_the_right_one_authenticates(token in "[!-~]{16,64}", guess in "[!-~]{1,80}") {
        let auth = token_auth(vec![client("c", &token, &["*"], false)]);
        let result = auth.authenticate(&with_auth(&format!("Bearer {guess}")), None);
        prop_assert_eq!(result.is_ok(), guess == token);
    }
}

mod token_files;
