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
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{read_small_file, TlsSettings};

mod trust;
pub use trust::Verified;
use trust::{covers_every_ca, revocation_lists, NEVER};

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
/// expires within a week is loaded, with a warning. A certificate that
/// cannot be parsed is left to `with_single_cert` to judge.
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
mod tests;
