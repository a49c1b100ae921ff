//! Tests of the server config: building it from the files, sessions, certificate validity.
use super::*;

/// Server files for `dir`: a self-signed certificate (which is also
/// the client CA).
/// Server files in `dir` (`name`.crt, `name`.key): a self-signed
/// certificate whose validity `valid` sets.
fn valid_between(
    dir: &Path,
    name: &str,
    valid: impl FnOnce(&mut rcgen::CertificateParams),
) -> TlsSettings {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["rkms.test".into()]).unwrap();
    valid(&mut params);
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TlsSettings {
        cert: Some(cert_path),
        key: Some(key_path),
        client_ca: None,
        client_crl: None,
    }
}

/// A server certificate past its notAfter (or before its notBefore)
/// is refused naming server.tls.cert; it was served, and every client
/// that checks it failed its handshake.
#[test]
fn a_server_certificate_out_of_its_validity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, from, to, says) in [
        ("expired", (2019, 1, 1), (2020, 1, 2), "expired on"),
        ("future", (2999, 1, 1), (3000, 1, 1), "is not valid before"),
    ] {
        let settings = valid_between(dir.path(), name, |p| {
            p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        });
        let err = format!("{:#}", Tls::from_settings(&settings).unwrap_err());
        assert!(
            err.starts_with("server.tls.cert: ") && err.contains(says),
            "{err}"
        );
    }
    // One within its validity loads.
    assert!(Tls::from_settings(&files(dir.path())).unwrap().is_some());
    // One issued a minute ahead of this clock (clocks differ) loads; one
    // an hour ahead does not.
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    for (ahead, loads) in [(60, true), (3600, false)] {
        let settings = valid_between(dir.path(), "soon", |p| {
            p.not_before =
                rcgen::date_time_ymd(1970, 1, 1) + since_epoch + Duration::from_secs(ahead);
            p.not_after = rcgen::date_time_ymd(2999, 1, 1);
        });
        assert_eq!(
            Tls::from_settings(&settings).is_ok(),
            loads,
            "{ahead} s ahead"
        );
    }
}

fn files(dir: &Path) -> TlsSettings {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["rkms.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    TlsSettings {
        cert: Some(cert_path.clone()),
        key: Some(key_path),
        client_ca: None,
        client_crl: None,
    }
}

/// With client certificates verified, no session is kept or ticketed
/// for resumption: a resumed session skips the certificate checks, so a
/// certificate a rotated CA no longer signs would keep working on new
/// connections. Without them, resumption stays on (it saves a
/// handshake's work).
#[test]
fn sessions_are_not_resumed_when_client_certificates_are_verified() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = files(dir.path());
    let plain = build(&settings).unwrap().config;
    assert!(plain.session_storage.put(b"id".to_vec(), b"state".to_vec()));
    assert!(plain.send_tls13_tickets > 0);

    settings.client_ca = settings.cert.clone();
    let mtls = build(&settings).unwrap().config;
    assert!(!mtls.session_storage.put(b"id".to_vec(), b"state".to_vec()));
    assert_eq!(mtls.session_storage.get(b"id"), None);
    assert_eq!(mtls.send_tls13_tickets, 0);
    assert!(!mtls.ticketer.enabled());
}

/// A certificate or key path naming a device (or anything but a small
/// regular file) is an error naming the key, never read without end.
#[test]
fn pem_paths_must_name_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let good = files(dir.path());
    for (key, settings) in [
        (
            "server.tls.cert",
            TlsSettings {
                cert: Some("/dev/zero".into()),
                ..good.clone()
            },
        ),
        (
            "server.tls.key",
            TlsSettings {
                key: Some("/dev/zero".into()),
                ..good.clone()
            },
        ),
        (
            "server.tls.client_ca",
            TlsSettings {
                client_ca: Some(dir.path().to_path_buf()),
                ..good.clone()
            },
        ),
    ] {
        let err = format!("{:#}", build(&settings).unwrap_err());
        assert!(
            err.contains(key) && err.contains("not a regular file"),
            "{err}"
        );
    }
}
