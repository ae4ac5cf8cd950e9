//! The data plane worker: one thread owning the netlink socket, the udp
//! datapath and BIRD; it applies desired states, repairs drift, resyncs.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_packet_route::RouteNetlinkMessage;

use super::retire::Retiring;
use super::tun_engines::ensure_tun;
use super::{Command, DataplaneConfig, DataplaneError, LastApply, Target};
use crate::bgp::Bird;
use crate::masquerade;
use crate::metrics::Metrics;
use crate::netlink::diff::peer_ops;
use crate::netlink::monitor::Change;
use crate::netlink::repair::repairs;
use crate::netlink::{Applier, ApplyReport};
use crate::plan::{DesiredState, MasqueradeSpec, PeerDelta, UdpSpec, WireguardSpec};
use crate::sysctl;
use crate::udp::Engine;
use crate::udp::kept::Handover;

/// How often a running TUN datapath checks that the keeper is the one it
/// handed over to (one `stat`): a replaced keeper is handed the datapath
/// within this, not at the next resync.
const KEEPER_FOLLOW: Duration = Duration::from_secs(2);

pub(super) struct Worker {
    pub(super) config: DataplaneConfig,
    pub(super) applier: Applier,
    pub(super) target: Option<Target>,
    /// The nftables spec last applied (`Some(None)`: table removed).
    pub(super) masquerade: Option<Option<MasqueradeSpec>>,
    /// The udp backend's datapath, while the state has a TUN.
    pub(super) udp: Option<Engine>,
    /// The wireguard backend's datapath, while the state has its TUN.
    pub(super) wireguard: Option<crate::wireguard::Engine>,
    /// TUN datapaths that stay a moment after their backend left.
    pub(super) retiring: Retiring,
    pub(super) bird: Bird,
    /// BIRD runs this node's BGP (else it is stopped or idle).
    pub(super) bgp_on: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) last: Arc<Mutex<LastApply>>,
}

