//! The lab end to end, through its command line: `up`, `status`, `switch`
//! (with the loss figure) and `down` for each backend, and the clean-up.

mod common;

use common::{Down, TestLab, lab, lost, ok, round_trip, serial};

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

/// `tartan-lab restart` under the lab's 100/s ping flow, on `backend`.
fn a_restart_loses_nothing(tag: &str, backend: &str) {
    let lab = TestLab::up(tag, 1, &["--backend", backend], &[]);
    let report = ok(&["restart", "--name", &lab.name]);
    eprintln!("{backend}: {report}");
    // Every node's agent restarts at once (one lab process holds them all).
    // The keepers held the TUN queues and the sockets meanwhile, so what the
    // pods sent waited for the new agents (wireguard: which renegotiate).
    let lost = report
        .split(", ")
        .find_map(|part| part.strip_suffix(" lost"))
        .and_then(|n| n.trim().parse::<u64>().ok())
        .expect("restart report");
    assert_eq!(
        lost, 0,
        "{backend}: a restart loses nothing at 100/s: {report}"
    );
    let status = ok(&["status", "--name", &lab.name]);
    assert!(
        status.contains("9 of 9 paths work"),
        "{backend}, after the restart: {status}"
    );
}

#[test]
#[ignore = "lab test: needs root, network namespaces and a TUN device (make test runs it)"]
fn a_wireguard_lab_renegotiates_after_its_agents_restart_and_loses_nothing() {
    a_restart_loses_nothing("wr", "wireguard");
}

#[test]
#[ignore = "lab test: needs root, network namespaces and a TUN device (make test runs it)"]
fn a_udp_lab_loses_nothing_while_its_agents_restart() {
    a_restart_loses_nothing("ur", "udp");
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
