//! Retry delays: exponential per object, with jitter, reset on success.
//!
//! A fixed retry interval turns one API server hiccup into a thundering herd:
//! every object that failed together retries together, forever at the same
//! rate. Doubling spreads the load out in time and jitter breaks up the herd.
//!
//! ```text
//!   failures  1    2    3    4   ...   9+
//!   delay     1s   2s   4s   8s  ...   5 min   (each + up to 25%)
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Duration;

/// How retries grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// The largest extra delay, as a fraction of the delay.
    pub jitter: f64,
}

impl Backoff {
    /// 1 s doubling to 5 min, + up to 25%.
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(300),
        jitter: 0.25,
    };

    /// The delay after `failures` failures in a row (the first is 1). `unit`,
    /// in [0, 1), picks the jitter: pass [`random_unit`] in production.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let base = self
            .initial
            .checked_mul(1 << doublings)
            .map_or(self.max, |d| d.min(self.max));
        base + base.mul_f64(self.jitter * unit.clamp(0.0, 1.0))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A number in [0, 1) that differs from call to call: enough for jitter,
/// without a random-number crate. std seeds each `RandomState` afresh, and
/// SipHash of nothing under a fresh key is as good as random for this.
pub fn random_unit() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Failures in a row per key (object), and the delay each one earns.
#[derive(Debug)]
pub struct Retries<K> {
    backoff: Backoff,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash> Retries<K> {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: K) -> Duration {
        self.failed_with(key, random_unit())
    }

    /// [`Retries::failed`] with the jitter chosen by the caller (tests).
    pub fn failed_with(&self, key: K, unit: f64) -> Duration {
        let mut failures = self.lock();
        let count = failures.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        self.backoff.delay(*count, unit)
    }

    /// `key` succeeded: its next failure starts again from the initial delay.
    pub fn succeeded(&self, key: &K) {
        self.lock().remove(key);
    }

    /// How many keys are backing off now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, u32>> {
        // Every update is a single map operation: a panic elsewhere cannot
        // leave the map half-changed, so poisoning is ignored.
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Eq + Hash> Default for Retries<K> {
    fn default() -> Self {
        Self::new(Backoff::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delays_double_from_one_second_to_five_minutes() {
        let b = Backoff::DEFAULT;
        let delays: Vec<Duration> = (1..=10).map(|n| b.delay(n, 0.0)).collect();
        assert_eq!(
            delays,
            [
                S(1),
                S(2),
                S(4),
                S(8),
                S(16),
                S(32),
                S(64),
                S(128),
                S(256),
                S(300)
            ]
        );
        assert_eq!(b.delay(u32::MAX, 0.0), S(300), "no overflow");
        assert_eq!(b.delay(0, 0.0), S(1), "zero failures is treated as one");
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let b = Backoff::DEFAULT;
        assert_eq!(b.delay(3, 0.5), Duration::from_millis(4_500));
        assert_eq!(b.delay(20, 0.999_999), S(300) + S(75).mul_f64(0.999_999));
        assert_eq!(
            b.delay(1, 7.0),
            Duration::from_millis(1_250),
            "unit is clamped"
        );
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let units: Vec<f64> = (0..64).map(|_| random_unit()).collect();
        assert!(units.iter().all(|u| (0.0..1.0).contains(u)), "{units:?}");
        let first = units[0];
        assert!(units.iter().any(|u| *u != first), "{units:?}");
    }

    #[test]
    fn retries_grow_per_key_and_reset_on_success() {
        let retries = Retries::new(Backoff::DEFAULT);
        assert_eq!(retries.failed_with("a", 0.0), S(1));
        assert_eq!(retries.failed_with("a", 0.0), S(2));
        assert_eq!(retries.failed_with("b", 0.0), S(1), "keys are independent");
        assert_eq!(retries.failed_with("a", 0.0), S(4));
        retries.succeeded(&"a");
        assert_eq!(retries.failed_with("a", 0.0), S(1));
        retries.succeeded(&"a");
        retries.succeeded(&"b");
        assert!(retries.is_empty(), "succeeded keys are not kept");
    }
}
