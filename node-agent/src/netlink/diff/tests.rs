//! Property: applying a diff and diffing again yields nothing, from any start.
//! The kernel is modelled by applying each operation to an `Observed`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoKind;
use proptest::prelude::*;
use tartan_crds::validate::ValidEndpoint;
use tartan_crds::{BackendType, OverlayNetworkSpec, ValidNodeSubnet};

use super::{Op, diff};
use crate::netlink::observe::{Observed, ObservedLink, VxlanAttrs};
use crate::plan::{DesiredState, LocalFacts, Peer, plan, vtep_mac};

fn link(index: u32, name: &str, kind: InfoKind) -> ObservedLink {
    ObservedLink {
        index,
        name: name.into(),
        kind: Some(kind),
        mtu: Some(1500),
        up: true,
        mac: None,
        vxlan: None,
    }
}

/// What the kernel would hold after `ops`.
fn simulate(mut kernel: Observed, ops: &[Op]) -> Observed {
    let mut next_index = 100;
    for op in ops {
        match op {
            Op::CreateBridge { name, mtu } => {
                let mut l = link(next_index, name, InfoKind::Bridge);
                l.mtu = Some(*mtu);
                l.up = false;
                kernel.links.insert(name.clone(), l);
                next_index += 1;
            }
            Op::CreateVxlan(v) => {
                let mut l = link(next_index, &v.name, InfoKind::Vxlan);
                l.mtu = Some(v.mtu);
                l.mac = Some(v.mac);
                l.up = false;
                let underlay_index = kernel.links.get(&v.underlay).map(|u| u.index);
                l.vxlan = Some(VxlanAttrs {
                    vni: Some(v.vni),
                    port: Some(v.port),
                    local: Some(v.local),
                    underlay_index,
                    learning: Some(false),
                });
                kernel.links.insert(v.name.clone(), l);
                next_index += 1;
            }
            Op::SetLink { name, mtu, mac, up } => {
                if let Some(l) = kernel.links.get_mut(name) {
                    l.mtu = mtu.or(l.mtu);
                    l.mac = mac.or(l.mac);
                    l.up |= *up;
                }
            }
            Op::DisableTxChecksum { .. } => {}
            Op::DeleteLink { name } => {
                kernel.links.remove(name);
                kernel.addresses.remove(name);
                kernel.routes.retain(|_, r| r.device.name() != name);
                kernel.neighbours.retain(|(d, _), _| d != name);
                kernel.fdb.retain(|(d, _), _| d != name);
            }
            Op::AddAddress { device, address } => {
                kernel
                    .addresses
                    .entry(device.clone())
                    .or_default()
                    .insert(*address);
            }
            Op::DelAddress { device, address } => {
                kernel
                    .addresses
                    .entry(device.clone())
                    .or_default()
                    .remove(address);
            }
            Op::AddFdb(f) => {
                kernel.fdb.insert((f.device.clone(), f.mac), f.clone());
            }
            Op::DelFdb(f) => {
                kernel.fdb.remove(&(f.device.clone(), f.mac));
            }
            Op::AddNeighbour(n) => {
                kernel
                    .neighbours
                    .insert((n.device.clone(), n.address), n.clone());
            }
            Op::DelNeighbour(n) => {
                kernel.neighbours.remove(&(n.device.clone(), n.address));
            }
            Op::AddRoute(r) => {
                kernel.routes.insert(r.destination, r.clone());
            }
            Op::DelRoute(r) => {
                kernel.routes.remove(&r.destination);
            }
        }
    }
    kernel
}

fn desired(backend: BackendType, direct: bool, peers: &[(u8, bool, u8)]) -> DesiredState {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    spec.backend.vxlan.direct_routing = direct;
    let network = spec.validate().expect("valid");
    let local = ValidNodeSubnet {
        node_name: "a".into(),
        network: "default".into(),
        cidr: "10.244.1.0/24".parse().expect("cidr"),
        ipv6_cidr: None,
    };
    let facts = LocalFacts {
        underlay: "eth0".into(),
        node_ip: Ipv4Addr::new(192, 168, 0, 1),
        underlay_prefix: 24,
        node_ipv6: None,
        underlay_mtu: 1500,
        kernel: (6, 1),
        ..Default::default()
    };
    let peers: Vec<Peer> = peers
        .iter()
        .map(|(n, on_link, receive)| {
            let ip = if *on_link {
                Ipv4Addr::new(192, 168, 0, 10 + n)
            } else {
                Ipv4Addr::new(10, 0, 0, 10 + n)
            };
            let receive: BTreeSet<BackendType> = match receive % 3 {
                0 => [BackendType::Vxlan].into(),
                1 => [BackendType::HostGw].into(),
                _ => [BackendType::Vxlan, BackendType::HostGw].into(),
            };
            Peer {
                name: format!("p{n}"),
                subnet: ValidNodeSubnet {
                    node_name: format!("p{n}"),
                    network: "default".into(),
                    cidr: format!("10.244.{}.0/24", 10 + n).parse().expect("cidr"),
                    ipv6_cidr: None,
                },
                endpoint: Ok(ValidEndpoint {
                    node_ip: Some(ip),
                    node_ipv6: None,
                    vtep_mac: Some(vtep_mac(ip)),
                    wireguard_key: None,
                }),
                backend: receive.iter().next().copied(),
                receive,
            }
        })
        .collect();
    plan(&network, &local, &peers, &facts)
}

