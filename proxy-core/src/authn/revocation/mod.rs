//! Revoked issued tokens, known to every replica and webhook.
//!
//! An issued token names its session (the signed `sid` claim). A revocation
//! covers one session, every token of a user issued up to a time, or every
//! token issued up to a time. Revocations live in the Kubernetes API (see
//! [`store`]) and each process holds the whole set in memory: checking a
//! token is one hash lookup for its session and one for its user.
//!
//! Until the set has been listed once, tokens are refused as unavailable
//! (unless the configuration allows serving without it): a process that
//! starts while the store is unreachable does not take a revoked token.
//! After that, an unreachable store leaves the last known set in force.

pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

pub use crate::counters::RevocationCounters;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// How many objects sessions are spread over in the store.
pub const SESSION_SHARDS: usize = 16;
/// The shard of user and time revocations (few, and each covers many
/// tokens: kept apart, so many sessions cannot crowd them out).
pub const WIDE_SHARD: usize = SESSION_SHARDS;
/// How many objects the set is kept in: the session shards and the wide one.
pub const SHARDS: usize = SESSION_SHARDS + 1;

/// How long the entries this process wrote are kept in force on their own,
/// whatever a list or a watch event that was under way says meanwhile.
const LOCAL_HOLD: Duration = Duration::from_secs(120);

/// The longest session ID taken (the proxy makes 22 characters).
pub const MAX_SESSION_LEN: usize = 64;

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Revoked {
    /// One issued token (its session ID).
    Session {
        /// The token's `sid`.
        session: String,
    },
    /// Every token of `user` issued at or before `before` (seconds since
    /// the epoch).
    User {
        /// The user name.
        user: String,
        /// Tokens issued at or before this are refused.
        before: u64,
    },
    /// Every token issued at or before `before`.
    All {
        /// Tokens issued at or before this are refused.
        before: u64,
    },
}

/// One revocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// What it covers.
    #[serde(flatten)]
    pub revoked: Revoked,
    /// When it was made, in milliseconds since the epoch.
    pub at_ms: u64,
    /// When it may be forgotten (seconds since the epoch): no token it
    /// covers is valid after that.
    pub expires: u64,
    /// Who made it (a user name, or `token` for a token that revoked
    /// itself).
    #[serde(default)]
    pub by: String,
}

