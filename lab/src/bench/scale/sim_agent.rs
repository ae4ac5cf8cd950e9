//! The simulated agent of every fake node: one watch on NodeSubnets, and
//! for each fake node's NodeSubnet, once, when it first appears, the status
//! its agent would publish (server-side apply on the status subresource,
//! field manager `tartan-agent`). It uses only status fields every API
//! version has (nodeIP, vtepMAC, backend, receiveBackends, mtu, conditions,
//! observedGeneration), so the same bench drives older and newer builds.
//!
//! The watch also gives the bench what it measures against: how many fake
//! NodeSubnets exist, each one's CIDR, and when its status was written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use ipnet::Ipv4Net;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tartan_crds::NodeSubnet;
use tokio::sync::{Semaphore, mpsc};

use super::fake;

/// The real agent's field manager: the fake statuses are owned as a real
/// agent's would be.
const FIELD_MANAGER: &str = "tartan-agent";

/// What the watch has seen of one NodeSubnet.
#[derive(Debug, Clone)]
pub struct Seen {
    pub cidr: Option<Ipv4Net>,
    /// When the simulated agent's status write was acknowledged (fake nodes only).
    pub written_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct State {
    pub subnets: HashMap<String, Seen>,
    pub fake_seen: usize,
    pub written: usize,
    pub write_errors: usize,
    pub last_error: Option<String>,
    /// How long a fake node's "agent" takes to start before it writes.
    pub delay: Duration,
}

/// The running simulated agent; its tasks end when it drops.
pub struct SimAgent {
    state: Arc<Mutex<State>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SimAgent {
    /// Starts the watch and the status writer (at most `in_flight` writes at a time).
    pub fn start(client: &Client, in_flight: usize) -> Self {
        let resource = ApiResource::erase::<NodeSubnet>(&());
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = tokio::spawn(watch(api.clone(), state.clone(), tx));
        let write = tokio::spawn(write_all(api, state.clone(), rx, in_flight));
        Self {
            state,
            tasks: vec![watch, write],
        }
    }

    /// From now on each status is written `delay` after its NodeSubnet
    /// appears, as a real agent starts some seconds after its Node registers:
    /// meanwhile every other agent sees a peer without an address.
    pub fn delay_writes(&self, delay: Duration) {
        self.state().delay = delay;
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        // A panicked writer leaves counts that are still right.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn watch(
    api: Api<DynamicObject>,
    state: Arc<Mutex<State>>,
    to_write: mpsc::UnboundedSender<(String, Option<i64>)>,
) {
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let object = match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => o,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("simulated agent: NodeSubnet watch: {e}");
                continue;
            }
        };
        let name = object.name_any();
        let cidr = object.data["spec"]["cidr"]
            .as_str()
            .and_then(|c| c.parse().ok());
        let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
        if state.subnets.contains_key(&name) {
            // A relist or an update (the real agents' status writes): written already.
            continue;
        }
        state.subnets.insert(
            name.clone(),
            Seen {
                cidr,
                written_at: None,
            },
        );
        if fake::index_of(&name).is_some() {
            state.fake_seen += 1;
            let _ = to_write.send((name, object.metadata.generation));
        }
    }
}

async fn write_all(
    api: Api<DynamicObject>,
    state: Arc<Mutex<State>>,
    mut queue: mpsc::UnboundedReceiver<(String, Option<i64>)>,
    in_flight: usize,
) {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    while let Some((name, generation)) = queue.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (api, state) = (api.clone(), state.clone());
        tokio::spawn(async move {
            let delay = state.lock().unwrap_or_else(|e| e.into_inner()).delay;
            tokio::time::sleep(delay).await;
            let result = write_one(&api, &name, generation).await;
            let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Ok(()) => {
                    state.written += 1;
                    if let Some(seen) = state.subnets.get_mut(&name) {
                        seen.written_at = Some(Instant::now());
                    }
                }
                Err(e) => {
                    state.write_errors += 1;
                    state.last_error = Some(format!("{name}: {e}"));
                }
            }
            drop(permit);
        });
    }
}

/// One status write, retried with backoff (the API server may shed load).
async fn write_one(
    api: &Api<DynamicObject>,
    name: &str,
    generation: Option<i64>,
) -> Result<(), kube::Error> {
    let index = fake::index_of(name).unwrap_or_default();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = status_patch(name, index, generation, &now);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match api.patch_status(name, &params, &Patch::Apply(&patch)).await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 => {
                tracing::debug!(name, attempt, "simulated status write: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The status fake node `index` publishes: what a real vxlan agent would,
/// in the fields both the old and the new API have.
pub fn status_patch(
    name: &str,
    index: usize,
    generation: Option<i64>,
    now: &str,
) -> serde_json::Value {
    let ip = fake::ip(index);
    let mut status = json!({
        "nodeIP": ip.to_string(),
        "vtepMAC": fake::vtep_mac(ip),
        "backend": "vxlan",
        "receiveBackends": ["vxlan"],
        "mtu": 1450,
        "conditions": [{
            "type": "Ready",
            "status": "True",
            "reason": "Programmed",
            "message": "simulated by tartan-lab bench --scale",
            "lastTransitionTime": now,
        }],
    });
    if let Some(generation) = generation {
        status["observedGeneration"] = json!(generation);
        status["conditions"][0]["observedGeneration"] = json!(generation);
    }
    json!({
        "apiVersion": NodeSubnet::api_version(&()),
        "kind": NodeSubnet::kind(&()),
        "metadata": {"name": name},
        "status": status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_what_a_vxlan_agent_publishes() {
        let patch = status_patch("fake-00000", 0, Some(1), "2025-01-01T00:00:00Z");
        assert_eq!(patch["apiVersion"], "tartan.dev/v1alpha1");
        assert_eq!(patch["kind"], "NodeSubnet");
        let status = &patch["status"];
        assert_eq!(status["nodeIP"], "198.18.0.1");
        assert_eq!(status["vtepMAC"], "0e:2a:c6:12:00:01");
        assert_eq!(status["backend"], "vxlan");
        assert_eq!(status["receiveBackends"], json!(["vxlan"]));
        assert_eq!(status["mtu"], 1450);
        assert_eq!(status["observedGeneration"], 1);
        let ready = &status["conditions"][0];
        assert_eq!(
            (&ready["type"], &ready["status"], &ready["reason"]),
            (&json!("Ready"), &json!("True"), &json!("Programmed"))
        );
    }

    #[test]
    fn only_fields_of_both_api_versions_are_written() {
        let patch = status_patch("fake-00003", 3, None, "2025-01-01T00:00:00Z");
        let mut fields: Vec<&str> = patch["status"]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "backend",
                "conditions",
                "mtu",
                "nodeIP",
                "receiveBackends",
                "vtepMAC"
            ]
        );
    }

    #[test]
    fn the_status_parses_as_todays_type() {
        let patch = status_patch("fake-00003", 3, Some(2), "2025-01-01T00:00:00Z");
        let status: tartan_crds::NodeSubnetStatus =
            serde_json::from_value(patch["status"].clone()).expect("a NodeSubnetStatus");
        assert_eq!(status.node_ip.as_deref(), Some("198.18.0.4"));
    }
}
