//! The two loops of one queue, as the udp backend's, with WireGuard between:
//!
//! ```text
//!  send:    read TUN (≤ 64 frames) → cut super-packets → encrypt each segment
//!           straight into the batch (one lock per frame) → one sendmmsg of GSO trains
//!  receive: recvmmsg (≤ 8 GRO trains) → known peer? → decrypt each datagram
//!           (one lock per train) → check the inner packet → merge → TUN
//! ```
//!
//! Equal segments stay equal once encrypted (a fixed 32 bytes more), so a
//! super-packet still leaves as one UDP GSO train. Buffers are made once per
//! thread; nothing is allocated per packet.

use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use boringtun::noise::TunnResult;

use super::metrics::{Drop, WireguardMetrics};
use super::peers::{WgPeers, WgTable};
use super::receive::{Role, Sink, receive};
use crate::udp::batch::SendBatch;
use crate::udp::coalesce::Coalescer;
use crate::udp::packet::Layout;
use crate::udp::segment::{Segments, segment_into};
use crate::udp::socket::{Incoming, Outgoing, RECV_BUFFER, UdpSocket};
use crate::udp::sys::{
    IDLE_POLL_MS, read, split, wait_readable, wait_writable, would_block, write,
};
use crate::udp::vnet::{self, VnetHeader};

const READS_PER_BATCH: usize = 64;
const BATCH_BYTES: usize = 1 << 20;
const RECEIVE_MESSAGES: usize = 8;
/// What WireGuard adds to a data message: type, index, counter, tag.
pub const DATA_OVERHEAD: usize = 32;
/// The largest handshake message.
const HANDSHAKE_ROOM: usize = 148;

#[derive(Clone)]
pub struct Queue {
    pub tun: Arc<OwnedFd>,
    pub socket: Arc<UdpSocket>,
    pub vnet: bool,
    pub peers: WgPeers,
    pub metrics: WireguardMetrics,
    pub stop: Arc<AtomicBool>,
}

/// Frames of one send round that did not become datagrams.
#[derive(Debug, Default)]
struct SendCounts {
    no_peer: u64,
    malformed: u64,
    /// Waiting in a peer's queue for its handshake.
    queued: u64,
}

impl Queue {
    /// TUN → peers, until stopped.
    pub fn send_loop(self) {
        let (packets, bytes) = self.metrics.direction("tx");
        let mut frame = vec![0u8; vnet::LEN + 65535];
        let mut plain = Vec::with_capacity(2 * 65536);
        let mut batch = SendBatch::default();
        let mut control = SendBatch::default();
        let mut gso = self.socket.gso;
        while !self.stop.load(Ordering::Relaxed) {
            batch.clear();
            control.clear();
            let table = self.peers.load_full();
            let counts = self.fill(
                &table,
                &mut frame,
                &mut plain,
                &mut batch,
                &mut control,
                gso,
            );
            drop(table);
            self.metrics.count(Drop::NoPeer, counts.no_peer);
            self.metrics.count(Drop::Malformed, counts.malformed);
            send_all(&self.socket, &self.metrics, &mut control, &mut false);
            if batch.is_empty() {
                if counts.no_peer + counts.malformed + counts.queued == 0 {
                    wait_readable(&self.tun);
                }
                continue;
            }
            send_all(&self.socket, &self.metrics, &mut batch, &mut gso);
            packets.inc_by(batch.packets as u64);
            bytes.inc_by(batch.buffer.len() as u64);
        }
    }