/// Whether `session` could be a session ID (URL-safe base64 characters).
pub fn valid_session(session: &str) -> bool {
    !session.is_empty()
        && session.len() <= MAX_SESSION_LEN
        && session
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A stable 64-bit hash (FNV-1a): the same shard in every process.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Entry {
    /// The key of the entry in its shard's data (ConfigMap keys allow
    /// `[-._a-zA-Z0-9]`: user names are hashed).
    pub fn key(&self) -> String {
        use sha2::Digest as _;
        match &self.revoked {
            Revoked::Session { session } => format!("s.{session}"),
            Revoked::User { user, .. } => {
                let digest = sha2::Sha256::digest(user.as_bytes());
                let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
                format!("u.{hex}")
            }
            Revoked::All { .. } => "all".to_owned(),
        }
    }

    /// The shard the entry is kept in.
    pub fn shard(&self) -> usize {
        match &self.revoked {
            Revoked::Session { session } => shard_of(session),
            Revoked::User { .. } | Revoked::All { .. } => WIDE_SHARD,
        }
    }

    /// Whether `self` adds nothing to `existing` (the same key): writing it
    /// again would change nothing but the time.
    pub fn covered_by(&self, existing: &Entry) -> bool {
        let merged = existing.merged(self);
        merged.revoked == existing.revoked && merged.expires == existing.expires
    }

    /// This entry and `other` (the same key) as one: the later time covers
    /// more, and the entry lives as long as the longer one.
    pub fn merged(&self, other: &Entry) -> Entry {
        let revoked = match (&self.revoked, &other.revoked) {
            (Revoked::User { user, before: a }, Revoked::User { before: b, .. }) => Revoked::User {
                user: user.clone(),
                before: (*a).max(*b),
            },
            (Revoked::All { before: a }, Revoked::All { before: b }) => Revoked::All {
                before: (*a).max(*b),
            },
            (mine, _) => mine.clone(),
        };
        Entry {
            revoked,
            at_ms: self.at_ms.max(other.at_ms),
            expires: self.expires.max(other.expires),
            by: if other.at_ms > self.at_ms {
                other.by.clone()
            } else {
                self.by.clone()
            },
        }
    }
}

fn shard_of(session: &str) -> usize {
    (stable_hash(session) % SESSION_SHARDS as u64) as usize
}

/// Seconds since the epoch, now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

/// The entries of one shard, as checked.
#[derive(Debug, Default, Clone)]
struct Shard {
    /// Session ID → when the entry expires.
    sessions: HashMap<String, u64>,
    /// User name → tokens issued at or before this are refused.
    users: HashMap<String, u64>,
    /// Every token issued at or before this is refused.
    all_before: Option<u64>,
}

impl Shard {
    fn len(&self) -> usize {
        self.sessions.len() + self.users.len() + usize::from(self.all_before.is_some())
    }

    fn add(&mut self, entry: &Entry) {
        match &entry.revoked {
            Revoked::Session { session } => {
                let at = self.sessions.entry(session.clone()).or_default();
                *at = (*at).max(entry.expires);
            }
            Revoked::User { user, before } => {
                let at = self.users.entry(user.clone()).or_default();
                *at = (*at).max(*before);
            }
            Revoked::All { before } => {
                self.all_before = Some(self.all_before.unwrap_or(0).max(*before));
            }
        }
    }
}

/// `old` with shard `index` replaced.
fn with_shard(old: &Snapshot, index: usize, shard: Arc<Shard>) -> Snapshot {
    let mut shards = old.shards.clone();
    shards[index] = shard;
    let all_before = shards.iter().filter_map(|s| s.all_before).max();
    let len = shards.iter().map(|s| s.len()).sum();
    Snapshot {
        shards,
        all_before,
        len,
    }
}

#[derive(Debug)]
struct Snapshot {
    shards: Vec<Arc<Shard>>,
    /// The latest `All` of every shard.
    all_before: Option<u64>,
    len: usize,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
            all_before: None,
            len: 0,
        }
    }
}

/// Where the set stands with its store.
#[derive(Debug, Clone, Default)]
struct StoreState {
    /// The set has been listed at least once.
    listed: bool,
    /// Since when the store cannot be reached, and why.
    trouble: Option<(Instant, String)>,
}

/// The revocations in force in this process.
#[derive(Debug)]
pub struct Revocations {
    snapshot: ArcSwap<Snapshot>,
    /// Whether tokens are checked against a store at all.
    enabled: bool,
    /// Whether tokens are taken before the first list.
    serve_unlisted: bool,
    state: Mutex<StoreState>,
    /// The set has been listed at least once (read on every check).
    listed: AtomicBool,
    /// Entries this process wrote lately, with when: kept in force through
    /// lists and events that began before the write.
    local: Mutex<Vec<(Entry, Instant)>>,
    counters: Arc<RevocationCounters>,
    /// Per shard, the entries this process knows (key → when made), to
    /// measure each one's lag once.
    seen: Mutex<Vec<HashMap<String, u64>>>,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations::new(false, true)
    }
}

/// Why a token is not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// It is revoked.
    Revoked,
    /// The revocations have not been listed yet.
    NotListed,
}

impl Revocations {
    /// An empty set; with `enabled`, it is filled from a store, and before
    /// the first list tokens are refused unless `serve_unlisted`.
    pub fn new(enabled: bool, serve_unlisted: bool) -> Self {
        Revocations {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            enabled,
            serve_unlisted,
            state: Mutex::new(StoreState::default()),
            listed: AtomicBool::new(false),
            local: Mutex::default(),
            counters: Arc::default(),
            seen: Mutex::new(vec![HashMap::new(); SHARDS]),
        }
    }

    /// Whether a store fills this set.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The set's counters, for metrics.
    pub fn counters(&self) -> &Arc<RevocationCounters> {
        &self.counters
    }

