//! The datapath's pure parts against hand-built packets; fuzzing of
//! everything that parses bytes from the TUN or the network is in
//! [`property`].

mod property;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::checksum;
use super::coalesce::Coalescer;
use super::datapath::{ReceiveCounts, receive_train};
use super::packet::{Layout, TCP, UDP};
use super::peers::PeerTable;
use super::segment::segment_into;
use super::socket::Incoming;
use super::vnet::{self, VnetHeader};

const SRC: [u8; 4] = [10, 244, 1, 5];
const DST: [u8; 4] = [10, 244, 2, 7];

fn ipv4(protocol: u8, transport: &[u8]) -> Vec<u8> {
    let total = 20 + transport.len();
    let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, protocol, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&SRC);
    p.extend_from_slice(&DST);
    p.extend_from_slice(transport);
    super::packet::refresh_ipv4_checksum(&mut p[..20]);
    p
}

fn ipv6(protocol: u8, transport: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(transport.len() as u16).to_be_bytes());
    p.extend_from_slice(&[protocol, 64]);
    p.extend_from_slice(&[0xfd, 0, 0, 0x10, 0x2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5]);
    p.extend_from_slice(&[0xfd, 0, 0, 0x10, 0x2, 0x44, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7]);
    p.extend_from_slice(transport);
    p
}

/// A TCP header with timestamp options (32 bytes), flags ACK|PSH, and payload.
fn tcp(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0x9c, 0x40, 0x14, 0x51];
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&77u32.to_be_bytes());
    t.extend_from_slice(&[0x80, 0x18, 0x01, 0xf5, 0, 0, 0, 0]);
    t.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 3]);
    t.extend_from_slice(payload);
    t
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

/// Whether a TCP/UDP packet's checksum verifies.
fn transport_checksum_ok(packet: &[u8]) -> bool {
    let layout = Layout::parse(packet).expect("valid packet");
    let (src, dst) = layout.addresses(packet);
    let len = layout.total - layout.ip_len;
    let pseudo = checksum::pseudo_header(src, dst, layout.protocol, len);
    checksum::fold(checksum::sum(&packet[layout.ip_len..layout.total], pseudo)) == 0xffff
}

fn gso_header(gso_type: u8, headers: usize, mss: usize, ip_len: usize, offset: u16) -> VnetHeader {
    VnetHeader {
        flags: vnet::NEEDS_CSUM,
        gso_type,
        hdr_len: headers as u16,
        gso_size: mss as u16,
        csum_start: ip_len as u16,
        csum_offset: offset,
    }
}

fn cut(packet: &[u8], header: &VnetHeader) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let segments = segment_into(header, packet, &mut out, None).expect("segments");
    assert_eq!(segments.total, out.len());
    let mut packets: Vec<Vec<u8>> = out.chunks(segments.size).map(<[u8]>::to_vec).collect();
    assert_eq!(packets.len(), segments.count);
    packets.retain(|p| !p.is_empty());
    packets
}

fn merge(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut coalescer = Coalescer::new(true);
    let mut write = |f: &[u8]| frames.push(f.to_vec());
    for p in packets {
        coalescer.push(Layout::parse(p).expect("valid"), p, &mut write);
    }
    coalescer.flush(&mut write);
    frames
}

fn round_trip(packet: Vec<u8>, gso_type: u8, ip_len: usize) {
    let data = payload(10_000);
    let header = gso_header(gso_type, ip_len + 32, 1448, ip_len, 16);
    let segments = cut(&packet, &header);
    assert_eq!(segments.len(), 7);
    for (i, s) in segments.iter().enumerate() {
        assert!(transport_checksum_ok(s), "segment {i} checksum");
        let layout = Layout::parse(s).expect("segment parses");
        assert_eq!(layout.total, s.len());
        let t = ip_len;
        let seq = u32::from_be_bytes([s[t + 4], s[t + 5], s[t + 6], s[t + 7]]);
        assert_eq!(seq, 1000 + (i * 1448) as u32);
        let psh = s[t + 13] & 0x08 != 0;
        assert_eq!(psh, i == 6, "PSH only on the last segment");
        if ip_len == 20 {
            assert_eq!(checksum::checksum(&s[..20], 0), 0, "IPv4 header checksum");
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
        }
    }
    let frames = merge(&segments);
    assert_eq!(frames.len(), 1, "one super-packet back");
    let frame = &frames[0];
    let header = VnetHeader::parse(frame).expect("header");
    assert_eq!(header.gso_type, gso_type);
    assert_eq!(usize::from(header.gso_size), 1448);
    assert_eq!(usize::from(header.hdr_len), ip_len + 32);
    let packet = &frame[vnet::LEN..];
    assert_eq!(Layout::parse(packet).expect("parses").total, packet.len());
    assert_eq!(&packet[ip_len + 32..], &data[..]);
}

