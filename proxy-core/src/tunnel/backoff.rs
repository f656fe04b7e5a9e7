//! Exponential backoff with full jitter, for agents reconnecting: the n-th
//! wait is uniform in `[0, min(max, base × 2ⁿ)]`, so agents that lost the
//! proxy together do not come back together.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The first ceiling of an agent's reconnection wait.
pub const DEFAULT_BASE: Duration = Duration::from_millis(500);

/// The largest ceiling of an agent's reconnection wait.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

/// The waits between attempts (see the module docs).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    state: u64,
}

impl Backoff {
    /// Waits starting below `base`, their ceiling doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        // A random seed per backoff, from the standard library's hasher keys.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
            state: seed | 1,
        }
    }

    /// The ceiling of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The next wait, and the ceiling doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let random = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(fraction)
    }

    /// Back to the first ceiling (after a tunnel that worked).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(DEFAULT_BASE, DEFAULT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_under_a_doubling_ceiling_capped_at_max() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut ceilings = Vec::new();
        for _ in 0..12 {
            let ceiling = backoff.ceiling();
            let wait = backoff.next_delay();
            assert!(wait <= ceiling, "{wait:?} > {ceiling:?}");
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000, 30000]
        );
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn waits_are_spread_over_the_whole_range() {
        let mut backoff = Backoff::new(Duration::from_secs(8), Duration::from_secs(8));
        let waits: Vec<f64> = (0..2000)
            .map(|_| backoff.next_delay().as_secs_f64())
            .collect();
        let below_one = waits.iter().filter(|w| **w < 1.0).count();
        let above_seven = waits.iter().filter(|w| **w > 7.0).count();
        // Uniform over [0, 8]: an eighth in each end, give or take.
        assert!((150..350).contains(&below_one), "{below_one}");
        assert!((150..350).contains(&above_seven), "{above_seven}");
        let mean = waits.iter().sum::<f64>() / waits.len() as f64;
        assert!((3.6..4.4).contains(&mean), "{mean}");
    }

    #[test]
    fn two_backoffs_do_not_wait_alike() {
        let mut a = Backoff::default();
        let mut b = Backoff::default();
        let a: Vec<_> = (0..5).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert_ne!(a, b);
    }
}
