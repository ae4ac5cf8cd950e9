//! The agent's inputs as an index: this node's Node, every NodeSubnet, the
//! OverlayNetwork. Fed by the watches (`apply`, `delete`, `reset`); computes
//! what the planner needs and reports whether that changed, so a status write
//! by another agent that changes nothing here costs nothing. Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tartan_crds::{NodeSubnet, OverlayNetwork, ValidNetwork, ValidNodeSubnet};

use crate::plan::Peer;

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
    pub peers: Vec<Peer>,
    /// Creation time of each peer's NodeSubnet (convergence lag).
    pub peer_created: BTreeMap<String, Time>,
    /// The Node's InternalIP (default underlay choice).
    pub node_ip: Option<Ipv4Addr>,
    /// The Node's labels (which external BGP peers apply).
    pub node_labels: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct AgentIndex {
    node_name: String,
    network_name: String,
    node: Option<Node>,
    network: Option<OverlayNetwork>,
    subnets: BTreeMap<String, NodeSubnet>,
}

impl AgentIndex {
    pub fn new(node_name: impl Into<String>, network_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            network_name: network_name.into(),
            ..Default::default()
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    pub fn apply_node(&mut self, node: Node) {
        if node.name_any() == self.node_name {
            self.node = Some(node);
        }
    }

    pub fn apply_network(&mut self, network: OverlayNetwork) {
        if network.name_any() == self.network_name {
            self.network = Some(network);
        }
    }

    pub fn delete_network(&mut self, name: &str) {
        if name == self.network_name {
            self.network = None;
        }
    }

    pub fn apply_subnet(&mut self, subnet: NodeSubnet) {
        self.subnets.insert(subnet.name_any(), subnet);
    }

    pub fn delete_subnet(&mut self, name: &str) {
        self.subnets.remove(name);
    }

    pub fn reset_subnets(&mut self, subnets: Vec<NodeSubnet>) {
        self.subnets = subnets.into_iter().map(|s| (s.name_any(), s)).collect();
    }

    /// This node's own NodeSubnet, if allocated.
    pub fn own(&self) -> Option<&NodeSubnet> {
        self.subnets
            .values()
            .find(|s| s.spec.node_name == self.node_name && s.spec.network == self.network_name)
    }

    pub fn inputs(&self) -> Inputs {
        let Some(network) = &self.network else {
            return Inputs::WaitingForNetwork;
        };
        let network = match network.spec.validate() {
            Ok(n) => n,
            Err(e) => return Inputs::InvalidNetwork(e.to_string()),
        };
        let Some(own) = self.own() else {
            return Inputs::WaitingForSubnet;
        };
        let local = match own.spec.validate() {
            Ok(l) => l,
            Err(e) => return Inputs::InvalidSubnet(e.to_string()),
        };
        let mut peers = Vec::new();
        let mut peer_created = BTreeMap::new();
        for subnet in self.subnets.values() {
            if subnet.spec.network != self.network_name || subnet.spec.node_name == self.node_name {
                continue;
            }
            // A peer whose spec does not validate is left out; the operator reports it.
            let Ok(peer) = Peer::from_node_subnet(subnet) else {
                continue;
            };
            if let Some(created) = &subnet.metadata.creation_timestamp {
                peer_created.insert(peer.name.clone(), created.clone());
            }
            peers.push(peer);
        }
        let node_ip = self.node.as_ref().and_then(internal_ip);
        let node_labels = self
            .node
            .as_ref()
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        Inputs::Ready(Box::new(ReadyInputs {
            network,
            local,
            generation: own.metadata.generation,
            peers,
            peer_created,
            node_ip,
            node_labels,
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use tartan_crds::{BackendType, NodeSubnetSpec, NodeSubnetStatus, OverlayNetworkSpec};

    fn subnet(node: &str, cidr: &str) -> NodeSubnet {
        NodeSubnet::new(
            node,
            NodeSubnetSpec {
                node_name: node.into(),
                network: "default".into(),
                cidr: cidr.into(),
                ipv6_cidr: None,
            },
        )
    }

    fn network(backend: BackendType) -> OverlayNetwork {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.type_ = backend;
        OverlayNetwork::new("default", spec)
    }

    #[test]
    fn waits_for_network_then_subnet() {
        let mut index = AgentIndex::new("a", "default");
        assert_eq!(index.inputs(), Inputs::WaitingForNetwork);
        index.apply_network(network(BackendType::Vxlan));
        assert_eq!(index.inputs(), Inputs::WaitingForSubnet);
        index.apply_subnet(subnet("a", "10.244.1.0/24"));
        assert!(matches!(index.inputs(), Inputs::Ready(_)));
    }

    #[test]
    fn a_peers_status_is_an_input_but_our_own_status_is_not() {
        let mut index = AgentIndex::new("a", "default");
        index.apply_network(network(BackendType::Vxlan));
        index.reset_subnets(vec![
            subnet("a", "10.244.1.0/24"),
            subnet("b", "10.244.2.0/24"),
        ]);
        let before = index.inputs();
        let mut own = subnet("a", "10.244.1.0/24");
        own.status = Some(NodeSubnetStatus {
            peers: 1,
            ..Default::default()
        });
        index.apply_subnet(own);
        assert_eq!(
            index.inputs(),
            before,
            "our own status write changes nothing"
        );
        let mut b = subnet("b", "10.244.2.0/24");
        b.status = Some(NodeSubnetStatus {
            node_ip: Some("192.168.0.2".into()),
            ..Default::default()
        });
        index.apply_subnet(b);
        assert_ne!(index.inputs(), before);
    }

    #[test]
    fn a_backend_change_is_a_new_input() {
        let mut index = AgentIndex::new("a", "default");
        index.apply_network(network(BackendType::Vxlan));
        index.apply_subnet(subnet("a", "10.244.1.0/24"));
        let before = index.inputs();
        index.apply_network(network(BackendType::HostGw));
        let Inputs::Ready(after) = index.inputs() else {
            panic!("ready")
        };
        assert_ne!(Inputs::Ready(after.clone()), before);
        assert_eq!(after.network.backend.type_, BackendType::HostGw);
    }

    #[test]
    fn invalid_objects_are_reported_not_applied() {
        let mut index = AgentIndex::new("a", "default");
        let mut bad = network(BackendType::Vxlan);
        bad.spec.cidr = "10.244.0.1/16".into();
        index.apply_network(bad);
        assert!(matches!(index.inputs(), Inputs::InvalidNetwork(m) if m.starts_with("spec.cidr")));
        index.apply_network(network(BackendType::Vxlan));
        index.apply_subnet(subnet("a", "10.244.1.9/24"));
        assert!(matches!(index.inputs(), Inputs::InvalidSubnet(_)));
    }

    #[test]
    fn internal_ip_comes_from_the_node() {
        let mut index = AgentIndex::new("a", "default");
        index.apply_network(network(BackendType::Vxlan));
        index.apply_subnet(subnet("a", "10.244.1.0/24"));
        let mut node = Node::default();
        node.metadata.name = Some("a".into());
        node.status = Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "Hostname".into(),
                    address: "a".into(),
                },
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: "10.0.0.7".into(),
                },
            ]),
            ..Default::default()
        });
        index.apply_node(node);
        let Inputs::Ready(ready) = index.inputs() else {
            panic!("ready")
        };
        assert_eq!(ready.node_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
    }
}
