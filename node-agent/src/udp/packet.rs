//! Inner IP packets as the udp backend sees them: just enough parsing to find
//! the destination, the transport header and its length, checked against the
//! buffer so a hostile or truncated packet is refused, never indexed past.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
const IPV6_HEADER: usize = 40;

/// Why an inner packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    Truncated,
    Version,
    Length,
    Transport,
}

/// The layout of one IP packet inside a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub v6: bool,
    /// IP header length (IPv4 with options, or the fixed IPv6 header).
    pub ip_len: usize,
    /// The packet's length according to its own header.
    pub total: usize,
    pub protocol: u8,
}

impl Layout {
    /// Parses the IP header at the start of `packet`, which must hold the
    /// whole packet (it may be followed by more bytes, which are not part of it).
    pub fn parse(packet: &[u8]) -> Result<Layout, Malformed> {
        let first = *packet.first().ok_or(Malformed::Truncated)?;
        match first >> 4 {
            4 => {
                let ip_len = usize::from(first & 0x0f) * 4;
                if ip_len < 20 || packet.len() < ip_len {
                    return Err(Malformed::Truncated);
                }
                let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
                if total < ip_len || total > packet.len() {
                    return Err(Malformed::Length);
                }
                Ok(Layout {
                    v6: false,
                    ip_len,
                    total,
                    protocol: packet[9],
                })
            }
            6 => {
                if packet.len() < IPV6_HEADER {
                    return Err(Malformed::Truncated);
                }
                let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
                let total = IPV6_HEADER + payload;
                if total > packet.len() {
                    return Err(Malformed::Length);
                }
                Ok(Layout {
                    v6: true,
                    ip_len: IPV6_HEADER,
                    total,
                    protocol: packet[6],
                })
            }
            _ => Err(Malformed::Version),
        }
    }

    /// The transport header's length (TCP data offset, or 8 for UDP).
    pub fn transport_len(&self, packet: &[u8]) -> Result<usize, Malformed> {
        let (len, min) = match self.protocol {
            TCP => {
                let offset = *packet.get(self.ip_len + 12).ok_or(Malformed::Truncated)?;
                (usize::from(offset >> 4) * 4, 20)
            }
            UDP => (8, 8),
            _ => return Err(Malformed::Transport),
        };
        if len < min || self.ip_len + len > self.total {
            return Err(Malformed::Transport);
        }
        Ok(len)
    }

    pub fn source(&self, packet: &[u8]) -> IpAddr {
        self.address(packet, 12, 8)
    }

    pub fn destination(&self, packet: &[u8]) -> IpAddr {
        self.address(packet, 16, 24)
    }

    fn address(&self, packet: &[u8], v4_at: usize, v6_at: usize) -> IpAddr {
        if self.v6 {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&packet[v6_at..v6_at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        } else {
            let mut octets = [0u8; 4];
            octets.copy_from_slice(&packet[v4_at..v4_at + 4]);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
    }

    /// The source and destination address bytes, for the pseudo-header.
    pub fn addresses<'a>(&self, packet: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        if self.v6 {
            (&packet[8..24], &packet[24..40])
        } else {
            (&packet[12..16], &packet[16..20])
        }
    }

    /// Writes the packet's length into its IP header (and the IPv4 checksum).
    pub fn set_total(&self, packet: &mut [u8], total: usize) {
        if self.v6 {
            let payload = (total - IPV6_HEADER) as u16;
            packet[4..6].copy_from_slice(&payload.to_be_bytes());
        } else {
            packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            refresh_ipv4_checksum(&mut packet[..self.ip_len]);
        }
    }
}

/// Whether `destination` is IPv6 link-local control traffic (multicast or
/// link-local unicast: router solicitations, MLD) that the kernel sends out
/// of any device with IPv6 on, a TUN included. It has no peer by nature; a
/// datapath drops it without counting it as misrouted.
pub fn is_link_local_control(destination: IpAddr) -> bool {
    match destination {
        IpAddr::V6(ip) => ip.is_multicast() || ip.is_unicast_link_local(),
        IpAddr::V4(_) => false,
    }
}

pub fn refresh_ipv4_checksum(header: &mut [u8]) {
    header[10..12].copy_from_slice(&[0, 0]);
    let check = super::checksum::checksum(header, 0);
    header[10..12].copy_from_slice(&check.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_control_is_told_apart() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(is_link_local_control(ip("ff02::2")), "all routers");
        assert!(is_link_local_control(ip("fe80::1")));
        assert!(!is_link_local_control(ip("fd00:10:244:2::5")), "a pod");
        assert!(
            !is_link_local_control(ip("224.0.0.1")),
            "IPv4 is routed as is"
        );
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(Layout::parse(&[]), Err(Malformed::Truncated));
        assert_eq!(Layout::parse(&[0x45; 10]), Err(Malformed::Truncated));
        assert_eq!(Layout::parse(&[0x15; 40]), Err(Malformed::Version));
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[3] = 40; // claims 40 bytes, has 20
        assert_eq!(Layout::parse(&v4), Err(Malformed::Length));
        v4[3] = 20;
        v4[9] = TCP;
        let layout = Layout::parse(&v4).expect("a bare header parses");
        assert_eq!(layout.transport_len(&v4), Err(Malformed::Truncated));
        // A TCP data offset below 5 words is no TCP header (it would put the
        // flags past the end of a short packet).
        let mut short = vec![0u8; 33];
        short[0] = 0x45;
        short[3] = 33;
        short[9] = TCP;
        short[32] = 2 << 4;
        let layout = Layout::parse(&short).expect("parses");
        assert_eq!(layout.transport_len(&short), Err(Malformed::Transport));
    }
}
