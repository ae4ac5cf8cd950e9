//! The send half of a queue: frames from the TUN, cut into segments, each
//! encrypted straight into one buffer that is allocated (and zeroed) once,
//! then sent as UDP GSO trains in one `sendmmsg`.

use std::time::Instant;

use boringtun::noise::TunnResult;

use super::datapath::{DATA_OVERHEAD, Queue, one};
use super::metrics::{Drop, WireguardMetrics};
use super::peers::WgTable;
use crate::udp::batch::SendBatch;
use crate::udp::packet::{Layout, is_link_local_control};
use crate::udp::segment::{Segments, segment_into};
use crate::udp::socket::{Outgoing, UdpSocket};
use crate::udp::sys::{self, BusyPoll, IDLE_POLL_MS, Stop, read, would_block};
use crate::udp::vnet::{self, VnetHeader};

const READS_PER_BATCH: usize = 64;
/// Stop reading once this much is waiting to be sent.
const BATCH_BYTES: usize = 1 << 20;
/// Room for one more frame after [`BATCH_BYTES`]: 64 KiB cut into 1-byte
/// segments at worst would not fit, but a frame that does not fit is
/// refused, never written past the end.
const SEALED_BYTES: usize = BATCH_BYTES + (256 << 10);
/// The largest handshake message.
const HANDSHAKE_ROOM: usize = 148;

/// Frames of one send round that did not become datagrams.
#[derive(Debug, Default)]
struct SendCounts {
    no_peer: u64,
    malformed: u64,
    /// Waiting in a peer's queue for its handshake.
    queued: u64,
}

/// Encrypted datagrams end to end in `bytes[..used]`, and their trains.
struct Sealed {
    bytes: Vec<u8>,
    used: usize,
    batch: SendBatch,
    /// Packets of this round that a peer's full handshake queue dropped.
    lost: u64,
}

impl Queue {
    /// TUN → peers, until stopped.
    pub fn send_loop(self) {
        let (packets, bytes) = self.metrics.direction("tx");
        let mut frame = vec![0u8; vnet::LEN + 65535];
        let mut plain = Vec::with_capacity(2 * 65536);
        let mut sealed = Sealed {
            bytes: vec![0u8; SEALED_BYTES],
            used: 0,
            batch: SendBatch::default(),
            lost: 0,
        };
        let mut control = SendBatch::default();
        let mut gso = self.socket.gso;
        let mut busy = BusyPoll::new(self.busy_poll);
        while !self.stop.is_set() {
            sealed.batch.clear();
            sealed.used = 0;
            sealed.lost = 0;
            control.clear();
            let counts = self.fill(&mut frame, &mut plain, &mut sealed, &mut control, gso);
            self.metrics.count(Drop::NoPeer, counts.no_peer);
            self.metrics.count(Drop::Malformed, counts.malformed);
            self.metrics.count(Drop::QueueFull, sealed.lost);
            send_all(
                &self.socket,
                &self.stop,
                &self.metrics,
                &control.buffer,
                &mut control.messages,
                &mut false,
            );
            if sealed.batch.is_empty() {
                if counts.no_peer + counts.malformed + counts.queued == 0 {
                    busy.idle(&self.tun, &self.stop);
                }
                continue;
            }
            busy.moved(sealed.batch.packets, Instant::now());
            let used = sealed.used;
            send_all(
                &self.socket,
                &self.stop,
                &self.metrics,
                &sealed.bytes[..used],
                &mut sealed.batch.messages,
                &mut gso,
            );
            packets.inc_by(sealed.batch.packets as u64);
            bytes.inc_by(used as u64);
        }
    }

