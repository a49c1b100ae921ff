//! The configuration: its schema and defaults (here), loading from the
//! file and the environment ([`load`]), validation of every field and of the
//! whole ([`validate`]), and the client list ([`auth`]). Values are parsed
//! once into typed fields (addresses, token hashes), so an invalid value
//! cannot exist past startup. Every error names the key it is about and fits
//! on one line, because it is what an operator sees when startup stops.
//!
//! Must not: build backends, or know what the broker does with a value.

mod auth;
mod env;
mod load;
mod server;
mod shown;
mod syntax;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::auth::{
    certificate_name, configured_hashes, hash_as_token_error, sendable_token,
    spells_a_configured_hash, AuthClient, AuthMode, AuthSettings, IdPattern, TokenHash,
    MIN_TOKEN_LEN,
};
pub use self::env::ENV_PREFIX;
pub use self::load::{read_small_file, token_file_hashes, Source, CONFIG_FILE};
pub use self::shown::{breaks_a_line, printable};

#[derive(Debug, Clone, thiserror::Error)]
#[error("config error: {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    /// Say which environment variable set the value this error is about.
    fn with_env_origin(mut self, from_env: &[(String, String)]) -> Self {
        let key = self.key.replace('[', ".").replace(']', "");
        let origin = from_env.iter().rev().find(|(path, _)| {
            key == *path
                || key.starts_with(&format!("{path}."))
                || path.starts_with(&format!("{key}."))
        });
        if let Some((_, var)) = origin {
            let var = printable(var);
            self.problem = format!("{} (set by the environment variable {var})", self.problem);
        }
        self
    }

    /// Both escaped with [`printable`]: a key or value from the file or
    /// the environment may hold a newline or a terminal's escape codes,
    /// and the error must stay one line.
    pub(crate) fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: printable(&key.into()).into_owned(),
            problem: printable(&problem.into()).into_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub server: ServerSettings,
    pub log: LogSettings,
    pub keys: KeySettings,
    pub kms: KmsSettings,
    pub store: StoreSettings,
    pub cache: CacheSettings,
    pub auth: AuthSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// Serve /metrics on this address as well as on `listen` (e.g. to keep it
    /// off the public port). `""` in the file: only on `listen`.
    #[serde(with = "empty_is_none")]
    pub metrics_listen: Option<SocketAddr>,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    /// What to do when a dependency fails its check at start.
    pub preflight: Preflight,
    /// Requests handled at once; more are shed with 503 and Retry-After.
    pub max_concurrent_requests: u32,
    /// Client connections open at once on `listen`; more are closed as
    /// they are accepted. Bounds the memory and file descriptors clients
    /// can take, keeping some for the store and KMS.
    pub max_connections: u32,
    /// Longest request target (path and query) accepted; longer is 414.
    pub max_uri_bytes: u32,
    /// Most bytes of request headers accepted; more is 431.
    pub max_header_bytes: u32,
    pub tls: TlsSettings,
    /// Serve plain HTTP (no `[server.tls]`) on a `listen` that is not a
    /// loopback address: answers carry data keys and requests carry client
    /// tokens, so only where something else encrypts the traffic.
    pub allow_plaintext: bool,
}

/// `[server.tls]`: serve HTTPS with this certificate chain and key (PEM).
/// `client_ca` asks clients for certificates signed by it (`auth.mode =
/// "mtls"`). The files are re-read when they change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of `client_ca`: a listed client
    /// certificate is refused, on open connections too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_crl: Option<PathBuf>,
}

