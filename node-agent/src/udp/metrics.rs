//! `tartan_agent_udp_*`: what the udp backend's datapath carried and dropped.
//! Counted per batch, never per packet, so metrics cost nothing on the hot path.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Why a packet or datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A datagram from an address that is no known peer.
    UnknownPeer,
    /// An inner packet for an address outside this node's subnets.
    NotLocal,
    /// Truncated, not IP, or lengths that do not add up.
    Malformed,
    /// A packet from the TUN for a destination no peer owns.
    NoPeer,
    /// The kernel refused a send.
    SendError,
    /// The kernel refused a write to the TUN.
    TunError,
    /// A datagram whose tag does not verify (`--udp-key-file`).
    BadTag,
    /// An inner packet whose source is outside the sending peer's subnets.
    SpoofedSource,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::UnknownPeer,
        DropReason::NotLocal,
        DropReason::Malformed,
        DropReason::NoPeer,
        DropReason::SendError,
        DropReason::TunError,
        DropReason::BadTag,
        DropReason::SpoofedSource,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::NotLocal => "not_local",
            DropReason::Malformed => "malformed",
            DropReason::NoPeer => "no_peer",
            DropReason::SendError => "send_error",
            DropReason::TunError => "tun_error",
            DropReason::BadTag => "bad_tag",
            DropReason::SpoofedSource => "spoofed_source",
        }
    }
}

#[derive(Clone)]
pub struct UdpMetrics {
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub drops: IntCounterVec,
    pub batch: prometheus::HistogramVec,
    pub offload: IntGaugeVec,
}

/// Counters for one direction, resolved once.
pub struct Direction {
    pub packets: IntCounter,
    pub bytes: IntCounter,
    pub batch: Histogram,
}

impl UdpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            packets: IntCounterVec::new(
                Opts::new(
                    "tartan_agent_udp_packets_total",
                    "Inner packets carried by the udp backend, by direction (tx: TUN to peer).",
                ),
                &["direction"],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "tartan_agent_udp_bytes_total",
                    "Inner packet bytes carried by the udp backend, by direction.",
                ),
                &["direction"],
            )?,
            drops: IntCounterVec::new(
                Opts::new(
                    "tartan_agent_udp_drops_total",
                    "Packets or datagrams the udp backend dropped, by reason.",
                ),
                &["reason"],
            )?,
            batch: prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "tartan_agent_udp_batch_packets",
                    "Inner packets moved per send or receive system call, by direction.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
                &["direction"],
            )?,
            offload: IntGaugeVec::new(
                Opts::new(
                    "tartan_agent_udp_offload",
                    "Kernel features the udp backend uses (1) or lacks (0): vnet_hdr, tso, uso, \
                     udp_gso, udp_gro; queues: TUN queues.",
                ),
                &["feature"],
            )?,
        };
        registry.register(Box::new(m.packets.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.drops.clone()))?;
        registry.register(Box::new(m.batch.clone()))?;
        registry.register(Box::new(m.offload.clone()))?;
        for direction in ["tx", "rx"] {
            m.direction(direction);
        }
        for reason in DropReason::ALL {
            m.drops.with_label_values(&[reason.label()]);
        }
        Ok(m)
    }

    pub fn direction(&self, direction: &str) -> Direction {
        Direction {
            packets: self.packets.with_label_values(&[direction]),
            bytes: self.bytes.with_label_values(&[direction]),
            batch: self.batch.with_label_values(&[direction]),
        }
    }

    pub fn drop(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.drops.with_label_values(&[reason.label()]).inc_by(n);
        }
    }
}
