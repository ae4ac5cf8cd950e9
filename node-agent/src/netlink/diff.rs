//! Desired against observed: the operations that turn one into the other.
//! Pure. Ordered make-before-break: devices and addresses first, then FDB and
//! neighbours (so a new route's next hop resolves at once), then routes
//! (replaced in place, so a peer switching backend never loses its route),
//! and only then removals, routes before the entries they used.

use std::collections::BTreeSet;

use ipnet::IpNet;
use netlink_packet_route::link::InfoKind;

use super::observe::Observed;
use crate::plan::{DesiredState, FdbSpec, NeighbourSpec, RouteSpec, TUN, VxlanSpec};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateBridge {
        name: String,
        mtu: u32,
    },
    CreateVxlan(VxlanSpec),
    /// Mutable link attributes: MTU, MAC, up.
    SetLink {
        name: String,
        mtu: Option<u32>,
        mac: Option<[u8; 6]>,
        up: bool,
    },
    DisableTxChecksum {
        name: String,
    },
    DeleteLink {
        name: String,
    },
    AddAddress {
        device: String,
        address: IpNet,
    },
    DelAddress {
        device: String,
        address: IpNet,
    },
    AddFdb(FdbSpec),
    DelFdb(FdbSpec),
    AddNeighbour(NeighbourSpec),
    DelNeighbour(NeighbourSpec),
    /// Add, or replace the route to the same destination.
    AddRoute(RouteSpec),
    DelRoute(RouteSpec),
}

impl Op {
    /// Operations of one phase are independent and may be sent together.
    pub fn phase(&self) -> u8 {
        match self {
            Op::DeleteLink { .. } | Op::CreateBridge { .. } | Op::CreateVxlan(_) => 0,
            Op::SetLink { .. } | Op::DisableTxChecksum { .. } => 1,
            Op::AddAddress { .. } => 2,
            Op::AddFdb(_) | Op::AddNeighbour(_) => 3,
            Op::AddRoute(_) => 4,
            Op::DelRoute(_) => 5,
            Op::DelNeighbour(_) | Op::DelFdb(_) => 6,
            Op::DelAddress { .. } => 7,
        }
    }

    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::CreateBridge { .. }
            | Op::CreateVxlan(_)
            | Op::SetLink { .. }
            | Op::DeleteLink { .. } => "link",
            Op::DisableTxChecksum { .. } => "offload",
            Op::AddAddress { .. } | Op::DelAddress { .. } => "address",
            Op::AddFdb(_) | Op::DelFdb(_) => "fdb",
            Op::AddNeighbour(_) | Op::DelNeighbour(_) => "neighbour",
            Op::AddRoute(_) | Op::DelRoute(_) => "route",
        }
    }
}

