//! The backend settings of an `OverlayNetwork`, checked and converted once into
//! the types the agent uses (ports as `u16`, peer addresses as `IpAddr`), so no
//! consumer re-parses them or falls back to a default on a value it cannot use.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::in_range;
use crate::cidr;
use crate::error::{Result, ValidationError};
use crate::overlay_network::{Backend, BackendType, BgpPeer};

/// `spec.backend` after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidBackend {
    pub type_: BackendType,
    pub vxlan: ValidVxlan,
    pub udp: ValidUdp,
    pub bgp: ValidBgp,
    pub wireguard: ValidWireguard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidVxlan {
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidUdp {
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidWireguard {
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidBgp {
    pub as_number: u32,
    pub node_to_node_mesh: bool,
    /// Distinct addresses, in the order written.
    pub peers: Vec<ValidBgpPeer>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValidBgpPeer {
    pub address: IpAddr,
    pub as_number: u32,
    /// Where the session's password is (the agent reads it and checks it
    /// with [`super::valid_bgp_password`] before it reaches BIRD).
    pub password_secret_ref: Option<crate::overlay_network::SecretKeyRef>,
    pub node_selector: Option<LabelSelector>,
    pub keep_original_next_hop: bool,
}

impl Backend {
    /// Checks every backend field as the schema does and returns the typed settings.
    pub fn validate(&self) -> Result<ValidBackend> {
        in_range("spec.backend.vxlan.vni", self.vxlan.vni, 1, 16_777_215)?;
        let vxlan_port = port("spec.backend.vxlan.port", self.vxlan.port)?;
        let udp_port = port("spec.backend.udp.port", self.udp.port)?;
        let wireguard_port = port("spec.backend.wireguard.port", self.wireguard.port)?;
        in_range("spec.backend.bgp.asNumber", self.bgp.as_number, 1, u32::MAX)?;
        let mut seen = BTreeSet::new();
        let peers = (self.bgp.peers.iter().enumerate())
            .map(|(i, peer)| bgp_peer(i, peer, &mut seen))
            .collect::<Result<Vec<_>>>()?;
        if self.type_ == BackendType::Udp && udp_port == vxlan_port {
            return Err(ValidationError::new(
                "spec.backend.udp.port",
                udp_port,
                "must differ from spec.backend.vxlan.port so both can run during a switch",
            ));
        }
        // The target's port may not clash with a backend a switch runs beside it.
        let clash = match self.type_ {
            BackendType::Wireguard => [vxlan_port, udp_port].contains(&wireguard_port),
            BackendType::Udp => wireguard_port == udp_port,
            _ => false,
        };
        if clash {
            return Err(ValidationError::new(
                "spec.backend.wireguard.port",
                wireguard_port,
                "must differ from spec.backend.vxlan.port and spec.backend.udp.port so they can run together during a switch",
            ));
        }
        Ok(ValidBackend {
            type_: self.type_,
            vxlan: ValidVxlan {
                vni: self.vxlan.vni,
                port: vxlan_port,
                direct_routing: self.vxlan.direct_routing,
            },
            udp: ValidUdp { port: udp_port },
            wireguard: ValidWireguard {
                port: wireguard_port,
            },
            bgp: ValidBgp {
                as_number: self.bgp.as_number,
                node_to_node_mesh: self.bgp.node_to_node_mesh,
                peers,
            },
        })
    }
}

/// A UDP port: in range, then converted (the conversion cannot fail after the
/// range check, but a failure would still name the field rather than default).
fn port(field: &str, value: u32) -> Result<u16> {
    in_range(field, value, 1, 65_535)?;
    u16::try_from(value).map_err(|_| ValidationError::new(field, value, "not a UDP port"))
}

/// The `i`th peer; `seen` holds the addresses of the ones before it.
fn bgp_peer(i: usize, peer: &BgpPeer, seen: &mut BTreeSet<IpAddr>) -> Result<ValidBgpPeer> {
    let field = |name: &str| format!("spec.backend.bgp.peers[{i}].{name}");
    let address = cidr::parse_ip(&peer.address).ok_or_else(|| {
        ValidationError::new(field("address"), &peer.address, "not an IP address")
    })?;
    if !seen.insert(address) {
        return Err(ValidationError::new(
            field("address"),
            &peer.address,
            "duplicate peer",
        ));
    }
    in_range(&field("asNumber"), peer.as_number, 1, u32::MAX)?;
    if let Some(reference) = &peer.password_secret_ref {
        secret_key_ref(&field("passwordSecretRef"), reference)?;
    }
    if let Some(selector) = &peer.node_selector {
        crate::selector::validate(&field("nodeSelector"), selector)?;
    }
    Ok(ValidBgpPeer {
        address,
        as_number: peer.as_number,
        password_secret_ref: peer.password_secret_ref.clone(),
        node_selector: peer.node_selector.clone(),
        keep_original_next_hop: peer.keep_original_next_hop,
    })
}

/// A Secret's name (a DNS subdomain) and a data key, as the schema has them.
fn secret_key_ref(field: &str, reference: &crate::overlay_network::SecretKeyRef) -> Result<()> {
    let name = &reference.name;
    let name_ok = (1..=253).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(ValidationError::new(
            format!("{field}.name"),
            name,
            "must be a Secret name (lower-case DNS subdomain)",
        ));
    }
    let key = &reference.key;
    let key_ok = (1..=253).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if !key_ok {
        return Err(ValidationError::new(
            format!("{field}.key"),
            key,
            "must be a Secret data key (letters, digits, '-', '_', '.')",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OverlayNetworkSpec;

    #[test]
    fn ports_and_peer_addresses_come_out_typed() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.vxlan.port = 4789;
        spec.backend.udp.port = 65_535;
        spec.backend.bgp.peers = vec![BgpPeer::new("2001:db8::1", 65000)];
        let backend = spec.validate().expect("valid").backend;
        assert_eq!(
            (backend.vxlan.vni, backend.vxlan.port, backend.udp.port),
            (1, 4789, 65_535)
        );
        assert_eq!(
            backend.bgp.peers[0].address,
            "2001:db8::1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn a_port_that_does_not_fit_names_the_field_and_value() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.udp.port = 65_536;
        let err = spec.validate().unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value.as_str()),
            ("spec.backend.udp.port", "65536")
        );
        spec.backend.udp.port = 8285;
        spec.backend.vxlan.port = 0;
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.backend.vxlan.port"
        );
    }

    #[test]
    fn a_peer_that_is_not_an_address_is_refused_not_skipped() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.bgp.peers = vec![
            BgpPeer::new("192.0.2.1", 65000),
            BgpPeer::new("router", 65000),
        ];
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field, "spec.backend.bgp.peers[1].address");
        assert_eq!(err.value, "router");
    }

    #[test]
    fn wireguard_shares_no_port_with_a_backend_it_runs_beside() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.type_ = BackendType::Wireguard;
        assert_eq!(
            spec.validate().expect("defaults").backend.wireguard.port,
            51820
        );
        spec.backend.wireguard.port = 8285;
        let err = spec.validate().unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.value.as_str()),
            ("spec.backend.wireguard.port", "8285")
        );
        spec.backend.wireguard.port = 70_000;
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.backend.wireguard.port"
        );
    }

    #[test]
    fn udp_and_vxlan_must_not_share_a_port() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.type_ = BackendType::Udp;
        spec.backend.udp.port = 8472;
        assert_eq!(spec.validate().unwrap_err().field, "spec.backend.udp.port");
    }
}
