//! Who is calling and what they may do: bearer tokens (compared by SHA-256
//! in constant time) or TLS client certificates (their DNS or URI SANs,
//! handed over by the listener), mapped to a configured client with its id
//! patterns, its create permission and its rate limit.
//!
//! Must not: know stores, KMS or the broker; print a token or its hash.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::{header, HeaderMap};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthMode, AuthSettings, IdPattern};
use crate::domain::KeyId;

/// The `Authorization` header one connection last authenticated with, the
/// client it named and the generation of the token table it was checked
/// against. A keep-alive client sends the same header with every request;
/// when it comes again (compared in constant time, so a proxy's connection
/// shared by several clients learns nothing from the timing) its token is
/// not hashed again, unless a token file changed since. The header is
/// wiped when replaced or dropped.
#[derive(Default)]
pub struct Remembered(std::sync::Mutex<Option<Kept>>);

type Kept = (zeroize::Zeroizing<Vec<u8>>, usize, u64);

impl std::fmt::Debug for Remembered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Remembered(..)")
    }
}

impl Remembered {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Kept>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client index remembered for exactly these header bytes, checked
    /// against the token table of `generation`.
    fn recall(&self, header: &[u8], generation: u64) -> Option<usize> {
        match &*self.lock() {
            Some((kept, client, checked)) if *checked == generation && same_bytes(kept, header) => {
                Some(*client)
            }
            _ => None,
        }
    }

    fn keep(&self, header: &[u8], client: usize, generation: u64) {
        *self.lock() = Some((zeroize::Zeroizing::new(header.to_vec()), client, generation));
    }
}

/// Whether `a` and `b` hold the same bytes, in time that depends only on
/// their lengths: eight bytes per comparison (a byte at a time costs a
/// keep-alive request some 400 instructions more for a usual header).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (a_words, a_rest) = a.as_chunks::<8>();
    let (b_words, b_rest) = b.as_chunks::<8>();
    let mut equal = a_rest.ct_eq(b_rest);
    for (x, y) in a_words.iter().zip(b_words) {
        equal &= u64::from_ne_bytes(*x).ct_eq(&u64::from_ne_bytes(*y));
    }
    bool::from(equal)
}

/// The names a verified TLS client certificate carries (DNS and URI SANs),
/// put in each request's extensions by the listener.
#[derive(Clone, Default)]
pub struct PeerNames {
    /// Its DNS and URI subject alternative names ([`crate::tls::peer_names`]).
    pub names: Vec<String>,
    /// Its `notAfter` (Unix seconds): a connection kept open past it is
    /// refused, as a new handshake would be.
    pub not_after: Option<i64>,
    /// Whether the TLS files of this moment still verify it (a client CA
    /// rotated away or a revocation list listing it since the handshake
    /// refuses the connection's next request, as a new handshake would).
    /// `None`: verified at the handshake only.
    pub still_trusted: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl std::fmt::Debug for PeerNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerNames")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

pub struct Client {
    name: String,
    ids: Vec<IdPattern>,
    create: bool,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("ids", &self.ids)
            .field("create", &self.create)
            .finish_non_exhaustive()
    }
}

pub struct Authenticator {
    mode: AuthMode,
    clients: Vec<Client>,
    by_name: HashMap<String, usize>,
    /// Per client, the SHA-256 of each token it is known by: swapped whole
    /// when a token file changes.
    tokens: RwLock<Arc<Tokens>>,
    /// Bumped after each swap: a connection's remembered header counts
    /// only in the generation it was checked in.
    generation: AtomicU64,
    /// The clients whose tokens come from a file, re-read by
    /// [`Authenticator::reload_token_files`].
    files: Vec<TokenFile>,
    /// The configured `token_sha256` values: a token file line that spells
    /// one is refused ([`crate::config::spells_a_configured_hash`]).
    configured: Vec<(crate::config::TokenHash, usize)>,
}

type Tokens = Vec<Vec<[u8; 32]>>;

