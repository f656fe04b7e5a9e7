//! Throttling failed logins, per user name and per client address, so the
//! proxy cannot be used to guess passwords against the directory.
//!
//! An attempt reserves a slot before it reaches the directory; attempts in
//! flight count as failures until they end, so a burst of concurrent guesses
//! gets no more binds than the limit. After `max_failures` failures within
//! `window`, the key is blocked with a backoff that doubles per further
//! failure, up to `max_backoff`. A success clears the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

#[derive(Debug)]
struct Entry {
    failures: u32,
    in_flight: u32,
    since: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counters for one kind of key.
#[derive(Debug)]
pub struct Throttle {
    limits: Limits,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    /// A throttle with these limits.
    pub fn new(limits: Limits) -> Self {
        Throttle {
            limits,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn backoff(&self, over: u32) -> Duration {
        let factor = 1u32.checked_shl(over.min(16)).unwrap_or(u32::MAX);
        self.limits
            .backoff
            .saturating_mul(factor)
            .min(self.limits.max_backoff)
    }

    /// Reserves an attempt for `key`, or says how many seconds to wait.
    pub fn begin(&self, key: &str) -> Result<(), u64> {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return Ok(());
        };
        if entries.len() > 100_000 {
            entries.retain(|_, e| {
                e.in_flight > 0
                    || e.blocked_until.is_some_and(|b| b > now)
                    || now.duration_since(e.since) < self.limits.window
            });
        }
        let entry = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            in_flight: 0,
            since: now,
            blocked_until: None,
        });
        if let Some(until) = entry.blocked_until {
            if until > now {
                return Err(until.duration_since(now).as_secs().max(1));
            }
        }
        if entry.in_flight == 0
            && now.duration_since(entry.since) > self.limits.window
            && entry.blocked_until.is_none_or(|b| b <= now)
        {
            entry.failures = 0;
            entry.since = now;
            entry.blocked_until = None;
        }
        if entry.failures + entry.in_flight >= self.limits.max_failures {
            let wait = self.backoff(entry.failures.saturating_sub(self.limits.max_failures));
            return Err(wait.as_secs().max(1));
        }
        entry.in_flight += 1;
        Ok(())
    }

    /// Ends an attempt begun with [`Throttle::begin`]. `failed: None` means
    /// the attempt did not count (the directory was down).
    pub fn end(&self, key: &str, failed: Option<bool>) {
        let now = Instant::now();
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let Some(entry) = entries.get_mut(key) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        match failed {
            Some(false) => {
                if entry.in_flight == 0 {
                    entries.remove(key);
                } else {
                    entry.failures = 0;
                }
            }
            Some(true) => {
                entry.failures += 1;
                if entry.failures >= self.limits.max_failures {
                    entry.blocked_until =
                        Some(now + self.backoff(entry.failures - self.limits.max_failures));
                }
            }
            None => {}
        }
    }
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

    #[test]
    fn blocks_after_the_limit_counting_attempts_in_flight() {
        let t = Throttle::new(limits());
        for _ in 0..3 {
            t.begin("u").unwrap();
        }
        assert!(
            t.begin("u").is_err(),
            "a fourth concurrent attempt must wait"
        );
        for _ in 0..3 {
            t.end("u", Some(true));
        }
        let wait = t.begin("u").unwrap_err();
        assert!((1..=2).contains(&wait), "{wait}");
        assert!(t.begin("other").is_ok());
    }

    #[test]
    fn success_clears_and_outages_do_not_count() {
        let t = Throttle::new(limits());
        t.begin("u").unwrap();
        t.end("u", Some(true));
        t.begin("u").unwrap();
        t.end("u", Some(false));
        for _ in 0..5 {
            t.begin("u").unwrap();
            t.end("u", None);
        }
        assert!(t.begin("u").is_ok());
    }
}