    fn fill(
        &self,
        frame: &mut [u8],
        plain: &mut Vec<u8>,
        sealed: &mut Sealed,
        control: &mut SendBatch,
        gso: bool,
    ) -> SendCounts {
        let mut counts = SendCounts::default();
        // One table load per round; released before the send.
        let mut table = self.peers.load_full();
        for _ in 0..READS_PER_BATCH {
            let n = match read(&self.tun, frame) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) if self.stop.is_set() => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the wireguard TUN");
                    std::thread::sleep(std::time::Duration::from_millis(IDLE_POLL_MS as u64));
                    break;
                }
            };
            let mut encrypted =
                self.encrypt_frame(&table, &frame[..n], plain, sealed, control, gso);
            if let Err(Drop::NoPeer) = encrypted {
                // The round's table may predate the frame: a widen, then the
                // route that sent the frame here, can land while it reads.
                table = self.peers.load_full();
                encrypted = self.encrypt_frame(&table, &frame[..n], plain, sealed, control, gso);
            }
            match encrypted {
                Ok(true) => {}
                Ok(false) => counts.queued += 1,
                Err(Drop::NoPeer) => counts.no_peer += 1,
                Err(_) => counts.malformed += 1,
            }
            if sealed.used >= BATCH_BYTES {
                break;
            }
        }
        counts
    }

    /// Cuts one TUN frame into segments and encrypts them for the peer that
    /// owns its destination, into `sealed`. `Ok(false)`: there is no session
    /// yet, so the packets wait in the peer's queue and a handshake
    /// initiation (if one is due) went into `control`.
    fn encrypt_frame(
        &self,
        table: &WgTable,
        frame: &[u8],
        plain: &mut Vec<u8>,
        sealed: &mut Sealed,
        control: &mut SendBatch,
        gso: bool,
    ) -> Result<bool, Drop> {
        let (header, packet) = if self.vnet {
            let header = VnetHeader::parse(frame).ok_or(Drop::Malformed)?;
            (header, &frame[vnet::LEN..])
        } else {
            (VnetHeader::default(), frame)
        };
        let layout = Layout::parse(packet).map_err(|_| Drop::Malformed)?;
        let destination = layout.destination(packet);
        if is_link_local_control(destination) {
            return Ok(true);
        }
        let node = table.subnets.lookup(destination).ok_or(Drop::NoPeer)?;
        let peer = table.peer(node).ok_or(Drop::NoPeer)?;
        plain.clear();
        let cut = segment_into(&header, packet, plain, None).map_err(|_| Drop::Malformed)?;
        let encrypted = Segments {
            size: cut.size + DATA_OVERHEAD,
            count: cut.count,
            total: cut.total + cut.count * DATA_OVERHEAD,
        };
        let offset = sealed.used;
        if offset + encrypted.total + HANDSHAKE_ROOM > sealed.bytes.len() {
            return Err(Drop::Malformed);
        }
        let mut at = 0;
        for i in 0..cut.count {
            let len = if i + 1 == cut.count {
                cut.total - at
            } else {
                cut.size
            };
            let segment = &plain[at..at + len];
            at += len;
            let start = sealed.used;
            let room = start + (len + DATA_OVERHEAD).max(HANDSHAKE_ROOM);
            // Locked per segment, not per frame: the receive loop (this
            // peer's ACKs) never waits out a whole super-packet's encryption.
            let mut tunn = peer.lock();
            match tunn.encapsulate(segment, &mut sealed.bytes[start..room]) {
                TunnResult::WriteToNetwork(out) if out.first() == Some(&4) => {
                    sealed.used += out.len()
                }
                TunnResult::WriteToNetwork(init) => {
                    let from = control.buffer.len();
                    control.buffer.extend_from_slice(init);
                    control.add(peer.endpoint, from, one(init.len()), false);
                    if !tunn.held_for_handshake() {
                        sealed.lost += 1;
                    }
                }
                _ => {
                    if !tunn.held_for_handshake() {
                        sealed.lost += 1;
                    }
                }
            }
        }
        if sealed.used == offset {
            return Ok(false);
        }
        if sealed.used - offset != encrypted.total {
            // Part of the frame went into the peer's queue (its session ended
            // mid-frame): the rest cannot form a train. Rare; drop it.
            sealed.used = offset;
            return Err(Drop::Malformed);
        }
        sealed.batch.add(peer.endpoint, offset, encrypted, gso);
        Ok(true)
    }
}

/// Sends every message over `bytes` (see [`crate::udp::sys::send_all`]),
/// counting what the kernel refuses.
pub fn send_all(
    socket: &UdpSocket,
    stop: &Stop,
    metrics: &WireguardMetrics,
    bytes: &[u8],
    messages: &mut Vec<Outgoing>,
    gso: &mut bool,
) {
    let refused = sys::send_all(socket, stop, bytes, messages, gso, &metrics.offload);
    metrics.count(Drop::SendError, refused);
}
