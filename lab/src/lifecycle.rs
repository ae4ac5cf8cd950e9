//! `up`, `status` and `down`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tartan_crds::{NodeSubnet, NodeSubnetSpec, OverlayNetworkSpec};
use tartan_operator::ipam::{Ipam, Preference};
use tartan_testbed::{Topology, cni};

use crate::agents::cni_config;
use crate::matrix;
use crate::state::{self, AgentsReport, LabNode, LabState, Pod};

pub struct UpOptions {
    pub name: String,
    pub nodes: usize,
    pub pods_per_node: usize,
    pub network: OverlayNetworkSpec,
    pub routed: bool,
    /// Real API server, operator and agents (see `control_plane`).
    pub control_plane: bool,
    /// How the udp datapath runs (benchmarks).
    pub udp: crate::state::UdpDatapath,
}

/// The namespace prefix of a lab: keeps labs apart from each other and the host.
pub fn prefix(name: &str) -> String {
    format!("tlab-{name}")
}

pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "tartan-lab needs root: it creates network namespaces, devices and routes (run it as root)"
        );
    }
    Ok(())
}

/// Builds the lab; on failure removes whatever it had built.
pub fn up(options: UpOptions) -> anyhow::Result<LabState> {
    require_root()?;
    if state::dir(&options.name).join("state.json").exists() {
        bail!(
            "lab {:?} is already up; run `tartan-lab down --name {}` first",
            options.name,
            options.name
        );
    }
    let name = options.name.clone();
    up_inner(options).inspect_err(|_| {
        let _ = down(&name);
    })
}

fn up_inner(options: UpOptions) -> anyhow::Result<LabState> {
    let dir = state::dir(&options.name);
    let network = options
        .network
        .validate()
        .context("--cidr / --ipv6-cidr / backend")?;
    if network.ipv6.is_some() {
        bail!(
            "--ipv6-cidr: the lab's underlay is IPv4-only for now; the planner and applier handle dual-stack (see the agent's tests)"
        );
    }
    if !tartan_agent::plan::SUPPORTED.contains(&network.backend.type_) {
        bail!(
            "--backend {}: not available in this build",
            network.backend.type_
        );
    }
    let mut options = options;
    if options.routed && options.network.backend.bgp.peers.is_empty() {
        // Each rack's nodes peer with the router (bgp backend).
        options.network.backend.bgp.peers = crate::tor::peers();
    }
    if options.control_plane
        && !tartan_harness::cluster::binaries_dir()
            .join("kube-apiserver")
            .exists()
    {
        bail!(
            "--control-plane: the Kubernetes binaries are not built; run `make control-plane` ({})",
            tartan_harness::cluster::binaries_dir().display()
        );
    }
    let prefix = prefix(&options.name);
    let topology = if options.routed {
        Topology::routed(&prefix, options.nodes)
    } else {
        Topology::l2(&prefix, options.nodes)
    }
    .context("building the node namespaces")?;
    let topology = topology.keep();
    std::fs::create_dir_all(&dir)?;

    // Subnets from the operator's own IPAM, as NodeSubnet objects (with a
    // control plane, the real operator allocates them instead).
    let mut ipam = Ipam::new(&network);
    let mut subnets = Vec::new();
    for node in topology.nodes.iter().filter(|_| !options.control_plane) {
        let allocation = ipam
            .allocate(&node.name, Preference::default())
            .context("allocating node subnets")?;
        let mut subnet = NodeSubnet::new(
            &node.name,
            NodeSubnetSpec {
                node_name: node.name.clone(),
                network: "default".into(),
                cidr: allocation.ipv4.to_string(),
                ipv6_cidr: allocation.ipv6.map(|n| n.to_string()),
            },
        );
        subnet.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        subnets.push(subnet);
    }
    let mut lab = LabState {
        name: options.name.clone(),
        prefix: prefix.clone(),
        routed: options.routed,
        network: options.network.clone(),
        generation: 1,
        nodes: topology.nodes.iter().map(LabNode::from).collect(),
        outside: LabNode::from(&topology.outside),
        pods: Vec::new(),
        control_plane: options.control_plane,
        udp: options.udp,
    };
    lab.save()?;
    AgentsReport {
        subnets,
        ..Default::default()
    }
    .save(&lab.name)?;
    if !lab.control_plane {
        let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
        crate::keeper::start(&lab.name, &nodes)?;
    }
    start_agents(&lab.name)?;
    let timeout = Duration::from_secs(if options.control_plane { 180 } else { 30 });
    wait_converged(&lab.name, lab.generation, timeout)?;

    let plugins = cni::plugin_dir()
        .context("CNI reference plugins not found in /opt/cni/bin or /usr/lib/cni")?;
    for node in &lab.nodes.clone() {
        let conflist_path = cni_config(&lab.name, &node.name).path();
        let conflist: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&conflist_path)
                .with_context(|| format!("the agent's {}", conflist_path.display()))?,
        )?;
        for k in 0..options.pods_per_node {
            let name = format!("pod{k}");
            let netns = format!("{}-{}-{name}", lab.prefix, node.name);
            tartan_testbed::add_netns(&netns)?;
            let pod_path = PathBuf::from("/var/run/netns").join(&netns);
            let result = cni::add(&cni::Invocation {
                conflist: &conflist,
                node: &node.netns,
                pod_netns: &pod_path,
                container_id: &netns,
                ifname: "eth0",
                plugin_dir: &plugins,
            })
            .with_context(|| format!("CNI ADD for {netns}"))?;
            let ip = cni::addresses(&result)
                .into_iter()
                .find_map(|a| {
                    if let std::net::IpAddr::V4(v4) = a {
                        Some(v4)
                    } else {
                        None
                    }
                })
                .context("the CNI result has no IPv4 address")?;
            lab.pods.push(Pod {
                node: node.name.clone(),
                name,
                netns,
                ip,
            });
        }
    }
    lab.save()?;
    Ok(lab)
}

