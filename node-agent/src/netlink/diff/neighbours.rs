//! Permanent neighbours on the VXLAN device (peer subnet's next hop -> peer VTEP MAC).

use super::super::observe::Observed;
use super::entries::{self, Kind};
use super::{Gone, Op};
use crate::plan::{DesiredState, NeighbourSpec};

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    let kind = Kind {
        key: |e: &NeighbourSpec| (e.device.as_str(), e.address),
        add: Op::AddNeighbour,
        delete: Op::DelNeighbour,
    };
    entries::diff(&desired.neighbours, &observed.neighbours, gone, kind)
}
