//! Clients whose tokens come from a `token_file`: the file is read again
//! while rkms runs, so a token rotates without a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::Authenticator;
use crate::config::{AuthMode, AuthSettings};

pub(super) struct TokenFile {
    client: usize,
    path: PathBuf,
    /// The last problem said about the file, so each is said once.
    said: Mutex<Option<String>>,
    /// Whether the last read found the file holding no token: a second
    /// such read in a row revokes the client's tokens.
    was_empty: AtomicBool,
}

impl TokenFile {
    /// The token files of `settings`' clients (token mode only).
    pub(super) fn of(settings: &AuthSettings) -> Vec<Self> {
        settings
            .clients
            .iter()
            .enumerate()
            .filter(|_| settings.mode == AuthMode::Token)
            .filter_map(|(i, c)| {
                c.token_file.as_ref().map(|path| Self {
                    client: i,
                    path: path.clone(),
                    said: Mutex::new(None),
                    was_empty: AtomicBool::new(false),
                })
            })
            .collect()
    }
}

impl Authenticator {
    /// Whether some client's tokens come from a file to re-read.
    pub fn has_token_files(&self) -> bool {
        !self.files.is_empty()
    }

    /// Read every `token_file` again, and take the tokens of each that
    /// changed: a rotated Secret (or a line added for an overlap, then the
    /// old one removed) applies without a restart. A file emptied of
    /// tokens revokes the client's at the second read in a row that finds
    /// it so, never at the first: a file caught empty in the middle of a
    /// rewrite (truncated, not yet filled) does not lock its client out.
    /// A file that cannot be read or holds a bad token (a configured
    /// `token_sha256` among them), or new tokens that another client
    /// already has, is logged once and changes nothing for that client:
    /// its tokens in use stay. Blocking file reads: run off the async
    /// workers. Returns how many files are held so (what they held before
    /// is still in force).
    pub fn reload_token_files(&self) -> usize {
        if self.files.is_empty() {
            return 0;
        }
        let mut refused = 0;
        let current = self.current_tokens();
        let mut next = (*current).clone();
        let mut changed = Vec::new();
        for file in &self.files {
            let c = file.client;
            let read = crate::config::token_file_hashes(&file.path, &self.configured);
            let empty = read.as_ref().is_ok_and(Vec::is_empty);
            let empty_before = file.was_empty.swap(empty, Ordering::Relaxed);
            let mut said = file.said.lock().unwrap_or_else(|p| p.into_inner());
            if empty && !empty_before && !next[c].is_empty() {
                tracing::warn!(
                    client = %self.clients[c].name,
                    path = %file.path.display(),
                    "token_file holds no token: if it still holds none at the next read, in 5 s, the client's tokens are revoked"
                );
                *said = None;
                continue;
            }
            let problem = match read {
                Err(why) => Some(why),
                Ok(hashes) => {
                    let hashes: Vec<[u8; 32]> = hashes.iter().map(|h| h.0).collect();
                    let taken = next
                        .iter()
                        .enumerate()
                        .find(|(j, theirs)| *j != c && hashes.iter().any(|h| theirs.contains(h)));
                    match taken {
                        Some((j, _)) => Some(format!(
                            "it now holds a token of client {}; every client needs its own",
                            self.clients[j].name
                        )),
                        None => {
                            if next[c] != hashes {
                                next[c] = hashes;
                                changed.push(c);
                            }
                            None
                        }
                    }
                }
            };
            refused += usize::from(problem.is_some());
            if *said != problem {
                if let Some(why) = &problem {
                    tracing::error!(
                        client = %self.clients[c].name,
                        problem = %why,
                        "cannot take the client's token_file; its tokens stay as they were"
                    );
                }
                *said = problem;
            }
        }
        if changed.is_empty() {
            return refused;
        }
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
        let now = self.current_tokens();
        for i in changed {
            if now[i].is_empty() {
                tracing::warn!(
                    client = %self.clients[i].name,
                    "token_file holds no token: the client's tokens are revoked, and its requests refused until the file holds one"
                );
            } else {
                tracing::info!(
                    client = %self.clients[i].name,
                    tokens = now[i].len(),
                    "token_file changed: the client is now known by the tokens it holds"
                );
            }
        }
        refused
    }
}
