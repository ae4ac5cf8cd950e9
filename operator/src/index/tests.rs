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
