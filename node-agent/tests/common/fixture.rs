//! Nodes in network namespaces on one underlay switch, each with the agent's
//! real data plane (planner, applier, udp datapath), and pods attached
//! through the real CNI plugins with the conflist the agent wrote: the
//! fixture of the kernel tests. Needs root, iproute2, nft, ping and the CNI
//! plugins; the tests using it are `#[ignore]`d with that reason and
//! [`Fixture::new`] fails when one is missing.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tartan_crds::validate::ValidEndpoint;
use tartan_crds::{BackendType, OverlayNetworkSpec, ValidNetwork, ValidNodeSubnet};

use tartan_agent::bgp::BirdMode;
use tartan_agent::cni::CniConfig;
use tartan_agent::dataplane::{Dataplane, DataplaneConfig, Target};
use tartan_agent::keeper::{Keeper, Serving};
use tartan_agent::metrics::Metrics;
use tartan_agent::netns::NetNs;
use tartan_agent::plan::{self, LocalFacts, Peer, vtep_mac};
use tartan_agent::sysctl::Sysctls;
use tartan_agent::underlay::Underlay;
use tartan_agent::wireguard::keys::NodeKey;
use tartan_testbed::{Topology, cni, exec};

pub const TOOLS: &[&str] = &["ip", "nft", "ping", "nsenter"];

pub struct Fixture {
    pub topo: Topology,
    pub network: ValidNetwork,
    pub subnets: Vec<ValidNodeSubnet>,
    pub cni: Vec<CniConfig>,
    pub planes: Vec<Dataplane>,
    pub dir: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Each node's WireGuard key, as its agent would have made it.
    pub keys: Vec<NodeKey>,
    /// Each node's datapath keeper (served by a thread of the test), as the
    /// chart runs one beside each agent.
    pub keepers: Vec<Keeper>,
    serving: Vec<Serving>,
}

pub fn network(backend: BackendType, direct: bool) -> ValidNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    spec.backend.vxlan.direct_routing = direct;
    spec.validate().expect("valid network")
}

/// What an agent on node `i` finds out about it (a 1500-byte underlay).
pub fn facts(topo: &Topology, i: usize) -> LocalFacts {
    let node = &topo.nodes[i];
    let underlay = Underlay {
        name: node.iface.clone(),
        node_ip: node.ip,
        prefix: node.prefix,
        node_ipv6: None,
        mtu: 1500,
    };
    LocalFacts {
        node_labels: node.labels.clone(),
        ..underlay.facts(tartan_agent::host::kernel_version())
    }
}

