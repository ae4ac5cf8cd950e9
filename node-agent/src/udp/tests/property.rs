//! Fuzzing of everything in the datapath that parses bytes from the TUN or
//! the network: arbitrary input never panics, and what is cut adds up.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary datagrams from a known peer never panic the receiver.
    #[test]
    fn the_receiver_survives_any_datagram(
        data in proptest::collection::vec(any::<u8>(), 0..4000),
        segment in 1usize..2000,
        v4_header in any::<bool>(),
    ) {
        let mut data = data;
        if v4_header && data.len() >= 20 {
            // Make more inputs get past the first checks.
            data[0] = 0x45;
            data[16..20].copy_from_slice(&DST);
        }
        let (counts, _) = receive(Ipv4Addr::new(192, 168, 0, 2), &data, segment);
        prop_assert!(
            counts.packets + counts.malformed + counts.not_local + counts.spoofed_source >= 1
                || data.is_empty()
        );
    }

    /// Arbitrary TCP-looking packets (valid IPv4 header, any TCP bytes, one
    /// after another in a train) never panic the receiver and its merging.
    #[test]
    fn the_receiver_survives_any_tcp_segments(
        segments in (0usize..200).prop_flat_map(|len| {
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), len), 1..8)
        }),
    ) {
        let train: Vec<u8> = segments.iter().flat_map(|body| ipv4(TCP, body)).collect();
        let size = train.len() / segments.len();
        let (counts, _) = receive(Ipv4Addr::new(192, 168, 0, 2), &train, size);
        prop_assert_eq!(counts.packets + counts.malformed, segments.len() as u64);
    }

    /// TCP/UDP super-packets with arbitrary transport bytes and GSO fields
    /// never panic the sender, and what it cuts adds up.
    #[test]
    fn the_sender_survives_any_super_packet(
        body in proptest::collection::vec(any::<u8>(), 0..6000),
        gso_size in 0u16..2000,
        udp in any::<bool>(),
        hdr_len in any::<u16>(),
    ) {
        let (protocol, gso_type) = if udp { (UDP, vnet::GSO_UDP_L4) } else { (TCP, vnet::GSO_TCPV4) };
        let packet = ipv4(protocol, &body);
        let header = VnetHeader {
            flags: vnet::NEEDS_CSUM,
            gso_type,
            hdr_len,
            gso_size,
            csum_start: 20,
            csum_offset: if udp { 6 } else { 16 },
        };
        let mut out = Vec::new();
        if let Ok(segments) = segment_into(&header, &packet, &mut out, None) {
            prop_assert_eq!(segments.total, out.len());
        }
    }

    /// Arbitrary frames from the TUN never panic the sender.
    #[test]
    fn the_sender_survives_any_frame(
        header in proptest::collection::vec(any::<u8>(), vnet::LEN),
        packet in proptest::collection::vec(any::<u8>(), 0..3000),
        tcp_like in any::<bool>(),
    ) {
        let mut packet = packet;
        if tcp_like && packet.len() >= 40 {
            packet[0] = 0x45;
            packet[9] = TCP;
            let len = packet.len() as u16;
            packet[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let header = VnetHeader::parse(&header).expect("10 bytes");
        let mut out = Vec::new();
        if let Ok(segments) = segment_into(&header, &packet, &mut out, None) {
            prop_assert_eq!(segments.total, out.len());
            prop_assert!(segments.count >= 1);
        } else {
            prop_assert!(out.is_empty(), "nothing appended on error");
        }
    }
}
