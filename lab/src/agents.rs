//! The lab's agents: one process running the real agent data plane (planner,
//! batched applier, drift repair) for every node, each in its namespace, and
//! publishing NodeSubnet statuses the way agents do on a cluster. Peers react
//! to each other's statuses in rounds, so a backend switch rolls out
//! make-before-break exactly as on a live cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tartan_agent::cni::CniConfig;
use tartan_agent::dataplane::{Dataplane, DataplaneConfig, Target};
use tartan_agent::metrics::Metrics;
use tartan_agent::netns::NetNs;
use tartan_agent::plan::{LocalFacts, Peer, plan};
use tartan_agent::status::{kernel_version, node_status};
use tartan_agent::sysctl::Sysctls;
use tartan_crds::NodeSubnet;

use crate::state::{AgentsReport, LabNode, LabState, node_dir};

/// Most rounds a rollout may take before the daemon reports it stuck.
const MAX_ROUNDS: usize = 10;

pub fn cni_config(lab: &str, node: &str) -> CniConfig {
    CniConfig {
        dir: node_dir(lab, node).join("net.d"),
        ipam_data_dir: Some(node_dir(lab, node).join("ipam")),
    }
}

fn facts(node: &LabNode) -> LocalFacts {
    LocalFacts {
        underlay: node.iface.clone(),
        node_ip: node.ip,
        underlay_prefix: node.prefix,
        node_ipv6: None,
        underlay_mtu: 1500,
        kernel: kernel_version(),
    }
}

/// Runs until killed: converges whenever `state.json`'s generation moves.
pub fn run(name: &str) -> anyhow::Result<()> {
    let state = LabState::load(name)?;
    if state.control_plane {
        return crate::control_plane::run(name);
    }
    let metrics = Arc::new(Metrics::new().context("metrics")?);
    let planes: Vec<Dataplane> = state
        .nodes
        .iter()
        .map(|n| {
            let config = DataplaneConfig {
                netns: NetNs::named(&n.netns),
                cni: Some(cni_config(name, &n.name)),
                sysctls: Sysctls::default(),
                resync: Duration::from_secs(300),
                udp: tartan_agent::udp::EngineOptions {
                    batched: !state.udp_unbatched,
                    ..Default::default()
                },
            };
            Dataplane::start(config, metrics.clone())
                .with_context(|| format!("data plane of {}", n.name))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut report = AgentsReport::load(name)?;
    report.pid = std::process::id();
    loop {
        let state = LabState::load(name)?;
        if report.converged_generation != Some(state.generation) {
            match converge(&state, &planes, &mut report) {
                Ok(()) => {
                    report.converged_generation = Some(state.generation);
                    report.error = None;
                }
                Err(e) => report.error = Some(format!("{e:#}")),
            }
            report.save(name)?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rounds of plan → apply → publish status until no status changes.
fn converge(
    state: &LabState,
    planes: &[Dataplane],
    report: &mut AgentsReport,
) -> anyhow::Result<()> {
    let network = state.network.validate().context("the lab's network")?;
    let generation = Some(state.generation as i64);
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for (i, node) in state.nodes.iter().enumerate() {
            let peers: Vec<Peer> = report
                .subnets
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, s)| Peer::from_node_subnet(s).ok())
                .collect();
            let own: &NodeSubnet = &report.subnets[i];
            let local = own
                .spec
                .validate()
                .with_context(|| format!("NodeSubnet {}", node.name))?;
            let facts = facts(node);
            let desired = plan(&network, &local, &peers, &facts);
            let applied = planes[i].set(Target {
                state: desired.clone(),
                subnet: local,
            });
            let error = applied.as_ref().err().map(|e| e.to_string());
            let status = node_status(
                own.status.as_ref(),
                &desired,
                &facts,
                generation,
                error.as_deref(),
            );
            if own.status.as_ref() != Some(&status) {
                changed = true;
                report.subnets[i].status = Some(status);
            }
        }
        report.rounds += 1;
        report.save(&state.name)?;
        if !changed {
            return Ok(());
        }
        // A rollout on a cluster spreads over time; let traffic flow between rounds.
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("did not converge within {MAX_ROUNDS} rounds")
}
