use super::*;
use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
use tartan_crds::{BackendType, NodeSubnetSpec, NodeSubnetStatus, OverlayNetworkSpec};

fn subnet(node: &str, cidr: &str) -> NodeSubnet {
    let mut s = NodeSubnet::new(
        node,
        NodeSubnetSpec {
            node_name: node.into(),
            network: "default".into(),
            cidr: cidr.into(),
            ipv6_cidr: None,
        },
    );
    s.metadata.uid = Some(format!("uid-{node}"));
    s
}

fn addressed(node: &str, cidr: &str, ip: &str) -> NodeSubnet {
    let mut s = subnet(node, cidr);
    s.status = Some(NodeSubnetStatus {
        node_ip: Some(ip.into()),
        backend: Some(BackendType::Vxlan),
        receive_backends: vec![BackendType::Vxlan],
        ..Default::default()
    });
    s
}

fn network(backend: BackendType) -> OverlayNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    OverlayNetwork::new("default", spec)
}

/// An index with the network, our subnet and peers b and c, changes taken.
fn settled() -> AgentIndex {
    let mut index = AgentIndex::new("a", "default");
    index.apply_network(network(BackendType::Vxlan));
    index.reset_subnets(vec![
        subnet("a", "10.244.1.0/24"),
        addressed("b", "10.244.2.0/24", "192.168.0.2"),
        addressed("c", "10.244.3.0/24", "192.168.0.3"),
    ]);
    assert!(matches!(index.take(), Some(Update::Full(Inputs::Ready(_)))));
    index
}

fn changed_peers(update: Option<Update>) -> Vec<(String, Option<Peer>)> {
    match update {
        Some(Update::Peers(changes)) => changes.into_iter().map(|c| (c.name, c.peer)).collect(),
        other => panic!("expected peer changes, got {other:?}"),
    }
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
fn a_peers_status_change_touches_only_that_peers_entry() {
    let mut index = settled();
    assert!(index.apply_subnet(addressed("b", "10.244.2.0/24", "192.168.0.22")));
    let changes = changed_peers(index.take());
    assert_eq!(changes.len(), 1, "only b changed");
    let (name, peer) = &changes[0];
    assert_eq!(name, "b");
    let ip = peer
        .as_ref()
        .and_then(|p| p.endpoint.clone().ok())
        .and_then(|e| e.node_ip);
    assert_eq!(ip, Some("192.168.0.22".parse().expect("ip")));
    assert_eq!(index.take(), None, "taken changes are gone");
}

#[test]
fn a_write_that_changes_no_input_records_nothing() {
    let mut index = settled();
    let mut b = addressed("b", "10.244.2.0/24", "192.168.0.2");
    if let Some(status) = b.status.as_mut() {
        status.conditions = vec![tartan_crds::Condition::truthy("Ready", "Programmed")];
    }
    assert!(
        !index.apply_subnet(b),
        "another agent's condition is not an input"
    );
    let mut own = subnet("a", "10.244.1.0/24");
    own.status = Some(NodeSubnetStatus {
        node_ip: Some("192.168.0.1".into()),
        ..Default::default()
    });
    assert!(
        !index.apply_subnet(own),
        "our own status write changes nothing"
    );
    assert_eq!(
        index.own().and_then(|o| o.status).and_then(|s| s.node_ip),
        Some("192.168.0.1".into()),
        "but it is kept: a restarted agent starts from it"
    );
    let mut counted = network(BackendType::Vxlan);
    counted.status = Some(Default::default());
    assert!(
        !index.apply_network(counted),
        "the operator's counts are not an input"
    );
    assert!(!index.has_changes());
}

#[test]
fn a_join_and_a_leave_are_one_entry_each() {
    let mut index = settled();
    index.apply_subnet(addressed("d", "10.244.4.0/24", "192.168.0.4"));
    index.delete_subnet("c");
    let changes = changed_peers(index.take());
    let summary: Vec<(&str, bool)> = changes
        .iter()
        .map(|(n, p)| (n.as_str(), p.is_some()))
        .collect();
    assert_eq!(summary, vec![("c", false), ("d", true)]);
}

#[test]
fn another_networks_subnets_are_not_peers() {
    let mut index = settled();
    let mut other = subnet("x", "10.9.0.0/24");
    other.spec.network = "other".into();
    assert!(!index.apply_subnet(other));
}

#[test]
fn a_backend_change_is_a_full_plan() {
    let mut index = settled();
    index.apply_network(network(BackendType::HostGw));
    let Some(Update::Full(Inputs::Ready(after))) = index.take() else {
        panic!("a full plan")
    };
    assert_eq!(after.network.backend.type_, BackendType::HostGw);
    assert_eq!(after.peers.len(), 2);
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
fn a_relist_that_changes_nothing_plans_nothing() {
    let mut index = settled();
    let changed = index.reset_subnets(vec![
        subnet("a", "10.244.1.0/24"),
        addressed("b", "10.244.2.0/24", "192.168.0.2"),
        addressed("c", "10.244.3.0/24", "192.168.0.3"),
    ]);
    assert!(!changed);
    assert_eq!(index.take(), None);
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
    assert!(index.apply_node(node.clone()));
    assert!(!index.apply_node(node), "the same Node again is no change");
    let Inputs::Ready(ready) = index.inputs() else {
        panic!("ready")
    };
    assert_eq!(ready.node_ip, Some(Ipv4Addr::new(10, 0, 0, 7)));
}
