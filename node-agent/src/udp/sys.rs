//! The system calls both TUN datapaths (udp and wireguard) loop on: reads and
//! writes of one frame, and a short `poll` so an idle loop sees a stop.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use super::socket::Outgoing;

pub const IDLE_POLL_MS: i32 = 200;

/// Waits until `fd` is ready for `events` or the idle timeout passes.
pub fn wait(fd: &OwnedFd, events: libc::c_short) {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut poll, 1, IDLE_POLL_MS) };
}

pub fn wait_readable(fd: &OwnedFd) {
    wait(fd, libc::POLLIN);
}

pub fn read(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reads at most buffer.len() bytes into the buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

pub fn write(fd: &OwnedFd, frame: &[u8]) -> io::Result<()> {
    // SAFETY: writes frame.len() bytes from the frame.
    let n = unsafe { libc::write(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn would_block(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// The same messages, one datagram each.
pub fn split(messages: &[Outgoing]) -> Vec<Outgoing> {
    messages
        .iter()
        .flat_map(|m| {
            (0..m.datagrams()).map(move |i| {
                let offset = m.offset + i * m.segment;
                Outgoing {
                    peer: m.peer,
                    offset,
                    len: m.segment.min(m.offset + m.len - offset),
                    segment: m.segment,
                }
            })
        })
        .collect()
}

pub fn wait_writable(fd: &OwnedFd) {
    wait(fd, libc::POLLOUT);
}
