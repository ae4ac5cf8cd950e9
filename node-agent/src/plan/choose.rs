//! Which backends this node receives on, which one each peer is sent over,
//! and why a peer cannot (yet) be reached. Pure.
//!
//! Make-before-break across the cluster: a node receives on the target and on
//! every backend some peer still sends with. It sends to a peer over the target
//! once the peer lists it in `receiveBackends`; until then over the first
//! backend of [`SUPPORTED`] that the peer still receives on and that reaches
//! it now. Each backend passed over leaves a [`PeerProblem`], so a peer
//! reached over a fallback stays reported until the target reaches it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use tartan_crds::validate::ValidEndpoint;
use tartan_crds::{BackendType, ValidNetwork, ValidNodeSubnet};

use super::{LocalFacts, LocalProblem, Peer, PeerProblem};

/// Backends this agent can program, in the order a peer's fallback is picked
/// when the target does not reach it: the planner's one list of backends.
pub const SUPPORTED: [BackendType; 5] = [
    BackendType::Vxlan,
    BackendType::HostGw,
    BackendType::Udp,
    BackendType::Bgp,
    BackendType::Wireguard,
];

/// A peer this node sends to, how it is reached and the backend chosen.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub peer: &'a Peer,
    pub reach: Reach,
    pub backend: BackendType,
}

/// A peer's parsed status, node IP and whether it is on this node's segment.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    pub endpoint: ValidEndpoint,
    pub node_ip: Ipv4Addr,
    pub on_link: bool,
}

/// Every backend decision of one plan.
#[derive(Debug)]
pub struct Choice<'a> {
    pub target: BackendType,
    /// Receive paths wanted: the target and whatever a peer still sends with.
    pub receive: BTreeSet<BackendType>,
    /// The peers that can be sent to, in input order.
    pub sent: Vec<Sent<'a>>,
    /// Per peer sent to, its backend as configured (a direct-routed vxlan peer is vxlan).
    pub peer_backends: BTreeMap<String, BackendType>,
    /// What this node sends with.
    pub backend: BackendType,
    /// Every peer with a node IP, by its subnets: whose udp datagrams are
    /// accepted, and which inner sources each may send from.
    pub senders: BTreeMap<IpNet, Ipv4Addr>,
    /// The on-link peers by name: the BGP full mesh.
    pub on_link: Vec<(String, Ipv4Addr)>,
    /// Every peer's published WireGuard public key, by node IP.
    pub keys: BTreeMap<Ipv4Addr, [u8; 32]>,
    pub peer_problems: BTreeSet<PeerProblem>,
    /// Why the target cannot run on this node, when it cannot.
    pub unavailable: Option<LocalProblem>,
}

/// Decides what this node receives on and how each peer is reached.
pub fn choose<'a>(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
    peers: &'a [Peer],
    facts: &LocalFacts,
) -> Choice<'a> {
    let rules = Rules {
        target: network.backend.type_,
        direct: network.backend.vxlan.direct_routing,
        dual_stack: local.ipv6_cidr.is_some(),
        facts,
    };
    let mut choice = Choice {
        target: rules.target,
        receive: rules.receive(peers),
        sent: Vec::new(),
        peer_backends: BTreeMap::new(),
        backend: rules.target,
        senders: BTreeMap::new(),
        on_link: Vec::new(),
        keys: BTreeMap::new(),
        peer_problems: BTreeSet::new(),
        unavailable: rules.unavailable(),
    };
    for peer in peers {
        let Some((endpoint, node_ip)) = address(peer, &mut choice.peer_problems) else {
            continue;
        };
        choice
            .senders
            .extend(peer.subnet.cidrs().map(|cidr| (cidr, node_ip)));
        if let Some(key) = endpoint.wireguard_key {
            choice.keys.insert(node_ip, key);
        }
        let on_link = facts.on_link(node_ip);
        if on_link {
            choice.on_link.push((peer.name.clone(), node_ip));
        }
        let reach = Reach {
            endpoint,
            node_ip,
            on_link,
        };
        let Some(backend) = rules.send_over(peer, reach, &mut choice.peer_problems) else {
            continue;
        };
        choice.peer_backends.insert(peer.name.clone(), backend);
        choice.sent.push(Sent {
            peer,
            reach,
            backend,
        });
    }
    choice.backend = rules.sends_with(&choice.peer_backends);
    choice
}

