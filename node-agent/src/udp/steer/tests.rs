use std::net::UdpSocket as StdSocket;
use std::time::{Duration, Instant};

use super::*;

fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, ports: (u16, u16), fragment: u16) -> Vec<u8> {
    let mut packet = vec![0x45, 0, 0, 40, 0, 0];
    packet.extend(fragment.to_be_bytes());
    packet.extend([64, protocol, 0, 0]);
    packet.extend(src);
    packet.extend(dst);
    packet.extend(ports.0.to_be_bytes());
    packet.extend(ports.1.to_be_bytes());
    packet.extend([0x5a; 16]);
    packet
}

fn ipv6(src_last: u8, dst_last: u8, protocol: u8, ports: (u16, u16)) -> Vec<u8> {
    let mut packet = vec![0x60, 0, 0, 0, 0, 20, protocol, 64];
    for last in [src_last, dst_last] {
        packet.extend([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
    }
    packet.extend(ports.0.to_be_bytes());
    packet.extend(ports.1.to_be_bytes());
    packet.extend([0xa5; 16]);
    packet
}

const A: [u8; 4] = [10, 244, 0, 2];
const B: [u8; 4] = [10, 244, 1, 2];

#[test]
fn a_flows_segments_keep_one_queue_whatever_they_carry() {
    let mut first = ipv4(A, B, TCP, (40_000, 5201), 0);
    let queue = queue_for(&first, 4);
    for seq in 0..50u8 {
        first[24] = seq;
        first[30..].fill(seq);
        assert_eq!(queue_for(&first, 4), queue, "segment {seq}");
    }
}

#[test]
fn parallel_flows_between_two_pods_use_every_queue() {
    for queues in [2, 3, 4] {
        // connect(2) gives a node's client sockets even ports.
        for (step, flows) in [(1, 8), (2, 8), (4, 8)] {
            let ports = (0..flows).map(|i| 40_000 + step * i);
            for direction in [|p| (p, 5201), |p| (5201, p)] {
                let mut used = vec![0; queues as usize];
                for port in ports.clone() {
                    used[queue_for(&ipv4(A, B, TCP, direction(port), 0), queues) as usize] += 1;
                    used[queue_for(&ipv6(2, 3, UDP, direction(port)), queues) as usize] += 1;
                }
                assert!(
                    used.iter().all(|&n| n > 0),
                    "{queues} queues, ports {step} apart: {used:?}"
                );
            }
        }
    }
}

#[test]
fn what_has_no_ports_is_steered_by_its_addresses_and_the_unreadable_to_queue_0() {
    let ping = ipv4(A, B, 1, (0x0800, 0x1234), 0);
    let mut other_ping = ping.clone();
    other_ping[20..24].copy_from_slice(&[0, 0, 0xff, 0xff]);
    assert_eq!(queue_for(&ping, 4), queue_for(&other_ping, 4));
    let later_fragment = ipv4(A, B, UDP, (1, 2), 185);
    let other_fragment = ipv4(A, B, UDP, (7, 9), 370);
    assert_eq!(queue_for(&later_fragment, 4), queue_for(&other_fragment, 4));
    for unreadable in [
        &[][..],
        &[0x45, 0, 0][..],
        &[0x10; 64][..],
        &ipv4(A, B, TCP, (1, 2), 0)[..21],
    ] {
        assert_eq!(queue_for(unreadable, 4), 0, "{unreadable:?}");
    }
}

/// Which of `group` a datagram sent to `port` arrives on.
fn arrival(sender: &StdSocket, port: u16, group: &[UdpSocket], datagram: &[u8]) -> usize {
    sender
        .send_to(datagram, ("127.0.0.1", port))
        .expect("sending on loopback");
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut buffers, mut received) = (vec![vec![0u8; 2048]], Vec::new());
    while Instant::now() < deadline {
        for (i, socket) in group.iter().enumerate() {
            match socket.receive(&mut buffers, &mut received) {
                Ok(()) if !received.is_empty() => {
                    assert_eq!(&buffers[0][..received[0].len], datagram);
                    return i;
                }
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("receiving on the group: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("a datagram sent to port {port} never arrived");
}

#[test]
fn the_kernel_steers_each_datagram_to_the_socket_queue_for_names() {
    let datagrams = [
        ipv4(A, B, TCP, (40_000, 5201), 0),
        ipv4(A, B, TCP, (40_002, 5201), 0),
        ipv4(A, B, TCP, (40_004, 5201), 0),
        ipv4(B, A, TCP, (5201, 40_002), 0),
        ipv4(A, B, UDP, (53, 40_003), 0),
        ipv4(A, B, UDP, (53, 40_003), 185),
        ipv4(A, B, 1, (0x0800, 7), 0),
        ipv6(2, 3, TCP, (40_000, 443)),
        ipv6(2, 3, TCP, (40_001, 443)),
        ipv6(3, 9, 58, (0x8000, 1)),
        ipv4(A, B, TCP, (1, 2), 0)[..22].to_vec(),
        vec![0xff; 30],
    ];
    for queues in [2u32, 3, 4] {
        let port = StdSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free port")
            .port();
        let group: Vec<UdpSocket> = (0..queues)
            .map(|_| UdpSocket::bind(port, false).expect("binding the group"))
            .collect();
        steer_by_inner_flow(&group.iter().collect::<Vec<_>>()).expect("attaching the program");
        let sender = StdSocket::bind("127.0.0.1:0").expect("a sender");
        let mut used = vec![false; queues as usize];
        for datagram in &datagrams {
            let expected = queue_for(datagram, queues) as usize;
            assert_eq!(
                arrival(&sender, port, &group, datagram),
                expected,
                "{queues} queues, {datagram:?}"
            );
            used[expected] = true;
        }
        assert!(used.iter().all(|&u| u), "{queues} queues: {used:?}");
    }
}

#[test]
fn one_socket_is_left_alone() {
    let socket = UdpSocket::bind(0, false).expect("a socket");
    steer_by_inner_flow(&[&socket]).expect("nothing to steer");
    steer_by_inner_flow(&[]).expect("nothing to steer");
}
