//! Where settings come from: built-in defaults, then the TOML file, then
//! `RKMS__SECTION__KEY` environment overrides; then validation.
//!
//! Must not: validate values one by one (`validate` does).

use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use sha2::Digest as _;

use super::env::{check_rust_log, env_key, env_value, override_name, WHOLE_MAPS};
use super::{ConfigError, Settings};

/// What an error names when the config file itself cannot be read (it
/// may come from `--config`, `RKMS_CONFIG` or `./config.toml`).
pub const CONFIG_FILE: &str = "config file";

/// Where the settings came from, for `check-config` and the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Defaults,
}

/// A small secret or certificate file, read whole: a regular file (checked
/// before the open, as opening some devices has effects, and on the file
/// opened) of at most `max` bytes, opened without blocking (a FIFO put
/// there would block every later read, and shutdown with it) and never
/// read past the limit (/dev/zero). The error names the path and the
/// problem, never the contents.
pub fn read_small_file(path: &Path, max: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let not_regular = || format!("{} is not a regular file", path.display());
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(not_regular());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)
        .map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    // Room for the whole file from the start: a buffer outgrown as it
    // fills is freed unwiped, with the secret's first bytes in it. The
    // margin keeps the reader's first probe out of a stack buffer too.
    let room = usize::try_from(meta.len().min(max)).unwrap_or(0) + 64;
    let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(room));
    file.take(max + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(bytes)
}

/// The SHA-256 of each token in a token file, one per line. None for a
/// file that holds none: the client then has no token and its requests are
/// refused (on a re-read, only once two reads in a row find the file so:
/// [`crate::auth::Authenticator::reload_token_files`]).
pub fn token_file_hashes(
    path: &Path,
    configured: &[(super::TokenHash, usize)],
) -> Result<Vec<super::TokenHash>, String> {
    let bytes = read_small_file(path, MAX_TOKEN_FILE_BYTES)?;
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return Err(format!("{} is not UTF-8 text", path.display()));
    };
    // A byte-order mark some editors write is no part of the token.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let hashes = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|token| {
            token_hash(token, configured).map_err(|why| format!("{}: {why}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if hashes.len() > MAX_TOKENS_PER_FILE {
        return Err(format!(
            "{} holds {} tokens, more than {MAX_TOKENS_PER_FILE}",
            path.display(),
            hashes.len()
        ));
    }
    Ok(hashes)
}

/// A token file's largest size, and most tokens: a rotation needs two.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;
const MAX_TOKENS_PER_FILE: usize = 16;

/// The SHA-256 of a token read from a file or a variable, which must be
/// long enough, have no whitespace inside and not be the hex of a
/// configured `token_sha256`.
fn token_hash(
    token: &str,
    configured: &[(super::TokenHash, usize)],
) -> Result<super::TokenHash, String> {
    if let Some(j) = super::spells_a_configured_hash(token, configured) {
        return Err(super::hash_as_token_error(j));
    }
    if token.len() < super::MIN_TOKEN_LEN || !super::sendable_token(token) {
        return Err(format!(
            "the token must be at least {} characters with no whitespace or control characters",
            super::MIN_TOKEN_LEN
        ));
    }
    Ok(super::TokenHash(
        sha2::Sha256::digest(token.as_bytes()).into(),
    ))
}

impl Settings {
    /// Which file to read: `--config`/`RKMS_CONFIG` (must exist), else
    /// `./config.toml` when present (an entry there that is not a file is
    /// an error), else built-in defaults only.
    pub fn locate(explicit: Option<&Path>) -> Result<Source, ConfigError> {
        match explicit {
            Some(path) if path.is_file() => Ok(Source::File(path.to_path_buf())),
            Some(path) => Err(ConfigError::new(
                "--config (or RKMS_CONFIG)",
                format!("{} does not exist or is not a file", path.display()),
            )),
            None if Path::new("config.toml").is_file() => {
                Ok(Source::File(PathBuf::from("config.toml")))
            }
            // Something is there but is no file (a dangling link, a
            // directory): the defaults would start a different store and
            // keyring unseen.
            None if std::fs::symlink_metadata("config.toml").is_ok() => Err(ConfigError::new(
                "config.toml",
                "./config.toml exists but is not a readable file (a dangling symbolic link, or a directory); fix it, or name a config with --config",
            )),
            None => Ok(Source::Defaults),
        }
    }

