//! The data plane on the real kernel: three nodes in network namespaces on one
//! underlay switch, pods attached through the real CNI plugins with the
//! conflist the agent wrote, and the agent's planner and applier on each node.
//! Needs root, iproute2, nft, ping and the CNI plugins; skips with a reason
//! outside CI, fails under CI=true.

mod common;

use tartan_agent::netns::NetNs;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::fixture::{Fixture, pings, source_seen_outside};
use tartan_agent::dataplane::cleanup;
use tartan_crds::{BackendType, OverlayNetworkSpec};
use tartan_testbed::{exec, ip};

fn full_matrix(backend: BackendType, direct: bool, tag: &str) {
    let f = Fixture::new(tag, 3, backend, direct);
    f.program_all();
    let mut pods = Vec::new();
    for i in 0..3 {
        for p in 0..2 {
            pods.push((i, f.add_pod(i, &format!("p{p}"))));
        }
    }
    let mut failures = Vec::new();
    for (i, (from, _)) in &pods {
        for (j, (to_name, to_ip)) in &pods {
            if from != to_name && !pings(from, *to_ip) {
                failures.push(format!("{from} (node {i}) -> {to_name} {to_ip} (node {j})"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{backend} direct={direct}: unreachable:\n{}",
        failures.join("\n")
    );
    for (i, (pod, _)) in pods.iter().step_by(2) {
        assert_eq!(
            source_seen_outside(&f, pod),
            IpAddr::V4(f.topo.nodes[*i].ip),
            "masqueraded to node {i}'s address"
        );
    }
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn vxlan_every_pod_reaches_every_pod_and_the_outside() {
    full_matrix(BackendType::Vxlan, false, "vx");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn udp_every_pod_reaches_every_pod_and_the_outside() {
    full_matrix(BackendType::Udp, false, "ud");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn host_gw_every_pod_reaches_every_pod_and_the_outside() {
    full_matrix(BackendType::HostGw, false, "hg");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn vxlan_direct_routing_every_pod_reaches_every_pod_and_the_outside() {
    full_matrix(BackendType::Vxlan, true, "dr");
}

fn route_dump(netns: &str) -> String {
    String::from_utf8_lossy(
        &ip(&["-n", netns, "route", "show", "proto", "84"])
            .expect("ip route")
            .stdout,
    )
    .into_owned()
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn second_apply_changes_nothing_and_removing_a_peer_removes_exactly_its_objects() {
    let f = Fixture::new("rm", 3, BackendType::Vxlan, false);
    let n1 = &f.topo.nodes[0].netns;
    // A foreign route, device and neighbour that must survive every reconcile.
    ip(&[
        "-n",
        n1,
        "route",
        "add",
        "10.99.0.0/16",
        "via",
        "192.168.100.254",
    ])
    .expect("foreign route");
    ip(&[
        "-n",
        n1,
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "99",
        "dstport",
        "8473",
        "dev",
        "eth0",
    ])
    .expect("foreign vxlan");
    let all = f.target(0, &f.peers(0, None));
    let first = f.planes[0].set(all.clone()).expect("first apply");
    assert_eq!(first.changes.get("route"), Some(&2));
    assert_eq!(first.changes.get("neighbour"), Some(&2));
    assert_eq!(first.changes.get("fdb"), Some(&2));
    let second = f.planes[0].set(all).expect("second apply");
    assert_eq!(
        second.total(),
        0,
        "the same plan twice makes zero netlink changes: {second:?}"
    );
    let fewer = f.target(0, &f.peers(0, Some(&[1])));
    let removal = f.planes[0].set(fewer).expect("peer removed");
    assert_eq!(
        removal.changes,
        BTreeMap::from([("fdb", 1), ("neighbour", 1), ("route", 1)])
    );
    let routes = route_dump(n1);
    assert!(
        routes.contains("10.244.2.0/24") && !routes.contains("10.244.3.0/24"),
        "{routes}"
    );
    let all_routes =
        String::from_utf8_lossy(&ip(&["-n", n1, "route"]).expect("routes").stdout).into_owned();
    assert!(
        all_routes.contains("10.99.0.0/16 via 192.168.100.254"),
        "foreign route kept: {all_routes}"
    );
    ip(&["-n", n1, "link", "show", "flannel.1"]).expect("foreign device kept");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn a_join_and_a_leave_programmed_as_deltas_leave_the_kernel_as_a_full_apply_would() {
    use tartan_agent::plan::plan_peer;
    let f = Fixture::new("dl", 3, BackendType::Vxlan, false);
    let facts = common::fixture::facts(&f.topo, 0);
    let (peers, local) = (f.peers(0, None), &f.subnets[0]);
    let before = f.target(0, &peers[..1]);
    f.planes[0]
        .set(before.clone())
        .expect("full apply with one peer");
    let join = plan_peer(
        &f.network,
        local,
        &facts,
        &before.state,
        None,
        Some(&peers[1]),
    )
    .expect("a steady vxlan join is planned alone");
    let joined = f.planes[0].set_peers(vec![join]).expect("the join");
    assert_eq!(
        joined.changes,
        BTreeMap::from([("fdb", 1), ("neighbour", 1), ("route", 1)])
    );
    let all = f.target(0, &peers);
    let check = f.planes[0].set(all.clone()).expect("full apply, all peers");
    assert_eq!(
        check.total(),
        0,
        "the delta left the kernel as the full plan wants it: {check:?}"
    );
    let leave = plan_peer(&f.network, local, &facts, &all.state, Some(&peers[1]), None)
        .expect("a leave is planned alone");
    let left = f.planes[0].set_peers(vec![leave]).expect("the leave");
    assert_eq!(
        left.changes,
        BTreeMap::from([("fdb", 1), ("neighbour", 1), ("route", 1)])
    );
    let check = f.planes[0].set(before).expect("full apply, one peer");
    assert_eq!(check.total(), 0, "{check:?}");
    assert!(!route_dump(&f.topo.nodes[0].netns).contains("10.244.3.0/24"));
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: not restored within {within:?}");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn objects_removed_by_hand_come_back_within_a_second() {
    let f = Fixture::new("df", 3, BackendType::Vxlan, false);
    f.program_all();
    let n1 = f.topo.nodes[0].netns.clone();
    let second = Duration::from_secs(1);
    ip(&["-n", &n1, "route", "del", "10.244.2.0/24"]).expect("route del");
    let took = wait_for("route", second, || {
        route_dump(&n1).contains("10.244.2.0/24")
    });
    eprintln!("route restored in {took:?}");
    ip(&["-n", &n1, "neigh", "del", "10.244.3.0", "dev", "tartan.1"]).expect("neigh del");
    let took = wait_for("neighbour", second, || {
        let out = ip(&["-n", &n1, "neigh", "show", "dev", "tartan.1"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.contains("10.244.3.0") && out.contains("PERMANENT")
    });
    eprintln!("neighbour restored in {took:?}");
    ip(&["-n", &n1, "link", "del", "tartan.1"]).expect("link del");
    let took = wait_for("vxlan device and its routes", second, || {
        let routes = route_dump(&n1);
        routes.contains("10.244.2.0/24") && routes.contains("10.244.3.0/24")
    });
    eprintln!("device, routes, neighbours, FDB restored in {took:?}");
    let fdb = String::from_utf8_lossy(
        &ip(&["-n", &n1, "-d", "link", "show", "tartan.1"])
            .expect("link")
            .stdout,
    )
    .into_owned();
    assert!(
        fdb.contains("vxlan id 1") && fdb.contains("nolearning"),
        "{fdb}"
    );
    let repairs = f.metrics.render();
    assert!(
        repairs.contains("tartan_agent_drift_repairs_total{kind=\"route\"}"),
        "{repairs}"
    );
    // Traffic works after the repair.
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    assert!(pings(&a, b_ip));
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn cleanup_leaves_no_tartan_object_behind() {
    let mut f = Fixture::new("cl", 2, BackendType::Vxlan, false);
    f.program_all();
    // --cleanup runs with the agent stopped; a running one would repair what it removes.
    f.planes.remove(0).stop();
    let n1 = f.topo.nodes[0].clone();
    assert!(f.cni[0].path().exists());
    let report = cleanup(&NetNs::named(&n1.netns), Some(&f.cni[0])).expect("cleanup");
    assert!(report.total() >= 2, "{report:?}");
    let links = String::from_utf8_lossy(&ip(&["-n", &n1.netns, "link"]).expect("links").stdout)
        .into_owned();
    assert!(
        !links.contains("tartan.") && !links.contains("cni0"),
        "{links}"
    );
    assert!(route_dump(&n1.netns).trim().is_empty());
    assert!(
        exec(&n1.netns, &["nft", "list", "table", "inet", "tartan"]).is_err(),
        "nftables table removed"
    );
    assert!(!f.cni[0].path().exists(), "conflist removed");
}

/// An agent restart (an upgrade) against a programmed node changes no kernel
/// object. `kernel_forwards`: whether pods keep talking while it is down (all
/// backends but udp, whose datapath is the agent itself).
fn restart_changes_nothing(backend: BackendType, tag: &str, kernel_forwards: bool) {
    let mut f = Fixture::new(tag, 2, backend, false);
    f.program_all();
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    assert!(pings(&a, b_ip));
    f.planes.remove(0).stop();
    if kernel_forwards {
        assert!(
            pings(&a, b_ip),
            "pods keep their network while the agent is down"
        );
    }
    let restarted = f.start_plane(0);
    let report = restarted
        .set(f.target(0, &f.peers(0, None)))
        .expect("apply after restart");
    assert_eq!(
        report.total(),
        0,
        "a restart against a programmed node changes nothing: {report:?}"
    );
    assert!(
        pings(&a, b_ip),
        "{backend}: traffic flows after the restart"
    );
    f.planes.insert(0, restarted);
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn a_restarted_agent_changes_nothing_on_a_programmed_node() {
    restart_changes_nothing(BackendType::Vxlan, "rs", true);
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn a_restarted_udp_agent_reattaches_to_its_tun_and_changes_nothing() {
    restart_changes_nothing(BackendType::Udp, "ru", false);
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn dual_stack_pods_reach_each_other_over_ipv6() {
    let mut f = Fixture::new("v6", 2, BackendType::Vxlan, false);
    // Re-plan the same fixture as dual-stack.
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.ipv6_cidr = Some("fd00:10:244::/56".into());
    f.network = spec.validate().expect("valid");
    for (i, subnet) in f.subnets.iter_mut().enumerate() {
        subnet.ipv6_cidr = Some(format!("fd00:10:244:{}::/64", i + 1).parse().expect("cidr"));
    }
    f.program_all();
    let (a, _) = f.add_pod(0, "a");
    let (b, _) = f.add_pod(1, "b");
    let b_v6 = String::from_utf8_lossy(
        &exec(
            &b,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
            ],
        )
        .expect("addr")
        .stdout,
    )
    .split_whitespace()
    .nth(3)
    .and_then(|a| a.split('/').next())
    .expect("pod b has a global IPv6 address")
    .to_string();
    assert!(b_v6.starts_with("fd00:10:244:2:"), "{b_v6}");
    // Duplicate address detection takes a moment on fresh interfaces.
    let start = Instant::now();
    while exec(&a, &["ping", "-6", "-c", "1", "-W", "1", &b_v6]).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pod a cannot reach pod b at {b_v6} over IPv6:\n{}",
            route_dump(&f.topo.nodes[0].netns)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
