use super::*;
use tartan_crds::OverlayNetworkSpec;

fn network(backend: BackendType, direct: bool, ipv6: bool) -> ValidNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    spec.backend.vxlan.direct_routing = direct;
    if ipv6 {
        spec.ipv6_cidr = Some("fd00:10:244::/56".into());
    }
    spec.validate().expect("valid")
}

fn subnet(node: &str, third: u8, ipv6: bool) -> ValidNodeSubnet {
    ValidNodeSubnet {
        node_name: node.into(),
        network: "default".into(),
        cidr: format!("10.244.{third}.0/24").parse().expect("cidr"),
        ipv6_cidr: ipv6.then(|| format!("fd00:10:244:{third}::/64").parse().expect("cidr")),
    }
}

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

/// A peer at 192.168.<net>.<host> receiving on `receive`.
fn peer(name: &str, third: u8, ip: [u8; 4], receive: &[BackendType]) -> Peer {
    let node_ip = Ipv4Addr::from(ip);
    Peer {
        name: name.into(),
        subnet: subnet(name, third, false),
        endpoint: Ok(ValidEndpoint {
            node_ip: Some(node_ip),
            node_ipv6: None,
            vtep_mac: Some(vtep_mac(node_ip)),
        }),
        backend: receive.first().copied(),
        receive: receive.iter().copied().collect(),
    }
}

const V: BackendType = BackendType::Vxlan;
const H: BackendType = BackendType::HostGw;