#[test]
fn a_tcp_super_packet_is_cut_and_merged_back_ipv4() {
    round_trip(ipv4(TCP, &tcp(1000, &payload(10_000))), vnet::GSO_TCPV4, 20);
}

#[test]
fn a_tcp_super_packet_is_cut_and_merged_back_ipv6() {
    round_trip(ipv6(TCP, &tcp(1000, &payload(10_000))), vnet::GSO_TCPV6, 40);
}

#[test]
fn a_udp_super_packet_is_cut_with_valid_checksums() {
    let mut udp = vec![0x30, 0x39, 0x20, 0x8d, 0, 0, 0, 0];
    udp.extend_from_slice(&payload(5000));
    let packet = ipv4(UDP, &udp);
    let segments = cut(&packet, &gso_header(vnet::GSO_UDP_L4, 28, 1400, 20, 6));
    assert_eq!(segments.len(), 4);
    assert!(segments.iter().all(|s| transport_checksum_ok(s)));
    // UDP is not merged on the way in: each datagram is written as it came.
    assert_eq!(merge(&segments).len(), 4);
}

#[test]
fn a_checksum_left_to_us_is_completed() {
    let mut packet = ipv4(TCP, &tcp(5, &payload(300)));
    let len = packet.len() - 20;
    let partial = checksum::fold(checksum::pseudo_header(&SRC, &DST, TCP, len));
    packet[36..38].copy_from_slice(&partial.to_be_bytes());
    let header = VnetHeader {
        flags: vnet::NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..Default::default()
    };
    let out = cut(&packet, &header);
    assert!(transport_checksum_ok(&out[0]));
}

#[test]
fn segments_of_different_flows_are_not_merged() {
    let a = ipv4(TCP, &tcp(0, &payload(1000)));
    let mut b = ipv4(TCP, &tcp(1000, &payload(1000)));
    b[23] ^= 1; // another destination port
    assert_eq!(merge(&[a.clone(), b]).len(), 2);
    let gap = ipv4(TCP, &tcp(5000, &payload(1000)));
    assert_eq!(
        merge(&[a, gap]).len(),
        2,
        "a sequence gap starts a new packet"
    );
}

fn table() -> PeerTable {
    let peers = BTreeMap::from([
        (
            "10.244.1.0/24".parse().expect("cidr"),
            Ipv4Addr::new(192, 168, 0, 2),
        ),
        (
            "10.244.3.0/24".parse().expect("cidr"),
            Ipv4Addr::new(192, 168, 0, 3),
        ),
    ]);
    PeerTable::new(
        &peers,
        &Default::default(),
        &["10.244.2.0/24".parse().expect("cidr")],
    )
}

fn receive(peer: Ipv4Addr, data: &[u8], segment: usize) -> (ReceiveCounts, usize) {
    let mut counts = ReceiveCounts::default();
    let mut frames = 0;
    let mut coalescer = Coalescer::new(true);
    let message = Incoming {
        peer,
        len: data.len(),
        segment,
    };
    let mut write = |_: &[u8]| frames += 1;
    receive_train(
        &table(),
        &message,
        data,
        None,
        &mut coalescer,
        &mut counts,
        &mut write,
    );
    coalescer.flush(&mut write);
    (counts, frames)
}

#[test]
fn the_receiver_drops_strangers_foreign_destinations_and_garbage() {
    let good = ipv4(TCP, &tcp(0, &payload(100)));
    let peer = Ipv4Addr::new(192, 168, 0, 2);
    let (counts, frames) = receive(peer, &good, good.len());
    assert_eq!((counts.packets, frames), (1, 1));
    let (counts, frames) = receive(Ipv4Addr::new(192, 168, 0, 9), &good, good.len());
    assert_eq!((counts.unknown_peer, frames), (1, 0));
    let mut foreign = good.clone();
    foreign[16..20].copy_from_slice(&[10, 244, 3, 1]);
    super::packet::refresh_ipv4_checksum(&mut foreign[..20]);
    let (counts, frames) = receive(peer, &foreign, foreign.len());
    assert_eq!((counts.not_local, frames), (1, 0));
    let (counts, frames) = receive(peer, &good[..good.len() - 3], good.len());
    assert_eq!((counts.malformed, frames), (1, 0));
}

