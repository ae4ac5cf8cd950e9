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
//!     wireguard route S_P dev tartan-wg (+ route C dev tartan-wg while that TUN
//!              exists, in preference to tartan0; the datapath encrypts S_P's
//!              packets to P's published public key and sends them to IP_P:<port>)
//! ```
//!
//! A node sends to a peer over the target backend only once the peer lists it
//! in `receiveBackends`; until then it uses a backend the peer still receives.
//! It keeps receiving on every backend some peer still sends with.
//!
//! One file per stage and per backend; [`plan`] composes them:
//!
//! ```text
//!   choose    what this node receives on, which backend each peer is sent over, peer problems
//!   vxlan     the VTEP device; route + neighbour + FDB entry per vxlan peer
//!   host_gw   which peers are on-link; the routed peer route
//!   udp, bgp  the TUN and its routes; BIRD's sessions and filters
//!   wireguard the wireguard TUN and the peers' public keys
//!   mtu       each backend's overhead; the pods' MTU, clamped and reported
//!   model     the output (DesiredState); inputs: peers from their NodeSubnets
//! ```

mod bgp;
mod choose;
pub mod delta;
mod host_gw;
pub mod inputs;
pub mod model;
mod mtu;
mod udp;
mod vxlan;
mod wireguard;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use tartan_crds::validate::ValidEndpoint;
use tartan_crds::{BackendType, ValidNetwork, ValidNodeSubnet};

pub use choose::SUPPORTED;
pub use delta::{NodeIps, PeerDelta, PeerKernelObjects, plan_peer};
pub use model::*;
pub use mtu::{UDP_OVERHEAD_V4, VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6, WIREGUARD_OVERHEAD_V4};
pub use vxlan::vtep_mac;

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
    /// Each external BGP peer's `passwordSecretRef`, as read from its Secret.
    pub bgp_passwords: BTreeMap<tartan_crds::SecretKeyRef, PasswordLookup>,
    /// This node's WireGuard public key (its private key stays with the agent).
    pub wireguard_public_key: Option<[u8; 32]>,
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
            bgp_passwords: BTreeMap::new(),
            wireguard_public_key: None,
        }
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

/// The desired state, stage by stage: the backend of each peer (`choose`),
/// what each peer needs on it, the devices this node still receives on, the MTU.
pub fn plan(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
    peers: &[Peer],
    facts: &LocalFacts,
) -> DesiredState {
    let node = Node::new(network, local, facts);
    let choice = choose::choose(network, local, peers, facts);
    let mut objects = PeerObjects::default();
    for sent in &choice.sent {
        objects.add(&node, sent);
    }
    let paths = ReceivePaths::new(&node, &choice, &mut objects);
    let sessions_down = (paths.bgp.as_ref())
        .filter(|_| choice.target == BackendType::Bgp)
        .and_then(|spec| bgp::sessions_down(spec, &facts.bgp));
    let passwords_missing =
        (paths.bgp.as_ref()).and_then(|_| bgp::passwords_unavailable(network, facts));
    let (mtu, clamped) = mtu::pod_mtu(network.mtu, choice.target, facts);
    let vxlan_device = paths.vxlan.as_ref().map(|v| v.name.clone());
    DesiredState {
        bridge: BridgeSpec {
            name: BRIDGE.into(),
            addresses: node.own.iter().map(|n| gateway(*n)).collect(),
            mtu,
        },
        vxlan: paths.vxlan,
        udp: paths.udp,
        wireguard: paths.wireguard,
        bgp: paths.bgp,
        routes: objects.routes,
        neighbours: objects.neighbours,
        fdb: objects.fdb,
        masquerade: MasqueradeSpec {
            cluster: network.cidr,
            cluster_v6: network.ipv6.map(|p| p.cidr),
            masquerade: network.masquerade,
            own: node.own.clone(),
            vxlan_device,
        },
        backend: choice.backend,
        receive_backends: paths.receive,
        peer_backends: choice.peer_backends,
        mtu,
        peer_problems: choice.peer_problems,
        local_problems: (choice.unavailable.into_iter())
            .chain(clamped)
            .chain(passwords_missing)
            .chain(sessions_down)
            .collect(),
    }
}

/// The inputs every stage reads.
struct Node<'a> {
    network: &'a ValidNetwork,
    local: &'a ValidNodeSubnet,
    facts: &'a LocalFacts,
    /// This node's subnets: IPv4, and IPv6 when dual-stack.
    own: Vec<IpNet>,
    /// The VXLAN device's name, which every vxlan peer's objects carry.
    vxlan_device: String,
}

impl<'a> Node<'a> {
    fn new(network: &'a ValidNetwork, local: &'a ValidNodeSubnet, facts: &'a LocalFacts) -> Self {
        let own = local.cidrs().collect();
        Self {
            network,
            local,
            facts,
            own,
            vxlan_device: vxlan_name(network.backend.vxlan.vni),
        }
    }
}

