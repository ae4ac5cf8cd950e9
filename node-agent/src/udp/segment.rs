//! Send side: one packet read from the TUN (possibly a TCP or UDP
//! super-packet the kernel did not segment, thanks to TSO/USO on the device)
//! becomes equally sized, fully checksummed inner packets laid end to end,
//! ready to leave in one `sendmsg` with UDP GSO.

use super::auth::{DatagramKey, TAG_LEN};
use super::checksum;
use super::packet::{Layout, Malformed, TCP, UDP};
use super::vnet::{self, VnetHeader};

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// `count` packets appended to the output, each `size` bytes but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub size: usize,
    pub count: usize,
    pub total: usize,
}

/// Appends the datagrams `packet` (described by `header`) stands for to
/// `out`: each an inner packet, followed by its tag when `key` is set.
/// On error nothing is appended.
pub fn segment_into(
    header: &VnetHeader,
    packet: &[u8],
    out: &mut Vec<u8>,
    key: Option<&DatagramKey>,
) -> Result<Segments, Malformed> {
    let layout = Layout::parse(packet)?;
    let packet = &packet[..layout.total];
    let Some(protocol) = gso_protocol(header, &layout)? else {
        return single(header, packet, out, key);
    };
    let transport_len = layout.transport_len(packet)?;
    let headers = layout.ip_len + transport_len;
    let mss = usize::from(header.gso_size);
    let payload = &packet[headers..];
    if mss == 0 || payload.len() <= mss {
        return single(header, packet, out, key);
    }
    let count = payload.len().div_ceil(mss);
    out.reserve(payload.len() + count * headers);
    let cut = Cut::new(layout, protocol, packet, transport_len, mss, count);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        cut.append(i, chunk, out, key);
    }
    let tag = if key.is_some() { TAG_LEN } else { 0 };
    Ok(Segments {
        size: headers + mss + tag,
        count,
        total: packet.len() + (count - 1) * headers + count * tag,
    })
}

/// The transport protocol `header` asks to segment, or `None` when the
/// packet leaves whole; an error when the packet is not what `header` says.
fn gso_protocol(header: &VnetHeader, layout: &Layout) -> Result<Option<u8>, Malformed> {
    let (protocol, family_matches) = match header.gso_type & !vnet::GSO_ECN {
        vnet::GSO_NONE => return Ok(None),
        vnet::GSO_TCPV4 => (TCP, !layout.v6),
        vnet::GSO_TCPV6 => (TCP, layout.v6),
        vnet::GSO_UDP_L4 => (UDP, true),
        _ => return Err(Malformed::Transport),
    };
    if layout.protocol != protocol || !family_matches {
        return Err(Malformed::Transport);
    }
    Ok(Some(protocol))
}

/// How one super-packet is cut: what every segment starts from, read once.
struct Cut<'a> {
    layout: Layout,
    protocol: u8,
    /// The super-packet's IP and transport headers, copied before each chunk.
    headers: &'a [u8],
    transport_len: usize,
    mss: usize,
    count: usize,
    /// The pseudo-header sum without the length, which differs per segment.
    pseudo: u64,
    /// IPv4 only: each segment takes the next identification.
    v4_id: Option<u16>,
    /// IPv4 only: the header's sum without its length, identification and
    /// checksum, so each segment's header checksum is two additions, not a
    /// read of the header just written.
    v4_sum: u64,
    /// TCP: the first segment's sequence number (UDP: unused).
    seq: u32,
}

impl<'a> Cut<'a> {
    fn new(
        layout: Layout,
        protocol: u8,
        packet: &'a [u8],
        transport_len: usize,
        mss: usize,
        count: usize,
    ) -> Self {
        let (src, dst) = layout.addresses(packet);
        let t = layout.ip_len;
        Cut {
            layout,
            protocol,
            headers: &packet[..t + transport_len],
            transport_len,
            mss,
            count,
            pseudo: checksum::pseudo_header(src, dst, protocol, 0),
            v4_id: (!layout.v6).then(|| u16::from_be_bytes([packet[4], packet[5]])),
            v4_sum: if layout.v6 {
                0
            } else {
                ipv4_sum_without_varying(&packet[..t])
            },
            seq: u32::from_be_bytes([packet[t + 4], packet[t + 5], packet[t + 6], packet[t + 7]]),
        }
    }

