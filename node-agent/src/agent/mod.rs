//! The agent on a cluster: inputs from the index → plan → program → status.
//!
//! ```text
//!   watches ─▶ AgentIndex ─(changed)─▶ debounce ─▶ take:
//!     Full   ▶ reconcile:       underlay ▶ plan ▶ Programmer::program (diff)
//!     Peers  ▶ reconcile_peers: plan_peer each ▶ Programmer::program_peers (only their objects)
//!            ─▶ node_status ▶ SSA status (only if it differs from what the API has)
//! ```
//!
//! A peer change that reaches beyond the peer (a switch in progress, udp,
//! bgp) falls back to a full plan. After a restart the agent starts from its
//! own NodeSubnet's status as the watch shows it: it writes nothing when
//! nothing changed, and never a status with less in it than that.
//!
//! The data plane is behind [`Programmer`] so the reconcile can be tested
//! against kube's mocked API service without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
use crate::plan::{BgpObserved, DesiredState, LocalFacts, NodeIps, PeerDelta, plan, plan_peer};
use crate::status::node_status;
use crate::underlay::{self, Choice};
use crate::watch::secrets::{self, BgpSecrets};
use crate::watch::{Inputs, Own, PeerChange, ReadyInputs};

mod bgp;
mod record;
#[cfg(test)]
mod tests;

/// The field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "tartan-agent";

/// Something that makes the kernel match a target.
pub trait Programmer: Send + Sync + 'static {
    /// Makes the kernel match `target` (a full diff).
    fn program(&self, target: Target) -> Result<ApplyReport, DataplaneError>;
    /// Folds peer changes into the last target and sends only their objects.
    fn program_peers(&self, deltas: Vec<PeerDelta>) -> Result<ApplyReport, DataplaneError>;
}

impl Programmer for Dataplane {
    fn program(&self, target: Target) -> Result<ApplyReport, DataplaneError> {
        self.set(target)
    }

