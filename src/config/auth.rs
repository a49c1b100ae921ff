//! The `[auth]` section: the mode, the client list and its checks. Id
//! patterns and token hashes are parsed once into typed values; a malformed
//! one stops startup. Tokens named by `token_file` / `token_env` are read by
//! `load` (this module reads no files) and kept only as their SHA-256.
//!
//! Must not: authenticate requests (`auth` does, from these settings);
//! echo a token or its hash in an error.

use std::path::PathBuf;

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

/// `auth.mode`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every caller is `anonymous` and may read and create every id. Only on
    /// a loopback `server.listen`, unless `allow_unauthenticated` is set.
    None,
    /// `Authorization: Bearer <token>`, matched to a client by its hash.
    Token,
    /// A TLS client certificate from `server.tls.client_ca`; its DNS or URI
    /// SAN is the client's name.
    Mtls,
}

/// One entry of `ids`: an exact id, `prefix*`, or `*` for every id. There
/// is no implicit prefix matching: `tenant1` matches only `tenant1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdPattern {
    Any,
    Prefix(String),
    Exact(String),
}

impl IdPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing; use \"*\" for every id".into());
        }
        if text.chars().any(char::is_control) {
            return Err("a pattern cannot hold control characters".into());
        }
        let (body, glob) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err(format!(
                "{text:?}: '*' is allowed only at the end (\"prefix*\") or alone (\"*\")"
            ));
        }
        Ok(match (body.is_empty(), glob) {
            (true, _) => Self::Any,
            (false, true) => Self::Prefix(body.to_string()),
            (false, false) => Self::Exact(body.to_string()),
        })
    }

    pub fn matches(&self, id: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Prefix(p) => id.starts_with(p.as_str()),
            Self::Exact(e) => id == e,
        }
    }
}

impl std::fmt::Display for IdPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Exact(e) => f.write_str(e),
        }
    }
}

impl Serialize for IdPattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IdPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Allow `mode = "none"` on a listen address other than loopback.
    pub allow_unauthenticated: bool,
    pub clients: Vec<AuthClient>,
    /// Replaced by `mode`; read only to say so.
    #[serde(skip_serializing)]
    pub enabled: Option<bool>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::None,
            allow_unauthenticated: false,
            clients: Vec::new(),
            enabled: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthClient {
    /// In the audit trail; for `mtls`, the certificate's DNS or URI SAN.
    pub name: String,
    /// SHA-256 of the client's bearer token (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<TokenHash>,
    /// A file holding the token itself (a mounted Kubernetes Secret), or
    /// several, one per line (during a rotation). Re-read while rkms runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding the token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// Ids this client may read: exact ids, `prefix*`, or `*`.
    #[serde(default)]
    pub ids: Vec<IdPattern>,
    /// May this client create ids it may read that do not exist yet.
    #[serde(default)]
    pub create: bool,
    /// Sustained requests per second; 0 = unlimited.
    #[serde(default)]
    pub requests_per_second: u32,
    /// Requests allowed at once above the rate; 0 = `requests_per_second`.
    #[serde(default)]
    pub burst: u32,
    /// Replaced by `ids`; read only to say so.
    #[serde(default, skip_serializing)]
    pub prefixes: Option<Vec<String>>,
    /// The hashes of the tokens the client is known by, from whichever
    /// source it names: one, or one per line of its `token_file`.
    #[serde(skip)]
    pub resolved: Vec<TokenHash>,
}

impl AuthSettings {
    /// One line, naming its key, for each client whose `token_file` holds
    /// no token (emptied to revoke it): said at start by the server and by
    /// `check-config`.
    pub fn tokenless_clients(&self) -> Vec<String> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.token_file.is_some() && c.resolved.is_empty())
            .map(|(i, _)| format!("auth.clients[{i}].token_file holds no token: the client's requests are refused until it holds one"))
            .collect()
    }
}

/// Why a token that is client `j`'s configured `token_sha256` is refused.
pub fn hash_as_token_error(j: usize) -> String {
    format!("holds auth.clients[{j}].token_sha256, a hash from the config, not a token: put the token itself there (the config's hashes may be shown or committed, and must never work as a credential)")
}