/// Why a caller was not identified: the `reason` label of
/// `rkms_auth_failures_total`. The message is safe to show the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header, or no client certificate.
    Missing,
    /// A header that is not `Bearer <token>`.
    Malformed,
    /// A token or certificate name no client has.
    Unknown,
    /// A client certificate past its `notAfter`, on a connection opened
    /// before then.
    Expired,
    /// A client certificate whose names belong to more than one client.
    Ambiguous,
    /// A client certificate that the client CA or revocation lists loaded
    /// since its connection's handshake no longer verify.
    Untrusted,
}

impl AuthFailure {
    pub const ALL: [Self; 6] = [
        Self::Missing,
        Self::Malformed,
        Self::Unknown,
        Self::Expired,
        Self::Ambiguous,
        Self::Untrusted,
    ];

    /// Whether the connection's credential can never do again (its
    /// certificate expired or is no longer trusted): its connection is
    /// closed after the 401.
    pub fn ends_connection(self) -> bool {
        matches!(self, Self::Expired | Self::Untrusted)
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Ambiguous => "ambiguous",
            Self::Untrusted => "untrusted",
        }
    }

    pub fn message(self, mode: AuthMode) -> &'static str {
        match (self, mode) {
            (Self::Missing, AuthMode::Mtls) => "a client certificate is required",
            (Self::Unknown, AuthMode::Mtls) => "the client certificate names no known client",
            (Self::Expired, _) => "the client certificate has expired",
            (Self::Ambiguous, _) => "the client certificate names more than one client",
            (Self::Untrusted, _) => {
                "the client certificate is no longer trusted (its CA was replaced, or it was revoked)"
            }
            (Self::Missing, _) => "missing bearer token (Authorization: Bearer <token>)",
            (Self::Malformed, _) => {
                "the Authorization header is not \"Bearer <token>\", or is given more than once"
            }
            (Self::Unknown, _) => "unknown bearer token",
        }
    }
}

