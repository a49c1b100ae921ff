//! Checks of each field and of the whole, after parsing. Each failure is
//! one `ConfigError` naming its key.
//!
//! Must not: read files or the environment.

use super::{ConfigError, KmsProvider, Settings, StoreBackend};

/// The longest region name, in bytes (AWS's are about 15).
const MAX_REGION_BYTES: usize = 64;

impl Settings {
    /// Paths with a control character (a newline, a NUL) are refused:
    /// a typo, and one that would split or cut the messages that name
    /// them.
    pub(super) fn check_paths(&self) -> Result<(), ConfigError> {
        let tls = &self.server.tls;
        let mut paths: Vec<(String, &std::path::Path)> = vec![
            ("kms.local.keyring".into(), &self.kms.local.keyring),
            ("store.sqlite.path".into(), &self.store.sqlite.path),
        ];
        for (key, path) in [
            ("server.tls.cert", &tls.cert),
            ("server.tls.key", &tls.key),
            ("server.tls.client_ca", &tls.client_ca),
            ("server.tls.client_crl", &tls.client_crl),
        ] {
            if let Some(path) = path {
                paths.push((key.into(), path));
            }
        }
        for (i, client) in self.auth.clients.iter().enumerate() {
            if let Some(path) = &client.token_file {
                paths.push((format!("auth.clients[{i}].token_file"), path));
            }
        }
        for (key, path) in paths {
            use std::os::unix::ffi::OsStrExt;
            if path.as_os_str().as_bytes().iter().any(u8::is_ascii_control) {
                return Err(ConfigError::new(
                    key,
                    format!("{path:?} holds a control character (a newline, a NUL)"),
                ));
            }
        }
        // The two files rkms makes: a directory there is a path cut short
        // (`.`), and one file for both would hold neither.
        let (keyring, db) = (&self.kms.local.keyring, &self.store.sqlite.path);
        for (key, path) in [("kms.local.keyring", keyring), ("store.sqlite.path", db)] {
            if path.is_dir() {
                return Err(ConfigError::new(
                    key,
                    format!("{} is a directory: give the path of a file", path.display()),
                ));
            }
        }
        let same_file = keyring == db
            || matches!(
                (std::fs::canonicalize(keyring), std::fs::canonicalize(db)),
                (Ok(a), Ok(b)) if a == b
            );
        if self.kms.provider == KmsProvider::Local
            && self.store.backend == StoreBackend::Sqlite
            && same_file
        {
            return Err(ConfigError::new(
                "kms.local.keyring",
                format!(
                    "{} is also store.sqlite.path: the keyring and the store need a file each",
                    keyring.display()
                ),
            ));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        // Durations past these are mistakes (a value in the wrong unit),
        // and timers that far out overflow the clock.
        for (key, value) in [
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("server.shutdown_grace_ms", self.server.shutdown_grace_ms),
            ("kms.call_timeout_ms", self.kms.call_timeout_ms),
            ("kms.hedge_after_ms", self.kms.hedge_after_ms),
            ("kms.breaker_open_ms", self.kms.breaker_open_ms),
            (
                "kms.aws.connect_timeout_ms",
                self.kms.aws.connect_timeout_ms,
            ),
            (
                "kms.aws.attempt_timeout_ms",
                self.kms.aws.attempt_timeout_ms,
            ),
            ("store.call_timeout_ms", self.store.call_timeout_ms),
        ] {
            at_most(key, value, MAX_MS, "ms (one day)")?;
        }
        for (key, value) in [
            ("cache.ttl_seconds", self.cache.ttl_seconds),
            (
                "cache.stale_if_error_seconds",
                self.cache.stale_if_error_seconds,
            ),
        ] {
            at_most(key, value, MAX_SECONDS, "seconds (ten years)")?;
        }
        self.validate_server()?;
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
        // Stale keys are served from the cache, which ttl_seconds = 0 turns
        // off: the setting would be ignored unseen.
        if self.cache.ttl_seconds == 0 && self.cache.stale_if_error_seconds > 0 {
            return Err(ConfigError::new(
                "cache.stale_if_error_seconds",
                "must be 0 while cache.ttl_seconds = 0: stale keys are served from the cache, which is then off",
            ));
        }
        self.validate_auth()?;
        self.validate_plaintext()
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
            // Region names go into every stored record, metric labels and
            // the local keyring's sealed ciphertexts (which take 255 bytes
            // at most): a longer one passed here and failed every wrap.
            if region.len() > MAX_REGION_BYTES {
                return Err(ConfigError::new(
                    "kms.regions",
                    format!(
                        "a region name is {} bytes; at most {MAX_REGION_BYTES}",
                        region.len()
                    ),
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
        // Under every provider: a map key naming no configured region is a
        // typo that would otherwise be ignored (or bite on a provider switch).
        let maps = [
            ("kms.aws.key_ids", &kms.aws.key_ids),
            ("kms.aws.endpoints", &kms.aws.endpoints),
        ];
        for (map, entries) in maps {
            if let Some(region) = entries.keys().find(|r| !kms.regions.contains(r)) {
                let hint = kms
                    .regions
                    .iter()
                    .find(|r| r.replace('-', "_") == *region)
                    .map(|r| {
                        format!(
                            "; did you mean {r:?}? Environment variable names cannot hold '-': set the whole map as JSON, e.g. RKMS__{}='{{\"{r}\":\"...\"}}'",
                            map.replace('.', "__").to_ascii_uppercase()
                        )
                    })
                    .unwrap_or_default();
                return Err(ConfigError::new(
                    format!("{map}.{region}"),
                    format!("{region:?} is not listed in kms.regions{hint}"),
                ));
            }
        }
        match kms.provider {
            KmsProvider::Local => {
                if kms.local.keyring.as_os_str().is_empty() {
                    return Err(ConfigError::new("kms.local.keyring", "must be a file path"));
                }
            }
            KmsProvider::Aws => {
                for region in &kms.regions {
                    let key = format!("kms.aws.key_ids.{region}");
                    match kms.aws.key_ids.get(region) {
                        Some(id) if !id.trim().is_empty() => check_key_id(&key, region, id)?,
                        _ => {
                            return Err(ConfigError::new(
                                key,
                                "provider \"aws\" needs a KMS key id, ARN or alias for every region in kms.regions",
                            ))
                        }
                    }
                }
                for (region, url) in &kms.aws.endpoints {
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
}

/// The longest `*_ms` setting: one day.
const MAX_MS: u64 = 86_400_000;
/// The longest cache lifetime: ten years.
const MAX_SECONDS: u64 = 10 * 365 * 86_400;

fn at_most(key: &str, value: u64, max: u64, unit: &str) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::new(
            key,
            format!("must be at most {max} {unit}, got {value}"),
        ));
    }
    Ok(())
}

pub(super) fn positive(key: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(key, "must be greater than 0"));
    }
    Ok(())
}

pub(super) fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
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

/// A KMS key id, ARN or alias has no whitespace or control character, and
/// an ARN names the region it is configured for: KMS refuses a key of
/// another region, so a region given another's ARN could never serve.
fn check_key_id(key: &str, region: &str, id: &str) -> Result<(), ConfigError> {
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ConfigError::new(
            key,
            format!("{id:?} holds whitespace or a control character"),
        ));
    }
    // arn:PARTITION:kms:REGION:ACCOUNT:key/ID or alias/NAME
    if let Some(rest) = id.strip_prefix("arn:") {
        let arn_region = rest.split(':').nth(2).unwrap_or("");
        if arn_region != region {
            return Err(ConfigError::new(
                key,
                format!(
                    "the ARN {id:?} is of a key in region {arn_region:?}, not {region:?}: KMS in {region} refuses it (are two regions' key ids swapped?)"
                ),
            ));
        }
    }
    Ok(())
}
