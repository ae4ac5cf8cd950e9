//! Two nodes' WireGuard state machines talking through [`receive`], with
//! no sockets: the handshake, data both ways, and every hostile input the
//! receive path must drop and count; then a property test that feeds it
//! arbitrary and mutated datagrams.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use boringtun::noise::TunnResult;
use ipnet::IpNet;
use proptest::prelude::*;

use super::keys::NodeKey;
use super::metrics::Drop;
use super::peers::{Factory, HANDSHAKE_QUEUE, WgPeer, WgTable};
use super::receive::{Role, Sink, receive};
use crate::plan::{UdpSpec, WireguardSpec};
use crate::udp::packet::Layout;

const N1: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const N2: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

fn net(s: &str) -> IpNet {
    s.parse().expect("test CIDR")
}

/// A UDP packet `src` → `dst` (IPv4) with `payload`.
fn packet(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x1f, 0x90, 0x1f, 0x90]);
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    crate::udp::packet::refresh_ipv4_checksum(&mut p[..20]);
    p
}

#[derive(Default)]
struct Recorder {
    delivered: Vec<Vec<u8>>,
    replies: Vec<Vec<u8>>,
    dropped: Vec<Drop>,
    handshakes: Vec<Role>,
}

impl Sink for Recorder {
    fn deliver(&mut self, layout: Layout, packet: &[u8]) {
        assert_eq!(layout.total, packet.len());
        self.delivered.push(packet.to_vec());
    }
    fn reply(&mut self, datagram: &[u8]) {
        self.replies.push(datagram.to_vec());
    }
    fn dropped(&mut self, reason: Drop) {
        self.dropped.push(reason);
    }
    fn handshake(&mut self, role: Role) {
        self.handshakes.push(role);
    }
}

/// One node: its table, with the other node as its only peer.
struct Node {
    table: WgTable,
    scratch: Vec<u8>,
}

impl Node {
    fn new(
        key: &NodeKey,
        local: &str,
        peer: Ipv4Addr,
        peer_key: &NodeKey,
        peer_subnet: &str,
    ) -> Self {
        let senders = BTreeMap::from([(net(peer_subnet), peer)]);
        let spec = WireguardSpec {
            tun: UdpSpec {
                device: "tartan-wg".into(),
                port: 51820,
                mtu: 1440,
                addresses: Default::default(),
                local: vec![net(local)],
                peers: senders.clone(),
                senders,
            },
            keys: BTreeMap::from([(peer, peer_key.public())]),
        };
        let factory = Factory::new(key.clone());
        let (table, fresh) = WgTable::build(&spec, &spec.tun.peers, &WgTable::default(), &factory);
        assert_eq!(fresh.len(), 1);
        Node {
            table,
            scratch: vec![0u8; 65536],
        }
    }

    fn peer(&self, node: Ipv4Addr) -> Arc<WgPeer> {
        self.table.peer(node).expect("peer").clone()
    }

    fn receive(&mut self, from: Ipv4Addr, datagram: &[u8]) -> Recorder {
        let mut sink = Recorder::default();
        let peer = self.peer(from);
        let mut tunn = peer.lock();
        receive(
            &self.table.subnets,
            &mut crate::udp::peers::LastAdmission::default(),
            &peer,
            &mut tunn,
            datagram,
            &mut self.scratch,
            &mut sink,
        );
        // As the datapath does after every train.
        super::receive::send_queued(&mut tunn, &mut self.scratch, &mut sink);
        sink
    }

    fn encrypt(&self, to: Ipv4Addr, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; plain.len() + 148];
        match self.peer(to).lock().encapsulate(plain, &mut out) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            other => panic!("no data message: {other:?}"),
        }
    }
}

fn pair() -> (Node, Node) {
    let (k1, k2) = (
        NodeKey::generate().expect("key"),
        NodeKey::generate().expect("key"),
    );
    pair_of(&k1, &k2)
}

/// Two nodes that know each other's keys but have no session yet.
fn strangers() -> (Node, Node) {
    let (k1, k2) = (
        NodeKey::generate().expect("key"),
        NodeKey::generate().expect("key"),
    );
    (
        Node::new(&k1, "10.244.1.0/24", N2, &k2, "10.244.2.0/24"),
        Node::new(&k2, "10.244.2.0/24", N1, &k1, "10.244.1.0/24"),
    )
}

