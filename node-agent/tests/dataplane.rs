//! The data plane on the real kernel: three nodes in network namespaces on one
//! underlay switch, pods attached through the real CNI plugins with the
//! conflist the agent wrote, and the agent's planner and applier on each node.
//! Needs root, iproute2, nft, ping and the CNI plugins; skips with a reason
//! outside CI, fails under CI=true.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tartan_agent::cni::CniConfig;
use tartan_agent::dataplane::{Dataplane, DataplaneConfig, Target, cleanup};
use tartan_agent::metrics::Metrics;
use tartan_agent::netns::NetNs;
use tartan_agent::plan::{self, LocalFacts, Peer, vtep_mac};
use tartan_agent::sysctl::Sysctls;
use tartan_agent::testbed::{self, Topology, cni, exec, ip};
use tartan_crds::validate::ValidEndpoint;
use tartan_crds::{BackendType, OverlayNetworkSpec, ValidNetwork, ValidNodeSubnet};

const TOOLS: &[&str] = &["ip", "nft", "ping", "nsenter"];

struct Fixture {
    topo: Topology,
    network: ValidNetwork,
    subnets: Vec<ValidNodeSubnet>,
    cni: Vec<CniConfig>,
    planes: Vec<Dataplane>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

fn network(backend: BackendType, direct: bool) -> ValidNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    spec.backend.vxlan.direct_routing = direct;
    spec.validate().expect("valid network")
}

fn facts(topo: &Topology, i: usize) -> LocalFacts {
    let node = &topo.nodes[i];
    LocalFacts {
        underlay: node.iface.clone(),
        node_ip: node.ip,
        underlay_prefix: node.prefix,
        node_ipv6: None,
        underlay_mtu: 1500,
        kernel: (6, 1),
    }
}

impl Fixture {
    fn new(tag: &str, nodes: usize, backend: BackendType, direct: bool) -> Option<Self> {
        if !testbed::kernel_tests_allowed(TOOLS) {
            return None;
        }
        let prefix = format!("tt{}{tag}", std::process::id() % 10_000);
        let topo = Topology::l2(&prefix, nodes).expect("topology");
        let dir = std::env::temp_dir().join(&prefix);
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let mut fixture = Fixture {
            topo,
            network: network(backend, direct),
            subnets: Vec::new(),
            cni: Vec::new(),
            planes: Vec::new(),
            dir,
            metrics,
        };
        for i in 0..nodes {
            fixture.subnets.push(ValidNodeSubnet {
                node_name: format!("n{}", i + 1),
                network: "default".into(),
                cidr: format!("10.244.{}.0/24", i + 1).parse().expect("cidr"),
                ipv6_cidr: fixture
                    .network
                    .ipv6
                    .map(|_| format!("fd00:10:244:{}::/64", i + 1).parse().expect("cidr")),
            });
            let cni = CniConfig {
                dir: fixture.dir.join(format!("n{}/net.d", i + 1)),
                ipam_data_dir: Some(fixture.dir.join(format!("n{}/ipam", i + 1))),
            };
            let config = DataplaneConfig {
                netns: fixture.topo.nodes[i].ns(),
                cni: Some(cni.clone()),
                sysctls: Sysctls::default(),
                resync: Duration::from_secs(300),
            };
            fixture
                .planes
                .push(Dataplane::start(config, fixture.metrics.clone()).expect("dataplane"));
            fixture.cni.push(cni);
        }
        Some(fixture)
    }

    /// Peers of node `i` as their agents would publish them (all on `backend`).
    fn peers(&self, i: usize, only: Option<&[usize]>) -> Vec<Peer> {
        let backend = self.network.backend.type_;
        (0..self.subnets.len())
            .filter(|j| *j != i && only.is_none_or(|o| o.contains(j)))
            .map(|j| {
                let ip = self.topo.nodes[j].ip;
                Peer {
                    name: self.subnets[j].node_name.clone(),
                    subnet: self.subnets[j].clone(),
                    endpoint: Ok(ValidEndpoint {
                        node_ip: Some(ip),
                        node_ipv6: None,
                        vtep_mac: Some(vtep_mac(ip)),
                    }),
                    backend: Some(backend),
                    receive: BTreeSet::from([backend]),
                }
            })
            .collect()
    }

    fn target(&self, i: usize, peers: &[Peer]) -> Target {
        Target {
            state: plan::plan(
                &self.network,
                &self.subnets[i],
                peers,
                &facts(&self.topo, i),
            ),
            subnet: self.subnets[i].clone(),
        }
    }

    fn program_all(&self) {
        for i in 0..self.subnets.len() {
            let target = self.target(i, &self.peers(i, None));
            assert!(
                target.state.peer_problems.is_empty(),
                "{:?}",
                target.state.peer_problems
            );
            self.planes[i].set(target).expect("apply");
        }
    }

