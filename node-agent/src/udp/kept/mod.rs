//! The TUN queues and sockets of a udp or wireguard datapath, through the
//! datapath keeper ([`crate::keeper`]): handed to it when opened, taken back
//! by the next agent after a restart, so nothing that arrived in between is
//! lost.
//!
//! What is taken back is checked before it is used: the meta must say it was
//! opened as this agent would open it, each queue must still be attached to
//! the device (a deleted device detaches them), each socket must be bound to
//! the port, and all must belong to this network namespace. Anything else is
//! dropped from the keeper and opened afresh.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use super::Features;
use super::socket::UdpSocket;
use super::tun::{self, Tun, TunFeatures};
use crate::keeper::{Event, Keeper, Kept, SocketIdentity};
use crate::netns::NetNs;

const VERSION: &str = "v1";

/// How a datapath asks for its descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub port: u16,
    pub queues: usize,
    pub offloads: bool,
}

/// Why kept descriptors are not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unusable {
    #[error("the keeper's meta {0:?} is not one this agent writes")]
    Meta(String),
    #[error("they were opened as {kept:?}, this agent wants {wanted:?}")]
    Other { kept: Wanted, wanted: Wanted },
    #[error("{got} descriptors for {queues} queues and their sockets")]
    Count { got: usize, queues: usize },
    #[error("a kept TUN queue: {0}")]
    Queue(io::Error),
    #[error("a kept TUN queue is attached to {name:?} (virtio header {vnet})")]
    Device { name: String, vnet: bool },
    #[error("a kept queue or socket belongs to another network namespace")]
    Elsewhere,
    #[error("this network namespace, to compare with: {0}")]
    Namespace(io::Error),
    #[error("a kept socket: {0}")]
    Socket(io::Error),
}

fn flag(value: bool) -> u8 {
    u8::from(value)
}

/// The meta the keeper stores beside the descriptors.
fn meta(wanted: Wanted, features: &Features) -> String {
    let t = &features.tun;
    format!(
        "{VERSION} port={} queues={} offloads={} vnet={} tso={} uso={} attached={} gso={} gro={}",
        wanted.port,
        wanted.queues,
        flag(wanted.offloads),
        flag(t.vnet_hdr),
        flag(t.tso),
        flag(t.uso),
        t.queues,
        flag(features.gso),
        flag(features.gro),
    )
}

fn parse_meta(text: &str) -> Result<(Wanted, Features), Unusable> {
    let bad = || Unusable::Meta(text.to_string());
    let mut words = text.split(' ');
    if words.next() != Some(VERSION) {
        return Err(bad());
    }
    let fields: BTreeMap<&str, usize> = words
        .map(|w| {
            w.split_once('=')
                .and_then(|(k, v)| Some((k, v.parse().ok()?)))
        })
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let number = |key: &str| fields.get(key).copied().ok_or_else(bad);
    let on = |key: &str| number(key).map(|v| v == 1);
    let wanted = Wanted {
        port: u16::try_from(number("port")?).map_err(|_| bad())?,
        queues: number("queues")?,
        offloads: on("offloads")?,
    };
    let features = Features {
        tun: TunFeatures {
            vnet_hdr: on("vnet")?,
            tso: on("tso")?,
            uso: on("uso")?,
            queues: number("attached")?,
        },
        gso: on("gso")?,
        gro: on("gro")?,
    };
    Ok((wanted, features))
}

/// The network namespace the datapath runs in, as a TUN queue and as a
/// socket name theirs: what kept descriptors must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Here {
    pub netns: u64,
    pub cookie: u64,
}

impl Here {
    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Here> {
        use std::os::unix::fs::MetadataExt;
        let netns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
        // Unbound: only its namespace is asked.
        let probe = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Datagram,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        let cookie = UdpSocket::netns_cookie(&probe)?;
        Ok(Here { netns, cookie })
    }
}

/// Checks what the keeper held for `device` and makes a datapath's queues
/// and sockets of it.
pub(crate) fn adopt(
    device: &str,
    wanted: Wanted,
    here: Here,
    kept: Kept,
) -> Result<(Tun, Vec<UdpSocket>), Unusable> {
    let (was, features) = parse_meta(&kept.meta)?;
    if was != wanted {
        return Err(Unusable::Other { kept: was, wanted });
    }
    let queues = features.tun.queues;
    if queues == 0 || kept.fds.len() != 2 * queues {
        return Err(Unusable::Count {
            got: kept.fds.len(),
            queues,
        });
    }
    let mut fds = kept.fds;
    let socket_fds = fds.split_off(queues);
    for fd in &fds {
        let (name, vnet) = tun::attached(fd).map_err(Unusable::Queue)?;
        if name != device || vnet != features.tun.vnet_hdr {
            return Err(Unusable::Device { name, vnet });
        }
        if tun::device_netns(fd).map_err(Unusable::Queue)? != here.netns {
            return Err(Unusable::Elsewhere);
        }
    }
    for fd in &socket_fds {
        if UdpSocket::netns_cookie(fd).map_err(Unusable::Socket)? != here.cookie {
            return Err(Unusable::Elsewhere);
        }
    }
    let sockets = socket_fds
        .into_iter()
        .map(|fd| UdpSocket::adopt(fd, wanted.port, features.gso, features.gro))
        .collect::<io::Result<Vec<_>>>()
        .map_err(Unusable::Socket)?;
    let tun = Tun {
        queues: fds,
        features: features.tun,
    };
    Ok((tun, sockets))
}