    /// Appends segment `i` of the train, the headers then `chunk`, with its
    /// headers and checksum rewritten for its place, then its tag.
    fn append(&self, i: usize, chunk: &[u8], out: &mut Vec<u8>, key: Option<&DatagramKey>) {
        let start = out.len();
        out.extend_from_slice(self.headers);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        let total = self.headers.len() + chunk.len();
        match self.v4_id {
            Some(id) => {
                let id = id.wrapping_add(i as u16);
                seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                seg[4..6].copy_from_slice(&id.to_be_bytes());
                let check = !checksum::fold(self.v4_sum + total as u64 + u64::from(id));
                seg[10..12].copy_from_slice(&check.to_be_bytes());
            }
            None => self.layout.set_total(seg, total),
        }
        let transport_total = self.transport_len + chunk.len();
        let check_at = self.set_transport(seg, i, transport_total);
        self.set_checksum(seg, check_at, transport_total);
        if let Some(key) = key {
            let tag = key.tag(&out[start..]);
            out.extend_from_slice(&tag);
        }
    }

    /// Rewrites the transport fields that differ per segment; returns where
    /// the transport checksum goes.
    fn set_transport(&self, seg: &mut [u8], i: usize, transport_total: usize) -> usize {
        let t = self.layout.ip_len;
        if self.protocol == TCP {
            let s = self.seq.wrapping_add((i * self.mss) as u32);
            seg[t + 4..t + 8].copy_from_slice(&s.to_be_bytes());
            // As the kernel's TSO does: FIN and PSH stay on the last segment, CWR on the first.
            if i + 1 < self.count {
                seg[t + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[t + 13] &= !TCP_CWR;
            }
            t + 16
        } else {
            seg[t + 4..t + 6].copy_from_slice(&(transport_total as u16).to_be_bytes());
            t + 6
        }
    }

    fn set_checksum(&self, seg: &mut [u8], check_at: usize, transport_total: usize) {
        seg[check_at..check_at + 2].copy_from_slice(&[0, 0]);
        let t = self.layout.ip_len;
        let mut check = checksum::checksum(&seg[t..], self.pseudo + transport_total as u64);
        if self.protocol == UDP && check == 0 {
            // A UDP checksum of 0 means "none"; the same sum is sent as all ones.
            check = 0xffff;
        }
        seg[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
    }
}

/// The sum of an IPv4 header with its total length, identification and
/// checksum taken as zero (in one's complement, adding `!x` takes `x` away).
fn ipv4_sum_without_varying(header: &[u8]) -> u64 {
    let minus = |i: usize| u64::from(!u16::from_be_bytes([header[i], header[i + 1]]));
    checksum::sum(header, 0) + minus(2) + minus(4) + minus(10)
}

/// One packet, its checksum completed if the kernel left that to us.
fn single(
    header: &VnetHeader,
    packet: &[u8],
    out: &mut Vec<u8>,
    key: Option<&DatagramKey>,
) -> Result<Segments, Malformed> {
    let start = usize::from(header.csum_start);
    let at = start + usize::from(header.csum_offset);
    let needs = header.flags & vnet::NEEDS_CSUM != 0;
    if needs && (start >= packet.len() || at + 2 > packet.len()) {
        return Err(Malformed::Length);
    }
    let begin = out.len();
    out.extend_from_slice(packet);
    if needs {
        let seg = &mut out[begin..];
        let mut check = checksum::checksum(&seg[start..], 0);
        if header.csum_offset == 6 && check == 0 {
            // A UDP checksum of 0 means "none"; the same sum is sent as all ones.
            check = 0xffff;
        }
        seg[at..at + 2].copy_from_slice(&check.to_be_bytes());
    }
    let mut size = packet.len();
    if let Some(key) = key {
        let tag = key.tag(&out[begin..]);
        out.extend_from_slice(&tag);
        size += TAG_LEN;
    }
    Ok(Segments {
        size,
        count: 1,
        total: size,
    })
}
