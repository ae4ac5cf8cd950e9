//! FDB entries on the VXLAN device (peer VTEP MAC -> peer node IP).

use super::super::observe::Observed;
use super::entries::{self, Kind};
use super::{Gone, Op};
use crate::plan::{DesiredState, FdbSpec};

/// Keyed by the peer's VTEP MAC on its device.
pub(super) fn kind() -> Kind<FdbSpec, [u8; 6]> {
    Kind {
        key: |e: &FdbSpec| (e.device.as_str(), e.mac),
        add: Op::AddFdb,
        delete: Op::DelFdb,
    }
}

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    entries::diff(&desired.fdb, &observed.fdb, gone, kind())
}