    /// A pod on node `i` through the real CNI plugins and the conflist the agent wrote.
    fn add_pod(&self, i: usize, pod: &str) -> (String, Ipv4Addr) {
        let netns = format!("{}-{}-{pod}", self.topo.prefix, self.subnets[i].node_name);
        testbed::add_netns(&netns).expect("pod netns");
        let text =
            std::fs::read_to_string(self.cni[i].path()).expect("the agent wrote the conflist");
        let conflist: serde_json::Value = serde_json::from_str(&text).expect("conflist JSON");
        let plugins = cni::plugin_dir().expect("CNI plugins installed");
        let pod_path = PathBuf::from("/var/run/netns").join(&netns);
        let node_ns = self.topo.nodes[i].ns();
        let result = cni::add(&cni::Invocation {
            conflist: &conflist,
            node: &node_ns,
            pod_netns: &pod_path,
            container_id: &netns,
            ifname: "eth0",
            plugin_dir: &plugins,
        })
        .expect("CNI ADD");
        let ip = cni::addresses(&result).into_iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        });
        let ip = ip.expect("pod got an IPv4 address");
        assert!(
            self.subnets[i].cidr.contains(&ip),
            "{ip} is in node {i}'s subnet"
        );
        (netns, ip)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for plane in self.planes.drain(..) {
            plane.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pings(from_netns: &str, to: Ipv4Addr) -> bool {
    exec(from_netns, &["ping", "-c", "1", "-W", "1", &to.to_string()]).is_ok()
}

/// The source address `outside` sees for a UDP datagram sent from `pod_netns`.
fn source_seen_outside(fixture: &Fixture, pod_netns: &str) -> IpAddr {
    let outside = NetNs::named(&fixture.topo.outside.netns);
    let listener = outside
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .unwrap_or_else(|e| panic!("bind in {}: {e}", fixture.topo.outside.netns));
    let port = listener.local_addr().expect("bound").port();
    listener
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let pod = NetNs::named(pod_netns);
    let sender = pod
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .expect("netns")
        .expect("bind");
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        sender
            .send_to(b"hello", (fixture.topo.outside.ip, port))
            .expect("send");
        if let Ok((_, from)) = listener.recv_from(&mut buf) {
            return from.ip();
        }
    }
    panic!("outside host received nothing from {pod_netns}");
}

fn full_matrix(backend: BackendType, direct: bool, tag: &str) {
    let Some(f) = Fixture::new(tag, 3, backend, direct) else {
        return;
    };
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
fn vxlan_every_pod_reaches_every_pod_and_the_outside() {
    full_matrix(BackendType::Vxlan, false, "vx");
}

#[test]
fn host_gw_every_pod_reaches_every_pod_and_the_outside() {
    full_matrix(BackendType::HostGw, false, "hg");
}

#[test]
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
fn second_apply_changes_nothing_and_removing_a_peer_removes_exactly_its_objects() {
    let Some(f) = Fixture::new("rm", 3, BackendType::Vxlan, false) else {
        return;
    };
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
fn objects_removed_by_hand_come_back_within_a_second() {
    let Some(f) = Fixture::new("df", 3, BackendType::Vxlan, false) else {
        return;
    };
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
fn cleanup_leaves_no_tartan_object_behind() {
    let Some(mut f) = Fixture::new("cl", 2, BackendType::Vxlan, false) else {
        return;
    };
    f.program_all();
    // --cleanup runs with the agent stopped; a running one would repair what it removes.
    f.planes.remove(0).stop();
    let n1 = f.topo.nodes[0].clone();
    assert!(f.cni[0].path().exists());
    let report = cleanup(&n1.ns(), Some(&f.cni[0])).expect("cleanup");
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

#[test]
fn a_restarted_agent_changes_nothing_on_a_programmed_node() {
    let Some(mut f) = Fixture::new("rs", 2, BackendType::Vxlan, false) else {
        return;
    };
    f.program_all();
    let (a, _) = f.add_pod(0, "a");
    let (_, b_ip) = f.add_pod(1, "b");
    // The agent stops (upgrade): the kernel keeps working.
    f.planes.remove(0).stop();
    assert!(
        pings(&a, b_ip),
        "pods keep their network while the agent is down"
    );
    let config = DataplaneConfig {
        netns: f.topo.nodes[0].ns(),
        cni: Some(f.cni[0].clone()),
        sysctls: Sysctls::default(),
        resync: Duration::from_secs(300),
    };
    let restarted = Dataplane::start(config, f.metrics.clone()).expect("restart");
    let report = restarted
        .set(f.target(0, &f.peers(0, None)))
        .expect("apply after restart");
    assert_eq!(
        report.total(),
        0,
        "a restart against a programmed node changes nothing: {report:?}"
    );
    assert!(pings(&a, b_ip));
    f.planes.insert(0, restarted);
}

#[test]
fn dual_stack_pods_reach_each_other_over_ipv6() {
    let Some(mut f) = Fixture::new("v6", 2, BackendType::Vxlan, false) else {
        return;
    };
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
