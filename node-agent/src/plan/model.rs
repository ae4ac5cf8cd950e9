//! The desired kernel state: what the planner outputs and the applier installs.
//! Plain data, ordered sets, so two plans compare and diff cheaply.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tartan_crds::BackendType;

/// Name of the pod bridge.
pub const BRIDGE: &str = "cni0";
/// Routing protocol number on every route Tartan installs (`ip route ... proto 84`),
/// so pruning never touches a route that is not ours.
pub const ROUTE_PROTOCOL: u8 = 84;

/// What every VXLAN device name of Tartan's starts with (`tartan.<vni>`).
const VXLAN_PREFIX: &str = "tartan.";

/// The VXLAN device name for a VNI.
pub fn vxlan_name(vni: u32) -> String {
    format!("{VXLAN_PREFIX}{vni}")
}

/// Whether a device name is one of Tartan's VXLAN devices (of any VNI).
pub fn is_vxlan_device(name: &str) -> bool {
    name.starts_with(VXLAN_PREFIX)
}

/// The udp backend's TUN device.
pub const TUN: &str = "tartan0";
/// The wireguard backend's TUN device.
pub const WIREGUARD_TUN: &str = "tartan-wg";

/// Whether a device name is one of Tartan's TUN devices.
pub fn is_tun_device(name: &str) -> bool {
    name == TUN || name == WIREGUARD_TUN
}

/// Whether a device name is one Tartan owns (and may delete).
pub fn is_tartan_device(name: &str) -> bool {
    name == BRIDGE || is_vxlan_device(name) || is_tun_device(name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    /// Gateway addresses with the node subnet's prefix (first host address).
    pub addresses: BTreeSet<IpNet>,
    pub mtu: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay device and address the tunnel is bound to.
    pub underlay: String,
    pub local: IpAddr,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The node subnet's network address as /32 (and /128): the peers' next hop.
    pub addresses: BTreeSet<IpNet>,
    /// Kernels before 5.7 corrupt checksums of masqueraded VXLAN traffic.
    pub disable_tx_checksum: bool,
}

/// Which device a route, neighbour or FDB entry lives on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Device {
    Vxlan(String),
    Underlay(String),
    Tun(String),
}

impl Device {
    pub fn name(&self) -> &str {
        match self {
            Device::Vxlan(n) | Device::Underlay(n) | Device::Tun(n) => n,
        }
    }

    /// The device kind a name stands for.
    pub fn from_name(name: &str) -> Device {
        if is_vxlan_device(name) {
            Device::Vxlan(name.into())
        } else if is_tun_device(name) {
            Device::Tun(name.into())
        } else {
            Device::Underlay(name.into())
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub destination: IpNet,
    /// `None`: a device route (`dev tartan0`, scope link).
    pub gateway: Option<IpAddr>,
    pub device: Device,
    pub onlink: bool,
    /// See [`route_metric`].
    pub metric: u32,
}

impl RouteSpec {
    /// A route Tartan installs: its metric follows from the destination.
    pub fn new(destination: IpNet, gateway: Option<IpAddr>, device: Device, onlink: bool) -> Self {
        Self {
            destination,
            gateway,
            device,
            onlink,
            metric: route_metric(destination),
        }
    }
}

/// The metric of Tartan's route to `destination`: 1 + the subnet's index modulo 1024.
///
/// The kernel files IPv4 routes' shared next-hop info (`fib_info`) in a hash that
/// covers device, protocol and metric but not the gateway, so thousands of routes
/// on one device with one metric share a bucket and each insert walks it: 5,000
/// routes take ~5x longer than with spread metrics (212 ms against 39 ms measured
/// here with `ip -batch`). The metric depends only on the destination, so a
/// route keeps it across backends and `replace` still updates it in place.
pub fn route_metric(destination: IpNet) -> u32 {
    let host_bits = u32::from(destination.max_prefix_len() - destination.prefix_len());
    let network = match destination.network() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    };
    let index = network.checked_shr(host_bits).unwrap_or(0);
    1 + (index % 1024) as u32
}

/// The udp backend: its TUN device and what the datapath needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSpec {
    pub device: String,
    pub port: u16,
    pub mtu: u32,
    /// This node's subnets' network addresses (/32, /128) on the device, so
    /// the node's own traffic to remote pods has a pod-network source.
    pub addresses: BTreeSet<IpNet>,
    /// This node's subnets: the only destinations accepted from peers.
    pub local: Vec<IpNet>,
    /// Each udp peer's subnets and node IP: where packets are sent.
    pub peers: BTreeMap<IpNet, std::net::Ipv4Addr>,
    /// Every peer's subnets and node IP: whose datagrams are accepted, and
    /// from which inner sources. Wider than `peers`, since during a switch a
    /// peer sends udp before we do.
    pub senders: BTreeMap<IpNet, std::net::Ipv4Addr>,
}

/// The wireguard backend: the udp backend's TUN and peer table, and each
/// peer's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireguardSpec {
    pub tun: UdpSpec,
    /// The public key of every peer that sends or is sent to (by node IP).
    pub keys: BTreeMap<std::net::Ipv4Addr, [u8; 32]>,
}

/// The bgp backend: what this node's BIRD is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSpec {
    pub router_id: std::net::Ipv4Addr,
    pub asn: u32,
    /// The underlay device: its routes resolve multihop peers' next hops.
    pub underlay: String,
    /// This node's subnets, announced.
    pub announce: Vec<IpNet>,
    /// What is accepted from peers: node subnets (this prefix length) inside
    /// the cluster CIDR, never one of `announce`.
    pub accept: Vec<(IpNet, u8)>,
    pub neighbors: Vec<BgpNeighbor>,
}

