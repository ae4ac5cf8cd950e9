//! Which interface carries the overlay: `--iface NAME`, `--iface-regex RE`, or
//! by default the interface holding the Node's InternalIP. Selection is pure;
//! reading the interfaces is one netlink dump.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;

use crate::netlink::observe::parse_link;
use crate::netlink::socket::RouteSocket;
use crate::netns::NetNs;
use crate::plan::{LocalFacts, is_tartan_device};
use crate::status::kernel_version;

/// One interface as the selection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    pub ipv6: Vec<(Ipv6Addr, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    Name(String),
    /// A regular expression over interface names (first match in index order).
    Pattern(String),
    /// The interface holding the Node's InternalIP.
    NodeAddress(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnderlayError {
    #[error("--iface {0}: no such interface")]
    NoSuchInterface(String),
    #[error("--iface {0}: the interface has no IPv4 address")]
    NoAddress(String),
    #[error("--iface-regex {0}: no interface matches")]
    NoMatch(String),
    #[error("--iface-regex {0}: {1}")]
    BadPattern(String, String),
    #[error("no interface holds the Node's InternalIP {0}; set --iface or --iface-regex")]
    NodeAddressNotLocal(Ipv4Addr),
    #[error("the Node has no InternalIP yet and neither --iface nor --iface-regex is set")]
    NoNodeAddress,
    #[error("reading interfaces: {0}")]
    Io(String),
}

/// Picks the underlay and builds the local facts. Pure.
pub fn select(interfaces: &[Interface], choice: &Choice) -> Result<LocalFacts, UnderlayError> {
    let candidates = interfaces
        .iter()
        .filter(|i| !is_tartan_device(&i.name) && i.name != "lo");
    let chosen = match choice {
        Choice::Name(name) => {
            let iface = interfaces
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| UnderlayError::NoSuchInterface(name.clone()))?;
            if iface.ipv4.is_empty() {
                return Err(UnderlayError::NoAddress(name.clone()));
            }
            (iface, iface.ipv4[0])
        }
        Choice::Pattern(pattern) => {
            let matcher = regex::Regex::new(pattern)
                .map_err(|e| UnderlayError::BadPattern(pattern.clone(), e.to_string()))?;
            let iface = candidates
                .filter(|i| !i.ipv4.is_empty())
                .find(|i| matcher.is_match(&i.name))
                .ok_or_else(|| UnderlayError::NoMatch(pattern.clone()))?;
            (iface, iface.ipv4[0])
        }
        Choice::NodeAddress(ip) => candidates
            .filter_map(|i| i.ipv4.iter().find(|(a, _)| a == ip).map(|a| (i, *a)))
            .next()
            .ok_or(UnderlayError::NodeAddressNotLocal(*ip))?,
    };
    let (iface, (node_ip, prefix)) = chosen;
    let node_ipv6 = iface
        .ipv6
        .iter()
        .copied()
        .find(|(a, _)| !a.is_unicast_link_local());
    Ok(LocalFacts {
        underlay: iface.name.clone(),
        node_ip,
        underlay_prefix: prefix,
        node_ipv6,
        underlay_mtu: iface.mtu,
        kernel: kernel_version(),
        ..Default::default()
    })
}

/// Every interface in `netns` with its addresses.
pub fn interfaces(netns: &NetNs) -> Result<Vec<Interface>, UnderlayError> {
    let io = |e: std::io::Error| UnderlayError::Io(e.to_string());
    let mut socket = RouteSocket::open(netns).map_err(io)?;
    let mut out: Vec<(u32, Interface)> = Vec::new();
    for message in socket
        .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(io)?
    {
        if let RouteNetlinkMessage::NewLink(m) = message
            && let Some(link) = parse_link(&m)
        {
            out.push((
                link.index,
                Interface {
                    name: link.name,
                    mtu: link.mtu.unwrap_or(1500),
                    up: link.up,
                    ipv4: vec![],
                    ipv6: vec![],
                },
            ));
        }
    }
    for message in socket
        .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(io)?
    {
        let RouteNetlinkMessage::NewAddress(m) = message else {
            continue;
        };
        let Some((_, iface)) = out.iter_mut().find(|(i, _)| *i == m.header.index) else {
            continue;
        };
        let ip = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) | AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        });
        match ip {
            Some(IpAddr::V4(v4)) if !iface.ipv4.iter().any(|(a, _)| *a == v4) => {
                iface.ipv4.push((v4, m.header.prefix_len))
            }
            Some(IpAddr::V6(v6)) if !iface.ipv6.iter().any(|(a, _)| *a == v6) => {
                iface.ipv6.push((v6, m.header.prefix_len))
            }
            _ => {}
        }
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, i)| i).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ip: Option<[u8; 4]>) -> Interface {
        Interface {
            name: name.into(),
            mtu: 9001,
            up: true,
            ipv4: ip.map(|o| (Ipv4Addr::from(o), 24)).into_iter().collect(),
            ipv6: vec![],
        }
    }

    fn all() -> Vec<Interface> {
        vec![
            iface("lo", Some([127, 0, 0, 1])),
            iface("docker0", Some([172, 17, 0, 1])),
            iface("ens5", Some([10, 0, 1, 7])),
            iface("cni0", Some([10, 244, 1, 1])),
        ]
    }

    #[test]
    fn by_node_address_by_name_and_by_pattern() {
        let facts =
            select(&all(), &Choice::NodeAddress(Ipv4Addr::new(10, 0, 1, 7))).expect("found");
        assert_eq!(
            (
                facts.underlay.as_str(),
                facts.underlay_mtu,
                facts.underlay_prefix
            ),
            ("ens5", 9001, 24)
        );
        assert_eq!(
            select(&all(), &Choice::Name("docker0".into()))
                .expect("found")
                .node_ip,
            Ipv4Addr::new(172, 17, 0, 1)
        );
        assert_eq!(
            select(&all(), &Choice::Pattern("^(eth|ens)[0-9]+$".into()))
                .expect("found")
                .underlay,
            "ens5"
        );
        assert_eq!(
            select(&all(), &Choice::Pattern("ens.*".into()))
                .expect("found")
                .underlay,
            "ens5"
        );
    }

    #[test]
    fn clear_errors_when_nothing_resolves() {
        assert_eq!(
            select(&all(), &Choice::Name("eth9".into()))
                .unwrap_err()
                .to_string(),
            "--iface eth9: no such interface"
        );
        assert!(matches!(
            select(&all(), &Choice::Pattern("^wlan[0-9]$".into())),
            Err(UnderlayError::NoMatch(_))
        ));
        let err = select(&all(), &Choice::NodeAddress(Ipv4Addr::new(10, 9, 9, 9))).unwrap_err();
        assert!(
            err.to_string().contains("set --iface or --iface-regex"),
            "{err}"
        );
        assert!(matches!(
            select(&[iface("eth0", None)], &Choice::Name("eth0".into())),
            Err(UnderlayError::NoAddress(_))
        ));
    }

    #[test]
    fn tartan_devices_are_never_the_underlay() {
        assert!(matches!(
            select(&all(), &Choice::NodeAddress(Ipv4Addr::new(10, 244, 1, 1))),
            Err(UnderlayError::NodeAddressNotLocal(_))
        ));
    }
}
