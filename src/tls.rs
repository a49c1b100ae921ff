//! HTTPS for the API listener: the rustls server config built from
//! `[server.tls]` (certificate chain, key, optional client CA and its
//! revocation lists), rebuilt when any of those files changes so rotated
//! certificates (cert-manager) are served without a restart, the names a
//! client certificate carries, and whether a connection's certificate is
//! still trusted after such a change.
//!
//! Must not: decide who may do what (`auth` maps names to clients); drop a
//! working config for one that fails to load.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{read_small_file, TlsSettings};

/// How often the certificate files are looked at for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The current server config, swapped when the files change.
#[derive(Clone)]
pub struct Tls {
    current: Arc<RwLock<Arc<Loaded>>>,
    /// Counts the loads: a connection verified under an earlier one checks
    /// its certificate again ([`Verified::still_trusted`]).
    generation: Arc<AtomicU64>,
    files: Vec<PathBuf>,
    settings: TlsSettings,
}

/// What the files gave: the server config, and the verifier of client
/// certificates in it (the client CA and its revocation lists).
struct Loaded {
    config: Arc<ServerConfig>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("verifies_clients", &self.clients.is_some())
            .finish_non_exhaustive()
    }
}

/// A client certificate as verified at its connection's handshake. After
/// the files change (a client CA rotated away, a revocation list that now
/// lists it), the connection's next request checks it again: a verified
/// connection must not outlive the trust it was verified under.
pub struct Verified {
    tls: Tls,
    chain: Vec<CertificateDer<'static>>,
    /// The load it was last verified under.
    at: AtomicU64,
    /// The load it was refused under ([`NEVER`]: none): a connection
    /// that goes on asking is refused without verifying again.
    refused_at: AtomicU64,
}

const NEVER: u64 = u64::MAX;

