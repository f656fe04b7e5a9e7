//! Throttling failed logins, per user name, per directory entry and per
//! client address, so the proxy cannot be used to guess passwords against the
//! directory, nor turned against the people it serves.
//!
//! An attempt reserves a [`Slot`] before it reaches the directory; attempts in
//! flight count as failures until they end, so a burst of concurrent guesses
//! gets no more binds than the limit. After `max_failures` failures within
//! `window`, the key is blocked with a backoff that doubles per further
//! failure, up to `max_backoff`.
//!
//! A slot is released on every path: when the request future is dropped
//! (a cancelled HTTP/2 stream, a client timeout) the slot's drop releases it.
//!
//! The counters live in three bounded tiers (`capacity` keys each, least
//! recently used forgotten first within a tier, idle keys forgotten after
//! `window + max_backoff`), so attacker-chosen keys cannot grow memory: keys
//! without failures, keys with failures, and blocked keys. A key moves up as
//! it fails: names that never fail (or attempts cancelled before the
//! password was tried) never push out a record of failures, and only other
//! blocks, each costing `max_failures` real failures, push out a block. A
//! record short of a block can still be pushed out by `capacity` other names
//! failing since, which the per-address limit makes costly. Every operation is O(1) and holds a per-key lock only for a few
//! comparisons, never across an await. A poisoned counter refuses the
//! attempt (fail closed).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

/// Limits for one kind of key.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures allowed within `window` before blocking.
    pub max_failures: u32,
    /// How long failures are remembered.
    pub window: Duration,
    /// First block length; doubles per further failure.
    pub backoff: Duration,
    /// Longest block.
    pub max_backoff: Duration,
}

impl Limits {
    fn backoff(&self, over: u32) -> Duration {
        let factor = 1u32.checked_shl(over.min(16)).unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    in_flight: u32,
    since: Instant,
    blocked_until: Option<Instant>,
    /// The tier the entry is kept in.
    tier: Tier,
}

/// Where an entry is kept, by how much it has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// No failures: attempts in flight only.
    Fresh,
    /// Some failures, not blocked.
    Failing,
    /// At or past `max_failures`.
    Blocked,
}

/// The three tiers of entries; cheap to clone (the caches are shared).
#[derive(Debug, Clone)]
struct Tiers {
    fresh: Cache<String, Arc<Mutex<Entry>>>,
    failing: Cache<String, Arc<Mutex<Entry>>>,
    blocked: Cache<String, Arc<Mutex<Entry>>>,
}

impl Tiers {
    fn tier(&self, tier: Tier) -> &Cache<String, Arc<Mutex<Entry>>> {
        match tier {
            Tier::Fresh => &self.fresh,
            Tier::Failing => &self.failing,
            Tier::Blocked => &self.blocked,
        }
    }

    /// Keeps `entry` of `key` in `to` instead of `from`.
    fn moved(&self, key: &str, entry: &Arc<Mutex<Entry>>, from: Tier, to: Tier) {
        if from != to {
            self.tier(to).insert(key.to_owned(), entry.clone());
            self.tier(from).invalidate(key);
        }
    }
}

/// How an attempt ended, for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The password was right: the key's failures are forgotten.
    Succeeded,
    /// The password was tried and wrong (or its answer was never seen).
    Failed,
    /// The attempt does not count either way (the directory was down, the
    /// request was cancelled before the password was tried, or the key is a
    /// client address that a success must not clear).
    Uncounted,
}

/// Failure counters for one kind of key.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    tiers: Tiers,
}

impl Throttle {
    /// A throttle with these limits remembering at most `capacity` keys in
    /// each tier (without failures, with failures, blocked).
    pub fn new(limits: Limits, capacity: u64) -> Self {
        let idle = limits.window.saturating_add(limits.max_backoff);
        let tier = || {
            Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_idle(idle.max(Duration::from_secs(1)))
                .build()
        };
        Throttle {
            limits,
            tiers: Tiers {
                fresh: tier(),
                failing: tier(),
                blocked: tier(),
            },
        }
    }

