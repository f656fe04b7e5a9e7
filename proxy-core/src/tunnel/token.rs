//! The registration tokens of the `via: agent` clusters: read from each
//! cluster's token file, kept as SHA-256 digests, re-read as the file
//! changes.
//!
//! A changed token takes effect at once for new registrations, and the
//! cluster's tunnels registered with the token before are retired (see
//! [`super::registry`]). No two clusters may hold the same token (the token
//! decides the cluster): a cluster whose token is another's is refused when
//! it is added, and a token file rewritten to another cluster's token is
//! refused (the cluster keeps its token). Errors name the file and the
//! other cluster, never the token.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::registry::{ClusterAgents, TokenDigest};
use crate::reload::{watch_file, FileWatch};

/// Shortest registration token accepted: the endpoint answers before any
/// authentication, so a token must be too long to guess.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The registration token in a token file's `content` (surrounding
/// whitespace removed), or why it cannot be one (never the token itself).
pub fn parse_token(content: &[u8]) -> Result<&str, String> {
    let token = std::str::from_utf8(content)
        .map_err(|_| "the token is not UTF-8".to_owned())?
        .trim();
    if token.is_empty() {
        return Err("the token is empty".into());
    }
    if token.chars().count() < MIN_TOKEN_CHARS {
        return Err(format!(
            "the token is shorter than {MIN_TOKEN_CHARS} characters: use a long random string \
             (openssl rand -hex 32)"
        ));
    }
    Ok(token)
}

/// The digest a presented token is compared by.
pub fn digest(token: &[u8]) -> TokenDigest {
    Sha256::digest(token).into()
}

/// The digest of the token in a token file's `content`, or why it holds
/// none (never the token itself).
pub fn file_digest(content: &[u8]) -> Result<TokenDigest, String> {
    Ok(digest(parse_token(content)?.as_bytes()))
}

/// Whether two digests are equal, in constant time.
pub fn same(a: &TokenDigest, b: &TokenDigest) -> bool {
    bool::from(a.ct_eq(b))
}

/// One cluster's token in force.
type Slot = Arc<ArcSwapOption<TokenDigest>>;

/// A cluster's name and (while it lives) its token slot.
type Entry = (Arc<str>, Weak<ArcSwapOption<TokenDigest>>);

/// The tokens of every cluster of one endpoint, so a cluster's new token
/// can be checked against the others' before it is taken.
#[derive(Default)]
pub(super) struct TokenBook {
    clusters: Mutex<Vec<Entry>>,
}

impl TokenBook {
    /// Stores `new` in `slot` unless another cluster holds it;
    /// else the name of that cluster.
    fn store(&self, slot: &Slot, new: TokenDigest) -> Result<(), Arc<str>> {
        let Ok(clusters) = self.clusters.lock() else {
            return Err(Arc::from("?"));
        };
        for (name, other) in clusters.iter() {
            let Some(other) = other.upgrade() else {
                continue;
            };
            if Arc::ptr_eq(&other, slot) {
                continue;
            }
            if other.load().as_deref().is_some_and(|d| same(d, &new)) {
                return Err(name.clone());
            }
        }
        slot.store(Some(Arc::new(new)));
        Ok(())
    }
}

/// A cluster's token, watched in its file.
pub(super) struct ClusterToken {
    slot: Slot,
    _watch: FileWatch,
}

/// Why a cluster's token file cannot be used (never the token).
pub(super) fn problem_of_duplicate(other: &str) -> String {
    format!("same registration token as cluster {other}: each cluster needs its own token")
}

impl ClusterToken {
    /// Reads `token_file` as the token of `agents`'s cluster (refused when
    /// unreadable, not a token, or another cluster's in `book`) and re-reads
    /// it every `interval`, retiring the tunnels of the token before.
    pub(super) fn watch(
        book: &Arc<TokenBook>,
        agents: &Arc<ClusterAgents>,
        token_file: PathBuf,
        interval: Duration,
    ) -> Result<ClusterToken, (PathBuf, String)> {
        let content = crate::reload::read_settled(&token_file)
            .map_err(|e| (token_file.clone(), e.to_string()))?;
        let first = file_digest(&content).map_err(|problem| (token_file.clone(), problem))?;
        let slot: Slot = Arc::new(ArcSwapOption::empty());
        let name: Arc<str> = Arc::from(agents.name());
        book.store(&slot, first)
            .map_err(|other| (token_file.clone(), problem_of_duplicate(&other)))?;
        if let Ok(mut clusters) = book.clusters.lock() {
            clusters.push((name.clone(), Arc::downgrade(&slot)));
        }
        let (weak_slot, weak_agents, weak_book) = (
            Arc::downgrade(&slot),
            Arc::downgrade(agents),
            Arc::downgrade(book),
        );
        let watch = watch_file(token_file, interval, content, move |content| {
            let new = file_digest(content)?;
            let (Some(slot), Some(book)) = (weak_slot.upgrade(), weak_book.upgrade()) else {
                return Ok(());
            };
            book.store(&slot, new)
                .map_err(|other| problem_of_duplicate(&other))?;
            if let Some(agents) = weak_agents.upgrade() {
                let retired = agents.retire_other_tokens(&new);
                if retired > 0 {
                    tracing::info!(cluster = %name, retired, "registration token changed: closing the tunnels registered with the one before");
                }
            }
            Ok(())
        });
        Ok(ClusterToken {
            slot,
            _watch: watch,
        })
    }

    /// Whether `presented` is the token in force (constant time).
    pub(super) fn matches(&self, presented: &TokenDigest) -> bool {
        self.slot
            .load()
            .as_deref()
            .is_some_and(|d| same(d, presented))
    }

    /// The digest of the token in force.
    pub(super) fn current(&self) -> Option<TokenDigest> {
        self.slot.load().as_deref().copied()
    }
}
