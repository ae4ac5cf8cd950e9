//! The vxlan part of the plan: the VTEP device, and per peer the route, the
//! permanent neighbour and the FDB entry that send its subnet through it. Pure.
//!
//! ```text
//!   route S_P via S_P.net dev tartan.<vni> onlink
//!   neigh S_P.net lladdr MAC_P dev tartan.<vni> permanent
//!   fdb   MAC_P dev tartan.<vni> dst IP_P
//! ```

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use tartan_crds::{BackendType, ValidNetwork};

use super::{
    Device, FdbSpec, LocalFacts, NeighbourSpec, RouteSpec, VxlanSpec, host_net, mtu, vxlan_name,
};

/// The VTEP MAC of a node: locally administered, derived from the node IP so
/// it survives reboots and systemd's MACAddressPolicy and peers never go stale.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_ip.octets();
    [0x0e, 0x2a, a, b, c, d]
}

/// What reaches one peer subnet over `device`. The subnet's network address is
/// the next hop; the permanent neighbour answers for it, so the kernel never
/// sends ARP into the tunnel, and the FDB entry says which node has that MAC.
pub fn peer(
    device: &str,
    subnet: IpNet,
    mac: [u8; 6],
    node_ip: Ipv4Addr,
) -> (RouteSpec, NeighbourSpec, FdbSpec) {
    let next_hop = subnet.network();
    (
        RouteSpec::new(subnet, Some(next_hop), Device::Vxlan(device.into()), true),
        NeighbourSpec {
            device: device.into(),
            address: next_hop,
            mac,
        },
        FdbSpec {
            device: device.into(),
            mac,
            destination: IpAddr::V4(node_ip),
        },
    )
}

/// This node's VXLAN device: bound to the underlay, holding its own subnets'
/// network addresses (the peers' next hop for this node).
pub fn spec(network: &ValidNetwork, facts: &LocalFacts, own: &[IpNet]) -> VxlanSpec {
    let vxlan = &network.backend.vxlan;
    VxlanSpec {
        name: vxlan_name(vxlan.vni),
        vni: vxlan.vni,
        port: vxlan.port,
        underlay: facts.underlay.clone(),
        local: IpAddr::V4(facts.node_ip),
        mac: vtep_mac(facts.node_ip),
        mtu: mtu::device_mtu(BackendType::Vxlan, facts),
        addresses: own.iter().map(|n| host_net(*n)).collect(),
        disable_tx_checksum: facts.kernel < (5, 7),
    }
}
