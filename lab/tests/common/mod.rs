//! What the lab tests share: running `tartan-lab`, reading its reports, and
//! labs that run one at a time and are taken down on drop.
// Each test binary uses only some of these.
#![allow(dead_code)]

use std::process::{Command, Output};

pub const LAB: &str = env!("CARGO_BIN_EXE_tartan-lab");

pub fn lab(args: &[&str]) -> Output {
    Command::new(LAB)
        .args(args)
        .output()
        .expect("tartan-lab runs")
}

pub fn ok(args: &[&str]) -> String {
    let out = lab(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tartan-lab {args:?} failed:\n{text}");
    text
}

pub fn namespaces(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// Lost packets from `switch`'s report line.
pub fn lost(report: &str) -> u64 {
    let line = report
        .lines()
        .find(|l| l.starts_with("switched"))
        .expect("switch report line");
    let before = line.split(" lost").next().expect("lost figure");
    before
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// Labs are heavy (namespaces, a daemon, maybe a control plane): on a small
/// machine they run one at a time, so timing figures mean something.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Down(pub String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.0]);
    }
}

/// A 3-node lab, taken down on drop; `up` checks the whole matrix works.
pub struct TestLab {
    pub name: String,
    _down: Down,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl TestLab {
    pub fn up(tag: &str, pods_per_node: usize, args: &[&str], tools: &[&str]) -> Self {
        let mut needed = vec!["ip", "nft", "ping", "nsenter"];
        needed.extend_from_slice(tools);
        tartan_testbed::require(&needed);
        let serial = serial();
        let name = format!("{tag}{}", std::process::id() % 1000);
        let down = Down(name.clone());
        let pods = pods_per_node.to_string();
        let mut all = vec![
            "up",
            "--name",
            &name,
            "--nodes",
            "3",
            "--pods-per-node",
            &pods,
        ];
        all.extend_from_slice(args);
        let up = ok(&all);
        // Every pod to every other pod, and each to the outside host.
        let total = 3 * pods_per_node;
        let paths = total * (total - 1) + total;
        assert!(
            up.contains(&format!("{paths} of {paths} paths work")),
            "{up}"
        );
        Self {
            name,
            _down: down,
            _serial: serial,
        }
    }
}

pub fn round_trip(name: &str, up_args: &[&str], switches: &[(&str, Option<&str>)]) {
    let lab = TestLab::up(name, 2, up_args, &[]);
    let name = lab.name.clone();
    let status = ok(&["status", "--name", &name]);
    assert!(
        status.contains("NODE-IP") && status.contains("36 of 36 paths work"),
        "{status}"
    );
    for (backend, direct) in switches {
        let mut args = vec!["switch", "--name", &name, "--backend", backend];
        if let Some(direct) = direct {
            args.extend_from_slice(&["--direct-routing", direct]);
        }
        let report = ok(&args);
        eprintln!("{report}");
        assert_eq!(
            lost(&report),
            0,
            "make-before-break loses nothing: {report}"
        );
        let status = ok(&["status", "--name", &name]);
        assert!(
            status.contains("36 of 36 paths work"),
            "after switching to {backend}: {status}"
        );
        assert!(
            status.contains(&format!(" {backend} ")),
            "NodeSubnets report {backend}: {status}"
        );
    }
    let down = ok(&["down", "--name", &name]);
    assert!(down.contains("removed"), "{down}");
    assert!(
        namespaces(&format!("tlab-{name}-")).is_empty(),
        "down leaves no namespace"
    );
    assert!(
        !std::path::Path::new("/run/tartan-lab").join(&name).exists(),
        "down leaves no state"
    );
}
