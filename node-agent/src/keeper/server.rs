//! The keeper's side: a store of descriptors by device, and the loop that
//! answers one request per connection.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

use super::protocol::{receive, send};
use super::{KeeperError, Kept, Reply, Request};

/// How often the loop looks at its stop flag.
const STOP_POLL_MS: libc::c_int = 200;

/// What the keeper holds, by device name.
#[derive(Debug, Default)]
pub struct Store {
    kept: BTreeMap<String, Kept>,
}

impl Store {
    /// Answers `request`; `fds` came with it. The descriptors of the reply
    /// are duplicates: the store keeps its own.
    pub fn answer(
        &mut self,
        request: Request,
        fds: Vec<OwnedFd>,
    ) -> std::io::Result<(Reply, Vec<OwnedFd>)> {
        match request {
            Request::Get { device } => match self.kept.get(&device) {
                Some(kept) => {
                    let copies = kept
                        .fds
                        .iter()
                        .map(|fd| fd.try_clone())
                        .collect::<std::io::Result<Vec<_>>>()?;
                    let meta = kept.meta.clone();
                    Ok((Reply::Kept { meta }, copies))
                }
                None => Ok((Reply::None, Vec::new())),
            },
            Request::Put { device, meta } => {
                tracing::info!(%device, %meta, descriptors = fds.len(), "keeping");
                self.kept.insert(device, Kept { meta, fds });
                Ok((Reply::Ok, Vec::new()))
            }
            Request::Drop { device } => {
                if self.kept.remove(&device).is_some() {
                    tracing::info!(%device, "no longer keeping");
                }
                Ok((Reply::Ok, Vec::new()))
            }
        }
    }

    pub fn devices(&self) -> impl Iterator<Item = &str> {
        self.kept.keys().map(String::as_str)
    }
}

/// A keeper's socket, bound and listening.
pub struct Listener {
    path: PathBuf,
    fd: OwnedFd,
}

impl Listener {
    /// Listens on `path` (a stale socket file there is replaced; the new
    /// one is mode 0600): clients may connect once this returns.
    pub fn bind(path: &Path) -> Result<Listener, KeeperError> {
        let io = |source| KeeperError::Io {
            path: path.to_path_buf(),
            source,
        };
        let io_error = |e: std::io::Error| io(nix::Error::from_raw(e.raw_os_error().unwrap_or(0)));
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io)?;
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(io_error(e));
        }
        socket::bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(io)?).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_error)?;
        socket::listen(&fd, Backlog::new(16).map_err(io)?).map_err(io)?;
        Ok(Listener {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// Answers requests until `stop` is set; what it held, for the caller
    /// to close. Only root and this process's own user may talk to it.
    pub fn serve(self, stop: &AtomicBool) -> Result<Store, KeeperError> {
        let io = |source| KeeperError::Io {
            path: self.path.clone(),
            source,
        };
        let mut store = Store::default();
        while !stop.load(Ordering::Relaxed) {
            let mut ready = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: polls one pollfd that lives across the call.
            match unsafe { libc::poll(&mut ready, 1, STOP_POLL_MS) } {
                0 => continue,
                n if n < 0 => match nix::Error::last() {
                    nix::Error::EINTR => continue,
                    e => return Err(io(e)),
                },
                _ => {}
            }
            let raw = match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => raw,
                Err(nix::Error::EINTR | nix::Error::EAGAIN | nix::Error::ECONNABORTED) => continue,
                Err(e) => return Err(io(e)),
            };
            // SAFETY: accept4 returned a new descriptor nobody else owns.
            let connection = unsafe { OwnedFd::from_raw_fd(raw) };
            if let Err(e) = handle(&mut store, &connection) {
                tracing::warn!(error = %e, "a datapath keeper request failed");
            }
        }
        Ok(store)
    }
}

/// A keeper answering in a thread of this process until stopped (or
/// dropped): the lab's keepers and the tests'.
pub struct Serving {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Store, KeeperError>>>,
}

impl Serving {
    /// Binds `path` here, so clients may connect once this returns, and
    /// answers in a thread.
    pub fn start(path: &Path) -> Result<Serving, KeeperError> {
        let listener = Listener::bind(path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || listener.serve(&stop))
        };
        Ok(Serving {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering; what it held, for the caller to close.
    pub fn stop(mut self) -> Result<Store, KeeperError> {
        self.join()
    }

    fn join(&mut self) -> Result<Store, KeeperError> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(served)) => served,
            Some(Err(_)) => Err(KeeperError::Panicked),
            None => Ok(Store::default()),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

fn handle(store: &mut Store, connection: &OwnedFd) -> Result<(), KeeperError> {
    let io = |source| KeeperError::Io {
        path: "the connection".into(),
        source,
    };
    // A client that connects and sends nothing must not hold up the next one.
    let timeout = nix::sys::time::TimeVal::new(super::REPLY_TIMEOUT.as_secs() as i64, 0);
    socket::setsockopt(connection, socket::sockopt::ReceiveTimeout, &timeout).map_err(io)?;
    let credentials =
        socket::getsockopt(connection, socket::sockopt::PeerCredentials).map_err(io)?;
    let own = nix::unistd::getuid().as_raw();
    if credentials.uid() != 0 && credentials.uid() != own {
        let reply = Reply::Error {
            why: format!("uid {} may not use this keeper", credentials.uid()),
        };
        return send(connection, reply.to_string().as_bytes(), &[]).map_err(io);
    }
    let (text, fds) = receive(connection).map_err(io)?;
    let (reply, out) = match text.parse::<Request>() {
        Ok(request) => store
            .answer(request, fds)
            .map_err(|e| io(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?,
        Err(e) => (Reply::Error { why: e.to_string() }, Vec::new()),
    };
    let raw: Vec<_> = out.iter().map(|fd| fd.as_raw_fd()).collect();
    send(connection, reply.to_string().as_bytes(), &raw).map_err(io)
}
