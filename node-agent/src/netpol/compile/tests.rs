//! One test per rule of the API, then a property test: for random policies
//! and pods, the compiled state of every node (evaluated as nftables would)
//! and the reference evaluator agree on every (from, to, protocol, port).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::*;
use crate::netpol::model::NamedPort;
use crate::netpol::reference::{End, World};

pub(super) const NODES: [&str; 2] = ["n1", "n2"];

pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        ..Default::default()
    }
}

pub(super) fn key(namespace: &str, name: &str) -> Key {
    Key {
        namespace: namespace.into(),
        name: name.into(),
    }
}

pub(super) fn pod(ns: &str, name: &str, node: &str, ip: &str, pairs: &[(&str, &str)]) -> Pod {
    Pod {
        key: key(ns, name),
        node: node.into(),
        ips: vec![ip.parse().expect("ip")],
        labels: labels(pairs),
        ports: vec![],
    }
}

pub(super) fn with_port(mut pod: Pod, name: &str, port: u16) -> Pod {
    pod.ports.push(NamedPort {
        name: name.into(),
        protocol: Protocol::Tcp,
        port,
    });
    pod
}

fn policy(ns: &str, name: &str, pods: LabelSelector) -> Policy {
    Policy {
        key: key(ns, name),
        pod_selector: pods,
        ingress: None,
        egress: None,
    }
}

#[derive(Debug)]
pub(super) struct Cluster {
    pub(super) policies: BTreeMap<Key, Policy>,
    pub(super) pods: BTreeMap<Key, Pod>,
    pub(super) namespaces: BTreeMap<String, Labels>,
}

impl Cluster {
    pub(super) fn new(pods: Vec<Pod>, policies: Vec<Policy>) -> Self {
        let mut namespaces = BTreeMap::new();
        for p in &pods {
            namespaces.insert(
                p.key.namespace.clone(),
                labels(&[("kubernetes.io/metadata.name", &p.key.namespace)]),
            );
        }
        Cluster {
            pods: pods.into_iter().map(|p| (p.key.clone(), p)).collect(),
            policies: policies.into_iter().map(|p| (p.key.clone(), p)).collect(),
            namespaces,
        }
    }

    fn compiled(&self, node: &str) -> Compiled {
        compile(&Inputs {
            node,
            policies: &self.policies,
            pods: &self.pods,
            namespaces: &self.namespaces,
        })
    }

    fn end(&self, name: &str) -> End<'_> {
        match self.pods.values().find(|p| p.key.name == name) {
            Some(pod) => End::Pod(pod),
            None => End::External(name.parse().expect("a pod name or an address")),
        }
    }

    /// What the nodes' compiled states do: the sender's node checks egress,
    /// the receiver's node ingress.
    pub(super) fn compiled_admits(
        &self,
        from: End<'_>,
        to: End<'_>,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let nodes: BTreeSet<&str> = [from, to]
            .iter()
            .filter_map(|e| match e {
                End::Pod(p) => Some(p.node.as_str()),
                End::External(_) => None,
            })
            .collect();
        nodes.into_iter().all(|node| {
            self.compiled(node)
                .admits(from.address(), to.address(), protocol, port)
        })
    }

    pub(super) fn reference(
        &self,
        from: End<'_>,
        to: End<'_>,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        World {
            policies: &self.policies,
            namespaces: &self.namespaces,
        }
        .allowed(from, to, protocol, port)
    }

    /// The compiled answer, checked against the reference.
    fn admits(&self, from: &str, to: &str, port: u16) -> bool {
        self.admits_proto(from, to, Protocol::Tcp, port)
    }

    fn admits_proto(&self, from: &str, to: &str, protocol: Protocol, port: u16) -> bool {
        let (from, to) = (self.end(from), self.end(to));
        let compiled = self.compiled_admits(from, to, protocol, port);
        assert_eq!(
            compiled,
            self.reference(from, to, protocol, port),
            "{from:?} -> {to:?}"
        );
        compiled
    }
}

fn pods_ab() -> Vec<Pod> {
    vec![
        pod("a", "web", "n1", "10.244.1.2", &[("app", "web")]),
        pod("a", "db", "n1", "10.244.1.3", &[("app", "db")]),
        pod("b", "client", "n2", "10.244.2.2", &[("role", "client")]),
        pod("b", "other", "n2", "10.244.2.3", &[("role", "other")]),
    ]
}

#[test]
fn default_deny_isolates_every_pod_of_the_namespace_for_ingress_only() {
    let mut deny = policy("a", "deny", LabelSelector::default());
    deny.ingress = Some(vec![]);
    let c = Cluster::new(pods_ab(), vec![deny]);
    assert!(!c.admits("client", "web", 80));
    assert!(!c.admits("db", "web", 80), "same namespace too");
    assert!(c.admits("web", "client", 80), "egress is not isolated");
    assert!(
        c.admits("other", "client", 80),
        "namespace b is not selected"
    );
    let n1 = c.compiled("n1");
    assert_eq!(n1.ingress.len(), 2);
    assert!(n1.egress.is_empty());
    assert_eq!(n1.groups.len(), 1, "both pods share one group");
}