    /// Reserves an attempt for `key`, or says how many seconds to wait.
    pub async fn begin(&self, key: &str) -> Result<Slot, u64> {
        let now = Instant::now();
        // Looked up from the lowest tier up: a move up inserts into the
        // higher tier before it leaves the lower one, so an entry on its way
        // up is always found in one of them.
        let entry = self
            .tiers
            .fresh
            .get(key)
            .or_else(|| self.tiers.failing.get(key))
            .or_else(|| self.tiers.blocked.get(key))
            .unwrap_or_else(|| {
                self.tiers.fresh.get_with_by_ref(key, || {
                    Arc::new(Mutex::new(Entry {
                        failures: 0,
                        in_flight: 0,
                        since: now,
                        blocked_until: None,
                        tier: Tier::Fresh,
                    }))
                })
            });
        let refused = self.limits.backoff.as_secs().max(1);
        let Ok(mut e) = entry.lock() else {
            return Err(refused);
        };
        if let Some(until) = e.blocked_until {
            if until > now {
                return Err(until.duration_since(now).as_secs().max(1));
            }
        }
        // Failures expire with the window even while other attempts are in
        // flight (a busy address behind NAT always has some).
        if now.duration_since(e.since) > self.limits.window {
            e.failures = 0;
            e.since = now;
            e.blocked_until = None;
        }
        if e.failures.saturating_add(e.in_flight) >= self.limits.max_failures {
            let over = e.failures.saturating_sub(self.limits.max_failures);
            return Err(self.limits.backoff(over).as_secs().max(1));
        }
        e.in_flight += 1;
        drop(e);
        Ok(Slot {
            entry: Some(entry),
            key: key.to_owned(),
            tiers: self.tiers.clone(),
            limits: self.limits,
            if_dropped: Outcome::Uncounted,
        })
    }

    /// How many keys are remembered (after pending evictions ran).
    #[cfg(test)]
    fn len(&self) -> u64 {
        [&self.tiers.fresh, &self.tiers.failing, &self.tiers.blocked]
            .iter()
            .map(|tier| {
                tier.run_pending_tasks();
                tier.entry_count()
            })
            .sum()
    }
}

/// One reserved attempt for one key. Dropping it without
/// [`Slot::finish`] ends it as [`Slot::if_dropped`] says.
#[derive(Debug)]
pub struct Slot {
    entry: Option<Arc<Mutex<Entry>>>,
    key: String,
    tiers: Tiers,
    limits: Limits,
    if_dropped: Outcome,
}

impl Slot {
    /// Sets how the attempt counts if it is dropped unfinished (e.g. the
    /// request is cancelled once the password went to the directory).
    pub fn if_dropped(&mut self, outcome: Outcome) {
        self.if_dropped = outcome;
    }

    /// Ends the attempt.
    pub fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        // The counters stay meaningful even if another holder panicked.
        let mut e = entry.lock().unwrap_or_else(PoisonError::into_inner);
        e.in_flight = e.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Succeeded => {
                e.failures = 0;
                e.blocked_until = None;
                e.since = Instant::now();
            }
            Outcome::Failed => {
                let now = Instant::now();
                if e.failures == 0 {
                    e.since = now;
                }
                e.failures = e.failures.saturating_add(1);
                if e.failures >= self.limits.max_failures {
                    let over = e.failures - self.limits.max_failures;
                    e.blocked_until = Some(now + self.limits.backoff(over));
                }
            }
            Outcome::Uncounted => {}
        }
        let to = if e.failures >= self.limits.max_failures {
            Tier::Blocked
        } else if e.failures > 0 {
            Tier::Failing
        } else {
            Tier::Fresh
        };
        let from = std::mem::replace(&mut e.tier, to);
        drop(e);
        self.tiers.moved(&self.key, &entry, from, to);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let outcome = self.if_dropped;
        self.end(outcome);
    }
}

