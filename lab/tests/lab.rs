//! The lab end to end, through its command line: `up`, `status`, `switch`
//! (with the loss figure) and `down` for each backend, and the clean-up.

use std::process::{Command, Output};

const LAB: &str = env!("CARGO_BIN_EXE_tartan-lab");

fn lab(args: &[&str]) -> Output {
    Command::new(LAB)
        .args(args)
        .output()
        .expect("tartan-lab runs")
}

fn ok(args: &[&str]) -> String {
    let out = lab(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tartan-lab {args:?} failed:\n{text}");
    text
}

fn namespaces(prefix: &str) -> Vec<String> {
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
fn lost(report: &str) -> u64 {
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

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = lab(&["down", "--name", &self.0]);
    }
}

fn round_trip(name: &str, up_args: &[&str], switches: &[(&str, Option<&str>)]) {
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

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn vxlan_lab_switches_to_host_gw_and_back_without_loss() {
    round_trip(
        "vx",
        &["--backend", "vxlan"],
        &[("host-gw", None), ("vxlan", None)],
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn host_gw_lab_switches_to_vxlan_with_direct_routing_without_loss() {
    round_trip(
        "hg",
        &["--backend", "host-gw"],
        &[("vxlan", Some("true")), ("host-gw", None)],
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn direct_routing_lab_switches_to_plain_vxlan_without_loss() {
    round_trip(
        "dr",
        &["--backend", "vxlan", "--direct-routing"],
        &[("vxlan", Some("false"))],
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn udp_lab_switches_to_vxlan_and_back_without_loss() {
    round_trip(
        "ud",
        &["--backend", "udp"],
        &[("vxlan", None), ("udp", None)],
    );
}

#[test]
#[ignore = "lab test: needs root, network namespaces and a TUN device (make test runs it)"]
fn wireguard_lab_switches_to_and_from_udp_and_vxlan_without_loss() {
    round_trip(
        "wg",
        &["--backend", "wireguard"],
        &[
            ("vxlan", None),
            ("wireguard", None),
            ("udp", None),
            ("wireguard", None),
        ],
    );
}

#[test]
#[ignore = "lab test: needs root, network namespaces and a TUN device (make test runs it)"]
fn a_wireguard_lab_renegotiates_after_its_agents_restart() {
    let lab = TestLab::up("wr", 1, &["--backend", "wireguard"], &[]);
    let report = ok(&["restart", "--name", &lab.name]);
    eprintln!("{report}");
    // Every node's agent restarts at once (one lab process holds them all):
    // new sessions with every peer, from a handshake at start.
    let lost = report
        .split(", ")
        .find_map(|part| part.strip_suffix(" lost"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("restart report");
    assert!(
        lost <= 3,
        "a restart costs at most a few packets at 100/s: {report}"
    );
    let status = ok(&["status", "--name", &lab.name]);
    assert!(
        status.contains("9 of 9 paths work"),
        "after the restart: {status}"
    );
}

/// A 3-node lab, taken down on drop; `up` checks the whole matrix works.
struct TestLab {
    name: String,
    _down: Down,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl TestLab {
    fn up(tag: &str, pods_per_node: usize, args: &[&str], tools: &[&str]) -> Self {
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

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn bgp_mesh_lab_switches_from_vxlan_and_back_without_loss() {
    tartan_testbed::require(&["bird"]);
    round_trip(
        "bg",
        &["--backend", "vxlan"],
        &[("bgp", None), ("vxlan", None)],
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn routed_bgp_lab_routes_pods_through_the_top_of_rack_router_without_tunnels() {
    let lab = TestLab::up("rb", 1, &["--routed", "--backend", "bgp"], &["bird"]);
    let name = lab.name.clone();
    let status = ok(&["status", "--name", &name]);
    // Rack 1 holds n1 and n3 (mesh + router), rack 2 n2 (router only);
    // session counts are metrics now, the routes below show the sessions work.
    for line in [
        "192.168.10.2     bgp       True",
        "192.168.11.2     bgp       True",
    ] {
        assert!(status.contains(line), "{status}");
    }
    for subnet in [
        "10.244.0.0/24 via 192.168.10.2",
        "10.244.1.0/24 via 192.168.11.2",
        "10.244.2.0/24 via 192.168.10.3",
    ] {
        assert!(
            status.contains(subnet),
            "the router learned {subnet}: {status}"
        );
    }
    let n1 = format!("tlab-{name}-n1");
    let routes = String::from_utf8_lossy(
        &tartan_testbed::ip(&["-n", &n1, "route"])
            .expect("routes")
            .stdout,
    )
    .to_string();
    assert!(
        routes.contains("10.244.1.0/24 via 192.168.10.1 dev eth0 proto bird")
            && routes.contains("10.244.2.0/24 via 192.168.10.3 dev eth0 proto bird")
            && !routes.contains("tartan"),
        "plain routes, through the router to the other rack: {routes}"
    );
    for backend in ["vxlan", "bgp"] {
        let report = ok(&["switch", "--name", &name, "--backend", backend]);
        eprintln!("{report}");
        assert_eq!(lost(&report), 0, "{report}");
    }
    let status = ok(&["status", "--name", &name]);
    assert!(
        status.contains("9 of 9 paths work") && status.contains(" bgp "),
        "{status}"
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn routed_underlay_works_with_vxlan_and_reports_host_gw_as_impossible() {
    let lab = TestLab::up("rt", 1, &["--routed"], &[]);
    let name = lab.name.clone();
    let report = ok(&["switch", "--name", &name, "--backend", "host-gw"]);
    assert_eq!(lost(&report), 0, "{report}");
    let status = ok(&["status", "--name", &name]);
    assert!(
        status.contains("9 of 9 paths work"),
        "still reachable over vxlan: {status}"
    );
    assert!(
        status.contains("False"),
        "Ready=False (HostGwPeerNotOnLink): {status}"
    );
    // udp crosses L3 like vxlan does.
    let report = ok(&["switch", "--name", &name, "--backend", "udp"]);
    assert_eq!(lost(&report), 0, "{report}");
    let status = ok(&["status", "--name", &name]);
    assert!(
        status.contains("9 of 9 paths work") && status.contains(" udp "),
        "over udp across the router: {status}"
    );
}

#[test]
#[ignore = "lab test: needs root and network namespaces (make test runs it)"]
fn a_second_up_of_the_same_lab_is_refused_and_non_root_is_told() {
    tartan_testbed::require(&["ip", "nft", "ping", "nsenter"]);
    let _serial = serial();
    let name = format!("tw{}", std::process::id() % 1000);
    let _guard = Down(name.clone());
    ok(&[
        "up",
        "--name",
        &name,
        "--nodes",
        "2",
        "--pods-per-node",
        "1",
    ]);
    let again = lab(&["up", "--name", &name, "--nodes", "2"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
}

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
