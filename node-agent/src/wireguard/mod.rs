//! The wireguard backend: the udp backend's TUN datapath (vnet headers,
//! GSO/GRO trains, sendmmsg/recvmmsg, one queue per core, a lock-free peer
//! table) speaking the WireGuard protocol, so pod traffic between nodes is
//! encrypted on kernels without the WireGuard module.
//!
//! The protocol (Noise IK handshake, sessions, replay window, timers, cookie
//! rate limit) is boringtun's `noise` module (Cloudflare, maintained, used by
//! their WARP clients), without its device layer: Tartan brings its own.
//!
//! ```text
//!  keys                 this node's key pair, in a file on the node
//!  peers                subnet table + one state machine per peer, kept across updates
//!  receive              one datagram through a state machine: pure, property-tested
//!  datapath  timers     the per-queue loops; the clock and first handshakes
//!  metrics              bounded labels only
//! ```

pub mod datapath;
pub mod keys;
pub mod metrics;
pub mod peers;
pub mod receive;
mod send;
mod timers;

#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::{Duration, Instant};

use crate::keeper::Keeper;
use crate::netns::NetNs;
use crate::plan::WireguardSpec;
use crate::udp::sys::{Stop, Threads};
use crate::udp::{Features, open_queues};
use datapath::Queue;
use keys::NodeKey;
use metrics::WireguardMetrics;
use peers::{Factory, WgPeers, WgTable};

/// A running wireguard datapath.
pub struct Engine {
    device: String,
    port: u16,
    peers: WgPeers,
    factory: Arc<Factory>,
    fresh: Sender<Vec<Arc<peers::WgPeer>>>,
    /// The spec the table is built from (wider than the last one while a change settles).
    current: WireguardSpec,
    /// The send loops and the clock: stopped first, so nothing new leaves.
    senders: Threads,
    /// The receive loops: stopped once what peers answer has landed.
    receivers: Threads,
    received: Arc<AtomicU64>,
    pub features: Features,
    /// What the keeper holds across a restart.
    handover: Option<crate::udp::kept::Handover>,
}

/// A stopping engine receives until nothing arrived for this long...
const DRAIN_QUIET: Duration = Duration::from_millis(20);
/// ...or for this long at most (peers that keep sending on their own).
const DRAIN_MAX: Duration = Duration::from_millis(200);

impl Engine {
    /// Opens the TUN and the sockets in `netns`, starts the loops and the
    /// clock, and starts a handshake with every peer.
    pub fn start(
        netns: &NetNs,
        spec: &WireguardSpec,
        key: &NodeKey,
        options: &crate::udp::EngineOptions,
        keeper: Option<&Keeper>,
        metrics: &WireguardMetrics,
    ) -> io::Result<Engine> {
        let opened = open_queues(netns, &spec.tun, options.queues, true, keeper)?;
        let features = opened.features;
        features.record(&metrics.offload);
        tracing::info!(
            device = %spec.tun.device,
            port = spec.tun.port,
            queues = features.tun.queues,
            public_key = %key.public_base64(),
            "wireguard datapath started"
        );
        let factory = Arc::new(Factory::new(key.clone()));
        let peers = WgPeers::default();
        let (table, fresh_peers) =
            WgTable::build(spec, &spec.tun.peers, &WgTable::default(), &factory);
        peers.store(table);
        let (sending, receiving) = (Stop::new()?, Stop::new()?);
        // Declared before the channel: a failed start drops the sender
        // first, then stops and joins what it started.
        let mut receivers = Threads::new(receiving.clone());
        let mut senders = Threads::new(sending.clone());
        let received = Arc::new(AtomicU64::new(0));
        let sockets = opened.sockets;
        let (fresh, fresh_rx) = channel();
        let clock = timers::Clock {
            peers: peers.clone(),
            socket: sockets[0].clone(),
            factory: factory.clone(),
            metrics: metrics.clone(),
            stop: sending.clone(),
            fresh: fresh_rx,
        };
        senders.spawn("tartan-wg-clock".into(), move || clock.run())?;
        for (i, (tun, socket)) in opened.queues.into_iter().zip(sockets).enumerate() {
            let queue = Queue {
                tun,
                socket,
                vnet: features.tun.vnet_hdr,
                peers: peers.clone(),
                metrics: metrics.clone(),
                stop: receiving.clone(),
                busy_poll: options.busy_poll,
                received: received.clone(),
            };
            let sender = Queue {
                stop: sending.clone(),
                ..queue.clone()
            };
            senders.spawn(format!("tartan-wg-tx{i}"), move || sender.send_loop())?;
            receivers.spawn(format!("tartan-wg-rx{i}"), move || queue.receive_loop())?;
        }
        let _ = fresh.send(fresh_peers);
        Ok(Engine {
            device: spec.tun.device.clone(),
            port: spec.tun.port,
            peers,
            factory,
            fresh,
            current: spec.clone(),
            senders,
            receivers,
            received,
            features,
            handover: opened.handover,
        })
    }

