//! Keyed rate limits (per client address, per user name): a token bucket per
//! key, refilled at a steady rate, holding at most one minute's allowance.
//!
//! Used where a caller can make the proxy do costly or sensitive work many
//! times: token exchanges, failed TokenReviews, access reviews and agent
//! registrations ([`client_key`] also keys the LDAP login throttles by
//! address). The table of keys is
//! bounded: idle keys (full buckets) are dropped when it grows past
//! [`MAX_KEYS`], and keys are hashed, so a caller-chosen key is never kept at
//! its full length.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The key every per-address limit counts a client address under: IPv4
/// addresses (also when mapped into IPv6) as they are, IPv6 addresses by
/// their /64 prefix, the smallest block a single site is usually given (so
/// rotating addresses within it does not escape a limit).
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(prefix))
            }
        },
    }
}

/// Most keys tracked before idle ones are dropped.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// A per-key limit of `per_minute` events, in bursts of up to `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    hasher: RandomState,
    buckets: Mutex<HashMap<u64, Bucket>>,
    /// When idle keys were last dropped from a full table.
    swept: Mutex<Option<Instant>>,
}

/// Shortest time between two sweeps of a full table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// A limiter allowing `per_minute` events per key; `0` allows everything.
    pub fn per_minute(per_minute: u32) -> Self {
        RateLimiter {
            per_minute,
            hasher: RandomState::new(),
            buckets: Mutex::new(HashMap::new()),
            swept: Mutex::new(None),
        }
    }

    /// Whether this limiter limits anything.
    pub fn is_enabled(&self) -> bool {
        self.per_minute > 0
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let rate = f64::from(self.per_minute) / 60.0;
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(self.per_minute));
        bucket.updated = now;
    }

    fn with_bucket<T>(&self, key: &str, f: impl FnOnce(&mut Bucket) -> T) -> Option<T> {
        if !self.is_enabled() {
            return None;
        }
        let now = Instant::now();
        let hash = self.hasher.hash_one(key);
        let Ok(mut buckets) = self.buckets.lock() else {
            return None;
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&hash) {
            // Idle keys (full buckets) go, at most once a second: a table of
            // keys that are all in use is not swept on every new key.
            let sweep = self
                .swept
                .lock()
                .map(|mut swept| {
                    let due = swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY);
                    if due {
                        *swept = Some(now);
                    }
                    due
                })
                .unwrap_or(false);
            if sweep {
                let full = f64::from(self.per_minute);
                let rate = full / 60.0;
                buckets.retain(|_, b| {
                    b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < full
                });
            }
            if buckets.len() >= MAX_KEYS {
                // Still full: the new key is not tracked (and not limited)
                // rather than the table growing without bound.
                return None;
            }
        }
        let bucket = buckets.entry(hash).or_insert(Bucket {
            tokens: f64::from(self.per_minute),
            updated: now,
        });
        self.refill(bucket, now);
        Some(f(bucket))
    }

    fn wait(&self, tokens: f64) -> Duration {
        let rate = f64::from(self.per_minute) / 60.0;
        Duration::from_secs_f64(((1.0 - tokens) / rate).clamp(0.0, 60.0))
    }

    /// Takes one event from `key`'s allowance, or says how long to wait
    /// (whole seconds, at least 1) when it is used up.
    pub fn acquire(&self, key: &str) -> Result<(), u64> {
        self.with_bucket(key, |bucket| {
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                Ok(())
            } else {
                Err(self.wait(bucket.tokens).as_secs().max(1))
            }
        })
        .unwrap_or(Ok(()))
    }

    /// [`RateLimiter::acquire`] for a client address, keyed by
    /// [`client_key`].
    pub fn acquire_client(&self, ip: IpAddr) -> Result<(), u64> {
        self.acquire(&client_key(ip))
    }

    /// Says how long to wait when `key`'s allowance is used up, without
    /// taking from it (pair with [`RateLimiter::record`]).
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.with_bucket(key, |bucket| {
            if bucket.tokens >= 1.0 {
                Ok(())
            } else {
                Err(self.wait(bucket.tokens).as_secs().max(1))
            }
        })
        .unwrap_or(Ok(()))
    }

    /// Takes one event from `key`'s allowance (it may go below zero briefly
    /// when events raced past [`RateLimiter::check`]).
    pub fn record(&self, key: &str) {
        self.with_bucket(key, |bucket| {
            bucket.tokens = (bucket.tokens - 1.0).max(-1.0)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_allowance_and_then_a_wait() {
        let limiter = RateLimiter::per_minute(3);
        for _ in 0..3 {
            assert_eq!(limiter.acquire("10.0.0.1"), Ok(()));
        }
        let wait = limiter.acquire("10.0.0.1").unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert_eq!(limiter.acquire("10.0.0.2"), Ok(()), "keys are independent");
    }

    #[test]
    fn check_and_record_count_only_what_is_recorded() {
        let limiter = RateLimiter::per_minute(2);
        for _ in 0..10 {
            assert_eq!(limiter.check("k"), Ok(()));
        }
        limiter.record("k");
        limiter.record("k");
        assert!(limiter.check("k").is_err());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_key(mapped), "192.0.2.7");
    }

    #[test]
    fn addresses_of_one_client_share_one_allowance() {
        let limiter = RateLimiter::per_minute(2);
        for ip in ["2001:db8:1:2::1", "2001:db8:1:2:ffff::7"] {
            assert_eq!(limiter.acquire_client(ip.parse().unwrap()), Ok(()));
        }
        assert!(limiter
            .acquire_client("2001:db8:1:2:abcd::1".parse().unwrap())
            .is_err());
        assert_eq!(
            limiter.acquire_client("2001:db8:1:3::1".parse().unwrap()),
            Ok(())
        );
        assert_eq!(
            limiter.acquire_client("::ffff:192.0.2.1".parse().unwrap()),
            Ok(())
        );
        assert_eq!(limiter.acquire_client("192.0.2.1".parse().unwrap()), Ok(()));
        assert!(limiter
            .acquire_client("192.0.2.1".parse().unwrap())
            .is_err());
    }

    #[test]
    fn zero_disables_the_limit() {
        let limiter = RateLimiter::per_minute(0);
        for _ in 0..1000 {
            assert_eq!(limiter.acquire("k"), Ok(()));
        }
    }

    #[test]
    fn a_table_of_keys_in_use_stays_bounded_and_is_not_swept_per_key() {
        let limiter = RateLimiter::per_minute(5);
        for i in 0..MAX_KEYS {
            limiter.record(&format!("token-{i}"));
        }
        // Every key is in use (not full): none can go, new keys are not kept.
        for i in 0..1000 {
            limiter.record(&format!("more-{i}"));
            assert_eq!(limiter.check(&format!("more-{i}")), Ok(()));
        }
        assert_eq!(limiter.buckets.lock().unwrap().len(), MAX_KEYS);
    }

    #[test]
    fn the_key_table_stays_bounded() {
        let limiter = RateLimiter::per_minute(1);
        for i in 0..(MAX_KEYS + 10) {
            limiter.check(&format!("client-{i}")).unwrap();
        }
        assert!(limiter.buckets.lock().unwrap().len() <= MAX_KEYS);
    }
}
