//! The system calls both TUN datapaths (udp and wireguard) loop on: reads and
//! writes of one frame, and a short `poll` so an idle loop sees a stop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus::IntGaugeVec;

use super::socket::{Outgoing, UdpSocket};

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

/// A datapath's threads under one [`Stop`]: stopped and joined when
/// dropped, so an engine whose start fails halfway leaves nothing running.
pub struct Threads {
    stop: Arc<Stop>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    pub fn new(stop: Arc<Stop>) -> Threads {
        Threads {
            stop,
            handles: Vec::new(),
        }
    }

    pub fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let handle = std::thread::Builder::new().name(name).spawn(f)?;
        self.handles.push(handle);
        Ok(())
    }

    /// Signals the stop and waits for every thread.
    pub fn stop(&mut self) {
        self.stop.stop();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
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

/// Sends every message over `bytes`, waiting while the socket is full. When
/// the path refuses GSO trains (EIO), the rest go one datagram per message
/// from then on and the `udp_gso` gauge of `offload` drops to 0. A message
/// the kernel refuses is skipped: returns how many datagrams that lost.
pub fn send_all(
    socket: &UdpSocket,
    stop: &Stop,
    bytes: &[u8],
    messages: &mut Vec<Outgoing>,
    gso: &mut bool,
    offload: &IntGaugeVec,
) -> u64 {
    let mut sent = 0;
    let mut refused = 0;
    while sent < messages.len() {
        match socket.send(bytes, &messages[sent..]) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => wait_writable(socket.fd(), stop),
            Err(e) if *gso && e.raw_os_error() == Some(libc::EIO) => {
                tracing::warn!(error = %e, "UDP GSO send failed; falling back to one datagram per packet");
                offload.with_label_values(&["udp_gso"]).set(0);
                *gso = false;
                let rest = split(&messages[sent..]);
                messages.truncate(sent);
                messages.extend(rest);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sending a batch of datagrams");
                refused += messages[sent].datagrams() as u64;
                sent += 1;
            }
        }
    }
    refused
}

/// How long a loop keeps polling by default after a round of a stream.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);
/// Rounds with traffic closer together than this are a stream (a TCP
/// transfer, its ACKs); a ping every 10 ms is not, and never makes a loop
/// poll.
const STREAM_GAP: Duration = Duration::from_millis(1);

/// Whether a loop that found nothing to do polls again or sleeps. After a
/// round of a stream it polls (yielding the core to anything runnable) for
/// `budget`: the stream's next packets come within microseconds, and
/// catching them without sleeping saves a wake-up on both sides, which is a
/// cross-core interrupt (and, in a VM, an exit). Traffic that is no stream
/// finds the loop asleep, as it always did; a budget of zero turns polling
/// off.
#[derive(Debug, Clone)]
pub struct BusyPoll {
    budget: Duration,
    /// The last round that moved packets.
    last_traffic: Option<Instant>,
    /// Polling until then.
    poll_until: Option<Instant>,
}

impl BusyPoll {
    pub fn new(budget: Duration) -> BusyPoll {
        BusyPoll {
            budget,
            last_traffic: None,
            poll_until: None,
        }
    }

    /// Records a round that moved `packets`.
    pub fn moved(&mut self, packets: usize, now: Instant) {
        if packets == 0 || self.budget.is_zero() {
            return;
        }
        let stream = self
            .last_traffic
            .is_some_and(|at| now.saturating_duration_since(at) < STREAM_GAP);
        if stream {
            self.poll_until = Some(now + self.budget);
        }
        self.last_traffic = Some(now);
    }

    /// For a round that found nothing: `true` to poll again, `false` to sleep.
    pub fn keep_polling(&mut self, now: Instant) -> bool {
        match self.poll_until {
            Some(until) if now < until => true,
            _ => {
                self.poll_until = None;
                false
            }
        }
    }

    /// An empty round: yields the core while polling, else waits until
    /// `fd` is readable (or the stop).
    pub fn idle(&mut self, fd: &OwnedFd, stop: &Stop) {
        if self.keep_polling(Instant::now()) {
            std::thread::yield_now();
        } else {
            wait_readable(fd, stop);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_only_within_the_budget_after_rounds_of_a_stream() {
        let start = Instant::now();
        let at = |us: u64| start + Duration::from_micros(us);
        let mut poll = BusyPoll::new(Duration::from_micros(50));
        assert!(!poll.keep_polling(at(0)), "no traffic yet: sleep");
        poll.moved(1, at(0));
        assert!(!poll.keep_polling(at(1)), "one round is no stream");
        poll.moved(45, at(10_000));
        assert!(
            !poll.keep_polling(at(10_001)),
            "nor are rounds 10 ms apart (a ping)"
        );
        poll.moved(2, at(10_200));
        assert!(poll.keep_polling(at(10_201)), "200 µs apart: a stream");
        assert!(poll.keep_polling(at(10_249)));
        assert!(!poll.keep_polling(at(10_250)), "the budget is spent");
        assert!(
            !poll.keep_polling(at(10_260)),
            "and stays spent until the stream's next round"
        );
        poll.moved(0, at(10_300));
        assert!(
            !poll.keep_polling(at(10_301)),
            "an empty round is no traffic"
        );
        poll.moved(1, at(10_400));
        assert!(poll.keep_polling(at(10_420)));
    }

    #[test]
    fn a_zero_budget_never_polls() {
        let start = Instant::now();
        let mut poll = BusyPoll::new(Duration::ZERO);
        poll.moved(64, start);
        poll.moved(64, start + Duration::from_micros(5));
        assert!(!poll.keep_polling(start + Duration::from_micros(6)));
    }
}