    /// What its table is built from now.
    pub fn spec(&self) -> &WireguardSpec {
        &self.current
    }

    /// Whether this engine serves `spec` (else it must be restarted).
    pub fn serves(&self, spec: &WireguardSpec) -> bool {
        self.device == spec.tun.device && self.port == spec.tun.port
    }

    /// A moment after the routes moved: the table holds exactly `spec`'s
    /// peers; sessions of unchanged peers stay.
    pub fn update(&mut self, spec: &WireguardSpec) {
        self.install(spec.clone());
    }

    /// Before the routes change: packets for the old and the new peers both
    /// find their node (see the udp engine's `widen`). What is installed
    /// only grows until [`Engine::update`] narrows it.
    pub fn widen(&mut self, spec: &WireguardSpec) {
        self.install(widened(&self.current, spec));
    }

    /// Swaps in the table for `spec`; new peers are greeted at once.
    fn install(&mut self, spec: WireguardSpec) {
        let previous = self.peers.load_full();
        let (table, fresh) = WgTable::build(&spec, &spec.tun.peers, &previous, &self.factory);
        self.peers.store(table);
        self.current = spec;
        if !fresh.is_empty() {
            let _ = self.fresh.send(fresh);
        }
    }

    /// How many peers the table holds.
    pub fn peer_count(&self) -> usize {
        self.peers.load().len()
    }

    /// Stops the loops and closes the queues; the (persistent) device
    /// stays, and so do the queues and sockets when a keeper holds them.
    ///
    /// The send loops stop first: what pods send from then on waits in the
    /// TUN for the next agent. The receive loops go on until peers fall
    /// quiet, so the answers to what already left are decrypted under the
    /// sessions that only this process knows.
    pub fn stop(mut self) {
        self.stop_sending();
        self.drain();
        self.shutdown();
    }

    /// Stops for good (the backend is gone or moves): the keeper closes its
    /// copies too.
    pub fn retire(mut self) {
        self.shutdown();
        (self.handover.iter()).for_each(crate::udp::kept::Handover::retire);
    }

    /// Its queues and sockets as the keeper holds them, when there is a keeper.
    pub(crate) fn handover(&self) -> Option<&crate::udp::kept::Handover> {
        self.handover.as_ref()
    }

    fn drain(&self) {
        let start = Instant::now();
        let mut seen = self.received.load(Ordering::Relaxed);
        let mut quiet_since = start;
        while start.elapsed() < DRAIN_MAX && quiet_since.elapsed() < DRAIN_QUIET {
            std::thread::sleep(Duration::from_millis(2));
            let now = self.received.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            }
        }
    }

    /// The send loops and the clock stop (the clock sees its channel close
    /// at once); stopping them twice is nothing.
    fn stop_sending(&mut self) {
        self.fresh = channel().0;
        self.senders.stop();
    }

    fn shutdown(&mut self) {
        self.stop_sending();
        self.receivers.stop();
    }
}

/// The spec for both `old` and `new` peers (`new` wins where they differ).
fn widened(old: &WireguardSpec, new: &WireguardSpec) -> WireguardSpec {
    let mut keys = new.keys.clone();
    for (node, key) in &old.keys {
        keys.entry(*node).or_insert(*key);
    }
    WireguardSpec {
        tun: crate::udp::widened(&old.tun, &new.tun),
        keys,
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
