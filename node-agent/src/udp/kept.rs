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
use std::sync::Arc;

use super::Features;
use super::socket::UdpSocket;
use super::tun::{self, Tun, TunFeatures};
use crate::keeper::{Keeper, Kept};
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
        Ok(None) => return None,
        Err(e) => {
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
            tracing::info!(
                device,
                queues = taken.0.queues.len(),
                "took the datapath back from the keeper"
            );
            Some(taken)
        }
        Err(why) => {
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
}

impl Handover {
    /// Hands duplicates of the queues and sockets to the keeper, in place of
    /// anything it held for the device.
    pub fn hand_over(&self) {
        let fds: Vec<&OwnedFd> = (self.queues.iter().map(|q| &**q))
            .chain(self.sockets.iter().map(|s| s.fd()))
            .collect();
        let meta = meta(self.wanted, &self.features);
        if let Err(e) = self.keeper.put(&self.device, &meta, &fds) {
            tracing::warn!(error = %e, device = %self.device, "the datapath keeper: a restart will drop traffic");
        }
    }

    /// Hands the queues and sockets over again if the keeper lost them.
    pub fn renew(&self) {
        match self.keeper.get(&self.device) {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::info!(device = %self.device, "the datapath keeper holds nothing: handing over again");
                self.hand_over();
            }
            Err(e) => tracing::warn!(error = %e, device = %self.device, "the datapath keeper"),
        }
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
        tracing::warn!(error = %e, device, "the datapath keeper: could not drop a datapath");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Features {
        Features {
            tun: TunFeatures {
                vnet_hdr: true,
                tso: true,
                uso: false,
                queues: 2,
            },
            gso: true,
            gro: true,
        }
    }

    const HERE: Here = Here {
        netns: 1,
        cookie: 1,
    };

    const WANTED: Wanted = Wanted {
        port: 51820,
        queues: 2,
        offloads: true,
    };

    #[test]
    fn the_meta_round_trips() {
        let text = meta(WANTED, &features());
        assert_eq!(
            text,
            "v1 port=51820 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1 gro=1"
        );
        let (wanted, granted) = parse_meta(&text).expect("parses");
        assert_eq!((wanted, granted), (WANTED, features()));
    }

    #[test]
    fn another_version_or_a_missing_field_is_unusable() {
        for text in [
            "v2 port=51820 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1 gro=1",
            "v1 port=51820 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1",
            "v1 port=70000 queues=2 offloads=1 vnet=1 tso=1 uso=0 attached=2 gso=1 gro=1",
            "v1 port=x",
        ] {
            assert!(matches!(parse_meta(text), Err(Unusable::Meta(_))), "{text}");
        }
    }

    #[test]
    fn descriptors_opened_otherwise_or_miscounted_are_unusable() {
        let other = Wanted {
            port: 8472,
            ..WANTED
        };
        let kept = Kept {
            meta: meta(other, &features()),
            fds: Vec::new(),
        };
        let error = adopt("tartan-wg0", WANTED, HERE, kept)
            .map(|_| ())
            .expect_err("port");
        assert!(matches!(error, Unusable::Other { .. }), "{error}");
        let (a, b) = nix::unistd::pipe().expect("pipe");
        let kept = Kept {
            meta: meta(WANTED, &features()),
            fds: vec![a, b],
        };
        let error = adopt("tartan-wg0", WANTED, HERE, kept)
            .map(|_| ())
            .expect_err("count");
        assert!(
            matches!(error, Unusable::Count { got: 2, queues: 2 }),
            "{error}"
        );
    }

    #[test]
    fn a_keeper_that_lost_what_it_held_gets_it_again_at_the_next_renewal() {
        let dir = std::env::temp_dir().join(format!("tartan-renew-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("keeper.sock");
        let serving = crate::keeper::Serving::start(&path).expect("the keeper listens");
        let (queue, _other_end) = nix::unistd::pipe().expect("pipe");
        let socket = UdpSocket::bind(0, false).expect("a socket");
        let handover = Handover {
            keeper: Keeper::at(&path),
            device: "tartan0".into(),
            wanted: WANTED,
            features: Features {
                tun: TunFeatures {
                    queues: 1,
                    ..features().tun
                },
                ..features()
            },
            queues: vec![Arc::new(queue)],
            sockets: vec![Arc::new(socket)],
        };
        // The keeper started after the datapath: it holds nothing yet.
        handover.renew();
        let kept = handover.keeper.get("tartan0").expect("get").expect("kept");
        assert_eq!(kept.fds.len(), 2);
        assert!(kept.meta.contains("attached=1"), "{}", kept.meta);
        handover.retire();
        assert!(handover.keeper.get("tartan0").expect("get").is_none());
        serving.stop().expect("served");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_descriptor_that_is_no_tun_queue_is_unusable() {
        let pipes: Vec<OwnedFd> = (0..2)
            .flat_map(|_| {
                let (a, b) = nix::unistd::pipe().expect("pipe");
                [a, b]
            })
            .collect();
        let kept = Kept {
            meta: meta(WANTED, &features()),
            fds: pipes,
        };
        let error = adopt("tartan-wg0", WANTED, HERE, kept)
            .map(|_| ())
            .expect_err("pipes");
        assert!(matches!(error, Unusable::Queue(_)), "{error}");
    }
}
