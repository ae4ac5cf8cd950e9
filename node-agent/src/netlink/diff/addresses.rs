//! Addresses on Tartan's devices: the bridge's gateways, the VXLAN device's
//! and the TUN's own-subnet addresses. Only devices this state wants are
//! pruned; a device being recreated or retired takes its addresses with it.

use ipnet::IpNet;

use super::super::observe::Observed;
use super::{Gone, Op};
use crate::plan::DesiredState;

pub(super) fn diff(desired: &DesiredState, observed: &Observed, gone: &Gone) -> Vec<Op> {
    let bridge = &desired.bridge;
    let mut wanted: Vec<(&str, IpNet)> = bridge
        .addresses
        .iter()
        .map(|a| (bridge.name.as_str(), *a))
        .collect();
    if let Some(v) = &desired.vxlan {
        wanted.extend(v.addresses.iter().map(|a| (v.name.as_str(), *a)));
    }
    for u in desired.tuns() {
        wanted.extend(u.addresses.iter().map(|a| (u.device.as_str(), *a)));
    }
    let mut ops = Vec::new();
    for (device, address) in &wanted {
        let present = !gone.contains(device)
            && observed
                .addresses
                .get(*device)
                .is_some_and(|s| s.contains(address));
        if !present {
            ops.push(Op::AddAddress {
                device: device.to_string(),
                address: *address,
            });
        }
    }
    let desired_vxlan = desired.vxlan.as_ref().map(|v| v.name.as_str());
    for (device, addresses) in &observed.addresses {
        let ours = device == &bridge.name
            || Some(device.as_str()) == desired_vxlan
            || desired.tuns().any(|t| &t.device == device);
        if gone.contains(device) || !ours {
            continue;
        }
        for address in addresses {
            if !wanted.iter().any(|(d, a)| d == device && a == address) {
                ops.push(Op::DelAddress {
                    device: device.clone(),
                    address: *address,
                });
            }
        }
    }
    ops
}
