//! Fixtures shared by the agent's kernel tests (each test file does `mod common;`).

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod fixture;

use std::time::{Duration, Instant};

/// The value of one sample in the Prometheus text, 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits up to 10 s for `check`; fails the test with `what` otherwise.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
