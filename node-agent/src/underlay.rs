//! Which interface carries the overlay: `--iface NAME`, `--iface-regex RE`, or
//! by default the interface holding the Node's InternalIP. Selection is pure;
//! reading the interfaces is one netlink dump. [`Underlay::facts`] is where
//! the planner's [`LocalFacts`] start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;

use crate::netlink::observe::parse_link;
use crate::netlink::socket::RouteSocket;
use crate::netns::NetNs;
use crate::plan::{LocalFacts, is_tartan_device};

/// One interface as the selection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mtu: u32,
    pub up: bool,
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    pub ipv6: Vec<(Ipv6Addr, u8)>,
}

/// How the underlay is chosen, from the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// `--iface NAME`.
    Name(String),
    /// `--iface-regex RE`: the first match in index order.
    Pattern(InterfacePattern),
    /// The interface holding the Node's InternalIP (the default).
    NodeInternalIp,
}

/// A regular expression over interface names, compiled once when the flags
/// are parsed (a bad one is refused there, with clap's message).
#[derive(Debug, Clone)]
pub struct InterfacePattern(regex::Regex);

impl std::str::FromStr for InterfacePattern {
    type Err = regex::Error;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        regex::Regex::new(pattern).map(InterfacePattern)
    }
}

impl PartialEq for InterfacePattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for InterfacePattern {}

impl std::fmt::Display for InterfacePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnderlayError {
    #[error("--iface {0}: no such interface")]
    NoSuchInterface(String),
    #[error("--iface {0}: the interface has no IPv4 address")]
    NoAddress(String),
    #[error("--iface-regex {0}: no interface matches")]
    NoMatch(String),
    #[error("no interface holds the Node's InternalIP {0}; set --iface or --iface-regex")]
    NodeAddressNotLocal(Ipv4Addr),
    #[error("the Node has no InternalIP yet and neither --iface nor --iface-regex is set")]
    NoNodeAddress,
    #[error("reading interfaces: {0}")]
    Io(String),
}

/// The chosen underlay: the interface and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    pub name: String,
    pub node_ip: Ipv4Addr,
    /// Prefix length of the underlay's IPv4 network: peers inside it are on-link.
    pub prefix: u8,
    pub node_ipv6: Option<(Ipv6Addr, u8)>,
    pub mtu: u32,
}

impl Underlay {
    /// This node's facts on this underlay, before the per-reconcile inputs
    /// (labels, BGP) are added: the one place [`LocalFacts`] are built.
    pub fn facts(&self, kernel: (u32, u32)) -> LocalFacts {
        LocalFacts {
            underlay: self.name.clone(),
            node_ip: self.node_ip,
            underlay_prefix: self.prefix,
            node_ipv6: self.node_ipv6,
            underlay_mtu: self.mtu,
            kernel,
            ..Default::default()
        }
    }
}

/// Picks the underlay. Pure: `node_internal_ip` is the Node's InternalIP,
/// when it has one.
pub fn select(
    interfaces: &[Interface],
    choice: &Choice,
    node_internal_ip: Option<Ipv4Addr>,
) -> Result<Underlay, UnderlayError> {
    let candidates = interfaces
        .iter()
        .filter(|i| !is_tartan_device(&i.name) && i.name != "lo");
    let chosen = match choice {
        Choice::Name(name) => {
            let iface = interfaces
                .iter()
                .find(|i| &i.name == name)
                .ok_or_else(|| UnderlayError::NoSuchInterface(name.clone()))?;
            let first = iface
                .ipv4
                .first()
                .ok_or_else(|| UnderlayError::NoAddress(name.clone()))?;
            (iface, *first)
        }
        Choice::Pattern(pattern) => candidates
            .filter(|i| pattern.0.is_match(&i.name))
            .find_map(|i| i.ipv4.first().map(|a| (i, *a)))
            .ok_or_else(|| UnderlayError::NoMatch(pattern.to_string()))?,
        Choice::NodeInternalIp => {
            let ip = node_internal_ip.ok_or(UnderlayError::NoNodeAddress)?;
            candidates
                .filter_map(|i| i.ipv4.iter().find(|(a, _)| *a == ip).map(|a| (i, *a)))
                .next()
                .ok_or(UnderlayError::NodeAddressNotLocal(ip))?
        }
    };
    let (iface, (node_ip, prefix)) = chosen;
    let node_ipv6 = iface
        .ipv6
        .iter()
        .copied()
        .find(|(a, _)| !a.is_unicast_link_local());
    Ok(Underlay {
        name: iface.name.clone(),
        node_ip,
        prefix,
        node_ipv6,
        mtu: iface.mtu,
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

    fn pattern(re: &str) -> InterfacePattern {
        re.parse().expect("a valid pattern")
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
        let facts = select(
            &all(),
            &Choice::NodeInternalIp,
            Some(Ipv4Addr::new(10, 0, 1, 7)),
        )
        .expect("found");
        assert_eq!(
            (facts.name.as_str(), facts.mtu, facts.prefix),
            ("ens5", 9001, 24)
        );
        assert_eq!(
            select(&all(), &Choice::Name("docker0".into()), None)
                .expect("found")
                .node_ip,
            Ipv4Addr::new(172, 17, 0, 1)
        );
        assert_eq!(
            select(&all(), &Choice::Pattern(pattern("^(eth|ens)[0-9]+$")), None)
                .expect("found")
                .name,
            "ens5"
        );
        assert_eq!(
            select(&all(), &Choice::Pattern(pattern("ens.*")), None)
                .expect("found")
                .name,
            "ens5"
        );
    }

    #[test]
    fn clear_errors_when_nothing_resolves() {
        assert_eq!(
            select(&all(), &Choice::Name("eth9".into()), None)
                .unwrap_err()
                .to_string(),
            "--iface eth9: no such interface"
        );
        assert!(matches!(
            select(&all(), &Choice::Pattern(pattern("^wlan[0-9]$")), None),
            Err(UnderlayError::NoMatch(_))
        ));
        let err = select(
            &all(),
            &Choice::NodeInternalIp,
            Some(Ipv4Addr::new(10, 9, 9, 9)),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("set --iface or --iface-regex"),
            "{err}"
        );
        assert!(matches!(
            select(&[iface("eth0", None)], &Choice::Name("eth0".into()), None),
            Err(UnderlayError::NoAddress(_))
        ));
    }

    #[test]
    fn no_internal_ip_yet_is_named() {
        assert_eq!(
            select(&all(), &Choice::NodeInternalIp, None),
            Err(UnderlayError::NoNodeAddress)
        );
    }

    #[test]
    fn a_bad_pattern_is_refused_when_parsed() {
        assert!("^(eth".parse::<InterfacePattern>().is_err());
    }

    #[test]
    fn tartan_devices_are_never_the_underlay() {
        assert!(matches!(
            select(
                &all(),
                &Choice::NodeInternalIp,
                Some(Ipv4Addr::new(10, 244, 1, 1))
            ),
            Err(UnderlayError::NodeAddressNotLocal(_))
        ));
    }
}
