//! The udp backend's peer table: pod subnet → the node that owns it. Read on
//! every packet by the datapath threads, replaced whole (never edited in
//! place) when NodeSubnets change, through an atomic pointer swap: readers
//! never wait and never see half an update.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::IpNet;

/// Pod subnets by prefix length (longest first): masked network → node IP.
#[derive(Debug, Default)]
struct SubnetMap {
    v4: Vec<(u8, HashMap<u32, Ipv4Addr>)>,
    v6: Vec<(u8, HashMap<u128, Ipv4Addr>)>,
}

fn mask_v4(ip: u32, prefix: u8) -> u32 {
    ip & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(ip: u128, prefix: u8) -> u128 {
    ip & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl SubnetMap {
    fn new<'a>(subnets: impl Iterator<Item = (&'a IpNet, &'a Ipv4Addr)>) -> Self {
        let mut v4: BTreeMap<u8, HashMap<u32, Ipv4Addr>> = BTreeMap::new();
        let mut v6: BTreeMap<u8, HashMap<u128, Ipv4Addr>> = BTreeMap::new();
        for (subnet, node) in subnets {
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
        }
    }

    fn owner(&self, address: IpAddr) -> Option<Ipv4Addr> {
        match address {
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
}

/// One immutable generation of the table.
#[derive(Debug, Default)]
pub struct PeerTable {
    /// Where packets are sent: the udp peers' subnets.
    routes: SubnetMap,
    /// Whose inner sources are whose: every peer's subnets, udp or not.
    sources: SubnetMap,
    nodes: HashSet<Ipv4Addr>,
    local: Vec<IpNet>,
}

impl PeerTable {
    /// `peers`: each remote pod subnet sent to over udp, and the node IP that
    /// owns it; `senders`: every peer's subnets and node IP (a peer may send
    /// udp before we send to it): whose datagrams are accepted, and from
    /// which inner sources; `local`: this node's own subnets (the only
    /// destinations accepted from peers).
    pub fn new(
        peers: &BTreeMap<IpNet, Ipv4Addr>,
        senders: &BTreeMap<IpNet, Ipv4Addr>,
        local: &[IpNet],
    ) -> Self {
        Self {
            routes: SubnetMap::new(peers.iter()),
            sources: SubnetMap::new(senders.iter().chain(peers)),
            nodes: peers.values().chain(senders.values()).copied().collect(),
            local: local.to_vec(),
        }
    }

    /// The node to send a packet for `destination` to.
    pub fn lookup(&self, destination: IpAddr) -> Option<Ipv4Addr> {
        self.routes.owner(destination)
    }

    /// Whether `node` owns the subnet `source` is in: a peer may send only
    /// from its own pods (and its own TUN address, in its subnet), as
    /// WireGuard's AllowedIPs allow a peer only its own addresses.
    pub fn sends_from(&self, node: Ipv4Addr, source: IpAddr) -> bool {
        self.sources.owner(source) == Some(node)
    }

    /// What becomes of an inner packet from `node` with these addresses.
    pub fn admit(&self, node: Ipv4Addr, source: IpAddr, destination: IpAddr) -> Admission {
        if !self.is_local(destination) {
            Admission::NotLocal
        } else if !self.sends_from(node, source) {
            Admission::SpoofedSource
        } else {
            Admission::Accepted
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

/// What becomes of an inner packet from a peer, by its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    /// Not for this node's subnets.
    NotLocal,
    /// From outside the sending peer's own subnets.
    SpoofedSource,
}

/// The last verdict, kept for the next packet of the same train: the
/// segments of one flow share their addresses, so a train of 45 costs one
/// look-up, not 45. Made per train, so it never outlives its table.
#[derive(Debug, Default)]
pub struct LastAdmission(Option<(Ipv4Addr, IpAddr, IpAddr, Admission)>);

impl LastAdmission {
    pub fn admit(
        &mut self,
        table: &PeerTable,
        node: Ipv4Addr,
        source: IpAddr,
        destination: IpAddr,
    ) -> Admission {
        if let Some((n, s, d, verdict)) = self.0
            && (n, s, d) == (node, source, destination)
        {
            return verdict;
        }
        let verdict = table.admit(node, source, destination);
        self.0 = Some((node, source, destination, verdict));
        verdict
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
        let senders = BTreeMap::from([(net("10.244.9.0/24"), Ipv4Addr::new(192, 168, 0, 9))]);
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
    fn a_peer_sends_only_from_its_own_subnets() {
        let (n2, n3, n9) = (
            Ipv4Addr::new(192, 168, 0, 2),
            Ipv4Addr::new(192, 168, 0, 3),
            Ipv4Addr::new(192, 168, 0, 9),
        );
        let peers = BTreeMap::from([
            (net("10.244.1.0/24"), n2),
            (net("fd00:10:244:1::/64"), n2),
            (net("10.244.2.0/24"), n3),
        ]);
        let senders = BTreeMap::from([(net("10.244.9.0/24"), n9)]);
        let table = PeerTable::new(&peers, &senders, &[net("10.244.0.0/24")]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("test IP");
        assert!(table.sends_from(n2, ip("10.244.1.7")));
        assert!(table.sends_from(n2, ip("10.244.1.0")), "its TUN address");
        assert!(table.sends_from(n2, ip("fd00:10:244:1::7")));
        assert!(!table.sends_from(n2, ip("10.244.2.7")), "n3's pod");
        assert!(!table.sends_from(n2, ip("10.244.0.7")), "our own pod");
        assert!(
            !table.sends_from(n2, ip("192.168.0.2")),
            "outside the cluster"
        );
        assert!(
            table.sends_from(n9, ip("10.244.9.7")),
            "a peer we do not send to yet"
        );
        assert!(!table.sends_from(n9, ip("10.244.1.7")));
    }

    #[test]
    fn a_train_is_judged_by_its_addresses_each_time_they_change() {
        let (n2, n3) = (Ipv4Addr::new(192, 168, 0, 2), Ipv4Addr::new(192, 168, 0, 3));
        let peers = BTreeMap::from([(net("10.244.1.0/24"), n2)]);
        let table = PeerTable::new(&peers, &BTreeMap::new(), &[net("10.244.0.0/24")]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("test IP");
        let (pod, here, elsewhere) = (ip("10.244.1.7"), ip("10.244.0.5"), ip("10.244.2.5"));
        // In order, through one memo: each verdict is the table's, never the last packet's.
        let packets = [
            (n2, pod, here, Admission::Accepted),
            (n2, pod, here, Admission::Accepted),
            (n2, pod, elsewhere, Admission::NotLocal),
            (n2, here, here, Admission::SpoofedSource),
            (n3, here, here, Admission::SpoofedSource),
            (n3, pod, here, Admission::SpoofedSource),
            (n2, pod, here, Admission::Accepted),
        ];
        let mut last = LastAdmission::default();
        for (i, (node, source, destination, verdict)) in packets.into_iter().enumerate() {
            assert_eq!(
                last.admit(&table, node, source, destination),
                verdict,
                "packet {i}: {node} sending {source} -> {destination}"
            );
            assert_eq!(table.admit(node, source, destination), verdict);
        }
    }

    #[test]
    fn an_update_is_seen_by_every_reader() {
        let shared = Peers::default();
        let reader = shared.clone();
        assert!(reader.load().is_empty());
        shared.store(PeerTable::new(
            &BTreeMap::from([(net("10.244.1.0/24"), Ipv4Addr::new(192, 168, 0, 2))]),
            &BTreeMap::new(),
            &[],
        ));
        assert_eq!(reader.load().len(), 1);
    }
}
