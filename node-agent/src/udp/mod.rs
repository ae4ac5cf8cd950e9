//! The udp backend: pod packets for other nodes reach the TUN device
//! `tartan0` (route: the cluster CIDR and each udp peer's subnet), the agent
//! sends each as a UDP datagram to the owning node's port 8285, and writes
//! what peers send back into the TUN.
//!
//! Fast because nothing goes one packet per system call: the TUN hands over
//! TCP/UDP super-packets (`IFF_VNET_HDR` + TSO/USO), they leave as UDP GSO
//! trains in one `sendmmsg`, arrive GRO'd through `recvmmsg`, and are merged
//! back into super-packets for the TUN; one queue and socket per core. Each
//! feature falls back cleanly when the kernel lacks it, and the
//! `tartan_agent_udp_offload` metric says what is in use.
//!
//! ```text
//!  checksum  packet  vnet      pure: headers, checksums
//!  segment   coalesce batch    pure: super-packet → trains, segments → super-packet
//!  peers                       lock-free subnet → node table
//!  tun  socket  datapath       the kernel side and the per-queue loops
//!  kept                        the queues and sockets through the datapath keeper
//! ```

pub mod auth;
pub mod batch;
pub mod checksum;
pub mod coalesce;
mod datapath;
pub(crate) mod kept;
pub mod metrics;
pub mod packet;
pub mod peers;
pub mod segment;
pub mod socket;
pub mod steer;
pub mod sys;
pub mod tun;
pub mod vnet;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;

use crate::keeper::Keeper;
use crate::netns::NetNs;
use datapath::Queue;
use metrics::UdpMetrics;
use peers::{PeerTable, Peers};
use socket::UdpSocket;

pub use crate::plan::UdpSpec;

/// What the kernel granted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    pub tun: tun::TunFeatures,
    pub gso: bool,
    pub gro: bool,
}

/// A running udp datapath.
pub struct Engine {
    device: String,
    port: u16,
    peers: Peers,
    /// The spec the table is built from (wider than the last one while a change settles).
    current: UdpSpec,
    threads: sys::Threads,
    pub features: Features,
    /// What the keeper holds across a restart.
    handover: Option<kept::Handover>,
}

/// Queues to open: one per core, at most 4.
pub fn default_queues() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// How the datapath runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    pub queues: usize,
    /// `false`: the textbook relay, one packet per system call, no offloads,
    /// one queue: only for benchmarks to compare against.
    pub batched: bool,
    /// Tag every datagram and require tags (every node needs the same key).
    pub key: Option<auth::DatagramKey>,
    /// How long an idle loop keeps polling after a round of a stream (both
    /// TUN backends; zero: it always sleeps at once).
    pub busy_poll: std::time::Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            queues: default_queues(),
            batched: true,
            key: None,
            busy_poll: sys::DEFAULT_BUSY_POLL,
        }
    }
}

impl Features {
    pub(crate) fn of(tun: &tun::Tun, sockets: &[UdpSocket]) -> Features {
        Features {
            tun: tun.features,
            gso: sockets.iter().all(|s| s.gso),
            gro: sockets.iter().all(|s| s.gro),
        }
    }

    /// Sets an offload gauge (`tartan_agent_udp_offload`), so a missing
    /// offload shows on a dashboard.
    pub(crate) fn record(&self, offload: &prometheus::IntGaugeVec) {
        for (feature, on) in [
            ("vnet_hdr", self.tun.vnet_hdr),
            ("tso", self.tun.tso),
            ("uso", self.tun.uso),
            ("udp_gso", self.gso),
            ("udp_gro", self.gro),
        ] {
            offload.with_label_values(&[feature]).set(i64::from(on));
        }
        offload
            .with_label_values(&["queues"])
            .set(self.tun.queues as i64);
    }

    fn log_started(&self, spec: &UdpSpec) {
        tracing::info!(
            device = %spec.device,
            port = spec.port,
            queues = self.tun.queues,
            vnet_hdr = self.tun.vnet_hdr,
            tso = self.tun.tso,
            uso = self.tun.uso,
            udp_gso = self.gso,
            udp_gro = self.gro,
            "udp backend datapath started"
        );
    }
}

/// A datapath's queues, one socket per queue, what the kernel granted, and
/// its side of the keeper.
pub(crate) struct Opened {
    pub queues: Vec<Arc<std::os::fd::OwnedFd>>,
    pub sockets: Vec<Arc<UdpSocket>>,
    pub features: Features,
    pub handover: Option<kept::Handover>,
}

