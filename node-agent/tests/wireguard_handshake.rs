//! Pod packets for a wireguard peer whose handshake never completes, on the
//! real kernel: boringtun holds 256 of them for the handshake and drops the
//! rest, and the agent counts each one it dropped (`queue_full`), though
//! boringtun itself does not say. Needs root, iproute2, nft and the CNI plugins.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use common::fixture::Fixture;
use common::{eventually, sample};
use tartan_agent::netns::NetNs;
use tartan_crds::BackendType;

const HELD: usize = 256;

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and the CNI plugins (make test runs it)"]
fn packets_beyond_what_a_pending_handshake_holds_are_counted_lost() {
    let f = Fixture::new("wq", 2, BackendType::Wireguard, false);
    // Only node 1 is programmed: node 2 never answers its handshake.
    let target = f.target(0, &f.peers(0, None));
    f.planes[0].set(target).expect("apply");
    let (pod, _) = f.add_pod(0, "a");
    let socket = NetNs::named(&pod)
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("pod netns")
        .expect("bind");
    let behind_node_2 = (Ipv4Addr::new(10, 244, 2, 7), 9);
    let sent = HELD + 44;
    for i in 0..sent {
        socket
            .send_to(&(i as u32).to_be_bytes(), behind_node_2)
            .expect("send");
    }
    let drops = |reason: &str| {
        let series = format!("tartan_agent_wireguard_drops_total{{reason=\"{reason}\"}}");
        sample(&f.metrics.render(), &series)
    };
    eventually("the packets beyond the queue are counted", || {
        drops("queue_full") >= 44.0
    });
    // Settled: exactly those, and none taken for another reason.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(drops("queue_full"), 44.0);
    assert_eq!(drops("no_peer"), 0.0);
    assert_eq!(drops("malformed"), 0.0);
}
