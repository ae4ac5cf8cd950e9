//! The crate's own validation: the same rules the CRD schema enforces, applied
//! by our binaries before they act, returning parsed values on success.
//!
//! The schema already makes the API server refuse bad objects; these checks
//! exist because an object can predate a schema change or be written with
//! validation off, and a bad object must be reported, never half-applied.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::cidr::{self, check_node_prefix};
use crate::error::{Result, ValidationError};
use crate::node_subnet::{NodeSubnetSpec, NodeSubnetStatus};
use crate::overlay_network::OverlayNetworkSpec;

mod backend;

pub use backend::{ValidBackend, ValidBgp, ValidBgpPeer, ValidUdp, ValidVxlan, ValidWireguard};

/// Longest IPv4 node prefix: a /30 still holds the gateway and one pod.
pub const MAX_IPV4_NODE_PREFIX: u8 = 30;
/// Longest IPv6 node prefix accepted.
pub const MAX_IPV6_NODE_PREFIX: u8 = 120;

/// An `OverlayNetworkSpec` that passed validation, with its CIDRs and backend parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidNetwork {
    pub cidr: Ipv4Net,
    pub node_prefix_length: u8,
    pub ipv6: Option<Ipv6Pool>,
    pub backend: ValidBackend,
    pub mtu: Option<u32>,
    pub masquerade: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Pool {
    pub cidr: Ipv6Net,
    pub node_prefix_length: u8,
}

impl OverlayNetworkSpec {
    /// Checks every field as the schema does and returns the parsed network.
    pub fn validate(&self) -> Result<ValidNetwork> {
        let cidr = cidr::ipv4_network("spec.cidr", &self.cidr)?;
        check_node_prefix(
            "spec.nodePrefixLength",
            self.node_prefix_length,
            cidr.prefix_len(),
            MAX_IPV4_NODE_PREFIX,
        )?;
        let ipv6 = match &self.ipv6_cidr {
            None => None,
            Some(value) => {
                let cidr = cidr::ipv6_network("spec.ipv6Cidr", value)?;
                check_node_prefix(
                    "spec.ipv6NodePrefixLength",
                    self.ipv6_node_prefix_length,
                    cidr.prefix_len(),
                    MAX_IPV6_NODE_PREFIX,
                )?;
                Some(Ipv6Pool {
                    cidr,
                    node_prefix_length: self.ipv6_node_prefix_length,
                })
            }
        };
        let backend = self.backend.validate()?;
        if let Some(mtu) = self.mtu {
            in_range("spec.mtu", mtu, 576, 9216)?;
        }
        Ok(ValidNetwork {
            cidr,
            node_prefix_length: self.node_prefix_length,
            ipv6,
            backend,
            mtu: self.mtu,
            masquerade: self.masquerade,
        })
    }
}

/// What a BGP password may hold: it is written into BIRD's configuration
/// between double quotes, so nothing that could end or escape the string.
pub fn valid_bgp_password(password: &str) -> bool {
    (1..=80).contains(&password.len())
        && password
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

fn in_range(field: &str, value: u32, min: u32, max: u32) -> Result<()> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            value,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// A `NodeSubnetSpec` that passed validation, with its CIDRs parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidNodeSubnet {
    pub node_name: String,
    pub network: String,
    pub cidr: Ipv4Net,
    pub ipv6_cidr: Option<Ipv6Net>,
}

impl ValidNodeSubnet {
    /// The node's pod subnets: IPv4, then IPv6 when dual-stack.
    pub fn cidrs(&self) -> impl Iterator<Item = ipnet::IpNet> + use<> {
        std::iter::once(ipnet::IpNet::V4(self.cidr)).chain(self.ipv6_cidr.map(ipnet::IpNet::V6))
    }
}

impl NodeSubnetSpec {
    pub fn validate(&self) -> Result<ValidNodeSubnet> {
        if self.node_name.is_empty() {
            return Err(ValidationError::new(
                "spec.nodeName",
                "",
                "must not be empty",
            ));
        }
        Ok(ValidNodeSubnet {
            node_name: self.node_name.clone(),
            network: self.network.clone(),
            cidr: cidr::ipv4_network("spec.cidr", &self.cidr)?,
            ipv6_cidr: self
                .ipv6_cidr
                .as_deref()
                .map(|v| cidr::ipv6_network("spec.ipv6Cidr", v))
                .transpose()?,
        })
    }
}

