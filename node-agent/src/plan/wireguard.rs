//! The wireguard part of the plan: a TUN like the udp backend's, and the
//! public key of every peer that may send to or be sent to. Pure.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::IpNet;
use tartan_crds::{BackendType, ValidNetwork};

use super::udp::TunPlan;
use super::{LocalFacts, WIREGUARD_TUN, WireguardSpec};

pub fn tun(network: &ValidNetwork) -> TunPlan {
    TunPlan {
        backend: BackendType::Wireguard,
        device: WIREGUARD_TUN,
        port: network.backend.wireguard.port,
    }
}

/// The spec; a peer without a published key is left out of both tables (it
/// can neither be sent to nor be heard), and stays a peer problem.
pub fn spec(
    network: &ValidNetwork,
    facts: &LocalFacts,
    own: &[IpNet],
    mut peers: BTreeMap<IpNet, Ipv4Addr>,
    mut senders: BTreeMap<IpNet, Ipv4Addr>,
    keys: &BTreeMap<Ipv4Addr, [u8; 32]>,
) -> WireguardSpec {
    peers.retain(|_, node| keys.contains_key(node));
    senders.retain(|_, node| keys.contains_key(node));
    let keys = keys
        .iter()
        .filter(|(node, _)| senders.values().chain(peers.values()).any(|n| n == *node))
        .map(|(node, key)| (*node, *key))
        .collect();
    WireguardSpec {
        tun: tun(network).spec(facts, own, peers, senders),
        keys,
    }
}
