//! Links: the bridge, the VXLAN device and the udp backend's TUN. A device
//! whose fixed attributes differ is deleted and created again (its objects go
//! with it); one no longer wanted retires, deleted after everything else.

use netlink_packet_route::link::InfoKind;

use super::super::observe::{Observed, VxlanAttrs};
use super::{Gone, Op};
use crate::plan::{BridgeSpec, DesiredState, TUN, VxlanSpec, WIREGUARD_TUN, is_vxlan_device};

/// The link operations of one diff.
#[derive(Debug, Default)]
pub(super) struct Links {
    /// Creations and changes, sent first.
    pub ops: Vec<Op>,
    /// Deletions of retiring devices, sent last.
    pub retired: Vec<Op>,
    pub gone: Gone,
}

pub(super) fn diff(desired: &DesiredState, observed: &Observed) -> Links {
    let mut links = Links::default();
    links.bridge(&desired.bridge, observed);
    if let Some(want) = &desired.vxlan {
        links.vxlan(want, observed);
    }
    let desired_vxlan = desired.vxlan.as_ref().map(|v| v.name.as_str());
    for name in observed.links.keys() {
        if is_vxlan_device(name) && Some(name.as_str()) != desired_vxlan {
            links.retire(name);
        }
    }
    links.tun(desired, observed);
    links
}

impl Links {
    fn bridge(&mut self, bridge: &BridgeSpec, observed: &Observed) {
        match observed.links.get(&bridge.name) {
            Some(link) if link.kind == Some(InfoKind::Bridge) => {
                if link.mtu != Some(bridge.mtu) || !link.up {
                    self.ops.push(Op::SetLink {
                        name: bridge.name.clone(),
                        mtu: Some(bridge.mtu),
                        mac: None,
                        up: true,
                    });
                }
            }
            other => {
                if other.is_some() {
                    self.recreate(&bridge.name);
                }
                self.ops.push(Op::CreateBridge {
                    name: bridge.name.clone(),
                    mtu: bridge.mtu,
                });
                self.bring_up(&bridge.name);
            }
        }
    }

    /// The VXLAN device, recreated when an attribute the kernel cannot change differs.
    fn vxlan(&mut self, want: &VxlanSpec, observed: &Observed) {
        let underlay_index = observed.links.get(&want.underlay).map(|l| l.index);
        match observed.links.get(&want.name) {
            Some(link)
                if link.kind == Some(InfoKind::Vxlan)
                    && vxlan_matches(want, link.vxlan.as_ref(), underlay_index) =>
            {
                let mac = (link.mac != Some(want.mac)).then_some(want.mac);
                if mac.is_some() || link.mtu != Some(want.mtu) || !link.up {
                    self.ops.push(Op::SetLink {
                        name: want.name.clone(),
                        mtu: Some(want.mtu),
                        mac,
                        up: true,
                    });
                }
            }
            other => {
                if other.is_some() {
                    self.recreate(&want.name);
                }
                self.ops.push(Op::CreateVxlan(want.clone()));
                self.bring_up(&want.name);
                if want.disable_tx_checksum {
                    self.ops.push(Op::DisableTxChecksum {
                        name: want.name.clone(),
                    });
                }
            }
        }
    }

    /// A TUN is created by its datapath (udp or wireguard); here it only gets
    /// its MTU and state, and is removed once its backend is no longer wanted.
    fn tun(&mut self, desired: &DesiredState, observed: &Observed) {
        for want in desired.tuns() {
            if let Some(link) = observed.links.get(&want.device)
                && (link.mtu != Some(want.mtu) || !link.up)
            {
                self.ops.push(Op::SetLink {
                    name: want.device.clone(),
                    mtu: Some(want.mtu),
                    mac: None,
                    up: true,
                });
            }
        }
        for name in [TUN, WIREGUARD_TUN] {
            if observed.links.contains_key(name) && !desired.tuns().any(|t| t.device == name) {
                self.retire(name);
            }
        }
    }

    /// Deleted now, before it is created again.
    fn recreate(&mut self, name: &str) {
        self.ops.push(Op::DeleteLink { name: name.into() });
        self.gone.recreated.insert(name.into());
    }

    /// Deleted once nothing uses it any more.
    fn retire(&mut self, name: &str) {
        self.retired.push(Op::DeleteLink { name: name.into() });
        self.gone.retiring.insert(name.into());
    }

    /// A device is created down (with its MTU): bring it up.
    fn bring_up(&mut self, name: &str) {
        self.ops.push(Op::SetLink {
            name: name.into(),
            mtu: None,
            mac: None,
            up: true,
        });
    }
}

fn vxlan_matches(want: &VxlanSpec, have: Option<&VxlanAttrs>, underlay_index: Option<u32>) -> bool {
    let Some(have) = have else { return false };
    have.vni == Some(want.vni)
        && have.port == Some(want.port)
        && have.local == Some(want.local)
        && have.learning == Some(false)
        && (underlay_index.is_none() || have.underlay_index == underlay_index)
}
