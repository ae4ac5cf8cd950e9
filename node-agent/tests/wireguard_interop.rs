//! A Tartan node exchanging pod traffic with a stock WireGuard peer on the
//! real kernel: wireguard-go on node 2, configured with `wg set` from the
//! Tartan node's published public key, as a person would. Needs root,
//! iproute2, nft, ping, wg, wireguard-go (built by `make wireguard-go`) and
//! the CNI plugins.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::fixture::{Fixture, pings};
use common::{eventually, stdout};
use tartan_agent::wireguard::keys::NodeKey;
use tartan_crds::BackendType;
use tartan_crds::validate::{format_wireguard_key, parse_wireguard_key};
use tartan_testbed::exec;

fn wireguard_go() -> PathBuf {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wireguard-go/wireguard-go");
    assert!(
        path.exists(),
        "{} is missing: run `make wireguard-go`",
        path.display()
    );
    path
}

/// wireguard-go on `device` in `netns`, in the foreground, stopped on drop.
struct StockPeer {
    child: Child,
}

impl StockPeer {
    fn start(netns: &str, device: &str) -> StockPeer {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(wireguard_go())
            .args(["-f", device])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go runs");
        let socket = PathBuf::from(format!("/var/run/wireguard/{device}.sock"));
        eventually("wireguard-go opens its control socket", || socket.exists());
        StockPeer { child }
    }
}

impl Drop for StockPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Configures the stock peer on node 2 as a person would with `wg set`:
/// a fresh key, node 1 (Tartan) as its peer by node 1's published public key,
/// node 2's pod subnet on its device; returns its key.
fn configure_stock_peer(f: &Fixture, device: &str) -> NodeKey {
    let n2 = &f.topo.nodes[1];
    let stock_key = NodeKey::generate().expect("key");
    let key_file = f.dir.join("stock.key");
    std::fs::create_dir_all(&f.dir).expect("dir");
    std::fs::write(
        &key_file,
        format_wireguard_key(&stock_key.secret().to_bytes()),
    )
    .expect("key file");
    let tartan_public = format_wireguard_key(&f.keys[0].public());
    let endpoint = format!("{}:51820", f.topo.nodes[0].ip);
    let key_path = key_file.to_string_lossy().into_owned();
    let wg_set = [
        "wg",
        "set",
        device,
        "private-key",
        &key_path,
        "listen-port",
        "51820",
        "peer",
        &tartan_public,
        "endpoint",
        &endpoint,
        "allowed-ips",
        "10.244.1.0/24",
    ];
    exec(&n2.netns, &wg_set).expect("wg set");
    for args in [
        vec!["ip", "addr", "add", "10.244.2.1/24", "dev", device],
        vec!["ip", "link", "set", device, "up"],
        vec!["ip", "route", "add", "10.244.1.0/24", "dev", device],
    ] {
        exec(&n2.netns, &args).expect("stock peer's addresses and routes");
    }
    stock_key
}

#[test]
#[ignore = "kernel test: needs root, network namespaces, a TUN device, wg, wireguard-go and the CNI plugins (make test runs it)"]
fn a_stock_wireguard_peer_exchanges_pod_traffic_both_ways() {
    tartan_testbed::require(&["wg"]);
    let mut f = Fixture::new("wi", 2, BackendType::Wireguard, false);
    // Node 2 runs no Tartan: wireguard-go, configured by hand with `wg`.
    f.planes.remove(1).stop();
    let n2 = f.topo.nodes[1].clone();
    let device = format!("wg{}", std::process::id() % 100_000);
    let _stock = StockPeer::start(&n2.netns, &device);
    let stock_key = configure_stock_peer(&f, &device);
    // Node 1's agent sees node 2's NodeSubnet with the stock peer's public key.
    let mut peers = f.peers(0, None);
    let published = format_wireguard_key(&stock_key.public());
    if let Ok(endpoint) = peers[0].endpoint.as_mut() {
        endpoint.wireguard_key = parse_wireguard_key(&published);
    }
    let target = f.target(0, &peers);
    assert!(
        target.state.peer_problems.is_empty(),
        "{:?}",
        target.state.peer_problems
    );
    f.planes[0].set(target).expect("apply");
    let (a, a_ip) = f.add_pod(0, "a");
    assert!(
        pings(&a, "10.244.2.1".parse().expect("ip")),
        "Tartan pod → stock peer"
    );
    let back = exec(
        &n2.netns,
        &[
            "ping",
            "-c",
            "3",
            "-W",
            "1",
            "-I",
            "10.244.2.1",
            &a_ip.to_string(),
        ],
    );
    assert!(back.is_ok(), "stock peer → Tartan pod: {back:?}");
    let handshakes = stdout(&n2.netns, &["wg", "show", &device, "latest-handshakes"]);
    let when: u64 = handshakes
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(
        when > 0,
        "wg reports a handshake with the Tartan node: {handshakes}"
    );
    let transfer = stdout(&n2.netns, &["wg", "show", &device, "transfer"]);
    assert!(
        !transfer.contains("\t0\t") && !transfer.ends_with("\t0\n"),
        "bytes both ways: {transfer}"
    );
}
