//! The planner for the wireguard backend.

use super::{facts, network, peer, subnet};
use crate::plan::*;

const W: BackendType = BackendType::Wireguard;
const U: BackendType = BackendType::Udp;
const V: BackendType = BackendType::Vxlan;

fn keyed(mut p: Peer, key: u8) -> Peer {
    if let Ok(e) = p.endpoint.as_mut() {
        e.wireguard_key = Some([key; 32]);
    }
    p
}

fn wg_facts() -> LocalFacts {
    LocalFacts {
        wireguard_public_key: Some([1; 32]),
        ..facts()
    }
}

fn tun_routes(state: &DesiredState, device: &str) -> Vec<String> {
    (state.routes.iter())
        .filter(|r| r.device == Device::Tun(device.into()))
        .map(|r| r.destination.to_string())
        .collect()
}

#[test]
fn wireguard_peers_route_through_its_tun_with_their_keys() {
    let peers = [
        keyed(peer("b", 2, [192, 168, 0, 2], &[W]), 2),
        keyed(peer("c", 3, [10, 0, 0, 3], &[W]), 3),
    ];
    let state = plan(
        &network(W, false, false),
        &subnet("a", 1, false),
        &peers,
        &wg_facts(),
    );
    let wg = state
        .wireguard
        .as_ref()
        .expect("the wireguard backend is on");
    assert_eq!(
        (wg.tun.device.as_str(), wg.tun.port, wg.tun.mtu),
        (WIREGUARD_TUN, 51820, 1440)
    );
    assert_eq!(state.mtu, 1440, "pods get the underlay MTU less 60");
    assert_eq!(
        wg.keys,
        BTreeMap::from([
            (Ipv4Addr::new(192, 168, 0, 2), [2; 32]),
            (Ipv4Addr::new(10, 0, 0, 3), [3; 32])
        ])
    );
    assert_eq!(
        tun_routes(&state, WIREGUARD_TUN),
        vec!["10.244.0.0/16", "10.244.2.0/24", "10.244.3.0/24"]
    );
    assert!(state.udp.is_none() && state.vxlan.is_none());
    assert_eq!(
        (state.backend, state.receive_backends.clone()),
        (W, BTreeSet::from([W]))
    );
    assert!(state.peer_problems.is_empty(), "{:?}", state.peer_problems);
}

#[test]
fn a_peer_without_a_key_keeps_its_old_path_and_is_reported() {
    // b listed wireguard but has not published its key yet; it still receives vxlan.
    let peers = [peer("b", 2, [192, 168, 0, 2], &[W, V])];
    let state = plan(
        &network(W, false, false),
        &subnet("a", 1, false),
        &peers,
        &wg_facts(),
    );
    assert_eq!(state.peer_backends.get("b"), Some(&V));
    assert!(
        state.peer_problems.contains(&PeerProblem::Pending {
            peer: "b".into(),
            missing: "wireguardPublicKey"
        }),
        "{:?}",
        state.peer_problems
    );
    assert!(state.wireguard.as_ref().is_some_and(|w| w.keys.is_empty()));
}

#[test]
fn a_node_without_a_key_cannot_take_wireguard() {
    let peers = [keyed(peer("b", 2, [192, 168, 0, 2], &[W, V]), 2)];
    let state = plan(
        &network(W, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    assert!(state.wireguard.is_none());
    assert!(
        state.local_problems.iter().any(|p| matches!(
            p,
            LocalProblem::BackendUnavailable {
                backend: BackendType::Wireguard,
                ..
            }
        )),
        "{:?}",
        state.local_problems
    );
}

#[test]
fn switching_from_udp_keeps_both_tuns_and_sends_the_cluster_route_to_wireguard() {
    // b still sends udp but already receives wireguard: a switch in flight.
    let mut b = keyed(peer("b", 2, [192, 168, 0, 2], &[W, U]), 2);
    b.backend = Some(U);
    let state = plan(
        &network(W, false, false),
        &subnet("a", 1, false),
        &[b],
        &wg_facts(),
    );
    assert!(
        state.udp.is_some(),
        "b still sends udp: its receive path stays"
    );
    assert_eq!(state.peer_backends.get("b"), Some(&W));
    assert_eq!(
        tun_routes(&state, WIREGUARD_TUN),
        vec!["10.244.0.0/16", "10.244.2.0/24"]
    );
    assert!(
        tun_routes(&state, TUN).is_empty(),
        "nothing leaves unencrypted"
    );
    assert_eq!(state.receive_backends, BTreeSet::from([U, W]));
    assert_eq!(state.tuns().count(), 2);
}
