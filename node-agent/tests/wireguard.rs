//! The wireguard backend on the real kernel: pods on two Tartan nodes talking
//! through TUN `tartan-wg` with nothing in clear text on the underlay, on
//! both families, through a restart, in bulk, and against hostile input
//! (the stock peer is in `wireguard_interop.rs`). Needs root, iproute2, nft,
//! ping, tcpdump and the CNI plugins.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::fixture::{Fixture, pings};
use common::{eventually, ping_flow, sample, stdout};
use tartan_agent::plan::WIREGUARD_TUN;
use tartan_crds::BackendType;
use tartan_testbed::exec;

/// A capture of everything on `iface` in `netns` until the guard is dropped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(netns: &str, iface: &str, file: PathBuf) -> Capture {
        let child = Command::new("ip")
            .args([
                "netns", "exec", netns, "tcpdump", "-i", iface, "-U", "-s", "0", "-w",
            ])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump runs");
        // tcpdump opens the file once it listens.
        eventually("tcpdump listens", || file.exists());
        std::thread::sleep(Duration::from_millis(300));
        Capture { child, file }
    }

    /// Stops the capture and returns its bytes and how many packets matched `filter`.
    fn finish(mut self, filter: &str) -> (Vec<u8>, usize) {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).expect("capture file");
        let listed = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .args(filter.split(' '))
            .output()
            .expect("tcpdump -r");
        let count = String::from_utf8_lossy(&listed.stdout).lines().count();
        (bytes, count)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device, tcpdump and the CNI plugins (make test runs it)"]
