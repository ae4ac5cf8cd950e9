//! What the kernel has, parsed from netlink messages into the same shapes the
//! planner produces. Only Tartan's objects are kept: its devices, routes with
//! its protocol number, neighbours and FDB entries on its VXLAN devices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};

use crate::plan::{
    Device, FdbSpec, NeighbourSpec, ROUTE_PROTOCOL, RouteSpec, is_tartan_device, is_vxlan_device,
};

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanAttrs {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<IpAddr>,
    pub underlay_index: Option<u32>,
    pub learning: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub index: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub mtu: Option<u32>,
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    pub vxlan: Option<VxlanAttrs>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every link by name (the underlay's index is needed too).
    pub links: BTreeMap<String, ObservedLink>,
    /// Addresses on Tartan's devices (link-local ones excluded).
    pub addresses: BTreeMap<String, BTreeSet<IpNet>>,
    /// Tartan's routes, by destination.
    pub routes: BTreeMap<IpNet, RouteSpec>,
    /// Permanent neighbours on Tartan's VXLAN devices, by (device, address).
    pub neighbours: BTreeMap<(String, IpAddr), NeighbourSpec>,
    /// FDB entries with a remote on Tartan's VXLAN devices, by (device, MAC).
    pub fdb: BTreeMap<(String, [u8; 6]), FdbSpec>,
}

impl Observed {
    pub fn name_of(&self, index: u32) -> Option<&str> {
        self.links
            .values()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }
}

/// Index → name of every link, for resolving the other messages.
pub type Names = BTreeMap<u32, String>;

pub fn parse_link(message: &LinkMessage) -> Option<ObservedLink> {
    let mut link = ObservedLink {
        index: message.header.index,
        name: String::new(),
        kind: None,
        mtu: None,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: None,
        vxlan: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            LinkAttribute::Address(mac) => link.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.clone()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(parse_vxlan(attrs))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (!link.name.is_empty()).then_some(link)
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanAttrs {
    let mut out = VxlanAttrs::default();
    for attr in attrs {
        match attr {
            InfoVxlan::Id(v) => out.vni = Some(*v),
            InfoVxlan::Port(p) => out.port = Some(*p),
            InfoVxlan::Local(ip) => out.local = Some(IpAddr::V4(*ip)),
            InfoVxlan::Local6(ip) => out.local = Some(IpAddr::V6(*ip)),
            InfoVxlan::Link(i) => out.underlay_index = Some(*i),
            InfoVxlan::Learning(l) => out.learning = Some(*l),
            _ => {}
        }
    }
    out
}

/// An address on one of Tartan's devices: (device, prefix).
pub fn parse_address(message: &AddressMessage, names: &Names) -> Option<(String, IpNet)> {
    let device = names.get(&message.header.index)?;
    if !is_tartan_device(device) {
        return None;
    }
    let ip = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let ip = ip.or_else(|| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    if let IpAddr::V6(v6) = ip
        && v6.is_unicast_link_local()
    {
        return None;
    }
    Some((
        device.clone(),
        IpNet::new(ip, message.header.prefix_len).ok()?,
    ))
}

/// One of Tartan's routes (its protocol, the main table), with device names resolved.
pub fn parse_route(message: &RouteMessage, names: &Names) -> Option<RouteSpec> {
    if u8::from(message.header.protocol) != ROUTE_PROTOCOL {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::Destination(a) => destination = route_ip(a),
            RouteAttribute::Gateway(a) => gateway = route_ip(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return None;
    }
    let destination = IpNet::new(destination?, message.header.destination_prefix_length).ok()?;
    let device = Device::from_name(names.get(&oif?)?);
    Some(RouteSpec {
        destination,
        gateway,
        device,
        onlink: message.header.flags.contains(RouteFlags::Onlink),
        metric,
    })
}

/// A route message's destination prefix, whoever owns the route.
pub fn route_destination(message: &RouteMessage) -> Option<IpNet> {
    let ip = message.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    })?;
    IpNet::new(ip, message.header.destination_prefix_length).ok()
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

pub fn neighbour_parts(message: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            // AF_BRIDGE (FDB) messages carry the remote as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) => {
                ip = match raw.len() {
                    4 => <[u8; 4]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(raw.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                }
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(l.as_slice()).ok(),
            _ => {}
        }
    }
    (ip, mac)
}

/// A permanent IP neighbour on a Tartan VXLAN device.
pub fn parse_neighbour(message: &NeighbourMessage, names: &Names) -> Option<NeighbourSpec> {
    let device = names.get(&message.header.ifindex)?;
    if !is_vxlan_device(device) || message.header.state != NeighbourState::Permanent {
        return None;
    }
    let (address, mac) = neighbour_parts(message);
    Some(NeighbourSpec {
        device: device.clone(),
        address: address?,
        mac: mac?,
    })
}

/// An FDB entry with a remote on a Tartan VXLAN device (AF_BRIDGE neighbour).
pub fn parse_fdb(message: &NeighbourMessage, names: &Names) -> Option<FdbSpec> {
    let device = names.get(&message.header.ifindex)?;
    if !is_vxlan_device(device) {
        return None;
    }
    let (destination, mac) = neighbour_parts(message);
    Some(FdbSpec {
        device: device.clone(),
        mac: mac?,
        destination: destination?,
    })
}
