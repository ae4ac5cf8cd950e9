//! The lab with a real control plane (the real operator and agents, kubectl,
//! NetworkPolicy) and the real cluster (kubelet, containerd, helm), end to end.

mod common;

use std::process::Command;

use common::{Down, lab, lost, namespaces, ok, serial};

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn control_plane_lab_runs_the_real_operator_and_agents_and_switches_with_kubectl() {
    tartan_testbed::require(&["ip", "nft", "ping", "nsenter"]);
    tartan_harness::require_binaries();
    let _serial = serial();
    let name = format!("cp{}", std::process::id() % 1000);
    let _guard = Down(name.clone());
    let up = ok(&[
        "up",
        "--name",
        &name,
        "--nodes",
        "3",
        "--pods-per-node",
        "1",
        "--control-plane",
    ]);
    assert!(up.contains("9 of 9 paths work"), "{up}");
    let kubeconfig = up
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .expect("a KUBECONFIG to export")
        .to_string();
    let kubectl = |args: &[&str]| {
        let out = Command::new(tartan_harness::binaries_dir().join("kubectl"))
            .arg(format!("--kubeconfig={kubeconfig}"))
            .args(args)
            .output()
            .expect("kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = kubectl(&["get", "nodesubnets"]);
    assert_eq!(
        before
            .lines()
            .filter(|l| l.contains(" vxlan ") && l.contains("True"))
            .count(),
        3,
        "{before}"
    );
    kubectl(&[
        "patch",
        "overlaynetwork",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"backend":{"type":"host-gw"}}}"#,
    ]);
    let start = std::time::Instant::now();
    loop {
        let after = kubectl(&["get", "nodesubnets"]);
        if after
            .lines()
            .filter(|l| l.contains(" host-gw ") && l.contains("True"))
            .count()
            == 3
        {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "rollout did not finish: {after}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let status = ok(&["status", "--name", &name]);
    assert!(status.contains("9 of 9 paths work"), "{status}");
    a_default_deny_leaves_only_the_way_out(&name, &kubectl);
    let report = ok(&["switch", "--name", &name, "--backend", "vxlan"]);
    assert!(report.contains("-> vxlan"), "{report}");
    assert_eq!(lost(&report), 0, "{report}");
}

/// A NetworkPolicy applied with kubectl selects the lab's pods: default
/// deny leaves only the pods' way out (and its replies); deleting it opens all.
fn a_default_deny_leaves_only_the_way_out(name: &str, kubectl: &dyn Fn(&[&str]) -> String) {
    let policy = std::env::temp_dir().join(format!("{name}-deny.yaml"));
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: default}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    )
    .expect("policy file");
    kubectl(&["apply", "-f", policy.to_str().expect("path")]);
    let denied = until_status(name, "3 of 9 paths work");
    eprintln!("default deny:\n{denied}");
    kubectl(&["delete", "networkpolicy", "deny"]);
    until_status(name, "9 of 9 paths work");
    let _ = std::fs::remove_file(&policy);
}

/// `status` until it says `want` (a policy takes a moment to reach the
/// agents; `status` exits 1 while some path does not work, denied ones too).
fn until_status(name: &str, want: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let status = String::from_utf8_lossy(&lab(&["status", "--name", name]).stdout).into_owned();
        if status.contains(want) {
            return status;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never {want}:\n{status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Entries in host-local's default state directory for the `tartan` network.
fn host_local_default_state() -> Vec<String> {
    std::fs::read_dir("/var/lib/cni/networks/tartan")
        .map(|entries| {
            let mut names: Vec<String> = entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "lab test: needs root, network namespaces and the control plane that make deps builds (make test runs it)"]
fn a_control_plane_lab_comes_up_again_after_down_and_leaves_nothing_outside_its_directory() {
    tartan_testbed::require(&["ip", "nft", "ping", "nsenter"]);
    tartan_harness::require_binaries();
    let _serial = serial();
    let name = format!("ud{}", std::process::id() % 1000);
    let _guard = Down(name.clone());
    let host_local_before = host_local_default_state();
    let up = [
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
        "--control-plane",
    ];
    let first = ok(&up);
    assert!(first.contains("4 of 4 paths work"), "{first}");
    ok(&["down", "--name", &name]);
    assert!(
        namespaces(&format!("tlab-{name}-")).is_empty(),
        "down removes every namespace"
    );
    assert!(
        !tartan_lab::state::dir(&name).exists(),
        "down removes the lab's directory"
    );
    let second = ok(&up);
    assert!(second.contains("4 of 4 paths work"), "{second}");
    assert_eq!(
        host_local_default_state(),
        host_local_before,
        "pod addresses are allocated under the lab's own directory"
    );
}

#[test]
#[ignore = "lab test: needs root, network namespaces, buildah and the node components make deps builds (make test runs it)"]
fn a_real_cluster_comes_up_with_tartan_by_helm_and_goes_without_a_trace() {
    tartan_testbed::require(&["ip", "nft", "nsenter", "unshare", "buildah", "mmdebstrap"]);
    tartan_harness::require_binaries();
    let _serial = serial();
    let name = format!("c{}", std::process::id() % 1000);
    struct ClusterDown(String);
    impl Drop for ClusterDown {
        fn drop(&mut self) {
            let _ = lab(&["cluster", "down", "--name", &self.0]);
        }
    }
    let _guard = ClusterDown(name.clone());
    let up = ok(&["cluster", "up", "--name", &name, "--nodes", "2"]);
    assert!(up.contains("export KUBECONFIG="), "{up}");
    let status = ok(&["cluster", "status", "--name", &name]);
    for wanted in [
        "node/n1",
        "node/n2",
        "nodesubnet.tartan.dev/n1",
        "pod/echo-",
        "pod/tartan-agent-",
    ] {
        assert!(status.contains(wanted), "{wanted} missing from:\n{status}");
    }
    assert_eq!(
        status
            .lines()
            .filter(|l| l.starts_with("node/") && l.contains(" Ready "))
            .count(),
        2,
        "{status}"
    );
    let down = ok(&["cluster", "down", "--name", &name]);
    assert!(down.contains("down"), "{down}");
    assert!(
        namespaces(&format!("tlc-{name}-")).is_empty(),
        "namespaces left"
    );
    let leftovers = Command::new("pgrep")
        .args(["-f", &format!("tartan-tlc-{name}")])
        .output()
        .expect("pgrep");
    assert!(
        leftovers.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );
}
