//! Client certificates checked again after the TLS files change: an open
//! connection's certificate against the client CA and revocation lists of
//! this moment, and the revocation lists themselves (each client CA's,
//! signed by it) before they are loaded.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};

use super::{peer_names, read_pem_file, Tls};

/// A client certificate as verified at its connection's handshake. After
/// the files change (a client CA rotated away, a revocation list that now
/// lists it), the connection's next request checks it again: a verified
/// connection must not outlive the trust it was verified under.
pub struct Verified {
    pub(super) tls: Tls,
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// The load it was last verified under.
    pub(super) at: AtomicU64,
    /// The load it was refused under ([`NEVER`]: none): a connection
    /// that goes on asking is refused without verifying again.
    pub(super) refused_at: AtomicU64,
}

pub(super) const NEVER: u64 = u64::MAX;

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

/// The revocation lists (PEM `X509 CRL` blocks) in `path`; at least one.
pub(super) fn revocation_lists(
    path: &Path,
) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
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
pub(super) fn covers_every_ca(
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
