//! The udp part of the plan: the TUN, its routes and the datapath's peer table. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::IpNet;
use tartan_crds::{ValidNetwork, ValidNodeSubnet};

use super::{Device, LocalFacts, RouteSpec, TUN, UDP_OVERHEAD_V4, UdpSpec, host_net, route_metric};

/// Destinations in the cluster no peer route covers go to the TUN too, where
/// they are dropped and counted instead of leaking to the underlay.
pub fn cluster_routes(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
    routes: &mut BTreeSet<RouteSpec>,
) {
    let cluster = std::iter::once(IpNet::V4(network.cidr)).chain(
        network
            .ipv6
            .map(|p| IpNet::V6(p.cidr))
            .filter(|_| local.ipv6_cidr.is_some()),
    );
    for destination in cluster {
        routes.insert(RouteSpec {
            destination,
            gateway: None,
            device: Device::Tun(TUN.into()),
            onlink: false,
            metric: route_metric(destination),
        });
    }
}

/// Outer IPv4 and UDP headers, and the tag when datagrams are authenticated.
pub fn overhead(facts: &LocalFacts) -> u32 {
    UDP_OVERHEAD_V4 + facts.udp_tag_len
}

pub fn spec(
    network: &ValidNetwork,
    facts: &LocalFacts,
    own: &[IpNet],
    peers: BTreeMap<IpNet, Ipv4Addr>,
    senders: BTreeSet<Ipv4Addr>,
) -> UdpSpec {
    UdpSpec {
        device: TUN.into(),
        port: network.backend.udp.port,
        mtu: facts.underlay_mtu.saturating_sub(overhead(facts)),
        addresses: own.iter().map(|n| host_net(*n)).collect(),
        local: own.to_vec(),
        peers,
        senders,
    }
}