    /// Whether a token of `user` with session `session`, issued at
    /// `issued_at` (seconds since the epoch), may be used.
    pub fn check(&self, session: Option<&str>, user: &str, issued_at: u64) -> Result<(), Refusal> {
        if !self.enabled {
            return Ok(());
        }
        if !self.serve_unlisted && !self.listed.load(Ordering::Acquire) {
            return Err(Refusal::NotListed);
        }
        let snapshot = self.snapshot.load();
        if snapshot.len == 0 {
            return Ok(());
        }
        let wide = &snapshot.shards[WIDE_SHARD];
        let revoked = snapshot.all_before.is_some_and(|b| issued_at <= b)
            || session.is_some_and(|s| snapshot.shards[shard_of(s)].sessions.contains_key(s))
            || (!wide.users.is_empty() && wide.users.get(user).is_some_and(|b| issued_at <= *b));
        if revoked {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Revoked);
        }
        Ok(())
    }

    fn listed(&self) -> bool {
        self.listed.load(Ordering::Acquire)
    }

    /// Whether `entry` is already in force here (writing it again would
    /// change nothing).
    pub fn covers(&self, entry: &Entry) -> bool {
        let snapshot = self.snapshot.load();
        let shard = &snapshot.shards[entry.shard()];
        match &entry.revoked {
            Revoked::Session { session } => shard
                .sessions
                .get(session)
                .is_some_and(|expires| *expires >= entry.expires),
            Revoked::User { user, before } => shard.users.get(user).is_some_and(|b| b >= before),
            Revoked::All { before } => shard.all_before.is_some_and(|b| b >= *before),
        }
    }

    /// How many revocations are known.
    pub fn len(&self) -> usize {
        self.snapshot.load().len
    }

    /// Whether no revocation is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces shard `index` with the entries of `data` (a shard object's
    /// data: key → JSON entry); unreadable and expired entries are left
    /// out.
    pub fn replace_shard(&self, index: usize, data: &BTreeMap<String, String>) {
        if index >= SHARDS {
            return;
        }
        let now = now_secs();
        let mut shard = Shard::default();
        let mut fresh = HashMap::new();
        for (key, value) in data {
            let Ok(entry) = serde_json::from_str::<Entry>(value) else {
                tracing::debug!(key, "unreadable revocation entry left out");
                continue;
            };
            if entry.expires < now {
                continue;
            }
            if entry.shard() != index {
                tracing::warn!(
                    key,
                    shard = index,
                    "a revocation entry in the wrong shard is left out"
                );
                continue;
            }
            shard.add(&entry);
            fresh.insert(key.clone(), entry.at_ms);
        }
        self.note_lag(index, fresh);
        if let Ok(mut local) = self.local.lock() {
            local.retain(|(_, at)| at.elapsed() < LOCAL_HOLD);
            for (entry, _) in local.iter().filter(|(e, _)| e.shard() == index) {
                shard.add(entry);
            }
        }
        self.snapshot
            .rcu(|old| with_shard(old, index, Arc::new(shard.clone())));
        self.publish();
    }

    /// Adds `entry` at once (this process made it; the store's answer
    /// follows through the watch).
    pub fn add(&self, entry: &Entry) {
        let index = entry.shard();
        if let Ok(mut local) = self.local.lock() {
            local.push((entry.clone(), Instant::now()));
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen[index].insert(entry.key(), entry.at_ms);
        }
        // Merged into the shard in force at the moment of the swap, so a
        // concurrent event or add is not overwritten.
        self.snapshot.rcu(|old| {
            let mut shard = (*old.shards[index]).clone();
            shard.add(entry);
            with_shard(old, index, Arc::new(shard))
        });
        self.publish();
    }

    fn publish(&self) {
        self.counters
            .known
            .store(self.snapshot.load().len as u64, Ordering::Relaxed);
    }

    /// Records how late this process learned each entry of shard `index`
    /// it had not seen, and remembers the shard's entries as seen.
    fn note_lag(&self, index: usize, entries: HashMap<String, u64>) {
        let listed = self.listed();
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        let now = now_ms();
        for (key, at_ms) in &entries {
            if seen[index].get(key).is_some_and(|at| at >= at_ms) {
                continue;
            }
            // Entries found by the first list were made before this
            // process looked: their age is not a lag.
            if listed {
                let lag = now.saturating_sub(*at_ms);
                self.counters.lag_ms_sum.fetch_add(lag, Ordering::Relaxed);
                self.counters.lag_count.fetch_add(1, Ordering::Relaxed);
                self.counters.lag_ms_max.fetch_max(lag, Ordering::Relaxed);
            }
        }
        seen[index] = entries;
    }

    /// Records that the whole set was listed (or watched again) now.
    pub fn store_reached(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.listed = true;
            state.trouble = None;
        }
        self.listed.store(true, Ordering::Release);
        self.counters.store_up.store(true, Ordering::Relaxed);
    }

    /// Records that the store could not be read.
    pub fn store_unreachable(&self, why: String) {
        if let Ok(mut state) = self.state.lock() {
            let since = state
                .trouble
                .as_ref()
                .map(|(since, _)| *since)
                .unwrap_or_else(Instant::now);
            state.trouble = Some((since, why));
        }
        self.counters.store_up.store(false, Ordering::Relaxed);
    }

    /// `None` while the set is current; otherwise what `/readyz` should say,
    /// and whether it keeps the process from being ready (before the first
    /// list, unless serving without it is allowed).
    pub fn trouble(&self) -> Option<(String, bool)> {
        if !self.enabled {
            return None;
        }
        let state = self.state.lock().ok()?.clone();
        let why = state
            .trouble
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()));
        match (state.listed, why) {
            (true, None) => None,
            (true, Some((for_, why))) => Some((
                format!(
                    "the revocation store has been unreachable for {}s ({why}); the {} revocations last known stay in force",
                    for_.as_secs(),
                    self.len()
                ),
                false,
            )),
            (false, why) => Some((
                format!(
                    "the revocations have not been listed yet{}",
                    why.map(|(_, why)| format!(" ({why})")).unwrap_or_default()
                ),
                !self.serve_unlisted,
            )),
        }
    }
}

