//! `tartan-lab bench --scale` end to end at a small N: a real control plane,
//! the real operator and two real agents, 50 fake nodes; every figure of the
//! report is there and sane, and nothing is left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

const LAB: &str = env!("CARGO_BIN_EXE_tartan-lab");
const N: usize = 50;

/// The agent and operator built next to this tartan-lab (`cargo test
/// --workspace` builds every binary; `cargo test -p tartan-lab` does not).
fn sibling(name: &str) -> PathBuf {
    let path = Path::new(LAB).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is not built: cargo build -p tartan-agent -p tartan-operator (or cargo test --workspace)",
        path.display()
    );
    path
}

fn control_plane_dir() -> PathBuf {
    let dir = std::env::var_os("TARTAN_CONTROL_PLANE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(tartan_harness::binaries_dir);
    for bin in ["etcd", "kube-apiserver"] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} missing in {} (tests/control-plane/build.sh builds it)",
            dir.display()
        );
    }
    dir
}

fn number(value: &serde_json::Value, what: &str) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {value}"))
}

#[test]
#[ignore = "needs root and the control plane (tests/control-plane/build.sh)"]
fn scale_bench_at_50_nodes_reports_every_figure() {
    tartan_testbed::require(&["ip", "nft", "nsenter"]);
    let cp = control_plane_dir();
    let out = std::env::temp_dir().join(format!("tartan-scale-test-{}", std::process::id()));
    let run = Command::new(LAB)
        .args([
            "bench",
            "--scale",
            &N.to_string(),
            "--joins",
            "3",
            "--quiet",
            "2",
        ])
        .args(["--timeout", "60", "--out"])
        .arg(&out)
        .arg("--agent-bin")
        .arg(sibling("tartan-agent"))
        .arg("--operator-bin")
        .arg(sibling("tartan-operator"))
        .arg("--control-plane-dir")
        .arg(&cp)
        .output()
        .expect("tartan-lab runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "bench --scale failed:\n{text}");
    eprintln!("{text}");
    let json = std::fs::read_to_string(out.join(format!("scale-{N}.json"))).expect("the JSON");
    let md = std::fs::read_to_string(out.join(format!("scale-{N}.md"))).expect("the Markdown");
    let _ = std::fs::remove_dir_all(&out);
    let report: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");

    assert_eq!(report["subnets"]["reached"], N, "{json}");
    assert!(number(&report["subnets"]["seconds"], "NodeSubnets time") > 0.0);
    let programmed = report["programmed"].as_array().expect("agents");
    assert_eq!(programmed.len(), 2, "two real agents");
    for agent in programmed {
        // The fake nodes and the other real node.
        assert!(
            agent["value"]["reached"].as_u64() >= Some(N as u64 + 1),
            "{agent}"
        );
        assert!(number(&agent["value"]["seconds"], "programmed time") > 0.0);
    }
    let join = &report["join"];
    let tartan = number(&join["tartan_total"], "writes per join");
    // At least the operator's NodeSubnet create and the simulated status write.
    assert!(tartan >= 2.0, "{join}");
    assert_eq!(
        join["quiet"], true,
        "the counters settle after a join: {join}"
    );
    for agent in join["real_agents"].as_array().expect("agents") {
        assert!(
            agent["value"].is_u64(),
            "the agents export status writes: {agent}"
        );
    }
    for key in ["join_latency", "join_latency_from_create"] {
        for agent in report[key].as_array().expect("agents") {
            assert_eq!(agent["value"]["missed"], 0, "{key}: {agent}");
            let max = number(&agent["value"]["max_ms"], "latency");
            assert!((0.0..30_000.0).contains(&max), "{key}: {agent}");
        }
    }
    for agent in report["agent_rss_kib"].as_array().expect("agents") {
        assert!(
            agent["value"].as_u64() > Some(1024),
            "an agent holds some memory: {agent}"
        );
    }
    assert!(report["operator_rss_kib"].as_u64() > Some(1024));
    for agent in report["agent_cpu_seconds_per_join"]
        .as_array()
        .expect("agents")
    {
        let cpu = number(&agent["value"], "CPU per join");
        assert!((0.0..5.0).contains(&cpu), "{agent}");
    }
    assert!(
        md.contains("| figure | value |") && !md.contains("not reached"),
        "{md}"
    );
    let leftovers = tartan_testbed::list_by_prefix("tscale").expect("ip netns");
    assert!(
        leftovers.is_empty(),
        "namespaces left behind: {leftovers:?}"
    );
    assert!(
        !std::env::temp_dir().join("tartan-scale-bench").exists(),
        "the control plane's directory is removed"
    );
}
