//! The datapath keeper: a process beside the agent that holds duplicates of
//! the TUN queues and UDP sockets of the udp and wireguard datapaths, so they
//! stay open while the agent restarts.
//!
//! Why: the kernel drops every packet routed into a TUN device that no
//! process holds open (the device loses its carrier), and every datagram to a
//! port no socket is bound to. A persistent device alone therefore loses what
//! pods send while no agent runs. While the keeper holds the descriptors, the
//! TUN queues what pods send and the sockets queue what peers send; the next
//! agent takes the same descriptors back and carries on where the last one
//! stopped.
//!
//! The keeper runs no datapath and reads nothing: it stores descriptors by
//! device name and hands out duplicates. It speaks one request per
//! connection over a `SOCK_SEQPACKET` Unix socket, descriptors as
//! `SCM_RIGHTS`:
//!
//! ```text
//!   get <device>                  →  kept <meta> + descriptors  |  none
//!   put <device> <meta> + descriptors  →  ok
//!   drop <device>                 →  ok
//! ```
//!
//! `<meta>` is the client's description of the descriptors (see
//! [`crate::udp::kept`]); the keeper does not interpret it.

mod protocol;
mod server;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

pub use protocol::{Reply, Request};
pub use server::{Listener, Serving, Store};

use protocol::{receive, send};

/// The most descriptors one message carries: 64 queues, each a TUN queue
/// and a socket.
pub const MAX_DESCRIPTORS: usize = 128;
/// A keeper that does not answer within this is treated as absent.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("connecting to the datapath keeper at {path}: {source}")]
    Connect { path: PathBuf, source: nix::Error },
    #[error("talking to the datapath keeper at {path}: {source}")]
    Io { path: PathBuf, source: nix::Error },
    #[error("the datapath keeper at {path} sent {reply:?} to {request:?}")]
    Unexpected {
        path: PathBuf,
        request: String,
        reply: String,
    },
    #[error("a malformed keeper message: {0}")]
    Malformed(String),
    #[error("the datapath keeper's thread panicked")]
    Panicked,
}

/// Descriptors the keeper held, and what they are.
#[derive(Debug)]
pub struct Kept {
    pub meta: String,
    pub fds: Vec<OwnedFd>,
}

/// What a datapath and the keeper did, as `tartan_agent_datapath_keeper_total`
/// counts it: an operator sees whether a restart or an upgrade kept the
/// queues (`taken_back`) or opened them afresh, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A starting datapath took the queues and sockets back.
    TakenBack,
    /// The keeper held nothing for the device: opened afresh.
    NothingKept,
    /// The keeper held descriptors this agent could not use (another
    /// namespace, device or layout): closed, opened afresh.
    Refused,
    /// The keeper now holds the datapath's duplicates.
    HandedOver,
    /// A round trip to the keeper failed (not running, or not answering).
    Unreachable,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::TakenBack,
        Event::NothingKept,
        Event::Refused,
        Event::HandedOver,
        Event::Unreachable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Event::TakenBack => "taken_back",
            Event::NothingKept => "nothing_kept",
            Event::Refused => "refused",
            Event::HandedOver => "handed_over",
            Event::Unreachable => "unreachable",
        }
    }
}

/// See [`Keeper::socket_identity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketIdentity {
    inode: (u64, u64),
    changed: (i64, i64),
}

/// The agent's side: where the keeper listens, and where what happened is
/// counted.
#[derive(Debug, Clone)]
pub struct Keeper {
    path: PathBuf,
    events: Option<prometheus::IntCounterVec>,
}

impl Keeper {
    pub fn at(path: impl Into<PathBuf>) -> Keeper {
        Keeper {
            path: path.into(),
            events: None,
        }
    }

    /// This client, counting its [`Event`]s in `events` (labelled `event`).
    pub fn counted(self, events: prometheus::IntCounterVec) -> Keeper {
        Keeper {
            events: Some(events),
            ..self
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn count(&self, event: Event) {
        if let Some(events) = &self.events {
            events.with_label_values(&[event.label()]).inc();
        }
    }

    /// Which socket file the keeper listens on: a keeper that restarted
    /// binds a new one. The inode alone is not enough (a file system reuses
    /// a freed one at once), its change time tells them apart. `None` while
    /// there is none.
    pub fn socket_identity(&self) -> Option<SocketIdentity> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(&self.path).ok()?;
        Some(SocketIdentity {
            inode: (meta.dev(), meta.ino()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Duplicates of what is kept for `device`, if anything.
    pub fn get(&self, device: &str) -> Result<Option<Kept>, KeeperError> {
        let request = Request::Get {
            device: device.to_string(),
        };
        match self.call(&request, &[])? {
            (Reply::Kept { meta }, fds) => Ok(Some(Kept { meta, fds })),
            (Reply::None, _) => Ok(None),
            (reply, _) => Err(self.unexpected(&request, &reply)),
        }
    }

    /// Has the keeper hold duplicates of `fds` for `device`, in place of
    /// anything it held for it.
    pub fn put(&self, device: &str, meta: &str, fds: &[&OwnedFd]) -> Result<(), KeeperError> {
        let request = Request::Put {
            device: device.to_string(),
            meta: meta.to_string(),
        };
        self.expect_ok(&request, fds)
    }

    /// Has the keeper close what it holds for `device`.
    pub fn forget(&self, device: &str) -> Result<(), KeeperError> {
        let request = Request::Drop {
            device: device.to_string(),
        };
        self.expect_ok(&request, &[])
    }

    fn expect_ok(&self, request: &Request, fds: &[&OwnedFd]) -> Result<(), KeeperError> {
        match self.call(request, fds)? {
            (Reply::Ok, _) => Ok(()),
            (reply, _) => Err(self.unexpected(request, &reply)),
        }
    }

    fn unexpected(&self, request: &Request, reply: &Reply) -> KeeperError {
        KeeperError::Unexpected {
            path: self.path.clone(),
            request: request.to_string(),
            reply: reply.to_string(),
        }
    }

    fn call(
        &self,
        request: &Request,
        fds: &[&OwnedFd],
    ) -> Result<(Reply, Vec<OwnedFd>), KeeperError> {
        let connect = |source| KeeperError::Connect {
            path: self.path.clone(),
            source,
        };
        let io = |source| KeeperError::Io {
            path: self.path.clone(),
            source,
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(connect)?;
        let address = UnixAddr::new(&self.path).map_err(connect)?;
        socket::connect(fd.as_raw_fd(), &address).map_err(connect)?;
        let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as i64, 0);
        socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &timeout).map_err(io)?;
        let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
        send(&fd, request.to_string().as_bytes(), &raw).map_err(io)?;
        let (text, fds) = receive(&fd).map_err(io)?;
        let reply = text.parse::<Reply>()?;
        Ok((reply, fds))
    }
}

#[cfg(test)]
mod tests;