/// A peer's addresses as its agent reported them, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValidEndpoint {
    pub node_ip: Option<Ipv4Addr>,
    pub node_ipv6: Option<Ipv6Addr>,
    pub vtep_mac: Option<[u8; 6]>,
    /// The peer's WireGuard public key.
    pub wireguard_key: Option<[u8; 32]>,
}

impl NodeSubnetStatus {
    /// Parses the addresses a node's agent published.
    pub fn endpoint(&self) -> Result<ValidEndpoint> {
        let node_ip = match self.node_ip.as_deref().map(|v| (v, cidr::parse_ip(v))) {
            None => None,
            Some((_, Some(IpAddr::V4(ip)))) => Some(ip),
            Some((v, _)) => {
                return Err(ValidationError::new(
                    "status.nodeIP",
                    v,
                    "not an IPv4 address",
                ));
            }
        };
        let node_ipv6 = match self.node_ipv6.as_deref().map(|v| (v, cidr::parse_ip(v))) {
            None => None,
            Some((_, Some(IpAddr::V6(ip)))) => Some(ip),
            Some((v, _)) => {
                return Err(ValidationError::new(
                    "status.nodeIPv6",
                    v,
                    "not an IPv6 address",
                ));
            }
        };
        let vtep_mac = self
            .vtep_mac
            .as_deref()
            .map(|v| {
                parse_mac(v).ok_or_else(|| {
                    ValidationError::new(
                        "status.vtepMAC",
                        v,
                        "not a MAC address (aa:bb:cc:dd:ee:ff)",
                    )
                })
            })
            .transpose()?;
        let wireguard_key = self
            .wireguard_public_key
            .as_deref()
            .map(|v| {
                parse_wireguard_key(v).ok_or_else(|| {
                    ValidationError::new(
                        "status.wireguardPublicKey",
                        v,
                        "not a WireGuard public key (32 bytes in base64, as `wg pubkey` prints it)",
                    )
                })
            })
            .transpose()?;
        Ok(ValidEndpoint {
            node_ip,
            node_ipv6,
            vtep_mac,
            wireguard_key,
        })
    }
}