/// What Tartan installs to reach the peers it sends to.
#[derive(Debug, Default)]
struct PeerObjects {
    routes: BTreeSet<RouteSpec>,
    neighbours: BTreeSet<NeighbourSpec>,
    fdb: BTreeSet<FdbSpec>,
    /// Each udp peer's subnets and node IP: the datapath's peer table.
    udp_peers: BTreeMap<IpNet, Ipv4Addr>,
    /// The same for the wireguard peers.
    wireguard_peers: BTreeMap<IpNet, Ipv4Addr>,
}

impl PeerObjects {
    /// One peer's objects on its backend, for each subnet both ends have.
    fn add(&mut self, node: &Node, sent: &choose::Sent) {
        let choose::Sent {
            peer,
            reach,
            backend,
        } = sent;
        let direct = node.network.backend.vxlan.direct_routing;
        let subnets = std::iter::once(IpNet::V4(peer.subnet.cidr)).chain(
            node.local
                .ipv6_cidr
                .and(peer.subnet.ipv6_cidr)
                .map(IpNet::V6),
        );
        for subnet in subnets {
            let routed = || {
                let ipv6 = reach.endpoint.node_ipv6;
                host_gw::route(subnet, reach.node_ip, ipv6, &node.facts.underlay)
            };
            match backend {
                // A bgp peer's routes are BIRD's; Tartan installs nothing for it.
                BackendType::Bgp => {}
                BackendType::Udp => {
                    self.udp_peers.insert(subnet, reach.node_ip);
                    self.routes.insert(udp::tun_route(TUN, subnet));
                }
                BackendType::Wireguard => {
                    self.wireguard_peers.insert(subnet, reach.node_ip);
                    self.routes.insert(udp::tun_route(WIREGUARD_TUN, subnet));
                }
                BackendType::HostGw => self.routes.extend(routed()),
                // vxlan + directRouting: host-gw for on-link peers.
                BackendType::Vxlan if direct && reach.on_link => self.routes.extend(routed()),
                BackendType::Vxlan => {
                    // choose picks vxlan only with a MAC, or direct-routed on-link.
                    if let Some(mac) = reach.endpoint.vtep_mac {
                        let (route, neighbour, fdb) =
                            vxlan::peer(&node.vxlan_device, subnet, mac, reach.node_ip);
                        self.routes.insert(route);
                        self.neighbours.insert(neighbour);
                        self.fdb.insert(fdb);
                    }
                }
            }
        }
    }
}

/// The devices (and BIRD) this node keeps, and so what it receives on: each
/// stays while some peer still sends on it or this node still sends on it.
struct ReceivePaths {
    receive: BTreeSet<BackendType>,
    vxlan: Option<VxlanSpec>,
    udp: Option<UdpSpec>,
    wireguard: Option<WireguardSpec>,
    bgp: Option<BgpSpec>,
}

impl ReceivePaths {
    /// While a TUN stays, the cluster's routes into it join `objects.routes`
    /// (into the wireguard TUN when both stay, so nothing falls back to clear
    /// text) and its peer table moves into its spec.
    fn new(node: &Node, choice: &choose::Choice, objects: &mut PeerObjects) -> Self {
        let Node {
            network,
            local,
            facts,
            own,
            ..
        } = node;
        let mut receive = choice.receive.clone();
        let wanted =
            |receive: &BTreeSet<BackendType>, backend, peers: &BTreeMap<IpNet, Ipv4Addr>| {
                receive.contains(&backend) || !peers.is_empty()
            };
        let vxlan = (receive.contains(&BackendType::Vxlan) || !objects.fdb.is_empty())
            .then(|| vxlan::spec(network, facts, own));
        let wireguard =
            wanted(&receive, BackendType::Wireguard, &objects.wireguard_peers).then(|| {
                let peers = std::mem::take(&mut objects.wireguard_peers);
                wireguard::spec(
                    network,
                    facts,
                    own,
                    peers,
                    choice.senders.clone(),
                    &choice.keys,
                )
            });
        let udp = wanted(&receive, BackendType::Udp, &objects.udp_peers).then(|| {
            let peers = std::mem::take(&mut objects.udp_peers);
            udp::TunPlan::udp(network).spec(facts, own, peers, choice.senders.clone())
        });
        let catch_all = match (&wireguard, &udp) {
            (Some(w), _) => Some(w.tun.device.as_str()),
            (None, Some(u)) => Some(u.device.as_str()),
            (None, None) => None,
        };
        if let Some(device) = catch_all {
            objects
                .routes
                .extend(udp::cluster_routes(device, network, local));
        }
        for (backend, on) in [
            (BackendType::Vxlan, vxlan.is_some()),
            (BackendType::Udp, udp.is_some()),
            (BackendType::Wireguard, wireguard.is_some()),
        ] {
            if on {
                receive.insert(backend);
            }
        }
        let bgp = (receive.contains(&BackendType::Bgp))
            .then(|| bgp::spec(network, local, facts, &choice.on_link));
        Self {
            receive,
            vxlan,
            udp,
            wireguard,
            bgp,
        }
    }
}
