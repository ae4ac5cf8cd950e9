//! Permanent neighbours on the VXLAN device (peer subnet's next hop -> peer
//! VTEP MAC): added or replaced where they differ, removed where no longer
//! wanted. The entries of a recreated or retiring device go with it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::super::observe::Observed;
use super::{Gone, Op};
use crate::plan::DesiredState;

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    let mut ops = Vec::new();
    for entry in &desired.neighbours {
        let have = observed
            .neighbours
            .get(&(entry.device.clone(), entry.address));
        if gone.contains(&entry.device) || have != Some(entry) {
            ops.push(Op::AddNeighbour(entry.clone()));
        }
    }
    let wanted: BTreeSet<(&str, IpAddr)> = desired
        .neighbours
        .iter()
        .map(|e| (e.device.as_str(), e.address))
        .collect();
    for ((device, address), entry) in &observed.neighbours {
        if !gone.contains(device) && !wanted.contains(&(device.as_str(), *address)) {
            ops.push(Op::DelNeighbour(entry.clone()));
        }
    }
    ops
}
