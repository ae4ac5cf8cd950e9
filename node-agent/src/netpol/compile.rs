//! The policy compiler, pure: (policies, pods, namespaces, this node) → what
//! this node's nftables must hold to enforce them at its own pods.
//!
//! ```text
//!   local pod address ──dispatch map──▶ group (one per distinct set of rules)
//!   group = ordered allows; the first that matches returns, else drop
//!   allow = peers (an address set) × ports (ranges in the rule) | (peer, proto, port) set
//! ```
//!
//! Pods that the same policies select, with the same ports resolved, share a
//! group, and a rule's peers are one set shared by every group that uses it:
//! the number of rules grows with the policies, never with the pods, and a
//! pod joining a selector changes set elements, not rules. Named ports resolve
//! on the destination pod: for ingress that is the local pod (the group), for
//! egress each peer (a `(peer, protocol, port)` set).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use tartan_crds::selector::matches;

use super::addrs;
use super::model::{Key, Labels, Namespaces, Peer, Pod, Policy, PortSpec, Protocol, Rule};

pub struct Inputs<'a> {
    pub node: &'a str,
    pub policies: &'a BTreeMap<Key, Policy>,
    pub pods: &'a BTreeMap<Key, Pod>,
    pub namespaces: &'a BTreeMap<String, Labels>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A protocol and a port range, both ends included.
pub type PortRange = (Protocol, u16, u16);

/// A set's name: a hash of the rule it serves, stable while its elements change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetId(pub String);

/// A group's name: a hash of its allows, so a chain's content never changes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetElements {
    /// Pod addresses: a hash set. Pods come and go, and nft handles a change
    /// to a hash set without reading the table's interval sets.
    Hosts(BTreeSet<IpAddr>),
    /// ipBlock prefixes, disjoint ([`addrs::normalize`]): an interval set.
    Nets(Vec<IpNet>),
    /// Exact (peer address, protocol, port): egress named ports.
    PeerPorts(BTreeSet<(IpAddr, Protocol, u16)>),
}

/// A rule's peers: the pods its selectors match, the ipBlocks it names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerSets {
    pub hosts: Option<SetId>,
    pub nets: Option<SetId>,
}

