use super::*;
use crate::fixtures::{NetworkFixture, NodeSubnetFixture};
use tartan_crds::OverlayNetwork;

fn synced(subnets: &[NodeSubnet]) -> SubnetIndex {
    let mut index = SubnetIndex::new("default");
    index.set_network(Some(&OverlayNetwork::test().spec));
    index.reset(subnets);
    index
}

fn v4(a: &Allocation) -> String {
    a.ipv4.to_string()
}

#[test]
fn nothing_is_allocated_before_the_first_list() {
    let mut index = SubnetIndex::new("default");
    index.set_network(Some(&OverlayNetwork::test().spec));
    assert_eq!(
        index.allocate("n1", Preference::default()),
        Err(AllocateError::NotSynced)
    );
}

#[test]
fn nothing_is_allocated_without_a_network() {
    let mut index = SubnetIndex::new("default");
    index.reset(&[]);
    assert_eq!(
        index.allocate("n1", Preference::default()),
        Err(AllocateError::NoNetwork)
    );
}

#[test]
fn restart_keeps_existing_allocations_and_never_hands_them_out_again() {
    let existing = [
        NodeSubnet::test().for_node("a").with_cidr("10.244.0.0/24"),
        NodeSubnet::test().for_node("b").with_cidr("10.244.2.0/24"),
    ];
    let mut index = synced(&existing);
    assert_eq!(
        index.allocate("a", Preference::default()).map(|a| v4(&a)),
        Ok("10.244.0.0/24".into())
    );
    assert_eq!(
        index.allocate("c", Preference::default()).map(|a| v4(&a)),
        Ok("10.244.1.0/24".into())
    );
    assert_eq!(
        index.allocate("d", Preference::default()).map(|a| v4(&a)),
        Ok("10.244.3.0/24".into())
    );
}

#[test]
fn an_allocation_is_held_before_the_watch_reports_it() {
    let mut index = synced(&[]);
    let a = index.allocate("a", Preference::default()).expect("room");
    // An unrelated relist that does not yet include "a" keeps it taken.
    index.reset(&[NodeSubnet::test().for_node("z").with_cidr("10.244.9.0/24")]);
    let b = index.allocate("b", Preference::default()).expect("room");
    assert_ne!(a.ipv4, b.ipv4);
    assert_eq!(index.allocation("a"), Some(a));
}

#[test]
fn the_newer_of_two_nodesubnets_with_one_cidr_is_the_conflict() {
    let old = NodeSubnet::test()
        .for_node("old")
        .with_cidr("10.244.5.0/24")
        .created_at(100);
    let new = NodeSubnet::test()
        .for_node("new")
        .with_cidr("10.244.5.0/24")
        .created_at(200);
    let index = synced(&[new.clone(), old.clone()]);
    assert_eq!(index.problem("old"), None);
    let problem = index.problem("new").expect("conflict");
    assert_eq!(problem.reason(), "DuplicateCIDR");
    assert_eq!(
        problem.message(),
        "10.244.5.0/24 of node new is already allocated to node old"
    );
    // Incrementally too: the restored one arrives later through the watch.
    let mut index = synced(&[old]);
    index.apply(&new);
    assert_eq!(
        index.problem("new").map(Problem::reason),
        Some("DuplicateCIDR")
    );
}

#[test]
fn deleting_the_holder_resolves_the_duplicate() {
    let old = NodeSubnet::test()
        .for_node("old")
        .with_cidr("10.244.5.0/24")
        .created_at(100);
    let new = NodeSubnet::test()
        .for_node("new")
        .with_cidr("10.244.5.0/24")
        .created_at(200);
    let mut index = synced(&[old, new]);
    assert!(index.delete("old"));
    assert!(index.problems().is_empty());
    assert_eq!(
        index.allocation("new").map(|a| v4(&a)),
        Some("10.244.5.0/24".into())
    );
}

#[test]
fn subnets_outside_the_pool_and_invalid_specs_are_problems() {
    let outside = NodeSubnet::test().for_node("x").with_cidr("10.9.0.0/24");
    let invalid = NodeSubnet::test().for_node("y").with_cidr("10.244.1.7/24");
    let index = synced(&[outside, invalid]);
    assert_eq!(index.problem("x").map(Problem::reason), Some("OutsidePool"));
    assert_eq!(index.problem("y").map(Problem::reason), Some("InvalidSpec"));
    assert!(
        index
            .problem("y")
            .is_some_and(|p| p.message().starts_with("spec.cidr: invalid value"))
    );
    assert_eq!(index.ipv4_usage().map(|u| u.allocated), Some(0));
}

#[test]
fn subnets_of_other_networks_are_ignored() {
    let mut other = NodeSubnet::test().for_node("a").with_cidr("10.244.0.0/24");
    other.spec.network = "other".into();
    let index = synced(&[other]);
    assert!(!index.has_subnet("a"));
    assert_eq!(index.ipv4_usage().map(|u| u.allocated), Some(0));
}

