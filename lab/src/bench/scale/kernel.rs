//! The kernel as the referee of "programmed": a netlink route socket inside
//! an agent's namespace that counts the routes of Tartan's protocol (one per
//! peer) and asks whether the route to one peer's subnet is there.
//!
//! The lookup is one `RTM_GETROUTE` with `RTM_F_FIB_MATCH` (the kernel
//! returns the FIB entry that matches an address, as `ip route get fibmatch`
//! does), not a dump: polling every few milliseconds must not cost the
//! agents under test their CPU.

use std::fs::File;
use std::io;
use std::os::fd::AsFd as _;
use std::path::Path;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

/// The routing protocol number of the routes Tartan's agent installs.
pub const TARTAN_PROTOCOL: u8 = 84;

pub struct RouteProbe {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl RouteProbe {
    /// A socket in the namespace `ip netns add NAME` created: a socket
    /// keeps the namespace of the thread that opened it.
    pub fn open(netns: &str) -> io::Result<Self> {
        let file = File::open(Path::new("/var/run/netns").join(netns))?;
        let socket = std::thread::scope(|scope| {
            scope
                .spawn(move || -> io::Result<Socket> {
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(io::Error::from)?;
                    let mut socket = Socket::new(NETLINK_ROUTE)?;
                    socket.bind_auto()?;
                    socket.connect(&SocketAddr::new(0, 0))?;
                    Ok(socket)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
        })?;
        Ok(Self {
            socket,
            seq: 0,
            buf: vec![0; 1 << 17],
        })
    }

    /// How many IPv4 routes of `protocol` the main table holds.
    pub fn count(&mut self, protocol: u8) -> io::Result<usize> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        let mut count = 0;
        self.request(request, NLM_F_REQUEST | NLM_F_DUMP, |route| {
            count += usize::from(is_ours(route, protocol));
        })?;
        Ok(count)
    }

    /// Whether the kernel routes `subnet` by a route of `protocol` (a
    /// route to exactly that prefix, not a wider one that happens to match).
    pub fn has(&mut self, subnet: Ipv4Net, protocol: u8) -> io::Result<bool> {
        let mut request = RouteMessage::default();
        request.header.address_family = AddressFamily::Inet;
        request.header.destination_prefix_length = 32;
        request.header.flags = RouteFlags::FibMatch;
        request
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                subnet.network(),
            )));
        let mut found = false;
        let result = self.request(request, NLM_F_REQUEST, |route| {
            found |= is_ours(route, protocol) && destination(route) == Some(subnet);
        });
        match result {
            Ok(()) => Ok(found),
            // No route matches at all.
            Err(e)
                if [Errno::ENETUNREACH, Errno::ESRCH, Errno::EHOSTUNREACH]
                    .iter()
                    .any(|errno| e.raw_os_error() == Some(*errno as i32)) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one request and hands every route of the reply to `f`, until
    /// the dump's end, the single reply, or an error.
    fn request(
        &mut self,
        request: RouteMessage,
        flags: u16,
        mut f: impl FnMut(&RouteMessage),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut message = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(request)),
        );
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        self.socket.send(&out, 0)?;
        let dump = flags & NLM_F_DUMP != 0;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == seq {
                    match reply.payload {
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(route)) => {
                            f(&route);
                            if !dump {
                                return Ok(());
                            }
                        }
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(io::Error::from_raw_os_error(-e.raw_code()));
                        }
                        NetlinkPayload::Error(_) => return Ok(()),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
            }
        }
    }
}

fn is_ours(route: &RouteMessage, protocol: u8) -> bool {
    u8::from(route.header.protocol) == protocol && route.header.table == RouteHeader::RT_TABLE_MAIN
}

fn destination(route: &RouteMessage) -> Option<Ipv4Net> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(addr)) => {
            Ipv4Net::new(*addr, route.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn a_route_is_ours_by_protocol_and_main_table() {
        let mut route = RouteMessage::default();
        route.header.protocol = 84.into();
        route.header.table = RouteHeader::RT_TABLE_MAIN;
        route.header.destination_prefix_length = 24;
        route
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(10, 0, 3, 0),
            )));
        assert!(is_ours(&route, TARTAN_PROTOCOL));
        assert_eq!(destination(&route), "10.0.3.0/24".parse().ok());
        route.header.protocol = 2.into();
        assert!(!is_ours(&route, TARTAN_PROTOCOL), "a kernel route");
    }
}
