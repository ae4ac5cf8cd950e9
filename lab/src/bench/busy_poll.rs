//! What busy polling buys the TUN backends: the same path with it and with
//! it off (an idle datapath thread then sleeps at once), each on a fresh
//! two-node lab, in turn, so both see the same noise: the best of each.

use tartan_crds::BackendType;

use super::{Throughput, lab_throughput};
use crate::state::UdpDatapath;

/// The bench row: the path with polling off, and its ratio to the path with it.
pub fn row(
    name: &str,
    backend: BackendType,
    seconds: u32,
    rounds: usize,
) -> anyhow::Result<Throughput> {
    let (mut with, mut without) = (0f64, 0f64);
    for _ in 0..rounds {
        let on = lab_throughput(name, backend, false, UdpDatapath::Batched, seconds)?;
        with = with.max(on);
        let off = lab_throughput(name, backend, false, UdpDatapath::NoBusyPoll, seconds)?;
        without = without.max(off);
    }
    Ok(Throughput {
        label: format!(
            "tartan {backend} with busy polling off: {:.2} of the same path with it ({with:.2} Gbit/s; best of {rounds} each, alternating)",
            without / with
        ),
        gbps: without,
    })
}
