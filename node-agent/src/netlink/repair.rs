//! The netlink layer's targeted drift repair: a [`monitor`](super::monitor)
//! notification about one of Tartan's objects becomes the one [`Op`] that
//! puts it back, so drift is undone at once instead of at the next resync.
//! Pure, like [`diff`](super::diff). Link changes and lost notifications ask
//! for a full reconcile instead.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::Op;
use super::monitor::Change;
use super::observe::{self, Names};
use crate::plan::{DesiredState, FdbSpec, NeighbourSpec, RouteSpec, is_tartan_device};

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
    let wanted = Wanted::new(desired);
    // A burst can report one object many times; it is put back once.
    let mut seen = BTreeSet::new();
    for (change, message) in events {
        let deleted = is_deletion(message);
        let op = match (change, message) {
            (Change::Overrun, _) => {
                out.full = true;
                None
            }
            (Change::Link, RouteNetlinkMessage::DelLink(m) | RouteNetlinkMessage::NewLink(m)) => {
                out.full |= link_drifted(desired, m, deleted);
                None
            }
            (
                Change::Route,
                RouteNetlinkMessage::DelRoute(m) | RouteNetlinkMessage::NewRoute(m),
            ) => route_repair(&wanted.routes, names, m, deleted),
            (
                Change::Neighbour,
                RouteNetlinkMessage::DelNeighbour(m) | RouteNetlinkMessage::NewNeighbour(m),
            ) => {
                if m.header.family == AddressFamily::Bridge {
                    fdb_repair(&wanted.fdb, names, m, deleted)
                } else {
                    neighbour_repair(&wanted.neighbours, names, m, deleted)
                }
            }
            (Change::Address, RouteNetlinkMessage::DelAddress(m)) => {
                address_repair(desired, names, m)
            }
            _ => None,
        };
        if let Some(op) = op
            && seen.insert(format!("{op:?}"))
        {
            out.ops.push(op);
        }
    }
    out
}

/// The desired objects by the key a notification carries, indexed once per
/// burst: a deleted device can bring thousands of events.
struct Wanted<'a> {
    routes: BTreeMap<IpNet, &'a RouteSpec>,
    neighbours: BTreeMap<(&'a str, IpAddr), &'a NeighbourSpec>,
    fdb: BTreeMap<(&'a str, [u8; 6]), &'a FdbSpec>,
}

impl<'a> Wanted<'a> {
    fn new(desired: &'a DesiredState) -> Self {
        Wanted {
            routes: desired.routes.iter().map(|r| (r.destination, r)).collect(),
            neighbours: desired
                .neighbours
                .iter()
                .map(|n| ((n.device.as_str(), n.address), n))
                .collect(),
            fdb: desired
                .fdb
                .iter()
                .map(|f| ((f.device.as_str(), f.mac), f))
                .collect(),
        }
    }
}

fn is_deletion(message: &RouteNetlinkMessage) -> bool {
    matches!(
        message,
        RouteNetlinkMessage::DelLink(_)
            | RouteNetlinkMessage::DelAddress(_)
            | RouteNetlinkMessage::DelRoute(_)
            | RouteNetlinkMessage::DelNeighbour(_)
    )
}

/// Whether a link notification calls for a full reconcile: one of our
/// devices went away (taking its addresses, routes and neighbours with it),
/// or the bridge or VXLAN device is down or misconfigured.
fn link_drifted(desired: &DesiredState, m: &LinkMessage, deleted: bool) -> bool {
    let Some(link) = observe::parse_link(m) else {
        return false;
    };
    if !is_tartan_device(&link.name) {
        return false;
    }
    let bridge_off =
        link.name == desired.bridge.name && (!link.up || link.mtu != Some(desired.bridge.mtu));
    let vxlan_off = desired.vxlan.as_ref().is_some_and(|v| {
        v.name == link.name && (!link.up || link.mtu != Some(v.mtu) || link.mac != Some(v.mac))
    });
    deleted || bridge_off || vxlan_off
}

/// Puts back a desired route that was removed or changed. A deletion only
/// counts when the route deleted was ours: another route to the same
/// destination going away leaves ours in place.
fn route_repair(
    routes: &BTreeMap<IpNet, &RouteSpec>,
    names: &Names,
    m: &RouteMessage,
    deleted: bool,
) -> Option<Op> {
    let dst = observe::route_destination(m)?;
    let want = routes.get(&dst).copied()?;
    let have = observe::parse_route(m, names);
    let lost = if deleted {
        have.is_some()
    } else {
        have.as_ref() != Some(want)
    };
    lost.then(|| Op::AddRoute(want.clone()))
}

/// Puts back a desired FDB entry that was removed or changed.
fn fdb_repair(
    fdb: &BTreeMap<(&str, [u8; 6]), &FdbSpec>,
    names: &Names,
    m: &NeighbourMessage,
    deleted: bool,
) -> Option<Op> {
    let have = observe::parse_fdb(m, names)?;
    let want = fdb.get(&(have.device.as_str(), have.mac)).copied()?;
    (deleted || &have != want).then(|| Op::AddFdb(want.clone()))
}

/// Puts back a desired neighbour entry that was removed or changed.
fn neighbour_repair(
    neighbours: &BTreeMap<(&str, IpAddr), &NeighbourSpec>,
    names: &Names,
    m: &NeighbourMessage,
    deleted: bool,
) -> Option<Op> {
    let device = names.get(&m.header.ifindex)?;
    let address = observe::neighbour_parts(m).0?;
    let want = neighbours.get(&(device.as_str(), address)).copied()?;
    let have = observe::parse_neighbour(m, names);
    (deleted || have.as_ref() != Some(want)).then(|| Op::AddNeighbour(want.clone()))
}

/// Puts back a desired bridge or VXLAN address that was removed.
fn address_repair(desired: &DesiredState, names: &Names, m: &AddressMessage) -> Option<Op> {
    let (device, address) = observe::parse_address(m, names)?;
    let wanted = (device == desired.bridge.name && desired.bridge.addresses.contains(&address))
        || desired
            .vxlan
            .as_ref()
            .is_some_and(|v| v.name == device && v.addresses.contains(&address));
    wanted.then_some(Op::AddAddress { device, address })
}