fn pods_talk_over_wireguard_and_the_underlay_carries_no_clear_text() {
    tartan_testbed::require(&["tcpdump"]);
    let f = Fixture::new("wg", 2, BackendType::Wireguard, false);
    f.program_all();
    let (a, a_ip) = f.add_pod(0, "a");
    let (b, b_ip) = f.add_pod(1, "b");
    let routes = stdout(
        &f.topo.nodes[0].netns,
        &["ip", "route", "show", "dev", WIREGUARD_TUN],
    );
    assert!(
        routes.contains("10.244.0.0/16") && routes.contains("10.244.2.0/24"),
        "{routes}"
    );
    let n1 = &f.topo.nodes[0];
    let capture = Capture::start(&n1.netns, &n1.iface, f.dir.join("underlay.pcap"));
    // "tartan-secret!" as the ping pattern, in every echo both ways.
    let pattern = "74617274616e2d73656372657421";
    for (from, to) in [(&a, b_ip), (&b, a_ip)] {
        let out = exec(
            from,
            &[
                "ping",
                "-c",
                "5",
                "-i",
                "0.2",
                "-W",
                "1",
                "-p",
                pattern,
                &to.to_string(),
            ],
        );
        assert!(out.is_ok(), "pods reach each other over wireguard: {out:?}");
    }
    let (bytes, wireguard) = capture.finish("udp port 51820");
    assert!(
        wireguard >= 10,
        "the echoes crossed as WireGuard datagrams: {wireguard}"
    );
    assert!(
        !contains(&bytes, b"tartan-secret!"),
        "a payload crossed in clear text"
    );
    let mut inner = a_ip.octets().to_vec();
    inner.extend_from_slice(&b_ip.octets());
    assert!(
        !contains(&bytes, &inner),
        "an inner IP header crossed in clear text"
    );
    let metrics = f.metrics.render();
    assert!(
        sample(
            &metrics,
            "tartan_agent_wireguard_handshakes_total{role=\"initiator\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "tartan_agent_wireguard_packets_total{direction=\"rx\"}"
        ) >= 20.0,
        "{metrics}"
    );
    eventually("both peers count a fresh handshake", || {
        sample(
            &f.metrics.render(),
            "tartan_agent_wireguard_peers{handshake_age=\"under_2m\"}",
        ) >= 1.0
    });
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and the CNI plugins (make test runs it)"]
fn dual_stack_pods_talk_over_wireguard_on_both_families() {
    let mut f = Fixture::new("w6", 2, BackendType::Wireguard, false);
    let mut spec = tartan_crds::OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.ipv6_cidr = Some("fd00:10:244::/56".into());
    spec.backend.type_ = BackendType::Wireguard;
    f.network = spec.validate().expect("valid");
    for (i, subnet) in f.subnets.iter_mut().enumerate() {
        subnet.ipv6_cidr = Some(format!("fd00:10:244:{}::/64", i + 1).parse().expect("cidr"));
    }
    f.program_all();
    let (a, _) = f.add_pod(0, "a");
    let (b, b_ip) = f.add_pod(1, "b");
    assert!(pings(&a, b_ip), "IPv4 over wireguard");
    let addr = stdout(
        &b,
        &[
            "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ],
    );
    let b_v6 = addr
        .split_whitespace()
        .nth(3)
        .and_then(|a| a.split('/').next())
        .expect("pod b has a global IPv6 address")
        .to_string();
    // Duplicate address detection takes a moment on fresh interfaces.
    eventually("pod a reaches pod b over IPv6 through tartan-wg", || {
        exec(&a, &["ping", "-6", "-c", "1", "-W", "1", &b_v6]).is_ok()
    });
    let routes = stdout(
        &f.topo.nodes[0].netns,
        &["ip", "-6", "route", "show", "dev", WIREGUARD_TUN],
    );
    assert!(routes.contains("fd00:10:244:2::/64"), "{routes}");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and the CNI plugins (make test runs it)"]
fn an_agent_restart_under_a_100_per_second_ping_loses_nothing() {
    let mut f = Fixture::new("wr", 2, BackendType::Wireguard, false);
    f.program_all();
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    assert!(pings(&a, b_ip));
    // n1's agent goes, none runs for 300 ms, and a new one (no sessions)
    // starts: the old one drained the answers to what it sent, the keeper
    // held the TUN queue with what the pod sent meanwhile, and the new one
    // renegotiates before it sends that on.
    let (sent, lost) = ping_flow(&a, b_ip, || f.restart_plane(0, Duration::from_millis(300)));
    eprintln!("restart under a 100/s ping: {sent} sent, {lost} lost");
    assert!(sent >= 50, "the flow ran: {sent}");
    assert_eq!(lost, 0, "a restart loses nothing: {sent} sent, {lost} lost");
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device, iperf3 and the CNI plugins (make test runs it)"]
fn bulk_tcp_crosses_encrypted_in_offloaded_trains_without_a_decrypt_failure() {
    tartan_testbed::require(&["iperf3"]);
    let f = Fixture::new("wb", 2, BackendType::Wireguard, false);
    f.program_all();
    let (a, _) = f.add_pod(0, "a");
    let (b, b_ip) = f.add_pod(1, "b");
    let link = stdout(
        &f.topo.nodes[0].netns,
        &["ip", "link", "show", WIREGUARD_TUN],
    );
    assert!(link.contains("mtu 1440"), "underlay 1500 less 60: {link}");
    eventually("pod a reaches pod b over wireguard", || pings(&a, b_ip));
    let received = tartan_testbed::iperf::tcp(&a, &b, &b_ip.to_string(), 2)
        .expect("iperf3")
        .bytes;
    assert!(received > 1e6, "iperf3 moved only {received} bytes");
    let text = f.metrics.render();
    let tx_bytes = sample(
        &text,
        "tartan_agent_wireguard_bytes_total{direction=\"tx\"}",
    );
    assert!(
        tx_bytes >= received,
        "every byte iperf3 counted was encrypted: {tx_bytes} < {received}"
    );
    for offload in ["vnet_hdr", "tso", "udp_gso", "udp_gro"] {
        let series = format!("tartan_agent_wireguard_offload{{feature=\"{offload}\"}}");
        assert_eq!(sample(&text, &series), 1.0, "{offload} in use:\n{text}");
    }
    // Reordering across queues and GRO trains stays inside the replay window,
    // and no datagram of a live session fails to decrypt.
    for reason in [
        "bad_tag",
        "replay",
        "invalid_packet",
        "malformed",
        "spoofed_source",
        "send_error",
        "no_peer",
        "queue_full",
    ] {
        let series = format!("tartan_agent_wireguard_drops_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &series), 0.0, "{reason}:\n{text}");
    }
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device and the CNI plugins (make test runs it)"]
fn strangers_and_forgeries_on_the_wire_are_dropped_and_counted() {
    let f = Fixture::new("wh", 2, BackendType::Wireguard, false);
    f.program_all();
    let target = (f.topo.nodes[0].ip, 51820);
    let send_from = |netns: &str, payload: &[u8]| {
        let socket = tartan_agent::netns::NetNs::named(netns)
            .run(|| std::net::UdpSocket::bind("0.0.0.0:0"))
            .expect("netns")
            .expect("bind");
        socket.send_to(payload, target).expect("send");
    };
    let drops = |reason: &str| {
        let series = format!("tartan_agent_wireguard_drops_total{{reason=\"{reason}\"}}");
        sample(&f.metrics.render(), &series)
    };
    // A data message from a host that is no peer: refused before any crypto.
    let mut data = vec![4u8, 0, 0, 0];
    data.extend_from_slice(&[0u8; 60]);
    send_from(&f.topo.outside.netns, &data);
    eventually("a stranger's datagram is counted", || {
        drops("unknown_peer") >= 1.0
    });
    // From the peer's address: a handshake initiation whose MAC is forged,
    // a data message for a session that does not exist, and garbage.
    let mut init = vec![1u8, 0, 0, 0];
    init.extend_from_slice(&[7u8; 144]);
    send_from(&f.topo.nodes[1].netns, &init);
    eventually("a forged handshake is counted", || {
        drops("invalid_mac") >= 1.0
    });
    data[4..8].copy_from_slice(&0x00ab_cdefu32.to_le_bytes());
    send_from(&f.topo.nodes[1].netns, &data);
    eventually("an unknown session is counted", || {
        drops("no_session") >= 1.0
    });
    send_from(&f.topo.nodes[1].netns, b"\x09not wireguard");
    eventually("garbage is counted", || drops("invalid_packet") >= 1.0);
    // Still serving: the peer's pods get through.
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    eventually("traffic still flows", || pings(&a, b_ip));
}
