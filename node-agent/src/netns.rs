//! Network namespaces: the agent runs in the host's, the lab and the tests in
//! one per simulated node. Work that binds to a namespace (opening a netlink
//! socket, touching `/proc/sys/net`, starting `nft` or a CNI plugin) runs on a
//! short-lived thread that has joined it; sockets keep their namespace after.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetNs {
    /// The namespace this process runs in (production).
    Current,
    /// A named namespace, e.g. `/var/run/netns/tartan-lab-n1`.
    Path(PathBuf),
}

impl NetNs {
    /// The namespace `ip netns add NAME` created.
    pub fn named(name: &str) -> Self {
        NetNs::Path(Path::new("/var/run/netns").join(name))
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            NetNs::Current => None,
            NetNs::Path(p) => Some(p),
        }
    }

    /// Runs `f` inside this namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let Some(path) = self.path() else {
            return Ok(f());
        };
        let file = File::open(path)?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("thread in netns panicked")))
        })
    }

    /// Makes a child process start inside this namespace.
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> std::io::Result<std::process::Command> {
        let mut command = std::process::Command::new(program);
        if let Some(path) = self.path() {
            use std::os::unix::process::CommandExt;
            let file = File::open(path)?;
            // SAFETY: setns is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(move || {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
                });
            }
        }
        Ok(command)
    }
}
