//! The configuration schema and its loading: built-in defaults, then the TOML
//! file, then `RKMS__SECTION__KEY` environment overrides, then validation of
//! every field and of the whole. Every error names the key it is about and
//! fits on one line, because it is what an operator sees when startup stops.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Environment prefix for overrides: `RKMS__SERVER__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "RKMS__";

#[derive(Debug, Clone, thiserror::Error)]
#[error("config error: {key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            problem: problem.into(),
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
    pub listen: String,
    /// Serve /metrics on this address as well as on `listen` (e.g. to keep it
    /// off the public port). Empty: only on `listen`.
    pub metrics_listen: String,
    pub request_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
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

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// When false, every caller is `anonymous` and may read any id.
    pub enabled: bool,
    pub clients: Vec<AuthClient>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthClient {
    pub name: String,
    /// Hex SHA-256 of the client's bearer token; the token itself is never
    /// stored in config.
    pub token_sha256: String,
    /// Id prefixes this client may read and create. `""` allows every id.
    pub prefixes: Vec<String>,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("name", &self.name)
            .field("token_sha256", &"[REDACTED]")
            .field("prefixes", &self.prefixes)
            .finish()
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: String::new(),
            request_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
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

/// Where the settings came from, for `check-config` and the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

impl Settings {
    /// Which file to read: `--config`/`RKMS_CONFIG` (must exist), else
    /// `./config.toml` when present, else built-in defaults only.
    pub fn locate(explicit: Option<&Path>) -> Result<Source, ConfigError> {
        match explicit {
            Some(path) if path.is_file() => Ok(Source::File(path.to_path_buf())),
            Some(path) => Err(ConfigError::new(
                "--config",
                format!("{} does not exist or is not a file", path.display()),
            )),
            None if Path::new("config.toml").is_file() => {
                Ok(Source::File(PathBuf::from("config.toml")))
            }
            None => Ok(Source::Defaults),
        }
    }

    /// Load from `source` plus the process environment, then validate.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(source, &env)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(source: &Source, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Source::File(path) = source {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path = rest
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
                .join(".");
            // Same value syntax as TOML scalars and arrays: 7, true, "x", [a, b].
            let value: figment::value::Value = raw.parse().unwrap_or_else(|_| raw.clone().into());
            figment = figment.merge((path, value));
        }
        let settings: Settings = figment.extract().map_err(figment_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parse a TOML document on top of the defaults (no environment).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(figment_error)?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("server.listen", &self.server.listen)?;
        if !self.server.metrics_listen.is_empty() {
            parse_addr("server.metrics_listen", &self.server.metrics_listen)?;
        }
        positive("server.request_timeout_ms", self.server.request_timeout_ms)?;
        if !matches!(
            self.log.level.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        ) {
            return Err(ConfigError::new(
                "log.level",
                format!(
                    "{:?} is not one of trace, debug, info, warn, error, off",
                    self.log.level
                ),
            ));
        }
        if !(16..=64).contains(&self.keys.data_key_bytes) {
            return Err(ConfigError::new(
                "keys.data_key_bytes",
                format!(
                    "must be between 16 and 64, got {}",
                    self.keys.data_key_bytes
                ),
            ));
        }
        self.validate_kms()?;
        self.validate_store()?;
        if self.cache.ttl_seconds > 0 && self.cache.max_entries == 0 {
            return Err(ConfigError::new(
                "cache.max_entries",
                "must be at least 1 while cache.ttl_seconds > 0 (set ttl_seconds = 0 to disable the cache)",
            ));
        }
        self.validate_auth()
    }

    fn validate_kms(&self) -> Result<(), ConfigError> {
        let kms = &self.kms;
        if kms.regions.is_empty() {
            return Err(ConfigError::new(
                "kms.regions",
                "must list at least one region",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for region in &kms.regions {
            if region.trim().is_empty()
                || region.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ConfigError::new(
                    "kms.regions",
                    format!("{region:?} is not a valid region name"),
                ));
            }
            if !seen.insert(region) {
                return Err(ConfigError::new(
                    "kms.regions",
                    format!("{region:?} is listed twice"),
                ));
            }
        }
        if kms.min_regions_on_create == 0 || kms.min_regions_on_create > kms.regions.len() {
            return Err(ConfigError::new(
                "kms.min_regions_on_create",
                format!(
                    "must be between 1 and the number of regions ({}), got {}",
                    kms.regions.len(),
                    kms.min_regions_on_create
                ),
            ));
        }
        positive("kms.call_timeout_ms", kms.call_timeout_ms)?;
        if kms.hedge_budget_percent > 100 {
            return Err(ConfigError::new(
                "kms.hedge_budget_percent",
                format!(
                    "must be between 0 and 100, got {}",
                    kms.hedge_budget_percent
                ),
            ));
        }
        positive(
            "kms.max_in_flight_per_region",
            u64::from(kms.max_in_flight_per_region),
        )?;
        positive("kms.breaker_failures", u64::from(kms.breaker_failures))?;
        positive("kms.breaker_open_ms", kms.breaker_open_ms)?;
        match kms.provider {
            KmsProvider::Local => {
                if kms.local.keyring.as_os_str().is_empty() {
                    return Err(ConfigError::new("kms.local.keyring", "must be a file path"));
                }
            }
            KmsProvider::Aws => {
                for region in &kms.regions {
                    match kms.aws.key_ids.get(region) {
                        Some(id) if !id.trim().is_empty() => {}
                        _ => {
                            return Err(ConfigError::new(
                                format!("kms.aws.key_ids.{region}"),
                                "provider \"aws\" needs a KMS key id, ARN or alias for every region in kms.regions",
                            ))
                        }
                    }
                }
                for region in kms.aws.key_ids.keys() {
                    if !kms.regions.contains(region) {
                        return Err(ConfigError::new(
                            format!("kms.aws.key_ids.{region}"),
                            "region is not listed in kms.regions",
                        ));
                    }
                }
                for (region, url) in &kms.aws.endpoints {
                    if !kms.regions.contains(region) {
                        return Err(ConfigError::new(
                            format!("kms.aws.endpoints.{region}"),
                            "region is not listed in kms.regions",
                        ));
                    }
                    check_url(&format!("kms.aws.endpoints.{region}"), url)?;
                }
                positive("kms.aws.connect_timeout_ms", kms.aws.connect_timeout_ms)?;
                if kms.aws.attempt_timeout_ms > kms.call_timeout_ms {
                    return Err(ConfigError::new(
                        "kms.aws.attempt_timeout_ms",
                        format!(
                            "must not exceed kms.call_timeout_ms ({}), got {}",
                            kms.call_timeout_ms, kms.aws.attempt_timeout_ms
                        ),
                    ));
                }
                if !(1..=10).contains(&kms.aws.max_attempts) {
                    return Err(ConfigError::new(
                        "kms.aws.max_attempts",
                        format!("must be between 1 and 10, got {}", kms.aws.max_attempts),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        positive("store.call_timeout_ms", self.store.call_timeout_ms)?;
        match self.store.backend {
            StoreBackend::Sqlite => {
                if self.store.sqlite.path.as_os_str().is_empty() {
                    return Err(ConfigError::new("store.sqlite.path", "must be a file path"));
                }
            }
            StoreBackend::Dynamodb => {
                let d = &self.store.dynamodb;
                if d.region.trim().is_empty() {
                    return Err(ConfigError::new("store.dynamodb.region", "is required"));
                }
                let table_ok = (3..=255).contains(&d.table.len())
                    && d.table
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                if !table_ok {
                    return Err(ConfigError::new(
                        "store.dynamodb.table",
                        format!(
                            "{:?} is not a DynamoDB table name (3-255 of a-z A-Z 0-9 _ - .)",
                            d.table
                        ),
                    ));
                }
                if !d.endpoint.is_empty() {
                    check_url("store.dynamodb.endpoint", &d.endpoint)?;
                }
            }
            StoreBackend::Memory if !self.store.memory.ephemeral_ok => {
                return Err(ConfigError::new(
                    "store.backend",
                    "\"memory\" loses every key when rkms stops; set store.memory.ephemeral_ok = true (tests, demos) or run `rkms --dev`",
                ));
            }
            StoreBackend::Memory => {}
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        if self.auth.enabled && self.auth.clients.is_empty() {
            return Err(ConfigError::new(
                "auth.clients",
                "auth is enabled but no clients are configured; every request would be refused",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, client) in self.auth.clients.iter().enumerate() {
            let key = format!("auth.clients[{i}]");
            if client.name.trim().is_empty() || client.name == "anonymous" {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    "must be a non-empty name other than \"anonymous\"",
                ));
            }
            if !names.insert(client.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("{:?} is used twice", client.name),
                ));
            }
            if client.token_sha256.len() != 64 || hex::decode(&client.token_sha256).is_err() {
                return Err(ConfigError::new(
                    format!("{key}.token_sha256"),
                    "must be 64 hex digits (the SHA-256 of the token)",
                ));
            }
            if client.prefixes.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.prefixes"),
                    "must list at least one id prefix (\"\" allows every id)",
                ));
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        // Validated in `validate`; the fallback is never reached for loaded settings.
        self.server
            .listen
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_listen.parse().ok()
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_grace_ms)
    }

    /// The effective settings as TOML, with secrets replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for client in &mut shown.auth.clients {
            client.token_sha256 = "[REDACTED]".into();
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("{value:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.starts_with('/') && !url.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(ConfigError::new(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        )),
    }
}

fn figment_error(error: figment::Error) -> ConfigError {
    let key = error
        .path
        .iter()
        .filter(|p| p.as_str() != "default")
        .cloned()
        .collect::<Vec<_>>()
        .join(".");
    let key = if key.is_empty() {
        "config".to_string()
    } else {
        key
    };
    let problem = match &error.kind {
        figment::error::Kind::Message(m) => m.replace('\n', " "),
        other => other.to_string().replace('\n', " "),
    };
    ConfigError { key, problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_documented_embedded_default() {
        let defaults = Settings::default();
        defaults.validate().unwrap();
        let shipped = Settings::from_toml(include_str!("../config.toml")).unwrap();
        assert_eq!(
            shipped, defaults,
            "config.toml must document the built-in defaults"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = Settings::from_toml("[server]\nlisten_addr = \"x\"\n").unwrap_err();
        assert_eq!(err.key, "server.listen_addr");
        let err = Settings::from_toml("[nope]\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[server]\nlisten = \"localhost\"", "server.listen"),
            ("[kms]\nmin_regions_on_create = 4", "kms.min_regions_on_create"),
            ("[kms]\nregions = []", "kms.regions"),
            ("[kms]\nregions = [\"a\", \"a\"]", "kms.regions"),
            ("[kms]\nprovider = \"gcp\"", "kms.provider"),
            ("[kms]\nprovider = \"aws\"\nregions = [\"us-east-1\"]\nmin_regions_on_create = 1", "kms.aws.key_ids.us-east-1"),
            (
                "[kms]\nprovider = \"aws\"\nregions = [\"r1\"]\nmin_regions_on_create = 1\n[kms.aws.key_ids]\nr1 = \"alias/x\"\n[kms.aws.endpoints]\nr1 = \"localhost:4566\"",
                "kms.aws.endpoints.r1",
            ),
            (
                "[kms]\nprovider = \"aws\"\nregions = [\"r1\"]\nmin_regions_on_create = 1\n[kms.aws]\nattempt_timeout_ms = 5000\n[kms.aws.key_ids]\nr1 = \"alias/x\"",
                "kms.aws.attempt_timeout_ms",
            ),
            ("[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\ntable = \"\"", "store.dynamodb.table"),
            ("[store]\nbackend = \"dynamodb\"\n[store.dynamodb]\nregion = \"\"", "store.dynamodb.region"),
            ("[store.dynamodb]\nendpoint = \"ftp://x\"\n[store]\nbackend = \"dynamodb\"", "store.dynamodb.endpoint"),
            ("[keys]\ndata_key_bytes = 8", "keys.data_key_bytes"),
            ("[kms]\ncall_timeout_ms = -1", "kms.call_timeout_ms"),
            ("[log]\nlevel = \"loud\"", "log.level"),
            ("[auth]\nenabled = true", "auth.clients"),
            ("[store]\nbackend = \"memory\"", "store.backend"),
            ("[kms]\nhedge_budget_percent = 101", "kms.hedge_budget_percent"),
            ("[kms]\nmax_in_flight_per_region = 0", "kms.max_in_flight_per_region"),
        ];
        for (text, key) in cases {
            let err = Settings::from_toml(text).unwrap_err();
            assert_eq!(err.key, key, "for {text:?}: {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn env_overrides_win_and_are_validated() {
        let env = vec![
            (
                "RKMS__SERVER__LISTEN".to_string(),
                "0.0.0.0:9999".to_string(),
            ),
            ("RKMS__CACHE__TTL_SECONDS".to_string(), "7".to_string()),
            (
                "RKMS__KMS__REGIONS".to_string(),
                "[\"a\", \"b\"]".to_string(),
            ),
            ("UNRELATED".to_string(), "1".to_string()),
        ];
        let s = Settings::load_with_env(&Source::Defaults, &env).unwrap();
        assert_eq!(s.server.listen, "0.0.0.0:9999");
        assert_eq!(s.cache.ttl_seconds, 7);
        assert_eq!(s.kms.regions, vec!["a", "b"]);

        let env = vec![("RKMS__CACHE__TTL_SECONDS".to_string(), "soon".to_string())];
        let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
        assert_eq!(err.key, "cache.ttl_seconds", "{err}");

        let env = vec![("RKMS__SERVER__LISTN".to_string(), "x".to_string())];
        let err = Settings::load_with_env(&Source::Defaults, &env).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }

    #[test]
    fn redacted_output_hides_token_hashes() {
        let text = format!(
            "[auth]\nenabled = true\n[[auth.clients]]\nname = \"app\"\ntoken_sha256 = \"{}\"\nprefixes = [\"app/\"]\n",
            "ab".repeat(32)
        );
        let s = Settings::from_toml(&text).unwrap();
        let shown = s.redacted_toml();
        assert!(!shown.contains(&"ab".repeat(32)));
        assert!(shown.contains("REDACTED"));
        assert!(!format!("{s:?}").contains(&"ab".repeat(32)));
    }
}
