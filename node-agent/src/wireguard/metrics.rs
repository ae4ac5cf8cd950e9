//! `tartan_agent_wireguard_*`: what the wireguard datapath carried, dropped
//! and negotiated. Labels are bounded: directions, reasons, roles and
//! handshake-age bands, never a peer (at 5,000 nodes a per-peer label would
//! be 5,000 series on every agent). The age of each peer's last handshake is
//! shown as how many peers fall in each band, and the oldest age.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why a datagram or packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// A datagram from an address that is no peer with a key.
    UnknownPeer,
    /// Not a WireGuard message, or a message of the wrong size.
    InvalidPacket,
    /// A handshake whose MAC does not verify (not for our key, or forged).
    InvalidMac,
    /// A handshake that does not decrypt or authenticate, or a stale one.
    BadHandshake,
    /// A data message for a session this node does not have (e.g. keys from
    /// before a restart: a handshake is started at once).
    NoSession,
    /// A data message whose authentication tag does not verify.
    BadTag,
    /// A counter seen before or too old: a replay.
    Replay,
    /// Handshakes refused while under load (cookie sent).
    UnderLoad,
    /// A decrypted packet whose source is not the sending peer's.
    SpoofedSource,
    /// A decrypted packet for an address outside this node's subnets.
    NotLocal,
    /// A decrypted packet that is not a whole IP packet.
    Malformed,
    /// A packet from the TUN for a destination no peer owns.
    NoPeer,
    /// A packet for a peer whose handshake was pending, beyond the 256 its
    /// queue holds.
    QueueFull,
    /// Packets that waited for a handshake that gave up (90 s of retries):
    /// boringtun discards its queue.
    HandshakeExpired,
    /// Datagrams the kernel refused to send.
    SendError,
    /// Packets the TUN refused.
    TunError,
}

impl Drop {
    pub const ALL: [Drop; 16] = [
        Drop::UnknownPeer,
        Drop::InvalidPacket,
        Drop::InvalidMac,
        Drop::BadHandshake,
        Drop::NoSession,
        Drop::BadTag,
        Drop::Replay,
        Drop::UnderLoad,
        Drop::SpoofedSource,
        Drop::NotLocal,
        Drop::Malformed,
        Drop::NoPeer,
        Drop::QueueFull,
        Drop::HandshakeExpired,
        Drop::SendError,
        Drop::TunError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Drop::UnknownPeer => "unknown_peer",
            Drop::InvalidPacket => "invalid_packet",
            Drop::InvalidMac => "invalid_mac",
            Drop::BadHandshake => "bad_handshake",
            Drop::NoSession => "no_session",
            Drop::BadTag => "bad_tag",
            Drop::Replay => "replay",
            Drop::UnderLoad => "under_load",
            Drop::SpoofedSource => "spoofed_source",
            Drop::NotLocal => "not_local",
            Drop::Malformed => "malformed",
            Drop::NoPeer => "no_peer",
            Drop::QueueFull => "queue_full",
            Drop::HandshakeExpired => "handshake_expired",
            Drop::SendError => "send_error",
            Drop::TunError => "tun_error",
        }
    }
}

/// Bands of the age of a peer's last handshake: WireGuard rekeys every 2
/// minutes and gives a session up after 3.
pub const AGE_BANDS: [&str; 3] = ["under_2m", "2m_to_3m", "over_3m_or_never"];

pub fn age_band(age: Option<std::time::Duration>) -> &'static str {
    match age.map(|a| a.as_secs()) {
        Some(s) if s < 120 => AGE_BANDS[0],
        Some(s) if s <= 180 => AGE_BANDS[1],
        _ => AGE_BANDS[2],
    }
}

#[derive(Clone)]
pub struct WireguardMetrics {
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub drops: IntCounterVec,
    pub handshakes: IntCounterVec,
    pub peers: IntGaugeVec,
    pub oldest_handshake: IntGauge,
    pub offload: IntGaugeVec,
}

fn counters(name: &str, help: &str, label: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &[label])
}

impl WireguardMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            packets: counters(
                "tartan_agent_wireguard_packets_total",
                "Inner packets carried by the wireguard backend, by direction (tx: TUN to peer).",
                "direction",
            )?,
            bytes: counters(
                "tartan_agent_wireguard_bytes_total",
                "Inner packet bytes carried by the wireguard backend, by direction.",
                "direction",
            )?,
            drops: counters(
                "tartan_agent_wireguard_drops_total",
                "Datagrams or packets the wireguard backend dropped, by reason (decrypt \
                 failures: bad_tag, replay, no_session, invalid_mac, bad_handshake).",
                "reason",
            )?,
            handshakes: counters(
                "tartan_agent_wireguard_handshakes_total",
                "WireGuard handshakes completed, by this node's role (initiator, responder).",
                "role",
            )?,
            peers: IntGaugeVec::new(
                Opts::new(
                    "tartan_agent_wireguard_peers",
                    "WireGuard peers by the age of their last handshake (under_2m, 2m_to_3m, \
                     over_3m_or_never).",
                ),
                &["handshake_age"],
            )?,
            oldest_handshake: IntGauge::new(
                "tartan_agent_wireguard_oldest_handshake_age_seconds",
                "Age of the oldest last handshake among peers that had one.",
            )?,
            offload: IntGaugeVec::new(
                Opts::new(
                    "tartan_agent_wireguard_offload",
                    "Kernel features the wireguard datapath uses (1) or lacks (0): vnet_hdr, \
                     tso, uso, udp_gso, udp_gro; queues: TUN queues.",
                ),
                &["feature"],
            )?,
        };
        registry.register(Box::new(m.packets.clone()))?;
        registry.register(Box::new(m.bytes.clone()))?;
        registry.register(Box::new(m.drops.clone()))?;
        registry.register(Box::new(m.handshakes.clone()))?;
        registry.register(Box::new(m.peers.clone()))?;
        registry.register(Box::new(m.oldest_handshake.clone()))?;
        registry.register(Box::new(m.offload.clone()))?;
        for direction in ["tx", "rx"] {
            m.packets.with_label_values(&[direction]);
            m.bytes.with_label_values(&[direction]);
        }
        for reason in Drop::ALL {
            m.drops.with_label_values(&[reason.label()]);
        }
        for role in ["initiator", "responder"] {
            m.handshakes.with_label_values(&[role]);
        }
        for band in AGE_BANDS {
            m.peers.with_label_values(&[band]);
        }
        Ok(m)
    }

    pub fn count(&self, reason: Drop, n: u64) {
        if n > 0 {
            self.drops.with_label_values(&[reason.label()]).inc_by(n);
        }
    }

    pub fn direction(&self, direction: &str) -> (IntCounter, IntCounter) {
        (
            self.packets.with_label_values(&[direction]),
            self.bytes.with_label_values(&[direction]),
        )
    }
}
