use std::collections::BTreeMap;

use super::*;
use crate::netpol::compile::{Group, PeerSets, PortRange};
use crate::netpol::model::{Key, Protocol};

fn compiled(pods: &[&str], peers: &[&str]) -> Compiled {
    let set = SetId("a1".into());
    let group = GroupId("i1".into());
    let ports: Vec<PortRange> = vec![(Protocol::Tcp, 80, 80)];
    Compiled {
        ingress: pods
            .iter()
            .map(|p| (p.parse().expect("ip"), group.clone()))
            .collect(),
        egress: BTreeMap::new(),
        groups: BTreeMap::from([(
            group,
            Group {
                direction: Direction::Ingress,
                policies: [Key {
                    namespace: "a".into(),
                    name: "p".into(),
                }]
                .into(),
                allows: vec![Allow::Ports(
                    Some(PeerSets {
                        hosts: None,
                        nets: Some(set.clone()),
                    }),
                    ports,
                )],
            },
        )]),
        sets: BTreeMap::from([(
            set,
            SetElements::Nets(peers.iter().map(|p| p.parse().expect("net")).collect()),
        )]),
    }
}

fn commands(value: &Value) -> Vec<String> {
    value["nftables"]
        .as_array()
        .expect("commands")
        .iter()
        .map(|c| c.to_string())
        .collect()
}

#[test]
fn the_rule_count_does_not_grow_with_pods_or_peers() {
    let rules = |v: &Value| {
        commands(v)
            .iter()
            .filter(|c| c.contains("\"rule\""))
            .count()
    };
    let small = full(
        &compiled(&["10.244.1.2"], &["10.244.2.0/24", "fd00::/64"]),
        1,
    );
    let pods: Vec<String> = (2..250).map(|i| format!("10.244.1.{i}")).collect();
    let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
    let large = full(
        &compiled(&pods, &["10.244.2.0/24", "10.9.0.0/16", "fd00::/64"]),
        1,
    );
    assert_eq!(rules(&small), rules(&large));
    let text = large.to_string();
    assert!(
        text.contains("\"proto-src\"") && text.contains("\"vmap\""),
        "{text}"
    );
}

/// An IPv4-only ipBlock costs no IPv6 interval set and no IPv6 rule (nft
/// reads every interval set of the table on each change, empty or not).
#[test]
fn an_ipv4_block_makes_no_ipv6_set_or_rule() {
    let text = full(&compiled(&["10.244.1.2"], &["10.244.2.0/24"]), 1).to_string();
    assert!(text.contains("\"a1-4\""), "{text}");
    assert!(
        !text.contains("\"a1-6\"") && !text.contains("@a1-6"),
        "{text}"
    );
    let dual = full(
        &compiled(&["10.244.1.2"], &["10.244.2.0/24", "fd00::/64"]),
        1,
    );
    assert!(dual.to_string().contains("@a1-6"));
    // Removing the set removes only what exists, or nft refuses the whole transaction.
    let mut none = compiled(&["10.244.1.2"], &["10.244.2.0/24"]);
    none.sets.clear();
    none.groups.clear();
    let gone = commands(&incremental(
        &compiled(&["10.244.1.2"], &["10.244.2.0/24"]),
        &none,
        2,
    ));
    let deleted: Vec<&String> = gone
        .iter()
        .filter(|c| c.contains("\"delete\"") && c.contains("\"set\""))
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
}

#[test]
fn a_peer_joining_changes_one_element_and_the_generation_only() {
    let before = compiled(&["10.244.1.2"], &["10.244.2.5/32"]);
    let after = compiled(&["10.244.1.2"], &["10.244.2.5/32", "10.244.3.7/32"]);
    let cmds = commands(&incremental(&before, &after, 2));
    let elements: Vec<&String> = cmds
        .iter()
        .filter(|c| c.contains("\"element\"") && !c.contains("generation"))
        .collect();
    assert_eq!(elements.len(), 1, "{cmds:?}");
    assert!(
        !cmds.iter().any(|c| c.contains("\"rule\"")),
        "no rule is touched: {cmds:?}"
    );
    assert!(elements[0].starts_with("{\"add\"") && elements[0].contains("10.244.3.7"));
    assert!(
        !cmds.iter().any(|c| c.starts_with("{\"add\":{\"chain\"")),
        "no chain is added"
    );
    assert!(
        cmds.iter().any(|c| c.contains(&mark(2).to_string())),
        "the new generation"
    );
}

#[test]
fn a_group_no_longer_used_is_deleted_after_its_map_entries() {
    let before = compiled(&["10.244.1.2"], &["10.244.2.5/32"]);
    let cmds = commands(&incremental(&before, &Compiled::default(), 3));
    let map_delete = cmds
        .iter()
        .position(|c| c.starts_with("{\"delete\"") && c.contains("ingress4"));
    let chain_delete = cmds
        .iter()
        .position(|c| c.starts_with("{\"delete\":{\"chain\""));
    assert!(
        map_delete < chain_delete && chain_delete.is_some(),
        "{cmds:?}"
    );
    assert!(
        cmds.last().is_some_and(|c| c.contains("\"set\"")),
        "sets go last"
    );
}

#[test]
fn generations_stay_in_their_bits() {
    assert_eq!(mark(1), 0x100);
    assert_eq!(mark(GENERATIONS + 5), mark(5));
    assert_eq!(mark(GENERATIONS - 1) & 0xff, 0);
}
