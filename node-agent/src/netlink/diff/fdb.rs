//! FDB entries on the VXLAN device (peer VTEP MAC -> peer node IP): added or
//! replaced where they differ, removed where no longer wanted. The entries of
//! a recreated or retiring device go with it.

use std::collections::BTreeSet;

use super::super::observe::Observed;
use super::{Gone, Op};
use crate::plan::DesiredState;

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    let mut ops = Vec::new();
    for entry in &desired.fdb {
        let have = observed.fdb.get(&(entry.device.clone(), entry.mac));
        if gone.contains(&entry.device) || have != Some(entry) {
            ops.push(Op::AddFdb(entry.clone()));
        }
    }
    let wanted: BTreeSet<(&str, [u8; 6])> = desired
        .fdb
        .iter()
        .map(|e| (e.device.as_str(), e.mac))
        .collect();
    for ((device, mac), entry) in &observed.fdb {
        if !gone.contains(device) && !wanted.contains(&(device.as_str(), *mac)) {
            ops.push(Op::DelFdb(entry.clone()));
        }
    }
    ops
}