/// What the keeper holds for `device`, when it is usable; anything else
/// there is dropped. A keeper that does not answer means opening afresh.
pub(crate) fn take_back(
    keeper: &Keeper,
    netns: &NetNs,
    device: &str,
    wanted: Wanted,
) -> Option<(Tun, Vec<UdpSocket>)> {
    let kept = match keeper.get(device) {
        Ok(Some(kept)) => kept,
        Ok(None) => {
            keeper.count(Event::NothingKept);
            return None;
        }
        Err(e) => {
            keeper.count(Event::Unreachable);
            tracing::warn!(error = %e, device, "the datapath keeper: opening afresh");
            return None;
        }
    };
    let adopted = match netns.run(Here::current) {
        Ok(Ok(here)) => adopt(device, wanted, here, kept),
        Ok(Err(e)) | Err(e) => Err(Unusable::Namespace(e)),
    };
    match adopted {
        Ok(taken) => {
            keeper.count(Event::TakenBack);
            tracing::info!(
                device,
                queues = taken.0.queues.len(),
                "took the datapath back from the keeper"
            );
            Some(taken)
        }
        Err(why) => {
            keeper.count(Event::Refused);
            tracing::warn!(%why, device, "not using what the datapath keeper held");
            forget(keeper, device);
            None
        }
    }
}

/// A running datapath's side of the keeper: what it handed over, kept so it
/// can hand it over again to a keeper that started after it, or restarted.
pub(crate) struct Handover {
    pub keeper: Keeper,
    pub device: String,
    pub wanted: Wanted,
    pub features: Features,
    pub queues: Vec<Arc<OwnedFd>>,
    pub sockets: Vec<Arc<UdpSocket>>,
    /// The keeper socket file last handed over to (or tried).
    pub seen: Mutex<Option<SocketIdentity>>,
}

impl Handover {
    /// Hands duplicates of the queues and sockets to the keeper, in place of
    /// anything it held for the device.
    pub fn hand_over(&self) {
        let fds: Vec<&OwnedFd> = (self.queues.iter().map(|q| &**q))
            .chain(self.sockets.iter().map(|s| s.fd()))
            .collect();
        let meta = meta(self.wanted, &self.features);
        self.see();
        match self.keeper.put(&self.device, &meta, &fds) {
            Ok(()) => self.keeper.count(Event::HandedOver),
            Err(e) => {
                self.keeper.count(Event::Unreachable);
                tracing::warn!(error = %e, device = %self.device, "the datapath keeper: a restart will drop traffic");
            }
        }
    }

    /// Hands the queues and sockets over again if the keeper lost them.
    pub fn renew(&self) {
        self.see();
        match self.keeper.get(&self.device) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(device = %self.device, "the datapath keeper holds nothing: handing over again");
                self.hand_over();
            }
            Err(e) => {
                self.keeper.count(Event::Unreachable);
                tracing::warn!(error = %e, device = %self.device, "the datapath keeper");
            }
        }
    }

    /// Renews the hand-over when the keeper's socket is not the one last
    /// handed over to: a keeper whose pod was replaced binds a new socket
    /// and holds nothing, and an agent restart before the next resync would
    /// otherwise drop traffic. One `stat` while nothing changed.
    pub fn follow(&self) {
        let now = self.keeper.socket_identity();
        let seen = *self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && now != seen {
            self.renew();
        }
    }

    fn see(&self) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = self.keeper.socket_identity();
    }

    /// The datapath is gone for good: the keeper closes its copies.
    pub fn retire(&self) {
        forget(&self.keeper, &self.device);
    }
}

/// Has the keeper close what it holds for `device` (its datapath is gone
/// for good, or is about to be opened differently).
pub(crate) fn forget(keeper: &Keeper, device: &str) {
    if let Err(e) = keeper.forget(device) {
        keeper.count(Event::Unreachable);
        tracing::warn!(error = %e, device, "the datapath keeper: could not drop a datapath");
    }
}

#[cfg(test)]
mod tests;
