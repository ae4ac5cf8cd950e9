//! Desired against observed: the operations that turn one into the other.
//! Pure. Ordered make-before-break: devices and addresses first, then FDB and
//! neighbours (so a new route's next hop resolves at once), then routes
//! (replaced in place, so a peer switching backend never loses its route),
//! and only then removals, routes before the entries they used.
//!
//! One file per object kind, each giving its additions and removals; [`diff`]
//! puts them in that order (by [`Op::phase`]) and the retired devices last.
//!
//! ```text
//!   links       bridge, VXLAN device, TUN: set, recreate, retire (last)
//!   addresses   on the bridge, the VXLAN device and the TUN
//!   fdb         MAC -> node IP on the VXLAN device
//!   neighbours  next hop -> MAC on the VXLAN device
//!   routes      by destination: replaced in place, never removed first
//! ```

mod addresses;
mod entries;
mod fdb;
mod links;
mod neighbours;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use ipnet::IpNet;

use super::observe::Observed;
use crate::plan::{DesiredState, FdbSpec, NeighbourSpec, PeerDelta, RouteSpec, VxlanSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateBridge {
        name: String,
        mtu: u32,
    },
    CreateVxlan(VxlanSpec),
    /// Mutable link attributes: MTU, MAC, up.
    SetLink {
        name: String,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        up: bool,
    },
    DisableTxChecksum {
        name: String,
    },
    DeleteLink {
        name: String,
    },
    AddAddress {
        device: String,
        address: IpNet,
    },
    DelAddress {
        device: String,
        address: IpNet,
    },
    AddFdb(FdbSpec),
    DelFdb(FdbSpec),
    AddNeighbour(NeighbourSpec),
    DelNeighbour(NeighbourSpec),
    /// Add, or replace the route to the same destination.
    AddRoute(RouteSpec),
    DelRoute(RouteSpec),
}

impl Op {
    /// Operations of one phase are independent and may be sent together.
    pub fn phase(&self) -> u8 {
        match self {
            Op::DeleteLink { .. } | Op::CreateBridge { .. } | Op::CreateVxlan(_) => 0,
            Op::SetLink { .. } | Op::DisableTxChecksum { .. } => 1,
            Op::AddAddress { .. } => 2,
            Op::AddFdb(_) | Op::AddNeighbour(_) => 3,
            Op::AddRoute(_) => 4,
            Op::DelRoute(_) => 5,
            Op::DelNeighbour(_) | Op::DelFdb(_) => 6,
            Op::DelAddress { .. } => 7,
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateBridge { .. }
            | Op::CreateVxlan(_)
            | Op::SetLink { .. }
            | Op::DeleteLink { .. } => "link",
            Op::DisableTxChecksum { .. } => "offload",
            Op::AddAddress { .. } | Op::DelAddress { .. } => "address",
            Op::AddFdb(_) | Op::DelFdb(_) => "fdb",
            Op::AddNeighbour(_) | Op::DelNeighbour(_) => "neighbour",
            Op::AddRoute(_) | Op::DelRoute(_) => "route",
        }
    }
}

/// The operations that make `observed` into `desired`, in a safe order.
/// Devices that are Tartan's but not desired are removed, except the bridge
/// (pods hang off it) and the udp backend's TUN (owned by that backend).
pub fn diff(desired: &DesiredState, observed: &Observed) -> Vec<Op> {
    let links = links::diff(desired, observed);
    let gone = &links.gone;
    let mut ops = links.ops;
    ops.extend(addresses::diff(desired, observed, gone));
    ops.extend(fdb::diff(desired, observed, gone));
    ops.extend(neighbours::diff(desired, observed, gone));
    ops.extend(routes::diff(desired, observed, gone));
    // Stable: within a phase, each kind keeps the order it was listed in.
    ops.sort_by_key(Op::phase);
    // Old devices go last, after everything that used them was moved off.
    ops.extend(links.retired);
    ops
}

/// Tartan's devices that take their addresses, routes, neighbours and FDB
/// entries with them in this diff: deleted and created again at the start
/// (their objects must be added anew), or retiring at the end. Routes through
/// a retiring device are still removed first, so the route that replaces them
/// (BIRD's, with a higher metric) carries traffic before the device and its
/// FDB are torn down.
#[derive(Debug, Default)]
struct Gone {
    recreated: BTreeSet<String>,
    retiring: BTreeSet<String>,
}

impl Gone {
    /// Recreated or retiring: what the kernel holds on it now does not count.
    fn contains(&self, device: &str) -> bool {
        self.recreated.contains(device) || self.retiring.contains(device)
    }

    /// Recreated at the start: its routes vanish with it, no removal needed.
    fn recreated(&self, device: &str) -> bool {
        self.recreated.contains(device)
    }
}

/// The operations of one peer's change: the same diff, with the objects it
/// removes standing for what the kernel has (an add under the key of a removed
/// object replaces it, so that one is not deleted) and no device going.
pub fn peer_ops(delta: &PeerDelta) -> Vec<Op> {
    let (add, remove) = (&delta.add, &delta.remove);
    let none = Gone::default();
    let fdb = entries::keyed(&remove.fdb, fdb::kind().key);
    let neighbours = entries::keyed(&remove.neighbours, neighbours::kind().key);
    let routes = (remove.routes.iter())
        .map(|r| (r.destination, r.clone()))
        .collect();
    let mut ops = entries::diff(&add.fdb, &fdb, &none, fdb::kind());
    ops.extend(entries::diff(
        &add.neighbours,
        &neighbours,
        &none,
        neighbours::kind(),
    ));
    ops.extend(routes::ops(&add.routes, &routes, &none));
    ops.sort_by_key(Op::phase);
    ops
}
