//! The system calls both TUN datapaths (udp and wireguard) loop on: reads and
//! writes of one frame, and a short `poll` so an idle loop sees a stop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::socket::Outgoing;

pub const IDLE_POLL_MS: i32 = 200;

/// A datapath's stop: a flag its loops check, and an eventfd every wait
/// also polls, so a stop is seen at once. A loop that lingered would hold
/// its TUN queue open unread: what the kernel put in it would be lost at
/// the close, where a queue closed at once leaves the next packets to wait
/// in the kernel for the datapath that replaces it.
pub struct Stop {
    flag: AtomicBool,
    wake: OwnedFd,
}

impl Stop {
    pub fn new() -> io::Result<Arc<Stop>> {
        // SAFETY: eventfd(2) has no memory arguments; the fd is owned below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Stop {
            flag: AtomicBool::new(false),
            // SAFETY: `raw` is a fresh descriptor nobody else owns.
            wake: unsafe { OwnedFd::from_raw_fd(raw) },
        }))
    }

    pub fn stop(&self) {
        self.flag.store(true, Ordering::Relaxed);
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer; it stays readable from now on.
        unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }
}

/// Waits until `fd` is ready for `events`, the datapath stops, or the idle
/// timeout passes.
pub fn wait(fd: &OwnedFd, events: libc::c_short, stop: &Stop) {
    let mut polls = [
        libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: two valid pollfds, count 2.
    unsafe { libc::poll(polls.as_mut_ptr(), 2, IDLE_POLL_MS) };
}

pub fn wait_readable(fd: &OwnedFd, stop: &Stop) {
    wait(fd, libc::POLLIN, stop);
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

pub fn wait_writable(fd: &OwnedFd, stop: &Stop) {
    wait(fd, libc::POLLOUT, stop);
}