    fn program_peers(&self, deltas: Vec<PeerDelta>) -> Result<ApplyReport, DataplaneError> {
        self.set_peers(deltas)
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
    /// The status last written, so an unchanged one is not written again,
    /// and the uid of the NodeSubnet it was written to.
    last_status: Option<NodeSubnetStatus>,
    last_uid: Option<String>,
    /// The last full plan's inputs (its peers kept up to date by peer
    /// changes), facts and desired state: what a peer change is planned against.
    current: Option<Current>,
    programmed: BTreeSet<String>,
    started: Timestamp,
    /// BIRD's control socket (the bgp backend).
    pub bird_socket: Option<std::path::PathBuf>,
    /// Bytes of authentication tag per udp datagram (0: not authenticated);
    /// the planner shrinks the MTU by it.
    pub udp_tag_len: u32,
    /// This node's WireGuard public key, when the agent has a key.
    pub wireguard_public_key: Option<[u8; 32]>,
    /// How long a new BGP session may take to come up before Ready says so.
    pub bgp_grace: Duration,
    /// BGP as last observed, and whether the last plan ran BGP.
    bgp: BgpObserved,
    bgp_on: bool,
    /// When each expected BGP session was first expected.
    bgp_expected_since: BTreeMap<String, Instant>,
    /// The watches of the BGP password Secrets (none in unit tests).
    pub secrets: Option<BgpSecrets>,
}

/// What the last full plan was made from, and what it and the peer changes since made.
struct Current {
    inputs: ReadyInputs,
    /// Peers per node IP (a shared one is planned in full).
    node_ips: NodeIps,
    facts: LocalFacts,
    desired: DesiredState,
    /// The kernel may not match `desired` (an apply failed): plan in full.
    stale: bool,
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

/// A BGP session that has just been expected (a peer joined) is not called
/// down before this.
pub const BGP_GRACE: Duration = Duration::from_secs(60);

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
            last_uid: None,
            current: None,
            programmed: BTreeSet::new(),
            started: Timestamp::now(),
            bird_socket: None,
            udp_tag_len: 0,
            wireguard_public_key: None,
            bgp_grace: BGP_GRACE,
            bgp: BgpObserved::default(),
            bgp_on: false,
            bgp_expected_since: BTreeMap::new(),
            secrets: None,
        }
    }

    /// One full pass: program what the inputs say and publish the status.
    /// `own` is this node's NodeSubnet as the watch shows it, when it exists.
    pub async fn reconcile(&mut self, inputs: Inputs, own: Option<&Own>) -> Result<(), AgentError> {
        match inputs {
            Inputs::Ready(ready) => self.full(*ready, own).await,
            other => self.not_ready(&other, own).await,
        }
    }

    /// Inputs the planner cannot run on: reported, nothing programmed. A node
    /// that was programmed before stays as it was and says nothing while it
    /// merely waits (an OverlayNetwork watch that is late after a restart
    /// must not withdraw this node from its peers).
    async fn not_ready(&mut self, inputs: &Inputs, own: Option<&Own>) -> Result<(), AgentError> {
        self.health.programmed.store(false, Ordering::Relaxed);
        self.current = None;
        let (reason, message) = match inputs {
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
        let mut status = self.known_status(own).cloned().unwrap_or_default();
        let waiting = matches!(inputs, Inputs::WaitingForNetwork | Inputs::WaitingForSubnet);
        if waiting && status.node_ip.is_some() {
            return Ok(());
        }
        condition::set(
            &mut status.conditions,
            Condition::falsy(CONDITION_READY, reason).message(message),
        );
        self.write_status(own, status).await
    }

    /// Plans everything from `ready`, programs it, writes the status if it changed.
    async fn full(&mut self, ready: ReadyInputs, own: Option<&Own>) -> Result<(), AgentError> {
        let mut facts = self.facts(&ready)?;
        facts.node_labels = ready.node_labels.clone();
        facts.udp_tag_len = self.udp_tag_len;
        facts.wireguard_public_key = self.wireguard_public_key;
        if let Some(secrets) = &mut self.secrets {
            secrets.follow(&ready.network);
            facts.bgp_passwords =
                secrets::lookup(&ready.network, &ready.bgp_secrets, secrets.namespace());
        }
        if self.bgp_on || ready.network.backend.type_ == BackendType::Bgp {
            self.bgp = self.observe_bgp().await;
        }
        facts.bgp = self.bgp.clone();
        let peers: Vec<_> = ready.peers.values().cloned().collect();
        let desired = plan(&ready.network, &ready.local, &peers, &facts);
        drop(peers);
        self.bgp_on = desired.bgp.is_some();
        facts.bgp.settling = self.settling(&desired);
        let programmer = self.programmer.clone();
        let target = Target {
            state: desired.clone(),
            subnet: ready.local.clone(),
        };
        let applied = tokio::task::spawn_blocking(move || programmer.program(target))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?;
        let error = applied.as_ref().err().map(|e| e.to_string());
        self.applied(error.is_none());
        self.record_all(&ready, &desired, error.is_none());
        self.current = Some(Current {
            node_ips: NodeIps::new(ready.peers.values()),
            inputs: ready,
            facts,
            desired,
            stale: error.is_some(),
        });
        self.publish(own, error.as_deref()).await
    }

    /// The status the current plan implies, written if it differs.
    async fn publish(&mut self, own: Option<&Own>, error: Option<&str>) -> Result<(), AgentError> {
        let (Some(own), Some(current)) = (own, &self.current) else {
            return Ok(());
        };
        let status = node_status(
            self.known_status(own),
            &current.desired,
            &current.facts,
            current.inputs.generation,
            error,
        );
        self.write_status(own, status).await
    }

    /// Peer changes only: each planned on its own and programmed as a delta
    /// when it can be; otherwise (or after a failed apply) one full plan.
    pub async fn reconcile_peers(
        &mut self,
        changes: Vec<PeerChange>,
        own: Option<&Own>,
    ) -> Result<(), AgentError> {
        // Not ready: the next full plan brings every peer with it.
        let Some(current) = self.current.as_mut() else {
            return Ok(());
        };
        let mut deltas = Vec::with_capacity(changes.len());
        let mut full = current.stale;
        for change in &changes {
            let old = current.inputs.peers.get(&change.name);
            full |= current.node_ips.update(old, change.peer.as_ref());
            let (network, local) = (&current.inputs.network, &current.inputs.local);
            let delta = (!full)
                .then(|| {
                    plan_peer(
                        network,
                        local,
                        &current.facts,
                        &current.desired,
                        old,
                        change.peer.as_ref(),
                    )
                })
                .flatten();
            match delta {
                Some(delta) => {
                    current.desired.apply_peer(&delta);
                    deltas.push(delta);
                }
                None => full = true,
            }
            current.inputs.update_peer(change);
        }
        if full {
            return self.replan(own).await;
        }
        let programmer = self.programmer.clone();
        let applied = tokio::task::spawn_blocking(move || programmer.program_peers(deltas))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?;
        if let Err(e) = applied {
            tracing::warn!(error = %e, "programming peer changes; planning in full");
            return self.replan(own).await;
        }
        self.applied(true);
        self.record_peers(&changes);
        self.publish(own, None).await
    }

    /// A full plan from the current inputs (peer changes included).
    async fn replan(&mut self, own: Option<&Own>) -> Result<(), AgentError> {
        match self.current.take() {
            Some(current) => self.full(current.inputs, own).await,
            None => Ok(()),
        }
    }

    fn applied(&self, ok: bool) {
        self.metrics
            .applies
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
        self.health.programmed.store(ok, Ordering::Relaxed);
    }

    fn facts(&self, ready: &ReadyInputs) -> Result<LocalFacts, AgentError> {
        let interfaces = underlay::interfaces(&self.netns)?;
        let underlay = underlay::select(&interfaces, &self.underlay, ready.node_ip)?;
        Ok(underlay.facts(self.kernel))
    }

    /// The status as it stands: what this agent last wrote, else what the
    /// watch shows (after a restart).
    fn known_status<'a>(&'a self, own: &'a Own) -> Option<&'a NodeSubnetStatus> {
        let same_object = self.last_uid.is_none() || self.last_uid == own.uid;
        (self.last_status.as_ref())
            .filter(|_| same_object)
            .or(own.status.as_ref())
    }

    /// Server-side apply of the status subresource, only when it differs
    /// from the status as it stands.
    pub async fn write_status(
        &mut self,
        own: &Own,
        status: NodeSubnetStatus,
    ) -> Result<(), AgentError> {
        if self.known_status(own) == Some(&status) {
            self.last_status = Some(status);
            self.last_uid = own.uid.clone();
            return Ok(());
        }
        let name = own.name.as_str();
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
        self.last_uid = own.uid.clone();
        Ok(())
    }
}
