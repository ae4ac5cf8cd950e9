//! One received datagram, from a known peer, through its WireGuard state
//! machine: a data message becomes an inner packet (checked like the udp
//! backend's: whole, for this node, from the sender's own subnets), a
//! handshake becomes a reply. Anything else is dropped and its reason
//! counted. Free of I/O, so the property test can feed it anything.

use std::net::IpAddr;

use boringtun::noise::TunnResult;
use boringtun::noise::errors::WireGuardError;

use super::metrics::Drop;
use super::peers::{PeerSession, WgPeer};
use crate::udp::packet::Layout;
use crate::udp::peers::{Admission, LastAdmission, PeerTable};

const HANDSHAKE_INIT: u8 = 1;
const HANDSHAKE_RESPONSE: u8 = 2;
const COOKIE_REPLY: u8 = 3;
/// WireGuard's REKEY_TIMEOUT.
const RENEGOTIATE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Who started a handshake that completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        }
    }
}

/// Where the results of receiving go.
pub trait Sink {
    /// A checked inner packet for the TUN.
    fn deliver(&mut self, layout: Layout, packet: &[u8]);
    /// A message for the peer (handshake response, cookie, keepalive, or a
    /// packet that waited for the handshake).
    fn reply(&mut self, datagram: &[u8]);
    fn dropped(&mut self, reason: Drop);
    fn handshake(&mut self, role: Role);
}

/// The drop reason of a WireGuard error on receive.
pub fn reason(error: &WireGuardError) -> Drop {
    match error {
        WireGuardError::InvalidMac => Drop::InvalidMac,
        WireGuardError::InvalidAeadTag => Drop::BadTag,
        WireGuardError::InvalidCounter | WireGuardError::DuplicateCounter => Drop::Replay,
        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex => Drop::NoSession,
        WireGuardError::UnderLoad => Drop::UnderLoad,
        WireGuardError::InvalidPacket
        | WireGuardError::IncorrectPacketLength
        | WireGuardError::WrongPacketType
        | WireGuardError::DestinationBufferTooSmall => Drop::InvalidPacket,
        WireGuardError::WrongKey
        | WireGuardError::UnexpectedPacket
        | WireGuardError::InvalidTai64nTimestamp
        | WireGuardError::WrongTai64nTimestamp
        | WireGuardError::LockFailed
        | WireGuardError::ConnectionExpired => Drop::BadHandshake,
    }
}

/// Receives `datagram` from `peer` (whose state `session` is) with `scratch`
/// (at least as long as the datagram, and 148 bytes) to decrypt into;
/// `last` is the verdict on the train's previous packet.
pub fn receive(
    subnets: &PeerTable,
    last: &mut LastAdmission,
    peer: &WgPeer,
    session: &mut PeerSession,
    datagram: &[u8],
    scratch: &mut [u8],
    sink: &mut impl Sink,
) {
    if datagram.is_empty() {
        // An empty datagram means "flush the queue" to boringtun: not from the wire.
        return sink.dropped(Drop::InvalidPacket);
    }
    let kind = datagram[0];
    let tunn = &mut **session;
    match tunn.decapsulate(Some(IpAddr::V4(peer.node)), datagram, scratch) {
        TunnResult::Done => {}
        TunnResult::Err(e) => {
            let why = reason(&e);
            sink.dropped(why);
            // The peer holds a session we lost (our restart): renegotiate now
            // rather than when its keys age out. At most once per REKEY_TIMEOUT
            // after a handshake, so forged datagrams with a peer's address
            // cannot make this node handshake at their rate.
            let recent = tunn
                .time_since_last_handshake()
                .is_some_and(|age| age < RENEGOTIATE_AFTER);
            if why == Drop::NoSession
                && !recent
                && let TunnResult::WriteToNetwork(init) =
                    tunn.format_handshake_initiation(scratch, false)
            {
                sink.reply(init);
            }
        }
        TunnResult::WriteToNetwork(out) => {
            match (kind, out.first().copied()) {
                (_, Some(COOKIE_REPLY)) => sink.dropped(Drop::UnderLoad),
                (HANDSHAKE_INIT, _) => sink.handshake(Role::Responder),
                (HANDSHAKE_RESPONSE, _) => sink.handshake(Role::Initiator),
                _ => {}
            }
            sink.reply(out);
            send_queued(session, scratch, sink);
        }
        TunnResult::WriteToTunnelV4(packet, _) | TunnResult::WriteToTunnelV6(packet, _) => {
            check_inner(subnets, last, peer, packet, sink)
        }
    }
}

/// Sends what waited in `session`'s queue for a session, if it has one now. A
/// responder may send only once the initiator's first data message (often a
/// bare keepalive) arrives, so this runs after every train, not only after
/// handshakes; on an empty queue it costs one check.
pub fn send_queued(session: &mut PeerSession, scratch: &mut [u8], sink: &mut impl Sink) {
    while let TunnResult::WriteToNetwork(queued) = session.decapsulate(None, &[], scratch) {
        sink.reply(queued);
    }
    session.sent_queued();
}

/// Hands a decrypted packet on only when it is whole, for this node and from
/// the sending peer's own subnets (WireGuard's AllowedIPs, from the NodeSubnets).
fn check_inner(
    subnets: &PeerTable,
    last: &mut LastAdmission,
    peer: &WgPeer,
    packet: &[u8],
    sink: &mut impl Sink,
) {
    let layout = match Layout::parse(packet) {
        Ok(l) if l.total == packet.len() => l,
        _ => return sink.dropped(Drop::Malformed),
    };
    let (source, destination) = (layout.source(packet), layout.destination(packet));
    match last.admit(subnets, peer.node, source, destination) {
        Admission::Accepted => sink.deliver(layout, packet),
        Admission::NotLocal => sink.dropped(Drop::NotLocal),
        Admission::SpoofedSource => sink.dropped(Drop::SpoofedSource),
    }
}