/// Parses a WireGuard key as `wg` writes it: 32 bytes in padded base64.
pub fn parse_wireguard_key(value: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    if value.len() != 44 {
        return None;
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()?;
    bytes.try_into().ok()
}

/// Formats a WireGuard key as `wg` writes it.
pub fn format_wireguard_key(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// Parses `aa:bb:cc:dd:ee:ff` (lower or upper case).
pub fn parse_mac(value: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = value.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC the way the schema and `ip link` write it.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_network_is_valid() {
        let net = OverlayNetworkSpec::with_cidr("10.244.0.0/16")
            .validate()
            .expect("valid");
        assert_eq!(net.cidr.to_string(), "10.244.0.0/16");
        assert_eq!(net.node_prefix_length, 24);
        assert!(net.ipv6.is_none());
    }

    #[test]
    fn malformed_cidr_names_the_field() {
        let err = OverlayNetworkSpec::with_cidr("10.244.0.0/40")
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "spec.cidr");
        assert_eq!(err.value, "10.244.0.0/40");
    }

    #[test]
    fn out_of_range_vni_names_the_field() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.backend.vxlan.vni = 16_777_216;
        let err = spec.validate().unwrap_err();
        assert_eq!(err.field, "spec.backend.vxlan.vni");
        assert_eq!(
            err.to_string(),
            "spec.backend.vxlan.vni: invalid value \"16777216\": must be between 1 and 16777215"
        );
        spec.backend.vxlan.vni = 0;
        assert_eq!(spec.validate().unwrap_err().field, "spec.backend.vxlan.vni");
    }

    #[test]
    fn node_prefix_shorter_than_pool_is_refused() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.node_prefix_length = 12;
        assert_eq!(spec.validate().unwrap_err().field, "spec.nodePrefixLength");
    }

    #[test]
    fn ipv6_pool_is_checked() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        spec.ipv6_cidr = Some("fd00:10:244::/56".into());
        assert!(spec.validate().expect("valid").ipv6.is_some());
        spec.ipv6_cidr = Some("fd00:10:244::1/56".into());
        assert_eq!(spec.validate().unwrap_err().field, "spec.ipv6Cidr");
        spec.ipv6_cidr = Some("fd00::/32".into());
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.ipv6NodePrefixLength"
        );
    }

    #[test]
    fn duplicate_bgp_peers_are_refused() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        let peer = crate::BgpPeer::new("192.0.2.1", 65000);
        spec.backend.bgp.peers = vec![peer.clone(), peer];
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.backend.bgp.peers[1].address"
        );
    }

    #[test]
    fn a_bgp_password_secret_ref_names_a_secret_and_a_key() {
        let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
        for (name, key, refused) in [
            ("bgp-rack1", "password", None),
            ("bgp.rack-1", "rack_1.pw", None),
            ("Bgp", "password", Some("name")),
            ("-bgp", "password", Some("name")),
            ("bgp", "pass word", Some("key")),
            ("bgp", "", Some("key")),
        ] {
            let mut peer = crate::BgpPeer::new("192.0.2.1", 65000);
            peer.password_secret_ref = Some(crate::overlay_network::SecretKeyRef {
                name: name.into(),
                key: key.into(),
            });
            spec.backend.bgp.peers = vec![peer];
            match (spec.validate(), refused) {
                (Ok(_), None) => {}
                (Err(e), Some(part)) => assert_eq!(
                    e.field,
                    format!("spec.backend.bgp.peers[0].passwordSecretRef.{part}")
                ),
                (result, _) => panic!("{name:?}/{key:?}: {result:?}"),
            }
        }
    }

    #[test]
    fn node_subnet_endpoint_parses_addresses() {
        let status = NodeSubnetStatus {
            node_ip: Some("192.168.0.3".into()),
            vtep_mac: Some("0e:2a:c0:a8:00:03".into()),
            ..Default::default()
        };
        let ep = status.endpoint().expect("valid");
        assert_eq!(ep.node_ip, Some(Ipv4Addr::new(192, 168, 0, 3)));
        assert_eq!(
            ep.vtep_mac.map(|m| format_mac(&m)),
            Some("0e:2a:c0:a8:00:03".into())
        );
        let bad = NodeSubnetStatus {
            vtep_mac: Some("0e:2a".into()),
            ..Default::default()
        };
        assert_eq!(bad.endpoint().unwrap_err().field, "status.vtepMAC");
    }

    #[test]
    fn a_wireguard_key_is_32_bytes_of_base64_or_named_as_bad() {
        let key = "wC9tySw4N4KB5Ig2p963bWrfIhZOFsfz1jGeY3pb1gQ=";
        let status = NodeSubnetStatus {
            wireguard_public_key: Some(key.into()),
            ..Default::default()
        };
        let parsed = status
            .endpoint()
            .expect("valid")
            .wireguard_key
            .expect("key");
        assert_eq!(format_wireguard_key(&parsed), key);
        for bad in [
            "",
            "wC9tySw4N4KB5Ig2p963bWrfIhZOFsfz1jGeY3pb1g=",
            "not base64 at all, but forty-four chars!!!=",
        ] {
            let status = NodeSubnetStatus {
                wireguard_public_key: Some(bad.into()),
                ..Default::default()
            };
            let err = status.endpoint().unwrap_err();
            assert_eq!(
                (err.field.as_str(), err.value.as_str()),
                ("status.wireguardPublicKey", bad)
            );
        }
    }

    #[test]
    fn mac_parsing_is_strict() {
        assert!(parse_mac("0e:2a:c0:a8:00:03:04").is_none());
        assert!(parse_mac("0e:2a:c0:a8:0:03").is_none());
        assert!(parse_mac("zz:2a:c0:a8:00:03").is_none());
    }
}
