//! Overrides from the environment (`RKMS__TABLE__KEY`): the key a
//! variable names, its value, and the spellings refused because they would
//! be ignored or read two ways; and `RUST_LOG`, checked with the config.

use super::{ConfigError, Settings};

/// Environment prefix for overrides: `RKMS__SERVER__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "RKMS__";

/// Settings that are maps keyed by region names: set from the environment,
/// as JSON, each replaces the file's map whole.
pub(super) const WHOLE_MAPS: &[&str] = &["kms.aws.key_ids", "kms.aws.endpoints"];

/// The config key an override names: `SERVER__LISTEN` -> `server.listen`.
pub(super) fn env_key(rest: &str) -> String {
    rest.split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

/// An environment value: JSON for structured values (`[...]`, `{...}`),
/// so tables, arrays of tables and maps keyed by region names with hyphens
/// can be given; else the TOML-like scalar syntax (`7`, `true`, `"x"`,
/// `[a, b]`); else the text as it is.
pub(super) fn env_value(raw: &str) -> Result<figment::value::Value, String> {
    let trimmed = raw.trim_start();
    let mut json_error = None;
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        match serde_json::from_str::<serde_json::Value>(raw) {
            Ok(json) => {
                // A JSON object keeps the last of two entries with one name,
                // so `{"ids": ["billing/*"], "ids": ["*"]}` would widen a
                // client unseen; the same in the file is an error.
                serde_json::from_str::<EachNameOnce>(raw).map_err(|e| e.to_string())?;
                if let Ok(value) = figment::value::Value::serialize(json) {
                    return Ok(value);
                }
            }
            Err(e) => json_error = Some(e),
        }
    }
    match raw.parse::<figment::value::Value>() {
        // Neither JSON nor the scalar syntax's list or table: say what is
        // wrong with it as JSON (a trailing comma, single quotes), not
        // that a string is no list.
        Ok(figment::value::Value::String(..)) | Err(_) if json_error.is_some() => {
            Err(json_error.map_or_else(String::new, |e| e.to_string()))
        }
        Ok(value) => Ok(value),
        Err(_) => Ok(raw.to_string().into()),
    }
}

/// The part of `name` after [`ENV_PREFIX`] when it is an override, `None`
/// for other variables, and an error for a near miss that would otherwise
/// be ignored unseen: the prefix in other letter cases (`rkms__…`), or
/// one underscore where two belong, anywhere (`RKMS_SERVER_LISTEN`,
/// `RKMS_STORE_SQLITE_PATH`, `RKMS_CACHE__TTL_SECONDS`): a store path so
/// ignored would start an empty store, and every id a new key.
pub(super) fn override_name(name: &str) -> Result<Option<&str>, ConfigError> {
    if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
        // `RKMS__SERVER__LISTEN__` or `RKMS__SERVER____LISTEN`: a key with
        // an empty part, which names no setting as written.
        if rest.split("__").any(str::is_empty) {
            return Err(ConfigError::new(
                env_key(rest.trim_matches('_')),
                format!("the environment variable {name} is not read: it has an empty part (two underscores too many)"),
            ));
        }
        return Ok(Some(rest));
    }
    let upper = name.to_ascii_uppercase();
    let key = if let Some(rest) = upper.strip_prefix(ENV_PREFIX) {
        env_key(rest)
    } else {
        // Underscores where others belong: only a name that spells a
        // setting, so that a token's variable (`RKMS_AUTH_TOKEN`) is left
        // alone.
        let Some(key) = upper.strip_prefix("RKMS_").and_then(spelt_setting) else {
            return Ok(None);
        };
        key
    };
    Err(ConfigError::new(
        key,
        format!(
            "the environment variable {name} is not read: overrides are spelt {ENV_PREFIX}TABLE__KEY, in capitals with two underscores (e.g. RKMS__SERVER__LISTEN)"
        ),
    ))
}

/// The setting (`store.sqlite.path`) that `spelt` names with its
/// separators written any way (`STORE_SQLITE_PATH`, `STORE_SQLITE__PATH`),
/// if one does.
fn spelt_setting(spelt: &str) -> Option<String> {
    let squashed = |s: &str| -> String {
        s.chars()
            .filter(|c| !matches!(c, '_' | '.'))
            .map(|c| c.to_ascii_lowercase())
            .collect()
    };
    let wanted = squashed(spelt);
    setting_keys()
        .into_iter()
        .find(|key| squashed(key) == wanted)
}

/// Every setting's key (`server.tls.cert`), and the maps set whole
/// ([`WHOLE_MAPS`]); not the tables that hold them (`RKMS_LOG` spells no
/// setting): the defaults, with the settings that have none given, as a
/// file may give them.
pub(super) fn setting_keys() -> Vec<String> {
    let mut all = Settings::default();
    all.server.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let tls = &mut all.server.tls;
    for file in [
        &mut tls.cert,
        &mut tls.key,
        &mut tls.client_ca,
        &mut tls.client_crl,
    ] {
        *file = Some(std::path::PathBuf::new());
    }
    fn walk(prefix: &str, table: &toml::Table, keys: &mut Vec<String>) {
        for (name, value) in table {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            match value {
                toml::Value::Table(inner) if !WHOLE_MAPS.contains(&key.as_str()) => {
                    walk(&key, inner, keys)
                }
                _ => keys.push(key),
            }
        }
    }
    let mut keys = Vec::new();
    if let Ok(toml::Value::Table(table)) = toml::Value::try_from(all) {
        walk("", &table, &mut keys);
    }
    keys
}

/// Any JSON value, refused when an object names a field twice.
struct EachNameOnce;

impl<'de> serde::Deserialize<'de> for EachNameOnce {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EachNameOnce)
    }
}

impl<'de> serde::de::Visitor<'de> for EachNameOnce {
    type Value = EachNameOnce;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut seen = std::collections::BTreeSet::new();
        while let Some(name) = map.next_key::<String>()? {
            map.next_value::<EachNameOnce>()?;
            if !seen.insert(name.clone()) {
                return Err(serde::de::Error::custom(format!(
                    "an object names {name:?} twice"
                )));
            }
        }
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<EachNameOnce>()?.is_some() {}
        Ok(self)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
}

/// `RUST_LOG`, when set and not blank, must be a filter: one that is not
/// was dropped for `log.level` unseen (and a blank one, read as a filter,
/// hid every line below ERROR, the warnings a start gives included).
pub(super) fn check_rust_log(env: &[(String, String)]) -> Result<(), ConfigError> {
    let Some((_, filter)) = env.iter().find(|(name, _)| name == "RUST_LOG") else {
        return Ok(());
    };
    if filter.trim().is_empty() {
        return Ok(());
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(drop)
        .map_err(|e| {
            ConfigError::new(
                "RUST_LOG",
                format!("not a log filter ({e}); unset it to log at log.level"),
            )
        })
}