#[test]
fn allow_from_a_namespace_by_its_labels() {
    let mut allow = policy("a", "from-b", selector(&[("app", "web")]));
    allow.ingress = Some(vec![Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: Namespaces::Matching(selector(&[("kubernetes.io/metadata.name", "b")])),
            pods: LabelSelector::default(),
        }]),
        ports: None,
    }]);
    let c = Cluster::new(pods_ab(), vec![allow]);
    assert!(c.admits("client", "web", 80));
    assert!(c.admits("other", "web", 443));
    assert!(!c.admits("db", "web", 80), "namespace a is not b");
    assert!(c.admits("client", "db", 80), "db is not selected");
}

#[test]
fn namespace_and_pod_selectors_in_one_peer_must_both_match() {
    let both = Peer::Pods {
        namespaces: Namespaces::Matching(selector(&[("kubernetes.io/metadata.name", "b")])),
        pods: selector(&[("role", "client")]),
    };
    let mut and = policy("a", "and", selector(&[("app", "web")]));
    and.ingress = Some(vec![Rule {
        peers: Some(vec![both]),
        ports: None,
    }]);
    let c = Cluster::new(pods_ab(), vec![and]);
    assert!(c.admits("client", "web", 80));
    assert!(!c.admits("other", "web", 80));
    // Two peers are an OR: any pod of namespace b, or db.
    let mut or = policy("a", "or", selector(&[("app", "web")]));
    or.ingress = Some(vec![Rule {
        peers: Some(vec![
            Peer::Pods {
                namespaces: Namespaces::Matching(selector(&[("kubernetes.io/metadata.name", "b")])),
                pods: LabelSelector::default(),
            },
            Peer::Pods {
                namespaces: Namespaces::Same("a".into()),
                pods: selector(&[("app", "db")]),
            },
        ]),
        ports: None,
    }]);
    let c = Cluster::new(pods_ab(), vec![or]);
    assert!(c.admits("other", "web", 80) && c.admits("db", "web", 80));
}

#[test]
fn an_ip_block_admits_its_cidr_but_not_its_except_blocks() {
    let mut block = policy("a", "block", selector(&[("app", "web")]));
    block.ingress = Some(vec![Rule {
        peers: Some(vec![Peer::Block {
            cidr: "10.0.0.0/8".parse().expect("cidr"),
            except: vec![
                "10.1.0.0/16".parse().expect("cidr"),
                "10.244.2.3/32".parse().expect("cidr"),
            ],
        }]),
        ports: None,
    }]);
    let c = Cluster::new(pods_ab(), vec![block]);
    assert!(c.admits("10.2.3.4", "web", 80));
    assert!(!c.admits("10.1.2.3", "web", 80));
    assert!(!c.admits("192.168.1.1", "web", 80));
    assert!(
        c.admits("client", "web", 80),
        "a pod address inside the block"
    );
    assert!(
        !c.admits("other", "web", 80),
        "a pod address in an except block"
    );
}

/// Rules with the same blocks share one interval set, however they differ
/// otherwise (ports here); different blocks get their own.
#[test]
fn rules_with_the_same_ip_blocks_share_one_set() {
    let block = |cidr: &str| Peer::Block {
        cidr: cidr.parse().expect("cidr"),
        except: vec![],
    };
    let mut policies = Vec::new();
    for (name, cidr, port) in [
        ("p1", "10.0.0.0/8", 80),
        ("p2", "10.0.0.0/8", 443),
        ("p3", "172.16.0.0/12", 80),
    ] {
        let mut p = policy("a", name, selector(&[("app", "web")]));
        p.ingress = Some(vec![Rule {
            peers: Some(vec![block(cidr)]),
            ports: Some(vec![PortSpec::Range(Protocol::Tcp, port, port)]),
        }]);
        policies.push(p);
    }
    let c = Cluster::new(pods_ab(), policies);
    let nets = (c.compiled("n1").sets.values())
        .filter(|s| matches!(s, SetElements::Nets(_)))
        .count();
    assert_eq!(nets, 2);
    assert!(c.admits("10.2.3.4", "web", 443) && c.admits("172.16.0.1", "web", 80));
    assert!(!c.admits("172.16.0.1", "web", 443));
}

