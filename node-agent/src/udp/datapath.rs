//! The two loops of one queue, each on its own thread:
//!
//! ```text
//!  send:    read TUN (until empty, ≤ 64 frames) → cut super-packets → group per peer
//!           → one sendmmsg of UDP GSO trains
//!  receive: recvmmsg (≤ 8 GRO trains) → check peer, inner packet, destination
//!           → merge TCP segments → one TUN write per merged packet
//! ```
//!
//! Both loops block in `poll` with a short timeout when idle, so a stop is
//! seen within a fraction of a second.

use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::auth::DatagramKey;
use super::batch::SendBatch;
use super::coalesce::Coalescer;
use super::metrics::{DropReason, UdpMetrics};
use super::packet::{Layout, is_link_local_control};
use super::peers::{Admission, LastAdmission, PeerTable, Peers};
use super::segment::segment_into;
use super::socket::{Incoming, RECV_BUFFER, UdpSocket};
use super::sys::{BusyPoll, IDLE_POLL_MS, Stop, read, send_all, would_block, write};
use super::vnet::{self, VnetHeader};

/// Frames read from the TUN before a send.
const READS_PER_BATCH: usize = 64;
/// Stop reading once this much is waiting to be sent.
const BATCH_BYTES: usize = 1 << 20;
/// Messages per recvmmsg.
const RECEIVE_MESSAGES: usize = 8;

#[derive(Clone)]
pub struct Queue {
    pub tun: Arc<OwnedFd>,
    pub socket: Arc<UdpSocket>,
    pub vnet: bool,
    /// `false`: one packet per system call (the benchmark baseline).
    pub batched: bool,
    pub port: u16,
    pub peers: Peers,
    /// Datagrams carry and must carry a tag under this key.
    pub key: Option<DatagramKey>,
    pub metrics: UdpMetrics,
    pub stop: Arc<Stop>,
    /// How long an empty loop polls after a round of a stream before it sleeps.
    pub busy_poll: Duration,
}

impl Queue {
    /// TUN → peers, until stopped.
    pub fn send_loop(self) {
        let tx = self.metrics.direction("tx");
        let mut frame = vec![0u8; vnet::LEN + 65535];
        let mut batch = SendBatch::default();
        let mut gso = self.socket.gso;
        let mut busy = BusyPoll::new(self.busy_poll);
        while !self.stop.is_set() {
            let drops = self.fill_batch(&mut frame, &mut batch, gso);
            self.metrics.drop(DropReason::NoPeer, drops.no_peer);
            self.metrics.drop(DropReason::Malformed, drops.malformed);
            if batch.is_empty() {
                // Only an empty TUN is a reason to sleep; dropped frames mean more may wait.
                if drops.no_peer == 0 && drops.malformed == 0 {
                    busy.idle(&self.tun, &self.stop);
                }
                continue;
            }
            busy.moved(batch.packets, Instant::now());
            self.send_batch(&mut batch, &mut gso);
            tx.packets.inc_by(batch.packets as u64);
            tx.bytes.inc_by(batch.buffer.len() as u64);
            tx.batch.observe(batch.packets as f64);
        }
    }

    /// Refills `batch` from the TUN until it is empty, the read budget is
    /// spent or [`BATCH_BYTES`] wait; returns the frames dropped on the way.
    fn fill_batch(&self, frame: &mut [u8], batch: &mut SendBatch, gso: bool) -> SendDrops {
        batch.clear();
        let mut drops = SendDrops::default();
        // One table load per round, not per frame; released before the send.
        let mut table = self.peers.load();
        let reads = if self.batched { READS_PER_BATCH } else { 1 };
        for _ in 0..reads {
            let Some(n) = self.read_frame(frame) else {
                break;
            };
            let added = match self.add_frame(&table, &frame[..n], batch, gso) {
                // The round's table may predate the frame: a widen, then the
                // route that sent the frame here, can land while it reads.
                Err(DropReason::NoPeer) => {
                    table = self.peers.load();
                    self.add_frame(&table, &frame[..n], batch, gso)
                }
                other => other,
            };
            match added {
                Ok(()) => {}
                Err(DropReason::NoPeer) => drops.no_peer += 1,
                Err(_) => drops.malformed += 1,
            }
            if batch.buffer.len() >= BATCH_BYTES {
                break;
            }
        }
        drops
    }