    fn fill(
        &self,
        table: &WgTable,
        frame: &mut [u8],
        plain: &mut Vec<u8>,
        batch: &mut SendBatch,
        control: &mut SendBatch,
        gso: bool,
    ) -> SendCounts {
        let mut counts = SendCounts::default();
        for _ in 0..READS_PER_BATCH {
            let n = match read(&self.tun, frame) {
                Ok(n) => n,
                Err(e) if would_block(&e) => break,
                Err(_) if self.stop.load(Ordering::Relaxed) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the wireguard TUN");
                    std::thread::sleep(std::time::Duration::from_millis(IDLE_POLL_MS as u64));
                    break;
                }
            };
            match self.encrypt_frame(table, &frame[..n], plain, batch, control, gso) {
                Ok(true) => {}
                Ok(false) => counts.queued += 1,
                Err(Drop::NoPeer) => counts.no_peer += 1,
                Err(_) => counts.malformed += 1,
            }
            if batch.buffer.len() >= BATCH_BYTES {
                break;
            }
        }
        counts
    }

    /// Cuts one TUN frame into segments and encrypts them for the peer that
    /// owns its destination, into `batch`. `Ok(false)`: there is no session
    /// yet, so the packets wait in the peer's queue and a handshake
    /// initiation (if one is due) went into `control`.
    fn encrypt_frame(
        &self,
        table: &WgTable,
        frame: &[u8],
        plain: &mut Vec<u8>,
        batch: &mut SendBatch,
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
        let node = table
            .subnets
            .lookup(layout.destination(packet))
            .ok_or(Drop::NoPeer)?;
        let peer = table.peer(node).ok_or(Drop::NoPeer)?;
        plain.clear();
        let cut = segment_into(&header, packet, plain, None).map_err(|_| Drop::Malformed)?;
        let mut tunn = peer.lock();
        let offset = batch.buffer.len();
        let mut at = 0;
        for i in 0..cut.count {
            let len = if i + 1 == cut.count {
                cut.total - at
            } else {
                cut.size
            };
            let segment = &plain[at..at + len];
            at += len;
            let start = batch.buffer.len();
            batch
                .buffer
                .resize(start + (len + DATA_OVERHEAD).max(HANDSHAKE_ROOM), 0);
            match tunn.encapsulate(segment, &mut batch.buffer[start..]) {
                TunnResult::WriteToNetwork(out) if out.first() == Some(&4) => {
                    let n = out.len();
                    batch.buffer.truncate(start + n);
                }
                TunnResult::WriteToNetwork(init) => {
                    let n = init.len();
                    let from = control.buffer.len();
                    control
                        .buffer
                        .extend_from_slice(&batch.buffer[start..start + n]);
                    control.add(peer.endpoint, from, one(n), false);
                    batch.buffer.truncate(start);
                }
                _ => batch.buffer.truncate(start),
            }
        }
        if batch.buffer.len() == offset {
            return Ok(false);
        }
        let encrypted = Segments {
            size: cut.size + DATA_OVERHEAD,
            count: cut.count,
            total: cut.total + cut.count * DATA_OVERHEAD,
        };
        if batch.buffer.len() - offset != encrypted.total {
            // Part of the frame went into the peer's queue (its session ended
            // mid-frame): the rest cannot form a train. Rare; drop it.
            batch.buffer.truncate(offset);
            return Err(Drop::Malformed);
        }
        batch.add(peer.endpoint, offset, encrypted, gso);
        Ok(true)
    }

    /// Peers → TUN, until stopped.
    pub fn receive_loop(self) {
        let (packets, bytes) = self.metrics.direction("rx");
        let mut buffers = vec![vec![0u8; RECV_BUFFER]; RECEIVE_MESSAGES];
        let mut incoming: Vec<Incoming> = Vec::with_capacity(RECEIVE_MESSAGES);
        let mut scratch = vec![0u8; RECV_BUFFER];
        let mut sink = TunSink {
            tun: self.tun.clone(),
            coalescer: Coalescer::new(self.vnet),
            replies: SendBatch::default(),
            peer: None,
            counts: ReceiveCounts::default(),
        };
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.socket.receive(&mut buffers, &mut incoming) {
                if !would_block(&e) {
                    tracing::warn!(error = %e, "receiving WireGuard");
                }
                wait_readable(self.socket.fd());
                continue;
            }
            let table = self.peers.load();
            for (message, buffer) in incoming.iter().zip(&buffers) {
                let data = &buffer[..message.len.min(buffer.len())];
                let segment = message.segment.max(1);
                let Some(peer) = table.peer(message.peer) else {
                    sink.counts.unknown_peer += data.len().div_ceil(segment) as u64;
                    continue;
                };
                sink.peer = Some(peer.endpoint);
                let mut tunn = peer.lock();
                for datagram in data.chunks(segment) {
                    receive(
                        &table.subnets,
                        peer,
                        &mut tunn,
                        datagram,
                        &mut scratch,
                        &mut sink,
                    );
                }
            }
            drop(table);
            sink.flush();
            send_all(&self.socket, &self.metrics, &mut sink.replies, &mut false);
            sink.replies.clear();
            let counts = std::mem::take(&mut sink.counts);
            packets.inc_by(counts.packets);
            bytes.inc_by(counts.bytes);
            self.metrics.count(Drop::UnknownPeer, counts.unknown_peer);
            self.metrics.count(Drop::TunError, counts.tun_errors);
            for (reason, n) in counts.drops.iter() {
                self.metrics.count(reason, n);
            }
            for (role, n) in [
                (Role::Initiator, counts.initiated),
                (Role::Responder, counts.responded),
            ] {
                if n > 0 {
                    self.metrics
                        .handshakes
                        .with_label_values(&[role.label()])
                        .inc_by(n);
                }
            }
        }
    }
}

