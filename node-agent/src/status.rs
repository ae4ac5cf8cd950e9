//! This node's NodeSubnet status from what was programmed. Pure.
//!
//! `Ready` says, in words a person understands, why the node is or is not
//! fully programmed: `Programmed`, `HostGwPeerNotOnLink`, `NoCommonBackend`,
//! `MtuClamped`, `BackendUnavailable`, `BGPSessionsDown`, `ApplyFailed`.
//!
//! Every agent watches every NodeSubnet, so the status must not move when a
//! peer joins: it holds no counts, and a peer that has not published its
//! address yet (or whose BGP route has not arrived) is that peer's business,
//! counted in `tartan_agent_peers{state="pending"}`, not a condition here.

use std::collections::BTreeSet;

use tartan_crds::BackendType;
use tartan_crds::condition::{self, Condition};
use tartan_crds::validate::{format_mac, format_wireguard_key};
use tartan_crds::{CONDITION_READY, NodeSubnetStatus};

use crate::plan::{DesiredState, LocalFacts, LocalProblem, PeerProblem, vtep_mac};

/// The status to publish; conditions keep their transition time when unchanged.
pub fn node_status(
    previous: Option<&NodeSubnetStatus>,
    desired: &DesiredState,
    facts: &LocalFacts,
    generation: Option<i64>,
    apply_error: Option<&str>,
) -> NodeSubnetStatus {
    let mut conditions = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    // A failed apply may have set up nothing new: peers keep being told what
    // was true before, or a receive path that could not be made (a TUN that
    // would not open) would draw their traffic into nothing.
    let (backend, receive_backends) = match (apply_error, previous) {
        (Some(_), Some(before)) => (before.backend, before.receive_backends.clone()),
        _ => (
            Some(desired.backend),
            desired.receive_backends.iter().copied().collect(),
        ),
    };
    condition::set(
        &mut conditions,
        ready(desired, apply_error, &facts.bgp.settling).generation(generation),
    );
    NodeSubnetStatus {
        node_ip: Some(facts.node_ip.to_string()),
        node_ipv6: facts.node_ipv6.map(|(ip, _)| ip.to_string()),
        vtep_mac: Some(format_mac(&vtep_mac(facts.node_ip))),
        // Published while this node receives on wireguard, so peers can.
        wireguard_public_key: (receive_backends.contains(&BackendType::Wireguard))
            .then_some(facts.wireguard_public_key)
            .flatten()
            .map(|key| format_wireguard_key(&key)),
        backend,
        receive_backends,
        mtu: Some(desired.mtu),
        conditions,
        observed_generation: generation,
    }
}

fn names(problems: &[&PeerProblem]) -> String {
    let mut names: Vec<&str> = problems.iter().map(|p| p.peer()).collect();
    names.sort_unstable();
    names.dedup();
    let shown = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    // No count: the message must not change each time one more peer is affected.
    if names.len() > 5 {
        format!("{shown} and others")
    } else {
        shown
    }
}