/// The throttle key of a user name: the name as the directory compares it
/// (RFC 4518 insignificant-character handling and case folding of
/// `caseIgnoreMatch`): characters the directory ignores removed, every kind
/// of space turned into one plain space, leading and trailing spaces
/// removed, the rest lower-cased.
pub fn canonical_username(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut pending_space = false;
    for c in name.chars() {
        if ignored_by_directory(c) {
            continue;
        }
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// Characters RFC 4518 section 2.2 maps to nothing (other than controls
/// that are whitespace, which map to a space).
fn ignored_by_directory(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{E}'..='\u{1F}' | '\u{7F}'..='\u{84}' | '\u{86}'..='\u{9F}'
        | '\u{AD}' | '\u{34F}' | '\u{6DD}' | '\u{70F}' | '\u{1806}' | '\u{180B}'..='\u{180E}'
        | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2063}'
        | '\u{206A}'..='\u{206F}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFC}'
        | '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_failures: 3,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn blocks_after_the_limit_counting_attempts_in_flight() {
        let t = Throttle::new(limits(), 100);
        let mut slots = Vec::new();
        for _ in 0..3 {
            slots.push(t.begin("u").await.unwrap());
        }
        assert!(
            t.begin("u").await.is_err(),
            "a fourth concurrent attempt must wait"
        );
        for slot in slots {
            slot.finish(Outcome::Failed);
        }
        let wait = t.begin("u").await.unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        assert!(t.begin("other").await.is_ok());
    }

    #[tokio::test]
    async fn success_clears_and_outages_do_not_count() {
        let t = Throttle::new(limits(), 100);
        t.begin("u").await.unwrap().finish(Outcome::Failed);
        t.begin("u").await.unwrap().finish(Outcome::Succeeded);
        for _ in 0..5 {
            t.begin("u").await.unwrap().finish(Outcome::Uncounted);
        }
        assert!(t.begin("u").await.is_ok());
    }

    #[tokio::test]
    async fn a_dropped_slot_is_released_and_counts_only_once_the_password_was_tried() {
        let t = Throttle::new(limits(), 100);
        for _ in 0..10 {
            let slot = t
                .begin("u")
                .await
                .expect("every cancelled attempt is released");
            drop(slot);
        }
        for _ in 0..3 {
            let mut slot = t.begin("u").await.unwrap();
            slot.if_dropped(Outcome::Failed);
        }
        assert!(
            t.begin("u").await.is_err(),
            "a cancelled attempt whose password reached the directory counts"
        );
    }

    #[tokio::test]
    async fn failures_expire_with_the_window_even_while_attempts_are_in_flight() {
        let t = Throttle::new(
            Limits {
                window: Duration::from_millis(500),
                ..limits()
            },
            100,
        );
        let _held = t.begin("u").await.unwrap();
        t.begin("u").await.unwrap().finish(Outcome::Failed);
        t.begin("u").await.unwrap().finish(Outcome::Failed);
        assert!(t.begin("u").await.is_err(), "2 failures + 1 in flight");
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            t.begin("u").await.is_ok(),
            "the failures outlived the window"
        );
    }

    #[tokio::test]
    async fn distinct_long_names_never_grow_the_throttle_beyond_its_capacity() {
        let t = Throttle::new(limits(), 1_000);
        for i in 0..5_000 {
            let name = format!("{i:0>250}");
            t.begin(&name).await.unwrap().finish(Outcome::Failed);
        }
        let len = t.len();
        assert!(len <= 3_000, "{len} keys remembered");
        assert!(len > 0);
    }

    #[tokio::test]
    async fn flooding_other_names_never_evicts_a_record_of_failures() {
        let t = Throttle::new(limits(), 100);
        // The victim: one failure short of a block, and a blocked name.
        for _ in 0..2 {
            t.begin("victim").await.unwrap().finish(Outcome::Failed);
        }
        for _ in 0..3 {
            t.begin("blocked").await.unwrap().finish(Outcome::Failed);
        }
        assert!(t.begin("blocked").await.is_err());
        // Many other names: attempts that succeed, that never end, and
        // single failures, each ten times the capacity.
        for i in 0..1_000 {
            t.begin(&format!("ok-{i}"))
                .await
                .unwrap()
                .finish(Outcome::Succeeded);
            t.begin(&format!("cancelled-{i}")).await.unwrap();
        }
        t.tiers.fresh.run_pending_tasks();
        assert!(
            t.begin("blocked").await.is_err(),
            "names without failures pushed out a block"
        );
        let slot = t.begin("victim").await.unwrap();
        slot.finish(Outcome::Failed);
        assert!(
            t.begin("victim").await.is_err(),
            "names without failures pushed out the victim's two failures"
        );
        for i in 0..1_000 {
            t.begin(&format!("guess-{i}"))
                .await
                .unwrap()
                .finish(Outcome::Failed);
        }
        t.tiers.failing.run_pending_tasks();
        assert!(
            t.begin("blocked").await.is_err(),
            "single failures of other names pushed out a block"
        );
        assert!(
            t.begin("victim").await.is_err(),
            "single failures of other names pushed out a block"
        );
        assert!(t.len() <= 300, "{}", t.len());
    }

    #[test]
    fn names_the_directory_matches_alike_share_one_key() {
        let alice = canonical_username("alice");
        for variant in [
            " alice",
            "alice ",
            "ALICE",
            "\talice\u{A0}",
            "al\u{AD}ice",
            "ali\u{200B}ce",
        ] {
            assert_eq!(canonical_username(variant), alice, "{variant:?}");
        }
        assert_eq!(canonical_username(" Ann  \u{3000}Lee "), "ann lee");
        assert_ne!(canonical_username("al ice"), alice);
    }

    proptest::proptest! {
        #[test]
        fn the_canonical_name_is_stable_and_trimmed(name in "\\PC{0,40}") {
            let once = canonical_username(&name);
            proptest::prop_assert_eq!(canonical_username(&once), once.clone());
            proptest::prop_assert!(!once.starts_with(' ') && !once.ends_with(' '));
            proptest::prop_assert!(!once.contains("  "));
        }
    }
}
