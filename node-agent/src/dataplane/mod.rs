//! One node's data plane: a worker thread that owns the netlink socket and
//! applies desired states, a monitor thread that reports drift, and the
//! periodic full resync behind both.
//!
//! ```text
//!   set(desired) ──┐
//!   monitor ───────┼──▶ worker: full apply │ targeted repair │ resync (timer)
//!   stop ──────────┘        sysctls → udp datapath → netlink diff/apply → BIRD
//!                           → nftables → CNI conflist
//! ```
//!
//! Stopping the worker never touches the kernel: pods keep their network while
//! the agent restarts. Only [`cleanup`] removes Tartan's state.

use std::sync::mpsc::{self, Sender};
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
use crate::plan::{DesiredState, PeerDelta};
use crate::sysctl::Sysctls;
use crate::udp::EngineOptions;
use worker::Worker;

mod retire;
mod tun_engines;
mod worker;

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
    /// This node's WireGuard key; without one the wireguard backend is off.
    pub wireguard_key: Option<crate::wireguard::keys::NodeKey>,
    /// Holds the TUN datapaths' queues and sockets across agent restarts.
    pub keeper: Option<crate::keeper::Keeper>,
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
            wireguard_key: None,
            keeper: None,
        }
    }
}

/// What failed, by layer: each variant says which part of the kernel (or
/// which daemon) refused, so a netlink failure never reads as an nftables one.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("netlink: {0}")]
    Apply(#[from] ApplyError),
    #[error("sysctl: {0}")]
    Sysctl(std::io::Error),
    #[error("nftables: {0}")]
    Nftables(#[from] nftables::helper::NftablesError),
    #[error("NetworkPolicy table: {0}")]
    Policy(#[from] crate::netpol::apply::NftError),
    #[error("pod source check table: {0}")]
    Guard(#[source] crate::nft::NftError),
    #[error("CNI config: {0}")]
    Cni(std::io::Error),
    #[error("udp datapath: {0}")]
    Udp(std::io::Error),
    #[error("wireguard datapath: {0}")]
    Wireguard(std::io::Error),
    #[error("bgp: {0}")]
    Bgp(#[from] BirdError),
    #[error("the data plane worker has stopped")]
    Stopped,
    #[error("a peer change arrived before any full plan was applied")]
    NoTarget,
}

impl DataplaneError {
    /// A bounded label for `tartan_agent_apply_errors_total{kind=...}`.
    pub fn kind(&self) -> &'static str {
        match self {
            DataplaneError::Apply(_) => "netlink",
            DataplaneError::Sysctl(_) => "sysctl",
            DataplaneError::Nftables(_) | DataplaneError::Policy(_) | DataplaneError::Guard(_) => {
                "nftables"
            }
            DataplaneError::Cni(_) => "cni",
            DataplaneError::Udp(_) => "udp",
            DataplaneError::Wireguard(_) => "wireguard",
            DataplaneError::Bgp(_) => "bgp",
            DataplaneError::Stopped => "stopped",
            DataplaneError::NoTarget => "no_target",
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

pub(crate) enum Command {
    Set(Box<Target>, Sender<Result<ApplyReport, DataplaneError>>),
    /// Peer changes folded into the current target: only their objects are sent.
    Peers(Vec<PeerDelta>, Sender<Result<ApplyReport, DataplaneError>>),
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
    pub fn start(mut config: DataplaneConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        config.keeper = (config.keeper.take()).map(|k| k.counted(metrics.datapath_keeper.clone()));
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
            wireguard: None,
            retiring: Default::default(),
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
        reply_rx.recv().map_err(|_| DataplaneError::Stopped)?
    }

    /// Applies peer changes to the current target (no dump, no diff) and
    /// waits for the outcome.
    pub fn set_peers(&self, deltas: Vec<PeerDelta>) -> Result<ApplyReport, DataplaneError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .send(Command::Peers(deltas, reply_tx))
            .map_err(|_| DataplaneError::Stopped)?;
        reply_rx.recv().map_err(|_| DataplaneError::Stopped)?
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

/// Removes everything Tartan owns in `netns`: its devices (with the routes,
/// neighbours and FDB entries on them), its routes on other devices, the
/// nftables tables (masquerade, NetworkPolicy) and the CNI config.
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
    masquerade::apply(netns, None)?;
    crate::netpol::apply::remove(netns)?;
    crate::guard::table::remove(netns).map_err(DataplaneError::Guard)?;
    if let Some(cni) = cni {
        cni.remove().map_err(DataplaneError::Cni)?;
    }
    Ok(report)
}