/// BGP as observed on this node: an input of the planner, like the underlay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BgpObserved {
    /// Pod subnets the kernel has a BGP route for (installed by BIRD): a
    /// peer is sent to over bgp only once its route is here.
    pub learned: BTreeSet<IpNet>,
    /// Sessions by BIRD protocol name.
    pub sessions: BTreeMap<String, SessionState>,
    /// Routes BGP peers sent that passed the import filter.
    pub routes_learned: u32,
    /// Why BIRD could not be asked, if it could not.
    pub error: Option<String>,
    /// Sessions first expected within the grace period (a peer that just
    /// joined): the status does not call them down yet, or one join would
    /// flip every meshed node's Ready. Not a planner input.
    pub settling: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    /// BIRD's BGP state: Idle, Connect, Active, OpenSent, OpenConfirm, Established.
    pub state: String,
    pub last_error: Option<String>,
}

impl SessionState {
    pub fn established(&self) -> bool {
        self.state == "Established"
    }
}

/// One BGP session of this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BgpNeighbor {
    /// BIRD protocol name (`mesh_<ip>`, `peer_<ip>`): derived, never user text.
    pub name: String,
    /// The peer node's name (mesh) or `router` (an external peer), for messages.
    pub label: String,
    pub address: IpAddr,
    pub asn: u32,
    /// On this node's segment: a single-hop session.
    pub direct: bool,
    pub external: bool,
    pub password: Option<Password>,
    pub keep_next_hop: bool,
}

/// A BGP password, read from a Secret: compared and cloned like the string
/// it is, but never printed (its `Debug` shows the length only), so no log
/// line, error or test failure that formats a plan shows it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Password(password)
    }

    /// The password itself: for BIRD's configuration, nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<password, {} characters>", self.0.len())
    }
}

/// What reading one `passwordSecretRef` gave: the password, or why there is
/// none, naming the Secret and the key (never the value).
pub type PasswordLookup = Result<Password, String>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighbourSpec {
    pub device: String,
    pub address: IpAddr,
    pub mac: [u8; 6],
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbSpec {
    pub device: String,
    pub mac: [u8; 6],
    pub destination: IpAddr,
}

/// nftables masquerade and forward-accept for the cluster CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeSpec {
    pub cluster: Ipv4Net,
    pub cluster_v6: Option<Ipv6Net>,
    pub masquerade: bool,
    /// This node's subnets: no peer may send from them.
    pub own: Vec<IpNet>,
    /// The VXLAN device while it receives: what arrives decapsulated on it
    /// is bounded by source ([`crate::masquerade`]).
    pub vxlan_device: Option<String>,
}

/// Why a peer is not (fully) programmed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerProblem {
    /// No node IP or VTEP MAC published yet.
    Pending { peer: String, missing: &'static str },
    /// host-gw needs the peer on this node's L2 segment.
    NotOnLink { peer: String, node_ip: IpAddr },
    /// The peer's status is malformed.
    Invalid { peer: String, message: String },
    /// The peer cannot receive on any backend this node can send with.
    NoCommonBackend { peer: String },
}

impl PeerProblem {
    pub fn peer(&self) -> &str {
        match self {
            PeerProblem::Pending { peer, .. }
            | PeerProblem::NotOnLink { peer, .. }
            | PeerProblem::Invalid { peer, .. }
            | PeerProblem::NoCommonBackend { peer } => peer,
        }
    }
}

/// A problem with this node's own configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalProblem {
    /// The configured MTU does not fit the underlay; clamped.
    MtuClamped { requested: u32, clamped: u32 },
    /// The target backend is not available in this agent.
    BackendUnavailable {
        backend: BackendType,
        why: &'static str,
    },
    /// Expected BGP sessions that are not Established: (BIRD protocol name,
    /// "label address (state: error)").
    BgpSessionsDown { sessions: Vec<(String, String)> },
    /// External peers left unconfigured for want of their password: (peer
    /// address, why, naming the Secret and the key).
    BgpPasswordUnavailable { peers: Vec<(IpAddr, String)> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub bridge: BridgeSpec,
    pub vxlan: Option<VxlanSpec>,
    pub udp: Option<UdpSpec>,
    pub wireguard: Option<WireguardSpec>,
    pub bgp: Option<BgpSpec>,
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighbourSpec>,
    pub fdb: BTreeSet<FdbSpec>,
    pub masquerade: MasqueradeSpec,
    /// The backend this node sends with (the target, once peers follow).
    pub backend: BackendType,
    /// What this node can receive on once this state is installed.
    pub receive_backends: BTreeSet<BackendType>,
    /// Per programmed peer, the backend used to reach it.
    pub peer_backends: BTreeMap<String, BackendType>,
    pub mtu: u32,
    pub peer_problems: BTreeSet<PeerProblem>,
    pub local_problems: Vec<LocalProblem>,
}

impl DesiredState {
    /// The TUN devices this state has: the udp and the wireguard backend's.
    pub fn tuns(&self) -> impl Iterator<Item = &UdpSpec> {
        self.udp
            .iter()
            .chain(self.wireguard.as_ref().map(|w| &w.tun))
    }

    /// How many kernel objects this state consists of (metrics, benchmarks).
    pub fn object_count(&self) -> usize {
        1 + usize::from(self.vxlan.is_some())
            + usize::from(self.udp.is_some())
            + usize::from(self.wireguard.is_some())
            + self.routes.len()
            + self.neighbours.len()
            + self.fdb.len()
    }
}
