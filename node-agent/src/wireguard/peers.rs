//! The wireguard peer table: the udp backend's lock-free subnet table (where
//! a packet goes, whose sources are whose) plus one WireGuard state machine
//! per peer node. A new generation keeps the state of every peer whose node
//! and key are unchanged, so a NodeSubnet change never drops a session.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
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

/// One peer node: where it listens and its WireGuard state.
pub struct WgPeer {
    pub node: Ipv4Addr,
    pub key: [u8; 32],
    pub endpoint: SocketAddrV4,
    tunn: Mutex<Tunn>,
}

impl WgPeer {
    /// The state machine, held for one train or one timer tick at most.
    pub fn lock(&self) -> MutexGuard<'_, Tunn> {
        self.tunn.lock().unwrap_or_else(|e| e.into_inner())
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
            tunn: Mutex::new(tunn),
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
