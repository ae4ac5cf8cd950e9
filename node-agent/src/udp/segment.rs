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
    let gso = header.gso_type & !vnet::GSO_ECN;
    let protocol = match gso {
        vnet::GSO_NONE => return single(header, packet, out, key),
        vnet::GSO_TCPV4 | vnet::GSO_TCPV6 => TCP,
        vnet::GSO_UDP_L4 => UDP,
        _ => return Err(Malformed::Transport),
    };
    let family_matches = match gso {
        vnet::GSO_TCPV4 => !layout.v6,
        vnet::GSO_TCPV6 => layout.v6,
        _ => true,
    };
    if layout.protocol != protocol || !family_matches {
        return Err(Malformed::Transport);
    }
    let transport_len = layout.transport_len(packet)?;
    let headers = layout.ip_len + transport_len;
    let mss = usize::from(header.gso_size);
    let payload = &packet[headers..];
    if mss == 0 || payload.len() <= mss {
        return single(header, packet, out, key);
    }
    let count = payload.len().div_ceil(mss);
    out.reserve(payload.len() + count * headers);
    let (src, dst) = layout.addresses(packet);
    let pseudo = checksum::pseudo_header(src, dst, protocol, 0);
    let v4_id = (!layout.v6).then(|| u16::from_be_bytes([packet[4], packet[5]]));
    let seq = u32::from_be_bytes([
        packet[layout.ip_len + 4],
        packet[layout.ip_len + 5],
        packet[layout.ip_len + 6],
        packet[layout.ip_len + 7],
    ]);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let start = out.len();
        out.extend_from_slice(&packet[..headers]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        if let Some(id) = v4_id {
            seg[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
        }
        layout.set_total(seg, headers + chunk.len());
        let t = layout.ip_len;
        let transport_total = transport_len + chunk.len();
        let check_at = if protocol == TCP {
            let s = seq.wrapping_add((i * mss) as u32);
            seg[t + 4..t + 8].copy_from_slice(&s.to_be_bytes());
            if i + 1 < count {
                seg[t + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                seg[t + 13] &= !TCP_CWR;
            }
            t + 16
        } else {
            seg[t + 4..t + 6].copy_from_slice(&(transport_total as u16).to_be_bytes());
            t + 6
        };
        seg[check_at..check_at + 2].copy_from_slice(&[0, 0]);
        let mut check = checksum::checksum(&seg[t..], pseudo + transport_total as u64);
        if protocol == UDP && check == 0 {
            check = 0xffff;
        }
        seg[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        if let Some(key) = key {
            let tag = key.tag(&out[start..]);
            out.extend_from_slice(&tag);
        }
    }
    let tag = if key.is_some() { TAG_LEN } else { 0 };
    Ok(Segments {
        size: headers + mss + tag,
        count,
        total: packet.len() + (count - 1) * headers + count * tag,
    })
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