#[test]
fn exhaustion_marks_the_node_waiting_until_room_frees() {
    let mut index = SubnetIndex::new("default");
    index.set_network(Some(
        &OverlayNetwork::test().with_cidr("10.244.0.0/23", 24).spec,
    ));
    index.reset(&[
        NodeSubnet::test().for_node("a").with_cidr("10.244.0.0/24"),
        NodeSubnet::test().for_node("b").with_cidr("10.244.1.0/24"),
    ]);
    let err = index.allocate("c", Preference::default()).unwrap_err();
    assert!(
        matches!(err, AllocateError::Ipam(IpamError::Exhausted { .. })),
        "{err}"
    );
    assert!(index.waiting().contains_key("c"));
    assert!(index.delete("a"));
    assert!(index.has_room());
    assert_eq!(
        index.allocate("c", Preference::default()).map(|a| v4(&a)),
        Ok("10.244.0.0/24".into())
    );
    assert!(index.waiting().is_empty());
}

#[test]
fn a_failed_write_gives_the_subnet_back() {
    let mut index = synced(&[]);
    let a = index.allocate("a", Preference::default()).expect("room");
    index.forget_allocation("a");
    assert_eq!(
        index.allocate("b", Preference::default()).map(|b| b.ipv4),
        Ok(a.ipv4)
    );
}

#[test]
fn an_invalid_network_is_reported_and_allocates_nothing() {
    let mut index = SubnetIndex::new("default");
    let mut spec = OverlayNetwork::test().spec;
    spec.cidr = "10.244.0.1/16".into();
    index.set_network(Some(&spec));
    index.reset(&[]);
    assert_eq!(
        index.network_error().map(|e| e.field.as_str()),
        Some("spec.cidr")
    );
    assert_eq!(
        index.allocate("a", Preference::default()),
        Err(AllocateError::NoNetwork)
    );
}

mod counts {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use tartan_crds::BackendType;

    use super::*;
    use crate::index::tally::{Contribution, Counts};

    fn subnet(node: &str, cidr: &str, ready: bool, backend: Option<BackendType>) -> NodeSubnet {
        let mut s = NodeSubnet::test().for_node(node).with_cidr(cidr);
        if let Some(backend) = backend {
            s = s.ready(backend);
            if !ready && let Some(status) = s.status.as_mut() {
                status.conditions.clear();
            }
        }
        s
    }

    /// The counts as the old full scan computed them.
    fn recomputed<'a>(
        index: &SubnetIndex,
        subnets: impl Iterator<Item = &'a NodeSubnet>,
    ) -> Counts {
        Counts::of(
            subnets
                .filter(|s| index.problem(&s.name_any()).is_none())
                .map(Contribution::of),
        )
    }

    #[test]
    fn a_status_change_moves_only_that_nodes_counters() {
        let mut index = synced(&[
            subnet("a", "10.244.0.0/24", true, Some(BackendType::Vxlan)),
            subnet("b", "10.244.1.0/24", false, None),
        ]);
        let before = index.counts();
        assert_eq!((before.nodes, before.ready), (2, 1));
        index.apply(&subnet(
            "b",
            "10.244.1.0/24",
            true,
            Some(BackendType::HostGw),
        ));
        let after = index.counts();
        assert_eq!((after.nodes, after.ready), (2, 2));
        assert_eq!(
            after.by_backend,
            BTreeMap::from([(BackendType::Vxlan, 1), (BackendType::HostGw, 1)])
        );
        assert_eq!(
            index.allocation("b").map(|a| v4(&a)),
            Some("10.244.1.0/24".into()),
            "the allocation is untouched"
        );
    }

    #[test]
    fn a_conflicting_nodesubnet_is_not_counted() {
        let old = subnet("old", "10.244.5.0/24", true, Some(BackendType::Vxlan)).created_at(100);
        let new = subnet("new", "10.244.5.0/24", true, Some(BackendType::Udp)).created_at(200);
        let index = synced(&[old, new]);
        let counts = index.counts();
        assert_eq!((counts.nodes, counts.ready), (1, 1));
        assert_eq!(counts.by_backend, BTreeMap::from([(BackendType::Vxlan, 1)]));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Apply {
            node: u8,
            cidr: u8,
            ready: bool,
            backend: Option<BackendType>,
        },
        Delete {
            node: u8,
        },
        Relist,
    }

    fn op() -> impl Strategy<Value = Op> {
        let backend = prop_oneof![
            Just(None),
            Just(Some(BackendType::Vxlan)),
            Just(Some(BackendType::HostGw)),
        ];
        prop_oneof![
            6 => (0u8..8, 0u8..6, any::<bool>(), backend)
                .prop_map(|(node, cidr, ready, backend)| Op::Apply { node, cidr, ready, backend }),
            2 => (0u8..8).prop_map(|node| Op::Delete { node }),
            1 => Just(Op::Relist),
        ]
    }

    proptest! {
        #[test]
        fn running_counts_equal_a_full_recompute(ops in prop::collection::vec(op(), 1..60)) {
            let mut index = synced(&[]);
            let mut model: BTreeMap<String, NodeSubnet> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Apply { node, cidr, ready, backend } => {
                        let s = subnet(&format!("n{node}"), &format!("10.244.{cidr}.0/24"), ready, backend);
                        index.apply(&s);
                        model.insert(s.name_any(), s);
                    }
                    Op::Delete { node } => {
                        index.delete(&format!("n{node}"));
                        model.remove(&format!("n{node}"));
                    }
                    Op::Relist => {
                        let all: Vec<NodeSubnet> = model.values().cloned().collect();
                        index.reset(&all);
                    }
                }
                prop_assert_eq!(index.counts(), recomputed(&index, model.values()));
            }
        }
    }
}
