//! A synchronous rtnetlink socket that dumps and that sends changes in batches.
//!
//! Batching is what makes a 5,000-peer program fast: many requests share one
//! `sendmsg`, only the last of each batch asks for an ACK, and the kernel
//! (which handles the messages of one send in order and always reports an
//! error, ACK or not) answers with that single ACK plus one message per failure.
//! `ip -batch` pays two system calls and a full round trip per object.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns::NetNs;

/// Requests per `sendmsg`.
const BATCH: usize = 512;
const RECV_BUFFER: usize = 4 << 20;

/// A failed request of a batch: its position and the kernel's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub index: usize,
    pub errno: i32,
}

pub struct RouteSocket {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RouteSocket {
    /// Opens a socket in `netns`.
    pub fn open(netns: &NetNs) -> io::Result<Self> {
        let socket = netns.run(|| -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.set_rx_buf_sz(RECV_BUFFER)?;
            socket.set_ext_ack(true).ok();
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        })??;
        Ok(Self {
            socket,
            seq: 1,
            buf: vec![0; 1 << 17],
        })
    }

    /// A full dump (`NLM_F_DUMP`) of one kind of object.
    pub fn dump(&mut self, request: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.next_seq();
        let mut message = NetlinkMessage::new(
            header(NLM_F_REQUEST | NLM_F_DUMP, seq),
            NetlinkPayload::InnerMessage(request),
        );
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            let done = self.receive(|msg| match msg.payload {
                NetlinkPayload::InnerMessage(inner) if msg.header.sequence_number == seq => {
                    replies.push(inner);
                    Ok(false)
                }
                NetlinkPayload::Done(_) if msg.header.sequence_number == seq => Ok(true),
                NetlinkPayload::Error(e) if msg.header.sequence_number == seq => {
                    Err(io::Error::from_raw_os_error(-e.raw_code()))
                }
                _ => Ok(false),
            })?;
            if done {
                return Ok(replies);
            }
        }
    }

    /// Sends every request (with its `NLM_F_*` flags, `NLM_F_REQUEST` added),
    /// in order, and returns the ones the kernel refused.
    pub fn batch(&mut self, requests: Vec<(RouteNetlinkMessage, u16)>) -> io::Result<Vec<Failure>> {
        let mut failures = Vec::new();
        let mut start = 0;
        let mut requests = requests.into_iter().peekable();
        while requests.peek().is_some() {
            let chunk: Vec<_> = requests.by_ref().take(BATCH).collect();
            let first_seq = self.seq;
            let mut out = Vec::with_capacity(chunk.len() * 128);
            let last = chunk.len() - 1;
            for (i, (request, flags)) in chunk.into_iter().enumerate() {
                let ack = if i == last { NLM_F_ACK } else { 0 };
                let seq = self.next_seq();
                let mut message = NetlinkMessage::new(
                    header(NLM_F_REQUEST | flags | ack, seq),
                    NetlinkPayload::InnerMessage(request),
                );
                message.finalize();
                let at = out.len();
                out.resize(at + message.buffer_len(), 0);
                message.serialize(&mut out[at..]);
            }
            let last_seq = self.seq.wrapping_sub(1);
            self.socket.send(&out, 0)?;
            loop {
                let done = self.receive(|msg| {
                    let seq = msg.header.sequence_number;
                    if let NetlinkPayload::Error(e) = &msg.payload {
                        if e.code.is_some()
                            && seq.wrapping_sub(first_seq) <= last_seq.wrapping_sub(first_seq)
                        {
                            failures.push(Failure {
                                index: start + seq.wrapping_sub(first_seq) as usize,
                                errno: -e.raw_code(),
                            });
                        }
                        return Ok(seq == last_seq);
                    }
                    Ok(false)
                })?;
                if done {
                    break;
                }
            }
            start += (last_seq.wrapping_sub(first_seq) + 1) as usize;
        }
        Ok(failures)
    }

    /// Reads one datagram and hands each message in it to `f`; true once `f` says so.
    fn receive(
        &mut self,
        mut f: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut offset = 0;
        let mut finished = false;
        while offset < n {
            let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = message.header.length as usize;
            finished |= f(message)?;
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
        Ok(finished)
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1).max(1);
        seq
    }
}

fn header(flags: u16, seq: u32) -> NetlinkHeader {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    header
}
