//! The applier: reads what the kernel has, diffs it against the plan, and
//! sends only the difference, one batch per phase.

use std::collections::BTreeMap;
use std::io;

use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::errno::Errno;

use super::diff::{Op, diff};
use super::messages::request;
use super::observe::{self, Names, Observed};
use super::offload;
use super::socket::RouteSocket;
use crate::netns::NetNs;
use crate::plan::{DesiredState, is_tartan_device};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("{failed} of {total} kernel changes failed; first: {first}")]
    Kernel {
        failed: usize,
        total: usize,
        first: String,
    },
}

/// What one apply changed, by kind (`route`, `neighbour`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub changes: BTreeMap<&'static str, usize>,
    pub failures: Vec<(Op, Errno)>,
}

impl ApplyReport {
    pub fn total(&self) -> usize {
        self.changes.values().sum()
    }
}

pub struct Applier {
    netns: NetNs,
    socket: RouteSocket,
}

impl Applier {
    pub fn open(netns: NetNs) -> io::Result<Self> {
        let socket = RouteSocket::open(&netns)?;
        Ok(Self { netns, socket })
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// Everything of Tartan's the kernel has now (and every link, for indices).
    pub fn observe(&mut self) -> io::Result<Observed> {
        let mut observed = Observed {
            links: self.links()?,
            ..Default::default()
        };
        let names: Names = observed
            .links
            .values()
            .map(|l| (l.index, l.name.clone()))
            .collect();
        let ours = |i: &u32| names.get(i).is_some_and(|n| is_tartan_device(n));
        for message in self
            .socket
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
        {
            if let RouteNetlinkMessage::NewAddress(m) = message
                && ours(&m.header.index)
                && let Some((device, net)) = observe::parse_address(&m, &names)
            {
                observed.addresses.entry(device).or_default().insert(net);
            }
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut request = RouteMessage::default();
            request.header.address_family = family;
            for message in self.socket.dump(RouteNetlinkMessage::GetRoute(request))? {
                if let RouteNetlinkMessage::NewRoute(m) = message
                    && let Some(route) = observe::parse_route(&m, &names)
                {
                    observed.routes.insert(route.destination, route);
                }
            }
        }
        for family in [
            AddressFamily::Inet,
            AddressFamily::Inet6,
            AddressFamily::Bridge,
        ] {
            let mut request = NeighbourMessage::default();
            request.header.family = family;
            for message in self
                .socket
                .dump(RouteNetlinkMessage::GetNeighbour(request))?
            {
                let RouteNetlinkMessage::NewNeighbour(m) = message else {
                    continue;
                };
                if !ours(&m.header.ifindex) {
                    continue;
                }
                if family == AddressFamily::Bridge {
                    if let Some(entry) = observe::parse_fdb(&m, &names) {
                        observed
                            .fdb
                            .insert((entry.device.clone(), entry.mac), entry);
                    }
                } else if let Some(entry) = observe::parse_neighbour(&m, &names) {
                    observed
                        .neighbours
                        .insert((entry.device.clone(), entry.address), entry);
                }
            }
        }
        Ok(observed)
    }

    /// Makes the kernel match `desired`, changing only the difference.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, ApplyError> {
        let observed = self.observe()?;
        let ops = diff(desired, &observed);
        self.execute(ops, observed)
    }

    /// Sends `ops` phase by phase; device indices are re-read after devices change.
    pub fn execute(
        &mut self,
        ops: Vec<Op>,
        mut observed: Observed,
    ) -> Result<ApplyReport, ApplyError> {
        let mut report = ApplyReport::default();
        let total = ops.len();
        // Consecutive operations of one phase go out together; diff() ordered them.
        let mut batches: Vec<Vec<Op>> = Vec::new();
        for op in ops {
            match batches.last_mut() {
                Some(batch) if batch.last().is_some_and(|last| last.phase() == op.phase()) => {
                    batch.push(op)
                }
                _ => batches.push(vec![op]),
            }
        }
        for batch in batches {
            if batch.iter().any(|op| op.phase() <= 1) {
                observed.links = self.links()?;
            }
            self.send(batch, &observed, &mut report)?;
        }
        if let Some((op, errno)) = report.failures.first() {
            return Err(ApplyError::Kernel {
                failed: report.failures.len(),
                total,
                first: format!("{op:?}: {errno}"),
            });
        }
        Ok(report)
    }

    /// Only the links (indices and names), for a targeted repair.
    pub fn observe_links(&mut self) -> io::Result<Observed> {
        Ok(Observed {
            links: self.links()?,
            ..Default::default()
        })
    }

    fn links(&mut self) -> io::Result<BTreeMap<String, observe::ObservedLink>> {
        let mut links = BTreeMap::new();
        for message in self
            .socket
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        {
            if let RouteNetlinkMessage::NewLink(m) = message
                && let Some(link) = observe::parse_link(&m)
            {
                links.insert(link.name.clone(), link);
            }
        }
        Ok(links)
    }

    fn send(
        &mut self,
        ops: Vec<Op>,
        observed: &Observed,
        report: &mut ApplyReport,
    ) -> io::Result<()> {
        let index = |name: &str| observed.links.get(name).map(|l| l.index);
        let mut sent = Vec::with_capacity(ops.len());
        let mut requests = Vec::with_capacity(ops.len());
        for op in ops {
            if let Op::DisableTxChecksum { name } = &op {
                match self.netns.run(|| offload::disable_tx_checksum(name)) {
                    Ok(Ok(())) => *report.changes.entry(op.kind()).or_default() += 1,
                    Ok(Err(e)) | Err(e) => {
                        tracing::warn!(device = %name, error = %e, "turning off tx checksum offload")
                    }
                }
                continue;
            }
            match request(&op, index) {
                Some(r) => {
                    requests.push(r);
                    sent.push(op);
                }
                None => report.failures.push((op, Errno::ENODEV)),
            }
        }
        if requests.is_empty() {
            return Ok(());
        }
        let failures = self.socket.batch(requests)?;
        let mut failed = vec![false; sent.len()];
        for failure in failures {
            let errno = Errno::from_raw(failure.errno);
            let Some(op) = sent.get(failure.index) else {
                continue;
            };
            if harmless(op, errno) {
                continue;
            }
            failed[failure.index] = true;
            report.failures.push((op.clone(), errno));
        }
        for (op, failed) in sent.iter().zip(failed) {
            if !failed {
                *report.changes.entry(op.kind()).or_default() += 1;
            }
        }
        Ok(())
    }
}

/// Errors that mean the kernel is already as wanted (classified by errno, never text).
fn harmless(op: &Op, errno: Errno) -> bool {
    let removal = matches!(
        op,
        Op::DelRoute(_)
            | Op::DelNeighbour(_)
            | Op::DelFdb(_)
            | Op::DelAddress { .. }
            | Op::DeleteLink { .. }
    );
    (removal
        && matches!(
            errno,
            Errno::ENOENT | Errno::ESRCH | Errno::ENODEV | Errno::EADDRNOTAVAIL
        ))
        || (matches!(op, Op::AddAddress { .. }) && errno == Errno::EEXIST)
}
