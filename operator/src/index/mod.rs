//! The allocation index: every NodeSubnet the operator has seen, the network
//! they were cut from, and the IPAM state rebuilt from them.
//!
//! Fed by the NodeSubnet watch (`apply`, `delete`, `reset` on a relist) and by
//! the operator's own allocations, so a subnet handed out is taken before its
//! NodeSubnet comes back through the watch. It also keeps the readiness and
//! rollout counts of the status ([`tally`]) per event. No kube client, no
//! I/O: tests drive it synchronously.

pub mod tally;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tartan_crds::{NodeSubnet, OverlayNetworkSpec, ValidNetwork, ValidationError};

use crate::ipam::{Allocation, Ipam, IpamError, Preference, Usage};
use tally::{Contribution, Counts};

/// Why a NodeSubnet does not count as an allocation of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Its CIDR is held by an older NodeSubnet (e.g. restored from a backup).
    Duplicate { message: String },
    /// Its CIDR is not a node subnet of the pool.
    OutsidePool { message: String },
    /// Its spec does not parse.
    Invalid { message: String },
}

impl Problem {
    /// The `reason` of the `Conflict` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Problem::Duplicate { .. } => "DuplicateCIDR",
            Problem::OutsidePool { .. } => "OutsidePool",
            Problem::Invalid { .. } => "InvalidSpec",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Problem::Duplicate { message }
            | Problem::OutsidePool { message }
            | Problem::Invalid { message } => message,
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    created: Option<Time>,
    uid: Option<String>,
    spec: Result<Allocation, ValidationError>,
    contribution: Contribution,
}

#[derive(Debug)]
pub struct SubnetIndex {
    network_name: String,
    network: Option<Result<ValidNetwork, ValidationError>>,
    records: BTreeMap<String, Record>,
    ipam: Option<Ipam>,
    problems: BTreeMap<String, Problem>,
    /// Nodes waiting for a subnet because the pool is full.
    waiting: BTreeMap<String, IpamError>,
    /// What each waiting node asked for, so a retry need not read the Node again.
    preferences: BTreeMap<String, Preference>,
    /// The sum of every record's contribution, problems included (see [`Self::counts`]).
    counts: Counts,
    synced: bool,
}

impl SubnetIndex {
    pub fn new(network_name: impl Into<String>) -> Self {
        Self {
            network_name: network_name.into(),
            network: None,
            records: BTreeMap::new(),
            ipam: None,
            problems: BTreeMap::new(),
            waiting: BTreeMap::new(),
            preferences: BTreeMap::new(),
            counts: Counts::default(),
            synced: false,
        }
    }

    pub fn network_name(&self) -> &str {
        &self.network_name
    }

    /// The OverlayNetwork changed (or went away). Rebuilds the IPAM when the pool changed.
    pub fn set_network(&mut self, spec: Option<&OverlayNetworkSpec>) {
        let next = spec.map(OverlayNetworkSpec::validate);
        let pool = |n: &Option<Result<ValidNetwork, ValidationError>>| {
            n.as_ref()
                .and_then(|r| r.as_ref().ok())
                .map(|v| (v.cidr, v.node_prefix_length, v.ipv6))
        };
        let rebuild = pool(&next) != pool(&self.network);
        self.network = next;
        if rebuild {
            self.rebuild();
        }
    }

