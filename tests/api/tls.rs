//! HTTPS on the API listener: mTLS client identities (certificate SANs),
//! token auth over plain TLS, and certificates reloaded when their files
//! change. Certificates are made at test time with rcgen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, SanType,
};
use rkms::config::{AuthClient, AuthMode, IdPattern, Settings};

use crate::helpers::*;

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    /// A leaf certificate and its key, both PEM; `not_after` ends its
    /// validity (else the next few years').
    fn issue(
        &self,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        not_after: Option<time::OffsetDateTime>,
    ) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        if let Some(end) = not_after {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = end;
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server(&self) -> (String, String) {
        self.issue(
            vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
    }

    fn client(&self, san: SanType, expired: bool) -> (String, String) {
        let end = expired.then(|| rcgen::date_time_ymd(2021, 1, 1));
        self.issue(vec![san], ExtendedKeyUsagePurpose::ClientAuth, end)
    }
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

fn dns(text: &str) -> SanType {
    SanType::DnsName(text.try_into().unwrap())
}

/// Write the server's files; returns (cert, key, client_ca) paths.
fn write_server_files(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key) = ca.server();
    let paths = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    std::fs::write(&paths.0, cert).unwrap();
    std::fs::write(&paths.1, key).unwrap();
    std::fs::write(&paths.2, ca.cert.pem()).unwrap();
    paths
}

/// A client trusting `ca`, presenting `identity` (cert + key PEM) if any.
fn https_client(ca: &Ca, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(5));
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// `/metrics` from the app's plain-HTTP metrics listener.
async fn plain_metrics(app: &TestApp) -> String {
    let url = format!("http://{}/metrics", app.metrics_addr.unwrap());
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

fn https(app: &TestApp) -> String {
    app.base.replace("http://", "https://")
}

/// HTTPS with the server certificate and key in `files`.
fn tls_settings(s: &mut Settings, files: &(PathBuf, PathBuf, PathBuf)) {
    s.server.tls.cert = Some(files.0.clone());
    s.server.tls.key = Some(files.1.clone());
}

/// An app serving HTTPS (no client certificates) with a certificate from
/// a new CA; the directory holds the files for the app's lifetime.
async fn tls_app(tweak: impl FnOnce(&mut Settings)) -> (TestApp, Ca, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rkms test ca");
    let files = write_server_files(dir.path(), &ca);
    let app = spawn_with(|s| {
        tls_settings(s, &files);
        tweak(s);
    })
    .await;
    (app, ca, dir)
}

/// An app in mtls mode (one client, `spiffe://test/ns/billing/sa/app`,
/// ids `billing/*`) with a plain-HTTP metrics listener, certificates from
/// a new CA; the directory holds the files for the app's lifetime.
async fn mtls_app(tweak: impl FnOnce(&mut Settings)) -> (TestApp, Ca, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rkms test ca");
    let files = write_server_files(dir.path(), &ca);
    let app = spawn_with(|s| {
        mtls_settings(s, &files);
        s.server.metrics_listen = Some(([127, 0, 0, 1], 0).into());
        tweak(s);
    })
    .await;
    (app, ca, dir)
}

fn mtls_settings(s: &mut Settings, files: &(PathBuf, PathBuf, PathBuf)) {
    tls_settings(s, files);
    s.server.tls.client_ca = Some(files.2.clone());
    s.auth.mode = AuthMode::Mtls;
    s.auth.clients = vec![AuthClient {
        name: "spiffe://test/ns/billing/sa/app".into(),
        ids: vec![IdPattern::parse("billing/*").unwrap()],
        create: true,
        ..AuthClient::default()
    }];
}

#[tokio::test]
async fn mtls_identifies_clients_by_certificate_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rkms test ca");
    let files = write_server_files(dir.path(), &ca);
    let app = spawn_with(|s| mtls_settings(s, &files)).await;
    let base = https(&app);

    // A good client: its URI SAN (a SPIFFE id) names a configured client.
    let good = https_client(
        &ca,
        Some(&ca.client(uri("spiffe://test/ns/billing/sa/app"), false)),
    );
    let res = good
        .get(format!("{base}/key?id=billing/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = good
        .get(format!("{base}/key?id=payroll/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403, "outside the client's ids");

    // No certificate: probes answer, /key is 401 with a challenge.
    let anonymous = https_client(&ca, None);
    let res = anonymous
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = anonymous
        .get(format!("{base}/key?id=billing/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    // It asks for a certificate, not a token.
    assert_eq!(
        res.headers()["www-authenticate"],
        "ClientCertificate realm=\"rkms\""
    );

    // A valid certificate naming no configured client.
    let unknown = https_client(&ca, Some(&ca.client(dns("someone.example"), false)));
    let res = unknown
        .get(format!("{base}/key?id=billing/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    // A certificate from another CA, and an expired one from the right CA,
    // with the right name: the handshake is refused.
    let other = Ca::new("another ca");
    for (what, identity) in [
        (
            "another CA",
            other.client(uri("spiffe://test/ns/billing/sa/app"), false),
        ),
        (
            "expired",
            ca.client(uri("spiffe://test/ns/billing/sa/app"), true),
        ),
    ] {
        let client = https_client(&ca, Some(&identity));
        let result = client.get(format!("{base}/key?id=billing/2")).send().await;
        assert!(
            result.is_err(),
            "{what}: got {:?}",
            result.map(|r| r.status())
        );
    }
    assert_eq!(
        app.kms.total_calls("generate_data_key"),
        1,
        "only the good client created a key"
    );
    // Plain HTTP to the TLS port gets no answer.
    assert!(reqwest::get(format!("{}/healthz", app.base)).await.is_err());
}

#[tokio::test]
async fn token_auth_works_over_plain_tls() {
    let token = "tls-token-0123456789abc";
    let (app, ca, _dir) = tls_app(|s| {
        s.auth.mode = AuthMode::Token;
        s.auth.clients = vec![AuthClient {
            name: "app".into(),
            token_sha256: Some(rkms::auth::token_hash(token)),
            resolved: vec![rkms::auth::token_hash(token)],
            ids: vec![IdPattern::Any],
            create: true,
            ..AuthClient::default()
        }];
    })
    .await;
    let client = https_client(&ca, None);
    let url = format!("{}/key?id=over-tls", https(&app));
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let res = client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

/// A client that connects and never finishes the TLS handshake is
/// disconnected (after 10 s), not kept forever.
#[tokio::test]
async fn a_connection_that_never_handshakes_is_closed() {
    let (app, ca, _dir) = tls_app(|_| {}).await;
    let addr = app.base.trim_start_matches("http://");
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let within = Duration::from_secs(30);
    let got = read_until_closed(&mut silent, within).await;
    assert_eq!(got.as_deref(), Some(""), "still open after {within:?}");
    // The listener still serves TLS.
    let res = https_client(&ca, None)
        .get(format!("{}/healthz", https(&app)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// cert-manager rewrites the files in place: new connections get the new
/// certificate without a restart, and a broken file keeps the old one.
#[tokio::test]
async fn certificates_are_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ca::new("first ca");
    let files = write_server_files(dir.path(), &first);
    let app = spawn_with(|s| tls_settings(s, &files)).await;
    let url = format!("{}/healthz", https(&app));
    // A fresh client each time: a pooled connection would keep the old session.
    let fetch = |ca: &Ca| {
        let client = https_client(ca, None);
        let url = url.clone();
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(fetch(&first).await.unwrap(), 200);

    // A half-written file is not loaded: the old certificate stays.
    std::fs::write(&files.0, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(fetch(&first).await.unwrap(), 200);

    let second = Ca::new("second ca");
    let (cert, key) = second.server();
    std::fs::write(&files.1, key).unwrap();
    std::fs::write(&files.0, cert).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if matches!(fetch(&second).await, Ok(200)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(fetch(&first).await.is_err(), "the old certificate is gone");
}

/// `rkms healthcheck` against an HTTPS listener (the Helm test pod under
/// TLS): it passes only when the server's certificate verifies against
/// `--ca` and names the URL's host, and says why otherwise.
#[tokio::test]
async fn healthcheck_verifies_the_server_over_https() {
    let (app, _ca, dir) = tls_app(|_| {}).await;
    let ca_file = dir.path().join("ca.crt");
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, Ca::new("another ca").cert.pem()).unwrap();
    let port = app.base.rsplit(':').next().unwrap().to_owned();
    let check = move |url: String, ca: Option<PathBuf>| {
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rkms"));
            cmd.args(["healthcheck", "--url", &url]);
            if let Some(ca) = ca {
                cmd.arg("--ca").arg(ca);
            }
            let out = cmd.output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let url = |host: &str| format!("https://{host}:{port}/readyz");

    let (code, stderr) = check(url("127.0.0.1"), Some(ca_file.clone()))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");

    let (code, stderr) = check(url("127.0.0.1"), Some(other_ca)).await.unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // The certificate names 127.0.0.1 only.
    let (code, stderr) = check(url("localhost"), Some(ca_file.clone()))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not valid for name"), "{stderr}");

    let (code, stderr) = check(url("127.0.0.1"), None).await.unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--ca"), "{stderr}");

    // Plain HTTP to the HTTPS port gets no answer.
    let plain = format!("http://127.0.0.1:{port}/readyz");
    let (code, stderr) = check(plain, None).await.unwrap();
    assert_eq!(code, Some(1), "{stderr}");

    let (code, stderr) = check(url("127.0.0.1"), Some(dir.path().join("missing.pem")))
        .await
        .unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");

    // A device is no PEM file: refused, never read without end.
    let (code, stderr) = check(url("127.0.0.1"), Some(PathBuf::from("/dev/zero")))
        .await
        .unwrap();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

/// A client certificate that expires while its connection stays open gets
/// no key past its `notAfter`: each request checks it (a keep-alive
/// connection used to keep its identity for as long as it lived). That
/// sessions are not resumed is a unit test of the TLS config (`tls.rs`).
#[tokio::test]
async fn a_client_certificate_gets_no_key_once_expired() {
    let (app, ca, _dir) = mtls_app(|_| {}).await;
    let base = https(&app);
    let end = time::OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let identity = ca.issue(
        vec![uri("spiffe://test/ns/billing/sa/app")],
        ExtendedKeyUsagePurpose::ClientAuth,
        Some(end),
    );
    let kept = https_client(&ca, Some(&identity));
    let url = format!("{base}/key?id=billing/short");
    assert_eq!(kept.get(&url).send().await.unwrap().status(), 200);
    // Certificates carry whole seconds: wait past the end and one more.
    let wait = (end - time::OffsetDateTime::now_utc()).whole_milliseconds() + 1_500;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap())).await;

    // The same keep-alive connection: refused, saying why.
    let res = kept.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error_message"], "the client certificate has expired");
    // A client gone before its handshake (a TCP health check) failed no
    // TLS check; a new connection with the expired certificate did.
    let addr = app.base.trim_start_matches("http://").to_owned();
    drop(tokio::net::TcpStream::connect(&addr).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(plain_metrics(&app)
        .await
        .contains("rkms_auth_failures_total{reason=\"tls\"} 0"));
    let fresh = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(format!("{}{}", identity.0, identity.1).as_bytes())
                .unwrap(),
        )
        .build()
        .unwrap();
    assert!(fresh.get(&url).send().await.is_err());
    let metrics = plain_metrics(&app).await;
    assert!(
        metrics.contains("rkms_auth_failures_total{reason=\"expired\"} 1")
            && metrics.contains("rkms_auth_failures_total{reason=\"tls\"} 1"),
        "{metrics}"
    );
}

/// A DNS name cannot pose as a client named by a URI (a SPIFFE id), and a
/// certificate naming two clients is refused whatever its names' order.
#[tokio::test]
async fn certificate_names_are_matched_by_kind_and_must_name_one_client() {
    let (app, ca, _dir) = mtls_app(|s| {
        s.auth.clients.push(AuthClient {
            name: "reports.example".into(),
            ids: vec![IdPattern::Any],
            ..AuthClient::default()
        });
    })
    .await;
    let base = https(&app);
    let status = |identity: (String, String)| {
        let client = https_client(&ca, Some(&identity));
        let url = format!("{base}/key?id=billing/1");
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    let posing = ca.client(dns("spiffe://test/ns/billing/sa/app"), false);
    assert_eq!(status(posing).await, 401);
    // DNS names match whatever their letter case (they were compared
    // exactly: "REPORTS.Example" was no client, 401), as do a URI's scheme
    // and authority. reports.example may not create: 403 says it is known.
    let shouting = ca.client(dns("REPORTS.Example"), false);
    assert_eq!(status(shouting).await, 403);
    let spiffe = ca.client(uri("SPIFFE://TEST/ns/billing/sa/app"), false);
    assert_eq!(status(spiffe).await, 200);
    let other_path = ca.client(uri("spiffe://test/NS/billing/sa/app"), false);
    assert_eq!(status(other_path).await, 401);
    for sans in [
        vec![
            dns("reports.example"),
            uri("spiffe://test/ns/billing/sa/app"),
        ],
        vec![
            uri("spiffe://test/ns/billing/sa/app"),
            dns("reports.example"),
        ],
    ] {
        let both = ca.issue(sans, ExtendedKeyUsagePurpose::ClientAuth, None);
        assert_eq!(status(both).await, 401);
    }
    let metrics = plain_metrics(&app).await;
    assert!(
        metrics.contains("rkms_auth_failures_total{reason=\"ambiguous\"} 2"),
        "{metrics}"
    );
}

/// A revocation list of `ca` listing `serials` (PEM).
fn revocation_list(ca: &Ca, number: u64, serials: &[u64]) -> String {
    let now = time::OffsetDateTime::now_utc();
    rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: serials
            .iter()
            .map(|&serial| rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(serial),
                revocation_time: now,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca.cert, &ca.key)
    .unwrap()
    .pem()
    .unwrap()
}

/// The billing client's certificate from `ca`, with serial number `serial`.
fn billing_with_serial(ca: &Ca, serial: u64) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![uri("spiffe://test/ns/billing/sa/app")];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.cert, &ca.key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Poll `/metrics` until `line` appears (the TLS files are looked at every
/// 5 s).
async fn until_metrics_say(app: &TestApp, line: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = plain_metrics(app).await;
        if metrics.contains(line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Revoking a client certificate (server.tls.client_crl) or replacing the
/// client CA refuses it on connections opened before, at their next
/// request, as on new ones; a revocation list that cannot be loaded keeps
/// the previous one, and says so in rkms_reload_failed.
#[tokio::test]
async fn a_revoked_certificate_or_a_replaced_ca_ends_open_connections_access() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rkms test ca");
    let files = write_server_files(dir.path(), &ca);
    let crl = dir.path().join("ca.crl");
    std::fs::write(&crl, revocation_list(&ca, 1, &[])).unwrap();
    let app = spawn_with(|s| {
        mtls_settings(s, &files);
        s.server.tls.client_crl = Some(crl.clone());
        s.server.metrics_listen = Some(([127, 0, 0, 1], 0).into());
    })
    .await;
    let url = format!("{}/key?id=billing/revoked", https(&app));
    let leaked = https_client(&ca, Some(&billing_with_serial(&ca, 7)));
    let other = https_client(&ca, Some(&billing_with_serial(&ca, 8)));
    assert_eq!(leaked.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(other.get(&url).send().await.unwrap().status(), 200);
    until_metrics_say(&app, "rkms_reload_failed{source=\"server.tls\"} 0").await;

    // A list that does not load keeps the previous one, and says so; so
    // does a list of another CA, which would revoke nothing ours issues.
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\ngarbage\n").unwrap();
    until_metrics_say(&app, "rkms_reload_failed{source=\"server.tls\"} 1").await;
    assert_eq!(leaked.get(&url).send().await.unwrap().status(), 200);
    std::fs::write(&crl, revocation_list(&Ca::new("another ca"), 1, &[])).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    until_metrics_say(&app, "rkms_reload_failed{source=\"server.tls\"} 1").await;
    assert_eq!(leaked.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(other.get(&url).send().await.unwrap().status(), 200);
    // Nor a list under our CA's name signed by another key (a CA re-keyed
    // under the same name): its signature would fail every handshake.
    std::fs::write(&crl, revocation_list(&ca, 1, &[])).unwrap();
    until_metrics_say(&app, "rkms_reload_failed{source=\"server.tls\"} 0").await;
    let same_name = Ca::new("rkms test ca");
    std::fs::write(&crl, revocation_list(&same_name, 1, &[])).unwrap();
    until_metrics_say(&app, "rkms_reload_failed{source=\"server.tls\"} 1").await;
    assert_eq!(leaked.get(&url).send().await.unwrap().status(), 200);

    // Serial 7 revoked: its open connection is refused at its next request.
    std::fs::write(&crl, revocation_list(&ca, 2, &[7])).unwrap();
    until_metrics_say(&app, "rkms_reload_failed{source=\"server.tls\"} 0").await;
    let res = leaked.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    // Closed after the answer: the next request needs a new handshake,
    // which the revoked certificate fails.
    assert_eq!(res.headers()["connection"], "close");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        body["error_message"],
        "the client certificate is no longer trusted (its CA was replaced, or it was revoked)"
    );
    assert!(leaked.get(&url).send().await.is_err());
    assert_eq!(other.get(&url).send().await.unwrap().status(), 200);
    // A new connection with it fails its handshake.
    let fresh = https_client(&ca, Some(&billing_with_serial(&ca, 7)));
    assert!(fresh.get(&url).send().await.is_err());
    assert!(plain_metrics(&app)
        .await
        .contains("rkms_auth_failures_total{reason=\"untrusted\"} 1"));

    // The client CA replaced by another: the open connection of serial 8
    // is refused too.
    let next = Ca::new("next ca");
    std::fs::write(&crl, revocation_list(&next, 1, &[])).unwrap();
    std::fs::write(&files.2, next.cert.pem()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = other.get(&url).send().await.unwrap().status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection verified under the old CA is still served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let moved = https_client(&ca, Some(&billing_with_serial(&next, 9)));
    assert_eq!(moved.get(&url).send().await.unwrap().status(), 200);
}
