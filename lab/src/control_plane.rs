//! `up --control-plane`: the same lab, but every node is a Node object on a
//! real API server, and the real tartan-operator and one real tartan-agent per
//! node namespace run as processes, each as its ServiceAccount. An agent
//! authenticates as an agent pod does, with a token bound to a Pod on its Node,
//! so the admission policy holds it to its own NodeSubnet. The lab only
//! watches: it mirrors the NodeSubnets into its report for `status`,
//! registers the lab's pods as Pod objects (so `kubectl apply` of a
//! NetworkPolicy selects them, and `status` shows the matrix it leaves), and
//! renews the agents' tokens.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tartan_harness::ControlPlane;
use tartan_harness::setup::{
    create_network_with, create_node, install_crds, install_rbac, start_agent, start_operator,
};

use tartan_harness::token::{TOKEN_SECONDS, agent_token_path, write_agent_token};

use crate::agents::cni_config;
use crate::state::{self, AgentsReport, LabState};

/// What the lab does for the cluster that kubelets would: Pod objects for
/// its pods, and fresh tokens for its agents.
struct Chores {
    tokens_renewed: Instant,
    /// Pods (by netns) already registered.
    registered: std::collections::BTreeSet<String>,
}

impl Chores {
    async fn run(
        &mut self,
        cp: &ControlPlane,
        client: &kube::Client,
        state: &LabState,
    ) -> anyhow::Result<()> {
        // The lab's pods as Pod objects, so NetworkPolicies select them.
        for pod in &state.pods {
            if !self.registered.contains(&pod.netns) && register_pod(client, pod).await.is_ok() {
                self.registered.insert(pod.netns.clone());
            }
        }
        if self.tokens_renewed.elapsed() > TOKEN_RENEWAL {
            // As the kubelet renews a projected token: well before it expires.
            for node in &state.nodes {
                write_agent_token(client, &node.name, &agent_token_path(cp, &node.name)).await?;
            }
            self.tokens_renewed = Instant::now();
        }
        Ok(())
    }
}

/// A lab pod as kubelet would report it: in `default`, named `<node>-<pod>`,
/// labelled `app: <pod>` and `tartan.dev/node: <node>`, with its address.
async fn register_pod(client: &kube::Client, pod: &state::Pod) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let name = format!("{}-{}", pod.node, pod.name);
    let object: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": pod.name, "tartan.dev/node": pod.node}},
        "spec": {"nodeName": pod.node, "containers": [{"name": "pod", "image": "lab"}]},
    }))?;
    match pods.create(&Default::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let ip = pod.ip.to_string();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
    pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Agents' tokens are renewed at a quarter of their life.
const TOKEN_RENEWAL: Duration = Duration::from_secs(TOKEN_SECONDS as u64 / 4);

pub fn run(name: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(watch(name))
}

async fn watch(name: &str) -> anyhow::Result<()> {
    let state = LabState::load(name)?;
    let cp = ControlPlane::start_in(state::dir(name).join("control-plane")).await?;
    let client = cp.client().await?;
    install_crds(&client).await?;
    install_rbac(&client).await?;
    create_network_with(&client, state.network.clone()).await?;
    for node in &state.nodes {
        create_node(&client, &node.name, &node.ip.to_string()).await?;
    }
    let _operator = start_operator(&cp, "tartan-operator")?;
    let mut _agents = Vec::new();
    for node in &state.nodes {
        // Port 0: each agent binds a free port itself (no race for a port
        // picked here and released before the agent binds it).
        _agents.push(
            start_agent(
                &cp,
                &node.name,
                &node.netns,
                &cni_config(name, &node.name),
                0,
            )
            .await?,
        );
    }
    let mut report = AgentsReport::load(name)?;
    report.pid = std::process::id();
    report.kubeconfig = Some(cp.kubeconfig.display().to_string());
    report.save(name)?;
    let subnets: Api<NodeSubnet> = Api::all(client.clone());
    let networks: Api<OverlayNetwork> = Api::all(client.clone());
    let mut applied = state.generation;
    let mut chores = Chores {
        tokens_renewed: Instant::now(),
        registered: Default::default(),
    };
    loop {
        let state = LabState::load(name)?;
        chores.run(&cp, &client, &state).await?;
        if state.generation != applied {
            // `tartan-lab switch` does what a person does with kubectl patch.
            let patch = json!({"spec": {"backend": state.network.backend}});
            networks
                .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            applied = state.generation;
        }
        if let (Ok(list), Ok(network)) = (
            subnets.list(&Default::default()).await,
            networks.get("default").await,
        ) {
            let mut items = list.items;
            items.sort_by_key(|s| state.nodes.iter().position(|n| n.name == s.spec.node_name));
            let target = network.spec.backend.type_;
            let converged = items.len() == state.nodes.len()
                && items.iter().all(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    status.backend == Some(target)
                        && tartan_crds::condition::is_true(&status.conditions, "Ready")
                });
            report.subnets = items;
            report.rounds += 1;
            if converged {
                report.converged_generation = Some(state.generation);
            }
            report.save(name)?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