impl Fixture {
    /// `nodes` nodes with their data planes started; fails the test when
    /// root or a tool in [`TOOLS`] is missing.
    pub fn new(tag: &str, nodes: usize, backend: BackendType, direct: bool) -> Self {
        tartan_testbed::require(TOOLS);
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
            keys: (0..nodes)
                .map(|_| NodeKey::generate().expect("WireGuard key"))
                .collect(),
            keepers: Vec::new(),
            serving: Vec::new(),
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
                source_check: None,
            };
            fixture.cni.push(cni);
            let socket = fixture.dir.join(format!("n{}/keeper.sock", i + 1));
            std::fs::create_dir_all(fixture.dir.join(format!("n{}", i + 1))).expect("node dir");
            fixture
                .serving
                .push(Serving::start(&socket).expect("the keeper listens"));
            fixture.keepers.push(Keeper::at(socket));
            let plane = fixture.start_plane(i);
            fixture.planes.push(plane);
        }
        fixture
    }

    /// Node `i`'s data plane, as its agent starts it.
    pub fn start_plane(&self, i: usize) -> Dataplane {
        self.start_plane_with(i, Default::default())
    }

    /// Node `i`'s data plane with these udp datapath options.
    pub fn start_plane_with(&self, i: usize, udp: tartan_agent::udp::EngineOptions) -> Dataplane {
        let config = DataplaneConfig {
            netns: NetNs::named(&self.topo.nodes[i].netns),
            cni: Some(self.cni[i].clone()),
            sysctls: Sysctls::default(),
            resync: Duration::from_secs(300),
            udp,
            bird: self.bird(i),
            wireguard_key: Some(self.keys[i].clone()),
            keeper: Some(self.keepers[i].clone()),
        };
        Dataplane::start(config, self.metrics.clone()).expect("data plane starts")
    }

    /// Node `i`'s keeper replaced (its pod upgraded): the old one exits,
    /// closing what it held, and a new one, holding nothing, listens on a
    /// new socket at the same path.
    pub fn replace_keeper(&mut self, i: usize) {
        // A keeper outlives a change-time tick of its socket file (see
        // Keeper::socket_identity).
        std::thread::sleep(Duration::from_millis(20));
        self.serving
            .remove(i)
            .stop()
            .expect("the old keeper served");
        let new = Serving::start(self.keepers[i].path()).expect("the new keeper listens");
        self.serving.insert(i, new);
    }

    /// An agent restart on node `i`: its data plane stops, none runs for
    /// `down`, then a new one starts and applies the same target.
    pub fn restart_plane(&mut self, i: usize, down: Duration) {
        self.planes.remove(i).stop();
        std::thread::sleep(down);
        let plane = self.start_plane(i);
        plane
            .set(self.target(i, &self.peers(i, None)))
            .expect("apply after restart");
        self.planes.insert(i, plane);
    }

    /// Peers of node `i` as their agents would publish them (all on `backend`).
    pub fn peers(&self, i: usize, only: Option<&[usize]>) -> Vec<Peer> {
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
                        wireguard_key: Some(self.keys[j].public()),
                    }),
                    backend: Some(backend),
                    receive: BTreeSet::from([backend]),
                }
            })
            .collect()
    }

    pub fn target(&self, i: usize, peers: &[Peer]) -> Target {
        let facts = LocalFacts {
            wireguard_public_key: Some(self.keys[i].public()),
            ..facts(&self.topo, i)
        };
        self.target_with(i, peers, facts)
    }

    pub fn target_with(&self, i: usize, peers: &[Peer], facts: LocalFacts) -> Target {
        Target {
            state: plan::plan(&self.network, &self.subnets[i], peers, &facts),
            subnet: self.subnets[i].clone(),
        }
    }

    /// Node `i`'s managed BIRD.
    pub fn bird(&self, i: usize) -> BirdMode {
        BirdMode::Managed {
            dir: self.dir.join(format!("n{}/bird", i + 1)),
        }
    }

    /// Node `i`'s facts with BGP as its BIRD and kernel report it now.
    pub fn observed_facts(&self, i: usize) -> LocalFacts {
        LocalFacts {
            bgp: tartan_agent::bgp::observe(
                &NetNs::named(&self.topo.nodes[i].netns),
                &self.bird(i).socket(),
            ),
            ..facts(&self.topo, i)
        }
    }

    pub fn program_all(&self) {
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
    pub fn add_pod(&self, i: usize, pod: &str) -> (String, Ipv4Addr) {
        let netns = format!("{}-{}-{pod}", self.topo.prefix, self.subnets[i].node_name);
        tartan_testbed::add_netns(&netns).expect("pod netns");
        let text =
            std::fs::read_to_string(self.cni[i].path()).expect("the agent wrote the conflist");
        let conflist: serde_json::Value = serde_json::from_str(&text).expect("conflist JSON");
        let plugins = cni::plugin_dir().expect("CNI plugins installed");
        let pod_path = tartan_testbed::netns_path(&netns);
        let result = cni::add(&cni::Invocation {
            conflist: &conflist,
            node: &self.topo.nodes[i].netns,
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
        for serving in self.serving.drain(..) {
            let _ = serving.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A udp fixture of `nodes` nodes, all programmed.
pub fn udp_fixture(tag: &str, nodes: usize) -> Fixture {
    tartan_testbed::require(&["iperf3"]);
    let f = Fixture::new(tag, nodes, BackendType::Udp, false);
    f.program_all();
    f
}

pub fn pings(from_netns: &str, to: Ipv4Addr) -> bool {
    exec(from_netns, &["ping", "-c", "1", "-W", "1", &to.to_string()]).is_ok()
}

/// The source address `outside` sees for a UDP datagram sent from `pod_netns`.
pub fn source_seen_outside(fixture: &Fixture, pod_netns: &str) -> IpAddr {
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
