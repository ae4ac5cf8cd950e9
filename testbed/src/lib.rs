//! Test infrastructure for Tartan's kernel tests, the lab and the benchmarks:
//! never a dependency of a production binary.
//!
//! ```text
//!   topology   switch / racks, nodes and an outside host in network namespaces
//!   cni        runs a conflist the way a container runtime does
//!   iperf      one TCP stream between two namespaces
//!   promtool   `promtool check metrics` on an exposition
//!   require    what a kernel test needs, or a loud failure
//!   wireguard  two boringtun sessions for the crypto benchmarks
//! ```
//!
//! The `tartan-echo` binary (`src/bin/tartan-echo/`) is the workload of the
//! test images (`tests/images/build.sh`): a TCP/UDP echo server, a probe and
//! a UDP flow that counts its losses.
//!
//! Tests that need root or a tool are `#[ignore]`d with the reason and run by
//! `make test` (`--include-ignored`) once it has installed their tools; inside
//! such a test [`require`] fails with what is missing instead of passing.

pub mod cni;
pub mod iperf;
pub mod promtool;
pub mod topology;
pub mod wireguard;

use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};

pub use topology::{
    Node, RACK_LABEL, RACKS, Topology, add_netns, list_by_prefix, node_ip, rack_gateway,
    remove_by_prefix,
};

/// Runs `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn run(command: &mut Command) -> io::Result<Output> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            command,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output)
}

/// Runs a command inside a named namespace.
pub fn exec(netns: &str, args: &[&str]) -> io::Result<Output> {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    ip(&all)
}

/// The path `ip netns add NAME` binds a namespace to.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

/// A command that starts inside the named namespace without `ip netns
/// exec`'s remount of /sys (`nsenter --net`).
pub fn command_in(netns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns_path(netns).display()))
        .arg("--")
        .arg(program);
    command
}

/// What is missing for a kernel test: root, and each tool not on the PATH.
pub fn missing(tools: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    if !nix::unistd::Uid::effective().is_root() {
        missing.push("root".to_string());
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push((*tool).to_string());
        }
    }
    missing
}

/// Fails the (ignored, explicitly run) test when root or a tool is missing:
/// a kernel test that cannot run must never report as passed.
pub fn require(tools: &[&str]) {
    fail_if_missing(missing(tools));
}

/// [`require`] for a test that needs tools but not root (`promtool`, `bird -p`).
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<String> = missing(tools).into_iter().filter(|m| m != "root").collect();
    fail_if_missing(missing);
}

fn fail_if_missing(missing: Vec<String>) {
    assert!(
        missing.is_empty(),
        "this test needs {} (run it through `make test`, which installs them)",
        missing.join(", ")
    );
}
