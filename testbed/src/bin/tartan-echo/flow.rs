//! `flow`: numbered datagrams at a steady rate and the tally of the answers,
//! each number counted once, so loss across a switch or restart is exact.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::udp_to;

/// A datagram of a flow: `flow <n>`.
pub(crate) fn flow_datagram(seq: u64) -> String {
    format!("flow {seq}")
}

/// The number a flow answer (`<hostname> flow <n>`) carries back.
pub(crate) fn flow_seq(answer: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(answer).ok()?;
    let mut words = text.split_whitespace().rev();
    let seq = words.next()?.parse().ok()?;
    (words.next()? == "flow").then_some(seq)
}

/// What a flow saw: each number counted once, answers to numbers never sent ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

pub(crate) fn tally(sent: u64, answers: impl IntoIterator<Item = u64>) -> Tally {
    let mut seen = vec![false; sent as usize];
    let mut received = 0;
    for seq in answers {
        if let Some(slot) = seen.get_mut(seq as usize)
            && !*slot
        {
            *slot = true;
            received += 1;
        }
    }
    Tally {
        sent,
        received,
        lost: sent - received,
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {} received {} lost {}",
            self.sent, self.received, self.lost
        )
    }
}

/// Sends `rate * seconds` numbered datagrams, evenly spaced, and counts the
/// answers that come back until `grace` after the last one (or all are in).
pub(crate) fn flow_udp(
    addr: SocketAddr,
    rate: u32,
    seconds: u32,
    grace: Duration,
) -> io::Result<Tally> {
    let socket = udp_to(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let receiver = socket.try_clone()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let listening = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                // Timeouts, and refusals while the path is down, are loss, not the end.
                if let Ok(len) = receiver.recv(&mut buf)
                    && let Some(seq) = flow_seq(&buf[..len])
                    && tx.send(seq).is_err()
                {
                    break;
                }
            }
        })
    };
    let total = u64::from(rate) * u64::from(seconds);
    let start = Instant::now();
    for seq in 0..total {
        let due = start + Duration::from_secs_f64(seq as f64 / f64::from(rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        // A send refused (an earlier ICMP unreachable) is a lost datagram.
        let _ = socket.send(flow_datagram(seq).as_bytes());
    }
    let mut answers = Vec::new();
    let deadline = Instant::now() + grace;
    while tally(total, answers.iter().copied()).received < total {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match rx.recv_timeout(left) {
            Ok(seq) => answers.push(seq),
            Err(_) => break,
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = listening.join();
    answers.extend(rx.try_iter());
    Ok(tally(total, answers))
}