impl Verified {
    /// Whether the client CA and revocation lists of this moment still
    /// verify the certificate (its validity period too).
    pub fn still_trusted(&self) -> bool {
        let now = self.tls.generation.load(Ordering::Acquire);
        if self.at.load(Ordering::Acquire) == now {
            return true;
        }
        if self.refused_at.load(Ordering::Acquire) == now {
            return false;
        }
        let loaded = Arc::clone(&self.tls.current.read().unwrap_or_else(|p| p.into_inner()));
        let Some((end_entity, intermediates)) = self.chain.split_first() else {
            return false;
        };
        let verdict = match &loaded.clients {
            Some(verifier) => verifier
                .verify_client_cert(end_entity, intermediates, UnixTime::now())
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Err("server.tls.client_ca is no longer set".into()),
        };
        // A later change is checked at the next request: `now` was read
        // before the verifier.
        match verdict {
            Ok(()) => {
                self.at.store(now, Ordering::Release);
                true
            }
            Err(why) => {
                self.refused_at.store(now, Ordering::Release);
                let (names, _) = peer_names(end_entity);
                tracing::warn!(
                    certificate = %names.join(","),
                    error = %why,
                    "a client certificate verified at its connection's handshake is no longer trusted by the TLS files loaded since; its requests are refused (401 untrusted)"
                );
                false
            }
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// `None` when `[server.tls]` names no certificate.
    pub fn from_settings(settings: &TlsSettings) -> anyhow::Result<Option<Self>> {
        if settings.cert.is_none() {
            return Ok(None);
        }
        let loaded = build(settings)?;
        let files = [
            &settings.cert,
            &settings.key,
            &settings.client_ca,
            &settings.client_crl,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(Some(Self {
            current: Arc::new(RwLock::new(Arc::new(loaded))),
            generation: Arc::new(AtomicU64::new(0)),
            files,
            settings: settings.clone(),
        }))
    }

    /// An acceptor with the config of this moment, and the load it is of.
    pub fn acceptor(&self) -> (TlsAcceptor, u64) {
        // Read before the config: a load in between makes the connection
        // check its certificate again, never skip a check.
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        (TlsAcceptor::from(Arc::clone(&loaded.config)), generation)
    }

    /// The client certificate chain a connection accepted under load
    /// `generation` presented, to check again after the files change.
    pub fn verified(&self, chain: &[CertificateDer<'_>], generation: u64) -> Verified {
        Verified {
            tls: self.clone(),
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            at: AtomicU64::new(generation),
            refused_at: AtomicU64::new(NEVER),
        }
    }

    /// Reload the config whenever a file's modification time changes. A
    /// config that fails to load is logged and the previous one kept;
    /// `refused` is 1 until the files load again (a revocation that did not
    /// take must be seen).
    pub fn watch(&self, refused_gauge: prometheus::IntGauge) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut seen = tls.stamps();
            // Files that changed and did not load are tried again at each
            // look (a certificate not valid yet becomes valid), and logged
            // once per change.
            let mut refused = None;
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                let now = tls.stamps();
                if now == seen {
                    // Files put back as they were when last loaded (a
                    // backup moved back keeps its times): nothing refused
                    // is pending any more.
                    if refused.take().is_some() {
                        refused_gauge.set(0);
                        tracing::info!("TLS certificate files are back to the ones in force");
                    }
                    continue;
                }
                let settings = tls.settings.clone();
                match tokio::task::spawn_blocking(move || build(&settings)).await {
                    Ok(Ok(loaded)) => {
                        *tls.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
                        tls.generation.fetch_add(1, Ordering::AcqRel);
                        refused_gauge.set(0);
                        tracing::info!("TLS certificate files changed; reloaded (open connections' client certificates are checked again at their next request)");
                        seen = now;
                        refused = None;
                    }
                    Ok(Err(e)) if refused.as_ref() != Some(&now) => {
                        refused_gauge.set(1);
                        tracing::error!(
                            error = %format!("{e:#}"),
                            "TLS certificate files changed but cannot be loaded; still serving and trusting the previous ones (rkms_reload_failed, source server.tls), and trying again every 5 s"
                        );
                        refused = Some(now);
                    }
                    Ok(Err(_)) => {}
                    Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        self.files
            .iter()
            .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
            .collect()
    }
}

fn build(settings: &TlsSettings) -> anyhow::Result<Loaded> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        anyhow::bail!("server.tls.cert and server.tls.key are both required");
    };
    let chain = certificates(cert, "server.tls.cert")?;
    within_validity(&chain[0], cert)?;
    let key_bytes = read_pem_file(key, "server.tls.key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).with_context(|| {
        format!(
            "server.tls.key: cannot read a PEM private key from {}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("server.tls: no TLS protocol version available")?;
    let mut clients = None;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let cas = certificates(ca, "server.tls.client_ca")?;
            for c in cas.iter().cloned() {
                roots.add(c).with_context(|| {
                    format!(
                        "server.tls.client_ca: {} holds an unusable CA certificate",
                        ca.display()
                    )
                })?;
            }
            // A certificate is asked for, not required: /healthz and
            // /readyz serve probes without one, and /key answers 401. A
            // certificate that is presented must verify (CA, expiry, and
            // the revocation lists when given).
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated();
            if let Some(path) = &settings.client_crl {
                let crls = revocation_lists(path)?;
                covers_every_ca(path, &crls, &cas)?;
                // A certificate from an intermediate CA with no list here
                // is accepted: refusing it would lock out every client of
                // that CA over a list left out, not over a revocation.
                verifier = verifier
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let verifier: Arc<dyn ClientCertVerifier> = verifier
                .build()
                .context("server.tls.client_ca: cannot build the client certificate verifier")?;
            clients = Some(Arc::clone(&verifier));
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("server.tls: the certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if settings.client_ca.is_some() {
        // A resumed session skips the certificate checks: an expired
        // certificate, or one a rotated CA no longer signs, would go on
        // working on new connections. Every connection verifies it anew.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Loaded {
        config: Arc::new(config),
        clients,
    })
}

/// The revocation lists (PEM `X509 CRL` blocks) in `path`; at least one.
fn revocation_lists(path: &Path) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let bytes = read_pem_file(path, "server.tls.client_crl")?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "server.tls.client_crl: {} is not PEM revocation lists",
                path.display()
            )
        })?;
    anyhow::ensure!(
        !crls.is_empty(),
        "server.tls.client_crl: {} holds no revocation list (-----BEGIN X509 CRL-----)",
        path.display()
    );
    Ok(crls)
}