/// Each configured `token_sha256`, with its client's index: none may be
/// taken as a token ([`spells_a_configured_hash`]).
/// A certificate name as it is compared: a DNS name (no ':') in lower
/// case, as DNS names match whatever their letter case; a URI with its
/// scheme and authority in lower case (`spiffe://Example.org/Path` is
/// `spiffe://example.org/Path`; `URN:Example:x` is `urn:Example:x`). Config names and a certificate's SANs
/// both go through it.
pub fn certificate_name(name: &str) -> String {
    let Some((scheme, rest)) = name.split_once("://") else {
        // A URI without an authority (`urn:example:billing`): its scheme.
        if let Some((scheme, rest)) = name.split_once(':') {
            return format!("{}:{rest}", scheme.to_ascii_lowercase());
        }
        return name.to_ascii_lowercase();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!(
        "{}://{}{path}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    )
}

pub fn configured_hashes(clients: &[AuthClient]) -> Vec<(TokenHash, usize)> {
    clients
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.token_sha256.map(|h| (h, i)))
        .collect()
}

/// The client whose configured `token_sha256` `token` spells in hex, in
/// any mix of cases. Only a token of exactly 64 hex digits is decoded, and
/// only to compare it here; nothing of it is kept.
pub fn spells_a_configured_hash(token: &str, configured: &[(TokenHash, usize)]) -> Option<usize> {
    if token.len() != 64 {
        return None;
    }
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(token, &mut bytes[..]).ok()?;
    configured
        .iter()
        .find(|(h, _)| h.0 == *bytes)
        .map(|&(_, i)| i)
}

/// The hash of each configured `token_sha256` as written, in lower and in
/// upper case hex, with its client's index: another client's
/// `token_sha256` equal to one (`rkms hash-token` run on the hash) would
/// let that hash in.
fn rehashed(clients: &[AuthClient]) -> Vec<(TokenHash, usize)> {
    use sha2::Digest;
    configured_hashes(clients)
        .into_iter()
        .flat_map(|(h, j)| {
            let lower = hex::encode(h.0);
            let upper = lower.to_ascii_uppercase();
            [lower, upper].map(|text| (TokenHash(sha2::Sha256::digest(text).into()), j))
        })
        .collect()
}

/// Tokens read from files or the environment shorter than this are refused.
pub const MIN_TOKEN_LEN: usize = 16;

/// Whether a token can be sent as `Authorization: Bearer <token>`: one
/// word, with no whitespace or control character. A header value cannot
/// carry ASCII controls; C1 controls (U+0080 to U+009F) would pass as
/// bytes, but no client sends them in a token, and a token holding one is
/// far likelier a mistake (a pasted escape) than meant.
pub fn sendable_token(token: &str) -> bool {
    !token.is_empty() && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl Settings {
    pub(super) fn validate_auth(&self) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.enabled.is_some() {
            return Err(ConfigError::new(
                "auth.enabled",
                "was replaced by auth.mode = \"none\" | \"token\" | \"mtls\" (see config.toml)",
            ));
        }
        let listen = self.server.listen;
        match auth.mode {
            AuthMode::None if !listen.ip().is_loopback() && !auth.allow_unauthenticated => {
                return Err(ConfigError::new(
                    "auth.mode",
                    format!("is \"none\" but server.listen {listen} is not a loopback address, so anyone who can reach it gets any key; set auth.mode = \"token\" or \"mtls\" with [[auth.clients]], or auth.allow_unauthenticated = true to accept that"),
                ));
            }
            AuthMode::None if !auth.clients.is_empty() => {
                return Err(ConfigError::new(
                    "auth.clients",
                    "are set but auth.mode = \"none\" would ignore them; set auth.mode = \"token\" or \"mtls\"",
                ));
            }
            AuthMode::None => return Ok(()),
            AuthMode::Token | AuthMode::Mtls if auth.clients.is_empty() => {
                return Err(ConfigError::new(
                    "auth.clients",
                    "must list at least one client when auth.mode is \"token\" or \"mtls\"; every request would be refused",
                ));
            }
            AuthMode::Mtls if self.server.tls.client_ca.is_none() => {
                return Err(ConfigError::new(
                    "server.tls.client_ca",
                    "is required when auth.mode = \"mtls\" (with server.tls.cert and server.tls.key)",
                ));
            }
            AuthMode::Token | AuthMode::Mtls => {}
        }
        let mut names = std::collections::BTreeSet::new();
        let rehashed = rehashed(&auth.clients);
        for (i, client) in auth.clients.iter().enumerate() {
            let key = format!("auth.clients[{i}]");
            if client.prefixes.is_some() {
                return Err(ConfigError::new(
                    format!("{key}.prefixes"),
                    "was replaced by ids: exact ids and \"prefix*\" globs, e.g. ids = [\"billing/*\"]",
                ));
            }
            // The audit trail names callers "anonymous" (auth.mode = "none")
            // and "unauthenticated" (refused); no client may look like them.
            let reserved = ["anonymous", "unauthenticated"]
                .iter()
                .any(|r| client.name.trim().eq_ignore_ascii_case(r));
            if client.name.trim().is_empty()
                || reserved
                || client.name.trim() != client.name
                || client.name.chars().any(char::is_control)
            {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("{:?} is not a client name: it must be non-empty, without spaces around it or control characters, and not \"anonymous\" or \"unauthenticated\" (the audit trail's names for callers without a client)", client.name),
                ));
            }
            if !names.insert(client.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("{:?} is used twice", client.name),
                ));
            }
            let sources = usize::from(client.token_sha256.is_some())
                + usize::from(client.token_file.is_some())
                + usize::from(client.token_env.is_some());
            match auth.mode {
                AuthMode::Token if sources != 1 => {
                    return Err(ConfigError::new(
                        format!("{key}.token_sha256"),
                        "give exactly one of token_sha256, token_file, token_env",
                    ));
                }
                AuthMode::Mtls if sources != 0 => {
                    return Err(ConfigError::new(
                        format!("{key}.token_sha256"),
                        "auth.mode = \"mtls\" identifies clients by certificate; remove the token",
                    ));
                }
                // Matched to a DNS SAN (DNS syntax: no ':' or '/') or a URI
                // SAN (with its scheme): a name that is neither matches no
                // certificate, and the client could never get in.
                AuthMode::Mtls
                    if client.name.contains(char::is_whitespace)
                        || (client.name.contains('/') && !client.name.contains(':')) =>
                {
                    return Err(ConfigError::new(
                        format!("{key}.name"),
                        format!("{:?} can match no certificate: in mtls mode a name is a DNS name (no ':' or '/') or a URI with its scheme (spiffe://...), without spaces", client.name),
                    ));
                }
                AuthMode::Mtls => {
                    let same = certificate_name(&client.name);
                    if let Some((j, other)) = auth.clients[..i]
                        .iter()
                        .enumerate()
                        .find(|(_, c)| certificate_name(&c.name) == same)
                    {
                        return Err(ConfigError::new(
                            format!("{key}.name"),
                            format!(
                                "{:?} matches the same certificates as auth.clients[{j}] ({:?}): names are compared whatever their letter case",
                                client.name, other.name
                            ),
                        ));
                    }
                }
                _ => {}
            }
            for hash in &client.resolved {
                if let Some(j) = auth.clients[..i]
                    .iter()
                    .position(|c| c.resolved.contains(hash))
                {
                    return Err(ConfigError::new(
                        format!("{key}.token"),
                        format!(
                            "is the same token as auth.clients[{j}]; every client needs its own"
                        ),
                    ));
                }
            }
            if let Some(&(_, j)) = client
                .token_sha256
                .and_then(|h| rehashed.iter().find(|(r, _)| *r == h))
            {
                return Err(ConfigError::new(
                    format!("{key}.token_sha256"),
                    format!("is the SHA-256 of auth.clients[{j}].token_sha256 as written, so that hash, which may be shown or committed, would work as this client's token: hash a token of its own"),
                ));
            }
            if client.ids.is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.ids"),
                    "must list at least one id pattern (\"*\" allows every id)",
                ));
            }
            if client.burst > 0 && client.requests_per_second == 0 {
                return Err(ConfigError::new(
                    format!("{key}.burst"),
                    "needs requests_per_second > 0 (0 = unlimited)",
                ));
            }
        }
        Ok(())
    }
}
