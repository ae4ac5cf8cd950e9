//! What the policy compiler reads: NetworkPolicies, Pods and Namespaces
//! reduced to the fields `networking.k8s.io/v1` defines enforcement by, and
//! read strictly: a field the agent cannot enforce is an error naming it, so
//! a policy is either enforced whole or reported (never half-applied).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod as KubePod;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy as KubePolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number (`meta l4proto`).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The API's spelling; absent means TCP.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// `namespace/name`: how a policy (or pod) is known in metrics and Events.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// `protocol` with no `port`: every port of it.
    All(Protocol),
    /// `port` (and `endPort`): a range, both ends included.
    Range(Protocol, u16, u16),
    /// A named port: the destination pod's container port of that name and protocol.
    Named(Protocol, String),
}

/// Whose namespace a pod peer must be in.
#[derive(Clone, Debug, PartialEq)]
pub enum Namespaces {
    /// No namespaceSelector: the policy's own namespace.
    Same(String),
    Matching(LabelSelector),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Peer {
    Pods {
        namespaces: Namespaces,
        pods: LabelSelector,
    },
    Block {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

/// One ingress or egress rule. `None` is "empty or missing": all peers, all ports.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Rule {
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortSpec>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub key: Key,
    pub pod_selector: LabelSelector,
    /// `Some` when the policy isolates its pods for ingress (policyTypes).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// What policy needs of a pod: where it is, its addresses, labels, named ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: Key,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    pub ports: Vec<NamedPort>,
}

/// Why a NetworkPolicy cannot be enforced: the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {value:?} {reason}")]
pub struct PolicyError {
    pub field: String,
    pub value: String,
    pub reason: &'static str,
}

fn error(field: String, value: impl Into<String>, reason: &'static str) -> PolicyError {
    PolicyError {
        field,
        value: value.into(),
        reason,
    }
}

impl Policy {
    pub fn from_kube(policy: &KubePolicy) -> Result<Self, PolicyError> {
        let key = Key {
            namespace: policy.metadata.namespace.clone().unwrap_or_default(),
            name: policy.metadata.name.clone().unwrap_or_default(),
        };
        let spec = policy.spec.clone().unwrap_or_default();
        let types = spec.policy_types.clone();
        let has_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        // Unset policyTypes: Ingress always, Egress when there are egress rules.
        let (ingress_on, egress_on) = match &types {
            None => (true, has_egress),
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    if t != "Ingress" && t != "Egress" {
                        return Err(error(
                            format!("spec.policyTypes[{i}]"),
                            t,
                            "is not Ingress or Egress",
                        ));
                    }
                }
                (
                    list.iter().any(|t| t == "Ingress"),
                    list.iter().any(|t| t == "Egress"),
                )
            }
        };
        let ns = &key.namespace;
        let ingress = spec.ingress.unwrap_or_default();
        let ingress = ingress
            .iter()
            .enumerate()
            .map(|(i, r)| rule(ns, &format!("spec.ingress[{i}]"), "from", &r.from, &r.ports));
        let egress = spec.egress.unwrap_or_default();
        let egress = egress
            .iter()
            .enumerate()
            .map(|(i, r)| rule(ns, &format!("spec.egress[{i}]"), "to", &r.to, &r.ports));
        let ingress: Vec<Rule> = ingress.collect::<Result<_, _>>()?;
        let egress: Vec<Rule> = egress.collect::<Result<_, _>>()?;
        Ok(Policy {
            pod_selector: spec.pod_selector.unwrap_or_default(),
            ingress: ingress_on.then_some(ingress),
            egress: egress_on.then_some(egress),
            key,
        })
    }
}

impl Policy {
    /// What stands in for a policy that cannot be read: it isolates the pods
    /// it selects, in the directions it names (both when even that cannot be
    /// read), and allows nothing. A policy meant to protect pods must not
    /// leave them open because one field is wrong.
    pub fn fail_closed(policy: &KubePolicy) -> Self {
        let spec = policy.spec.clone().unwrap_or_default();
        let types = spec.policy_types.unwrap_or_default();
        let known = types.iter().all(|t| t == "Ingress" || t == "Egress");
        let has_egress = spec.egress.is_some_and(|e| !e.is_empty());
        let ingress = !known || types.is_empty() || types.iter().any(|t| t == "Ingress");
        let egress = !known || has_egress || types.iter().any(|t| t == "Egress");
        Policy {
            key: Key {
                namespace: policy.metadata.namespace.clone().unwrap_or_default(),
                name: policy.metadata.name.clone().unwrap_or_default(),
            },
            pod_selector: spec.pod_selector.unwrap_or_default(),
            ingress: ingress.then(Vec::new),
            egress: egress.then(Vec::new),
        }
    }
}