/// `settling`: BGP sessions still within their grace period, not called down.
fn ready(
    desired: &DesiredState,
    apply_error: Option<&str>,
    settling: &BTreeSet<String>,
) -> Condition {
    if let Some(error) = apply_error {
        return Condition::falsy(CONDITION_READY, "ApplyFailed").message(error.to_string());
    }
    for problem in &desired.local_problems {
        match problem {
            LocalProblem::BackendUnavailable { backend, why } => {
                return Condition::falsy(CONDITION_READY, "BackendUnavailable").message(format!(
                    "backend {backend}: {why}; sending with {}",
                    desired.backend
                ));
            }
            LocalProblem::BgpSessionsDown { sessions } => {
                let down: Vec<&str> = (sessions.iter())
                    .filter(|(name, _)| !settling.contains(name))
                    .map(|(_, why)| why.as_str())
                    .collect();
                if down.is_empty() {
                    continue;
                }
                let more = if down.len() > 5 { " and others" } else { "" };
                return Condition::falsy(CONDITION_READY, "BGPSessionsDown").message(format!(
                    "BGP sessions down: {}{more}",
                    down[..down.len().min(5)].join(", ")
                ));
            }
            LocalProblem::BgpPasswordUnavailable { peers } => {
                let shown: Vec<String> = (peers.iter().take(5))
                    .map(|(address, why)| format!("BGP peer {address}: {why}"))
                    .collect();
                let more = if peers.len() > 5 { " and others" } else { "" };
                return Condition::falsy(CONDITION_READY, "BGPPasswordUnavailable").message(
                    format!(
                        "{}{more}; not configured until it can be read",
                        shown.join(", ")
                    ),
                );
            }
            LocalProblem::MtuClamped { requested, clamped } => {
                return Condition::falsy(CONDITION_READY, "MtuClamped").message(format!(
                    "spec.mtu {requested} does not fit the underlay; pods use {clamped}"
                ));
            }
        }
    }
    let by = |f: fn(&PeerProblem) -> bool| {
        desired
            .peer_problems
            .iter()
            .filter(|p| f(p))
            .collect::<Vec<_>>()
    };
    let not_on_link = by(|p| matches!(p, PeerProblem::NotOnLink { .. }));
    if !not_on_link.is_empty() {
        return Condition::falsy(CONDITION_READY, "HostGwPeerNotOnLink").message(format!(
            "host-gw cannot reach {} (not on this node's L2 segment); use vxlan or vxlan with directRouting",
            names(&not_on_link)
        ));
    }
    let no_common = by(|p| {
        matches!(
            p,
            PeerProblem::NoCommonBackend { .. } | PeerProblem::Invalid { .. }
        )
    });
    if !no_common.is_empty() {
        return Condition::falsy(CONDITION_READY, "NoCommonBackend")
            .message(format!("no usable backend to {}", names(&no_common)));
    }
    Condition::truthy(CONDITION_READY, "Programmed").message(format!(
        "data plane programmed; sending with {}",
        desired.backend
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PeerProblem, plan};
    use std::net::Ipv4Addr;
    use tartan_crds::{OverlayNetworkSpec, ValidNodeSubnet};

    fn facts() -> LocalFacts {
        LocalFacts {
            underlay: "eth0".into(),
            node_ip: Ipv4Addr::new(192, 168, 0, 1),
            underlay_prefix: 24,
            node_ipv6: None,
            underlay_mtu: 1500,
            kernel: (6, 1),
            ..Default::default()
        }
    }

    fn state() -> DesiredState {
        let network = OverlayNetworkSpec::with_cidr("10.244.0.0/16")
            .validate()
            .expect("valid");
        let local = ValidNodeSubnet {
            node_name: "a".into(),
            network: "default".into(),
            cidr: "10.244.1.0/24".parse().expect("cidr"),
            ipv6_cidr: None,
        };
        plan(&network, &local, &[], &facts())
    }

    #[test]
    fn programmed_node_is_ready_with_its_addresses() {
        let status = node_status(None, &state(), &facts(), Some(3), None);
        assert_eq!(status.node_ip.as_deref(), Some("192.168.0.1"));
        assert_eq!(status.vtep_mac.as_deref(), Some("0e:2a:c0:a8:00:01"));
        assert_eq!(status.mtu, Some(1450));
        let ready = condition::find(&status.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.is_true(), ready.reason.as_str()),
            (true, "Programmed")
        );
        assert_eq!(ready.observed_generation, Some(3));
    }

    #[test]
    fn a_failed_apply_advertises_nothing_new() {
        let before = node_status(None, &state(), &facts(), Some(1), None);
        let mut wider = state();
        wider.receive_backends.insert(tartan_crds::BackendType::Udp);
        wider.backend = tartan_crds::BackendType::Udp;
        let failed = node_status(
            Some(&before),
            &wider,
            &facts(),
            Some(2),
            Some("udp datapath: no TUN"),
        );
        assert_eq!(failed.receive_backends, before.receive_backends);
        assert_eq!(failed.backend, before.backend);
        let ready = condition::find(&failed.conditions, "Ready").expect("Ready");
        assert_eq!(
            (ready.is_true(), ready.reason.as_str()),
            (false, "ApplyFailed")
        );
        let recovered = node_status(Some(&failed), &wider, &facts(), Some(2), None);
        assert!(
            recovered
                .receive_backends
                .contains(&tartan_crds::BackendType::Udp)
        );
    }

    #[test]
    fn reasons_name_the_peers() {
        let mut s = state();
        s.peer_problems.insert(PeerProblem::NotOnLink {
            peer: "c".into(),
            node_ip: "10.0.0.3".parse().expect("ip"),
        });
        let condition = ready(&s, None, &BTreeSet::new());
        assert_eq!(condition.reason, "HostGwPeerNotOnLink");
        assert!(
            condition.message.contains("host-gw cannot reach c"),
            "{}",
            condition.message
        );
        let mut s = state();
        s.peer_problems.insert(PeerProblem::Pending {
            peer: "b".into(),
            missing: "nodeIP",
        });
        assert_eq!(
            ready(&s, None, &BTreeSet::new()).reason,
            "Programmed",
            "a peer that has not published its address is not this node's problem"
        );
        assert_eq!(
            ready(&state(), Some("netlink: boom"), &BTreeSet::new()).reason,
            "ApplyFailed"
        );
    }

    #[test]
    fn unchanged_status_keeps_its_transition_time() {
        let first = node_status(None, &state(), &facts(), Some(1), None);
        let second = node_status(Some(&first), &state(), &facts(), Some(1), None);
        assert_eq!(first, second);
    }
}
