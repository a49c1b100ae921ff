//! Where settings come from: built-in defaults, then the TOML file, then
//! `RKMS__SECTION__KEY` environment overrides; then validation.
//!
//! Must not: validate values one by one (`validate` does).

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;

use super::{ConfigError, Settings};

/// Environment prefix for overrides: `RKMS__SERVER__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "RKMS__";

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
        // A variable that is not UTF-8 cannot be an rkms override.
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
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

    /// The effective settings as TOML, with secrets replaced.
    pub fn redacted_toml(&self) -> String {
        let mut shown = match toml::Value::try_from(self) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render settings: {e}\n"),
        };
        let clients = shown
            .get_mut("auth")
            .and_then(|a| a.get_mut("clients"))
            .and_then(toml::Value::as_array_mut);
        for client in clients.into_iter().flatten() {
            if let Some(hash) = client.get_mut("token_sha256") {
                *hash = toml::Value::String("[REDACTED]".into());
            }
        }
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
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
