//! Operations as rtnetlink requests, built with rtnetlink's typed builders.
//! Pure: device names are resolved to indices by the caller's lookup.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{AddressMessageBuilder, LinkBridge, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::diff::Op;
use crate::plan::{FdbSpec, NeighbourSpec, ROUTE_PROTOCOL, RouteSpec};

/// The main table, as route messages carry it.
const MAIN_TABLE: u32 = 254;

/// A request and its `NLM_F_*` flags, or `None` when a device it needs is missing.
pub type Request = (RouteNetlinkMessage, u16);

const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;
const UPSERT: u16 = NLM_F_CREATE | NLM_F_REPLACE;

pub fn request(op: &Op, index: impl Fn(&str) -> Option<u32>) -> Option<Request> {
    Some(match op {
        Op::CreateBridge { name, mtu } => (
            RouteNetlinkMessage::NewLink(LinkBridge::new(name).mtu(*mtu).build()),
            CREATE,
        ),
        Op::CreateVxlan(v) => {
            let mut builder = LinkVxlan::new(&v.name, v.vni)
                .dev(index(&v.underlay)?)
                .port(v.port)
                .learning(false)
                .mtu(v.mtu)
                .address(v.mac.to_vec());
            builder = match v.local {
                IpAddr::V4(ip) => builder.local(ip),
                IpAddr::V6(ip) => builder.local6(ip),
            };
            (RouteNetlinkMessage::NewLink(builder.build()), CREATE)
        }
        Op::SetLink { name, mtu, mac, up } => {
            let mut builder = LinkUnspec::new_with_index(index(name)?);
            if let Some(mtu) = mtu {
                builder = builder.mtu(*mtu);
            }
            if let Some(mac) = mac {
                builder = builder.address(mac.to_vec());
            }
            if *up {
                builder = builder.up();
            }
            (RouteNetlinkMessage::SetLink(builder.build()), NLM_F_ACK)
        }
        Op::DeleteLink { name } => (
            RouteNetlinkMessage::DelLink(LinkUnspec::new_with_index(index(name)?).build()),
            0,
        ),
        Op::DisableTxChecksum { .. } => return None,
        Op::AddAddress { device, address } | Op::DelAddress { device, address } => {
            let message = match address {
                ipnet::IpNet::V4(a) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                    .index(index(device)?)
                    .address(a.addr(), a.prefix_len())
                    .build(),
                ipnet::IpNet::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                    .index(index(device)?)
                    .address(a.addr(), a.prefix_len())
                    .build(),
            };
            if matches!(op, Op::AddAddress { .. }) {
                (RouteNetlinkMessage::NewAddress(message), UPSERT)
            } else {
                (RouteNetlinkMessage::DelAddress(message), 0)
            }
        }
        Op::AddFdb(f) => (
            RouteNetlinkMessage::NewNeighbour(fdb(f, index(&f.device)?)),
            UPSERT,
        ),
        Op::DelFdb(f) => (
            RouteNetlinkMessage::DelNeighbour(fdb(f, index(&f.device)?)),
            0,
        ),
        Op::AddNeighbour(n) => (
            RouteNetlinkMessage::NewNeighbour(neighbour(n, index(&n.device)?)),
            UPSERT,
        ),
        Op::DelNeighbour(n) => (
            RouteNetlinkMessage::DelNeighbour(neighbour(n, index(&n.device)?)),
            0,
        ),
        Op::AddRoute(r) => (
            RouteNetlinkMessage::NewRoute(route(r, index(r.device.name())?)?),
            UPSERT,
        ),
        Op::DelRoute(r) => (
            RouteNetlinkMessage::DelRoute(route(r, index(r.device.name())?)?),
            0,
        ),
    })
}

fn ip_attr(ip: IpAddr) -> NeighbourAttribute {
    NeighbourAttribute::Destination(match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    })
}

/// `bridge fdb replace MAC dev tartan.N dst IP self permanent`
fn fdb(entry: &FdbSpec, ifindex: u32) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Bridge;
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::Permanent;
    message.header.flags = NeighbourFlags::Own;
    message.header.kind = RouteType::Unspec;
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
    message.attributes.push(ip_attr(entry.destination));
    message
}

/// `ip neigh replace IP lladdr MAC dev tartan.N nud permanent`
fn neighbour(entry: &NeighbourSpec, ifindex: u32) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = match entry.address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.ifindex = ifindex;
    message.header.state = NeighbourState::Permanent;
    message.header.kind = RouteType::Unspec;
    message.attributes.push(ip_attr(entry.address));
    message
        .attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
    message
}

/// `ip route replace DST [via GW] dev DEV [onlink] proto 84 metric M`
/// (without a gateway: a device route, scope link).
fn route(spec: &RouteSpec, oif: u32) -> Option<RouteMessage> {
    fn finish<T>(b: RouteMessageBuilder<T>, spec: &RouteSpec, oif: u32) -> RouteMessage {
        let b = b
            .output_interface(oif)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            .priority(spec.metric)
            .table_id(MAIN_TABLE);
        let b = if spec.gateway.is_none() {
            b.scope(RouteScope::Link)
        } else {
            b
        };
        if spec.onlink {
            b.onlink().build()
        } else {
            b.build()
        }
    }
    let message = match (spec.destination, spec.gateway) {
        (ipnet::IpNet::V4(dst), gateway) => {
            let b = RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len());
            let b = match gateway {
                None => b,
                Some(IpAddr::V4(gw)) => b.gateway(gw),
                Some(IpAddr::V6(_)) => return None,
            };
            finish(b, spec, oif)
        }
        (ipnet::IpNet::V6(dst), gateway) => {
            let b = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(dst.addr(), dst.prefix_len());
            let b = match gateway {
                None => b,
                Some(IpAddr::V6(gw)) => b.gateway(gw),
                Some(IpAddr::V4(_)) => return None,
            };
            finish(b, spec, oif)
        }
    };
    Some(message)
}
