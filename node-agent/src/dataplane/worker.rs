//! The data plane worker: one thread owning the netlink socket, the udp
//! datapath and BIRD; it applies desired states, repairs drift, resyncs.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netlink_packet_route::RouteNetlinkMessage;

use super::{Command, DataplaneConfig, DataplaneError, LastApply, Target};
use crate::bgp::Bird;
use crate::masquerade;
use crate::metrics::Metrics;
use crate::netlink::diff::peer_ops;
use crate::netlink::monitor::Change;
use crate::netlink::repair::repairs;
use crate::netlink::{Applier, ApplyReport};
use crate::plan::{MasqueradeSpec, PeerDelta, UdpSpec, WireguardSpec};
use crate::sysctl;
use crate::udp::Engine;

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
    pub(super) bird: Bird,
    /// BIRD runs this node's BGP (else it is stopped or idle).
    pub(super) bgp_on: bool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) last: Arc<Mutex<LastApply>>,
}

impl Worker {
    pub(super) fn run(mut self, rx: Receiver<Command>) {
        let mut next_resync = Instant::now() + self.config.resync;
        let mut pending: Option<Command> = None;
        loop {
            let wait = next_resync.saturating_duration_since(Instant::now());
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
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    if self.target.is_some() {
                        let _ = self.full(true);
                    }
                    next_resync = Instant::now() + self.config.resync;
                }
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
        let state = &target.state;
        let ipv6 = target.subnet.ipv6_cidr.is_some();
        self.config
            .sysctls
            .ensure(&self.config.netns, &sysctl::required(ipv6))
            .map_err(DataplaneError::Sysctl)?;
        if let Some(spec) = &state.udp {
            self.ensure_udp(spec)?;
        }
        if let Some(spec) = &state.wireguard {
            self.ensure_wireguard(spec)?;
        }
        let report = self.applier.apply(state);
        if let Ok(report) = &report {
            self.count(report, false);
        }
        let report = report?;
        // Only now that the routes have moved: the table narrows, or the engine stops.
        match (&state.udp, self.udp.as_mut()) {
            (Some(spec), Some(engine)) => engine.update(spec),
            (None, Some(_)) => {
                if let Some(engine) = self.udp.take() {
                    engine.stop();
                }
            }
            _ => {}
        }
        match (&state.wireguard, self.wireguard.as_mut()) {
            (Some(spec), Some(engine)) => engine.update(spec),
            (None, Some(_)) => {
                if let Some(engine) = self.wireguard.take() {
                    engine.stop();
                }
            }
            _ => {}
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

    /// Runs the udp datapath for `spec`: the peer table widened to old and new
    /// peers, the engine (re)started when it is missing, serves another port,
    /// or lost its device.
    fn ensure_udp(&mut self, spec: &UdpSpec) -> Result<(), DataplaneError> {
        let device_present = self
            .applier
            .observe_links()
            .map_err(DataplaneError::Udp)?
            .links
            .contains_key(&spec.device);
        if let Some(engine) = &self.udp
            && device_present
            && engine.serves(spec)
        {
            engine.widen(spec);
            return Ok(());
        }
        if let Some(engine) = self.udp.take() {
            engine.stop();
        }
        let start = || Engine::start(&self.config.netns, spec, self.config.udp, &self.metrics.udp);
        let engine = match start() {
            Ok(engine) => engine,
            // A device of that name with other flags (not ours, or older): replace it.
            Err(e) if device_present && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(error = %e, device = %spec.device, "recreating the TUN device");
                let observed = self.applier.observe_links().map_err(DataplaneError::Udp)?;
                self.applier.execute(
                    vec![crate::netlink::Op::DeleteLink {
                        name: spec.device.clone(),
                    }],
                    observed,
                )?;
                start().map_err(DataplaneError::Udp)?
            }
            Err(e) => return Err(DataplaneError::Udp(e)),
        };
        self.udp = Some(engine);
        Ok(())
    }

    /// Runs the wireguard datapath for `spec`, as [`Worker::ensure_udp`] does
    /// the udp one: widened first, (re)started when missing or moved.
    fn ensure_wireguard(&mut self, spec: &WireguardSpec) -> Result<(), DataplaneError> {
        let device_present = self
            .applier
            .observe_links()
            .map_err(DataplaneError::Wireguard)?
            .links
            .contains_key(&spec.tun.device);
        if let Some(engine) = &self.wireguard
            && device_present
            && engine.serves(spec)
        {
            engine.widen(spec);
            return Ok(());
        }
        if let Some(engine) = self.wireguard.take() {
            engine.stop();
        }
        let Some(key) = &self.config.wireguard_key else {
            return Err(DataplaneError::Wireguard(std::io::Error::other(
                "this agent has no WireGuard key",
            )));
        };
        let engine = crate::wireguard::Engine::start(
            &self.config.netns,
            spec,
            key,
            self.config.udp.queues,
            &self.metrics.wireguard,
        )
        .map_err(DataplaneError::Wireguard)?;
        self.wireguard = Some(engine);
        Ok(())
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
