//! The planner: a pure function from (this node's NodeSubnet, the peers'
//! NodeSubnets, the OverlayNetwork, local facts) to the desired kernel state.
//!
//! ```text
//!   per peer P (sending backend chosen make-before-break):
//!     vxlan    route S_P via S_P.net dev tartan.<vni> onlink
//!              neigh S_P.net lladdr MAC_P dev tartan.<vni> permanent
//!              fdb   MAC_P dev tartan.<vni> dst IP_P
//!     host-gw  route S_P via IP_P dev <underlay>         (only if IP_P is on-link)
//!     vxlan + directRouting: host-gw for on-link peers, vxlan for the rest
//!     bgp      nothing from Tartan: BIRD announces S_N and installs S_P (proto bird,
//!              metric 4096, below every Tartan route), used once it is there
//!     udp      route S_P dev tartan0    (+ route C dev tartan0 while the TUN exists;
//!              the datapath sends S_P's packets to IP_P:<port>)
//! ```
//!
//! A node sends to a peer over the target backend only once the peer lists it
//! in `receiveBackends`; until then it uses a backend the peer still receives.
//! It keeps receiving on every backend some peer still sends with.

mod bgp;
pub mod inputs;
pub mod model;
mod udp;

#[cfg(test)]
mod backend_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};
use tartan_crds::validate::ValidEndpoint;
use tartan_crds::{BackendType, ValidNetwork, ValidNodeSubnet};

pub use model::*;

/// VXLAN overhead over an IPv4 underlay: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN overhead over an IPv6 underlay.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// udp backend overhead: outer IPv4 20 + UDP 8.
pub const UDP_OVERHEAD_V4: u32 = 28;

/// What the agent knows about its own node that is not in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFacts {
    pub underlay: String,
    pub node_ip: Ipv4Addr,
    /// Prefix length of the underlay's IPv4 network: peers inside it are on-link.
    pub underlay_prefix: u8,
    pub node_ipv6: Option<(Ipv6Addr, u8)>,
    pub underlay_mtu: u32,
    /// (major, minor) of the running kernel.
    pub kernel: (u32, u32),
    /// This node's labels (which external BGP peers apply).
    pub node_labels: BTreeMap<String, String>,
    /// What BIRD and the kernel say about BGP.
    pub bgp: BgpObserved,
    /// Bytes of authentication tag on every udp datagram (0: not authenticated).
    /// An input, like the underlay MTU: the planner does not know the datapath.
    pub udp_tag_len: u32,
}

impl Default for LocalFacts {
    fn default() -> Self {
        Self {
            underlay: String::new(),
            node_ip: Ipv4Addr::UNSPECIFIED,
            underlay_prefix: 32,
            node_ipv6: None,
            underlay_mtu: 1500,
            kernel: (0, 0),
            node_labels: BTreeMap::new(),
            bgp: BgpObserved::default(),
            udp_tag_len: 0,
        }
    }
}

impl LocalFacts {
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        Ipv4Net::new(self.node_ip, self.underlay_prefix)
            .is_ok_and(|net| net.contains(&ip) && ip != self.node_ip)
    }
}

/// A peer as the planner needs it: its subnets and what its agent published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub subnet: ValidNodeSubnet,
    /// Parsed status addresses, or why they do not parse.
    pub endpoint: Result<ValidEndpoint, String>,
    /// What the peer sends with.
    pub backend: Option<BackendType>,
    /// What the peer can receive on.
    pub receive: BTreeSet<BackendType>,
}

/// Backends this agent can program today.
pub const SUPPORTED: [BackendType; 4] = [
    BackendType::Vxlan,
    BackendType::HostGw,
    BackendType::Udp,
    BackendType::Bgp,
];

/// The VTEP MAC of a node: locally administered, derived from the node IP so
/// it survives reboots and systemd's MACAddressPolicy and peers never go stale.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_ip.octets();
    [0x0e, 0x2a, a, b, c, d]
}

/// The gateway (first host) address of a node subnet, with its prefix.
pub fn gateway(subnet: IpNet) -> IpNet {
    let first = match subnet.network() {
        IpAddr::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n) + 1)),
        IpAddr::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n) + 1)),
    };
    IpNet::new(first, subnet.prefix_len()).unwrap_or(subnet)
}

/// The network address of a subnet as a host route (/32 or /128).
pub fn host_net(subnet: IpNet) -> IpNet {
    IpNet::from(subnet.network())
}

