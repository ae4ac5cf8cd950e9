//! What the scale benchmark runs on: etcd and kube-apiserver only (no
//! controller manager, whose node lifecycle controller would write to every
//! fake Node), Tartan's CRDs, RBAC and one vxlan OverlayNetwork, the real
//! tartan-operator, and two real tartan-agents, each programming its own node
//! namespace on one L2 underlay.
//!
//! ```text
//!   kube-apiserver ◀── operator, simulated agent (N fake nodes), bench
//!        ▲
//!        ├── tartan-agent n1 ──▶ netns tscale-n1 ─┐ 192.168.100.0/24
//!        └── tartan-agent n2 ──▶ netns tscale-n2 ─┘ (switch namespace)
//! ```
//!
//! Everything is torn down when [`Cluster`] drops: processes first, then the
//! namespaces, then the control plane and its directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};
use tartan_crds::{NodeSubnet, OverlayNetworkSpec};
use tartan_harness::cluster::{ControlPlane, Options};
use tartan_harness::process::Process;
use tartan_harness::setup::{
    create_network_with, create_node, eventually, install_crd_objects, install_crds, install_rbac,
    start_agent_from, start_operator_from,
};
use tartan_testbed::Topology;

use super::kernel::{RouteProbe, TARTAN_PROTOCOL};

/// Namespaces are named `tscale-*`: a run that was killed leaves them
/// behind, and the next run removes them before it starts.
const PREFIX: &str = "tscale";

/// Where the pieces come from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub agent: PathBuf,
    pub operator: PathBuf,
    /// Control-plane binaries (etcd, kube-apiserver).
    pub control_plane: Option<PathBuf>,
    /// A directory of CRD YAML (another build's `crds/`); else this build's CRDs.
    pub crds: Option<PathBuf>,
    pub apiserver_args: Vec<String>,
}

pub struct RealAgent {
    pub name: String,
    pub netns: String,
    pub metrics: SocketAddr,
    pub process: Process,
    pub probe: RouteProbe,
}

pub struct Cluster {
    // Dropped in this order.
    pub agents: Vec<RealAgent>,
    pub operator: Process,
    pub topology: Topology,
    pub client: Client,
    pub cp: ControlPlane,
}

impl Cluster {
    pub async fn start(sources: &Sources, cidr: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join("tartan-scale-bench");
        let options = Options {
            api_only: true,
            binaries: sources.control_plane.clone(),
            apiserver_args: sources.apiserver_args.clone(),
            ..Default::default()
        };
        let cp = ControlPlane::start_with(dir, options)
            .await
            .context("starting etcd and kube-apiserver")?;
        let client = cp.client().await?;
        match &sources.crds {
            Some(dir) => install_crd_objects(&client, read_crds(dir)?).await?,
            None => install_crds(&client).await?,
        }
        install_rbac(&client).await.context("installing RBAC")?;
        create_network_with(&client, OverlayNetworkSpec::with_cidr(cidr))
            .await
            .context("creating the OverlayNetwork")?;
        let topology = Topology::l2(PREFIX, 2).context("the node namespaces")?;
        let operator = start_operator_from(&sources.operator, &cp, "tartan-operator")?;
        let mut agents = Vec::new();
        for node in &topology.nodes {
            create_node(&client, &node.name, &node.ip.to_string())
                .await
                .with_context(|| format!("creating Node {}", node.name))?;
            let port = free_port()?;
            let cni = tartan_agent::cni::CniConfig {
                dir: cp.dir.join(&node.name),
                ipam_data_dir: Some(cp.dir.join(&node.name).join("ipam")),
                source_check: None,
            };
            let process =
                start_agent_from(&sources.agent, &cp, &node.name, &node.netns, &cni, port).await?;
            agents.push(RealAgent {
                name: node.name.clone(),
                netns: node.netns.clone(),
                metrics: SocketAddr::from(([127, 0, 0, 1], port)),
                process,
                probe: RouteProbe::open(&node.netns)
                    .with_context(|| format!("a netlink socket in {}", node.netns))?,
            });
        }
        let mut cluster = Self {
            agents,
            operator,
            topology,
            client,
            cp,
        };
        cluster.wait_for_real_nodes().await?;
        Ok(cluster)
    }

    /// Both agents have published their status and routed each other: the
    /// clock of the benchmark starts from a working two-node cluster.
    async fn wait_for_real_nodes(&mut self) -> anyhow::Result<()> {
        let subnets: Api<NodeSubnet> = Api::all(self.client.clone());
        let names: Vec<String> = self.agents.iter().map(|a| a.name.clone()).collect();
        let published = eventually(
            "both real agents publish their node IP",
            Duration::from_secs(60),
            || async {
                let list = subnets.list(&Default::default()).await.ok()?;
                let ready = names.iter().all(|name| {
                    list.items.iter().any(|s| {
                        &s.spec.node_name == name
                            && s.status.as_ref().is_some_and(|st| st.node_ip.is_some())
                    })
                });
                ready.then_some(())
            },
        )
        .await;
        if let Err(e) = published {
            bail!("{e}\n{}", self.logs());
        }
        for _ in 0..600 {
            if self.routes()?.iter().all(|&n| n >= 1) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "the real agents did not route each other within 60 s\n{}",
            self.logs()
        )
    }

    /// Tartan's routes in each real agent's kernel.
    pub fn routes(&mut self) -> anyhow::Result<Vec<usize>> {
        self.agents
            .iter_mut()
            .map(|a| {
                a.probe
                    .count(TARTAN_PROTOCOL)
                    .with_context(|| format!("counting routes in {}", a.netns))
            })
            .collect()
    }

    /// Fails when a process under test has died (a crash must not read as slowness).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let mut dead: Vec<String> = Vec::new();
        if !self.operator.alive() {
            dead.push("tartan-operator".into());
        }
        for a in &mut self.agents {
            if !a.process.alive() {
                dead.push(format!("tartan-agent {}", a.name));
            }
        }
        if !dead.is_empty() {
            bail!("{} exited\n{}", dead.join(", "), self.logs());
        }
        Ok(())
    }

    /// The last lines of every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut files = vec!["tartan-operator.log".to_string()];
        files.extend(self.agents.iter().map(|a| format!("agent-{}.log", a.name)));
        files.push("kube-apiserver.log".into());
        files
            .iter()
            .map(|f| format!("--- {f} ---\n{}", self.cp.log_tail(f)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Every `*.yaml` in `dir` as a CustomResourceDefinition.
fn read_crds(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut crds = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            crds.push(
                serde_yaml::from_str(&text)
                    .with_context(|| format!("{} is not a CRD", path.display()))?,
            );
        }
    }
    if crds.is_empty() {
        bail!("no *.yaml CRDs in {}", dir.display());
    }
    Ok(crds)
}
