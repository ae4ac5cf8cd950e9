//! The host-gw part of the plan (also vxlan + directRouting's on-link peers):
//! a plain route to the peer's subnet via its node IP on the underlay. It needs
//! L2 adjacency, so which peers are on this node's segment is decided here. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net};

use super::{Device, LocalFacts, RouteSpec};

impl LocalFacts {
    /// Whether `ip` is on this node's underlay segment (and not this node):
    /// only such a peer can be a next hop without encapsulation.
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        Ipv4Net::new(self.node_ip, self.underlay_prefix)
            .is_ok_and(|net| net.contains(&ip) && ip != self.node_ip)
    }
}

/// `subnet via <peer's node address> dev <underlay>`; `None` for an IPv6
/// subnet of a peer that has published no IPv6 address (no next hop).
pub fn route(
    subnet: IpNet,
    node_ip: Ipv4Addr,
    node_ipv6: Option<Ipv6Addr>,
    underlay: &str,
) -> Option<RouteSpec> {
    let gateway = match subnet {
        IpNet::V4(_) => IpAddr::V4(node_ip),
        IpNet::V6(_) => IpAddr::V6(node_ipv6?),
    };
    Some(RouteSpec::new(
        subnet,
        Some(gateway),
        Device::Underlay(underlay.into()),
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_link_is_the_underlay_network_without_this_node() {
        let facts = LocalFacts {
            node_ip: Ipv4Addr::new(192, 168, 0, 1),
            underlay_prefix: 24,
            ..Default::default()
        };
        assert!(facts.on_link(Ipv4Addr::new(192, 168, 0, 200)));
        assert!(!facts.on_link(Ipv4Addr::new(192, 168, 1, 2)));
        assert!(!facts.on_link(facts.node_ip), "not our own address");
    }

    #[test]
    fn an_ipv6_subnet_needs_the_peers_ipv6_address() {
        let v4 = Ipv4Addr::new(192, 168, 0, 2);
        let subnet: IpNet = "fd00:10:244:2::/64".parse().expect("cidr");
        assert_eq!(route(subnet, v4, None, "eth0"), None);
        let v6: Ipv6Addr = "fd00::2".parse().expect("ip");
        let route = route(subnet, v4, Some(v6), "eth0").expect("route");
        assert_eq!(route.gateway, Some(IpAddr::V6(v6)));
        assert_eq!(route.device, Device::Underlay("eth0".into()));
    }
}
