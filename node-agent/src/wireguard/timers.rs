//! The clock of every peer's state machine, on one thread: WireGuard's
//! timers (rekey, keepalive, retries, session expiry) every 250 ms, the
//! handshake rate limit reset every second, the handshake-age metrics, and
//! the first handshake with each new peer at once (so an agent that
//! restarted renegotiates in one round trip instead of when keys age out).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use boringtun::noise::errors::WireGuardError;

use super::metrics::{AGE_BANDS, Drop, WireguardMetrics, age_band};
use super::peers::{Factory, WgPeer, WgPeers};
use super::send::send_all;
use crate::udp::batch::SendBatch;
use crate::udp::segment::Segments;
use crate::udp::socket::UdpSocket;
use crate::udp::sys::Stop;

const TICK: Duration = Duration::from_millis(250);

pub struct Clock {
    pub peers: WgPeers,
    pub socket: Arc<UdpSocket>,
    pub factory: Arc<Factory>,
    pub metrics: WireguardMetrics,
    pub stop: Arc<Stop>,
    /// Peers to start a handshake with now.
    pub fresh: Receiver<Vec<Arc<WgPeer>>>,
}

impl Clock {
    pub fn run(self) {
        let mut buffer = vec![0u8; 256];
        let mut out = SendBatch::default();
        let mut last_reset = Instant::now();
        while !self.stop.is_set() {
            match self.fresh.recv_timeout(TICK) {
                Ok(peers) => {
                    for peer in &peers {
                        let mut tunn = peer.lock();
                        if let TunnResult::WriteToNetwork(init) =
                            tunn.format_handshake_initiation(&mut buffer, false)
                        {
                            queue(&mut out, peer, init);
                        }
                    }
                    self.flush(&mut out);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                // The engine is stopping (it dropped its end).
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.tick(&mut buffer, &mut out);
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.factory.rate_limiter.reset_count();
                last_reset = Instant::now();
            }
        }
    }

    /// Sends what the round queued (handshakes, keepalives), one datagram each.
    fn flush(&self, out: &mut SendBatch) {
        let (bytes, messages) = (&out.buffer, &mut out.messages);
        send_all(
            &self.socket,
            &self.stop,
            &self.metrics,
            bytes,
            messages,
            &mut false,
        );
        out.clear();
    }

    /// One round of timers over every peer, and the age metrics.
    fn tick(&self, buffer: &mut [u8], out: &mut SendBatch) {
        let table = self.peers.load_full();
        let mut bands = [0i64; AGE_BANDS.len()];
        let mut oldest = 0u64;
        for peer in table.peers() {
            let mut tunn = peer.lock();
            match tunn.update_timers(buffer) {
                TunnResult::WriteToNetwork(message) => queue(out, peer, message),
                TunnResult::Err(WireGuardError::ConnectionExpired) => {
                    // boringtun gave up on the handshake and emptied the queue.
                    self.metrics.count(Drop::HandshakeExpired, tunn.discarded());
                }
                TunnResult::Done => {}
                TunnResult::Err(e) => {
                    tracing::debug!(peer = %peer.node, error = ?e, "WireGuard timers")
                }
                _ => {}
            }
            let age = tunn.time_since_last_handshake();
            drop(tunn);
            if let Some(age) = age {
                oldest = oldest.max(age.as_secs());
            }
            let band = age_band(age);
            if let Some(i) = AGE_BANDS.iter().position(|b| *b == band) {
                bands[i] += 1;
            }
        }
        self.flush(out);
        for (band, n) in AGE_BANDS.iter().zip(bands) {
            self.metrics.peers.with_label_values(&[band]).set(n);
        }
        self.metrics.oldest_handshake.set(oldest as i64);
    }
}

fn queue(out: &mut SendBatch, peer: &WgPeer, message: &[u8]) {
    let from = out.buffer.len();
    out.buffer.extend_from_slice(message);
    let len = message.len();
    out.add(
        peer.endpoint,
        from,
        Segments {
            size: len,
            count: 1,
            total: len,
        },
        false,
    );
}