#[test]
fn vxlan_peer_gets_route_neighbour_and_fdb() {
    let peers = [peer("b", 2, [192, 168, 0, 2], &[V])];
    let state = plan(
        &network(V, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    let mac_b = vtep_mac(Ipv4Addr::new(192, 168, 0, 2));
    assert_eq!(
        state.routes.iter().collect::<Vec<_>>(),
        vec![&RouteSpec {
            destination: "10.244.2.0/24".parse().expect("net"),
            gateway: Some("10.244.2.0".parse().expect("ip")),
            device: Device::Vxlan("tartan.1".into()),
            onlink: true,
            metric: 1 + (0x0a_f4_02 % 1024),
        }]
    );
    assert_eq!(
        state
            .neighbours
            .iter()
            .map(|n| (n.address.to_string(), n.mac))
            .collect::<Vec<_>>(),
        vec![("10.244.2.0".into(), mac_b)]
    );
    assert_eq!(
        state
            .fdb
            .iter()
            .map(|f| (f.mac, f.destination.to_string()))
            .collect::<Vec<_>>(),
        vec![(mac_b, "192.168.0.2".into())]
    );
    let vxlan = state.vxlan.expect("device");
    assert_eq!(
        (vxlan.name.as_str(), vxlan.vni, vxlan.port, vxlan.mtu),
        ("tartan.1", 1, 8472, 1450)
    );
    assert_eq!(vxlan.mac, [0x0e, 0x2a, 192, 168, 0, 1]);
    assert_eq!(
        vxlan
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        vec!["10.244.1.0/32"]
    );
    assert_eq!(
        state
            .bridge
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        vec!["10.244.1.1/24"]
    );
    assert_eq!(state.mtu, 1450);
    assert!(state.peer_problems.is_empty());
}

#[test]
fn host_gw_routes_via_node_ip_and_refuses_off_link_peers() {
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[H]),
        peer("c", 3, [10, 0, 0, 3], &[H]),
    ];
    let state = plan(
        &network(H, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    assert_eq!(state.routes.len(), 1);
    let route = state.routes.iter().next().expect("route");
    assert_eq!(
        (route.destination.to_string(), route.gateway),
        (
            "10.244.2.0/24".into(),
            Some("192.168.0.2".parse().expect("ip"))
        )
    );
    assert_eq!(route.device, Device::Underlay("eth0".into()));
    assert_eq!(
        state.peer_problems.iter().collect::<Vec<_>>(),
        vec![&PeerProblem::NotOnLink {
            peer: "c".into(),
            node_ip: "10.0.0.3".parse().expect("ip")
        }]
    );
    assert!(state.vxlan.is_none(), "nobody sends or receives vxlan");
    assert_eq!(state.mtu, 1500);
}

#[test]
fn direct_routing_uses_host_gw_on_link_and_vxlan_beyond() {
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[V]),
        peer("c", 3, [10, 0, 0, 3], &[V]),
    ];
    let state = plan(
        &network(V, true, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    let by_dst: BTreeMap<String, &RouteSpec> = state
        .routes
        .iter()
        .map(|r| (r.destination.to_string(), r))
        .collect();
    assert_eq!(
        by_dst["10.244.2.0/24"].device,
        Device::Underlay("eth0".into())
    );
    assert_eq!(
        by_dst["10.244.3.0/24"].device,
        Device::Vxlan("tartan.1".into())
    );
    assert_eq!(
        state.fdb.len(),
        1,
        "only the off-link peer needs an FDB entry"
    );
    assert!(state.peer_problems.is_empty());
}

#[test]
fn peers_without_addresses_are_skipped_and_counted() {
    let mut no_ip = peer("b", 2, [192, 168, 0, 2], &[V]);
    no_ip.endpoint = Ok(ValidEndpoint::default());
    let mut no_mac = peer("c", 3, [192, 168, 0, 3], &[V]);
    if let Ok(e) = no_mac.endpoint.as_mut() {
        e.vtep_mac = None;
    }
    let mut no_status = peer("d", 4, [192, 168, 0, 4], &[]);
    no_status.backend = None;
    let state = plan(
        &network(V, false, false),
        &subnet("a", 1, false),
        &[no_ip, no_mac, no_status],
        &facts(),
    );
    assert!(
        state.routes.is_empty() && state.neighbours.is_empty() && state.fdb.is_empty(),
        "nothing half-programmed"
    );
    let missing: Vec<_> = state
        .peer_problems
        .iter()
        .map(|p| match p {
            PeerProblem::Pending { peer, missing } => (peer.as_str(), *missing),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        missing,
        vec![("b", "nodeIP"), ("c", "vtepMAC"), ("d", "receiveBackends")]
    );
}

#[test]
fn switch_sends_on_the_new_backend_only_to_peers_that_receive_it() {
    // Target host-gw; b already receives host-gw, c only vxlan (not switched yet).
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[H, V]),
        peer("c", 3, [192, 168, 0, 3], &[V]),
    ];
    let state = plan(
        &network(H, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    assert_eq!(
        state.peer_backends,
        BTreeMap::from([("b".into(), H), ("c".into(), V)])
    );
    // c still sends vxlan to us, so we keep receiving vxlan.
    assert!(state.receive_backends.contains(&V) && state.receive_backends.contains(&H));
    assert!(state.vxlan.is_some());
    assert_eq!(state.backend, V, "still sends vxlan to c, so it says so");
}

#[test]
fn reports_the_target_once_every_peer_gets_it() {
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[H, V]),
        peer("c", 3, [192, 168, 0, 3], &[H]),
    ];
    let state = plan(
        &network(H, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    assert_eq!(state.backend, H);
    assert_eq!(
        state.peer_backends.values().collect::<Vec<_>>(),
        vec![&H, &H]
    );
}

#[test]
fn old_receive_path_goes_once_no_peer_sends_on_it() {
    let mut b = peer("b", 2, [192, 168, 0, 2], &[H]);
    b.backend = Some(H);
    let state = plan(
        &network(H, false, false),
        &subnet("a", 1, false),
        &[b],
        &facts(),
    );
    assert_eq!(state.receive_backends, BTreeSet::from([H]));
    assert!(state.vxlan.is_none());
}

#[test]
fn dual_stack_adds_ipv6_routes_and_neighbours() {
    let mut b = peer("b", 2, [192, 168, 0, 2], &[V]);
    b.subnet = subnet("b", 2, true);
    let state = plan(
        &network(V, false, true),
        &subnet("a", 1, true),
        &[b],
        &facts(),
    );
    let dsts: Vec<String> = state
        .routes
        .iter()
        .map(|r| r.destination.to_string())
        .collect();
    assert_eq!(dsts, vec!["10.244.2.0/24", "fd00:10:244:2::/64"]);
    assert_eq!(state.neighbours.len(), 2);
    assert_eq!(state.fdb.len(), 1, "one FDB entry per peer MAC");
    let addrs: Vec<String> = state
        .bridge
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addrs, vec!["10.244.1.1/24", "fd00:10:244:1::1/64"]);
}

#[test]
fn too_large_mtu_is_clamped_and_reported() {
    let mut net = network(V, false, false);
    net.mtu = Some(1500);
    let state = plan(&net, &subnet("a", 1, false), &[], &facts());
    assert_eq!(state.mtu, 1450);
    assert_eq!(
        state.local_problems,
        vec![LocalProblem::MtuClamped {
            requested: 1500,
            clamped: 1450
        }]
    );
}

#[test]
fn old_kernels_get_tx_checksum_offload_turned_off() {
    let mut old = facts();
    old.kernel = (5, 4);
    let state = plan(&network(V, false, false), &subnet("a", 1, false), &[], &old);
    assert!(state.vxlan.expect("device").disable_tx_checksum);
    let state = plan(
        &network(V, false, false),
        &subnet("a", 1, false),
        &[],
        &facts(),
    );
    assert!(!state.vxlan.expect("device").disable_tx_checksum);
}

#[test]
fn planning_is_deterministic_and_peer_order_does_not_matter() {
    let a = [
        peer("b", 2, [192, 168, 0, 2], &[V]),
        peer("c", 3, [192, 168, 0, 3], &[V]),
    ];
    let b = [a[1].clone(), a[0].clone()];
    let net = network(V, false, false);
    assert_eq!(
        plan(&net, &subnet("a", 1, false), &a, &facts()),
        plan(&net, &subnet("a", 1, false), &b, &facts())
    );
}

#[test]
fn off_link_host_gw_falls_back_to_vxlan_and_says_so() {
    let peers = [peer("c", 3, [10, 0, 0, 3], &[V, H])];
    let state = plan(
        &network(H, false, false),
        &subnet("a", 1, false),
        &peers,
        &facts(),
    );
    assert_eq!(
        state.peer_backends.get("c"),
        Some(&V),
        "traffic keeps flowing over vxlan"
    );
    assert!(matches!(
        state.peer_problems.iter().next(),
        Some(PeerProblem::NotOnLink { .. })
    ));
}

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
    rack1.password = Some("s3cret".into());
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
    let peers = [
        peer("b", 2, [192, 168, 0, 2], &[B]),
        peer("c", 3, [192, 168, 9, 3], &[B]),
    ];
    let state = plan(&network, &subnet("a", 1, false), &peers, &f);
    let spec = state.bgp.expect("BIRD runs");
    let sessions: Vec<(&str, bool, bool, Option<&str>)> = spec
        .neighbors
        .iter()
        .map(|n| (n.name.as_str(), n.direct, n.external, n.password.as_deref()))
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
            sessions: vec!["b 192.168.0.2 (Active: Socket: Connection refused)".into()]
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
