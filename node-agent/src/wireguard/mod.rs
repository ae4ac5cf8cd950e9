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
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};

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
    /// What the table is built from, and what the clock narrows it to once due.
    installed: Arc<Mutex<timers::Installed>>,
    threads: Threads,
    pub features: Features,
}

impl Engine {
    /// Opens the TUN and the sockets in `netns`, starts the loops and the
    /// clock, and starts a handshake with every peer.
    pub fn start(
        netns: &NetNs,
        spec: &WireguardSpec,
        key: &NodeKey,
        queues: usize,
        metrics: &WireguardMetrics,
    ) -> io::Result<Engine> {
        let (tun, sockets) = open_queues(netns, &spec.tun, queues, true)?;
        let features = Features::of(&tun, &sockets);
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
        let stop = Stop::new()?;
        // Declared before the channel: a failed start drops the sender
        // first, then stops and joins what it started.
        let mut threads = Threads::new(stop.clone());
        let sockets: Vec<_> = sockets.into_iter().map(Arc::new).collect();
        let (fresh, fresh_rx) = channel();
        let installed = Arc::new(Mutex::new(timers::Installed {
            spec: spec.clone(),
            narrowing: None,
        }));
        let clock = timers::Clock {
            installed: installed.clone(),
            peers: peers.clone(),
            socket: sockets[0].clone(),
            factory: factory.clone(),
            metrics: metrics.clone(),
            stop: stop.clone(),
            fresh: fresh_rx,
        };
        threads.spawn("tartan-wg-clock".into(), move || clock.run())?;
        for (i, (fd, socket)) in tun.queues.into_iter().zip(sockets).enumerate() {
            let queue = Queue {
                tun: Arc::new(fd),
                socket,
                vnet: features.tun.vnet_hdr,
                peers: peers.clone(),
                metrics: metrics.clone(),
                stop: stop.clone(),
            };
            let sender = queue.clone();
            threads.spawn(format!("tartan-wg-tx{i}"), move || sender.send_loop())?;
            threads.spawn(format!("tartan-wg-rx{i}"), move || queue.receive_loop())?;
        }
        let _ = fresh.send(fresh_peers);
        Ok(Engine {
            device: spec.tun.device.clone(),
            port: spec.tun.port,
            peers,
            factory,
            fresh,
            installed,
            threads,
            features,
        })
    }

    /// What its table is built from now.
    pub fn spec(&self) -> WireguardSpec {
        lock(&self.installed).spec.clone()
    }

    /// Whether this engine serves `spec` (else it must be restarted).
    pub fn serves(&self, spec: &WireguardSpec) -> bool {
        self.device == spec.tun.device && self.port == spec.tun.port
    }

    /// After the routes changed: the table narrows to exactly `spec`'s peers
    /// a moment later, so a packet routed into the TUN just before its peer
    /// moved still finds it (the clock installs it); sessions of unchanged
    /// peers stay.
    pub fn update(&mut self, spec: &WireguardSpec) {
        lock(&self.installed).narrowing = Some(timers::Narrowing {
            due: std::time::Instant::now() + timers::NARROW_AFTER,
            spec: spec.clone(),
        });
    }

    /// Before the routes change: packets for the old and the new peers both
    /// find their node (see the udp engine's `widen`). What is installed
    /// only grows until a narrowing is due.
    pub fn widen(&self, spec: &WireguardSpec) {
        let mut installed = lock(&self.installed);
        // A narrowing still pending would take away what this adds.
        installed.narrowing = None;
        let wide = widened(&installed.spec, spec);
        let fresh = install(&self.peers, &self.factory, &wide);
        installed.spec = wide;
        if !fresh.is_empty() {
            let _ = self.fresh.send(fresh);
        }
    }

    /// How many peers the table holds.
    pub fn peer_count(&self) -> usize {
        self.peers.load().len()
    }

    /// Stops the loops and closes the queues; the (persistent) device stays.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // The clock sees its channel close at once.
        self.fresh = channel().0;
        self.threads.stop();
    }
}

/// Swaps in the table for `spec`; returns the peers that are new.
fn install(peers: &WgPeers, factory: &Factory, spec: &WireguardSpec) -> Vec<Arc<peers::WgPeer>> {
    let previous = peers.load_full();
    let (table, fresh) = WgTable::build(spec, &spec.tun.peers, &previous, factory);
    peers.store(table);
    fresh
}

/// The spec for both `old` and `new` peers (`new` wins where they differ).
fn widened(old: &WireguardSpec, new: &WireguardSpec) -> WireguardSpec {
    let mut wide = new.clone();
    for (subnet, node) in &old.tun.peers {
        wide.tun.peers.entry(*subnet).or_insert(*node);
    }
    for (node, key) in &old.keys {
        wide.keys.entry(*node).or_insert(*key);
    }
    for (subnet, node) in &old.tun.senders {
        wide.tun.senders.entry(*subnet).or_insert(*node);
    }
    wide
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