    /// The network, when it exists and is valid.
    pub fn network(&self) -> Option<&ValidNetwork> {
        self.network.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// Why the network cannot be used, when it exists but is invalid.
    pub fn network_error(&self) -> Option<&ValidationError> {
        self.network.as_ref().and_then(|r| r.as_ref().err())
    }

    /// Whether the first full list of NodeSubnets has been seen: until then
    /// nothing may be allocated, or an existing subnet could be handed out twice.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The full list of NodeSubnets (watch start or relist).
    pub fn reset(&mut self, subnets: &[NodeSubnet]) {
        self.records = subnets
            .iter()
            .filter(|s| s.spec.network == self.network_name)
            .map(|s| (s.name_any(), record(s)))
            .collect();
        self.counts = Counts::of(self.records.values().map(|r| r.contribution));
        self.synced = true;
        self.rebuild();
    }

    /// One NodeSubnet was created or changed.
    pub fn apply(&mut self, subnet: &NodeSubnet) {
        if subnet.spec.network != self.network_name {
            return;
        }
        let name = subnet.name_any();
        let record = record(subnet);
        let old = self.records.get_mut(&name);
        match old.as_ref() {
            Some(old) => self.counts.replace(old.contribution, record.contribution),
            None => self.counts.add(record.contribution),
        }
        if let Some(old) = old
            && old.spec == record.spec
            && old.uid == record.uid
        {
            // A status change (the common event): the counts moved, nothing else does.
            old.contribution = record.contribution;
            return;
        }
        let is_new = !self.records.contains_key(&name);
        let allocation = record.spec.clone();
        self.records.insert(name.clone(), record);
        // A new object is the newest: when it places cleanly nothing else moves,
        // so the O(n) rebuild is needed only for changes and problems.
        let placed = is_new
            && match (allocation, self.ipam.as_mut()) {
                (Ok(allocation), Some(ipam)) => ipam.place(&name, allocation).is_ok(),
                _ => false,
            };
        if !placed {
            self.rebuild();
        }
    }

    /// One NodeSubnet was deleted. Returns whether a subnet went back to the pool.
    pub fn delete(&mut self, name: &str) -> bool {
        let Some(record) = self.records.remove(name) else {
            return false;
        };
        self.counts.remove(record.contribution);
        let had_problem = self.problems.contains_key(name);
        let freed = self.ipam.as_mut().and_then(|i| i.release(name)).is_some();
        if had_problem || freed {
            // A duplicate of the deleted object may now hold its subnet legitimately.
            self.rebuild();
        }
        freed
    }

    /// The node's subnets: the one it holds, else a new one. Records the new
    /// allocation at once so the next node cannot get it.
    pub fn allocate(
        &mut self,
        node: &str,
        preference: Preference,
    ) -> Result<Allocation, AllocateError> {
        if !self.synced {
            return Err(AllocateError::NotSynced);
        }
        let ipam = self.ipam.as_mut().ok_or(AllocateError::NoNetwork)?;
        match ipam.allocate(node, preference) {
            Ok(allocation) => {
                self.waiting.remove(node);
                self.preferences.remove(node);
                Ok(allocation)
            }
            Err(e) => {
                self.waiting.insert(node.to_string(), e.clone());
                self.preferences.insert(node.to_string(), preference);
                Err(AllocateError::Ipam(e))
            }
        }
    }

    /// Undoes an allocation whose NodeSubnet could not be written.
    pub fn forget_allocation(&mut self, node: &str) {
        if !self.records.contains_key(node)
            && let Some(ipam) = self.ipam.as_mut()
        {
            ipam.release(node);
        }
    }

    /// A node that left the cluster is no longer waiting for a subnet.
    pub fn node_gone(&mut self, node: &str) {
        self.waiting.remove(node);
        self.preferences.remove(node);
    }

    /// What a waiting node asked for when it was first turned away.
    pub fn waiting_preference(&self, node: &str) -> Option<Preference> {
        self.preferences.get(node).copied()
    }

    /// The counts over the NodeSubnets that are valid allocations: the running
    /// sum less the few that are problems. O(problems), not O(NodeSubnets).
    pub fn counts(&self) -> Counts {
        let mut counts = self.counts.clone();
        for name in self.problems.keys() {
            if let Some(record) = self.records.get(name) {
                counts.remove(record.contribution);
            }
        }
        counts
    }

    /// The allocation recorded for a NodeSubnet name, when it is a valid one.
    pub fn allocation(&self, name: &str) -> Option<Allocation> {
        self.ipam.as_ref().and_then(|i| i.get(name))
    }

    /// Whether a NodeSubnet of that name exists (valid or not).
    pub fn has_subnet(&self, name: &str) -> bool {
        self.records.contains_key(name)
    }

    pub fn problem(&self, name: &str) -> Option<&Problem> {
        self.problems.get(name)
    }

    pub fn problems(&self) -> &BTreeMap<String, Problem> {
        &self.problems
    }

    pub fn waiting(&self) -> &BTreeMap<String, IpamError> {
        &self.waiting
    }

    pub fn ipv4_usage(&self) -> Option<Usage> {
        self.ipam.as_ref().map(Ipam::ipv4_usage)
    }

    pub fn ipv6_usage(&self) -> Option<Usage> {
        self.ipam.as_ref().and_then(Ipam::ipv6_usage)
    }

    pub fn has_room(&self) -> bool {
        self.ipam.as_ref().is_some_and(Ipam::has_room)
    }

    /// Places every record, oldest first, so that of two NodeSubnets holding one
    /// CIDR the newer one is the conflict. Allocations made but not yet seen
    /// through the watch are kept.
    fn rebuild(&mut self) {
        self.problems.clear();
        let Some(network) = self.network().cloned() else {
            self.ipam = None;
            return;
        };
        let pending: Vec<(String, Allocation)> = self
            .ipam
            .as_ref()
            .map(|i| {
                i.nodes()
                    .filter(|(n, _)| !self.records.contains_key(*n))
                    .map(|(n, a)| (n.to_string(), *a))
                    .collect()
            })
            .unwrap_or_default();
        let mut ipam = Ipam::new(&network);
        let mut order: Vec<(&String, &Record)> = self.records.iter().collect();
        order.sort_by(|a, b| (&a.1.created, a.0).cmp(&(&b.1.created, b.0)));
        for (name, record) in order {
            let problem = match &record.spec {
                Err(e) => Some(Problem::Invalid {
                    message: e.to_string(),
                }),
                Ok(allocation) => match ipam.place(name, *allocation) {
                    Ok(()) => None,
                    Err(e @ IpamError::Conflict { .. }) => Some(Problem::Duplicate {
                        message: e.to_string(),
                    }),
                    Err(e) => Some(Problem::OutsidePool {
                        message: e.to_string(),
                    }),
                },
            };
            if let Some(problem) = problem {
                self.problems.insert(name.clone(), problem);
            }
        }
        for (node, allocation) in pending {
            // Only fails when a NodeSubnet now holds it, which then wins.
            let _ = ipam.place(&node, allocation);
        }
        self.ipam = Some(ipam);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocateError {
    #[error("the NodeSubnets have not been listed yet")]
    NotSynced,
    #[error("the OverlayNetwork does not exist or is invalid")]
    NoNetwork,
    #[error(transparent)]
    Ipam(IpamError),
}

fn record(subnet: &NodeSubnet) -> Record {
    Record {
        created: subnet.metadata.creation_timestamp.clone(),
        uid: subnet.metadata.uid.clone(),
        spec: subnet.spec.validate().map(|v| Allocation {
            ipv4: v.cidr,
            ipv6: v.ipv6_cidr,
        }),
        contribution: Contribution::of(subnet),
    }
}

#[cfg(test)]
mod tests;
