mod backends;
mod wireguard;

use super::*;

use tartan_crds::OverlayNetworkSpec;

pub(super) fn network(backend: BackendType, direct: bool, ipv6: bool) -> ValidNetwork {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    spec.backend.vxlan.direct_routing = direct;
    if ipv6 {
        spec.ipv6_cidr = Some("fd00:10:244::/56".into());
    }
    spec.validate().expect("valid")
}

pub(super) fn subnet(node: &str, third: u8, ipv6: bool) -> ValidNodeSubnet {
    ValidNodeSubnet {
        node_name: node.into(),
        network: "default".into(),
        cidr: format!("10.244.{third}.0/24").parse().expect("cidr"),
        ipv6_cidr: ipv6.then(|| format!("fd00:10:244:{third}::/64").parse().expect("cidr")),
    }
}

pub(super) fn facts() -> LocalFacts {
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
pub(super) fn peer(name: &str, third: u8, ip: [u8; 4], receive: &[BackendType]) -> Peer {
    let node_ip = Ipv4Addr::from(ip);
    Peer {
        name: name.into(),
        subnet: subnet(name, third, false),
        endpoint: Ok(ValidEndpoint {
            node_ip: Some(node_ip),
            node_ipv6: None,
            vtep_mac: Some(vtep_mac(node_ip)),
            wireguard_key: None,
        }),
        backend: receive.first().copied(),
        receive: receive.iter().copied().collect(),
    }
}

pub(super) const V: BackendType = BackendType::Vxlan;
pub(super) const H: BackendType = BackendType::HostGw;

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