/// `server.preflight`: the store and every region's KMS key are checked at
/// start. `Strict` refuses to start on a failure; `Warn` starts, and
/// `/readyz` reports the failed check until it passes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Preflight {
    Strict,
    Warn,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KeySettings {
    pub data_key_bytes: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KmsProvider {
    Aws,
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KmsSettings {
    pub provider: KmsProvider,
    /// Preference order: reads try the first usable region first.
    pub regions: Vec<String>,
    pub min_regions_on_create: usize,
    pub call_timeout_ms: u64,
    /// Ask the next region when the current one has not answered in this
    /// long. 0: ask every region at once.
    pub hedge_after_ms: u64,
    /// Hedges sent because a region is slow, as a share of KMS calls.
    pub hedge_budget_percent: u32,
    /// Hedges that may be sent in a burst before the share applies.
    pub hedge_budget_burst: u32,
    /// KMS calls in flight to one region, at most.
    pub max_in_flight_per_region: u32,
    pub breaker_failures: u32,
    pub breaker_open_ms: u64,
    pub local: LocalKmsSettings,
    pub aws: AwsKmsSettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LocalKmsSettings {
    pub keyring: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AwsKmsSettings {
    /// Region -> KMS key id, ARN or alias.
    pub key_ids: BTreeMap<String, String>,
    /// Region -> endpoint URL (VPC endpoints, tests).
    pub endpoints: BTreeMap<String, String>,
    pub connect_timeout_ms: u64,
    /// Bound for one attempt; 0 = `call_timeout_ms / max_attempts`.
    pub attempt_timeout_ms: u64,
    /// Attempts per call including the first; the SDK's standard retry
    /// (with backoff) runs inside `call_timeout_ms`. One by default: with
    /// several regions, the broker's failover to the next region is the
    /// retry, and it does not wait out a throttled region's backoff.
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Dynamodb,
    Sqlite,
    Memory,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    pub backend: StoreBackend,
    pub call_timeout_ms: u64,
    pub sqlite: SqliteSettings,
    pub dynamodb: DynamoSettings,
    pub memory: MemorySettings,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// The memory store loses every key when the process stops; it is
    /// refused unless this is set (or `rkms --dev` is used).
    pub ephemeral_ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DynamoSettings {
    pub region: String,
    pub table: String,
    /// Empty: the SDK's endpoint for `region`.
    pub endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSettings {
    pub ttl_seconds: u64,
    pub max_entries: u64,
    pub stale_if_error_seconds: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            preflight: Preflight::Strict,
            max_concurrent_requests: 1024,
            max_connections: 10_000,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            tls: TlsSettings::default(),
            allow_plaintext: false,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for KeySettings {
    fn default() -> Self {
        Self { data_key_bytes: 32 }
    }
}

impl Default for KmsSettings {
    fn default() -> Self {
        Self {
            provider: KmsProvider::Local,
            regions: vec!["local-1".into(), "local-2".into(), "local-3".into()],
            min_regions_on_create: 2,
            call_timeout_ms: 2_000,
            hedge_after_ms: 250,
            hedge_budget_percent: 10,
            hedge_budget_burst: 10,
            max_in_flight_per_region: 256,
            breaker_failures: 3,
            breaker_open_ms: 10_000,
            local: LocalKmsSettings::default(),
            aws: AwsKmsSettings::default(),
        }
    }
}

impl Default for LocalKmsSettings {
    fn default() -> Self {
        Self {
            keyring: PathBuf::from("data/local-kms.json"),
        }
    }
}

impl Default for AwsKmsSettings {
    fn default() -> Self {
        Self {
            key_ids: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            connect_timeout_ms: 500,
            attempt_timeout_ms: 0,
            max_attempts: 1,
        }
    }
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Sqlite,
            call_timeout_ms: 2_000,
            sqlite: SqliteSettings::default(),
            dynamodb: DynamoSettings::default(),
            memory: MemorySettings::default(),
        }
    }
}

impl Default for SqliteSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("data/rkms.sqlite3"),
        }
    }
}

impl Default for DynamoSettings {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            table: "rkms_keys".into(),
            endpoint: String::new(),
        }
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            ttl_seconds: 300,
            max_entries: 100_000,
            stale_if_error_seconds: 0,
        }
    }
}

impl Settings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_grace_ms)
    }
}

/// `""` in the file is "not set"; anything else must parse.
mod empty_is_none {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("{text:?} is not an address like 0.0.0.0:9090"))
        })
    }
}

#[cfg(test)]
mod tests;
