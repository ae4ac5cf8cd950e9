//! No node passes for another on the real kernel: what a VXLAN peer may
//! deliver is bounded by source. Three-node namespaces as in the data plane
//! tests. Needs root, iproute2, nft, ping and the CNI plugins; skips with a
//! reason outside CI, fails under CI=true.

mod common;

use std::time::{Duration, Instant};

use common::fixture::{Fixture, pings};
use tartan_agent::masquerade::{TABLE, VXLAN_SPOOFED};
use tartan_crds::BackendType;
use tartan_testbed::exec;

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Packets the VXLAN bound of `netns` has dropped.
fn vxlan_spoofed(netns: &str) -> u64 {
    let out = exec(
        netns,
        &["nft", "-j", "list", "counter", "inet", TABLE, VXLAN_SPOOFED],
    )
    .expect("the counter exists");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nft JSON");
    json["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|item| item["counter"]["packets"].as_u64())
        .expect("packets")
}

/// Node 2 is a real VTEP of node 1. It sends pod a (on node 1) pings from
/// an address of node 1's own subnet, and from outside the cluster (masquerade
/// is on, so no peer forwards such a source unmasqueraded): node 1 drops
/// both at its VXLAN device and counts them. Node 2's own traffic, and its
/// pods', still reach pod a.
#[test]
#[ignore = "kernel test: needs root, network namespaces, iproute2, nft and the CNI plugins (make test runs it)"]
fn vxlan_drops_sources_no_peer_may_use_and_counts_them() {
    let f = Fixture::new("vs", 2, BackendType::Vxlan, false);
    f.program_all();
    let (_, a_ip) = f.add_pod(0, "a");
    let (b, _) = f.add_pod(1, "b");
    let (node1, node2) = (&f.topo.nodes[0].netns, &f.topo.nodes[1].netns);
    eventually("pod b reaches pod a", || pings(&b, a_ip));
    assert!(pings(node2, a_ip), "node 2 itself reaches pod a");
    assert_eq!(vxlan_spoofed(node1), 0);
    let own = format!("{}", std::net::Ipv4Addr::from(u32::from(a_ip) + 50));
    for (n, source) in [own.as_str(), "192.0.2.7"].into_iter().enumerate() {
        exec(
            node2,
            &["ip", "addr", "add", &format!("{source}/32"), "dev", "lo"],
        )
        .expect("address on node 2");
        let ping = [
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            source,
            &a_ip.to_string(),
        ];
        assert!(
            exec(node2, &ping).is_err(),
            "a ping from {source} is answered"
        );
        assert_eq!(
            vxlan_spoofed(node1),
            n as u64 + 1,
            "node 1 drops the ping from {source}"
        );
    }
    assert!(pings(&b, a_ip), "pod b still reaches pod a");
    assert!(pings(node2, a_ip), "node 2 still reaches pod a");
    assert_eq!(vxlan_spoofed(node1), 2, "genuine traffic is not counted");
}
