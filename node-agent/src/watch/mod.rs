//! The agent's inputs: three watches feed one incremental index, which
//! tells the reconcile loop (a counter on a `tokio::sync::watch`) only when
//! something the planner reads changed.
//!
//! ```text
//!   Node (this one, by name) ───────────────┐
//!   NodeSubnet (label tartan.dev/network) ──┼─▶ AgentIndex (apply / delete / reset) ─▶ bump if changed
//!   OverlayNetwork (by name) ───────────────┤
//!   Secret (by name, each BGP password) ────┘  (secrets: only those referred to)
//! ```
//!
//! The watches carry only what is used: NodeSubnets of this agent's network
//! (a label selector), and what is kept of each is a [`SubnetEntry`] (no
//! managedFields, no metadata beyond name, uid, generation, creation time).
//! A watch that fails keeps retrying with backoff; the data plane meanwhile
//! stays as last programmed.

pub mod index;
pub mod secrets;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tartan_crds::{NETWORK_LABEL, NodeSubnet, OverlayNetwork};
use tartan_runtime::relist::{Delta, Relist};
use tokio::sync::watch;

pub use index::{AgentIndex, Inputs, Own, PeerChange, ReadyInputs, SubnetEntry, Update};

use crate::agent::Health;
use crate::metrics::Metrics;

/// Where every watch delivers: the index, the counter bumped on each change,
/// and what the watches report to.
pub struct Sink<I = AgentIndex> {
    pub index: Arc<Mutex<I>>,
    pub tx: Arc<watch::Sender<u64>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl<I> Clone for Sink<I> {
    fn clone(&self) -> Self {
        Sink {
            index: self.index.clone(),
            tx: self.tx.clone(),
            metrics: self.metrics.clone(),
            health: self.health.clone(),
        }
    }
}

impl<I> Sink<I> {
    /// A sink around `index` and the receiver of its changes.
    pub fn around(
        index: I,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> (Self, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(0);
        let sink = Sink {
            index: Arc::new(Mutex::new(index)),
            tx: Arc::new(tx),
            metrics,
            health,
        };
        (sink, rx)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, I> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Sink {
    /// An empty index for `node_name` on `network` and the receiver of its changes.
    pub fn new(
        node_name: &str,
        network: &str,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> (Self, watch::Receiver<u64>) {
        Sink::around(AgentIndex::new(node_name, network), metrics, health)
    }

    /// The changes since the last take, and this node's own NodeSubnet.
    pub fn take(&self) -> (Option<Update>, Option<Own>) {
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        (index.take(), index.own())
    }
}

/// How one watched kind updates the index; each says whether an input changed.
pub(crate) struct Handlers<I, K> {
    pub apply: fn(&mut I, K) -> bool,
    pub delete: fn(&mut I, K) -> bool,
    pub reset: fn(&mut I, Vec<K>) -> bool,
}

/// Starts the three watches: this Node and this OverlayNetwork by name
/// (a field selector: nothing else is sent), this network's NodeSubnets.
pub fn spawn(client: &Client, node_name: &str, network: &str, sink: &Sink) {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    spawn_one(
        Api::<Node>::all(client.clone()),
        by_name(node_name),
        "nodes",
        sink.clone(),
        |node| node,
        Handlers {
            apply: |i, o| i.apply_node(o),
            delete: |_, _| false,
            reset: |i, all| {
                all.into_iter()
                    .fold(false, |c, node| i.apply_node(node) | c)
            },
        },
    );
    spawn_one(
        Api::<NodeSubnet>::all(client.clone()),
        watcher::Config::default().labels(&format!("{NETWORK_LABEL}={network}")),
        "nodesubnets",
        sink.clone(),
        SubnetEntry::from,
        Handlers {
            apply: |i, o: SubnetEntry| i.apply_subnet(o),
            delete: |i, o: SubnetEntry| i.delete_subnet(&o.name),
            reset: |i, all| i.reset_subnets(all),
        },
    );
    spawn_one(
        Api::<OverlayNetwork>::all(client.clone()),
        by_name(network),
        "overlaynetworks",
        sink.clone(),
        |network| network,
        Handlers {
            apply: |i, o| i.apply_network(o),
            delete: |i, o| i.delete_network(&o.name_any()),
            reset: |i, all| all.into_iter().fold(false, |c, n| i.apply_network(n) | c),
        },
    );
}

/// What the index keeps of each watched object: converted as it arrives, so
/// a relist of 5,000 NodeSubnets never holds 5,000 whole objects.
fn convert<K, T>(event: watcher::Event<K>, into: fn(K) -> T) -> watcher::Event<T> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(into(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(into(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(into(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

pub(crate) fn spawn_one<I, K, T>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    sink: Sink<I>,
    into: fn(K) -> T,
    handlers: Handlers<I, T>,
) where
    I: Send + 'static,
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut relist = Relist::new();
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => {
                    sink.health.api_ok.store(true, Ordering::Relaxed);
                    convert(event, into)
                }
                Err(e) => {
                    tracing::warn!(resource, error = %e, "watch failed; retrying with backoff");
                    sink.metrics
                        .watch_errors
                        .with_label_values(&[resource])
                        .inc();
                    sink.health.api_ok.store(false, Ordering::Relaxed);
                    continue;
                }
            };
            let Some(delta) = relist.feed(event) else {
                continue;
            };
            let changed = {
                let mut index = sink.index.lock().unwrap_or_else(|e| e.into_inner());
                match delta {
                    Delta::Apply(o) => (handlers.apply)(&mut index, o),
                    Delta::Delete(o) => (handlers.delete)(&mut index, o),
                    Delta::Reset(all) => (handlers.reset)(&mut index, all),
                }
            };
            if changed {
                sink.notify();
            }
        }
    });
}
