//! Permanent neighbours on the VXLAN device (peer subnet's next hop -> peer VTEP MAC).

use std::net::IpAddr;

use super::super::observe::Observed;
use super::entries::{self, Kind};
use super::{Gone, Op};
use crate::plan::{DesiredState, NeighbourSpec};

/// Keyed by the next hop on its device.
pub(super) fn kind() -> Kind<NeighbourSpec, IpAddr> {
    Kind {
        key: |e: &NeighbourSpec| (e.device.as_str(), e.address),
        add: Op::AddNeighbour,
        delete: Op::DelNeighbour,
    }
}

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    entries::diff(&desired.neighbours, &observed.neighbours, gone, kind())
}
