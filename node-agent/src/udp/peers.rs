//! The udp backend's peer table: pod subnet → the node that owns it. Read on
//! every packet by the datapath threads, replaced whole (never edited in
//! place) when NodeSubnets change, through an atomic pointer swap: readers
//! never wait and never see half an update.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// One immutable generation of the table.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// Per prefix length (longest first): masked network → node IP.
    v4: Vec<(u8, HashMap<u32, Ipv4Addr>)>,
    v6: Vec<(u8, HashMap<u128, Ipv4Addr>)>,
    nodes: HashSet<Ipv4Addr>,
    local: Vec<IpNet>,
}

fn mask_v4(ip: u32, prefix: u8) -> u32 {
    ip & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(ip: u128, prefix: u8) -> u128 {
    ip & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl PeerTable {
    /// `peers`: each remote pod subnet and the node IP that owns it;
    /// `senders`: nodes whose datagrams are accepted (besides those in `peers`);
    /// `local`: this node's own subnets (what it accepts from peers).
    pub fn new(
        peers: &BTreeMap<IpNet, Ipv4Addr>,
        senders: &BTreeSet<Ipv4Addr>,
        local: &[IpNet],
    ) -> Self {
        let mut v4: BTreeMap<u8, HashMap<u32, Ipv4Addr>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, HashMap<u128, Ipv4Addr>> = BTreeMap::new();
        for (subnet, node) in peers {
            match subnet {
                IpNet::V4(n) => {
                    v4.entry(n.prefix_len())
                        .or_default()
                        .insert(u32::from(n.network()), *node);
                }
                IpNet::V6(n) => {
                    v6.entry(n.prefix_len())
                        .or_default()
                        .insert(u128::from(n.network()), *node);
                }
            }
        }
        Self {
            v4: v4.into_iter().rev().collect(),
            v6: v6.into_iter().rev().collect(),
            nodes: peers.values().chain(senders).copied().collect(),
            local: local.to_vec(),
        }
    }

    /// The node to send a packet for `destination` to.
    pub fn lookup(&self, destination: IpAddr) -> Option<Ipv4Addr> {
        match destination {
            IpAddr::V4(ip) => {
                let ip = u32::from(ip);
                self.v4
                    .iter()
                    .find_map(|(prefix, map)| map.get(&mask_v4(ip, *prefix)).copied())
            }
            IpAddr::V6(ip) => {
                let ip = u128::from(ip);
                self.v6
                    .iter()
                    .find_map(|(prefix, map)| map.get(&mask_v6(ip, *prefix)).copied())
            }
        }
    }

    /// Whether datagrams from `node` are accepted.
    pub fn is_peer(&self, node: Ipv4Addr) -> bool {
        self.nodes.contains(&node)
    }

    /// Whether `destination` is in one of this node's subnets.
    pub fn is_local(&self, destination: IpAddr) -> bool {
        self.local.iter().any(|n| n.contains(&destination))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// The shared handle: cheap to clone, lock-free to read.
#[derive(Clone, Default)]
pub struct Peers(Arc<ArcSwap<PeerTable>>);

impl Peers {
    pub fn load(&self) -> arc_swap::Guard<Arc<PeerTable>> {
        self.0.load()
    }

    pub fn store(&self, table: PeerTable) {
        self.0.store(Arc::new(table));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test CIDR")
    }

    #[test]
    fn finds_the_owner_and_refuses_the_rest() {
        let peers = BTreeMap::from([
            (net("10.244.1.0/24"), Ipv4Addr::new(192, 168, 0, 2)),
            (net("10.244.2.0/24"), Ipv4Addr::new(192, 168, 0, 3)),
            (net("fd00:10:244:1::/64"), Ipv4Addr::new(192, 168, 0, 2)),
        ]);
        let senders = BTreeSet::from([Ipv4Addr::new(192, 168, 0, 9)]);
        let table = PeerTable::new(&peers, &senders, &[net("10.244.0.0/24")]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("test IP");
        assert_eq!(
            table.lookup(ip("10.244.2.77")),
            Some(Ipv4Addr::new(192, 168, 0, 3))
        );
        assert_eq!(
            table.lookup(ip("fd00:10:244:1::9")),
            Some(Ipv4Addr::new(192, 168, 0, 2))
        );
        assert_eq!(table.lookup(ip("10.244.9.1")), None);
        assert_eq!(table.lookup(ip("fd00:10:244:2::9")), None);
        assert!(table.is_peer(Ipv4Addr::new(192, 168, 0, 3)));
        assert!(!table.is_peer(Ipv4Addr::new(192, 168, 0, 4)));
        assert!(
            table.is_peer(Ipv4Addr::new(192, 168, 0, 9)),
            "a node we do not send to yet may already send to us"
        );
        assert!(table.is_local(ip("10.244.0.5")));
        assert!(!table.is_local(ip("10.244.1.5")));
    }

    #[test]
    fn an_update_is_seen_by_every_reader() {
        let shared = Peers::default();
        let reader = shared.clone();
        assert!(reader.load().is_empty());
        shared.store(PeerTable::new(
            &BTreeMap::from([(net("10.244.1.0/24"), Ipv4Addr::new(192, 168, 0, 2))]),
            &BTreeSet::new(),
            &[],
        ));
        assert_eq!(reader.load().len(), 1);
    }
}
