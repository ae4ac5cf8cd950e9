//! Tartan's routes, by destination: a changed route is replaced, never
//! removed first, so a peer switching backend never loses its route. Routes
//! through a retiring device are removed explicitly (before the device goes,
//! see [`super::Gone`]); those through a recreated one vanish with it.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::super::observe::Observed;
use super::{Gone, Op};
use crate::plan::{DesiredState, RouteSpec};

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    ops(&desired.routes, &observed.routes, gone)
}

/// `desired` against `observed` (by destination).
pub(super) fn ops(
    desired: &BTreeSet<RouteSpec>,
    observed: &BTreeMap<IpNet, RouteSpec>,
    gone: &Gone,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut wanted = BTreeSet::new();
    for route in desired {
        wanted.insert(route.destination);
        let have = observed.get(&route.destination);
        if gone.contains(route.device.name()) || have != Some(route) {
            ops.push(Op::AddRoute(route.clone()));
        }
    }
    for (destination, route) in observed {
        if !wanted.contains(destination) && !gone.recreated(route.device.name()) {
            ops.push(Op::DelRoute(route.clone()));
        }
    }
    ops
}