    /// Load from `source` plus the process environment, then validate.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        Self::load_with_env(source, &Self::environment()?)
    }

    /// The process environment, as the UTF-8 pairs [`Settings::load_with_env`]
    /// takes. Other variables that are not UTF-8 are left out; an `RKMS__`
    /// override that is not is an error naming its key, not a setting to
    /// drop: the default would apply unseen.
    pub fn environment() -> Result<Vec<(String, String)>, ConfigError> {
        let mut env = Vec::new();
        for (name, value) in std::env::vars_os() {
            match (name.into_string(), value.into_string()) {
                (Ok(name), Ok(value)) => env.push((name, value)),
                (name, _) => {
                    let name = name.unwrap_or_else(|n| n.to_string_lossy().into_owned());
                    // Dropped, it would log at log.level unseen.
                    if name == "RUST_LOG" {
                        return Err(ConfigError::new(
                            "RUST_LOG",
                            "is not valid UTF-8; unset it to log at log.level",
                        ));
                    }
                    // A near miss of an override says so first.
                    if let Some(rest) = override_name(&name)? {
                        return Err(ConfigError::new(
                            env_key(rest),
                            format!("the environment variable {name} is not valid UTF-8"),
                        ));
                    }
                }
            }
        }
        Ok(env)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(source: &Source, env: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Source::File(path) = source {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(CONFIG_FILE, format!("cannot read {}: {e}", path.display()))
            })?;
            super::syntax::check(&path.display().to_string(), &text)?;
            figment = figment.merge(Toml::string(&text));
        }
        let mut from_env = Vec::new();
        let mut overrides: Vec<(String, &String, &str)> = Vec::new();
        for (name, raw) in env {
            let Some(rest) = override_name(name)? else {
                continue;
            };
            let path = env_key(rest);
            // Two spellings of one key (`RKMS__SERVER__LISTEN` and
            // `RKMS__server__listen`): which one wins would depend on the
            // order the environment lists them in.
            if let Some((_, other, _)) = overrides.iter().find(|(p, _, _)| *p == path) {
                return Err(ConfigError::new(
                    path,
                    format!("set by two environment variables, {other} and {name}: keep one"),
                ));
            }
            overrides.push((path, name, raw.as_str()));
        }
        // Parents before children (`RKMS__KMS__AWS` before
        // `RKMS__KMS__AWS__KEY_IDS`), whatever order the environment lists
        // them in: the more specific variable wins.
        overrides.sort_by_key(|(path, _, _)| path.matches('.').count());
        for (path, name, raw) in overrides {
            let value = env_value(raw).map_err(|why| {
                ConfigError::new(
                    &path,
                    format!("the environment variable {name} is not usable JSON: {why}"),
                )
            })?;
            // Into the profile the file's values are in, after them. A map
            // keyed by region names replaces the file's whole, as README
            // says (a region left out is gone): a value that is not a map
            // replaces one, so one goes first. Any other table given as
            // JSON is merged into the file's by key. (A pair provider would
            // write the global profile, merged into the file's by key.)
            if WHOLE_MAPS.contains(&path.as_str())
                && matches!(value, figment::value::Value::Dict(..))
            {
                figment = figment.merge(Serialized::default(&path, false));
            }
            figment = figment.merge(Serialized::default(&path, value));
            from_env.push((path, name.clone()));
        }
        check_rust_log(env)?;
        let mut settings: Settings = figment
            .extract()
            .map_err(figment_error)
            .map_err(|e| e.with_env_origin(&from_env))?;
        settings
            .check_paths()
            .and_then(|()| settings.resolve_tokens(env))
            .map_err(|e| e.with_env_origin(&from_env))?;
        settings
            .validate()
            .map_err(|e| e.with_env_origin(&from_env))?;
        Ok(settings)
    }

    /// Parse a TOML document on top of the defaults (no environment).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        super::syntax::check("config", text)?;
        let mut settings: Settings = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(figment_error)?;
        settings.check_paths()?;
        settings.resolve_tokens(&[])?;
        settings.validate()?;
        Ok(settings)
    }

    /// Read each client's token from where it names (the hash, a file or an
    /// environment variable) and keep only its SHA-256. Errors name the
    /// source, never the token.
    fn resolve_tokens(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        let configured = super::configured_hashes(&self.auth.clients);
        for (i, client) in self.auth.clients.iter_mut().enumerate() {
            let key = format!("auth.clients[{i}]");
            if let Some(hash) = client.token_sha256 {
                client.resolved = vec![hash];
            } else if let Some(path) = &client.token_file {
                // None is a revoked client: refused, not a config error,
                // so that a restart keeps the revocation and serves the
                // others ([`crate::auth::Authenticator::new`] warns).
                // A file that is not there is not named: the value may be
                // a token pasted in place of its path.
                client.resolved = token_file_hashes(path, &configured).map_err(|why| {
                    let missing = std::fs::symlink_metadata(path)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                    let why = if missing {
                        "names no file (the name is not shown: it may be a token pasted in place of a path)".to_string()
                    } else {
                        why
                    };
                    ConfigError::new(format!("{key}.token_file"), why)
                })?;
            } else if let Some(var) = &client.token_env {
                let token = match env.iter().rev().find(|(k, _)| k == var) {
                    Some((_, v)) => zeroize::Zeroizing::new(v.trim_end().to_string()),
                    None => {
                        // Left out of `env` because it is not UTF-8, or unset.
                        // An unset one is named only when it is spelt as
                        // variables are (`RKMS_TOKEN`): the value may be a
                        // token pasted in place of the variable's name.
                        let why = if std::env::var_os(var).is_some() {
                            format!("the environment variable {var} is not valid UTF-8")
                        } else if spelt_as_a_variable(var) {
                            format!("the environment variable {var} is not set")
                        } else {
                            "names an environment variable that is not set (the name is not shown, as it is not spelt as variables are, A_NAME_LIKE_THIS: it may be a token pasted in place of a name)".to_string()
                        };
                        return Err(ConfigError::new(format!("{key}.token_env"), why));
                    }
                };
                client.resolved = vec![token_hash(&token, &configured)
                    .map_err(|why| ConfigError::new(format!("{key}.token_env"), why))?];
            }
        }
        Ok(())
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

/// Capitals, digits and underscores, with at least one underscore, as
/// environment variables are named (`RKMS_TOKEN`); tokens are seldom so.
fn spelt_as_a_variable(name: &str) -> bool {
    name.len() <= 64
        && name.contains('_')
        && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn figment_error(error: figment::Error) -> ConfigError {
    // `auth.clients[0].token_sha256`, as validation spells a list's item
    // (figment's path says `auth.clients.0.token_sha256`).
    let mut key = String::new();
    for part in error.path.iter().filter(|p| p.as_str() != "default") {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    let key = if key.is_empty() {
        "config".to_string()
    } else {
        key
    };
    // Values under [auth] are never echoed back: they may be token hashes.
    let secret = key.starts_with("auth");
    let problem = match &error.kind {
        figment::error::Kind::Message(m) => m.replace('\n', " "),
        figment::error::Kind::InvalidType(_, expected)
        | figment::error::Kind::InvalidValue(_, expected)
            if secret =>
        {
            format!("invalid value: expected {expected}")
        }
        // A variant name given where a secret goes (`mode = "<token>"`).
        figment::error::Kind::UnknownVariant(_, expected) if secret => {
            format!("unknown variant, expected one of {}", expected.join(", "))
        }
        other => other.to_string().replace('\n', " "),
    };
    ConfigError::new(key, problem)
}
