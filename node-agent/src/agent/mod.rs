//! The agent on a cluster: inputs from the index → plan → program → status.
//!
//! ```text
//!   watches ─▶ AgentIndex ─(changed)─▶ debounce ─▶ reconcile:
//!       underlay ▶ plan ▶ Programmer (the data plane) ▶ node_status ▶ SSA status (if changed)
//! ```
//!
//! The data plane is behind [`Programmer`] so the reconcile can be tested
//! against kube's mocked API service without a kernel.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;
use tartan_crds::condition::{self, Condition};
use tartan_crds::{BackendType, CONDITION_READY, NodeSubnet, NodeSubnetStatus};

use crate::dataplane::{Dataplane, DataplaneError, Target};
use crate::metrics::Metrics;
use crate::netlink::ApplyReport;
use crate::netns::NetNs;
use crate::plan::{BgpObserved, LocalFacts, PeerProblem, plan};
use crate::status::node_status;
use crate::underlay::{self, Choice};
use crate::watch::{Inputs, ReadyInputs};

#[cfg(test)]
mod tests;

/// The field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "tartan-agent";

/// Something that makes the kernel match a target.
pub trait Programmer: Send + Sync + 'static {
    fn program(&self, target: Target) -> Result<ApplyReport, DataplaneError>;
}

impl Programmer for Dataplane {
    fn program(&self, target: Target) -> Result<ApplyReport, DataplaneError> {
        self.set(target)
    }
}

/// What the probes report.
#[derive(Default)]
pub struct Health {
    /// The watches are connected (false after an error until the next event).
    pub api_ok: AtomicBool,
    /// The last reconcile programmed the node.
    pub programmed: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.api_ok.load(Ordering::Relaxed) && self.programmed.load(Ordering::Relaxed)
    }
}

pub struct Agent<P: Programmer> {
    pub client: Client,
    pub netns: NetNs,
    pub underlay: Choice,
    /// The running kernel's (major, minor), read once at start.
    pub kernel: (u32, u32),
    pub programmer: Arc<P>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// The status last written, so an unchanged one is not written again.
    last_status: Option<NodeSubnetStatus>,
    programmed: BTreeSet<String>,
    started: Timestamp,
    /// BIRD's control socket (the bgp backend).
    pub bird_socket: Option<std::path::PathBuf>,
    /// Bytes of authentication tag per udp datagram (0: not authenticated);
    /// the planner shrinks the MTU by it.
    pub udp_tag_len: u32,
    /// BGP as last observed, and whether the last plan ran BGP.
    bgp: BgpObserved,
    bgp_on: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("writing NodeSubnet {name} status: {source}")]
    Status { name: String, source: kube::Error },
    #[error(transparent)]
    Underlay(#[from] underlay::UnderlayError),
    #[error("the data plane task: {0}")]
    Task(String),
}

impl<P: Programmer> Agent<P> {
    pub fn new(
        client: Client,
        netns: NetNs,
        underlay: Choice,
        kernel: (u32, u32),
        programmer: Arc<P>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Self {
            client,
            netns,
            underlay,
            kernel,
            programmer,
            metrics,
            health,
            last_status: None,
            programmed: BTreeSet::new(),
            started: Timestamp::now(),
            bird_socket: None,
            udp_tag_len: 0,
            bgp: BgpObserved::default(),
            bgp_on: false,
        }
    }