fn rule(
    namespace: &str,
    field: &str,
    peers_name: &str,
    peers: &Option<Vec<NetworkPolicyPeer>>,
    ports: &Option<Vec<NetworkPolicyPort>>,
) -> Result<Rule, PolicyError> {
    let peers = match peers.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| peer(namespace, &format!("{field}.{peers_name}[{i}]"), p))
                .collect::<Result<_, _>>()?,
        ),
    };
    let ports = match ports.as_deref() {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| port(&format!("{field}.ports[{i}]"), p))
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Rule { peers, ports })
}

fn peer(namespace: &str, field: &str, peer: &NetworkPolicyPeer) -> Result<Peer, PolicyError> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            return Err(error(
                field.to_string(),
                "ipBlock with a selector",
                "must be either an ipBlock or selectors",
            ));
        }
        let net = |f: String, s: &str| s.parse::<IpNet>().map_err(|_| error(f, s, "is not a CIDR"));
        let cidr = net(format!("{field}.ipBlock.cidr"), &block.cidr)?;
        let except = block
            .except
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, e)| net(format!("{field}.ipBlock.except[{i}]"), e))
            .collect::<Result<_, _>>()?;
        return Ok(Peer::Block {
            cidr: cidr.trunc(),
            except,
        });
    }
    let namespaces = match &peer.namespace_selector {
        None => Namespaces::Same(namespace.to_string()),
        Some(selector) => Namespaces::Matching(selector.clone()),
    };
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        return Err(error(
            field.to_string(),
            "{}",
            "selects nothing: it needs a selector or an ipBlock",
        ));
    }
    Ok(Peer::Pods {
        namespaces,
        pods: peer.pod_selector.clone().unwrap_or_default(),
    })
}

fn port(field: &str, port: &NetworkPolicyPort) -> Result<PortSpec, PolicyError> {
    let protocol = Protocol::parse(port.protocol.as_deref()).ok_or_else(|| {
        error(
            format!("{field}.protocol"),
            port.protocol.clone().unwrap_or_default(),
            "is not TCP, UDP or SCTP",
        )
    })?;
    let number = |f: String, n: i32| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| error(f, n.to_string(), "is not a port (1-65535)"))
    };
    match (&port.port, port.end_port) {
        (None, None) => Ok(PortSpec::All(protocol)),
        (None, Some(_)) => Err(error(
            format!("{field}.endPort"),
            format!("{:?}", port.end_port),
            "needs a numeric port",
        )),
        (Some(IntOrString::String(name)), None) => Ok(PortSpec::Named(protocol, name.clone())),
        (Some(IntOrString::String(name)), Some(_)) => Err(error(
            format!("{field}.endPort"),
            name.clone(),
            "needs a numeric port, not a named one",
        )),
        (Some(IntOrString::Int(n)), end) => {
            let low = number(format!("{field}.port"), *n)?;
            let high = match end {
                None => low,
                Some(e) => number(format!("{field}.endPort"), e)?,
            };
            if high < low {
                return Err(error(
                    format!("{field}.endPort"),
                    high.to_string(),
                    "is below port",
                ));
            }
            Ok(PortSpec::Range(protocol, low, high))
        }
    }
}

impl Pod {
    /// The pod as policy sees it; `None` when it has no address yet, runs in
    /// the host's network (policy does not apply to it), or has finished (its
    /// address may already be another pod's).
    pub fn from_kube(pod: &KubePod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|ip| ip.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        // Sidecars (init containers that keep running) serve ports too.
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        let ports = containers
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some(Pod {
            key: Key {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
            },
            node: spec.node_name.clone().unwrap_or_default(),
            ips,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ports,
        })
    }

    /// The port `name` resolves to on this pod for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}
