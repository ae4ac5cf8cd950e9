//! Strict CIDR and address parsing shared by the operator, the agent and the
//! schema tests (which use it to stand in for Kubernetes' CEL `cidr()` library).
//!
//! "Strict" means what the API server's `isCIDR` + `masked()` rules mean: a
//! well-formed prefix, of the expected family, with no host bits set.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::{Result, ValidationError};

/// IP family of a CIDR or address, as CEL's `family()` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn number(self) -> i64 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

/// Parses `a.b.c.d/len` or an IPv6 prefix, keeping host bits (like CEL `cidr()`).
pub fn parse_cidr(value: &str) -> Option<IpNet> {
    // Parsed by hand because ipnet's parser accepts leading zeros ("010.1.0.0/16"),
    // which Kubernetes' isCIDR refuses as ambiguous (octal or decimal?).
    let (addr, len) = value.split_once('/')?;
    let addr = parse_ip(addr)?;
    let canonical_len = len.len() == 1 || !len.starts_with('0');
    if len.is_empty() || len.len() > 3 || !canonical_len || !len.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    IpNet::new(addr, len.parse().ok()?).ok()
}

/// Parses an address (like CEL `ip()`); zone identifiers are refused as Kubernetes does.
pub fn parse_ip(value: &str) -> Option<IpAddr> {
    if value.contains('%') {
        return None;
    }
    value.parse::<IpAddr>().ok()
}

pub fn family_of(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

/// The canonical text of a prefix, host bits kept (what CEL compares `cidr()` values by).
pub fn canonical(net: &IpNet) -> String {
    net.to_string()
}

fn network_of(field: &str, value: &str, family: Family) -> Result<IpNet> {
    let example = match family {
        Family::V4 => "10.244.0.0/16",
        Family::V6 => "fd00:10:244::/56",
    };
    let net = parse_cidr(value).ok_or_else(|| {
        ValidationError::new(field, value, format!("not a CIDR; expected e.g. {example}"))
    })?;
    if family_of(&net) != family {
        return Err(ValidationError::new(
            field,
            value,
            format!("must be an IPv{} CIDR, e.g. {example}", family.number()),
        ));
    }
    if net.trunc() != net {
        return Err(ValidationError::new(
            field,
            value,
            format!("host bits are set; the network address is {}", net.trunc()),
        ));
    }
    Ok(net)
}

/// An IPv4 network in CIDR form with no host bits set, or an error naming `field`.
pub fn ipv4_network(field: &str, value: &str) -> Result<Ipv4Net> {
    match network_of(field, value, Family::V4)? {
        IpNet::V4(net) => Ok(net),
        IpNet::V6(_) => unreachable!("family checked by network_of"),
    }
}

/// An IPv6 network in CIDR form with no host bits set, or an error naming `field`.
pub fn ipv6_network(field: &str, value: &str) -> Result<Ipv6Net> {
    match network_of(field, value, Family::V6)? {
        IpNet::V6(net) => Ok(net),
        IpNet::V4(_) => unreachable!("family checked by network_of"),
    }
}

/// Checks that subnets of `node_prefix` can be cut from `pool`: at least as
/// long, no more than [`MAX_SUBNET_BITS`] longer, and no longer than `max_prefix`.
pub fn check_node_prefix(
    field: &str,
    node_prefix: u8,
    pool_prefix: u8,
    max_prefix: u8,
) -> Result<()> {
    if node_prefix > max_prefix {
        return Err(ValidationError::new(
            field,
            node_prefix,
            format!("must be at most {max_prefix} so each node has room for pods"),
        ));
    }
    if node_prefix < pool_prefix {
        return Err(ValidationError::new(
            field,
            node_prefix,
            format!("must be at least the pool's prefix length {pool_prefix}"),
        ));
    }
    if node_prefix - pool_prefix > MAX_SUBNET_BITS {
        return Err(ValidationError::new(
            field,
            node_prefix,
            format!(
                "cuts more than 2^{MAX_SUBNET_BITS} node subnets from a /{pool_prefix}; \
                 use at most /{}",
                pool_prefix + MAX_SUBNET_BITS
            ),
        ));
    }
    Ok(())
}

/// A pool is cut into at most 2^16 node subnets, the same bound kube-controller-manager
/// puts on `--node-cidr-mask-size`; it keeps the IPAM's memory and the CEL rule simple.
pub const MAX_SUBNET_BITS: u8 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_network_accepts_canonical_prefixes() {
        assert_eq!(
            ipv4_network("spec.cidr", "10.244.0.0/16").map(|n| n.to_string()),
            Ok("10.244.0.0/16".to_string())
        );
    }

    #[test]
    fn ipv4_network_names_the_field_on_each_kind_of_error() {
        for (value, reason) in [
            ("10.244.0.0", "not a CIDR"),
            ("10.244.0.0/33", "not a CIDR"),
            (
                "10.244.1.0/16",
                "host bits are set; the network address is 10.244.0.0/16",
            ),
            ("fd00::/64", "must be an IPv4 CIDR"),
            ("010.244.0.0/16", "not a CIDR"),
            ("", "not a CIDR"),
            ("10.244.0.0/016", "not a CIDR"),
            ("10.244.0.0/+16", "not a CIDR"),
        ] {
            let err = ipv4_network("spec.cidr", value).expect_err(value);
            assert_eq!(err.field, "spec.cidr");
            assert_eq!(err.value, value);
            assert!(err.reason.starts_with(reason), "{value}: {}", err.reason);
            assert!(err.to_string().starts_with("spec.cidr: invalid value"));
        }
    }

    #[test]
    fn ipv6_network_refuses_ipv4_and_host_bits() {
        assert!(ipv6_network("spec.ipv6Cidr", "fd00:10:244::/56").is_ok());
        assert!(ipv6_network("spec.ipv6Cidr", "10.0.0.0/8").is_err());
        assert!(ipv6_network("spec.ipv6Cidr", "fd00::1/64").is_err());
    }

    #[test]
    fn node_prefix_must_fit_the_pool() {
        assert!(check_node_prefix("f", 24, 16, 30).is_ok());
        assert!(check_node_prefix("f", 24, 8, 30).is_ok());
        assert!(check_node_prefix("f", 25, 8, 30).is_err());
        assert!(check_node_prefix("f", 15, 16, 30).is_err());
        assert!(check_node_prefix("f", 31, 24, 30).is_err());
    }

    #[test]
    fn ip_parsing_refuses_zones() {
        assert!(parse_ip("fe80::1%eth0").is_none());
        assert!(parse_ip("192.168.1.10").is_some());
    }
}