/// How long a token issued now can live at most, as a bound for entries.
pub fn expiry_for(lifetime: Duration, from: u64) -> u64 {
    from.saturating_add(lifetime.as_secs()).saturating_add(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(entries: &[Entry]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|e| (e.key(), serde_json::to_string(e).unwrap()))
            .collect()
    }

    fn entry(revoked: Revoked) -> Entry {
        Entry {
            revoked,
            at_ms: now_ms(),
            expires: now_secs() + 3600,
            by: "admin".into(),
        }
    }

    #[test]
    fn sessions_users_and_everything_before_a_time_are_refused_and_nothing_else() {
        let set = Revocations::new(true, false);
        assert_eq!(set.check(Some("a"), "alice", 10), Err(Refusal::NotListed));
        set.store_reached();
        assert_eq!(set.check(Some("a"), "alice", 10), Ok(()));
        let session = entry(Revoked::Session {
            session: "sess-1".into(),
        });
        let user = entry(Revoked::User {
            user: "bob".into(),
            before: 100,
        });
        set.replace_shard(session.shard(), &data(std::slice::from_ref(&session)));
        set.replace_shard(user.shard(), &data(std::slice::from_ref(&user)));
        assert_eq!(
            set.check(Some("sess-1"), "alice", 10),
            Err(Refusal::Revoked)
        );
        assert_eq!(set.check(Some("sess-2"), "alice", 10), Ok(()));
        assert_eq!(set.check(Some("sess-2"), "bob", 100), Err(Refusal::Revoked));
        assert_eq!(
            set.check(Some("sess-2"), "bob", 101),
            Ok(()),
            "a later login"
        );
        assert_eq!(set.check(None, "bob", 99), Err(Refusal::Revoked));
        let all = entry(Revoked::All { before: 50 });
        assert_eq!(all.shard(), WIDE_SHARD);
        assert_eq!(user.shard(), WIDE_SHARD);
        set.replace_shard(WIDE_SHARD, &data(&[all.clone(), user.clone()]));
        assert_eq!(set.check(Some("x"), "carol", 50), Err(Refusal::Revoked));
        assert_eq!(set.check(Some("x"), "carol", 51), Ok(()));
        assert_eq!(set.len(), 3);
        // A shard replaced without the entry forgets it.
        set.replace_shard(session.shard(), &BTreeMap::new());
        assert_eq!(set.check(Some("sess-1"), "alice", 60), Ok(()));
    }

    #[test]
    fn nothing_is_taken_before_the_first_list_even_after_a_local_revocation() {
        let set = Revocations::new(true, false);
        set.add(&entry(Revoked::Session {
            session: "mine".into(),
        }));
        assert_eq!(
            set.check(Some("other"), "alice", 1),
            Err(Refusal::NotListed)
        );
        assert_eq!(set.check(Some("mine"), "alice", 1), Err(Refusal::NotListed));
        set.store_reached();
        assert_eq!(set.check(Some("other"), "alice", 1), Ok(()));
        assert_eq!(set.check(Some("mine"), "alice", 1), Err(Refusal::Revoked));
    }

    #[test]
    fn a_local_revocation_outlives_a_list_that_began_before_it() {
        let set = Revocations::new(true, false);
        set.store_reached();
        let mine = entry(Revoked::Session {
            session: "mine".into(),
        });
        set.add(&mine);
        assert!(set.covers(&mine));
        // A list answered from before the write: the shard comes back empty.
        set.replace_shard(mine.shard(), &BTreeMap::new());
        assert_eq!(set.check(Some("mine"), "alice", 1), Err(Refusal::Revoked));
        // An entry someone put in the wrong shard is left out.
        let stray = entry(Revoked::Session {
            session: "stray".into(),
        });
        let wrong = (stray.shard() + 1) % SESSION_SHARDS;
        set.replace_shard(wrong, &data(std::slice::from_ref(&stray)));
        assert_eq!(set.check(Some("stray"), "alice", 1), Ok(()));
    }

    #[test]
    fn expired_and_unreadable_entries_are_left_out() {
        let set = Revocations::new(true, true);
        let mut old = entry(Revoked::Session {
            session: "old".into(),
        });
        old.expires = now_secs() - 1;
        let mut map = data(std::slice::from_ref(&old));
        map.insert("s.junk".into(), "{not json".into());
        set.replace_shard(old.shard(), &map);
        assert!(set.is_empty());
        assert_eq!(set.check(Some("old"), "alice", 1), Ok(()));
    }

    #[test]
    fn merging_keeps_the_later_time_and_the_longer_life() {
        let a = Entry {
            revoked: Revoked::User {
                user: "bob".into(),
                before: 10,
            },
            at_ms: 1,
            expires: 100,
            by: "x".into(),
        };
        let b = Entry {
            revoked: Revoked::User {
                user: "bob".into(),
                before: 20,
            },
            at_ms: 2,
            expires: 50,
            by: "y".into(),
        };
        let m = a.merged(&b);
        assert_eq!(
            m.revoked,
            Revoked::User {
                user: "bob".into(),
                before: 20
            }
        );
        assert_eq!((m.expires, m.at_ms, m.by.as_str()), (100, 2, "y"));
        assert_eq!(a.key(), b.key());
        assert!(a.key().starts_with("u.") && a.key().len() == 42);
    }

    #[test]
    fn a_disabled_set_takes_everything_and_an_unlisted_one_says_why() {
        assert_eq!(
            Revocations::default().check(Some("s"), "u", 1),
            Ok(()),
            "no store configured"
        );
        let set = Revocations::new(true, false);
        set.store_unreachable("connection refused".into());
        let (text, blocks) = set.trouble().unwrap();
        assert!(blocks && text.contains("connection refused"), "{text}");
        set.store_reached();
        assert!(set.trouble().is_none());
        set.store_unreachable("timed out".into());
        let (text, blocks) = set.trouble().unwrap();
        assert!(!blocks && text.contains("stay in force"), "{text}");
        assert!(valid_session("AbC-_09") && !valid_session("a.b") && !valid_session(""));
    }
}
