//! At most one Event per key per window: a full pool must not turn every
//! waiting Node's retry into an Event.
//!
//! kube's `Recorder` folds repeats into an `EventSeries`, but it still sends
//! one request (a PATCH) per publish, so it bounds the number of Event
//! objects, not the writes. This bounds the writes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often one Node may be told that the pool is exhausted.
pub const POOL_EXHAUSTED_WINDOW: Duration = Duration::from_secs(600);

#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: HashMap<String, Instant>,
    pruned: Option<Instant>,
}

impl Throttle {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            state: Mutex::new(State {
                last: HashMap::new(),
                pruned: None,
            }),
        }
    }

    /// Whether an Event for `key` may go out now; if so, the window starts again.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    pub fn allow_at(&self, key: &str, now: Instant) -> bool {
        // Each update is whole before the lock is released; poisoning is ignored.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window;
        // Forget expired keys once per window: the map holds only what is live.
        if state.pruned.is_none_or(|t| now.duration_since(t) >= window) {
            state.last.retain(|_, t| now.duration_since(*t) < window);
            state.pruned = Some(now);
        }
        match state.last.get(key) {
            Some(t) if now.duration_since(*t) < window => false,
            _ => {
                state.last.insert(key.to_string(), now);
                true
            }
        }
    }

    /// How many keys are inside their window.
    pub fn len(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(POOL_EXHAUSTED_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn one_event_per_key_per_ten_minutes() {
        let throttle = Throttle::default();
        let start = Instant::now();
        assert!(throttle.allow_at("node/a", start));
        assert!(!throttle.allow_at("node/a", start + MIN));
        assert!(
            throttle.allow_at("node/b", start + MIN),
            "keys are independent"
        );
        assert!(!throttle.allow_at("node/a", start + 9 * MIN + MIN / 2));
        assert!(throttle.allow_at("node/a", start + 10 * MIN));
        assert!(!throttle.allow_at("node/a", start + 11 * MIN));
    }

    #[test]
    fn expired_keys_are_forgotten() {
        let throttle = Throttle::default();
        let start = Instant::now();
        for n in 0..100 {
            assert!(throttle.allow_at(&format!("node/{n}"), start));
        }
        assert_eq!(throttle.len(), 100);
        assert!(throttle.allow_at("node/late", start + 10 * MIN));
        assert_eq!(throttle.len(), 1);
    }
}
