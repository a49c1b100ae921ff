//! The `[server]` section's checks: limits, listeners, TLS files, and
//! plain HTTP off loopback.

use super::validate::positive;
use super::{ConfigError, Settings};

/// The longest request target hyper passes on (`u16::MAX - 1` bytes).
const MAX_URI_BYTES_SERVED: u32 = 65_534;

impl Settings {
    pub(super) fn validate_server(&self) -> Result<(), ConfigError> {
        positive("server.request_timeout_ms", self.server.request_timeout_ms)?;
        positive(
            "server.max_concurrent_requests",
            u64::from(self.server.max_concurrent_requests),
        )?;
        positive(
            "server.max_connections",
            u64::from(self.server.max_connections),
        )?;
        // hyper answers a longer target 414 itself, before rkms sees it.
        if !(64..=MAX_URI_BYTES_SERVED).contains(&self.server.max_uri_bytes) {
            return Err(ConfigError::new(
                "server.max_uri_bytes",
                format!(
                    "must be from 64 to {MAX_URI_BYTES_SERVED}, got {}",
                    self.server.max_uri_bytes
                ),
            ));
        }
        if let Some(metrics) = self.server.metrics_listen {
            if overlap(self.server.listen, metrics) {
                return Err(ConfigError::new(
                    "server.metrics_listen",
                    format!(
                        "{metrics} takes the port of server.listen ({}); give /metrics a port of its own",
                        self.server.listen
                    ),
                ));
            }
        }
        if self.server.max_header_bytes < 1024 {
            return Err(ConfigError::new(
                "server.max_header_bytes",
                format!(
                    "must be at least 1024, got {}",
                    self.server.max_header_bytes
                ),
            ));
        }
        let tls = &self.server.tls;
        for (key, path) in [
            ("server.tls.cert", &tls.cert),
            ("server.tls.key", &tls.key),
            ("server.tls.client_ca", &tls.client_ca),
            ("server.tls.client_crl", &tls.client_crl),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(ConfigError::new(
                    key,
                    "is empty: name a file, or leave the key out",
                ));
            }
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "server.tls.key",
                    "is required with server.tls.cert",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "server.tls.cert",
                    "is required with server.tls.key",
                ))
            }
            (None, None) if tls.client_ca.is_some() => {
                return Err(ConfigError::new(
                    "server.tls.cert",
                    "and server.tls.key are required with server.tls.client_ca",
                ))
            }
            _ => {}
        }
        if tls.client_crl.is_some() && tls.client_ca.is_none() {
            return Err(ConfigError::new(
                "server.tls.client_crl",
                "needs server.tls.client_ca: revocation lists are of the CA that signs client certificates",
            ));
        }
        Ok(())
    }

    /// After [`Settings::validate_auth`]: an unauthenticated listen off
    /// loopback is named as that first.
    pub(super) fn validate_plaintext(&self) -> Result<(), ConfigError> {
        let listen = self.server.listen;
        if self.server.tls.cert.is_none()
            && !listen.ip().is_loopback()
            && !self.server.allow_plaintext
        {
            return Err(ConfigError::new(
                "server.listen",
                format!("{listen} is not a loopback address and [server.tls] is not set, so data keys and client tokens would cross the network in plain HTTP; set server.tls.cert and server.tls.key, or server.allow_plaintext = true where something else encrypts the traffic (a service mesh, a TLS proxy on this host)"),
            ));
        }
        Ok(())
    }
}

/// Whether two listeners would ask for the same port: the same port, and
/// the same address or either one every address of its family or both
/// (0.0.0.0 and [::] share a port on Linux's default dual-stack sockets).
fn overlap(a: std::net::SocketAddr, b: std::net::SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
