//! One node's data plane: a worker thread that owns the netlink socket and
//! applies desired states, a monitor thread that reports drift, and the
//! periodic full resync behind both.
//!
//! ```text
//!   set(desired) ──┐
//!   monitor ───────┼──▶ worker: full apply │ targeted repair │ resync (timer)
//!   stop ──────────┘        sysctls → netlink diff/apply → nftables → CNI conflist
//! ```
//!
//! Stopping the worker never touches the kernel: pods keep their network while
//! the agent restarts. Only [`cleanup`] removes Tartan's state.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlink_packet_route::RouteNetlinkMessage;
use tartan_crds::ValidNodeSubnet;

use crate::bgp::{Bird, BirdError, BirdMode};
use crate::cni::CniConfig;
use crate::masquerade;
use crate::metrics::Metrics;
use crate::netlink::monitor::{Change, Monitor};
use crate::netlink::{Applier, ApplyError, ApplyReport, Observed};
use crate::netns::NetNs;
use crate::plan::{DesiredState, MasqueradeSpec, UdpSpec};
use crate::repair::repairs;
use crate::sysctl::{self, Sysctls};
use crate::udp::{Engine, EngineOptions};

#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    pub netns: NetNs,
    /// Where to write the CNI conflist; `None` writes none.
    pub cni: Option<CniConfig>,
    pub sysctls: Sysctls,
    /// Full resync period, behind event-driven repair.
    pub resync: Duration,
    /// The udp backend's datapath: queues, batching.
    pub udp: EngineOptions,
    /// The bgp backend's BIRD.
    pub bird: BirdMode,
}

impl DataplaneConfig {
    pub fn new(netns: NetNs) -> Self {
        Self {
            netns,
            cni: Some(CniConfig::default()),
            sysctls: Sysctls::default(),
            resync: Duration::from_secs(300),
            udp: EngineOptions::default(),
            bird: BirdMode::Managed {
                dir: std::path::PathBuf::from("/run/tartan/bird"),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("sysctl: {0}")]
    Sysctl(std::io::Error),
    #[error("nftables: {0}")]
    Nftables(String),
    #[error("CNI config: {0}")]
    Cni(std::io::Error),
    #[error("udp datapath: {0}")]
    Udp(std::io::Error),
    #[error("bgp: {0}")]
    Bgp(#[from] BirdError),
    #[error("the data plane worker has stopped")]
    Stopped,
}

impl DataplaneError {
    /// A bounded label for `tartan_agent_apply_errors_total{kind=...}`.
    pub fn kind(&self) -> &'static str {
        match self {
            DataplaneError::Apply(_) => "netlink",
            DataplaneError::Sysctl(_) => "sysctl",
            DataplaneError::Nftables(_) => "nftables",
            DataplaneError::Cni(_) => "cni",
            DataplaneError::Udp(_) => "udp",
            DataplaneError::Bgp(_) => "bgp",
            DataplaneError::Stopped => "stopped",
        }
    }
}

/// The desired state plus what only the CNI config needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub state: DesiredState,
    pub subnet: ValidNodeSubnet,
}

/// The outcome of the last apply, for status and tests.
#[derive(Debug, Clone, Default)]
pub struct LastApply {
    pub report: ApplyReport,
    pub error: Option<String>,
    pub at: Option<Instant>,
    pub applies: u64,
}

enum Command {
    Set(Box<Target>, Sender<Result<ApplyReport, String>>),
    Drift(Vec<(Change, RouteNetlinkMessage)>),
    Stop,
}

/// The handle to a running data plane.
pub struct Dataplane {
    tx: Sender<Command>,
    worker: Option<JoinHandle<()>>,
    pub last: Arc<Mutex<LastApply>>,
}

impl Dataplane {
    /// Starts the worker and the drift monitor in `config.netns`.
    pub fn start(config: DataplaneConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let applier = Applier::open(config.netns.clone())?;
        let mut monitor = Monitor::open(&config.netns)?;
        let (tx, rx) = mpsc::channel();
        let drift_tx = tx.clone();
        std::thread::Builder::new()
            .name("tartan-monitor".into())
            .spawn(move || {
                while let Ok(events) = monitor.next_events() {
                    if !events.is_empty() && drift_tx.send(Command::Drift(events)).is_err() {
                        return;
                    }
                }
            })?;
        let last = Arc::new(Mutex::new(LastApply::default()));
        let bird = Bird::new(config.bird.clone(), config.netns.clone());
        let worker = Worker {
            bird,
            bgp_on: false,
            config,
            applier,
            target: None,
            masquerade: None,
            udp: None,
            metrics,
            last: last.clone(),
        };
        let worker = std::thread::Builder::new()
            .name("tartan-dataplane".into())
            .spawn(move || worker.run(rx))?;
        Ok(Self {
            tx,
            worker: Some(worker),
            last,
        })
    }

