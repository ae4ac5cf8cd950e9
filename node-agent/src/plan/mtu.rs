//! MTUs: what each backend adds to a packet, the largest packet its device
//! carries, and the pods' MTU (the one requested, clamped to what the target
//! backend can carry and reported, never retried). Pure.

use tartan_crds::BackendType;

use super::{LocalFacts, LocalProblem};

/// VXLAN overhead over an IPv4 underlay: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD_V4: u32 = 50;
/// VXLAN overhead over an IPv6 underlay.
pub const VXLAN_OVERHEAD_V6: u32 = 70;
/// udp backend overhead: outer IPv4 20 + UDP 8.
pub const UDP_OVERHEAD_V4: u32 = 28;
/// wireguard overhead: outer IPv4 20 + UDP 8 + WireGuard's data header 16 and tag 16.
pub const WIREGUARD_OVERHEAD_V4: u32 = 60;

/// Bytes `backend` adds to every packet on this node's underlay.
pub fn overhead(backend: BackendType, facts: &LocalFacts) -> u32 {
    match backend {
        BackendType::Vxlan => VXLAN_OVERHEAD_V4,
        // The authentication tag, when there is one, rides in the same datagram.
        BackendType::Udp => UDP_OVERHEAD_V4 + facts.udp_tag_len,
        BackendType::Wireguard => WIREGUARD_OVERHEAD_V4,
        BackendType::HostGw | BackendType::Bgp => 0,
    }
}

/// The largest inner packet `backend` carries: the MTU of its device.
pub fn device_mtu(backend: BackendType, facts: &LocalFacts) -> u32 {
    facts.underlay_mtu.saturating_sub(overhead(backend, facts))
}

/// The pods' MTU for `target`: the requested one if the underlay carries it,
/// else the ceiling and the problem that says so; the ceiling when none is set.
pub fn pod_mtu(
    requested: Option<u32>,
    target: BackendType,
    facts: &LocalFacts,
) -> (u32, Option<LocalProblem>) {
    let ceiling = device_mtu(target, facts);
    match requested {
        Some(requested) if requested > ceiling => (
            ceiling,
            Some(LocalProblem::MtuClamped {
                requested,
                clamped: ceiling,
            }),
        ),
        Some(requested) => (requested, None),
        None => (ceiling, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(underlay_mtu: u32, udp_tag_len: u32) -> LocalFacts {
        LocalFacts {
            underlay_mtu,
            udp_tag_len,
            ..Default::default()
        }
    }

    #[test]
    fn each_backend_takes_its_headers_off_the_underlay_mtu() {
        let f = facts(9000, 0);
        let mtus = BackendType::ALL.map(|b| (b, device_mtu(b, &f)));
        assert_eq!(
            mtus,
            [
                (BackendType::Vxlan, 8950),
                (BackendType::HostGw, 9000),
                (BackendType::Udp, 8972),
                (BackendType::Bgp, 9000),
                (BackendType::Wireguard, 8940),
            ]
        );
    }

    #[test]
    fn an_authentication_tag_shrinks_only_the_udp_mtu() {
        let f = facts(1500, 16);
        assert_eq!(device_mtu(BackendType::Udp, &f), 1456);
        assert_eq!(device_mtu(BackendType::Vxlan, &f), 1450);
        assert_eq!(pod_mtu(None, BackendType::Udp, &f), (1456, None));
    }

    #[test]
    fn a_requested_mtu_is_kept_when_it_fits_and_clamped_when_not() {
        let f = facts(1500, 0);
        assert_eq!(pod_mtu(Some(1400), BackendType::Vxlan, &f), (1400, None));
        assert_eq!(pod_mtu(Some(1450), BackendType::Vxlan, &f), (1450, None));
        assert_eq!(
            pod_mtu(Some(1451), BackendType::Vxlan, &f),
            (
                1450,
                Some(LocalProblem::MtuClamped {
                    requested: 1451,
                    clamped: 1450
                })
            )
        );
        assert_eq!(pod_mtu(Some(1500), BackendType::HostGw, &f), (1500, None));
    }

    #[test]
    fn an_underlay_smaller_than_the_overhead_gives_zero_not_a_wrap() {
        assert_eq!(device_mtu(BackendType::Vxlan, &facts(40, 0)), 0);
    }
}
