//! The udp part of the plan: the TUN, its routes and the datapath's peer
//! table (the wireguard backend's TUN is planned the same way). Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use tartan_crds::{BackendType, ValidNetwork, ValidNodeSubnet};

use super::{Device, LocalFacts, RouteSpec, TUN, UdpSpec, host_net, mtu};

/// `destination dev <tun>`: every route into a TUN, for a peer or the cluster.
pub fn tun_route(device: &str, destination: IpNet) -> RouteSpec {
    RouteSpec::new(destination, None, Device::Tun(device.into()), false)
}

/// Destinations in the cluster no peer route covers go to a TUN too, where
/// they are dropped and counted instead of leaking to the underlay.
pub fn cluster_routes<'a>(
    device: &'a str,
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
) -> impl Iterator<Item = RouteSpec> + 'a {
    std::iter::once(IpNet::V4(network.cidr))
        .chain(
            network
                .ipv6
                .map(|p| IpNet::V6(p.cidr))
                .filter(|_| local.ipv6_cidr.is_some()),
        )
        .map(move |destination| tun_route(device, destination))
}

/// The TUN `device` of `backend` on `port`, sending to `peers`.
pub struct TunPlan {
    pub backend: BackendType,
    pub device: &'static str,
    pub port: u16,
}

impl TunPlan {
    pub fn udp(network: &ValidNetwork) -> Self {
        Self {
            backend: BackendType::Udp,
            device: TUN,
            port: network.backend.udp.port,
        }
    }

    pub fn spec(
        &self,
        facts: &LocalFacts,
        own: &[IpNet],
        peers: BTreeMap<IpNet, Ipv4Addr>,
        senders: BTreeMap<IpNet, Ipv4Addr>,
    ) -> UdpSpec {
        UdpSpec {
            device: self.device.into(),
            port: self.port,
            mtu: mtu::device_mtu(self.backend, facts),
            addresses: own.iter().map(|n| host_net(*n)).collect(),
            local: own.to_vec(),
            peers,
            senders,
        }
    }
}
