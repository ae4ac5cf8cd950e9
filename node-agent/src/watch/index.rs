//! The agent's inputs as an incremental index: this node's Node, its own
//! NodeSubnet, one entry per peer, the OverlayNetwork. Fed by the watches;
//! pure.
//!
//! A watch event touches one entry and records what it changed: a peer by
//! name, or the "global" inputs (network, own subnet, node). The reconcile
//! [`take`](AgentIndex::take)s the changes: global ones as the full inputs (a
//! full plan), peer ones as deltas (one peer planned and programmed). A write
//! that changes nothing the planner reads (another agent's condition, our
//! own status) records nothing, so it costs nothing downstream.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tartan_crds::{
    NodeSubnet, NodeSubnetSpec, NodeSubnetStatus, OverlayNetwork, OverlayNetworkSpec, ValidNetwork,
    ValidNodeSubnet,
};

use super::secrets::SecretState;
use crate::plan::Peer;

#[cfg(test)]
mod tests;

/// What the planner is given, or why it cannot run yet.
#[derive(Debug, Clone, PartialEq)]
pub enum Inputs {
    /// No OverlayNetwork of our name yet.
    WaitingForNetwork,
    /// The OverlayNetwork does not validate (message names the field).
    InvalidNetwork(String),
    /// The operator has not allocated this node's NodeSubnet yet.
    WaitingForSubnet,
    /// This node's NodeSubnet does not validate.
    InvalidSubnet(String),
    Ready(Box<ReadyInputs>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadyInputs {
    pub network: ValidNetwork,
    pub local: ValidNodeSubnet,
    /// `metadata.generation` of this node's NodeSubnet.
    pub generation: Option<i64>,
    /// Every valid peer, by NodeSubnet name.
    pub peers: BTreeMap<String, Peer>,
    /// Creation time of each peer's NodeSubnet (convergence lag).
    pub peer_created: BTreeMap<String, Time>,
    /// The Node's InternalIP (default underlay choice).
    pub node_ip: Option<Ipv4Addr>,
    /// The Node's labels (which external BGP peers apply).
    pub node_labels: BTreeMap<String, String>,
    /// The BGP password Secrets the network refers to, by name.
    pub bgp_secrets: BTreeMap<String, SecretState>,
}

impl ReadyInputs {
    /// Keeps the peers as the index has them after `change`.
    pub fn update_peer(&mut self, change: &PeerChange) {
        match &change.peer {
            Some(peer) => {
                self.peers.insert(change.name.clone(), peer.clone());
            }
            None => {
                self.peers.remove(&change.name);
            }
        }
        match &change.created {
            Some(created) if change.peer.is_some() => {
                self.peer_created
                    .insert(change.name.clone(), created.clone());
            }
            _ => {
                self.peer_created.remove(&change.name);
            }
        }
    }
}

/// A NodeSubnet as the index keeps it: what the planner and the status
/// read, without the rest of the object (managedFields, annotations).
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetEntry {
    pub name: String,
    pub uid: Option<String>,
    pub spec: NodeSubnetSpec,
    pub status: Option<NodeSubnetStatus>,
    pub generation: Option<i64>,
    pub created: Option<Time>,
}

impl From<NodeSubnet> for SubnetEntry {
    fn from(subnet: NodeSubnet) -> Self {
        Self {
            name: subnet.name_any(),
            uid: subnet.metadata.uid,
            generation: subnet.metadata.generation,
            created: subnet.metadata.creation_timestamp,
            spec: subnet.spec,
            status: subnet.status,
        }
    }
}

/// This node's NodeSubnet: its name, and its status as the watch last showed
/// it (what a restarted agent starts from).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Own {
    pub name: String,
    /// A NodeSubnet deleted and created again has a new uid (and no status).
    pub uid: Option<String>,
    pub status: Option<NodeSubnetStatus>,
}

/// One peer whose inputs changed: its new form, or `None` when it is gone
/// (deleted, or no longer valid).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerChange {
    pub name: String,
    pub peer: Option<Peer>,
    /// When the peer's NodeSubnet was created (convergence lag).
    pub created: Option<Time>,
}

