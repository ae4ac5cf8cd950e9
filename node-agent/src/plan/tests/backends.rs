//! The planner for the udp and bgp backends.

use super::{V, facts, network, peer, subnet};
use crate::plan::*;
use tartan_crds::OverlayNetworkSpec;

const U: BackendType = BackendType::Udp;

#[test]
fn udp_peers_route_through_the_tun_and_fill_the_peer_table() {
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[U]),
        peer("c", 3, [10, 0, 0, 3], &[U]),
    ];
    let state = plan(
        &network(U, false, true),
        &subnet("a", 1, true),
        &peers,
        &facts(),
    );
    let udp = state.udp.as_ref().expect("the udp backend is on");
    assert_eq!((udp.device.as_str(), udp.port, udp.mtu), (TUN, 8285, 1472));
    assert_eq!(state.mtu, 1472, "pods get the underlay MTU less 28");
    assert_eq!(
        udp.peers,
        BTreeMap::from([
            (
                "10.244.2.0/24".parse().expect("cidr"),
                Ipv4Addr::new(192, 168, 0, 2)
            ),
            (
                "10.244.3.0/24".parse().expect("cidr"),
                Ipv4Addr::new(10, 0, 0, 3)
            ),
        ]),
        "off-link peers are fine: udp crosses L3; IPv6 only where the peer has it"
    );
    let tun_routes: Vec<String> = state
        .routes
        .iter()
        .filter(|r| r.device == Device::Tun(TUN.into()) && r.gateway.is_none())
        .map(|r| r.destination.to_string())
        .collect();
    assert_eq!(
        tun_routes,
        vec![
            "10.244.0.0/16",
            "10.244.2.0/24",
            "10.244.3.0/24",
            "fd00:10:244::/56"
        ],
        "each peer's subnet and the cluster CIDRs"
    );
    assert!(state.vxlan.is_none() && state.fdb.is_empty());
    assert_eq!(state.receive_backends, BTreeSet::from([U]));
    assert_eq!(state.backend, U);
}

#[test]
fn switching_to_udp_keeps_vxlan_until_the_peer_receives_udp() {
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[V]),
        peer("c", 3, [192, 168, 0, 3], &[U, V]),
    ];
    let state = plan(
        &network(U, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    assert_eq!(
        state.peer_backends,
        BTreeMap::from([("b".into(), V), ("c".into(), U)])
    );
    assert!(state.vxlan.is_some(), "b still sends vxlan to us");
    assert_eq!(state.receive_backends, BTreeSet::from([V, U]));
    let udp = state.udp.expect("udp on");
    assert_eq!(udp.peers.len(), 1, "only c is reached over udp");
    assert_eq!(
        udp.senders.len(),
        2,
        "but b may start sending udp any moment"
    );
    assert_eq!(state.backend, V, "still sends vxlan to b");
}

#[test]
fn the_tun_goes_once_no_peer_sends_udp() {
    let mut b = peer("b", 2, [192, 168, 0, 2], &[V]);
    b.backend = Some(V);
    let state = plan(
        &network(V, false, false),
        &subnet("a", 1, false),
        &[b],
        &facts(),
    );
    assert!(state.udp.is_none());
    assert!(
        state
            .routes
            .iter()
            .all(|r| r.device != Device::Tun(TUN.into()))
    );
}

const B: BackendType = BackendType::Bgp;

fn learned(subnets: &[&str]) -> BgpObserved {
    BgpObserved {
        learned: subnets.iter().map(|s| s.parse().expect("cidr")).collect(),
        ..Default::default()
    }
}

fn established(names: &[&str]) -> BTreeMap<String, SessionState> {
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                SessionState {
                    state: "Established".into(),
                    last_error: None,
                },
            )
        })
        .collect()
}

#[test]
fn a_bgp_peer_is_used_only_once_its_route_is_learned() {
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[B, V]),
        peer("c", 3, [192, 168, 0, 3], &[B, V]),
    ];
    let mut f = facts();
    f.bgp = learned(&["10.244.2.0/24"]);
    let state = plan(
        &network(B, false, false),
        &subnet("a", 1, false),
        &peers,
        &f,
    );
    assert_eq!(
        state.peer_backends,
        BTreeMap::from([("b".into(), B), ("c".into(), V)]),
        "c keeps vxlan until BGP delivers its route"
    );
    assert!(
        state
            .routes
            .iter()
            .all(|r| r.destination.to_string() != "10.244.2.0/24"),
        "BIRD's route serves b; Tartan installs none"
    );
    assert!(state.peer_problems.contains(&PeerProblem::Pending {
        peer: "c".into(),
        missing: "BGP route"
    }));
    let spec = state.bgp.expect("BIRD runs");
    assert_eq!(spec.announce, vec!["10.244.1.0/24".parse().expect("cidr")]);
    assert_eq!(
        spec.accept,
        vec![("10.244.0.0/16".parse().expect("cidr"), 24)]
    );
    let names: Vec<&str> = spec.neighbors.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, vec!["mesh_192_168_0_2", "mesh_192_168_0_3"]);
}