impl Worker {
    pub(super) fn run(mut self, rx: Receiver<Command>) {
        let mut next_resync = Instant::now() + self.config.resync;
        let mut next_follow = Instant::now() + KEEPER_FOLLOW;
        let mut pending: Option<Command> = None;
        loop {
            let mut wake = (self.retiring.next()).map_or(next_resync, |r| r.min(next_resync));
            if self.config.keeper.is_some() {
                wake = wake.min(next_follow);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            let next = match pending.take() {
                Some(command) => Ok(command),
                None => rx.recv_timeout(wait),
            };
            match next {
                Ok(Command::Set(target, reply)) => {
                    self.target = Some(*target);
                    let result = self.full(false);
                    let _ = reply.send(result);
                }
                Ok(Command::Peers(deltas, reply)) => {
                    let _ = reply.send(self.peers(&deltas));
                }
                Ok(Command::Drift(mut events)) => {
                    // Coalesce a burst (e.g. a deleted device takes its routes with it).
                    let until = Instant::now() + Duration::from_millis(20);
                    while let Ok(command) =
                        rx.recv_timeout(until.saturating_duration_since(Instant::now()))
                    {
                        match command {
                            Command::Drift(more) => events.extend(more),
                            other => {
                                pending = Some(other);
                                break;
                            }
                        }
                    }
                    self.repair(&events);
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                    // A keeper replaced since the last check gets the queues
                    // now, so a restart right after its replacement keeps them.
                    self.handovers().for_each(Handover::follow);
                    // Each drains what it can, and leaves its queues to the keeper.
                    self.udp.take().into_iter().for_each(Engine::stop);
                    (self.wireguard.take().into_iter()).for_each(crate::wireguard::Engine::stop);
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            // After commands too: a steady stream of them (peer changes in a
            // large cluster) must not starve the deadlines.
            let now = Instant::now();
            if now >= next_follow {
                self.handovers().for_each(Handover::follow);
                next_follow = now + KEEPER_FOLLOW;
            }
            if now >= next_resync {
                if self.target.is_some() {
                    let _ = self.full(true);
                }
                next_resync = Instant::now() + self.config.resync;
            } else {
                self.on_deadline();
            }
        }
    }

    /// Sysctls, then the netlink diff, then nftables and the CNI config.
    fn full(&mut self, resync: bool) -> Result<ApplyReport, DataplaneError> {
        let Some(target) = self.target.clone() else {
            return Ok(ApplyReport::default());
        };
        let started = Instant::now();
        let result = self.full_inner(&target, resync);
        self.metrics
            .apply_duration
            .observe(started.elapsed().as_secs_f64());
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.applies += 1;
        last.at = Some(Instant::now());
        match &result {
            Ok(report) => {
                last.report = report.clone();
                last.error = None;
            }
            Err(e) => {
                self.metrics
                    .apply_errors
                    .with_label_values(&[e.kind()])
                    .inc();
                tracing::warn!(error = %e, "applying the data plane");
                last.error = Some(e.to_string());
            }
        }
        result
    }

    fn full_inner(&mut self, target: &Target, resync: bool) -> Result<ApplyReport, DataplaneError> {
        let state = &*self.with_retiring(&target.state);
        let ipv6 = target.subnet.ipv6_cidr.is_some();
        self.config
            .sysctls
            .ensure(&self.config.netns, &sysctl::required(ipv6))
            .map_err(DataplaneError::Sysctl)?;
        // A datapath past its grace stops before the apply deletes its
        // device: its loops would otherwise read a detached queue.
        match &state.udp {
            Some(spec) => self.ensure_udp(spec)?,
            None => self.udp.take().into_iter().for_each(Engine::retire),
        }
        match &state.wireguard {
            Some(spec) => self.ensure_wireguard(spec)?,
            None => (self.wireguard.take().into_iter()).for_each(crate::wireguard::Engine::retire),
        }
        if resync {
            // A keeper that started after the datapath, or restarted.
            self.handovers().for_each(Handover::renew);
        }
        let report = self.applier.apply(state);
        if let Ok(report) = &report {
            self.count(report, false);
        }
        let report = report?;
        // Only now that the routes have moved: the tables narrow, a moment later.
        if self.udp.is_some() || self.wireguard.is_some() {
            self.retiring.narrow_later(Instant::now());
        }
        match &state.bgp {
            Some(spec) => {
                self.bird.ensure(spec)?;
                self.bgp_on = true;
            }
            None if self.bgp_on => {
                self.bird.stop()?;
                self.bgp_on = false;
            }
            None => {}
        }
        let masq = Some(state.masquerade.clone()).filter(|m| m.masquerade);
        if resync || self.masquerade.as_ref() != Some(&masq) {
            masquerade::apply(&self.config.netns, masq.as_ref())?;
            self.masquerade = Some(masq);
        }
        if let Some(cni) = &self.config.cni {
            cni.write(&target.subnet, state.mtu)
                .map_err(DataplaneError::Cni)?;
        }
        for (kind, count) in [
            ("route", state.routes.len()),
            ("neighbour", state.neighbours.len()),
            ("fdb", state.fdb.len()),
            (
                "link",
                1 + usize::from(state.vxlan.is_some()) + state.tuns().count(),
            ),
        ] {
            self.metrics
                .kernel_objects
                .with_label_values(&[kind])
                .set(count as i64);
        }
        Ok(report)
    }

    /// A grace of [`super::retire`] is over: the TUN datapaths' tables
    /// narrow to the target's peers, and retired datapaths are removed.
    fn on_deadline(&mut self) {
        let now = Instant::now();
        if self.retiring.narrow_now(now)
            && let Some(target) = &self.target
        {
            if let (Some(engine), Some(spec)) = (self.udp.as_mut(), &target.state.udp) {
                engine.update(spec);
            }
            if let (Some(engine), Some(spec)) = (self.wireguard.as_mut(), &target.state.wireguard) {
                engine.update(spec);
            }
        }
        if self.retiring.removal_due(now) {
            let _ = self.full(false);
        }
    }

    /// `state`, plus the TUN datapaths whose backend just left it, serving
    /// their last peers until their grace is over (see [`super::retire`]).
    fn with_retiring<'a>(&mut self, state: &'a DesiredState) -> Cow<'a, DesiredState> {
        let now = Instant::now();
        // A deadline lives only while its engine does (else it would fire forever).
        let keep_udp = (self.retiring.udp).keep(state.udp.is_none() && self.udp.is_some(), now);
        let keep_wireguard = (self.retiring.wireguard)
            .keep(state.wireguard.is_none() && self.wireguard.is_some(), now);
        let udp = (self.udp.as_ref())
            .filter(|_| keep_udp)
            .map(|engine| engine.spec().clone());
        let wireguard = (self.wireguard.as_ref())
            .filter(|_| keep_wireguard)
            .map(|engine| engine.spec().clone());
        if udp.is_none() && wireguard.is_none() {
            return Cow::Borrowed(state);
        }
        let mut kept = state.clone();
        kept.udp = kept.udp.or(udp);
        kept.wireguard = kept.wireguard.or(wireguard);
        Cow::Owned(kept)
    }

    /// Peer changes: folded into the target, and only their objects sent.
    /// The drift monitor and the periodic full resync stay the safety net.
    fn peers(&mut self, deltas: &[PeerDelta]) -> Result<ApplyReport, DataplaneError> {
        let Some(target) = self.target.as_mut() else {
            return Err(DataplaneError::NoTarget);
        };
        let started = Instant::now();
        let mut ops = Vec::new();
        for delta in deltas {
            target.state.apply_peer(delta);
            ops.extend(peer_ops(delta));
        }
        ops.sort_by_key(crate::netlink::Op::phase);
        let state = &target.state;
        let counts = [
            ("route", state.routes.len()),
            ("neighbour", state.neighbours.len()),
            ("fdb", state.fdb.len()),
        ];
        let observed = self
            .applier
            .observe_links()
            .map_err(|e| DataplaneError::Apply(e.into()))?;
        let result = self.applier.execute(ops, observed);
        self.metrics
            .apply_duration
            .observe(started.elapsed().as_secs_f64());
        let report = result?;
        self.count(&report, false);
        for (kind, count) in counts {
            self.metrics
                .kernel_objects
                .with_label_values(&[kind])
                .set(count as i64);
        }
        Ok(report)
    }

    /// Runs the udp datapath for `spec` (see [`ensure_tun`]).
    /// What the running TUN datapaths handed the keeper.
    fn handovers(&self) -> impl Iterator<Item = &Handover> {
        let udp = self.udp.iter().filter_map(Engine::handover);
        udp.chain(
            self.wireguard
                .iter()
                .filter_map(crate::wireguard::Engine::handover),
        )
    }

    fn ensure_udp(&mut self, spec: &UdpSpec) -> Result<(), DataplaneError> {
        let (config, metrics) = (&self.config, &self.metrics);
        let applier = &mut self.applier;
        ensure_tun(
            &mut self.udp,
            applier,
            &spec.device,
            spec,
            DataplaneError::Udp,
            || {
                let keeper = config.keeper.as_ref();
                Engine::start(&config.netns, spec, config.udp, keeper, &metrics.udp)
            },
        )
    }

    /// Runs the wireguard datapath for `spec` (see [`ensure_tun`]).
    fn ensure_wireguard(&mut self, spec: &WireguardSpec) -> Result<(), DataplaneError> {
        let (config, metrics) = (&self.config, &self.metrics);
        let Some(key) = &config.wireguard_key else {
            return Err(DataplaneError::Wireguard(std::io::Error::other(
                "this agent has no WireGuard key",
            )));
        };
        let (slot, device) = (&mut self.wireguard, &spec.tun.device);
        ensure_tun(
            slot,
            &mut self.applier,
            device,
            spec,
            DataplaneError::Wireguard,
            || {
                let keeper = config.keeper.as_ref();
                crate::wireguard::Engine::start(
                    &config.netns,
                    spec,
                    key,
                    &config.udp,
                    keeper,
                    &metrics.wireguard,
                )
            },
        )
    }

    fn repair(&mut self, events: &[(Change, RouteNetlinkMessage)]) {
        let Some(target) = &self.target else { return };
        let observed = match self.applier.observe_links() {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "reading links for a repair");
                return;
            }
        };
        let names: BTreeMap<u32, String> = observed
            .links
            .values()
            .map(|l| (l.index, l.name.clone()))
            .collect();
        let plan = repairs(&target.state, &names, events);
        if plan.full {
            if let Ok(report) = self.full(false) {
                self.count(&report, true);
            }
            return;
        }
        if plan.ops.is_empty() {
            return;
        }
        match self.applier.execute(plan.ops, observed) {
            Ok(report) => {
                tracing::info!(
                    repaired = report.total(),
                    "restored Tartan objects changed by someone else"
                );
                self.count(&report, true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "targeted repair failed; running a full apply");
                let _ = self.full(false);
            }
        }
    }

    fn count(&self, report: &ApplyReport, drift: bool) {
        for (kind, n) in &report.changes {
            let counter = if drift {
                &self.metrics.drift_repairs
            } else {
                &self.metrics.netlink_changes
            };
            counter.with_label_values(&[kind]).inc_by(*n as u64);
        }
    }
}