pub fn plan(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
    peers: &[Peer],
    facts: &LocalFacts,
) -> DesiredState {
    let target = network.backend.type_;
    let mut local_problems = Vec::new();
    // BIRD is configured for IPv4 only: a dual-stack node keeps its old
    // backend rather than lose its pods' IPv6 traffic.
    let dual_stack_bgp = target == BackendType::Bgp && local.ipv6_cidr.is_some();
    let available = |b: &BackendType| {
        SUPPORTED.contains(b) && !(*b == BackendType::Bgp && local.ipv6_cidr.is_some())
    };
    if !available(&target) {
        local_problems.push(LocalProblem::BackendUnavailable {
            backend: target,
            why: if dual_stack_bgp {
                "the bgp backend carries IPv4 pod subnets only and this cluster is dual-stack"
            } else {
                "it is not available in this agent"
            },
        });
    }
    let vxlan_name = vxlan_name(network.backend.vxlan.vni);
    let mac = vtep_mac(facts.node_ip);
    let direct = network.backend.vxlan.direct_routing;

    // Receive on the target and on whatever a peer still sends with.
    let mut receive: BTreeSet<BackendType> = BTreeSet::new();
    if available(&target) {
        receive.insert(target);
    }
    receive.extend(peers.iter().filter_map(|p| p.backend).filter(available));
    if receive.is_empty() {
        // Never leave the node unreachable: vxlan is always possible.
        receive.insert(BackendType::Vxlan);
    }

    let mut routes = BTreeSet::new();
    let mut neighbours = BTreeSet::new();
    let mut fdb = BTreeSet::new();
    let mut peer_backends = BTreeMap::new();
    let mut peer_problems = BTreeSet::new();
    let mut udp_peers = BTreeMap::new();
    let mut senders = BTreeSet::new();
    let mut mesh: Vec<(String, Ipv4Addr)> = Vec::new();
    for peer in peers {
        let endpoint = match &peer.endpoint {
            Ok(e) => *e,
            Err(message) => {
                peer_problems.insert(PeerProblem::Invalid {
                    peer: peer.name.clone(),
                    message: message.clone(),
                });
                continue;
            }
        };
        let Some(node_ip) = endpoint.node_ip else {
            peer_problems.insert(PeerProblem::Pending {
                peer: peer.name.clone(),
                missing: "nodeIP",
            });
            continue;
        };
        senders.insert(node_ip);
        let on_link = facts.on_link(node_ip);
        if on_link {
            mesh.push((peer.name.clone(), node_ip));
        }
        let wants = |b: BackendType| peer.receive.contains(&b);
        // Prefer the target; keep any backend the peer still receives on.
        let candidates = std::iter::once(target)
            .chain([
                BackendType::Vxlan,
                BackendType::HostGw,
                BackendType::Udp,
                BackendType::Bgp,
            ])
            .filter(|b| available(b) && wants(*b));
        let mut chosen = None;
        for backend in candidates {
            match backend {
                BackendType::HostGw if !on_link => {
                    peer_problems.insert(PeerProblem::NotOnLink {
                        peer: peer.name.clone(),
                        node_ip: IpAddr::V4(node_ip),
                    });
                }
                BackendType::Bgp if !facts.bgp.learned.contains(&IpNet::V4(peer.subnet.cidr)) => {
                    // Make-before-break: the old path stays until BGP delivers the new one.
                    peer_problems.insert(PeerProblem::Pending {
                        peer: peer.name.clone(),
                        missing: "BGP route",
                    });
                }
                BackendType::Vxlan if endpoint.vtep_mac.is_none() && !(direct && on_link) => {
                    peer_problems.insert(PeerProblem::Pending {
                        peer: peer.name.clone(),
                        missing: "vtepMAC",
                    });
                }
                _ => {
                    chosen = Some(backend);
                    break;
                }
            }
        }
        let Some(backend) = chosen else {
            if peer.receive.is_empty() {
                peer_problems.insert(PeerProblem::Pending {
                    peer: peer.name.clone(),
                    missing: "receiveBackends",
                });
            } else if !peer_problems.iter().any(|p| p.peer() == peer.name) {
                peer_problems.insert(PeerProblem::NoCommonBackend {
                    peer: peer.name.clone(),
                });
            }
            continue;
        };
        // Reaching the peer over the target settles it; a fallback (the peer
        // is still reachable over an older backend) stays reported.
        if backend == target {
            peer_problems.retain(|p| p.peer() != peer.name);
        }
        let routed =
            backend == BackendType::HostGw || (backend == BackendType::Vxlan && direct && on_link);
        let subnets: Vec<IpNet> = std::iter::once(IpNet::V4(peer.subnet.cidr))
            .chain(local.ipv6_cidr.and(peer.subnet.ipv6_cidr).map(IpNet::V6))
            .collect();
        // A bgp peer's routes are BIRD's; Tartan installs nothing for it.
        let subnets = if backend == BackendType::Bgp {
            Vec::new()
        } else {
            subnets
        };
        for subnet in subnets {
            if backend == BackendType::Udp {
                udp_peers.insert(subnet, node_ip);
                routes.insert(RouteSpec {
                    destination: subnet,
                    gateway: None,
                    device: Device::Tun(TUN.into()),
                    onlink: false,
                    metric: route_metric(subnet),
                });
            } else if routed {
                let gateway = match subnet {
                    IpNet::V4(_) => IpAddr::V4(node_ip),
                    IpNet::V6(_) => match endpoint.node_ipv6 {
                        Some(ip) => IpAddr::V6(ip),
                        None => continue,
                    },
                };
                routes.insert(RouteSpec {
                    destination: subnet,
                    gateway: Some(gateway),
                    device: Device::Underlay(facts.underlay.clone()),
                    onlink: false,
                    metric: route_metric(subnet),
                });
            } else if let Some(peer_mac) = endpoint.vtep_mac {
                let next_hop = subnet.network();
                routes.insert(RouteSpec {
                    destination: subnet,
                    gateway: Some(next_hop),
                    device: Device::Vxlan(vxlan_name.clone()),
                    onlink: true,
                    metric: route_metric(subnet),
                });
                neighbours.insert(NeighbourSpec {
                    device: vxlan_name.clone(),
                    address: next_hop,
                    mac: peer_mac,
                });
                fdb.insert(FdbSpec {
                    device: vxlan_name.clone(),
                    mac: peer_mac,
                    destination: IpAddr::V4(node_ip),
                });
            }
        }
        // Recorded as configured: a direct-routed vxlan peer still counts as vxlan.
        peer_backends.insert(peer.name.clone(), backend);
    }

    let needs_vxlan = receive.contains(&BackendType::Vxlan) || !fdb.is_empty();
    let overhead = match target {
        BackendType::Vxlan => VXLAN_OVERHEAD_V4,
        BackendType::Udp => udp::overhead(facts),
        BackendType::HostGw | BackendType::Bgp => 0,
    };
    let ceiling = facts.underlay_mtu.saturating_sub(overhead);
    let mtu = match network.mtu {
        Some(requested) if requested > ceiling => {
            local_problems.push(LocalProblem::MtuClamped {
                requested,
                clamped: ceiling,
            });
            ceiling
        }
        Some(requested) => requested,
        None => ceiling,
    };
    let vxlan_mtu = facts.underlay_mtu.saturating_sub(VXLAN_OVERHEAD_V4);
    let own: Vec<IpNet> = std::iter::once(IpNet::V4(local.cidr))
        .chain(local.ipv6_cidr.map(IpNet::V6))
        .collect();
    let vxlan = needs_vxlan.then(|| VxlanSpec {
        name: vxlan_name.clone(),
        vni: network.backend.vxlan.vni,
        port: network.backend.vxlan.port,
        underlay: facts.underlay.clone(),
        local: IpAddr::V4(facts.node_ip),
        mac,
        mtu: vxlan_mtu,
        addresses: own.iter().map(|n| host_net(*n)).collect(),
        disable_tx_checksum: facts.kernel < (5, 7),
    });
    if vxlan.is_some() {
        receive.insert(BackendType::Vxlan);
    }
    let needs_udp = receive.contains(&BackendType::Udp) || !udp_peers.is_empty();
    let udp = needs_udp.then(|| {
        udp::cluster_routes(network, local, &mut routes);
        udp::spec(network, facts, &own, udp_peers, senders)
    });
    if udp.is_some() {
        receive.insert(BackendType::Udp);
    }
    let bgp = receive
        .contains(&BackendType::Bgp)
        .then(|| bgp::spec(network, local, facts, &mesh));
    if let Some(spec) = &bgp
        && target == BackendType::Bgp
    {
        let down = bgp::sessions_down(spec, &facts.bgp);
        if !down.is_empty() {
            local_problems.push(LocalProblem::BgpSessionsDown { sessions: down });
        }
    }
    // What this node sends with: the target once every programmed peer gets it,
    // until then the old backend, so peers keep their old receive path for us.
    let fallback = if available(&target) {
        target
    } else {
        BackendType::Vxlan
    };
    let backend = peer_backends
        .values()
        .copied()
        .find(|b| *b != fallback)
        .unwrap_or(fallback);
    DesiredState {
        bridge: BridgeSpec {
            name: BRIDGE.into(),
            addresses: own.iter().map(|n| gateway(*n)).collect(),
            mtu,
        },
        vxlan,
        udp,
        bgp,
        routes,
        neighbours,
        fdb,
        masquerade: MasqueradeSpec {
            cluster: network.cidr,
            cluster_v6: network.ipv6.map(|p| p.cidr),
            masquerade: network.masquerade,
        },
        backend,
        receive_backends: receive,
        peer_backends,
        mtu,
        peer_problems,
        local_problems,
    }
}
