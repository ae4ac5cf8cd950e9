//! The udp part of the plan: the TUN, its routes and the datapath's peer table. Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use tartan_crds::{BackendType, ValidNetwork, ValidNodeSubnet};

use super::{Device, LocalFacts, RouteSpec, TUN, UdpSpec, host_net, mtu};

/// `destination dev tartan0`: every route into the TUN, for a peer or the cluster.
pub fn tun_route(destination: IpNet) -> RouteSpec {
    RouteSpec::new(destination, None, Device::Tun(TUN.into()), false)
}

/// Destinations in the cluster no peer route covers go to the TUN too, where
/// they are dropped and counted instead of leaking to the underlay.
pub fn cluster_routes(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
) -> impl Iterator<Item = RouteSpec> {
    std::iter::once(IpNet::V4(network.cidr))
        .chain(
            network
                .ipv6
                .map(|p| IpNet::V6(p.cidr))
                .filter(|_| local.ipv6_cidr.is_some()),
        )
        .map(tun_route)
}

pub fn spec(
    network: &ValidNetwork,
    facts: &LocalFacts,
    own: &[IpNet],
    peers: BTreeMap<IpNet, Ipv4Addr>,
    senders: BTreeMap<IpNet, Ipv4Addr>,
) -> UdpSpec {
    UdpSpec {
        device: TUN.into(),
        port: network.backend.udp.port,
        mtu: mtu::device_mtu(BackendType::Udp, facts),
        addresses: own.iter().map(|n| host_net(*n)).collect(),
        local: own.to_vec(),
        peers,
        senders,
    }
}
