//! Readiness and rollout counts of the network's NodeSubnets, kept per event.
//!
//! Each NodeSubnet contributes one [`Contribution`] (ready? which backend?);
//! [`Counts`] is their sum. A watch event swaps one contribution for another,
//! so the OverlayNetwork status costs O(1) per NodeSubnet change instead of a
//! scan of all N. A relist recomputes the sum from scratch: the safety net.

use std::collections::BTreeMap;

use tartan_crds::condition;
use tartan_crds::{BackendType, CONDITION_READY, NodeSubnet};

/// What one NodeSubnet adds to the counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contribution {
    pub ready: bool,
    pub backend: Option<BackendType>,
}

impl Contribution {
    pub fn of(subnet: &NodeSubnet) -> Self {
        let status = subnet.status.as_ref();
        Self {
            ready: status.is_some_and(|s| condition::is_true(&s.conditions, CONDITION_READY)),
            backend: status.and_then(|s| s.backend),
        }
    }
}

/// Sums over NodeSubnets: how many, how many ready, how many send with each backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub nodes: u32,
    pub ready: u32,
    /// Only backends with at least one node: equal sums compare equal.
    pub by_backend: BTreeMap<BackendType, u32>,
}

impl Counts {
    /// The full recompute, for a relist (and for tests to check the deltas against).
    pub fn of(contributions: impl IntoIterator<Item = Contribution>) -> Self {
        let mut counts = Counts::default();
        for c in contributions {
            counts.add(c);
        }
        counts
    }

    pub fn add(&mut self, c: Contribution) {
        self.nodes += 1;
        self.ready += u32::from(c.ready);
        if let Some(backend) = c.backend {
            *self.by_backend.entry(backend).or_insert(0) += 1;
        }
    }

    /// Takes back what [`Counts::add`] added for `c`. Saturates, so a caller's
    /// mistake shows as a wrong count rather than a panic in the operator.
    pub fn remove(&mut self, c: Contribution) {
        self.nodes = self.nodes.saturating_sub(1);
        self.ready = self.ready.saturating_sub(u32::from(c.ready));
        if let Some(backend) = c.backend
            && let Some(count) = self.by_backend.get_mut(&backend)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.by_backend.remove(&backend);
            }
        }
    }

    /// One NodeSubnet changed from `old` to `new`.
    pub fn replace(&mut self, old: Contribution, new: Contribution) {
        if old != new {
            self.remove(old);
            self.add(new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VXLAN_READY: Contribution = Contribution {
        ready: true,
        backend: Some(BackendType::Vxlan),
    };
    const HOST_GW_PENDING: Contribution = Contribution {
        ready: false,
        backend: Some(BackendType::HostGw),
    };
    const NEW: Contribution = Contribution {
        ready: false,
        backend: None,
    };

    #[test]
    fn a_change_moves_only_its_own_counters() {
        let mut counts = Counts::of([VXLAN_READY, VXLAN_READY, NEW]);
        let before = counts.clone();
        counts.replace(NEW, HOST_GW_PENDING);
        assert_eq!((counts.nodes, counts.ready), (before.nodes, before.ready));
        assert_eq!(counts.by_backend[&BackendType::Vxlan], 2);
        assert_eq!(counts.by_backend[&BackendType::HostGw], 1);
        counts.replace(VXLAN_READY, HOST_GW_PENDING);
        assert_eq!(
            counts,
            Counts::of([VXLAN_READY, HOST_GW_PENDING, HOST_GW_PENDING])
        );
    }

    #[test]
    fn removing_the_last_of_a_backend_drops_its_entry() {
        let mut counts = Counts::of([HOST_GW_PENDING]);
        counts.remove(HOST_GW_PENDING);
        assert_eq!(counts, Counts::default());
    }

    #[test]
    fn removing_too_much_saturates() {
        let mut counts = Counts::default();
        counts.remove(VXLAN_READY);
        assert_eq!(counts, Counts::default());
    }
}
