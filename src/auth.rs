//! Client authentication (bearer tokens, compared by SHA-256 in constant
//! time) and per-id-prefix authorization. With auth disabled every caller
//! is `anonymous` and may use every id.
//!
//! Must not: know stores, KMS or the broker; print a token or its hash.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthSettings;
use crate::domain::KeyId;
use crate::error::ApiError;

pub struct Client {
    name: String,
    digest: [u8; 32],
    prefixes: Vec<String>,
}

pub struct Authenticator {
    enabled: bool,
    clients: Vec<Client>,
}

/// Who is calling, borrowed from the configured clients (nothing is
/// copied per request).
#[derive(Clone, Copy)]
pub enum Identity<'a> {
    /// Auth is disabled: any id.
    Anonymous,
    Client(&'a Client),
}

impl Identity<'_> {
    /// The name in logs and the audit trail.
    pub fn name(&self) -> &str {
        match self {
            Self::Anonymous => "anonymous",
            Self::Client(c) => &c.name,
        }
    }

    /// Whether this caller may read or create `id`.
    pub fn may_use(&self, id: &KeyId) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Client(c) => c
                .prefixes
                .iter()
                .any(|p| id.as_str().starts_with(p.as_str())),
        }
    }
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let clients = settings
            .clients
            .iter()
            .map(|c| Client {
                name: c.name.clone(),
                digest: c.token_sha256.0,
                prefixes: c.prefixes.clone(),
            })
            .collect();
        Self {
            enabled: settings.enabled,
            clients,
        }
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity<'_>, ApiError> {
        if !self.enabled {
            return Ok(Identity::Anonymous);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "missing bearer token (Authorization: Bearer <token>)".into(),
                )
            })?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        // Compare against every client so timing does not reveal which matched.
        for client in &self.clients {
            if bool::from(client.digest.ct_eq(&presented)) {
                found = Some(client);
            }
        }
        found
            .map(Identity::Client)
            .ok_or_else(|| ApiError::Unauthorized("unknown bearer token".into()))
    }
}

/// SHA-256 of a token, as `auth.clients[].token_sha256` holds it.
pub fn token_hash(token: &str) -> crate::config::TokenHash {
    crate::config::TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Hex SHA-256 of a token, as `auth.clients[].token_sha256` is written.
pub fn token_digest(token: &str) -> String {
    hex::encode(token_hash(token).0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthClient;

    #[test]
    fn tokens_and_prefixes() {
        let auth = Authenticator::new(&AuthSettings {
            enabled: true,
            clients: vec![AuthClient {
                name: "billing".into(),
                token_sha256: token_hash("s3cret"),
                prefixes: vec!["billing/".into()],
            }],
        });
        let mut headers = HeaderMap::new();
        assert!(matches!(
            auth.authenticate(&headers),
            Err(ApiError::Unauthorized(_))
        ));
        headers.insert(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&headers),
            Err(ApiError::Unauthorized(_))
        ));
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        let who = auth.authenticate(&headers).unwrap();
        assert_eq!(who.name(), "billing");
        assert!(who.may_use(&KeyId::parse("billing/1").unwrap()));
        assert!(!who.may_use(&KeyId::parse("payroll/1").unwrap()));
        assert!(Identity::Anonymous.may_use(&KeyId::parse("x").unwrap()));
    }
}
