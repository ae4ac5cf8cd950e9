//! Several TCP streams between the same two pods: whether a TUN backend
//! spreads one peer's flows over its queues. One stream is one queue, so
//! the one-stream rows cannot show it; kernel VXLAN runs as many streams.

use tartan_crds::BackendType;

use super::{Throughput, lab_throughput_and_cpu};
use crate::state::UdpDatapath;

/// Parallel streams in these rows (`iperf3 -P`).
pub const STREAMS: u32 = 4;

/// The bench row: `backend` with [`STREAMS`] streams on a fresh two-node
/// lab, and its ratio to kernel VXLAN with as many (`kernel_vxlan`).
pub fn row(
    name: &str,
    backend: BackendType,
    seconds: u32,
    kernel_vxlan: f64,
) -> anyhow::Result<Throughput> {
    let (run, _) =
        lab_throughput_and_cpu(name, backend, false, UdpDatapath::Batched, seconds, STREAMS)?;
    Ok(Throughput {
        label: format!(
            "tartan {backend}, {STREAMS} streams between the same two pods: {:.2} of kernel VXLAN with {STREAMS} ({kernel_vxlan:.2} Gbit/s)",
            run.gbps / kernel_vxlan
        ),
        gbps: run.gbps,
    })
}