#[test]
fn named_ports_resolve_on_each_destination_pod() {
    let servers = vec![
        with_port(
            pod("a", "s1", "n1", "10.244.1.2", &[("app", "srv")]),
            "http",
            8080,
        ),
        with_port(
            pod("a", "s2", "n2", "10.244.2.2", &[("app", "srv")]),
            "http",
            9090,
        ),
        pod("a", "client", "n1", "10.244.1.9", &[("app", "client")]),
    ];
    let http = || Some(vec![PortSpec::Named(Protocol::Tcp, "http".into())]);
    let mut ingress = policy("a", "http-in", selector(&[("app", "srv")]));
    ingress.ingress = Some(vec![Rule {
        peers: None,
        ports: http(),
    }]);
    let c = Cluster::new(servers.clone(), vec![ingress]);
    assert!(c.admits("client", "s1", 8080) && !c.admits("client", "s1", 9090));
    assert!(c.admits("client", "s2", 9090) && !c.admits("client", "s2", 8080));
    let mut egress = policy("a", "http-out", selector(&[("app", "client")]));
    egress.egress = Some(vec![Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: Namespaces::Same("a".into()),
            pods: selector(&[("app", "srv")]),
        }]),
        ports: http(),
    }]);
    let c = Cluster::new(servers, vec![egress]);
    assert!(c.admits("client", "s1", 8080) && !c.admits("client", "s1", 9090));
    assert!(c.admits("client", "s2", 9090) && !c.admits("client", "s2", 8080));
    assert!(
        !c.admits("client", "10.9.9.9", 8080),
        "no named ports outside the pods"
    );
}

#[test]
fn end_port_makes_a_range_of_one_protocol() {
    let mut range = policy("a", "range", selector(&[("app", "web")]));
    range.ingress = Some(vec![Rule {
        peers: None,
        ports: Some(vec![
            PortSpec::Range(Protocol::Tcp, 8000, 8100),
            PortSpec::All(Protocol::Sctp),
        ]),
    }]);
    let c = Cluster::new(pods_ab(), vec![range]);
    assert!(c.admits("client", "web", 8000) && c.admits("client", "web", 8100));
    assert!(!c.admits("client", "web", 7999) && !c.admits("client", "web", 8101));
    assert!(!c.admits_proto("client", "web", Protocol::Udp, 8050));
    assert!(c.admits_proto("client", "web", Protocol::Sctp, 9));
}

#[test]
fn a_policy_that_selects_no_pods_changes_nothing() {
    let mut none = policy("a", "none", selector(&[("app", "nothing")]));
    none.ingress = Some(vec![]);
    none.egress = Some(vec![]);
    let c = Cluster::new(pods_ab(), vec![none]);
    assert!(c.admits("client", "web", 80) && c.admits("web", "client", 80));
    for node in NODES {
        assert_eq!(c.compiled(node), Compiled::default());
    }
}

#[test]
fn policies_add_up_and_egress_needs_the_receivers_ingress_too() {
    let port = |p| {
        Some(vec![Rule {
            peers: None,
            ports: Some(vec![PortSpec::Range(Protocol::Tcp, p, p)]),
        }])
    };
    let mut p80 = policy("a", "p80", selector(&[("app", "web")]));
    p80.ingress = port(80);
    let mut p443 = policy("a", "p443", selector(&[("app", "web")]));
    p443.ingress = port(443);
    let mut out = policy("b", "out", selector(&[("role", "client")]));
    out.egress = port(443);
    let c = Cluster::new(pods_ab(), vec![p80, p443, out]);
    assert!(c.admits("other", "web", 80) && c.admits("other", "web", 443));
    assert!(
        !c.admits("client", "web", 80),
        "the client's egress allows only 443"
    );
    assert!(c.admits("client", "web", 443));
    assert!(!c.admits("client", "other", 80));
}

#[test]
fn the_number_of_groups_does_not_grow_with_the_pods() {
    let mut pods: Vec<Pod> = (0..200)
        .map(|i| {
            pod(
                "a",
                &format!("web{i}"),
                "n1",
                &format!("10.244.{}.{}", 1 + i / 200, 2 + i % 200),
                &[("app", "web")],
            )
        })
        .collect();
    pods.push(pod(
        "b",
        "client",
        "n2",
        "10.244.9.2",
        &[("role", "client")],
    ));
    let mut allow = policy("a", "allow", selector(&[("app", "web")]));
    allow.ingress = Some(vec![Rule {
        peers: Some(vec![Peer::Pods {
            namespaces: Namespaces::Matching(LabelSelector::default()),
            pods: selector(&[("role", "client")]),
        }]),
        ports: Some(vec![PortSpec::Range(Protocol::Tcp, 80, 80)]),
    }]);
    let c = Cluster::new(pods, vec![allow]);
    let n1 = c.compiled("n1");
    assert_eq!(
        (n1.ingress.len(), n1.groups.len(), n1.sets.len()),
        (200, 1, 1)
    );
    assert!(c.admits("client", "web17", 80) && !c.admits("web3", "web17", 80));
}

mod property;