/// Who is calling, borrowed from the configured clients (nothing is
/// copied per request).
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// `auth.mode = "none"`: any id, may create.
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

    /// Whether this caller may read `id` (and learn whether it exists).
    pub fn may_read(&self, id: &KeyId) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Client(c) => c.ids.iter().any(|p| p.matches(id.as_str())),
        }
    }

    /// Whether this caller may create ids it may read.
    pub fn may_create(&self) -> bool {
        match self {
            Self::Anonymous => true,
            Self::Client(c) => c.create,
        }
    }

    /// Take one request from the caller's rate limit; `Err` holds how long
    /// until one is allowed.
    pub fn check_rate(&self) -> Result<(), Duration> {
        let Self::Client(Client {
            limiter: Some(limiter),
            ..
        }) = self
        else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

impl Authenticator {
    /// From validated settings (each client's token already resolved).
    pub fn new(settings: &AuthSettings) -> Self {
        let clients: Vec<Client> = settings
            .clients
            .iter()
            .map(|c| Client {
                name: c.name.clone(),
                ids: c.ids.clone(),
                create: c.create,
                limiter: NonZeroU32::new(c.requests_per_second).map(|rps| {
                    let burst = NonZeroU32::new(c.burst).unwrap_or(rps);
                    RateLimiter::direct(Quota::per_second(rps).allow_burst(burst))
                }),
            })
            .collect();
        // A certificate's names are compared as `certificate_name` gives
        // them (its DNS names in lower case), and so are these.
        let by_name = clients
            .iter()
            .enumerate()
            .map(|(i, c)| (crate::config::certificate_name(&c.name), i))
            .collect();
        let tokens: Tokens = settings
            .clients
            .iter()
            .map(|c| c.resolved.iter().map(|h| h.0).collect())
            .collect();
        for line in settings.tokenless_clients() {
            tracing::warn!("{line}");
        }
        Self {
            mode: settings.mode,
            clients,
            by_name,
            tokens: RwLock::new(Arc::new(tokens)),
            generation: AtomicU64::new(0),
            files: TokenFile::of(settings),
            configured: crate::config::configured_hashes(&settings.clients),
        }
    }

    fn current_tokens(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether clients prove who they are with a certificate (mtls), not
    /// a token: what a 401 asks for.
    pub fn by_certificate(&self) -> bool {
        self.mode == AuthMode::Mtls
    }

    /// Identify the caller from its `Authorization` header (token mode) or
    /// the names of its verified certificate (mtls mode).
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerNames>,
    ) -> Result<Identity<'_>, AuthFailure> {
        self.authenticate_on(headers, peer, None)
    }

    /// As [`Self::authenticate`], for a request of a connection that keeps
    /// what it last authenticated with in `remembered`.
    pub fn authenticate_on(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerNames>,
        remembered: Option<&Remembered>,
    ) -> Result<Identity<'_>, AuthFailure> {
        match self.mode {
            AuthMode::None => Ok(Identity::Anonymous),
            AuthMode::Token => self.by_token(headers, remembered),
            AuthMode::Mtls => {
                let peer = peer.ok_or(AuthFailure::Missing)?;
                if peer.not_after.is_some_and(|t| t < unix_now()) {
                    return Err(AuthFailure::Expired);
                }
                if peer.still_trusted.as_ref().is_some_and(|check| !check()) {
                    return Err(AuthFailure::Untrusted);
                }
                let mut matched = peer.names.iter().filter_map(|n| self.by_name.get(n));
                let first = *matched.next().ok_or(AuthFailure::Unknown)?;
                // Which client a certificate is must not depend on the
                // order of its names.
                if matched.any(|&i| i != first) {
                    return Err(AuthFailure::Ambiguous);
                }
                self.clients
                    .get(first)
                    .map(Identity::Client)
                    .ok_or(AuthFailure::Unknown)
            }
        }
    }

    fn by_token(
        &self,
        headers: &HeaderMap,
        remembered: Option<&Remembered>,
    ) -> Result<Identity<'_>, AuthFailure> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::Missing)?.as_bytes();
        // Two credentials are refused: a proxy in front could act on the
        // other one than rkms does.
        if values.next().is_some() {
            return Err(AuthFailure::Malformed);
        }
        // Read before the tokens: a swap in between leaves this request
        // remembered under the older generation, so it is checked again.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(client) = remembered
            .and_then(|r| r.recall(value, generation))
            .and_then(|i| self.clients.get(i))
        {
            return Ok(Identity::Client(client));
        }
        let token = bearer_token(value).ok_or(AuthFailure::Malformed)?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        let tokens = self.current_tokens();
        let mut found = None;
        // Compare against every token so timing does not reveal which matched.
        for (i, digests) in tokens.iter().enumerate() {
            for digest in digests {
                if same_bytes(digest, &presented) {
                    found = Some(i);
                }
            }
        }
        let i = found.ok_or(AuthFailure::Unknown)?;
        // A configured hash is never a credential, in any spelling, even
        // one that hashes to another client's `token_sha256` (the config
        // check can refuse only the spellings it can write: lower and upper
        // case). Checked only once a token has matched, so it tells a
        // guesser nothing.
        let spells_a_hash = std::str::from_utf8(token)
            .ok()
            .and_then(|t| crate::config::spells_a_configured_hash(t, &self.configured));
        if spells_a_hash.is_some() {
            return Err(AuthFailure::Unknown);
        }
        if let Some(remembered) = remembered {
            remembered.keep(value, i, generation);
        }
        self.clients
            .get(i)
            .map(Identity::Client)
            .ok_or(AuthFailure::Unknown)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 7235).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty() && !token.contains(&b' ')).then_some(token)
}

/// SHA-256 of a token, as `auth.clients[].token_sha256` holds it.
pub fn token_hash(token: &str) -> crate::config::TokenHash {
    crate::config::TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Hex SHA-256 of a token, as `auth.clients[].token_sha256` is written.
pub fn token_digest(token: &str) -> String {
    hex::encode(token_hash(token).0)
}

mod token_files;
use token_files::TokenFile;

#[cfg(test)]
mod tests;