    /// The length of the next frame read from the TUN, or `None` when this
    /// round should end (nothing to read, stopping, or a read error).
    fn read_frame(&self, frame: &mut [u8]) -> Option<usize> {
        match read(&self.tun, frame) {
            Ok(n) => Some(n),
            Err(e) if would_block(&e) => None,
            Err(_) if self.stop.is_set() => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading the TUN");
                // A persistent error must not spin the thread.
                std::thread::sleep(std::time::Duration::from_millis(IDLE_POLL_MS as u64));
                None
            }
        }
    }

    /// Cuts one TUN frame into datagrams for the peer owning its
    /// destination, straight into `batch`; on error nothing is added.
    fn add_frame(
        &self,
        table: &PeerTable,
        frame: &[u8],
        batch: &mut SendBatch,
        gso: bool,
    ) -> Result<(), DropReason> {
        let (header, packet) = if self.vnet {
            let header = VnetHeader::parse(frame).ok_or(DropReason::Malformed)?;
            (header, &frame[vnet::LEN..])
        } else {
            (VnetHeader::default(), frame)
        };
        let layout = Layout::parse(packet).map_err(|_| DropReason::Malformed)?;
        let destination = layout.destination(packet);
        if is_link_local_control(destination) {
            return Ok(());
        }
        let node = table.lookup(destination).ok_or(DropReason::NoPeer)?;
        let offset = batch.buffer.len();
        let segments = segment_into(&header, packet, &mut batch.buffer, self.key.as_ref())
            .map_err(|_| DropReason::Malformed)?;
        batch.add(SocketAddrV4::new(node, self.port), offset, segments, gso);
        Ok(())
    }

    /// Sends every message of `batch`; what the kernel refuses is counted.
    fn send_batch(&self, batch: &mut SendBatch, gso: &mut bool) {
        let refused = send_all(
            &self.socket,
            &self.stop,
            &batch.buffer,
            &mut batch.messages,
            gso,
            &self.metrics.offload,
        );
        self.metrics.drop(DropReason::SendError, refused);
    }

    /// Peers → TUN, until stopped.
    pub fn receive_loop(self) {
        let rx = self.metrics.direction("rx");
        let messages = if self.batched { RECEIVE_MESSAGES } else { 1 };
        let mut busy = BusyPoll::new(self.busy_poll);
        let mut buffers = vec![vec![0u8; RECV_BUFFER]; messages];
        let mut incoming: Vec<Incoming> = Vec::with_capacity(messages);
        let mut coalescer = Coalescer::new(self.vnet);
        let socket = self.socket.clone();
        while !self.stop.is_set() {
            if let Err(e) = socket.receive(&mut buffers, &mut incoming) {
                if !would_block(&e) {
                    tracing::warn!(error = %e, "receiving UDP");
                }
                busy.idle(socket.fd(), &self.stop);
                continue;
            }
            let mut counts = ReceiveCounts::default();
            let table = self.peers.load();
            let mut tun_errors = 0u64;
            let mut write_tun = |frame: &[u8]| {
                if write(&self.tun, frame).is_err() {
                    tun_errors += 1;
                }
            };
            for (message, buffer) in incoming.iter().zip(&buffers) {
                let data = &buffer[..message.len.min(buffer.len())];
                receive_train(
                    &table,
                    message,
                    data,
                    self.key.as_ref(),
                    &mut coalescer,
                    &mut counts,
                    &mut write_tun,
                );
            }
            coalescer.flush(&mut write_tun);
            drop(table);
            busy.moved(counts.packets as usize, Instant::now());
            rx.packets.inc_by(counts.packets);
            rx.bytes.inc_by(counts.bytes);
            rx.batch
                .observe((counts.packets + counts.malformed + counts.not_local) as f64);
            self.metrics
                .drop(DropReason::UnknownPeer, counts.unknown_peer);
            self.metrics.drop(DropReason::Malformed, counts.malformed);
            self.metrics.drop(DropReason::NotLocal, counts.not_local);
            self.metrics.drop(DropReason::BadTag, counts.bad_tag);
            self.metrics
                .drop(DropReason::SpoofedSource, counts.spoofed_source);
            self.metrics.drop(DropReason::TunError, tun_errors);
        }
    }
}

/// Checks one received train and hands its packets to the coalescer.
pub(crate) fn receive_train(
    table: &PeerTable,
    message: &Incoming,
    data: &[u8],
    key: Option<&DatagramKey>,
    coalescer: &mut Coalescer,
    counts: &mut ReceiveCounts,
    write_tun: &mut impl FnMut(&[u8]),
) {
    let segment = message.segment.max(1);
    if !table.is_peer(message.peer) {
        counts.unknown_peer += data.len().div_ceil(segment) as u64;
        return;
    }
    let mut last = LastAdmission::default();
    for datagram in data.chunks(segment) {
        let packet = match key {
            None => datagram,
            Some(key) => match key.verify(datagram) {
                Some(packet) => packet,
                None => {
                    counts.bad_tag += 1;
                    continue;
                }
            },
        };
        let layout = match Layout::parse(packet) {
            Ok(l) if l.total == packet.len() => l,
            _ => {
                counts.malformed += 1;
                continue;
            }
        };
        let (source, destination) = (layout.source(packet), layout.destination(packet));
        match last.admit(table, message.peer, source, destination) {
            Admission::Accepted => {}
            Admission::NotLocal => {
                counts.not_local += 1;
                continue;
            }
            Admission::SpoofedSource => {
                counts.spoofed_source += 1;
                continue;
            }
        }
        counts.packets += 1;
        counts.bytes += packet.len() as u64;
        coalescer.push(layout, packet, write_tun);
    }
}

/// Frames of one send round dropped before they became datagrams.
#[derive(Debug, Default)]
struct SendDrops {
    no_peer: u64,
    malformed: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReceiveCounts {
    pub packets: u64,
    pub bytes: u64,
    pub unknown_peer: u64,
    pub malformed: u64,
    pub not_local: u64,
    pub bad_tag: u64,
    pub spoofed_source: u64,
}
