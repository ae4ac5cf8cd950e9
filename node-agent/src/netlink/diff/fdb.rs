//! FDB entries on the VXLAN device (peer VTEP MAC -> peer node IP).

use super::super::observe::Observed;
use super::entries::{self, Kind};
use super::{Gone, Op};
use crate::plan::{DesiredState, FdbSpec};

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    let kind = Kind {
        key: |e: &FdbSpec| (e.device.as_str(), e.mac),
        add: Op::AddFdb,
        delete: Op::DelFdb,
    };
    entries::diff(&desired.fdb, &observed.fdb, gone, kind)
}
