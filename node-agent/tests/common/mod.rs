//! Fixtures shared by the agent's kernel tests (each test file does `mod common;`).

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod fixture;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `args` printed, run in `netns`; the test fails if it does not run.
pub fn stdout(netns: &str, args: &[&str]) -> String {
    let out = tartan_testbed::exec(netns, args).expect("command");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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

/// Requests of a 100/s ping from `netns` to `to` while `during` runs, and
/// how many of them before the last one answered got no answer (the tail
/// still in flight when ping is stopped is not a loss).
pub fn ping_flow(netns: &str, to: std::net::Ipv4Addr, during: impl FnOnce()) -> (u64, u64) {
    let ping = Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-i", "0.01", "-W", "2"])
        .arg(to.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_millis(500));
    during();
    std::thread::sleep(Duration::from_millis(1000));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(ping.id().to_string())
        .status();
    let out = ping.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let answered: std::collections::BTreeSet<u64> = text
        .lines()
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    let last = answered.last().copied().unwrap_or(0);
    (last, last - answered.len() as u64)
}
