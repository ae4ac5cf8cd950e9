//! The two loops of one queue, as the udp backend's, with WireGuard between:
//!
//! ```text
//!  send:    read TUN (≤ 64 frames) → cut super-packets → encrypt each segment
//!           straight into the batch (one lock each) → one sendmmsg of GSO
//!           trains (in `send`)
//!  receive: recvmmsg (≤ 8 GRO trains) → known peer? → decrypt each datagram
//!           (one lock each) → check the inner packet → merge → TUN
//! ```
//!
//! Equal segments stay equal once encrypted (a fixed 32 bytes more), so a
//! super-packet still leaves as one UDP GSO train. Buffers are made once per
//! thread; nothing is allocated per packet.

use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::metrics::{Drop, WireguardMetrics};
use super::peers::WgPeers;
use super::receive::{Role, Sink, receive, send_queued};
use super::send::send_all;
use crate::udp::batch::SendBatch;
use crate::udp::coalesce::Coalescer;
use crate::udp::packet::Layout;
use crate::udp::peers::LastAdmission;
use crate::udp::segment::Segments;
use crate::udp::socket::{Incoming, RECV_BUFFER, UdpSocket};
use crate::udp::sys::{BusyPoll, Stop, would_block, write};
use std::sync::atomic::{AtomicU64, Ordering};

const RECEIVE_MESSAGES: usize = 8;
/// What WireGuard adds to a data message: type, index, counter, tag.
pub const DATA_OVERHEAD: usize = 32;

#[derive(Clone)]
pub struct Queue {
    pub tun: Arc<OwnedFd>,
    pub socket: Arc<UdpSocket>,
    pub vnet: bool,
    pub peers: WgPeers,
    pub metrics: WireguardMetrics,
    pub stop: Arc<Stop>,
    /// How long an empty loop polls after a round of a stream before it sleeps.
    pub busy_poll: Duration,
    /// Messages the receive loops took from their sockets: a stopping engine
    /// drains until this stands still.
    pub received: Arc<AtomicU64>,
}

impl Queue {
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
        let mut busy = BusyPoll::new(self.busy_poll);
        while !self.stop.is_set() {
            if let Err(e) = self.socket.receive(&mut buffers, &mut incoming) {
                if !would_block(&e) {
                    tracing::warn!(error = %e, "receiving WireGuard");
                }
                busy.idle(self.socket.fd(), &self.stop);
                continue;
            }
            self.received
                .fetch_add(incoming.len() as u64, Ordering::Relaxed);
            let table = self.peers.load();
            for (message, buffer) in incoming.iter().zip(&buffers) {
                let data = &buffer[..message.len.min(buffer.len())];
                let segment = message.segment.max(1);
                let Some(peer) = table.peer(message.peer) else {
                    sink.counts.unknown_peer += data.len().div_ceil(segment) as u64;
                    continue;
                };
                sink.peer = Some(peer.endpoint);
                // Locked per datagram, not per train: the send loop (this
                // peer's ACKs) never waits out a whole train's decryption.
                let mut last = LastAdmission::default();
                for datagram in data.chunks(segment) {
                    receive(
                        &table.subnets,
                        &mut last,
                        peer,
                        &mut peer.lock(),
                        datagram,
                        &mut scratch,
                        &mut sink,
                    );
                }
                send_queued(&mut peer.lock(), &mut scratch, &mut sink);
            }
            drop(table);
            sink.flush();
            send_all(
                &self.socket,
                &self.stop,
                &self.metrics,
                &sink.replies.buffer,
                &mut sink.replies.messages,
                &mut false,
            );
            sink.replies.clear();
            let counts = std::mem::take(&mut sink.counts);
            busy.moved(counts.packets as usize, Instant::now());
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

pub(super) fn one(len: usize) -> Segments {
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
