//! A reference evaluator written from the `networking.k8s.io/v1` API text,
//! in plain Rust and with no compilation: the property test holds the
//! compiler (and, through the kernel tests, nftables) to it.
//!
//! - A pod is isolated for ingress (egress) if any NetworkPolicy in its
//!   namespace selects it and has Ingress (Egress) in its policyTypes.
//! - An isolated pod accepts (sends) only what at least one rule of one of
//!   those policies allows: policies are additive.
//! - A rule allows traffic that matches at least one of its peers and at
//!   least one of its ports; missing or empty peers or ports match all.
//! - A connection needs both the sender's egress and the receiver's ingress.
//! - A named port is the destination pod's container port of that name and
//!   protocol; a destination that is not a pod has no named ports.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tartan_crds::selector::matches;

use super::model::{Key, Labels, Namespaces, Peer, Pod, Policy, PortSpec, Protocol, Rule};

/// One end of a connection: a pod, or an address outside the pods.
#[derive(Clone, Copy, Debug)]
pub enum End<'a> {
    Pod(&'a Pod),
    External(IpAddr),
}

impl End<'_> {
    pub fn address(&self) -> IpAddr {
        match self {
            End::Pod(pod) => pod.ips[0],
            End::External(ip) => *ip,
        }
    }
}

pub struct World<'a> {
    pub policies: &'a BTreeMap<Key, Policy>,
    pub namespaces: &'a BTreeMap<String, Labels>,
}

impl World<'_> {
    pub fn allowed(&self, from: End<'_>, to: End<'_>, protocol: Protocol, port: u16) -> bool {
        self.egress_allowed(from, to, protocol, port)
            && self.ingress_allowed(from, to, protocol, port)
    }

    fn selecting<'p>(&'p self, pod: &Pod, ingress: bool) -> Vec<&'p Vec<Rule>> {
        self.policies
            .values()
            .filter(|p| {
                p.key.namespace == pod.key.namespace && matches(&p.pod_selector, &pod.labels)
            })
            .filter_map(|p| {
                if ingress {
                    p.ingress.as_ref()
                } else {
                    p.egress.as_ref()
                }
            })
            .collect()
    }

    fn ingress_allowed(&self, from: End<'_>, to: End<'_>, protocol: Protocol, port: u16) -> bool {
        let End::Pod(target) = to else {
            return true;
        };
        let policies = self.selecting(target, true);
        policies.is_empty()
            || policies.iter().any(|rules| {
                rules.iter().any(|rule| {
                    self.peer_matches(rule, from) && port_matches(rule, to, protocol, port)
                })
            })
    }

    fn egress_allowed(&self, from: End<'_>, to: End<'_>, protocol: Protocol, port: u16) -> bool {
        let End::Pod(source) = from else {
            return true;
        };
        let policies = self.selecting(source, false);
        policies.is_empty()
            || policies.iter().any(|rules| {
                rules.iter().any(|rule| {
                    self.peer_matches(rule, to) && port_matches(rule, to, protocol, port)
                })
            })
    }

    fn peer_matches(&self, rule: &Rule, end: End<'_>) -> bool {
        let Some(peers) = &rule.peers else {
            return true;
        };
        peers.iter().any(|peer| match peer {
            Peer::Block { cidr, except } => {
                let ip = end.address();
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
            Peer::Pods { namespaces, pods } => {
                let End::Pod(pod) = end else {
                    return false;
                };
                let in_namespace = match namespaces {
                    Namespaces::Same(ns) => &pod.key.namespace == ns,
                    // A namespace not (yet) known has no labels.
                    Namespaces::Matching(selector) => {
                        let none = Labels::new();
                        matches(
                            selector,
                            self.namespaces.get(&pod.key.namespace).unwrap_or(&none),
                        )
                    }
                };
                in_namespace && matches(pods, &pod.labels)
            }
        })
    }
}

fn port_matches(rule: &Rule, destination: End<'_>, protocol: Protocol, port: u16) -> bool {
    let Some(ports) = &rule.ports else {
        return true;
    };
    ports.iter().any(|spec| match spec {
        PortSpec::All(p) => *p == protocol,
        PortSpec::Range(p, low, high) => *p == protocol && (*low..=*high).contains(&port),
        PortSpec::Named(p, name) => {
            *p == protocol
                && matches!(destination, End::Pod(pod) if pod.named_port(name, protocol) == Some(port))
        }
    })
}
