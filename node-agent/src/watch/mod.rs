//! The agent's inputs: three watches feed one index, which publishes the
//! planner's inputs on a `tokio::sync::watch` only when they changed.
//!
//! ```text
//!   Node (this one, by name) ──┐
//!   NodeSubnet (all) ──────────┼─▶ AgentIndex (apply / delete / reset) ─▶ publish if changed
//!   OverlayNetwork (by name) ──┘
//! ```
//!
//! A watch that fails keeps retrying with backoff; the data plane meanwhile
//! stays as last programmed.

pub mod index;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tartan_runtime::relist::{Delta, Relist};
use tokio::sync::watch;

pub use index::{AgentIndex, Inputs, ReadyInputs};

use crate::agent::Health;
use crate::metrics::Metrics;

/// The inputs and this node's NodeSubnet name, as published.
pub type Published = (Inputs, Option<String>);

/// Where every watch delivers: the index, the channel it publishes on, and
/// what the watches report to.
#[derive(Clone)]
pub struct Sink {
    pub index: Arc<Mutex<AgentIndex>>,
    pub tx: Arc<watch::Sender<Published>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

impl Sink {
    /// An empty index for `node_name` on `network` and the receiver of what it publishes.
    pub fn new(
        node_name: &str,
        network: &str,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> (Self, watch::Receiver<Published>) {
        let (tx, rx) = watch::channel((Inputs::WaitingForNetwork, None));
        let sink = Sink {
            index: Arc::new(Mutex::new(AgentIndex::new(node_name, network))),
            tx: Arc::new(tx),
            metrics,
            health,
        };
        (sink, rx)
    }

    /// Publishes the index's inputs, only when they changed.
    fn publish(&self) {
        let index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let next = (index.inputs(), index.own().map(|s| s.name_any()));
        self.tx.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }
}

/// How one watched kind updates the index.
struct Handlers<K> {
    apply: fn(&mut AgentIndex, K),
    delete: fn(&mut AgentIndex, K),
    reset: fn(&mut AgentIndex, Vec<K>),
}

/// Starts the three watches: this Node and this OverlayNetwork by name
/// (a field selector: nothing else is sent), every NodeSubnet.
pub fn spawn(client: &Client, node_name: &str, network: &str, sink: &Sink) {
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    spawn_one(
        Api::<Node>::all(client.clone()),
        by_name(node_name),
        "nodes",
        sink.clone(),
        Handlers {
            apply: |i, o| i.apply_node(o),
            delete: |_, _| {},
            reset: |i, all| all.into_iter().for_each(|node| i.apply_node(node)),
        },
    );
    spawn_one(
        Api::<NodeSubnet>::all(client.clone()),
        watcher::Config::default(),
        "nodesubnets",
        sink.clone(),
        Handlers {
            apply: |i, o| i.apply_subnet(o),
            delete: |i, o| i.delete_subnet(&o.name_any()),
            reset: |i, all| i.reset_subnets(all),
        },
    );
    spawn_one(
        Api::<OverlayNetwork>::all(client.clone()),
        by_name(network),
        "overlaynetworks",
        sink.clone(),
        Handlers {
            apply: |i, o| i.apply_network(o),
            delete: |i, o| i.delete_network(&o.name_any()),
            reset: |i, all| all.into_iter().for_each(|n| i.apply_network(n)),
        },
    );
}

fn spawn_one<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    sink: Sink,
    handlers: Handlers<K>,
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut relist = Relist::new();
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => {
                    sink.health.api_ok.store(true, Ordering::Relaxed);
                    event
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
            {
                let mut index = sink.index.lock().unwrap_or_else(|e| e.into_inner());
                match delta {
                    Delta::Apply(o) => (handlers.apply)(&mut index, o),
                    Delta::Delete(o) => (handlers.delete)(&mut index, o),
                    Delta::Reset(all) => (handlers.reset)(&mut index, all),
                }
            }
            sink.publish();
        }
    });
}
