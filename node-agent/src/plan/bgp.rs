//! The bgp part of the plan: this node's BIRD sessions and filters. Pure.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use tartan_crds::validate::ValidBgpPeer;
use tartan_crds::{ValidNetwork, ValidNodeSubnet};

use super::{BgpNeighbor, BgpObserved, BgpSpec, LocalFacts, LocalProblem, Password};

/// A BIRD protocol name from an address: letters, digits and `_` only.
fn protocol_name(prefix: &str, address: IpAddr) -> String {
    let text: String = address
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{prefix}_{text}")
}

/// Sessions: the on-link nodes (full mesh, when on) and the external peers
/// whose node selector matches this node. Off-link nodes are reached through
/// the external peers (the routers between the segments), as with Calico.
pub fn spec(
    network: &ValidNetwork,
    local: &ValidNodeSubnet,
    facts: &LocalFacts,
    on_link_nodes: &[(String, Ipv4Addr)],
) -> BgpSpec {
    let bgp = &network.backend.bgp;
    let mut neighbors: Vec<BgpNeighbor> = Vec::new();
    if bgp.node_to_node_mesh {
        neighbors.extend(on_link_nodes.iter().map(|(node, ip)| BgpNeighbor {
            name: protocol_name("mesh", IpAddr::V4(*ip)),
            label: node.clone(),
            address: IpAddr::V4(*ip),
            asn: bgp.as_number,
            direct: true,
            external: false,
            password: None,
            keep_next_hop: false,
        }));
    }
    for peer in selected_peers(network, facts) {
        let address = peer.address;
        if neighbors.iter().any(|n| n.address == address) {
            continue;
        }
        // A peer that wants a password and has none would only fail to
        // connect: it is left out and reported ([`passwords_unavailable`]).
        let password = match password(peer, facts) {
            None => None,
            Some(Ok(password)) => Some(password.clone()),
            Some(Err(_)) => continue,
        };
        neighbors.push(BgpNeighbor {
            name: protocol_name("peer", address),
            label: "router".into(),
            address,
            asn: peer.as_number,
            direct: matches!(address, IpAddr::V4(v4) if facts.on_link(v4)),
            external: true,
            password,
            keep_next_hop: peer.keep_original_next_hop,
        });
    }
    neighbors.sort();
    BgpSpec {
        router_id: facts.node_ip,
        asn: bgp.as_number,
        underlay: facts.underlay.clone(),
        announce: vec![IpNet::V4(local.cidr)],
        accept: vec![(IpNet::V4(network.cidr), network.node_prefix_length)],
        neighbors,
    }
}

/// The external peers whose node selector matches this node.
fn selected_peers<'a>(
    network: &'a ValidNetwork,
    facts: &'a LocalFacts,
) -> impl Iterator<Item = &'a ValidBgpPeer> {
    network.backend.bgp.peers.iter().filter(|peer| {
        peer.node_selector
            .as_ref()
            .is_none_or(|s| tartan_crds::selector::matches(s, &facts.node_labels))
    })
}

/// The peer's password as read, when it has a `passwordSecretRef`; a ref the
/// agent has not read yet counts as unavailable.
fn password<'a>(
    peer: &ValidBgpPeer,
    facts: &'a LocalFacts,
) -> Option<Result<&'a Password, String>> {
    let reference = peer.password_secret_ref.as_ref()?;
    Some(match facts.bgp_passwords.get(reference) {
        Some(Ok(password)) => Ok(password),
        Some(Err(why)) => Err(why.clone()),
        None => Err(format!("{reference} not read yet")),
    })
}

/// The selected external peers left out for want of their password.
pub fn passwords_unavailable(network: &ValidNetwork, facts: &LocalFacts) -> Option<LocalProblem> {
    let peers: Vec<(IpAddr, String)> = selected_peers(network, facts)
        .filter_map(|peer| Some((peer.address, password(peer, facts)?.err()?)))
        .collect();
    (!peers.is_empty()).then_some(LocalProblem::BgpPasswordUnavailable { peers })
}

/// The expected sessions that are not Established, each as
/// "label address (state: last error)"; `None` when all are.
pub fn sessions_down(spec: &BgpSpec, observed: &BgpObserved) -> Option<LocalProblem> {
    let sessions: Vec<(String, String)> = spec
        .neighbors
        .iter()
        .filter_map(|n| {
            let why = match (observed.sessions.get(&n.name), &observed.error) {
                (Some(s), _) if s.established() => return None,
                (Some(s), _) => match &s.last_error {
                    Some(e) => format!("{}: {e}", s.state),
                    None => s.state.clone(),
                },
                (None, Some(e)) => format!("BIRD: {e}"),
                (None, None) => "not configured yet".into(),
            };
            Some((n.name.clone(), format!("{} {} ({why})", n.label, n.address)))
        })
        .collect();
    (!sessions.is_empty()).then_some(LocalProblem::BgpSessionsDown { sessions })
}
