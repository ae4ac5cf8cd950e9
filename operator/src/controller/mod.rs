//! The operator's controllers, sharing one [`Context`]:
//!
//! ```text
//!   Node watch (metadata) ───▶ node::reconcile     allocate, write NodeSubnet spec (SSA)
//!   NodeSubnet watch ─┬─────▶ subnet::reconcile   remove orphans, Conflict condition
//!                     └─feed─▶ SubnetIndex ◀──────── (allocations, conflicts, usage)
//!   OverlayNetwork watch ───▶ network::reconcile  pool from spec
//!   index changed ─mark─▶ network_status::run     status (SSA), at most 1/s
//!   NetworkPolicy watch ────▶ policy_check::reconcile Event on one the agents cannot enforce
//! ```
//!
//! Writes are fenced by the leader lease: each one checks [`Leadership`] first.

pub mod network;
pub mod network_status;
pub mod node;
pub mod policy_check;
pub mod subnet;
pub mod throttle;
pub mod watch;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::{Node, ObjectReference};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tartan_runtime::backoff::Retries;
use tartan_runtime::relist::{Delta, Relist};

use crate::error::{Error, Result};
use crate::index::SubnetIndex;
use crate::lease::Leadership;
use crate::metrics::Metrics;
use network_status::StatusSignal;
use throttle::Throttle;

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "tartan-operator";
/// Label on each NodeSubnet naming its OverlayNetwork.
pub const NETWORK_LABEL: &str = tartan_crds::NETWORK_LABEL;

/// A Node as the operator holds it: metadata only, managedFields dropped.
pub type NodeMeta = PartialObjectMeta<Node>;

pub struct Context {
    pub client: Client,
    /// Name of the OverlayNetwork this operator manages.
    pub network: String,
    pub index: Arc<Mutex<SubnetIndex>>,
    pub nodes: Store<NodeMeta>,
    pub subnets: Store<NodeSubnet>,
    /// This operator's OverlayNetwork, as its watch shows it.
    pub networks: Store<OverlayNetwork>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub leader: Leadership,
    /// Failures in a row per (controller, object), for [`error_policy`].
    pub retries: Retries<(&'static str, String)>,
    /// PoolExhausted Events: one per Node (and one for the network) per 10 minutes.
    pub pool_events: Throttle,
    /// Reconciles every Node (a subnet was freed, the network appeared).
    pub wake_nodes: mpsc::UnboundedSender<()>,
    /// The network status may have changed.
    pub status: StatusSignal,
}

#[cfg(test)]
impl Context {
    /// A context for tests: the leader always, network "default", and the
    /// wake and status signals going nowhere.
    pub fn test(
        client: Client,
        index: SubnetIndex,
        nodes: Store<NodeMeta>,
        subnets: Store<NodeSubnet>,
        networks: Store<OverlayNetwork>,
    ) -> Self {
        let (wake_nodes, _) = mpsc::unbounded();
        let (status, _) = StatusSignal::new();
        Context {
            recorder: Recorder::new(client.clone(), Context::reporter("test")),
            client,
            network: "default".into(),
            index: Arc::new(Mutex::new(index)),
            nodes,
            subnets,
            networks,
            metrics: Arc::new(Metrics::new().expect("metrics")),
            leader: Leadership::always(),
            retries: Default::default(),
            pool_events: Default::default(),
            wake_nodes,
            status,
        }
    }
}

impl Context {
    pub fn index(&self) -> MutexGuard<'_, SubnetIndex> {
        // A panic while holding the lock leaves a consistent index (every
        // method finishes its update before returning), so poisoning is ignored.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn ensure_leader(&self) -> Result<()> {
        if self.leader.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// An Event of the allocation controllers.
    pub async fn event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_for(reference, type_, reason, "Allocate", note)
            .await
    }

    pub async fn event_for(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "publishing event");
        }
    }

    pub fn network_ref(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(format!("{}/{}", tartan_crds::GROUP, tartan_crds::VERSION)),
            kind: Some("OverlayNetwork".into()),
            name: Some(self.network.clone()),
            ..Default::default()
        }
    }

    pub fn reporter(identity: &str) -> Reporter {
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(identity.into()),
        }
    }
}

/// Shared retry policy: count, log, and try again after a per-object
/// exponential backoff with jitter (1 s doubling to 5 min), so a failing API
/// server is not hit by every object at once, at a fixed rate, forever.
pub fn error_policy(controller: &'static str, name: &str, error: &Error, ctx: &Context) -> Action {
    ctx.metrics.error(controller, error);
    let delay = ctx.retries.failed((controller, name.to_string()));
    match error {
        // Expected while starting or stepping down; not worth a warning.
        Error::NotLeader | Error::NotSynced => {}
        _ => {
            tracing::warn!(controller, name, error = %error, retry_in = ?delay, "reconcile failed")
        }
    }
    Action::requeue(delay)
}

/// Runs `reconcile`; a success resets the object's backoff.
pub async fn tracked<K, F, Fut>(
    controller: &'static str,
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: F,
) -> Result<Action>
where
    K: kube::Resource,
    F: FnOnce(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    let key = (controller, object.name_any());
    let result = reconcile(object, ctx.clone()).await;
    if result.is_ok() {
        ctx.retries.succeeded(&key);
    }
    result
}

/// Feeds NodeSubnet watch events into the index, the way a reflector feeds a store.
pub struct IndexFeeder {
    index: Arc<Mutex<SubnetIndex>>,
    relist: Relist<NodeSubnet>,
    wake_nodes: mpsc::UnboundedSender<()>,
    status: StatusSignal,
}

impl IndexFeeder {
    pub fn new(ctx: &Context) -> Self {
        Self {
            index: ctx.index.clone(),
            relist: Relist::new(),
            wake_nodes: ctx.wake_nodes.clone(),
            status: ctx.status.clone(),
        }
    }

    pub fn feed(&mut self, event: &watcher::Event<NodeSubnet>) {
        let Some(delta) = self.relist.feed(event.clone()) else {
            return;
        };
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let freed = match delta {
            Delta::Reset(subnets) => {
                index.reset(&subnets);
                true
            }
            Delta::Apply(subnet) => {
                index.apply(&subnet);
                false
            }
            Delta::Delete(subnet) => index.delete(&kube::ResourceExt::name_any(&subnet)),
        };
        drop(index);
        // Closed channels mean the controllers are shutting down; nothing to wake.
        if freed {
            let _ = self.wake_nodes.unbounded_send(());
        }
        self.status.mark();
    }
}

/// An ObjectReference for a NodeSubnet or Node (cluster-scoped objects).
pub fn reference<K: kube::Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    kube::Resource::object_ref(obj, &())
}