    /// One pass: program what the inputs say and publish the status.
    /// `own` is this node's NodeSubnet name, when it exists.
    pub async fn reconcile(
        &mut self,
        inputs: &Inputs,
        own: Option<&str>,
    ) -> Result<(), AgentError> {
        let ready = match inputs {
            Inputs::Ready(ready) => ready,
            other => {
                self.health.programmed.store(false, Ordering::Relaxed);
                let (reason, message) = match other {
                    Inputs::WaitingForNetwork => (
                        "WaitingForNetwork",
                        "no OverlayNetwork of this agent's --network yet".to_string(),
                    ),
                    Inputs::InvalidNetwork(m) => ("InvalidNetwork", m.clone()),
                    Inputs::InvalidSubnet(m) => ("InvalidSubnet", m.clone()),
                    _ => (
                        "WaitingForSubnet",
                        "the operator has not allocated this node's subnet yet".to_string(),
                    ),
                };
                let Some(own) = own else { return Ok(()) };
                let mut status = self.last_status.clone().unwrap_or_default();
                condition::set(
                    &mut status.conditions,
                    Condition::falsy(CONDITION_READY, reason).message(message),
                );
                return self.write_status(own, status).await;
            }
        };
        let mut facts = self.facts(ready)?;
        facts.node_labels = ready.node_labels.clone();
        facts.udp_tag_len = self.udp_tag_len;
        if self.bgp_on || ready.network.backend.type_ == BackendType::Bgp {
            self.bgp = self.observe_bgp().await;
        }
        facts.bgp = self.bgp.clone();
        let desired = plan(&ready.network, &ready.local, &ready.peers, &facts);
        self.bgp_on = desired.bgp.is_some();
        let programmer = self.programmer.clone();
        let target = Target {
            state: desired.clone(),
            subnet: ready.local.clone(),
        };
        let applied = tokio::task::spawn_blocking(move || programmer.program(target))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let error = applied.as_ref().err().map(|e| e.to_string());
        self.metrics
            .applies
            .with_label_values(&[if error.is_none() { "ok" } else { "error" }])
            .inc();
        self.health
            .programmed
            .store(error.is_none(), Ordering::Relaxed);
        self.record(ready, &desired, error.is_none());
        let status = node_status(
            self.last_status.as_ref(),
            &desired,
            &facts,
            ready.generation,
            error.as_deref(),
        );
        match own {
            Some(own) => self.write_status(own, status).await,
            None => Ok(()),
        }
    }

    /// BIRD's sessions and the BGP routes in the kernel.
    async fn observe_bgp(&self) -> BgpObserved {
        let Some(socket) = self.bird_socket.clone() else {
            return BgpObserved::default();
        };
        let netns = self.netns.clone();
        let observed = tokio::task::spawn_blocking(move || crate::bgp::observe(&netns, &socket))
            .await
            .unwrap_or_default();
        self.metrics.record_bgp(&observed);
        observed
    }

    /// Whether BGP changed since the last reconcile (polled while BGP runs).
    pub async fn bgp_changed(&mut self) -> bool {
        if !self.bgp_on {
            return false;
        }
        let observed = self.observe_bgp().await;
        observed != self.bgp
    }

    fn facts(&self, ready: &ReadyInputs) -> Result<LocalFacts, AgentError> {
        let interfaces = underlay::interfaces(&self.netns)?;
        let underlay = underlay::select(&interfaces, &self.underlay, ready.node_ip)?;
        Ok(underlay.facts(self.kernel))
    }

    fn record(&mut self, ready: &ReadyInputs, desired: &crate::plan::DesiredState, applied: bool) {
        let m = &self.metrics;
        let pending = desired
            .peer_problems
            .iter()
            .filter(|p| matches!(p, PeerProblem::Pending { .. }))
            .map(|p| p.peer())
            .collect::<BTreeSet<_>>()
            .len();
        let problem = desired
            .peer_problems
            .iter()
            .map(|p| p.peer())
            .collect::<BTreeSet<_>>()
            .len()
            - pending;
        m.peers
            .with_label_values(&["programmed"])
            .set(desired.peer_backends.len() as i64);
        m.peers.with_label_values(&["pending"]).set(pending as i64);
        m.peers.with_label_values(&["problem"]).set(problem as i64);
        for backend in BackendType::ALL {
            m.backend_info
                .with_label_values(&[backend.as_str()])
                .set(i64::from(backend == desired.backend));
        }
        if !applied {
            return;
        }
        let now = Timestamp::now();
        for peer in desired.peer_backends.keys() {
            if self.programmed.insert(peer.clone())
                && let Some(created) = ready.peer_created.get(peer)
                && created.0 > self.started
            {
                m.convergence_lag
                    .observe(now.duration_since(created.0).as_secs_f64().max(0.0));
            }
        }
        self.programmed
            .retain(|p| desired.peer_backends.contains_key(p));
    }

    /// Server-side apply of the status subresource, only when it changed.
    pub async fn write_status(
        &mut self,
        name: &str,
        status: NodeSubnetStatus,
    ) -> Result<(), AgentError> {
        if self.last_status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<NodeSubnet> = Api::all(self.client.clone());
        let patch = json!({
            "apiVersion": format!("{}/{}", tartan_crds::GROUP, tartan_crds::VERSION),
            "kind": "NodeSubnet",
            "metadata": { "name": name },
            "status": status,
        });
        let result = api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await;
        self.metrics
            .status_writes
            .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
            .inc();
        result.map_err(|source| AgentError::Status {
            name: name.to_string(),
            source,
        })?;
        self.last_status = Some(status);
        Ok(())
    }

    /// Forgets the last written status (the object was recreated).
    pub fn forget_status(&mut self) {
        self.last_status = None;
    }
}