    /// Applies `target` and waits for the outcome.
    pub fn set(&self, target: Target) -> Result<ApplyReport, DataplaneError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .send(Command::Set(Box::new(target), reply_tx))
            .map_err(|_| DataplaneError::Stopped)?;
        match reply_rx.recv() {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(message)) => Err(DataplaneError::Nftables(message)),
            Err(_) => Err(DataplaneError::Stopped),
        }
    }

    /// Stops the threads; the kernel state stays as it is.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Worker {
    config: DataplaneConfig,
    applier: Applier,
    target: Option<Target>,
    /// The nftables spec last applied (`Some(None)`: table removed).
    masquerade: Option<Option<MasqueradeSpec>>,
    /// The udp backend's datapath, while the state has a TUN.
    udp: Option<Engine>,
    bird: Bird,
    /// BIRD runs this node's BGP (else it is stopped or idle).
    bgp_on: bool,
    metrics: Arc<Metrics>,
    last: Arc<Mutex<LastApply>>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Command>) {
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
                    let result = self.full(false).map_err(|e| e.to_string());
                    let _ = reply.send(result);
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
        let report = self.applier.apply(state);
        if let Ok(report) = &report {
            self.count(report, false);
        }
        let report = report?;
        if state.udp.is_none() {
            // Only now: the routes have moved off the TUN.
            if let Some(engine) = self.udp.take() {
                engine.stop();
            }
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
            masquerade::apply(&self.config.netns, masq.as_ref())
                .map_err(|e| DataplaneError::Nftables(e.to_string()))?;
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
                1 + usize::from(state.vxlan.is_some()) + usize::from(state.udp.is_some()),
            ),
        ] {
            self.metrics
                .kernel_objects
                .with_label_values(&[kind])
                .set(count as i64);
        }
        Ok(report)
    }

    /// Runs the udp datapath for `spec`: the peer table swapped in place, the
    /// engine (re)started when it is missing, serves another port, or lost its device.
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
            engine.update(spec);
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

/// Removes everything Tartan owns in `netns`: its devices (with the routes,
/// neighbours and FDB entries on them), its routes on other devices, the
/// nftables table and the CNI config.
pub fn cleanup(netns: &NetNs, cni: Option<&CniConfig>) -> Result<ApplyReport, DataplaneError> {
    let mut applier = Applier::open(netns.clone()).map_err(|e| DataplaneError::Apply(e.into()))?;
    let observed: Observed = applier
        .observe()
        .map_err(|e| DataplaneError::Apply(e.into()))?;
    let mut ops: Vec<crate::netlink::Op> = observed
        .routes
        .values()
        .cloned()
        .map(crate::netlink::Op::DelRoute)
        .collect();
    ops.extend(
        observed
            .links
            .keys()
            .filter(|n| crate::plan::is_tartan_device(n))
            .map(|n| crate::netlink::Op::DeleteLink { name: n.clone() }),
    );
    let report = applier.execute(ops, observed)?;
    crate::bgp::remove_routes(netns).map_err(|e| DataplaneError::Apply(e.into()))?;
    masquerade::apply(netns, None).map_err(|e| DataplaneError::Nftables(e.to_string()))?;
    if let Some(cni) = cni {
        cni.remove().map_err(DataplaneError::Cni)?;
    }
    Ok(report)
}
