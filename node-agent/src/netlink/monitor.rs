//! Drift detection: a netlink socket subscribed to link, address, route and
//! neighbour notifications. Deletions and changes of Tartan's objects are
//! turned into events so the agent repairs them at once, without waiting for
//! the periodic full resync.

use std::io;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns::NetNs;

// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// What changed, coarsely: enough to decide whether a repair is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    Link,
    Address,
    Route,
    Neighbour,
    /// Notifications were lost (ENOBUFS): only a full resync is safe.
    Overrun,
}

pub struct Monitor {
    socket: Socket,
    buf: Vec<u8>,
}

impl Monitor {
    pub fn open(netns: &NetNs) -> io::Result<Self> {
        let socket = netns.run(|| -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind(&SocketAddr::new(0, 0))?;
            for group in [
                RTNLGRP_LINK,
                RTNLGRP_NEIGH,
                RTNLGRP_IPV4_IFADDR,
                RTNLGRP_IPV4_ROUTE,
                RTNLGRP_IPV6_IFADDR,
                RTNLGRP_IPV6_ROUTE,
            ] {
                socket.add_membership(group)?;
            }
            socket.set_rx_buf_sz(8 << 20)?;
            Ok(socket)
        })??;
        Ok(Self {
            socket,
            buf: vec![0; 1 << 17],
        })
    }

    /// Blocks until the next datagram and returns the deletions and changes in it.
    pub fn next_events(&mut self) -> io::Result<Vec<(Change, RouteNetlinkMessage)>> {
        let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {
                return Ok(vec![(
                    Change::Overrun,
                    RouteNetlinkMessage::GetLink(Default::default()),
                )]);
            }
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < n {
            let Ok(message) =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
            else {
                break;
            };
            let len = message.header.length as usize;
            if let NetlinkPayload::InnerMessage(inner) = message.payload {
                let change = match &inner {
                    RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => {
                        Some(Change::Link)
                    }
                    RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
                        Some(Change::Address)
                    }
                    RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
                        Some(Change::Route)
                    }
                    RouteNetlinkMessage::NewNeighbour(_) | RouteNetlinkMessage::DelNeighbour(_) => {
                        Some(Change::Neighbour)
                    }
                    _ => None,
                };
                if let Some(change) = change {
                    out.push((change, inner));
                }
            }
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
        }
        Ok(out)
    }
}