fn base_kernel() -> Observed {
    let mut kernel = Observed::default();
    kernel
        .links
        .insert("eth0".into(), link(2, "eth0", InfoKind::Veth));
    kernel
}

fn state() -> impl Strategy<Value = DesiredState> {
    (
        prop_oneof![Just(BackendType::Vxlan), Just(BackendType::HostGw)],
        any::<bool>(),
        proptest::collection::btree_map(0u8..20, (any::<bool>(), 0u8..3), 0..12),
    )
        .prop_map(|(backend, direct, peers)| {
            let peers: Vec<(u8, bool, u8)> =
                peers.into_iter().map(|(n, (l, r))| (n, l, r)).collect();
            desired(backend, direct, &peers)
        })
}

proptest! {
    #[test]
    fn after_applying_a_plan_planning_again_yields_nothing(before in state(), after in state()) {
        let kernel = simulate(base_kernel(), &diff(&before, &base_kernel()));
        prop_assert!(diff(&before, &kernel).is_empty(), "first state converges");
        let ops = diff(&after, &kernel);
        let kernel = simulate(kernel, &ops);
        let again = diff(&after, &kernel);
        prop_assert!(again.is_empty(), "left over: {again:?}");
        // Foreign devices are never touched.
        prop_assert!(kernel.links.contains_key("eth0"));
    }

    #[test]
    fn changes_are_make_before_break(before in state(), after in state()) {
        let kernel = simulate(base_kernel(), &diff(&before, &base_kernel()));
        let ops = diff(&after, &kernel);
        // Every addition comes before every removal of a route, neighbour or FDB entry.
        let first_removal = ops.iter().position(|op| matches!(op, Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_)));
        let last_addition = ops.iter().rposition(|op| matches!(op, Op::AddRoute(_) | Op::AddNeighbour(_) | Op::AddFdb(_)));
        if let (Some(removal), Some(addition)) = (first_removal, last_addition) {
            prop_assert!(addition < removal, "{ops:?}");
        }
        // No route is ever deleted and re-added: a changed one is replaced in place.
        for op in &ops {
            if let Op::DelRoute(r) = op {
                prop_assert!(!after.routes.iter().any(|d| d.destination == r.destination));
            }
        }
    }
}

#[test]
fn a_vxlan_device_with_a_wrong_vni_is_recreated_and_refilled() {
    let want = desired(BackendType::Vxlan, false, &[(1, true, 0)]);
    let mut kernel = simulate(base_kernel(), &diff(&want, &base_kernel()));
    if let Some(attrs) = kernel
        .links
        .get_mut("tartan.1")
        .and_then(|l| l.vxlan.as_mut())
    {
        attrs.vni = Some(7);
    }
    let ops = diff(&want, &kernel);
    assert!(
        matches!(&ops[0], Op::DeleteLink { name } if name == "tartan.1"),
        "{ops:?}"
    );
    assert!(
        ops.iter().any(|o| matches!(o, Op::AddRoute(_))),
        "routes re-added on the new device"
    );
    assert!(diff(&want, &simulate(kernel, &ops)).is_empty());
}

#[test]
fn routes_through_a_retiring_device_are_removed_before_it() {
    // A peer moves to a route Tartan does not own (BIRD's, bgp) in the same
    // apply that retires the VXLAN device: its route must go first, or the
    // device's FDB is flushed while the route still points into it.
    let before = desired(BackendType::Vxlan, false, &[(1, true, 0)]);
    let kernel = simulate(base_kernel(), &diff(&before, &base_kernel()));
    let mut after = before.clone();
    after.vxlan = None;
    after.routes.clear();
    after.neighbours.clear();
    after.fdb.clear();
    let ops = diff(&after, &kernel);
    let del_route = ops.iter().position(|o| matches!(o, Op::DelRoute(_)));
    let del_link = ops
        .iter()
        .position(|o| matches!(o, Op::DeleteLink { name } if name == "tartan.1"));
    assert!(
        matches!((del_route, del_link), (Some(r), Some(l)) if r < l),
        "{ops:?}"
    );
    assert!(diff(&after, &simulate(kernel, &ops)).is_empty());
}