pub fn start_agents(name: &str) -> anyhow::Result<()> {
    let pid = spawn_daemon(name, "agents").context("starting the agents")?;
    std::fs::write(state::dir(name).join("agents.pid"), pid.to_string())?;
    Ok(())
}

/// Starts `tartan-lab <command> --name <name>` in its own session (it
/// outlives this command, until `down`), logging to `<command>.log` in the
/// lab's directory; its pid.
pub(crate) fn spawn_daemon(name: &str, command: &str) -> anyhow::Result<u32> {
    let exe = std::env::current_exe().context("finding tartan-lab's own path")?;
    let log = std::fs::File::create(state::dir(name).join(format!("{command}.log")))?;
    let mut daemon = Command::new(exe);
    daemon
        .args([command, "--name", name])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    use std::os::unix::process::CommandExt;
    daemon.process_group(0);
    Ok(daemon.spawn()?.id())
}

pub fn wait_converged(
    name: &str,
    generation: u64,
    timeout: Duration,
) -> anyhow::Result<AgentsReport> {
    let start = Instant::now();
    loop {
        if let Ok(report) = AgentsReport::load(name) {
            if report.converged_generation == Some(generation) {
                return Ok(report);
            }
            if let Some(error) = &report.error {
                bail!("the agents failed: {error}");
            }
        }
        if !agents_alive(name) {
            bail!("the agents process exited{}", diagnostics(name));
        }
        if start.elapsed() > timeout {
            bail!(
                "the agents did not converge within {timeout:?}{}",
                diagnostics(name)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kubectl get nodesubnets`, as the lab sees them.
pub fn nodesubnets_table(report: &AgentsReport) -> String {
    let mut out = format!(
        "{:<8} {:<8} {:<16} {:<16} {:<9} {:<6}\n",
        "NAME", "NODE", "CIDR", "NODE-IP", "BACKEND", "READY"
    );
    for s in &report.subnets {
        let status = s.status.clone().unwrap_or_default();
        let ready = tartan_crds::condition::find(&status.conditions, "Ready")
            .map(|c| format!("{:?}", c.status))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<8} {:<8} {:<16} {:<16} {:<9} {:<6}\n",
            s.metadata.name.clone().unwrap_or_default(),
            s.spec.node_name,
            s.spec.cidr,
            status.node_ip.unwrap_or_default(),
            status.backend.map(|b| b.to_string()).unwrap_or_default(),
            ready
        ));
        if let Some(ready) = tartan_crds::condition::find(&status.conditions, "Ready")
            && ready.status != tartan_crds::ConditionStatus::True
        {
            out.push_str(&format!("         {}: {}\n", ready.reason, ready.message));
        }
    }
    out
}

/// [`status`] once the data plane has settled: with a control plane, every
/// NodeSubnet being Ready says each agent programmed the peers it knew, and
/// an agent learns a peer that came up after it through its watch, a
/// debounce and an apply later. So the matrix is measured again, for up to
/// `timeout`, until every path works.
pub fn settled_status(name: &str, timeout: Duration) -> anyhow::Result<(String, usize)> {
    let start = Instant::now();
    loop {
        let (text, failures) = status(name)?;
        if failures == 0 || start.elapsed() >= timeout {
            return Ok((text, failures));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn status(name: &str) -> anyhow::Result<(String, usize)> {
    let lab = LabState::load(name)?;
    let report = AgentsReport::load(name)?;
    let matrix = matrix::measure(&lab);
    let mut out = nodesubnets_table(&report);
    out.push('\n');
    out.push_str(&matrix.render());
    if lab.routed {
        let routes = crate::tor::routes(&lab);
        if !routes.is_empty() {
            out.push_str(&format!(
                "\nthe router's BGP routes (ip -n {} route show proto bird):\n{routes}",
                crate::tor::router_netns(&lab)
            ));
        }
    }
    Ok((out, matrix.failures()))
}

pub fn how_to_look_around(lab: &LabState) -> String {
    let node = &lab.nodes[0];
    let pod = lab.pods.first();
    let mut out = format!(
        "look around:\n  ip netns exec {} ip route          # node {}'s routes (proto 84 are Tartan's)\n  ip netns exec {} bridge fdb show dev tartan.1\n",
        node.netns, node.name, node.netns
    );
    if let Some(pod) = pod {
        out.push_str(&format!(
            "  ip netns exec {} ping {}\n",
            pod.netns, lab.outside.ip
        ));
    }
    out.push_str(&format!("  tartan-lab status --name {}   |   tartan-lab switch --name {} --backend host-gw   |   tartan-lab down --name {}\n", lab.name, lab.name, lab.name));
    out
}

/// Stops the agents and removes every namespace and file of the lab, also after a crash.
pub fn down(name: &str) -> anyhow::Result<usize> {
    require_root()?;
    let dir = state::dir(name);
    if let Ok(pid) = std::fs::read_to_string(dir.join("agents.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    // The agents drain their datapaths first, then the keepers close what they held.
    let start = Instant::now();
    while agents_alive(name) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    crate::keeper::stop(name);
    let removed =
        tartan_testbed::remove_by_prefix(&prefix(name)).context("removing the lab's namespaces")?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(removed)
}

/// The tails of the lab's logs and its NodeSubnets, for a failure message.
fn diagnostics(name: &str) -> String {
    let dir = state::dir(name);
    let cp = dir.join("control-plane");
    let mut out = AgentsReport::load(name)
        .map(|r| format!("\n{}", nodesubnets_table(&r)))
        .unwrap_or_default();
    for file in [
        dir.join("agents.log"),
        cp.join("tartan-operator.log"),
        cp.join("agent-n1.log"),
        cp.join("kube-apiserver.log"),
    ] {
        if let Ok(text) = std::fs::read_to_string(&file) {
            // Backtrace frames crowd out the message; errors come first.
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains("failed with status 500"))
                .filter(|l| {
                    let t = l.trim_start();
                    !(t.starts_with("at ")
                        || t.split(':')
                            .next()
                            .is_some_and(|n| n.parse::<u32>().is_ok()))
                })
                .collect();
            let errors: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.contains("Error") || l.contains("ERROR") || l.contains("panicked"))
                .take(5)
                .collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            out.push_str(&format!(
                "\n--- {} ---\n{}{tail}",
                file.display(),
                errors
                    .iter()
                    .map(|e| format!("{e}\n...\n"))
                    .collect::<String>()
            ));
        }
    }
    out
}

/// Whether the background agents process of the lab still runs.
pub fn agents_alive(name: &str) -> bool {
    let Ok(pid) = std::fs::read_to_string(state::dir(name).join("agents.pid")) else {
        return true;
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return true;
    };
    // Signal 0 checks existence; a zombie counts as gone.
    let exists = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2) == Some("Z"))
        .unwrap_or(false);
    exists && !zombie
}
