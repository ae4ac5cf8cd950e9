//! The wireguard peer table: the udp backend's lock-free subnet table (where
//! a packet goes, whose sources are whose) plus one WireGuard state machine
//! per peer node. A new generation keeps the state of every peer whose node
//! and key are unchanged, so a NodeSubnet change never drops a session.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::PublicKey;

use super::keys::NodeKey;
use crate::plan::WireguardSpec;
use crate::udp::peers::PeerTable;

/// Handshake initiations a node answers per second before it asks for cookies.
const HANDSHAKES_PER_SECOND: u64 = 1_000;

/// boringtun 0.7.1's `MAX_QUEUE_DEPTH`: the packets it holds for a peer
/// while a handshake is pending. It drops any beyond that without a word;
/// a unit test checks the figure against boringtun itself.
pub const HANDSHAKE_QUEUE: usize = 256;

/// One peer node: where it listens and its WireGuard state.
pub struct WgPeer {
    pub node: Ipv4Addr,
    pub key: [u8; 32],
    pub endpoint: SocketAddrV4,
    session: Mutex<PeerSession>,
}

impl WgPeer {
    /// The state machine, held for one train or one timer tick at most.
    pub fn lock(&self) -> MutexGuard<'_, PeerSession> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A peer's WireGuard state machine, and how many packets this node handed
/// it while it had no session: boringtun keeps that count to itself, and
/// without it the packets its full queue drops would go uncounted.
pub struct PeerSession {
    tunn: Tunn,
    waiting: usize,
}

impl PeerSession {
    fn new(tunn: Tunn) -> Self {
        Self { tunn, waiting: 0 }
    }

    /// A packet went to the state machine and came back as no data message:
    /// it waits for the handshake, or (`false`) the queue was full and
    /// boringtun dropped it.
    pub fn held_for_handshake(&mut self) -> bool {
        if self.waiting < HANDSHAKE_QUEUE {
            self.waiting += 1;
            true
        } else {
            false
        }
    }

    /// The queue was sent: once a session exists, nothing waits.
    pub fn sent_queued(&mut self) {
        if self.waiting > 0 && self.tunn.time_since_last_handshake().is_some() {
            self.waiting = 0;
        }
    }

    /// The handshake gave up (`ConnectionExpired`) and boringtun discarded its
    /// queue: how many packets that lost.
    pub fn discarded(&mut self) -> u64 {
        std::mem::take(&mut self.waiting) as u64
    }
}

impl Deref for PeerSession {
    type Target = Tunn;
    fn deref(&self) -> &Tunn {
        &self.tunn
    }
}

impl DerefMut for PeerSession {
    fn deref_mut(&mut self) -> &mut Tunn {
        &mut self.tunn
    }
}

/// What every peer's state machine is made with.
pub struct Factory {
    key: NodeKey,
    pub rate_limiter: Arc<RateLimiter>,
    next_index: AtomicU32,
}

impl Factory {
    pub fn new(key: NodeKey) -> Self {
        let public = PublicKey::from(key.public());
        Self {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            key,
            next_index: AtomicU32::new(1),
        }
    }

    fn peer(&self, node: Ipv4Addr, key: [u8; 32], port: u16) -> WgPeer {
        // Session indices are 24 bits of peer index and 8 of session: unique per peer.
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.key.secret().clone(),
            PublicKey::from(key),
            None,
            None,
            index,
            Some(self.rate_limiter.clone()),
        );
        WgPeer {
            node,
            key,
            endpoint: SocketAddrV4::new(node, port),
            session: Mutex::new(PeerSession::new(tunn)),
        }
    }
}

/// One immutable generation.
#[derive(Default)]
pub struct WgTable {
    pub subnets: PeerTable,
    peers: HashMap<Ipv4Addr, Arc<WgPeer>>,
}

impl WgTable {
    /// The table for `spec`; peers of `previous` with the same node and key
    /// keep their sessions. The second value: the peers that are new.
    pub fn build(
        spec: &WireguardSpec,
        routes: &BTreeMap<ipnet::IpNet, Ipv4Addr>,
        previous: &WgTable,
        factory: &Factory,
    ) -> (WgTable, Vec<Arc<WgPeer>>) {
        let mut fresh = Vec::new();
        let peers = spec
            .keys
            .iter()
            .map(|(node, key)| {
                let peer = match previous.peers.get(node) {
                    Some(p) if p.key == *key && p.endpoint.port() == spec.tun.port => p.clone(),
                    _ => {
                        let p = Arc::new(factory.peer(*node, *key, spec.tun.port));
                        fresh.push(p.clone());
                        p
                    }
                };
                (*node, peer)
            })
            .collect();
        let subnets = PeerTable::new(routes, &spec.tun.senders, &spec.tun.local);
        (WgTable { subnets, peers }, fresh)
    }

    pub fn peer(&self, node: Ipv4Addr) -> Option<&Arc<WgPeer>> {
        self.peers.get(&node)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Arc<WgPeer>> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// The shared handle: cheap to clone, lock-free to read.
#[derive(Clone, Default)]
pub struct WgPeers(Arc<ArcSwap<WgTable>>);

impl WgPeers {
    pub fn load(&self) -> arc_swap::Guard<Arc<WgTable>> {
        self.0.load()
    }

    pub fn load_full(&self) -> Arc<WgTable> {
        self.0.load_full()
    }

    pub fn store(&self, table: WgTable) {
        self.0.store(Arc::new(table));
    }
}