/// `spec`'s TUN with up to `queues` queues in `netns`, and one socket on
/// `spec`'s port for each queue the kernel granted: taken back from
/// `keeper` when it holds them (an agent restart), else opened and handed
/// to it.
pub(crate) fn open_queues(
    netns: &NetNs,
    spec: &UdpSpec,
    queues: usize,
    batched: bool,
    keeper: Option<&Keeper>,
) -> io::Result<Opened> {
    let wanted = kept::Wanted {
        port: spec.port,
        queues,
        offloads: batched,
    };
    let taken = keeper.and_then(|k| kept::take_back(k, netns, &spec.device, wanted));
    let fresh = taken.is_none();
    let (tun, sockets) = match taken {
        Some(taken) => taken,
        None => netns.run(|| -> io::Result<_> {
            let tun = tun::open(&spec.device, queues, batched)?;
            let sockets = (0..tun.queues.len())
                .map(|_| UdpSocket::bind(spec.port, batched))
                .collect::<io::Result<Vec<_>>>()?;
            Ok((tun, sockets))
        })??,
    };
    let features = Features::of(&tun, &sockets);
    let queues: Vec<_> = tun.queues.into_iter().map(Arc::new).collect();
    let sockets: Vec<_> = sockets.into_iter().map(Arc::new).collect();
    let handover = keeper.map(|keeper| kept::Handover {
        keeper: keeper.clone(),
        device: spec.device.clone(),
        wanted,
        features,
        queues: queues.clone(),
        sockets: sockets.clone(),
        // Taken back: the keeper listening now already holds them, so the
        // first follow has nothing to renew (a fresh start hands over below).
        seen: std::sync::Mutex::new(keeper.socket_identity()),
    });
    if fresh {
        handover.iter().for_each(kept::Handover::hand_over);
    }
    Ok(Opened {
        queues,
        sockets,
        features,
        handover,
    })
}

impl Engine {
    /// Opens the TUN and the sockets in `netns` (or takes them back from
    /// `keeper`) and starts the loops.
    pub fn start(
        netns: &NetNs,
        spec: &UdpSpec,
        options: EngineOptions,
        keeper: Option<&Keeper>,
        metrics: &UdpMetrics,
    ) -> io::Result<Engine> {
        let batched = options.batched;
        let queues = if batched { options.queues } else { 1 };
        let opened = open_queues(netns, spec, queues, batched, keeper)?;
        let features = opened.features;
        features.record(&metrics.offload);
        features.log_started(spec);
        let group: Vec<&UdpSocket> = opened.sockets.iter().map(|s| &**s).collect();
        if let Err(e) = steer::steer_by_inner_flow(&group) {
            tracing::warn!(
                error = %e,
                "udp backend: the kernel refused the steering program, so each peer's flows share one queue"
            );
        }
        let peers = Peers::default();
        peers.store(PeerTable::new(&spec.peers, &spec.senders, &spec.local));
        let stop = sys::Stop::new()?;
        let mut threads = sys::Threads::new(stop.clone());
        for (i, (tun, socket)) in opened.queues.into_iter().zip(opened.sockets).enumerate() {
            let queue = Queue {
                tun,
                socket,
                vnet: features.tun.vnet_hdr,
                batched,
                port: spec.port,
                peers: peers.clone(),
                key: options.key,
                metrics: metrics.clone(),
                stop: stop.clone(),
                busy_poll: if batched {
                    options.busy_poll
                } else {
                    std::time::Duration::ZERO
                },
            };
            let sender = queue.clone();
            threads.spawn(format!("tartan-udp-tx{i}"), move || sender.send_loop())?;
            threads.spawn(format!("tartan-udp-rx{i}"), move || queue.receive_loop())?;
        }
        Ok(Engine {
            device: spec.device.clone(),
            port: spec.port,
            peers,
            current: spec.clone(),
            threads,
            features,
            handover: opened.handover,
        })
    }

    /// What its table is built from now.
    pub fn spec(&self) -> &UdpSpec {
        &self.current
    }

    /// Whether this engine serves `spec` (else it must be restarted).
    pub fn serves(&self, spec: &UdpSpec) -> bool {
        self.device == spec.device && self.port == spec.port
    }

    /// A moment after the routes moved: exactly `spec`'s peer table; traffic
    /// never pauses.
    pub fn update(&mut self, spec: &UdpSpec) {
        self.peers
            .store(PeerTable::new(&spec.peers, &spec.senders, &spec.local));
        self.current = spec.clone();
    }

    /// Before the routes change: the table serves both the old and the new
    /// peers, so a packet routed to the TUN a moment before its peer moves to
    /// another backend still finds its node. What is installed only grows
    /// until [`Engine::update`] narrows it, a moment after the routes moved.
    pub fn widen(&mut self, spec: &UdpSpec) {
        let wide = widened(&self.current, spec);
        self.peers
            .store(PeerTable::new(&wide.peers, &wide.senders, &wide.local));
        self.current = wide;
    }

    /// Stops the loops and closes the queues; the (persistent) device stays.
    /// Stops the loops; the keeper, if any, still holds the queues and
    /// sockets for the next agent (a restart).
    pub fn stop(mut self) {
        self.threads.stop();
    }

    /// Stops the loops for good (the backend is gone or moves): the keeper
    /// closes its copies too.
    pub fn retire(mut self) {
        self.threads.stop();
        self.handover.iter().for_each(kept::Handover::retire);
    }

    /// Its queues and sockets as the keeper holds them, when there is a keeper.
    pub(crate) fn handover(&self) -> Option<&kept::Handover> {
        self.handover.as_ref()
    }
}

/// The spec for both `old` and `new` peers (`new` wins where they differ).
pub(crate) fn widened(old: &UdpSpec, new: &UdpSpec) -> UdpSpec {
    let mut wide = new.clone();
    for (subnet, node) in &old.peers {
        wide.peers.entry(*subnet).or_insert(*node);
    }
    for (subnet, node) in &old.senders {
        wide.senders.entry(*subnet).or_insert(*node);
    }
    wide
}
