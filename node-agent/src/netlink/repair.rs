//! The netlink layer's targeted drift repair: a [`monitor`](super::monitor)
//! notification about one of Tartan's objects becomes the one [`Op`] that
//! puts it back, so drift is undone at once instead of at the next resync.
//! Pure, like [`diff`](super::diff). Link changes and lost notifications ask
//! for a full reconcile instead.

use std::collections::BTreeSet;

use netlink_packet_route::RouteNetlinkMessage;

use super::Op;
use super::monitor::Change;
use super::observe::{self, Names};
use crate::plan::{DesiredState, is_tartan_device};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    pub ops: Vec<Op>,
    /// A device changed or notifications were lost: diff everything.
    pub full: bool,
}

pub fn repairs(
    desired: &DesiredState,
    names: &Names,
    events: &[(Change, RouteNetlinkMessage)],
) -> Repairs {
    let mut out = Repairs::default();
    // Indexed once per burst: a deleted device can bring thousands of events.
    let routes: std::collections::BTreeMap<ipnet::IpNet, &crate::plan::RouteSpec> =
        desired.routes.iter().map(|r| (r.destination, r)).collect();
    let fdb: std::collections::BTreeMap<(&str, [u8; 6]), &crate::plan::FdbSpec> = desired
        .fdb
        .iter()
        .map(|f| ((f.device.as_str(), f.mac), f))
        .collect();
    let neighbours: std::collections::BTreeMap<
        (&str, std::net::IpAddr),
        &crate::plan::NeighbourSpec,
    > = desired
        .neighbours
        .iter()
        .map(|n| ((n.device.as_str(), n.address), n))
        .collect();
    let mut seen = BTreeSet::new();
    let mut push = |op: Op, out: &mut Repairs| {
        let key = format!("{op:?}");
        if seen.insert(key) {
            out.ops.push(op);
        }
    };
    for (change, message) in events {
        match (change, message) {
            (Change::Overrun, _) => out.full = true,
            (Change::Link, RouteNetlinkMessage::DelLink(m))
            | (Change::Link, RouteNetlinkMessage::NewLink(m)) => {
                let Some(link) = observe::parse_link(m) else {
                    continue;
                };
                if !is_tartan_device(&link.name) {
                    continue;
                }
                let deleted = matches!(message, RouteNetlinkMessage::DelLink(_));
                let bridge_off = link.name == desired.bridge.name
                    && (!link.up || link.mtu != Some(desired.bridge.mtu));
                let vxlan_off = desired.vxlan.as_ref().is_some_and(|v| {
                    v.name == link.name
                        && (!link.up || link.mtu != Some(v.mtu) || link.mac != Some(v.mac))
                });
                if deleted || bridge_off || vxlan_off {
                    out.full = true;
                }
            }
            (
                Change::Route,
                RouteNetlinkMessage::DelRoute(m) | RouteNetlinkMessage::NewRoute(m),
            ) => {
                let Some(dst) = observe::route_destination(m) else {
                    continue;
                };
                let Some(want) = routes.get(&dst).copied() else {
                    continue;
                };
                let have = observe::parse_route(m, names);
                let lost = match message {
                    RouteNetlinkMessage::DelRoute(_) => have.is_some(),
                    _ => have.as_ref() != Some(want),
                };
                if lost {
                    push(Op::AddRoute(want.clone()), &mut out);
                }
            }
            (
                Change::Neighbour,
                RouteNetlinkMessage::DelNeighbour(m) | RouteNetlinkMessage::NewNeighbour(m),
            ) => {
                let deleted = matches!(message, RouteNetlinkMessage::DelNeighbour(_));
                if m.header.family == netlink_packet_route::AddressFamily::Bridge {
                    let Some(have) = observe::parse_fdb(m, names) else {
                        continue;
                    };
                    if let Some(want) = fdb.get(&(have.device.as_str(), have.mac)).copied()
                        && (deleted || &have != want)
                    {
                        push(Op::AddFdb(want.clone()), &mut out);
                    }
                } else {
                    let Some(device) = names.get(&m.header.ifindex) else {
                        continue;
                    };
                    let Some(address) = observe::neighbour_parts(m).0 else {
                        continue;
                    };
                    let Some(want) = neighbours.get(&(device.as_str(), address)).copied() else {
                        continue;
                    };
                    let have = observe::parse_neighbour(m, names);
                    if deleted || have.as_ref() != Some(want) {
                        push(Op::AddNeighbour(want.clone()), &mut out);
                    }
                }
            }
            (Change::Address, RouteNetlinkMessage::DelAddress(m)) => {
                let Some((device, address)) = observe::parse_address(m, names) else {
                    continue;
                };
                let wanted = (device == desired.bridge.name
                    && desired.bridge.addresses.contains(&address))
                    || desired
                        .vxlan
                        .as_ref()
                        .is_some_and(|v| v.name == device && v.addresses.contains(&address));
                if wanted {
                    push(Op::AddAddress { device, address }, &mut out);
                }
            }
            _ => {}
        }
    }
    out
}