impl PeerSets {
    pub fn ids(&self) -> impl Iterator<Item = &SetId> {
        self.hosts.iter().chain(self.nets.iter())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Allow {
    Everything,
    /// Any port from (or to) the peers.
    Peers(PeerSets),
    /// These ports, from the peers (or any peer).
    Ports(Option<PeerSets>, Vec<PortRange>),
    /// The (peer, protocol, port) tuples in the set.
    PeerPorts(SetId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub direction: Direction,
    /// The policies isolating its pods: its drops count for each.
    pub policies: BTreeSet<Key>,
    pub allows: Vec<Allow>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// A local pod's address → the group checking traffic to it.
    pub ingress: BTreeMap<IpAddr, GroupId>,
    /// A local pod's address → the group checking traffic from it.
    pub egress: BTreeMap<IpAddr, GroupId>,
    pub groups: BTreeMap<GroupId, Group>,
    pub sets: BTreeMap<SetId, SetElements>,
}

fn hash_id(prefix: char, value: &impl std::fmt::Debug) -> String {
    let digest = blake3::hash(format!("{value:?}").as_bytes());
    format!("{prefix}{}", &digest.to_hex()[..12])
}

fn rules(policy: &Policy, direction: Direction) -> Option<&Vec<Rule>> {
    match direction {
        Direction::Ingress => policy.ingress.as_ref(),
        Direction::Egress => policy.egress.as_ref(),
    }
}

pub fn compile(inputs: &Inputs<'_>) -> Compiled {
    let mut compiled = Compiled::default();
    // Each local pod's isolating policies, per direction, in policy order.
    let mut isolating: BTreeMap<(Direction, &Key), Vec<&Policy>> = BTreeMap::new();
    // Only this node's pods can be targets: look at them alone.
    let local: Vec<&Pod> = inputs
        .pods
        .values()
        .filter(|p| p.node == inputs.node)
        .collect();
    for policy in inputs.policies.values() {
        let targets = local.iter().copied().filter(|p| {
            p.key.namespace == policy.key.namespace && matches(&policy.pod_selector, &p.labels)
        });
        for pod in targets {
            for direction in [Direction::Ingress, Direction::Egress] {
                if rules(policy, direction).is_some() {
                    isolating
                        .entry((direction, &pod.key))
                        .or_default()
                        .push(policy);
                }
            }
        }
    }
    let mut by_namespace: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in inputs.pods.values() {
        by_namespace
            .entry(&pod.key.namespace)
            .or_default()
            .push(pod);
    }
    let mut compiler = RuleCompiler {
        inputs,
        by_namespace,
        sets: BTreeMap::new(),
    };
    for ((direction, pod_key), policies) in isolating {
        let Some(pod) = inputs.pods.get(pod_key) else {
            continue;
        };
        let mut allows = Vec::new();
        for policy in &policies {
            for (index, rule) in rules(policy, direction).into_iter().flatten().enumerate() {
                allows.extend(compiler.allows(direction, policy, index, rule, pod));
            }
        }
        let group = Group {
            direction,
            policies: policies.iter().map(|p| p.key.clone()).collect(),
            allows,
        };
        let id = GroupId(hash_id(
            if direction == Direction::Ingress {
                'i'
            } else {
                'e'
            },
            &(&group.policies, &group.allows),
        ));
        let map = match direction {
            Direction::Ingress => &mut compiled.ingress,
            Direction::Egress => &mut compiled.egress,
        };
        for ip in &pod.ips {
            map.insert(*ip, id.clone());
        }
        compiled.groups.entry(id).or_insert(group);
    }
    compiled.sets = compiler.sets;
    compiled
}

struct RuleCompiler<'a, 'b> {
    inputs: &'a Inputs<'b>,
    /// The pods of each namespace: a peer's selectors look at its namespaces only.
    by_namespace: BTreeMap<&'a str, Vec<&'a Pod>>,
    sets: BTreeMap<SetId, SetElements>,
}

impl RuleCompiler<'_, '_> {
    /// What one rule of `policy` allows for `pod` (the local pod it isolates).
    fn allows(
        &mut self,
        direction: Direction,
        policy: &Policy,
        index: usize,
        rule: &Rule,
        pod: &Pod,
    ) -> Vec<Allow> {
        let rule_key = (direction, &policy.key, index);
        let peers = rule
            .peers
            .as_ref()
            .map(|peers| self.peer_sets(&rule_key, peers));
        let Some(ports) = &rule.ports else {
            return vec![peers.map_or(Allow::Everything, Allow::Peers)];
        };
        let mut ranges = Vec::new();
        let mut named = Vec::new();
        for port in ports {
            match port {
                PortSpec::All(protocol) => ranges.push((*protocol, 0, u16::MAX)),
                PortSpec::Range(protocol, low, high) => ranges.push((*protocol, *low, *high)),
                // Ingress: the destination is this pod, so it resolves here.
                PortSpec::Named(protocol, name) if direction == Direction::Ingress => {
                    if let Some(port) = pod.named_port(name, *protocol) {
                        ranges.push((*protocol, port, port));
                    }
                }
                PortSpec::Named(protocol, name) => named.push((*protocol, name.as_str())),
            }
        }
        let mut allows = Vec::new();
        if !ranges.is_empty() {
            allows.push(Allow::Ports(peers, merge_ranges(ranges)));
        }
        if !named.is_empty() {
            let id = SetId(hash_id('n', &rule_key));
            if !self.sets.contains_key(&id) {
                let tuples = self.named_port_tuples(rule, &named);
                self.sets.insert(id.clone(), SetElements::PeerPorts(tuples));
            }
            allows.push(Allow::PeerPorts(id));
        }
        allows
    }

    fn pod_matches(&self, peer: &Peer, pod: &Pod) -> bool {
        let Peer::Pods { namespaces, pods } = peer else {
            return false;
        };
        let namespace_ok = match namespaces {
            Namespaces::Same(ns) => pod.key.namespace == *ns,
            Namespaces::Matching(selector) => {
                let empty = Labels::new();
                let labels = self.inputs.namespaces.get(&pod.key.namespace);
                let labels = labels.unwrap_or(&empty);
                matches(selector, labels)
            }
        };
        namespace_ok && matches(pods, &pod.labels)
    }

    /// The pods a selector peer matches, looking only in its namespaces.
    fn peer_pods<'p>(&'p self, peer: &'p Peer) -> impl Iterator<Item = &'p Pod> + 'p {
        let namespaces: Vec<&Vec<&Pod>> = match peer {
            Peer::Block { .. } => Vec::new(),
            Peer::Pods {
                namespaces: Namespaces::Same(ns),
                ..
            } => self.by_namespace.get(ns.as_str()).into_iter().collect(),
            Peer::Pods {
                namespaces: Namespaces::Matching(selector),
                ..
            } => {
                let empty = Labels::new();
                self.by_namespace
                    .iter()
                    .filter(|(ns, _)| {
                        matches(selector, self.inputs.namespaces.get(**ns).unwrap_or(&empty))
                    })
                    .map(|(_, pods)| pods)
                    .collect()
            }
        };
        namespaces
            .into_iter()
            .flatten()
            .copied()
            .filter(move |pod| self.pod_matches(peer, pod))
    }

    /// The rule's peer sets, computed once per rule and shared by every group.
    fn peer_sets(&mut self, rule_key: &impl std::fmt::Debug, peers: &[Peer]) -> PeerSets {
        let has_pods = peers.iter().any(|p| matches!(p, Peer::Pods { .. }));
        let has_blocks = peers.iter().any(|p| matches!(p, Peer::Block { .. }));
        let hosts = has_pods.then(|| SetId(hash_id('h', rule_key)));
        // ipBlocks do not change with pods, so their set is named by its
        // content: every rule with the same blocks shares one interval set
        // (nft reads every interval set of the table on each change).
        let blocks = has_blocks.then(|| {
            let blocks = peers.iter().flat_map(|peer| match peer {
                Peer::Block { cidr, except } => addrs::subtract(*cidr, except),
                Peer::Pods { .. } => Vec::new(),
            });
            addrs::normalize(blocks.collect())
        });
        let nets = blocks.as_ref().map(|b| SetId(hash_id('b', b)));
        if let Some(id) = hosts.as_ref().filter(|id| !self.sets.contains_key(*id)) {
            let ips = peers
                .iter()
                .flat_map(|peer| self.peer_pods(peer))
                .flat_map(|pod| pod.ips.iter().copied())
                .collect();
            self.sets.insert(id.clone(), SetElements::Hosts(ips));
        }
        if let (Some(id), Some(blocks)) = (&nets, blocks) {
            self.sets.insert(id.clone(), SetElements::Nets(blocks));
        }
        PeerSets { hosts, nets }
    }

    /// Every (address, protocol, port) of a peer pod that has one of `named`:
    /// a pod is a peer by its selectors, or by an address in an ipBlock.
    fn named_port_tuples(
        &self,
        rule: &Rule,
        named: &[(Protocol, &str)],
    ) -> BTreeSet<(IpAddr, Protocol, u16)> {
        let is_peer = |pod: &Pod, ip: IpAddr| match &rule.peers {
            None => true,
            Some(peers) => peers.iter().any(|peer| match peer {
                Peer::Pods { .. } => self.pod_matches(peer, pod),
                Peer::Block { cidr, except } => {
                    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
                }
            }),
        };
        let mut tuples = BTreeSet::new();
        for pod in self.inputs.pods.values() {
            for (protocol, name) in named {
                let Some(port) = pod.named_port(name, *protocol) else {
                    continue;
                };
                for ip in pod.ips.iter().filter(|ip| is_peer(pod, **ip)) {
                    tuples.insert((*ip, *protocol, port));
                }
            }
        }
        tuples
    }
}

/// Sorted, overlapping and adjacent ranges of one protocol merged.
fn merge_ranges(mut ranges: Vec<PortRange>) -> Vec<PortRange> {
    ranges.sort();
    let mut out: Vec<PortRange> = Vec::new();
    for (protocol, low, high) in ranges {
        match out.last_mut() {
            Some(last) if last.0 == protocol && u32::from(low) <= u32::from(last.2) + 1 => {
                last.2 = last.2.max(high);
            }
            _ => out.push((protocol, low, high)),
        }
    }
    out
}

impl Compiled {
    /// What the compiled state does with a packet of a connection from `src`
    /// to `dst` (evaluated the way the nftables rules are).
    pub fn admits(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> bool {
        let egress = self.egress.get(&src);
        let ingress = self.ingress.get(&dst);
        egress.is_none_or(|g| self.group_admits(g, dst, protocol, port))
            && ingress.is_none_or(|g| self.group_admits(g, src, protocol, port))
    }

    fn group_admits(&self, group: &GroupId, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        let Some(group) = self.groups.get(group) else {
            return false;
        };
        let in_peers = |sets: &PeerSets| {
            sets.ids().any(|set| match self.sets.get(set) {
                Some(SetElements::Hosts(ips)) => ips.contains(&peer),
                Some(SetElements::Nets(nets)) => addrs::contains(nets, peer),
                _ => false,
            })
        };
        group.allows.iter().any(|allow| match allow {
            Allow::Everything => true,
            Allow::Peers(sets) => in_peers(sets),
            Allow::Ports(sets, ranges) => {
                sets.as_ref().is_none_or(in_peers)
                    && ranges
                        .iter()
                        .any(|(p, low, high)| *p == protocol && (*low..=*high).contains(&port))
            }
            Allow::PeerPorts(set) => match self.sets.get(set) {
                Some(SetElements::PeerPorts(tuples)) => tuples.contains(&(peer, protocol, port)),
                _ => false,
            },
        })
    }
}

#[cfg(test)]
mod tests;