/// A peer's parsed status and node IP, or the problem that leaves it out.
fn address(peer: &Peer, problems: &mut BTreeSet<PeerProblem>) -> Option<(ValidEndpoint, Ipv4Addr)> {
    let endpoint = match &peer.endpoint {
        Ok(e) => *e,
        Err(message) => {
            problems.insert(PeerProblem::Invalid {
                peer: peer.name.clone(),
                message: message.clone(),
            });
            return None;
        }
    };
    let Some(node_ip) = endpoint.node_ip else {
        problems.insert(PeerProblem::Pending {
            peer: peer.name.clone(),
            missing: "nodeIP",
        });
        return None;
    };
    Some((endpoint, node_ip))
}

/// What the choices depend on besides the peer.
struct Rules<'a> {
    target: BackendType,
    direct: bool,
    dual_stack: bool,
    facts: &'a LocalFacts,
}

impl Rules<'_> {
    /// Whether this node can run `backend` at all. BIRD is configured for IPv4
    /// only: a dual-stack node keeps its old backend rather than lose its
    /// pods' IPv6 traffic.
    fn available(&self, backend: BackendType) -> bool {
        SUPPORTED.contains(&backend)
            && !(backend == BackendType::Bgp && self.dual_stack)
            && !(backend == BackendType::Wireguard && self.facts.wireguard_public_key.is_none())
    }

    fn unavailable(&self) -> Option<LocalProblem> {
        (!self.available(self.target)).then_some(LocalProblem::BackendUnavailable {
            backend: self.target,
            why: match self.target {
                BackendType::Bgp if self.dual_stack => {
                    "the bgp backend carries IPv4 pod subnets only and this cluster is dual-stack"
                }
                BackendType::Wireguard => {
                    "this agent has no WireGuard key (see --wireguard-key-file and its log)"
                }
                _ => "it is not available in this agent",
            },
        })
    }

    /// Receive on the target and on whatever a peer still sends with.
    fn receive(&self, peers: &[Peer]) -> BTreeSet<BackendType> {
        let mut receive: BTreeSet<BackendType> = std::iter::once(self.target)
            .chain(peers.iter().filter_map(|p| p.backend))
            .filter(|b| self.available(*b))
            .collect();
        if receive.is_empty() {
            // Never leave the node unreachable: vxlan is always possible.
            receive.insert(BackendType::Vxlan);
        }
        receive
    }

    /// The backend `peer` is sent over: the target, else the first of
    /// [`SUPPORTED`] it still receives on that reaches it now.
    fn send_over(
        &self,
        peer: &Peer,
        reach: Reach,
        problems: &mut BTreeSet<PeerProblem>,
    ) -> Option<BackendType> {
        let chosen = std::iter::once(self.target)
            .chain(SUPPORTED)
            .filter(|b| self.available(*b) && peer.receive.contains(b))
            .find(|b| match self.blocked(*b, peer, reach) {
                Some(problem) => {
                    problems.insert(problem);
                    false
                }
                None => true,
            });
        match chosen {
            // Reaching the peer over the target settles it; a fallback (the
            // peer is still reachable over an older backend) stays reported.
            Some(backend) if backend == self.target => {
                problems.retain(|p| p.peer() != peer.name);
            }
            Some(_) => {}
            None if peer.receive.is_empty() => {
                problems.insert(PeerProblem::Pending {
                    peer: peer.name.clone(),
                    missing: "receiveBackends",
                });
            }
            None if !problems.iter().any(|p| p.peer() == peer.name) => {
                problems.insert(PeerProblem::NoCommonBackend {
                    peer: peer.name.clone(),
                });
            }
            None => {}
        }
        chosen
    }

    /// Why `backend` cannot reach `peer` now, if it cannot.
    fn blocked(&self, backend: BackendType, peer: &Peer, reach: Reach) -> Option<PeerProblem> {
        let peer_name = || peer.name.clone();
        let learned = || (self.facts.bgp.learned).contains(&IpNet::V4(peer.subnet.cidr));
        match backend {
            BackendType::HostGw if !reach.on_link => Some(PeerProblem::NotOnLink {
                peer: peer_name(),
                node_ip: IpAddr::V4(reach.node_ip),
            }),
            // Make-before-break: the old path stays until BGP delivers the new one.
            BackendType::Bgp if !learned() => Some(PeerProblem::Pending {
                peer: peer_name(),
                missing: "BGP route",
            }),
            // A direct-routed on-link peer is reached without its VTEP.
            BackendType::Vxlan
                if reach.endpoint.vtep_mac.is_none() && !(self.direct && reach.on_link) =>
            {
                Some(PeerProblem::Pending {
                    peer: peer_name(),
                    missing: "vtepMAC",
                })
            }
            BackendType::Wireguard if reach.endpoint.wireguard_key.is_none() => {
                Some(PeerProblem::Pending {
                    peer: peer_name(),
                    missing: "wireguardPublicKey",
                })
            }
            _ => None,
        }
    }

    /// What this node sends with: the target once every peer sent to gets it,
    /// until then the old backend, so peers keep their old receive path for us.
    fn sends_with(&self, peer_backends: &BTreeMap<String, BackendType>) -> BackendType {
        let fallback = if self.available(self.target) {
            self.target
        } else {
            BackendType::Vxlan
        };
        peer_backends
            .values()
            .copied()
            .find(|b| *b != fallback)
            .unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::{facts, network, peer, subnet};

    const V: BackendType = BackendType::Vxlan;
    const H: BackendType = BackendType::HostGw;
    const U: BackendType = BackendType::Udp;
    const B: BackendType = BackendType::Bgp;

    fn backends<'a>(choice: &Choice<'a>) -> Vec<(&'a str, BackendType)> {
        choice
            .sent
            .iter()
            .map(|s| (s.peer.name.as_str(), s.backend))
            .collect()
    }

    #[test]
    fn a_fallback_is_the_first_supported_backend_that_reaches_the_peer() {
        let peers = [
            peer("b", 2, [192, 168, 0, 2], &[U, H]),
            peer("c", 3, [10, 0, 0, 3], &[U, H]),
        ];
        let network = network(V, false, false);
        let choice = choose(&network, &subnet("a", 1, false), &peers, &facts());
        assert_eq!(
            backends(&choice),
            vec![("b", H), ("c", U)],
            "host-gw comes before udp, but only reaches on-link peers"
        );
        assert_eq!(
            choice.peer_problems.iter().collect::<Vec<_>>(),
            vec![&PeerProblem::NotOnLink {
                peer: "c".into(),
                node_ip: "10.0.0.3".parse().expect("ip"),
            }],
            "a fallback stays reported"
        );
        assert_eq!(choice.backend, H, "neither peer gets the target yet");
    }

    #[test]
    fn a_dual_stack_node_receives_on_vxlan_when_bgp_is_all_there_is() {
        let mut b = peer("b", 2, [192, 168, 0, 2], &[B]);
        b.backend = Some(B);
        let peers = [b];
        let network = network(B, false, true);
        let choice = choose(&network, &subnet("a", 1, true), &peers, &facts());
        assert_eq!(choice.receive, BTreeSet::from([V]));
        assert!(matches!(
            choice.unavailable,
            Some(LocalProblem::BackendUnavailable { backend: B, .. })
        ));
        assert!(choice.sent.is_empty());
        assert_eq!(
            choice.peer_problems.iter().collect::<Vec<_>>(),
            vec![&PeerProblem::NoCommonBackend { peer: "b".into() }]
        );
        assert_eq!(choice.backend, V);
    }

    #[test]
    fn every_addressed_peer_may_send_and_on_link_ones_form_the_mesh() {
        let peers = [
            peer("b", 2, [192, 168, 0, 2], &[]),
            peer("c", 3, [10, 0, 0, 3], &[V]),
        ];
        let network = network(V, false, false);
        let choice = choose(&network, &subnet("a", 1, false), &peers, &facts());
        assert_eq!(
            choice.senders.values().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([Ipv4Addr::new(192, 168, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]),
            "b publishes no receive backends yet, but its datagrams are accepted"
        );
        assert_eq!(
            choice.on_link,
            vec![("b".to_string(), Ipv4Addr::new(192, 168, 0, 2))]
        );
        assert_eq!(backends(&choice), vec![("c", V)]);
        assert!(choice.peer_problems.contains(&PeerProblem::Pending {
            peer: "b".into(),
            missing: "receiveBackends"
        }));
    }

    #[test]
    fn a_direct_routed_on_link_peer_needs_no_vtep_mac() {
        let mut b = peer("b", 2, [192, 168, 0, 2], &[V]);
        let mut c = peer("c", 3, [10, 0, 0, 3], &[V]);
        for p in [&mut b, &mut c] {
            if let Ok(e) = p.endpoint.as_mut() {
                e.vtep_mac = None;
            }
        }
        let peers = [b, c];
        let network = network(V, true, false);
        let choice = choose(&network, &subnet("a", 1, false), &peers, &facts());
        assert_eq!(backends(&choice), vec![("b", V)]);
        assert_eq!(
            choice.peer_problems.iter().collect::<Vec<_>>(),
            vec![&PeerProblem::Pending {
                peer: "c".into(),
                missing: "vtepMAC"
            }]
        );
    }
}