/// The operations that make `observed` into `desired`, in a safe order.
/// Devices that are Tartan's but not desired are removed, except the bridge
/// (pods hang off it) and the udp backend's TUN (owned by that backend).
pub fn diff(desired: &DesiredState, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut recreated: BTreeSet<String> = BTreeSet::new();
    let mut retiring: BTreeSet<String> = BTreeSet::new();

    // The bridge.
    let bridge = &desired.bridge;
    match observed.links.get(&bridge.name) {
        Some(link) if link.kind == Some(InfoKind::Bridge) => {
            if link.mtu != Some(bridge.mtu) || !link.up {
                ops.push(Op::SetLink {
                    name: bridge.name.clone(),
                    mtu: Some(bridge.mtu),
                    mac: None,
                    up: true,
                });
            }
        }
        other => {
            if other.is_some() {
                ops.push(Op::DeleteLink {
                    name: bridge.name.clone(),
                });
                recreated.insert(bridge.name.clone());
            }
            ops.push(Op::CreateBridge {
                name: bridge.name.clone(),
                mtu: bridge.mtu,
            });
            ops.push(Op::SetLink {
                name: bridge.name.clone(),
                mtu: None,
                mac: None,
                up: true,
            });
        }
    }

    // The VXLAN device, recreated when an attribute the kernel cannot change differs.
    if let Some(want) = &desired.vxlan {
        let underlay_index = observed.links.get(&want.underlay).map(|l| l.index);
        match observed.links.get(&want.name) {
            Some(link)
                if link.kind == Some(InfoKind::Vxlan)
                    && vxlan_matches(want, link.vxlan.as_ref(), underlay_index) =>
            {
                let mac = (link.mac != Some(want.mac)).then_some(want.mac);
                if mac.is_some() || link.mtu != Some(want.mtu) || !link.up {
                    ops.push(Op::SetLink {
                        name: want.name.clone(),
                        mtu: Some(want.mtu),
                        mac,
                        up: true,
                    });
                }
            }
            other => {
                if other.is_some() {
                    ops.push(Op::DeleteLink {
                        name: want.name.clone(),
                    });
                    recreated.insert(want.name.clone());
                }
                ops.push(Op::CreateVxlan(want.clone()));
                ops.push(Op::SetLink {
                    name: want.name.clone(),
                    mtu: None,
                    mac: None,
                    up: true,
                });
                if want.disable_tx_checksum {
                    ops.push(Op::DisableTxChecksum {
                        name: want.name.clone(),
                    });
                }
            }
        }
    }
    let desired_vxlan = desired.vxlan.as_ref().map(|v| v.name.as_str());
    for name in observed.links.keys() {
        if name.starts_with("tartan.") && Some(name.as_str()) != desired_vxlan {
            ops.push(Op::DeleteLink { name: name.clone() });
            retiring.insert(name.clone());
        }
    }
    // The TUN is created by the udp datapath; here it only gets its MTU and
    // state, and is removed once the udp backend is no longer wanted.
    let desired_tun = desired.udp.as_ref().map(|u| u.device.as_str());
    if let Some(want) = &desired.udp
        && let Some(link) = observed.links.get(&want.device)
        && (link.mtu != Some(want.mtu) || !link.up)
    {
        ops.push(Op::SetLink {
            name: want.device.clone(),
            mtu: Some(want.mtu),
            mac: None,
            up: true,
        });
    }
    if desired_tun.is_none() && observed.links.contains_key(TUN) {
        ops.push(Op::DeleteLink { name: TUN.into() });
        retiring.insert(TUN.into());
    }
    // Gone: deleted and created again at the start (its objects go with it),
    // or retiring at the end; routes through a retiring device are still
    // removed first, so the route that replaces them (BIRD's, with a higher
    // metric) carries traffic before the device and its FDB are torn down.
    let gone = |device: &str| recreated.contains(device) || retiring.contains(device);

    // Addresses on our devices.
    let mut wanted_addresses: Vec<(String, IpNet)> = bridge
        .addresses
        .iter()
        .map(|a| (bridge.name.clone(), *a))
        .collect();
    if let Some(v) = &desired.vxlan {
        wanted_addresses.extend(v.addresses.iter().map(|a| (v.name.clone(), *a)));
    }
    if let Some(u) = &desired.udp {
        wanted_addresses.extend(u.addresses.iter().map(|a| (u.device.clone(), *a)));
    }
    for (device, address) in &wanted_addresses {
        let present = !gone(device)
            && observed
                .addresses
                .get(device)
                .is_some_and(|s| s.contains(address));
        if !present {
            ops.push(Op::AddAddress {
                device: device.clone(),
                address: *address,
            });
        }
    }
    for (device, addresses) in &observed.addresses {
        let ours = device == &bridge.name
            || Some(device.as_str()) == desired_vxlan
            || Some(device.as_str()) == desired_tun;
        if gone(device) || !ours {
            continue;
        }
        for address in addresses {
            if !wanted_addresses
                .iter()
                .any(|(d, a)| d == device && a == address)
            {
                ops.push(Op::DelAddress {
                    device: device.clone(),
                    address: *address,
                });
            }
        }
    }

    // FDB and neighbours: add or replace what differs, remove what is not wanted.
    for entry in &desired.fdb {
        let have = observed.fdb.get(&(entry.device.clone(), entry.mac));
        if gone(&entry.device) || have != Some(entry) {
            ops.push(Op::AddFdb(entry.clone()));
        }
    }
    for entry in &desired.neighbours {
        let have = observed
            .neighbours
            .get(&(entry.device.clone(), entry.address));
        if gone(&entry.device) || have != Some(entry) {
            ops.push(Op::AddNeighbour(entry.clone()));
        }
    }

    // Routes, by destination: a changed route is replaced, never removed first.
    let mut wanted_destinations = BTreeSet::new();
    for route in &desired.routes {
        wanted_destinations.insert(route.destination);
        let have = observed.routes.get(&route.destination);
        if gone(route.device.name()) || have != Some(route) {
            ops.push(Op::AddRoute(route.clone()));
        }
    }
    for (destination, route) in &observed.routes {
        if !wanted_destinations.contains(destination) && !recreated.contains(route.device.name()) {
            ops.push(Op::DelRoute(route.clone()));
        }
    }
    let wanted_fdb: BTreeSet<(&str, [u8; 6])> = desired
        .fdb
        .iter()
        .map(|e| (e.device.as_str(), e.mac))
        .collect();
    for ((device, mac), entry) in &observed.fdb {
        if !gone(device) && !wanted_fdb.contains(&(device.as_str(), *mac)) {
            ops.push(Op::DelFdb(entry.clone()));
        }
    }
    let wanted_neighbours: BTreeSet<(&str, std::net::IpAddr)> = desired
        .neighbours
        .iter()
        .map(|e| (e.device.as_str(), e.address))
        .collect();
    for ((device, address), entry) in &observed.neighbours {
        if !gone(device) && !wanted_neighbours.contains(&(device.as_str(), *address)) {
            ops.push(Op::DelNeighbour(entry.clone()));
        }
    }
    // Old devices go last, after everything that used them was moved off.
    let mut deletes: Vec<Op> = Vec::new();
    ops.retain(|op| {
        let late = matches!(op, Op::DeleteLink { name }
            if (name.starts_with("tartan.") && Some(name.as_str()) != desired_vxlan)
                || (name == TUN && desired_tun.is_none()));
        if late {
            deletes.push(op.clone());
        }
        !late
    });
    ops.sort_by_key(Op::phase);
    ops.extend(deletes);
    ops
}

fn vxlan_matches(
    want: &VxlanSpec,
    have: Option<&super::observe::VxlanAttrs>,
    underlay_index: Option<u32>,
) -> bool {
    let Some(have) = have else { return false };
    have.vni == Some(want.vni)
        && have.port == Some(want.port)
        && have.local == Some(want.local)
        && have.learning == Some(false)
        && (underlay_index.is_none() || have.underlay_index == underlay_index)
}