/// A known peer's datagram carrying an inner source from another node's
/// subnet (or from outside the cluster) is dropped as spoofed; the peer's
/// genuine packets still pass, before and after it.
#[test]
fn a_peer_cannot_send_from_another_nodes_subnet() {
    let peer = Ipv4Addr::new(192, 168, 0, 2);
    let good = ipv4(TCP, &tcp(0, &payload(100)));
    for forged_source in [[10, 244, 3, 9], [10, 244, 2, 9], [192, 168, 0, 2]] {
        let mut forged = good.clone();
        forged[12..16].copy_from_slice(&forged_source);
        super::packet::refresh_ipv4_checksum(&mut forged[..20]);
        let mut train = good.clone();
        train.extend_from_slice(&forged);
        train.extend_from_slice(&good);
        let (counts, _) = receive(peer, &train, good.len());
        assert_eq!(
            (counts.packets, counts.spoofed_source),
            (2, 1),
            "inner source {forged_source:?}"
        );
    }
}

#[test]
fn a_peer_leaving_udp_keeps_its_entry_until_the_routes_have_moved() {
    let spec = |peers: &[(&str, [u8; 4])]| super::UdpSpec {
        device: "tartan0".into(),
        port: 8285,
        mtu: 1472,
        addresses: Default::default(),
        local: vec!["10.244.1.0/24".parse().expect("cidr")],
        peers: peers
            .iter()
            .map(|(net, ip)| (net.parse().expect("cidr"), Ipv4Addr::from(*ip)))
            .collect(),
        senders: peers
            .iter()
            .map(|(net, ip)| (net.parse().expect("cidr"), Ipv4Addr::from(*ip)))
            .collect(),
    };
    let old = spec(&[
        ("10.244.2.0/24", [192, 168, 0, 2]),
        ("10.244.3.0/24", [192, 168, 0, 3]),
    ]);
    let new = spec(&[("10.244.3.0/24", [192, 168, 0, 3])]);
    let wide = super::widened(&old, &new);
    let table = super::PeerTable::new(&wide.peers, &wide.senders, &wide.local);
    let to = |ip: &str| table.lookup(ip.parse().expect("ip"));
    assert_eq!(
        to("10.244.2.9"),
        Some(Ipv4Addr::new(192, 168, 0, 2)),
        "still served"
    );
    assert_eq!(to("10.244.3.9"), Some(Ipv4Addr::new(192, 168, 0, 3)));
    assert!(table.is_peer(Ipv4Addr::new(192, 168, 0, 2)));
    let wider = super::widened(&wide, &spec(&[]));
    assert_eq!(
        wider.peers, wide.peers,
        "what is installed only grows until narrowed"
    );
}

#[test]
fn keyed_datagrams_carry_a_tag_that_the_receiver_checks_and_strips() {
    let key =
        super::auth::DatagramKey::from_secret(b"a shared secret of the cluster").expect("key");
    let packet = ipv4(TCP, &tcp(1000, &payload(4000)));
    let header = gso_header(vnet::GSO_TCPV4, 52, 1448, 20, 16);
    let mut out = Vec::new();
    let segments = segment_into(&header, &packet, &mut out, Some(&key)).expect("segments");
    assert_eq!(
        (segments.count, segments.size),
        (3, 52 + 1448 + super::auth::TAG_LEN)
    );
    assert_eq!(segments.total, out.len());
    for datagram in out.chunks(segments.size) {
        let inner = key.verify(datagram).expect("tag verifies");
        assert!(transport_checksum_ok(inner));
    }
    let receive_keyed = |data: &[u8], key: &super::auth::DatagramKey| {
        let mut counts = ReceiveCounts::default();
        let mut frames = Vec::new();
        let mut coalescer = Coalescer::new(true);
        let message = Incoming {
            peer: Ipv4Addr::new(192, 168, 0, 2),
            len: data.len(),
            segment: segments.size,
        };
        let mut write = |f: &[u8]| frames.push(f.to_vec());
        receive_train(
            &table(),
            &message,
            data,
            Some(key),
            &mut coalescer,
            &mut counts,
            &mut write,
        );
        coalescer.flush(&mut write);
        (counts, frames)
    };
    let (counts, frames) = receive_keyed(&out, &key);
    assert_eq!(
        (counts.packets, counts.bad_tag, frames.len()),
        (3, 0, 1),
        "merged back"
    );
    assert_eq!(&frames[0][vnet::LEN + 52..], &payload(4000)[..]);
    let other =
        super::auth::DatagramKey::from_secret(b"not the cluster's secret at all").expect("key");
    let (counts, frames) = receive_keyed(&out, &other);
    assert_eq!(
        (counts.bad_tag, frames.len()),
        (3, 0),
        "a wrong key gets nothing through"
    );
    let mut forged = out.clone();
    forged[60] ^= 0x40;
    let (counts, _) = receive_keyed(&forged, &key);
    assert_eq!(
        (counts.packets, counts.bad_tag),
        (2, 1),
        "a changed byte fails its datagram only"
    );
}
