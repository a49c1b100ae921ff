//! The `[auth]` section: the client list and its checks. A token hash is
//! parsed once, from hex, into 32 bytes; a malformed one stops startup.
//!
//! Must not: authenticate requests (`auth` does, from these settings).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, Settings};

/// SHA-256 of a bearer token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        // The value is not echoed back: it is close to a secret.
        hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
            serde::de::Error::custom("must be 64 hex digits (the SHA-256 of the token)")
        })?;
        Ok(Self(out))
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash([REDACTED])")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// When false, every caller is `anonymous` and may read any id.
    pub enabled: bool,
    pub clients: Vec<AuthClient>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthClient {
    pub name: String,
    /// SHA-256 of the client's bearer token (64 hex digits in the file);
    /// the token itself is never stored in config.
    pub token_sha256: TokenHash,
    /// Id prefixes this client may read and create. `""` allows every id.
    pub prefixes: Vec<String>,
}

impl Settings {
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
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
            if let Some(j) = self.auth.clients[..i]
                .iter()
                .position(|c| c.token_sha256 == client.token_sha256)
            {
                return Err(ConfigError::new(
                    format!("{key}.token_sha256"),
                    format!("is the same token as auth.clients[{j}]; every client needs its own"),
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
}
