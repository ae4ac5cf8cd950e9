//! One peer's change planned on its own: a join, a leave, a new address.
//! Pure.
//!
//! In the steady state (every peer sends and receives on the target, which
//! is vxlan or host-gw) nothing about one peer changes anything about
//! another: its route, neighbour and FDB entry are its own. [`plan_peer`]
//! then gives the objects to remove and add (about three kernel changes) and
//! [`DesiredState::apply_peer`] folds them into the last full plan, so a join
//! at 5,000 peers costs no rebuild, dump or diff. Anything wider (a switch in
//! progress, udp's peer table, BGP's mesh, a peer on another backend) returns
//! `None`: the caller runs the full [`plan`](super::plan), which stays the
//! reference (the tests hold the two equal).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use tartan_crds::{BackendType, ValidNetwork, ValidNodeSubnet};

use super::{
    DesiredState, FdbSpec, LocalFacts, NeighbourSpec, Node, Peer, PeerObjects, PeerProblem,
    RouteSpec, choose,
};

#[cfg(test)]
mod tests;

/// Kernel objects of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerKernelObjects {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighbourSpec>,
    pub fdb: BTreeSet<FdbSpec>,
}

impl PeerKernelObjects {
    pub fn len(&self) -> usize {
        self.routes.len() + self.neighbours.len() + self.fdb.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One peer's change to the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDelta {
    /// The peer's node name.
    pub peer: String,
    /// Objects no longer wanted, and the old form of changed ones.
    pub remove: PeerKernelObjects,
    /// Objects to add or replace.
    pub add: PeerKernelObjects,
    /// The backend the peer is now sent over, if it is sent to.
    pub backend: Option<BackendType>,
    /// The peer's problems now.
    pub problems: BTreeSet<PeerProblem>,
}

/// What `peer` contributes to a plan on its own, or `None` when it reaches
/// beyond itself (another backend than the target).
struct Contribution {
    objects: PeerKernelObjects,
    backend: Option<BackendType>,
    problems: BTreeSet<PeerProblem>,
}

fn contribution(node: &Node, peer: &Peer) -> Option<Contribution> {
    let target = node.network.backend.type_;
    if peer.backend.is_some_and(|b| b != target) {
        // It still sends on another backend: this node's receive paths depend on it.
        return None;
    }
    let peers = std::slice::from_ref(peer);
    let choice = choose::choose(node.network, node.local, peers, node.facts);
    let backend = choice.peer_backends.get(&peer.name).copied();
    if backend.is_some_and(|b| b != target) {
        // Sent over a fallback: what this node sends with may change.
        return None;
    }
    let mut objects = PeerObjects::default();
    for sent in &choice.sent {
        objects.add(node, sent);
    }
    if !objects.udp_peers.is_empty() {
        return None;
    }
    Some(Contribution {
        objects: PeerKernelObjects {
            routes: objects.routes,
            neighbours: objects.neighbours,
            fdb: objects.fdb,
        },
        backend,
        problems: choice.peer_problems,
    })
}

/// Whether `state` is steady enough for peers to be planned one at a time:
/// it sends and receives on the target only, a backend whose peer objects
/// are independent of each other.
fn steady(state: &DesiredState, target: BackendType) -> bool {
    matches!(target, BackendType::Vxlan | BackendType::HostGw)
        && state.backend == target
        && state.receive_backends.len() == 1
        && state.receive_backends.contains(&target)
        && state.udp.is_none()
        && state.bgp.is_none()
}

/// The change from `old` to `new` (the same peer: joined, changed or left)
/// against `state`, the plan of the same network, subnet and facts; `None`
/// when only a full plan can say.
pub fn plan_peer(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
    facts: &LocalFacts,
    state: &DesiredState,
    old: Option<&Peer>,
    new: Option<&Peer>,
) -> Option<PeerDelta> {
    let target = network.backend.type_;
    if !steady(state, target) {
        return None;
    }
    let name = new.or(old)?.name.clone();
    if old.is_some_and(|o| o.name != name) {
        return None;
    }
    let node = Node::new(network, local, facts);
    let before = match old {
        Some(peer) => contribution(&node, peer)?.objects,
        None => PeerKernelObjects::default(),
    };
    let after = match new {
        Some(peer) => contribution(&node, peer)?,
        None => Contribution {
            objects: PeerKernelObjects::default(),
            backend: None,
            problems: BTreeSet::new(),
        },
    };
    if target == BackendType::HostGw && !after.objects.fdb.is_empty() {
        return None;
    }
    Some(PeerDelta {
        peer: name,
        remove: removed(&before, &after.objects),
        add: added(&before, &after.objects),
        backend: after.backend,
        problems: after.problems,
    })
}

/// What `after` adds or changes.
fn added(before: &PeerKernelObjects, after: &PeerKernelObjects) -> PeerKernelObjects {
    PeerKernelObjects {
        routes: after.routes.difference(&before.routes).cloned().collect(),
        neighbours: (after.neighbours.difference(&before.neighbours))
            .cloned()
            .collect(),
        fdb: after.fdb.difference(&before.fdb).cloned().collect(),
    }
}

/// What `before` had that `after` does not (changed ones too: the old form).
fn removed(before: &PeerKernelObjects, after: &PeerKernelObjects) -> PeerKernelObjects {
    added(after, before)
}

/// How many peers publish each node IP. Two peers with one node IP (a node
/// renamed, its old NodeSubnet not yet gone) share a VTEP MAC and so an FDB
/// entry: a change to either is planned in full, or one leaving would take
/// the other's entry with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeIps(BTreeMap<Ipv4Addr, usize>);

fn node_ip(peer: Option<&Peer>) -> Option<Ipv4Addr> {
    peer?.endpoint.as_ref().ok()?.node_ip
}

impl NodeIps {
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Self {
        let mut ips = Self::default();
        for peer in peers {
            ips.update(None, Some(peer));
        }
        ips
    }

    /// Counts `old` out and `new` in; returns whether either's node IP is
    /// (or was) another peer's too.
    pub fn update(&mut self, old: Option<&Peer>, new: Option<&Peer>) -> bool {
        let (old, new) = (node_ip(old), node_ip(new));
        if let Some(ip) = old
            && let Some(count) = self.0.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.0.remove(&ip);
            }
        }
        let was_shared = old.is_some_and(|ip| self.0.contains_key(&ip));
        let is_shared = new.is_some_and(|ip| self.0.contains_key(&ip));
        if let Some(ip) = new {
            *self.0.entry(ip).or_default() += 1;
        }
        was_shared || is_shared
    }
}

impl DesiredState {
    /// Folds one peer's change in, as a full plan with that peer changed would have it.
    pub fn apply_peer(&mut self, delta: &PeerDelta) {
        for route in &delta.remove.routes {
            self.routes.remove(route);
        }
        for neighbour in &delta.remove.neighbours {
            self.neighbours.remove(neighbour);
        }
        for entry in &delta.remove.fdb {
            self.fdb.remove(entry);
        }
        self.routes.extend(delta.add.routes.iter().cloned());
        self.neighbours.extend(delta.add.neighbours.iter().cloned());
        self.fdb.extend(delta.add.fdb.iter().cloned());
        match delta.backend {
            Some(backend) => self.peer_backends.insert(delta.peer.clone(), backend),
            None => self.peer_backends.remove(&delta.peer),
        };
        self.peer_problems.retain(|p| p.peer() != delta.peer);
        self.peer_problems.extend(delta.problems.iter().cloned());
    }
}
