//! For the crypto benchmarks: two boringtun state machines that have
//! completed a handshake with each other, and the IPv4 TCP packets they
//! carry.

use std::io;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

/// `(sender, receiver)` with a session, after the three handshake messages.
pub fn session_pair() -> io::Result<(Tunn, Tunn)> {
    let (a, b) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let (pa, pb) = (PublicKey::from(&a), PublicKey::from(&b));
    let mut sender = Tunn::new(a, pb, None, None, 1, None);
    let mut receiver = Tunn::new(b, pa, None, None, 2, None);
    let (mut m1, mut m2, mut m3) = ([0u8; 256], [0u8; 256], [0u8; 256]);
    let failed = |step: &str| io::Error::other(format!("wireguard handshake: no {step}"));
    let TunnResult::WriteToNetwork(init) = sender.format_handshake_initiation(&mut m1, false)
    else {
        return Err(failed("initiation"));
    };
    let TunnResult::WriteToNetwork(response) = receiver.decapsulate(None, init, &mut m2) else {
        return Err(failed("response"));
    };
    let TunnResult::WriteToNetwork(keepalive) = sender.decapsulate(None, response, &mut m3) else {
        return Err(failed("keepalive from the initiator"));
    };
    // The receiver's session starts with the initiator's first data message.
    let _ = receiver.decapsulate(None, keepalive, &mut m1);
    Ok((sender, receiver))
}

/// An IPv4 TCP packet (10.244.1.5 → 10.244.2.7) with `payload` bytes of
/// pattern, valid as boringtun checks a decrypted packet; the length field
/// is the whole packet's, as in a TUN super-packet.
pub fn ipv4_tcp_packet(payload: usize) -> Vec<u8> {
    let total = 20 + 20 + payload;
    let mut p = vec![
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 244, 1, 5, 10, 244, 2, 7,
    ];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[
        0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    p.extend((0..payload).map(|i| (i % 251) as u8));
    p
}