fn one(len: usize) -> Segments {
    Segments {
        size: len,
        count: 1,
        total: len,
    }
}

/// Drops counted per round, by reason, without a map.
#[derive(Debug, Default)]
pub struct DropCounts([u64; Drop::ALL.len()]);

impl DropCounts {
    pub fn add(&mut self, reason: Drop) {
        if let Some(i) = Drop::ALL.iter().position(|r| *r == reason) {
            self.0[i] += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (Drop, u64)> + '_ {
        Drop::ALL.into_iter().zip(self.0.iter().copied())
    }

    pub fn get(&self, reason: Drop) -> u64 {
        self.iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| n)
    }
}

#[derive(Debug, Default)]
struct ReceiveCounts {
    packets: u64,
    bytes: u64,
    unknown_peer: u64,
    tun_errors: u64,
    initiated: u64,
    responded: u64,
    drops: DropCounts,
}

/// Received packets to the TUN (merged), replies to the peer being served.
struct TunSink {
    tun: Arc<OwnedFd>,
    coalescer: Coalescer,
    replies: SendBatch,
    peer: Option<SocketAddrV4>,
    counts: ReceiveCounts,
}

impl TunSink {
    fn flush(&mut self) {
        let tun = &self.tun;
        let errors = &mut self.counts.tun_errors;
        self.coalescer.flush(&mut |frame: &[u8]| {
            if write(tun, frame).is_err() {
                *errors += 1;
            }
        });
    }
}

impl Sink for TunSink {
    fn deliver(&mut self, layout: Layout, packet: &[u8]) {
        self.counts.packets += 1;
        self.counts.bytes += packet.len() as u64;
        let tun = &self.tun;
        let errors = &mut self.counts.tun_errors;
        self.coalescer.push(layout, packet, &mut |frame: &[u8]| {
            if write(tun, frame).is_err() {
                *errors += 1;
            }
        });
    }

    fn reply(&mut self, datagram: &[u8]) {
        let Some(peer) = self.peer else { return };
        let from = self.replies.buffer.len();
        self.replies.buffer.extend_from_slice(datagram);
        self.replies.add(peer, from, one(datagram.len()), false);
    }

    fn dropped(&mut self, reason: Drop) {
        self.counts.drops.add(reason);
    }

    fn handshake(&mut self, role: Role) {
        match role {
            Role::Initiator => self.counts.initiated += 1,
            Role::Responder => self.counts.responded += 1,
        }
    }
}

/// Sends every message of `batch`, waiting while the socket is full; falls
/// back to one datagram per message when the path refuses GSO.
pub fn send_all(
    socket: &UdpSocket,
    metrics: &WireguardMetrics,
    batch: &mut SendBatch,
    gso: &mut bool,
) {
    let mut sent = 0;
    while sent < batch.messages.len() {
        match socket.send(&batch.buffer, &batch.messages[sent..]) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_writable(socket.fd()),
            Err(e) if *gso && e.raw_os_error() == Some(libc::EIO) => {
                tracing::warn!(error = %e, "UDP GSO send failed; falling back to one datagram per packet");
                metrics.offload.with_label_values(&["udp_gso"]).set(0);
                *gso = false;
                let rest: Vec<Outgoing> = split(&batch.messages[sent..]);
                batch.messages.truncate(sent);
                batch.messages.extend(rest);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sending a WireGuard batch");
                metrics.count(Drop::SendError, batch.messages[sent].datagrams() as u64);
                sent += 1;
            }
        }
    }
}