/// What the reconcile takes from the index.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Global inputs changed: plan everything.
    Full(Inputs),
    /// Only these peers changed.
    Peers(Vec<PeerChange>),
}

#[derive(Debug, Clone, PartialEq)]
struct PeerEntry {
    peer: Peer,
    created: Option<Time>,
}

#[derive(Debug, Default)]
pub struct AgentIndex {
    node_name: String,
    network_name: String,
    node_ip: Option<Ipv4Addr>,
    node_labels: BTreeMap<String, String>,
    network: Option<OverlayNetworkSpec>,
    own: Option<SubnetEntry>,
    peers: BTreeMap<String, PeerEntry>,
    bgp_secrets: BTreeMap<String, SecretState>,
    /// Changed since the last `take`: the global inputs, and peers by name.
    global_changed: bool,
    changed_peers: BTreeSet<String>,
}

impl AgentIndex {
    pub fn new(node_name: impl Into<String>, network_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            network_name: network_name.into(),
            // Nothing has been taken yet: the first take is a full plan.
            global_changed: true,
            ..Default::default()
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether anything changed since the last [`take`](Self::take).
    pub fn has_changes(&self) -> bool {
        self.global_changed || !self.changed_peers.is_empty()
    }

    fn set_global<T: PartialEq>(&mut self, field: fn(&mut Self) -> &mut T, value: T) -> bool {
        if *field(self) == value {
            return false;
        }
        *field(self) = value;
        self.global_changed = true;
        true
    }

    pub fn secret(&self, name: &str) -> Option<&SecretState> {
        self.bgp_secrets.get(name)
    }

    /// A BGP password Secret as its watch last saw it.
    pub fn set_secret(&mut self, name: &str, state: SecretState) -> bool {
        if self.bgp_secrets.get(name) == Some(&state) {
            return false;
        }
        self.bgp_secrets.insert(name.to_string(), state);
        self.global_changed = true;
        true
    }

    /// A Secret no longer referred to (its watch has stopped).
    pub fn forget_secret(&mut self, name: &str) {
        if self.bgp_secrets.remove(name).is_some() {
            self.global_changed = true;
        }
    }

    /// This node's Node: only its InternalIP and labels are inputs.
    pub fn apply_node(&mut self, node: Node) -> bool {
        if node.name_any() != self.node_name {
            return false;
        }
        let ip = internal_ip(&node);
        let labels = node.metadata.labels.unwrap_or_default();
        let ip_changed = self.set_global(|i| &mut i.node_ip, ip);
        self.set_global(|i| &mut i.node_labels, labels) || ip_changed
    }

    /// The OverlayNetwork: only its spec is an input, so the operator's
    /// status writes (counts) cost the agent nothing.
    pub fn apply_network(&mut self, network: OverlayNetwork) -> bool {
        if network.name_any() != self.network_name {
            return false;
        }
        self.set_global(|i| &mut i.network, Some(network.spec))
    }

    pub fn delete_network(&mut self, name: &str) -> bool {
        name == self.network_name && self.set_global(|i| &mut i.network, None)
    }

    fn is_own(&self, spec: &NodeSubnetSpec) -> bool {
        spec.node_name == self.node_name && spec.network == self.network_name
    }

    /// One NodeSubnet added or changed. Returns whether an input changed.
    pub fn apply_subnet(&mut self, subnet: impl Into<SubnetEntry>) -> bool {
        let entry = subnet.into();
        if entry.spec.network != self.network_name {
            return false;
        }
        if self.is_own(&entry.spec) {
            return self.apply_own(entry);
        }
        let name = entry.name.clone();
        // A peer whose spec does not validate is left out; the operator reports it.
        let next = Peer::from_parts(&entry.spec, entry.status.as_ref())
            .ok()
            .map(|peer| PeerEntry {
                peer,
                created: entry.created,
            });
        if self.peers.get(&name) == next.as_ref() {
            return false;
        }
        match next {
            Some(next) => self.peers.insert(name.clone(), next),
            None => self.peers.remove(&name),
        };
        self.changed_peers.insert(name);
        true
    }

    /// Our own NodeSubnet: its status is kept (a restart starts from it) but
    /// is not an input, or each of our own writes would plan again.
    fn apply_own(&mut self, entry: SubnetEntry) -> bool {
        let unchanged = self.own.as_ref().is_some_and(|own| {
            own.name == entry.name
                && own.uid == entry.uid
                && own.spec == entry.spec
                && own.generation == entry.generation
        });
        self.own = Some(entry);
        if !unchanged {
            self.global_changed = true;
        }
        !unchanged
    }

    pub fn delete_subnet(&mut self, name: &str) -> bool {
        if self.own.as_ref().is_some_and(|own| own.name == name) {
            self.own = None;
            self.global_changed = true;
            return true;
        }
        if self.peers.remove(name).is_some() {
            self.changed_peers.insert(name.to_string());
            return true;
        }
        false
    }

    /// A relist: these are all the NodeSubnets. Rare (a watch that broke
    /// for too long), so it is one full plan.
    pub fn reset_subnets(
        &mut self,
        subnets: impl IntoIterator<Item = impl Into<SubnetEntry>>,
    ) -> bool {
        let pending = (self.global_changed, std::mem::take(&mut self.changed_peers));
        let before_own = self.own.take();
        let before_peers = std::mem::take(&mut self.peers);
        for subnet in subnets {
            self.apply_subnet(subnet);
        }
        let changed = before_own != self.own || before_peers != self.peers;
        (self.global_changed, self.changed_peers) = (pending.0 || changed, pending.1);
        changed
    }

    /// This node's own NodeSubnet, if allocated.
    pub fn own(&self) -> Option<Own> {
        self.own.as_ref().map(|own| Own {
            name: own.name.clone(),
            uid: own.uid.clone(),
            status: own.status.clone(),
        })
    }

    /// The changes since the last take, and forgets them.
    pub fn take(&mut self) -> Option<Update> {
        if self.global_changed {
            self.global_changed = false;
            self.changed_peers.clear();
            return Some(Update::Full(self.inputs()));
        }
        if self.changed_peers.is_empty() {
            return None;
        }
        let changes = std::mem::take(&mut self.changed_peers)
            .into_iter()
            .map(|name| {
                let entry = self.peers.get(&name);
                PeerChange {
                    peer: entry.map(|e| e.peer.clone()),
                    created: entry.and_then(|e| e.created.clone()),
                    name,
                }
            })
            .collect();
        Some(Update::Peers(changes))
    }

    /// Everything the planner needs, now.
    pub fn inputs(&self) -> Inputs {
        let Some(network) = &self.network else {
            return Inputs::WaitingForNetwork;
        };
        let network = match network.validate() {
            Ok(n) => n,
            Err(e) => return Inputs::InvalidNetwork(e.to_string()),
        };
        let Some(own) = &self.own else {
            return Inputs::WaitingForSubnet;
        };
        let local = match own.spec.validate() {
            Ok(l) => l,
            Err(e) => return Inputs::InvalidSubnet(e.to_string()),
        };
        Inputs::Ready(Box::new(ReadyInputs {
            network,
            local,
            generation: own.generation,
            peers: (self.peers.iter())
                .map(|(name, e)| (name.clone(), e.peer.clone()))
                .collect(),
            peer_created: (self.peers.iter())
                .filter_map(|(name, e)| Some((name.clone(), e.created.clone()?)))
                .collect(),
            node_ip: self.node_ip,
            node_labels: self.node_labels.clone(),
            bgp_secrets: self.bgp_secrets.clone(),
        }))
    }
}

/// The Node's first IPv4 InternalIP.
pub fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}
