//! The UDP side: one socket per queue on the same port (`SO_REUSEPORT`; the
//! udp backend spreads a peer's flows over them by the inner packet, see
//! [`super::steer`]), sending many datagrams per
//! system call (`sendmmsg`, each message a UDP GSO train) and receiving many
//! (`recvmmsg`, each message a GRO'd train with its segment size).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Most segments the kernel accepts in one UDP GSO send.
pub const MAX_SEGMENTS: usize = 64;
/// Most payload bytes in one UDP send (64 KiB less the IPv4 and UDP headers).
pub const MAX_SEND: usize = 65507;
/// A received GRO train is at most one 64 KiB IP packet's worth.
pub const RECV_BUFFER: usize = 65536;
const SOCKET_BUFFER: libc::c_int = 4 << 20;

pub struct UdpSocket {
    fd: OwnedFd,
    pub gso: bool,
    pub gro: bool,
}

fn setsockopt(fd: &OwnedFd, level: i32, name: i32, value: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to one int and its size, as these options expect.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut raw: libc::sockaddr_in = unsafe { zeroed() };
    raw.sin_family = libc::AF_INET as libc::sa_family_t;
    raw.sin_port = addr.port().to_be();
    raw.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    raw
}

/// One message of a send batch: `len` bytes at `offset` of the batch buffer,
/// cut into `segment`-byte datagrams (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub peer: SocketAddrV4,
    pub offset: usize,
    pub len: usize,
    pub segment: usize,
}

impl Outgoing {
    pub fn datagrams(&self) -> usize {
        self.len.div_ceil(self.segment.max(1))
    }
}

/// One received message: `len` bytes from `peer`, in `segment`-byte datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incoming {
    pub peer: Ipv4Addr,
    pub len: usize,
    pub segment: usize,
}

impl UdpSocket {
    /// Binds `0.0.0.0:port` with `SO_REUSEPORT`; with `offloads`, GRO on
    /// and GSO used when the kernel has them.
    pub fn bind(port: u16, offloads: bool) -> io::Result<UdpSocket> {
        // SAFETY: socket(2) has no memory arguments; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            if setsockopt(&fd, libc::SOL_SOCKET, force, SOCKET_BUFFER).is_err() {
                let _ = setsockopt(&fd, libc::SOL_SOCKET, plain, SOCKET_BUFFER);
            }
        }
        let addr = sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        // SAFETY: binds to a valid sockaddr_in of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let gro = offloads && setsockopt(&fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        let gso = offloads && setsockopt(&fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        Ok(UdpSocket { fd, gso, gro })
    }

    /// A socket bound before, handed back by the keeper with what it was
    /// granted then; an error unless it is a UDP socket bound to `port`.
    pub fn adopt(fd: OwnedFd, port: u16, gso: bool, gro: bool) -> io::Result<UdpSocket> {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_in = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: getsockname writes at most `len` bytes into `addr`.
        let rc = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let bound = u16::from_be(addr.sin_port);
        if addr.sin_family != libc::AF_INET as libc::sa_family_t || bound != port {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a kept socket is bound to port {bound}, not {port}"),
            ));
        }
        Ok(UdpSocket { fd, gso, gro })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The cookie of the network namespace the socket was made in.
    pub fn netns_cookie(fd: &OwnedFd) -> io::Result<u64> {
        /// `SO_NETNS_COOKIE` (Linux 5.14), which libc does not name.
        const SO_NETNS_COOKIE: libc::c_int = 71;
        let mut cookie = 0u64;
        let mut len = size_of::<u64>() as libc::socklen_t;
        // SAFETY: writes at most `len` bytes into `cookie`.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_NETNS_COOKIE,
                (&mut cookie as *mut u64).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(cookie)
    }

    /// Sends `messages` (GSO trains when `segment < len`) in one `sendmmsg`;
    /// returns how many messages the kernel took.
    pub fn send(&self, buffer: &[u8], messages: &[Outgoing]) -> io::Result<usize> {
        const CMSG: usize = 32;
        let n = messages.len();
        let mut names: Vec<libc::sockaddr_in> = messages.iter().map(|m| sockaddr(m.peer)).collect();
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(n);
        let mut controls = vec![[0u8; CMSG]; n];
        // SAFETY: mmsghdr is plain data; all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for m in messages {
            let bytes = &buffer[m.offset..m.offset + m.len];
            iovs.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        for i in 0..n {
            let m = &messages[i];
            let hdr = &mut headers[i].msg_hdr;
            hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            if m.segment < m.len {
                hdr.msg_control = controls[i].as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size.
                hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
                // SAFETY: the control buffer is CMSG bytes, more than one
                // header plus a u16, and msg_control points at it.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<u16>(),
                        m.segment as u16,
                    );
                }
            }
        }
        // SAFETY: every header points at live buffers above, sized as declared.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), headers.as_mut_ptr(), n as u32, 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Receives up to `buffers.len()` messages without blocking.
    pub fn receive(&self, buffers: &mut [Vec<u8>], out: &mut Vec<Incoming>) -> io::Result<()> {
        const CMSG: usize = 64;
        out.clear();
        let n = buffers.len();
        // SAFETY: plain data; all-zero is valid.
        let mut names: Vec<libc::sockaddr_in> = (0..n).map(|_| unsafe { zeroed() }).collect();
        let mut iovs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        let mut controls = vec![[0u8; CMSG]; n];
        // SAFETY: plain data; all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { zeroed() }).collect();
        for i in 0..n {
            let hdr = &mut headers[i].msg_hdr;
            hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = controls[i].as_mut_ptr().cast();
            hdr.msg_controllen = CMSG as _;
        }
        // SAFETY: every header points at live buffers above, sized as declared.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                headers.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        for header in headers.iter().take(rc as usize) {
            let len = header.msg_len as usize;
            let mut segment = len;
            let hdr = &header.msg_hdr;
            // SAFETY: walks the control messages the kernel wrote, within msg_controllen.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                        let size =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                        if size > 0 {
                            segment = size as usize;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
                }
            }
            let name: &libc::sockaddr_in = &names[out.len()];
            out.push(Incoming {
                peer: Ipv4Addr::from(u32::from_be(name.sin_addr.s_addr)),
                len,
                segment,
            });
        }
        Ok(())
    }
}
