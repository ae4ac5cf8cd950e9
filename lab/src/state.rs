//! The lab's state on disk (`/run/tartan-lab/<name>/state.json`): topology,
//! pods, the network spec and the NodeSubnet objects. `up` writes it, the
//! agents daemon keeps the NodeSubnet statuses current, `down` removes it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tartan_crds::{NodeSubnet, OverlayNetworkSpec};
use tartan_testbed::Node;

pub const ROOT: &str = "/run/tartan-lab";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    pub netns: String,
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub iface: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

impl From<&LabNode> for Node {
    fn from(n: &LabNode) -> Self {
        Self {
            name: n.name.clone(),
            netns: n.netns.clone(),
            ip: n.ip,
            prefix: n.prefix,
            iface: n.iface.clone(),
            labels: n.labels.clone(),
        }
    }
}

impl From<&Node> for LabNode {
    fn from(n: &Node) -> Self {
        Self {
            name: n.name.clone(),
            netns: n.netns.clone(),
            ip: n.ip,
            prefix: n.prefix,
            iface: n.iface.clone(),
            labels: n.labels.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub node: String,
    pub name: String,
    pub netns: String,
    pub ip: std::net::Ipv4Addr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub prefix: String,
    pub routed: bool,
    pub network: OverlayNetworkSpec,
    /// Bumped by `switch`; the daemon reports the generation it converged on.
    pub generation: u64,
    pub nodes: Vec<LabNode>,
    pub outside: LabNode,
    pub pods: Vec<Pod>,
    /// The nodes are Node objects on a real API server; real operator and agents run.
    #[serde(default)]
    pub control_plane: bool,
    /// How the udp datapath runs (benchmarks compare the variants).
    #[serde(default)]
    pub udp: UdpDatapath,
}

/// The udp datapath variants the bench measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UdpDatapath {
    /// As shipped: batched, offloads on.
    #[default]
    Batched,
    /// The textbook relay: one packet per system call (baseline).
    Unbatched,
    /// Batched, every datagram tagged with the lab's shared key.
    Authenticated,
    /// Batched, but an idle datapath thread sleeps at once (busy polling
    /// off): what polling buys, for the udp and the wireguard backend.
    NoBusyPoll,
}

/// The shared udp secret of `UdpDatapath::Authenticated` labs.
pub const LAB_UDP_SECRET: &[u8] = b"tartan-lab shared udp secret";

/// What the agents daemon publishes: NodeSubnets with statuses, and progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentsReport {
    pub pid: u32,
    pub converged_generation: Option<u64>,
    pub subnets: Vec<NodeSubnet>,
    pub rounds: u64,
    pub error: Option<String>,
    /// The admin kubeconfig of the lab's control plane (`--control-plane`).
    #[serde(default)]
    pub kubeconfig: Option<String>,
}

pub fn dir(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

pub fn node_dir(name: &str, node: &str) -> PathBuf {
    dir(name).join(node)
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn write<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(value)?;
    tartan_runtime::atomic_file::write_atomic(path, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

impl LabState {
    pub fn load(name: &str) -> anyhow::Result<Self> {
        read(&dir(name).join("state.json"))
            .with_context(|| format!("lab {name:?} is not up (run `tartan-lab up`)"))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        write(&dir(&self.name).join("state.json"), self)
    }
}

impl AgentsReport {
    pub fn load(name: &str) -> anyhow::Result<Self> {
        read(&dir(name).join("agents.json"))
    }

    pub fn save(&self, name: &str) -> anyhow::Result<()> {
        write(&dir(name).join("agents.json"), self)
    }
}
