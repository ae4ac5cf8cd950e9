//! The OverlayNetwork status, computed from the index's running counts. Pure,
//! and O(problems): it never walks the NodeSubnets.

use tartan_crds::condition::{self, Condition};
use tartan_crds::{CONDITION_READY, OverlayNetwork, OverlayNetworkStatus};

use crate::index::SubnetIndex;

pub const CONDITION_POOL_EXHAUSTED: &str = "PoolExhausted";

/// The status the network should have; conditions keep their transition time
/// when their status did not change.
pub fn network_status(network: &OverlayNetwork, index: &SubnetIndex) -> OverlayNetworkStatus {
    let generation = network.metadata.generation;
    let mut status = network.status.clone().unwrap_or_default();
    let usage = index.ipv4_usage();
    status.capacity = usage.map_or(0, |u| u.capacity);
    status.allocated = usage.map_or(0, |u| u.allocated);
    let counts = index.counts();
    status.nodes_ready = counts.ready;
    status.nodes_by_backend = counts.by_backend;
    status.observed_generation = generation;

    let waiting = index.waiting().len();
    let exhausted = if waiting > 0 {
        Condition::truthy(CONDITION_POOL_EXHAUSTED, "NodesWaiting").message(format!(
            "{waiting} node(s) have no subnet: all {} node subnets of the pool are allocated",
            status.capacity
        ))
    } else {
        Condition::falsy(CONDITION_POOL_EXHAUSTED, "RoomLeft").message(format!(
            "{} of {} node subnets allocated",
            status.allocated, status.capacity
        ))
    };
    let total = counts.nodes;
    let conflicts = index.problems().len();
    let ready = if let Some(err) = index.network_error() {
        Condition::falsy(CONDITION_READY, "InvalidSpec").message(err.to_string())
    } else if waiting > 0 {
        Condition::falsy(CONDITION_READY, "PoolExhausted")
            .message(format!("{waiting} node(s) are waiting for a subnet"))
    } else if conflicts > 0 {
        Condition::falsy(CONDITION_READY, "SubnetConflicts").message(format!(
            "{conflicts} NodeSubnet(s) are not valid allocations; see their Conflict condition"
        ))
    } else if status.nodes_ready < total {
        Condition::falsy(CONDITION_READY, "NodesNotReady")
            .message(format!("{} of {total} nodes ready", status.nodes_ready))
    } else {
        Condition::truthy(CONDITION_READY, "AllNodesReady")
            .message(format!("{total} of {total} nodes ready"))
    };
    condition::set(&mut status.conditions, ready.generation(generation));
    condition::set(&mut status.conditions, exhausted.generation(generation));
    status
}

/// Whether writing `new` over `old` would change anything but timestamps.
pub fn differs(old: Option<&OverlayNetworkStatus>, new: &OverlayNetworkStatus) -> bool {
    let Some(old) = old else { return true };
    let same_conditions = old.conditions.len() == new.conditions.len()
        && old
            .conditions
            .iter()
            .zip(&new.conditions)
            .all(|(a, b)| a.same_as(b) && a.last_transition_time == b.last_transition_time);
    !(same_conditions
        && old.capacity == new.capacity
        && old.allocated == new.allocated
        && old.nodes_ready == new.nodes_ready
        && old.nodes_by_backend == new.nodes_by_backend
        && old.observed_generation == new.observed_generation)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::fixtures::{NetworkFixture, NodeSubnetFixture};
    use crate::ipam::Preference;
    use tartan_crds::{BackendType, NodeSubnet};

    fn index(subnets: &[NodeSubnet], network: &OverlayNetwork) -> SubnetIndex {
        let mut index = SubnetIndex::new("default");
        index.set_network(Some(&network.spec));
        index.reset(subnets);
        index
    }

    #[test]
    fn aggregates_capacity_readiness_and_rollout() {
        let network = OverlayNetwork::test();
        let subnets = vec![
            NodeSubnet::test()
                .for_node("a")
                .with_cidr("10.244.0.0/24")
                .ready(BackendType::Vxlan),
            NodeSubnet::test()
                .for_node("b")
                .with_cidr("10.244.1.0/24")
                .ready(BackendType::HostGw),
            NodeSubnet::test().for_node("c").with_cidr("10.244.2.0/24"),
        ];
        let status = network_status(&network, &index(&subnets, &network));
        assert_eq!(
            (status.capacity, status.allocated, status.nodes_ready),
            (256, 3, 2)
        );
        assert_eq!(
            status.nodes_by_backend,
            BTreeMap::from([(BackendType::Vxlan, 1), (BackendType::HostGw, 1)])
        );
        let ready = condition::find(&status.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.reason.as_str(), ready.message.as_str()),
            ("NodesNotReady", "2 of 3 nodes ready")
        );
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(status.observed_generation, Some(1));
        assert!(!condition::is_true(
            &status.conditions,
            CONDITION_POOL_EXHAUSTED
        ));
    }

    #[test]
    fn all_ready_is_ready() {
        let network = OverlayNetwork::test();
        let subnets = vec![
            NodeSubnet::test()
                .for_node("a")
                .with_cidr("10.244.0.0/24")
                .ready(BackendType::Vxlan),
        ];
        let status = network_status(&network, &index(&subnets, &network));
        assert!(condition::is_true(&status.conditions, "Ready"));
    }

    #[test]
    fn exhaustion_shows_in_both_conditions() {
        let network = OverlayNetwork::test().with_cidr("10.244.0.0/24", 24);
        let subnets = vec![
            NodeSubnet::test()
                .for_node("a")
                .with_cidr("10.244.0.0/24")
                .ready(BackendType::Vxlan),
        ];
        let mut index = index(&subnets, &network);
        assert!(index.allocate("b", Preference::default()).is_err());
        let status = network_status(&network, &index);
        let exhausted =
            condition::find(&status.conditions, CONDITION_POOL_EXHAUSTED).expect("condition");
        assert!(exhausted.is_true());
        assert_eq!(
            exhausted.message,
            "1 node(s) have no subnet: all 1 node subnets of the pool are allocated"
        );
        assert_eq!(
            condition::find(&status.conditions, "Ready").map(|c| c.reason.as_str()),
            Some("PoolExhausted")
        );
    }

    #[test]
    fn unchanged_status_is_not_rewritten() {
        let network = OverlayNetwork::test();
        let subnets = vec![
            NodeSubnet::test()
                .for_node("a")
                .with_cidr("10.244.0.0/24")
                .ready(BackendType::Vxlan),
        ];
        let idx = index(&subnets, &network);
        let first = network_status(&network, &idx);
        let mut network = network;
        network.status = Some(first.clone());
        let second = network_status(&network, &idx);
        assert!(!differs(Some(&first), &second));
        assert!(differs(None, &second));
    }
}