#[test]
fn external_peers_follow_node_selectors_and_off_link_nodes_are_left_to_them() {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = B;
    let mut rack1 = tartan_crds::BgpPeer::new("192.168.0.254", 65000);
    rack1.node_selector = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(BTreeMap::from([("rack".into(), "r1".into())])),
            ..Default::default()
        },
    );
    let reference = tartan_crds::SecretKeyRef {
        name: "bgp-rack1".into(),
        key: "password".into(),
    };
    rack1.password_secret_ref = Some(reference.clone());
    let mut rack2 = tartan_crds::BgpPeer::new("192.168.9.254", 65000);
    rack2.node_selector = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some(BTreeMap::from([("rack".into(), "r2".into())])),
            ..Default::default()
        },
    );
    spec.backend.bgp.peers = vec![rack1, rack2];
    let network = spec.validate().expect("valid");
    let mut f = facts();
    f.node_labels = BTreeMap::from([("rack".into(), "r1".into())]);
    f.bgp_passwords
        .insert(reference, Ok(Password::new("s3cret".into())));
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[B]),
        peer("c", 3, [192, 168, 9, 3], &[B]),
    ];
    let state = plan(&network, &subnet("a", 1, false), &peers, &f);
    let spec = state.bgp.expect("BIRD runs");
    let sessions: Vec<(&str, bool, bool, Option<&str>)> = spec
        .neighbors
        .iter()
        .map(|n| {
            let password = n.password.as_ref().map(Password::expose);
            (n.name.as_str(), n.direct, n.external, password)
        })
        .collect();
    assert_eq!(
        sessions,
        vec![
            ("mesh_192_168_0_2", true, false, None),
            ("peer_192_168_0_254", true, true, Some("s3cret")),
        ],
        "c is off-link (reached through the router); rack 2's router is not ours"
    );
}

#[test]
fn sessions_not_established_make_a_readable_problem() {
    let peers = [peer("b", 2, [192, 168, 0, 2], &[B])];
    let mut f = facts();
    f.bgp.sessions.insert(
        "mesh_192_168_0_2".into(),
        SessionState {
            state: "Active".into(),
            last_error: Some("Socket: Connection refused".into()),
        },
    );
    let state = plan(
        &network(B, false, false),
        &subnet("a", 1, false),
        &peers,
        &f,
    );
    assert_eq!(
        state.local_problems,
        vec![LocalProblem::BgpSessionsDown {
            sessions: vec![(
                "mesh_192_168_0_2".into(),
                "b 192.168.0.2 (Active: Socket: Connection refused)".into()
            )]
        }]
    );
    f.bgp.sessions = established(&["mesh_192_168_0_2"]);
    f.bgp.learned = learned(&["10.244.2.0/24"]).learned;
    let state = plan(
        &network(B, false, false),
        &subnet("a", 1, false),
        &peers,
        &f,
    );
    assert!(state.local_problems.is_empty() && state.peer_problems.is_empty());
    assert_eq!(state.backend, B);
}

#[test]
fn a_dual_stack_node_stays_off_bgp_and_says_why() {
    let mut b = peer("b", 2, [192, 168, 0, 2], &[V]);
    b.subnet = subnet("b", 2, true);
    let state = plan(
        &network(B, false, true),
        &subnet("a", 1, true),
        &[b],
        &facts(),
    );
    assert!(state.bgp.is_none());
    assert_eq!(state.backend, V);
    assert!(matches!(
        state.local_problems.as_slice(),
        [LocalProblem::BackendUnavailable { backend: BackendType::Bgp, why }] if why.contains("dual-stack")
    ));
    assert_eq!(state.routes.len(), 2, "IPv4 and IPv6 still over vxlan");
}

/// A peer whose password Secret cannot be read is left out (it could only
/// fail to connect) and reported, naming the Secret and the key; the rest of
/// BGP goes on. Neither the plan's nor the problem's text shows a password.
#[test]
fn a_peer_without_its_password_is_left_out_and_reported() {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = B;
    let reference = tartan_crds::SecretKeyRef {
        name: "bgp-tor".into(),
        key: "password".into(),
    };
    let mut tor = tartan_crds::BgpPeer::new("192.168.0.254", 65000);
    tor.password_secret_ref = Some(reference.clone());
    spec.backend.bgp.peers = vec![tor];
    let network = spec.validate().expect("valid");
    let peers = [peer("b", 2, [192, 168, 0, 2], &[B])];
    let mut f = facts();
    let why = "Secret tartan-system/bgp-tor has no key password".to_string();
    f.bgp_passwords.insert(reference.clone(), Err(why.clone()));
    let state = plan(&network, &subnet("a", 1, false), &peers, &f);
    let names: Vec<&str> = (state.bgp.as_ref().expect("BIRD runs").neighbors.iter())
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(names, vec!["mesh_192_168_0_2"], "the router is left out");
    assert!(
        state
            .local_problems
            .contains(&LocalProblem::BgpPasswordUnavailable {
                peers: vec![("192.168.0.254".parse().expect("ip"), why)]
            })
    );
    f.bgp_passwords
        .insert(reference, Ok(Password::new("hunter2-x".into())));
    let state = plan(&network, &subnet("a", 1, false), &peers, &f);
    assert!(
        !(state.local_problems.iter())
            .any(|p| matches!(p, LocalProblem::BgpPasswordUnavailable { .. }))
    );
    let printed = format!("{state:?}");
    assert!(!printed.contains("hunter2-x"), "{printed}");
    assert!(printed.contains("<password, 9 characters>"), "{printed}");
}
