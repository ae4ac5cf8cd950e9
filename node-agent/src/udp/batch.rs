//! Groups the packets of one send round into UDP GSO trains: consecutive
//! packets to the same peer, all one size but the last, at most
//! [`MAX_SEGMENTS`] and [`MAX_SEND`] bytes per train.

use std::net::SocketAddrV4;

use super::segment::Segments;
use super::socket::{MAX_SEGMENTS, MAX_SEND, Outgoing};

#[derive(Debug, Default)]
pub struct SendBatch {
    /// The packets, end to end.
    pub buffer: Vec<u8>,
    pub messages: Vec<Outgoing>,
    /// Whether the last message may take more packets.
    open: bool,
    /// Packets in the batch.
    pub packets: usize,
}

impl SendBatch {
    pub fn clear(&mut self) {
        self.buffer.clear();
        self.messages.clear();
        self.open = false;
        self.packets = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Records `segments` just appended to `buffer` at `offset`, going to `peer`.
    /// `gso`: whether trains may hold more than one packet.
    pub fn add(&mut self, peer: SocketAddrV4, offset: usize, segments: Segments, gso: bool) {
        let mut at = offset;
        for i in 0..segments.count {
            let len = if i + 1 == segments.count {
                segments.total - segments.size * (segments.count - 1)
            } else {
                segments.size
            };
            self.push(peer, at, len, gso);
            at += len;
        }
        self.packets += segments.count;
    }

    fn push(&mut self, peer: SocketAddrV4, offset: usize, len: usize, gso: bool) {
        if gso
            && self.open
            && let Some(last) = self.messages.last_mut()
        {
            let fits = last.peer == peer
                && len <= last.segment
                && last.offset + last.len == offset
                && last.datagrams() < MAX_SEGMENTS
                && last.len + len <= MAX_SEND;
            if fits {
                last.len += len;
                self.open = len == last.segment;
                return;
            }
        }
        self.messages.push(Outgoing {
            peer,
            offset,
            len,
            segment: len,
        });
        self.open = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(last: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, last), 8285)
    }

    #[test]
    fn one_train_per_run_of_equal_packets_to_one_peer() {
        let mut batch = SendBatch::default();
        // A super-packet cut into 3 × 1000 + 1 × 500.
        let cut = Segments {
            size: 1000,
            count: 4,
            total: 3500,
        };
        batch.add(peer(2), 0, cut, true);
        // A short packet ended the train: the next one starts another.
        batch.add(
            peer(2),
            3500,
            Segments {
                size: 1000,
                count: 1,
                total: 1000,
            },
            true,
        );
        batch.add(
            peer(3),
            4500,
            Segments {
                size: 100,
                count: 1,
                total: 100,
            },
            true,
        );
        let trains: Vec<(u8, usize, usize, usize)> = batch
            .messages
            .iter()
            .map(|m| (m.peer.ip().octets()[3], m.offset, m.len, m.segment))
            .collect();
        assert_eq!(
            trains,
            vec![
                (2, 0, 3500, 1000),
                (2, 3500, 1000, 1000),
                (3, 4500, 100, 100)
            ]
        );
        assert_eq!(batch.packets, 6);
    }

    #[test]
    fn trains_respect_the_kernel_limits_and_gso_off() {
        let mut batch = SendBatch::default();
        let cut = Segments {
            size: 1400,
            count: 100,
            total: 140_000,
        };
        batch.add(peer(2), 0, cut, true);
        assert!(
            batch
                .messages
                .iter()
                .all(|m| m.len <= MAX_SEND && m.datagrams() <= MAX_SEGMENTS)
        );
        assert_eq!(batch.messages.iter().map(|m| m.len).sum::<usize>(), 140_000);
        let mut plain = SendBatch::default();
        plain.add(peer(2), 0, cut, false);
        assert_eq!(plain.messages.len(), 100);
    }
}
