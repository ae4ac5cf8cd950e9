//! The udp backend on the real kernel: TUN `tartan0` on every node, pods on
//! three nodes reaching each other through the agent's userspace datapath,
//! bulk TCP carried in batches, and hostile datagrams dropped and counted.
//! Needs root, iproute2, nft, ping, iperf3 and the CNI plugins; skips with a
//! reason outside CI, fails under CI=true.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::fixture::{Fixture, pings, udp_fixture};
use common::{eventually, ping_flow, sample};
use tartan_agent::netns::NetNs;
use tartan_agent::plan::TUN;
use tartan_testbed::exec;

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn bulk_tcp_crosses_in_batches_with_offloads() {
    let f = udp_fixture("ub", 2);
    let (a, _) = f.add_pod(0, "a");
    let (b, b_ip) = f.add_pod(1, "b");
    // The TUN holds the cluster route and the peer's, at the udp MTU.
    let routes = String::from_utf8_lossy(
        &exec(&f.topo.nodes[0].netns, &["ip", "route", "show", "dev", TUN])
            .expect("routes")
            .stdout,
    )
    .to_string();
    assert!(
        routes.contains("10.244.0.0/16") && routes.contains("10.244.2.0/24"),
        "{routes}"
    );
    let link = String::from_utf8_lossy(
        &exec(&f.topo.nodes[0].netns, &["ip", "link", "show", TUN])
            .expect("link")
            .stdout,
    )
    .to_string();
    assert!(link.contains("mtu 1472"), "{link}");
    eventually("pod a reaches pod b over udp", || pings(&a, b_ip));

    let received = tartan_testbed::iperf::tcp(&a, &b, &b_ip.to_string(), 2)
        .expect("iperf3")
        .bytes;
    assert!(received > 1e6, "iperf3 moved only {received} bytes");

    let text = f.metrics.render();
    let tx_packets = sample(&text, "tartan_agent_udp_packets_total{direction=\"tx\"}");
    let rx_packets = sample(&text, "tartan_agent_udp_packets_total{direction=\"rx\"}");
    assert!(tx_packets > 0.0 && rx_packets > 0.0, "{text}");
    let tx_bytes = sample(&text, "tartan_agent_udp_bytes_total{direction=\"tx\"}");
    assert!(
        tx_bytes >= received,
        "every byte iperf3 counted went through the datapath"
    );
    let features: Vec<(&str, f64)> = ["vnet_hdr", "tso", "udp_gso", "udp_gro"]
        .into_iter()
        .map(|f| {
            (
                f,
                sample(
                    &text,
                    &format!("tartan_agent_udp_offload{{feature=\"{f}\"}}"),
                ),
            )
        })
        .collect();
    eprintln!("udp offloads in use: {features:?}");
    if features.iter().all(|(_, on)| *on == 1.0) {
        // With TSO and GSO, one send moves many packets.
        let calls = sample(
            &text,
            "tartan_agent_udp_batch_packets_count{direction=\"tx\"}",
        );
        let moved = sample(
            &text,
            "tartan_agent_udp_batch_packets_sum{direction=\"tx\"}",
        );
        assert!(moved / calls > 4.0, "{moved} packets in {calls} sends");
    }
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn strangers_garbage_and_foreign_destinations_are_dropped_and_counted() {
    let f = udp_fixture("dr", 2);
    let target = (f.topo.nodes[0].ip, 8285);
    let send_from = |netns: &str, payload: &[u8]| {
        let socket = NetNs::named(netns)
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .expect("netns")
            .expect("bind");
        socket.send_to(payload, target).expect("send");
    };
    let drops = |reason: &str| {
        sample(
            &f.metrics.render(),
            &format!("tartan_agent_udp_drops_total{{reason=\"{reason}\"}}"),
        )
    };
    // A well-formed packet for node 1's subnet, from a host that is no peer.
    let mut packet = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend_from_slice(&[10, 244, 2, 9]);
    packet.extend_from_slice(&[10, 244, 1, 9]);
    packet.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    send_from(&f.topo.outside.netns, &packet);
    eventually("a stranger's datagram is counted", || {
        drops("unknown_peer") >= 1.0
    });
    // From the peer: garbage, and a packet for a subnet that is not node 1's.
    send_from(&f.topo.nodes[1].netns, b"\x45not an IP packet");
    eventually("garbage is counted", || drops("malformed") >= 1.0);
    let mut foreign = packet.clone();
    foreign[16..20].copy_from_slice(&[10, 244, 7, 1]);
    send_from(&f.topo.nodes[1].netns, &foreign);
    eventually("a foreign destination is counted", || {
        drops("not_local") >= 1.0
    });
    // Still serving: the peer's pods get through.
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("traffic still flows", || pings(&a, b_ip));
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn an_agent_restart_under_a_100_per_second_ping_loses_nothing() {
    let mut f = udp_fixture("uk", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("pods talk over udp", || pings(&a, b_ip));
    let link = exec(&f.topo.nodes[0].netns, &["ip", "link", "show", TUN]).expect("ip link");
    let link = String::from_utf8_lossy(&link.stdout).into_owned();
    assert!(link.contains("qlen 4096"), "room to wait in: {link}");
    // No agent on n1 for 300 ms: the keeper holds the TUN queue and the
    // socket, so requests and answers wait in the kernel instead of being
    // dropped, and the next agent takes the same queue and socket back.
    let (sent, lost) = ping_flow(&a, b_ip, || f.restart_plane(0, Duration::from_millis(300)));
    eprintln!("udp restart under a 100/s ping: {sent} sent, {lost} lost");
    assert!(sent >= 50, "the flow ran: {sent}");
    assert_eq!(lost, 0, "a restart loses nothing: {sent} sent, {lost} lost");
    let taken_back = (f.metrics.datapath_keeper)
        .with_label_values(&["taken_back"])
        .get();
    assert_eq!(taken_back, 1, "the restart counted as taken back");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn a_tun_deleted_while_no_agent_runs_is_made_afresh_not_taken_back() {
    let mut f = udp_fixture("ud", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("pods talk over udp", || pings(&a, b_ip));
    let node = f.topo.nodes[0].netns.clone();
    f.planes.remove(0).stop();
    // The keeper still holds queues of the device deleted now: detached ones.
    tartan_testbed::ip(&["-n", &node, "link", "del", TUN]).expect("delete tartan0");
    let plane = f.start_plane(0);
    plane
        .set(f.target(0, &f.peers(0, None)))
        .expect("apply after restart");
    f.planes.insert(0, plane);
    eventually("a new tartan0 carries traffic", || pings(&a, b_ip));
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn queues_kept_for_another_network_namespace_are_not_taken() {
    use std::os::unix::fs::MetadataExt;
    let mut f = udp_fixture("un", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("pods talk over udp", || pings(&a, b_ip));
    // One keeper shared by two nodes by mistake (one /run for both): n2's
    // keeper holds n1's queues and socket, under the same device name.
    let theirs = f.keepers[0].get(TUN).expect("get").expect("n1's queues");
    let fds: Vec<&std::os::fd::OwnedFd> = theirs.fds.iter().collect();
    f.keepers[1].put(TUN, &theirs.meta, &fds).expect("put");
    drop(theirs);
    f.restart_plane(1, Duration::ZERO);
    let n2 = std::fs::metadata(format!("/run/netns/{}", f.topo.nodes[1].netns))
        .expect("n2's netns")
        .ino();
    let kept = f.keepers[1].get(TUN).expect("get").expect("n2's queues");
    let queues = kept.fds.len() / 2;
    for fd in &kept.fds[..queues] {
        let netns = tartan_agent::udp::tun::device_netns(fd).expect("a TUN queue");
        assert_eq!(netns, n2, "n2 opened queues of its own");
    }
    eventually("pods talk after the restart", || pings(&a, b_ip));
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn a_deleted_tun_comes_back_with_its_routes() {
    let f = udp_fixture("ur", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("pods talk over udp", || pings(&a, b_ip));
    let node = &f.topo.nodes[0].netns;
    tartan_testbed::ip(&["-n", node, "link", "del", TUN]).expect("delete tartan0");
    eventually("tartan0 and its routes are back, traffic flows", || {
        let routes = exec(node, &["ip", "route", "show", "dev", TUN])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("10.244.2.0/24"))
            .unwrap_or(false);
        routes && pings(&a, b_ip)
    });
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn with_a_shared_key_only_tagged_datagrams_get_through() {
    use common::fixture::facts;
    use tartan_agent::plan::LocalFacts;
    use tartan_agent::udp::EngineOptions;
    use tartan_agent::udp::auth::DatagramKey;
    let mut f = udp_fixture("uk", 2);
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    let keyed = |f: &mut Fixture, i: usize, secret: &[u8]| {
        let options = EngineOptions {
            key: Some(DatagramKey::from_secret(secret).expect("key")),
            ..Default::default()
        };
        f.planes.remove(i).stop();
        let plane = f.start_plane_with(i, options);
        let facts = LocalFacts {
            udp_tag_len: tartan_agent::udp::auth::TAG_LEN as u32,
            ..facts(&f.topo, i)
        };
        plane
            .set(f.target_with(i, &f.peers(i, None), facts))
            .expect("apply");
        f.planes.insert(i, plane);
    };
    keyed(&mut f, 0, b"the cluster's shared udp secret");
    keyed(&mut f, 1, b"the cluster's shared udp secret");
    eventually("tagged traffic flows", || pings(&a, b_ip));
    let link = String::from_utf8_lossy(
        &exec(&f.topo.nodes[0].netns, &["ip", "link", "show", TUN])
            .expect("link")
            .stdout,
    )
    .to_string();
    assert!(link.contains("mtu 1456"), "the tag takes 16 bytes: {link}");
    keyed(&mut f, 1, b"a different secret, not the cluster's");
    assert!(!pings(&a, b_ip), "a node with another key is not accepted");
    let bad = sample(
        &f.metrics.render(),
        "tartan_agent_udp_drops_total{reason=\"bad_tag\"}",
    );
    assert!(bad >= 1.0, "dropped and counted: {bad}");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn without_offloads_the_datapath_falls_back_to_plain_packets() {
    use tartan_agent::udp::EngineOptions;
    // What a kernel without vnet headers, GSO and GRO gets: the same
    // datapath one packet at a time, on the TUN an offloading engine left
    // behind (its offloads must be switched off, or TCP stalls).
    let mut f = udp_fixture("uo", 2);
    let (a, _) = f.add_pod(0, "a");
    let (b, b_ip) = f.add_pod(1, "b");
    for i in 0..2 {
        f.planes.remove(i).stop();
        let plane = f.start_plane_with(
            i,
            EngineOptions {
                batched: false,
                ..Default::default()
            },
        );
        plane.set(f.target(i, &f.peers(i, None))).expect("apply");
        f.planes.insert(i, plane);
    }
    let text = f.metrics.render();
    for feature in ["vnet_hdr", "tso", "udp_gso", "udp_gro"] {
        let on = sample(
            &text,
            &format!("tartan_agent_udp_offload{{feature=\"{feature}\"}}"),
        );
        assert_eq!(on, 0.0, "{feature} reported off");
    }
    eventually("plain packets flow", || pings(&a, b_ip));
    let received = tartan_testbed::iperf::tcp(&a, &b, &b_ip.to_string(), 1)
        .expect("iperf3")
        .bytes;
    assert!(
        received > 1e6,
        "bulk TCP over plain packets: {received} bytes"
    );
}

/// An IPv4/UDP packet from `source` to `destination`:4000 carrying `body`,
/// with a valid header checksum (the kernel checks it once the TUN hands
/// the packet over) and no UDP checksum (allowed over IPv4).
fn inner_udp(source: [u8; 4], destination: [u8; 4], body: &[u8]) -> Vec<u8> {
    let total = (28 + body.len()) as u16;
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&source);
    packet.extend_from_slice(&destination);
    let sum = packet
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let checksum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    packet[10..12].copy_from_slice(&checksum.to_be_bytes());
    packet.extend_from_slice(&[0x30, 0x39, 0x0f, 0xa0]);
    packet.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(body);
    packet
}

/// A real peer (node 2's own address) sends node 1 two datagrams for pod a:
/// one whose inner source is node 2's pod b, one whose inner source is pod
/// c on node 3. Only the first reaches pod a; the second is counted as
/// `spoofed_source`, and b's real traffic keeps flowing.
#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and iperf3 (make test runs it)"]
fn a_peer_cannot_inject_packets_from_a_third_nodes_subnet() {
    let f = udp_fixture("sp", 3);
    let (a, a_ip) = f.add_pod(0, "a");
    let (b, b_ip) = f.add_pod(1, "b");
    let (_, c_ip) = f.add_pod(2, "c");
    eventually("b reaches a", || pings(&b, a_ip));
    let listener = NetNs::named(&a)
        .run(|| UdpSocket::bind((a_ip, 4000)))
        .expect("netns")
        .expect("bind in pod a");
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let peer = NetNs::named(&f.topo.nodes[1].netns)
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("bind on node 2");
    let target = (f.topo.nodes[0].ip, 8285);
    let spoofed = || {
        sample(
            &f.metrics.render(),
            "tartan_agent_udp_drops_total{reason=\"spoofed_source\"}",
        )
    };
    assert_eq!(spoofed(), 0.0);
    let forged = inner_udp(c_ip.octets(), a_ip.octets(), b"forged");
    peer.send_to(&forged, target).expect("send forged");
    eventually("the forged datagram is counted", || spoofed() >= 1.0);
    let genuine = inner_udp(b_ip.octets(), a_ip.octets(), b"genuine");
    peer.send_to(&genuine, target).expect("send genuine");
    let mut buffer = [0u8; 64];
    let (len, from) = listener
        .recv_from(&mut buffer)
        .expect("the genuine datagram");
    assert_eq!(&buffer[..len], b"genuine", "the forged one never arrived");
    assert_eq!(from.ip(), std::net::IpAddr::V4(b_ip));
    assert!(
        listener.recv_from(&mut buffer).is_err(),
        "nothing else came"
    );
    assert_eq!(spoofed(), 1.0);
    assert!(pings(&b, a_ip), "b's own traffic still flows");
}