/// Every CA of `server.tls.client_ca` needs a list in `crls`, signed by
/// that CA's key: a file of another CA's lists, or of a CA re-keyed under
/// the same name, would revoke nothing it issues (or, its signature
/// failing at each handshake, refuse every client), without a word.
fn covers_every_ca(
    path: &Path,
    crls: &[CertificateRevocationListDer<'_>],
    cas: &[CertificateDer<'_>],
) -> anyhow::Result<()> {
    let mut lists = Vec::new();
    for crl in crls {
        let (_, parsed) = x509_parser::parse_x509_crl(crl.as_ref()).map_err(|e| {
            anyhow::anyhow!(
                "server.tls.client_crl: {} holds a revocation list that cannot be read: {e}",
                path.display()
            )
        })?;
        lists.push(parsed);
    }
    for ca in cas {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(ca.as_ref()) else {
            continue;
        };
        let subject = parsed.subject();
        let named: Vec<_> = lists
            .iter()
            .filter(|l| l.tbs_cert_list.issuer.as_raw() == subject.as_raw())
            .collect();
        anyhow::ensure!(
            !named.is_empty(),
            "server.tls.client_crl: {} holds no revocation list of {subject}, a CA of server.tls.client_ca: add that CA's list (a file of another CA's lists revokes nothing)",
            path.display()
        );
        if let Some(list) = named
            .iter()
            .find(|l| l.verify_signature(parsed.public_key()).is_err())
        {
            anyhow::bail!(
                "server.tls.client_crl: {} holds a revocation list of {subject} (number {}) that its key in server.tls.client_ca did not sign (a list of an earlier key of that CA?): every client certificate it issued would be refused; replace it with the list the CA signs now",
                path.display(),
                list.crl_number().map_or_else(|| "none".to_string(), |n| n.to_string())
            );
        }
    }
    Ok(())
}

/// A TLS client config that trusts only the CA certificates (PEM) in
/// `ca`: for `rkms healthcheck` against an HTTPS listener, which must
/// prove it holds a certificate for the name in the URL.
pub fn client_config(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in certificates(ca, "--ca")? {
        roots
            .add(c)
            .with_context(|| format!("--ca: {} holds an unusable CA certificate", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("no TLS protocol version available")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// PEM files are small regular files: anything else (a device such as
/// /dev/zero, a FIFO, a huge file) would hang or fill memory on reading.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The bytes of a PEM file: a small regular file ([`read_small_file`]).
fn read_pem_file(path: &Path, key: &str) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    read_small_file(path, MAX_PEM_BYTES).map_err(|why| anyhow::anyhow!("{key}: {why}"))
}

fn certificates(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = read_pem_file(path, key)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{key}: {} is not PEM certificates", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key}: {} holds no certificate", path.display());
    }
    Ok(certs)
}

/// Warned of at a load: a server certificate that expires sooner.
const EXPIRES_SOON: i64 = 7 * 24 * 3600;

/// How far this machine's clock may lag the issuer's: a certificate
/// issued just now (`notBefore` = the issuer's now, as some issuers stamp
/// it) loads.
const CLOCK_SKEW: i64 = 5 * 60;

/// A server certificate outside its validity period fails every client
/// that checks it, so it is refused, naming the setting, where it was
/// served: at start that stops rkms in one line; at a reload the previous
/// certificate is kept, and the files are tried again. A `notBefore` up to
/// five minutes ahead of this clock is accepted (clocks differ). One that
/// expires within a week is loaded, with a warning. (`with_single_cert` judges a certificate that cannot be parsed.)
fn within_validity(leaf: &CertificateDer<'_>, path: &Path) -> anyhow::Result<()> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Ok(());
    };
    let validity = parsed.validity();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let (not_before, not_after) = (validity.not_before, validity.not_after);
    if now > not_after.timestamp() {
        anyhow::bail!(
            "server.tls.cert: the certificate in {} expired on {not_after}; renew it",
            path.display()
        );
    }
    if now + CLOCK_SKEW < not_before.timestamp() {
        anyhow::bail!(
            "server.tls.cert: the certificate in {} is not valid before {not_before} (or this machine's clock is wrong)",
            path.display()
        );
    }
    if not_after.timestamp() - now < EXPIRES_SOON {
        tracing::warn!(
            cert = %path.display(),
            expires = %not_after,
            "the server certificate expires within a week; renew it (rkms reloads it without a restart)"
        );
    }
    Ok(())
}

/// The names a verified client certificate carries, and its `notAfter`
/// (Unix seconds). The names are its DNS subject alternative names in DNS
/// syntax (no `:` or `/`) and its URI ones with a scheme (SPIFFE ids), so
/// a DNS name cannot pose as a URI-named client or the other way round.
/// No names when it cannot be parsed.
pub fn peer_names(cert: &CertificateDer<'_>) -> (Vec<String>, Option<i64>) {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return (Vec::new(), None);
    };
    let not_after = Some(parsed.validity().not_after.timestamp());
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return (Vec::new(), not_after);
    };
    let names = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) if !dns.contains([':', '/']) => {
                Some(crate::config::certificate_name(dns))
            }
            GeneralName::URI(uri) if uri.contains(':') => {
                Some(crate::config::certificate_name(uri))
            }
            _ => None,
        })
        .collect();
    (names, not_after)
}

#[cfg(test)]
mod tests {
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
}
