//! Receive side: consecutive TCP segments of one flow, as they arrive in a
//! GRO'd UDP datagram, are stitched back into one super-packet and written to
//! the TUN in one system call with a `virtio_net_hdr` asking the kernel to
//! treat it as GSO (it is never re-segmented on the way to a local pod).
//! Anything that does not qualify is written as it came.

use super::checksum;
use super::packet::{Layout, TCP};
use super::vnet::{self, VnetHeader};

const TCP_PSH: u8 = 0x08;
/// Only ACK and PSH may be set on a segment that is merged.
const MERGEABLE_FLAGS: u8 = 0x10 | TCP_PSH;
const MAX_IP_PACKET: usize = 65535;

struct Flow {
    layout: Layout,
    headers: usize,
    mss: usize,
    count: usize,
    next_seq: u32,
    /// A short or PSH segment ends the super-packet.
    closed: bool,
}

/// Builds TUN frames (virtio header + packet) from inner packets.
pub struct Coalescer {
    /// With `IFF_VNET_HDR`: frames carry a header and TCP is merged.
    vnet: bool,
    frame: Vec<u8>,
    flow: Option<Flow>,
}

impl Coalescer {
    pub fn new(vnet: bool) -> Self {
        Self {
            vnet,
            frame: Vec::with_capacity(vnet::LEN + MAX_IP_PACKET),
            flow: None,
        }
    }

    /// Adds one validated inner packet (exactly `layout.total` bytes);
    /// calls `write` for every frame that is complete.
    pub fn push(&mut self, layout: Layout, packet: &[u8], write: &mut impl FnMut(&[u8])) {
        if !self.vnet {
            return write(packet);
        }
        if self.try_append(&layout, packet) {
            if self.flow.as_ref().is_some_and(|f| f.closed) {
                self.flush(write);
            }
            return;
        }
        self.flush(write);
        self.frame.clear();
        self.frame.extend_from_slice(&[0u8; vnet::LEN]);
        self.frame.extend_from_slice(packet);
        match mergeable(&layout, packet) {
            Some((headers, seq, psh)) => {
                let mss = packet.len() - headers;
                self.flow = Some(Flow {
                    layout,
                    headers,
                    mss,
                    count: 1,
                    next_seq: seq.wrapping_add(mss as u32),
                    closed: psh,
                });
                if psh {
                    self.flush(write);
                }
            }
            None => {
                self.flow = None;
                write(&self.frame);
                self.frame.clear();
            }
        }
    }

    fn try_append(&mut self, layout: &Layout, packet: &[u8]) -> bool {
        let Some(flow) = self.flow.as_mut() else {
            return false;
        };
        if flow.closed || layout.v6 != flow.layout.v6 || layout.ip_len != flow.layout.ip_len {
            return false;
        }
        let Some((headers, seq, psh)) = mergeable(layout, packet) else {
            return false;
        };
        let payload = packet.len() - headers;
        let first = &self.frame[vnet::LEN..vnet::LEN + flow.headers];
        if headers != flow.headers
            || seq != flow.next_seq
            || payload > flow.mss
            || self.frame.len() - vnet::LEN + payload > MAX_IP_PACKET
            || !same_flow(layout, first, &packet[..headers])
        {
            return false;
        }
        self.frame.extend_from_slice(&packet[headers..]);
        flow.count += 1;
        flow.next_seq = seq.wrapping_add(payload as u32);
        if psh {
            let t = vnet::LEN + flow.layout.ip_len;
            self.frame[t + 13] |= TCP_PSH;
        }
        flow.closed = psh || payload < flow.mss;
        true
    }

    /// Writes the frame being built, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        let Some(flow) = self.flow.take() else {
            return;
        };
        let frame = &mut self.frame;
        let packet_len = frame.len() - vnet::LEN;
        let header = if flow.count == 1 {
            // Unchanged since it arrived: its checksum is complete.
            VnetHeader::default()
        } else {
            let layout = flow.layout;
            let packet = &mut frame[vnet::LEN..];
            layout.set_total(packet, packet_len);
            let transport_len = packet_len - layout.ip_len;
            let (src, dst) = layout.addresses(packet);
            let partial = checksum::fold(checksum::pseudo_header(src, dst, TCP, transport_len));
            let at = layout.ip_len + 16;
            packet[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            VnetHeader {
                flags: vnet::NEEDS_CSUM,
                gso_type: if layout.v6 {
                    vnet::GSO_TCPV6
                } else {
                    vnet::GSO_TCPV4
                },
                hdr_len: flow.headers as u16,
                gso_size: flow.mss as u16,
                csum_start: layout.ip_len as u16,
                csum_offset: 16,
            }
        };
        header.write(&mut frame[..vnet::LEN]);
        write(frame);
        frame.clear();
    }
}

/// (header length, sequence number, PSH) of a TCP segment with payload that
/// may be merged: no fragments, no flags beyond ACK/PSH.
fn mergeable(layout: &Layout, packet: &[u8]) -> Option<(usize, u32, bool)> {
    if layout.protocol != TCP {
        return None;
    }
    if !layout.v6 && (packet[6] & 0x3f != 0 || packet[7] != 0) {
        return None; // MF or a fragment offset
    }
    let transport_len = layout.transport_len(packet).ok()?;
    let headers = layout.ip_len + transport_len;
    let t = layout.ip_len;
    let flags = packet[t + 13];
    if headers >= packet.len() || flags & !MERGEABLE_FLAGS != 0 || flags & 0x10 == 0 {
        return None;
    }
    let seq = u32::from_be_bytes([packet[t + 4], packet[t + 5], packet[t + 6], packet[t + 7]]);
    Some((headers, seq, flags & TCP_PSH != 0))
}

/// Whether two segments' headers agree on everything but length, IP ID,
/// checksums, sequence number and PSH.
fn same_flow(layout: &Layout, a: &[u8], b: &[u8]) -> bool {
    let t = layout.ip_len;
    let ip_same = if layout.v6 {
        a[..4] == b[..4] && a[6..40] == b[6..40]
    } else {
        a[..2] == b[..2] && a[6..10] == b[6..10] && a[12..t] == b[12..t]
    };
    ip_same
        && a[t..t + 4] == b[t..t + 4]
        && a[t + 8..t + 13] == b[t + 8..t + 13]
        && (a[t + 13] | TCP_PSH) == (b[t + 13] | TCP_PSH)
        && a[t + 14..t + 16] == b[t + 14..t + 16]
        && a[t + 18..] == b[t + 18..]
}