/// Two nodes with a session: n1 (10.244.1.0/24) and n2 (10.244.2.0/24).
fn pair_of(k1: &NodeKey, k2: &NodeKey) -> (Node, Node) {
    let mut n1 = Node::new(k1, "10.244.1.0/24", N2, k2, "10.244.2.0/24");
    let mut n2 = Node::new(k2, "10.244.2.0/24", N1, k1, "10.244.1.0/24");
    let mut buffer = [0u8; 256];
    let init = match n1
        .peer(N2)
        .lock()
        .format_handshake_initiation(&mut buffer, false)
    {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let answered = n2.receive(N1, &init);
    assert_eq!(answered.handshakes, vec![Role::Responder]);
    let confirmed = n1.receive(N2, &answered.replies[0]);
    assert_eq!(confirmed.handshakes, vec![Role::Initiator]);
    // The initiator's keepalive confirms the session to the responder.
    let keepalive = n2.receive(N1, &confirmed.replies[0]);
    assert!(keepalive.dropped.is_empty() && keepalive.delivered.is_empty());
    (n1, n2)
}

#[test]
fn a_handshake_then_packets_both_ways() {
    let (mut n1, mut n2) = pair();
    let there = packet([10, 244, 1, 5], [10, 244, 2, 7], b"ping");
    let got = n2.receive(N1, &n1.encrypt(N2, &there));
    assert_eq!(got.delivered, vec![there]);
    let back = packet([10, 244, 2, 7], [10, 244, 1, 5], b"pong");
    let got = n1.receive(N2, &n2.encrypt(N1, &back));
    assert_eq!(got.delivered, vec![back]);
}

#[test]
fn replays_forgeries_and_lies_are_dropped_by_reason() {
    let (n1, mut n2) = pair();
    let good = n1.encrypt(N2, &packet([10, 244, 1, 5], [10, 244, 2, 7], b"once"));
    assert_eq!(n2.receive(N1, &good).delivered.len(), 1);
    assert_eq!(
        n2.receive(N1, &good).dropped,
        vec![Drop::Replay],
        "a replay"
    );
    let mut forged = n1.encrypt(N2, &packet([10, 244, 1, 5], [10, 244, 2, 7], b"x"));
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        n2.receive(N1, &forged).dropped,
        vec![Drop::BadTag],
        "a flipped tag bit"
    );
    let truncated = &good[..10];
    assert_eq!(n2.receive(N1, truncated).dropped, vec![Drop::InvalidPacket]);
    let spoofed = n1.encrypt(N2, &packet([10, 244, 9, 5], [10, 244, 2, 7], b"not mine"));
    assert_eq!(n2.receive(N1, &spoofed).dropped, vec![Drop::SpoofedSource]);
    let elsewhere = n1.encrypt(N2, &packet([10, 244, 1, 5], [10, 244, 3, 7], b"not yours"));
    assert_eq!(n2.receive(N1, &elsewhere).dropped, vec![Drop::NotLocal]);
    let mut unknown_session = good.clone();
    unknown_session[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    let lost = n2.receive(N1, &unknown_session);
    assert_eq!(lost.dropped, vec![Drop::NoSession]);
    assert!(lost.delivered.is_empty());
    assert!(
        lost.replies.is_empty(),
        "a forged message does not make a node that just handshook handshake again"
    );
}

#[test]
fn a_restarted_node_renegotiates_on_the_first_stale_message() {
    let (k1, k2) = (
        NodeKey::generate().expect("key"),
        NodeKey::generate().expect("key"),
    );
    let (mut n1, _) = pair_of(&k1, &k2);
    // n2 restarted: the same key, no session; n1 still sends on the old one.
    let mut n2 = Node::new(&k2, "10.244.2.0/24", N1, &k1, "10.244.1.0/24");
    let stale = n1.encrypt(N2, &packet([10, 244, 1, 5], [10, 244, 2, 7], b"old keys"));
    let got = n2.receive(N1, &stale);
    assert_eq!(got.dropped, vec![Drop::NoSession]);
    assert_eq!(got.replies.len(), 1, "a handshake initiation, at once");
    assert_eq!(got.replies[0][0], 1, "message type 1: initiation");
    let answered = n1.receive(N2, &got.replies[0]);
    assert_eq!(answered.handshakes, vec![Role::Responder]);
    let confirmed = n2.receive(N1, &answered.replies[0]);
    assert_eq!(confirmed.handshakes, vec![Role::Initiator]);
    n1.receive(N2, &confirmed.replies[0]);
    let fresh = packet([10, 244, 1, 5], [10, 244, 2, 7], b"new keys");
    assert_eq!(
        n2.receive(N1, &n1.encrypt(N2, &fresh)).delivered,
        vec![fresh]
    );
}

/// Delivers every reply to the other node until both are quiet; how many
/// packets each delivered.
fn exchange(
    n1: &mut Node,
    n2: &mut Node,
    to_n2: Vec<Vec<u8>>,
    to_n1: Vec<Vec<u8>>,
) -> (usize, usize) {
    let (mut to_n1, mut to_n2) = (to_n1, to_n2);
    let (mut at_n1, mut at_n2) = (0, 0);
    for _ in 0..10 {
        let mut next_to_n1 = Vec::new();
        for d in std::mem::take(&mut to_n2) {
            let got = n2.receive(N1, &d);
            at_n2 += got.delivered.len();
            next_to_n1.extend(got.replies);
        }
        for d in std::mem::take(&mut to_n1) {
            let got = n1.receive(N2, &d);
            at_n1 += got.delivered.len();
            to_n2.extend(got.replies);
        }
        to_n1 = next_to_n1;
        if to_n1.is_empty() && to_n2.is_empty() {
            break;
        }
    }
    (at_n1, at_n2)
}

#[test]
fn a_packet_held_through_crossed_handshakes_is_delivered() {
    // Both nodes (re)started at once: n1 has a packet for n2 and starts a
    // handshake; n2's clock starts one too. n1 may end up the responder,
    // which sends only once n2 confirms: the packet must leave then.
    let (mut n1, mut n2) = strangers();
    let mut out = vec![0u8; 256];
    let held = packet([10, 244, 1, 5], [10, 244, 2, 7], b"held");
    let i1 = match n1.peer(N2).lock().encapsulate(&held, &mut out) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let i2 = match n2
        .peer(N1)
        .lock()
        .format_handshake_initiation(&mut out, false)
    {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        other => panic!("no initiation: {other:?}"),
    };
    let (_, at_n2) = exchange(&mut n1, &mut n2, vec![i1], vec![i2]);
    assert_eq!(at_n2, 1, "the held packet arrived");
}

#[test]
fn a_pending_handshake_holds_boringtuns_queue_and_the_packets_beyond_it_are_counted_lost() {
    let (mut n1, mut n2) = strangers();
    let (sent, mut lost, mut initiation) = (HANDSHAKE_QUEUE + 44, 0, None);
    let mut out = vec![0u8; 256];
    let pod_packet = packet([10, 244, 1, 5], [10, 244, 2, 7], b"waits for the handshake");
    let peer = n1.peer(N2);
    for _ in 0..sent {
        let mut session = peer.lock();
        if let TunnResult::WriteToNetwork(init) = session.encapsulate(&pod_packet, &mut out) {
            assert_eq!(init[0], 1, "no session yet, so no data message");
            initiation = Some(init.to_vec());
        }
        if !session.held_for_handshake() {
            lost += 1;
        }
    }
    assert_eq!(lost, 44);
    let response = n2.receive(N1, &initiation.expect("a handshake initiation"));
    let confirmed = n1.receive(N2, &response.replies[0]);
    // boringtun's own queue: exactly as many data messages leave as we counted held.
    let data: Vec<_> = confirmed
        .replies
        .iter()
        .filter(|m| m[0] == 4 && m.len() > 32)
        .collect();
    assert_eq!(data.len(), HANDSHAKE_QUEUE);
    assert_eq!(peer.lock().discarded(), 0, "sent, so nothing waits");
}

#[test]
fn packets_held_for_a_handshake_that_gives_up_are_counted_once() {
    let (n1, _) = strangers();
    let peer = n1.peer(N2);
    let mut session = peer.lock();
    for _ in 0..10 {
        assert!(session.held_for_handshake());
    }
    // Without a session, sending the queue leaves it waiting.
    session.sent_queued();
    assert_eq!(session.discarded(), 10);
    assert_eq!(session.discarded(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, and valid messages with bytes changed or cut, never
    /// panic, and nothing reaches the TUN that the peer did not send.
    #[test]
    fn hostile_datagrams_never_panic_or_pass(
        noise in proptest::collection::vec(any::<u8>(), 0..200),
        kind in 1u8..=4,
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
    ) {
        let (n1, mut n2) = pair();
        let mut forged = noise.clone();
        if let Some(first) = forged.first_mut() {
            *first = kind;
        }
        prop_assert!(n2.receive(N1, &noise).delivered.is_empty());
        prop_assert!(n2.receive(N1, &forged).delivered.is_empty());
        let sent = packet([10, 244, 1, 5], [10, 244, 2, 7], b"payload");
        let mut mutated = n1.encrypt(N2, &sent);
        for (at, bit) in &flips {
            let i = at % mutated.len();
            mutated[i] ^= bit;
        }
        let got = n2.receive(N1, &mutated);
        prop_assert!(got.delivered.is_empty(), "a changed message was delivered");
        let whole = n1.encrypt(N2, &sent);
        let short = &whole[..cut % whole.len()];
        let got = n2.receive(N1, short);
        prop_assert!(got.delivered.is_empty());
    }
}
