//! The lab's agents: one process running the real agent data plane (planner,
//! batched applier, drift repair) for every node, each in its namespace, and
//! publishing NodeSubnet statuses the way agents do on a cluster. Peers react
//! to each other's statuses in rounds, so a backend switch rolls out
//! make-before-break exactly as on a live cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tartan_agent::bgp::BirdMode;
use tartan_agent::cni::CniConfig;
use tartan_agent::dataplane::{Dataplane, DataplaneConfig, Target};
use tartan_agent::metrics::Metrics;
use tartan_agent::netns::NetNs;
use tartan_agent::plan::{BgpObserved, LocalFacts, LocalProblem, Peer, plan};
use tartan_agent::status::node_status;
use tartan_agent::sysctl::Sysctls;
use tartan_agent::underlay::Underlay;
use tartan_crds::{BackendType, NodeSubnet};

use crate::state::{AgentsReport, LAB_UDP_SECRET, LabNode, LabState, UdpDatapath, node_dir};
use tartan_agent::udp::auth::DatagramKey;
use tartan_agent::wireguard::keys::NodeKey;

/// Most rounds a rollout may take before the daemon reports it stuck.
const MAX_ROUNDS: usize = 10;
/// How long a switch to bgp waits for sessions and routes.
const BGP_WAIT: Duration = Duration::from_secs(30);

pub fn cni_config(lab: &str, node: &str) -> CniConfig {
    CniConfig {
        dir: node_dir(lab, node).join("net.d"),
        ipam_data_dir: Some(node_dir(lab, node).join("ipam")),
        source_check: None,
    }
}

fn bird_mode(lab: &str, node: &str) -> BirdMode {
    BirdMode::Managed {
        dir: node_dir(lab, node).join("bird"),
    }
}

/// What an agent on this node finds out about it (a 1500-byte underlay).
fn facts(node: &LabNode, bgp: BgpObserved, udp_tag_len: u32) -> LocalFacts {
    let underlay = Underlay {
        name: node.iface.clone(),
        node_ip: node.ip,
        prefix: node.prefix,
        node_ipv6: None,
        mtu: 1500,
    };
    LocalFacts {
        node_labels: node.labels.clone(),
        bgp,
        udp_tag_len,
        ..underlay.facts(tartan_agent::host::kernel_version())
    }
}

/// Each node's BGP as its BIRD and kernel report it (empty where BGP is off).
fn observe_bgp(state: &LabState, on: &[bool]) -> Vec<BgpObserved> {
    state
        .nodes
        .iter()
        .zip(on)
        .map(|(n, on)| {
            if *on {
                tartan_agent::bgp::observe(
                    &NetNs::named(&n.netns),
                    &bird_mode(&state.name, &n.name).socket(),
                )
            } else {
                BgpObserved::default()
            }
        })
        .collect()
}

/// Runs until killed: converges whenever `state.json`'s generation moves.
pub fn run(name: &str) -> anyhow::Result<()> {
    let state = LabState::load(name)?;
    if state.control_plane {
        return crate::control_plane::run(name);
    }
    let metrics = Arc::new(Metrics::new().context("metrics")?);
    // Each node's WireGuard key, kept in its directory as an agent keeps it on the node.
    let keys: Vec<NodeKey> = (state.nodes.iter())
        .map(|n| NodeKey::load_or_create(&node_dir(name, &n.name).join("wireguard/private.key")))
        .collect::<Result<_, _>>()
        .context("the nodes' WireGuard keys")?;
    let planes: Vec<Dataplane> = (state.nodes.iter().zip(&keys))
        .map(|(n, key)| {
            let config = DataplaneConfig {
                netns: NetNs::named(&n.netns),
                cni: Some(cni_config(name, &n.name)),
                sysctls: Sysctls::default(),
                resync: Duration::from_secs(300),
                udp: tartan_agent::udp::EngineOptions {
                    batched: state.udp != UdpDatapath::Unbatched,
                    key: (state.udp == UdpDatapath::Authenticated)
                        .then(|| DatagramKey::from_secret(LAB_UDP_SECRET))
                        .transpose()
                        .context("the lab's udp key")?,
                    busy_poll: if state.udp == UdpDatapath::NoBusyPoll {
                        Duration::ZERO
                    } else {
                        tartan_agent::udp::sys::DEFAULT_BUSY_POLL
                    },
                    ..Default::default()
                },
                bird: bird_mode(name, &n.name),
                wireguard_key: Some(key.clone()),
                keeper: Some(crate::keeper::client(name, &n.name)),
            };
            Dataplane::start(config, metrics.clone())
                .with_context(|| format!("data plane of {}", n.name))
        })
        .collect::<anyhow::Result<_>>()?;
    let _router = if state.routed {
        Some(crate::tor::start(&state)?)
    } else {
        None
    };
    let mut report = AgentsReport::load(name)?;
    report.pid = std::process::id();
    let mut bgp_on = vec![false; state.nodes.len()];
    let mut last_bgp: Vec<BgpObserved> = Vec::new();
    let mut metrics_written = std::time::Instant::now();
    // SIGTERM (`restart`, `down`) stops the data planes: the TUN datapaths
    // drain and leave their queues to the keepers.
    crate::sigterm::install()?;
    while !crate::sigterm::received() {
        if metrics_written.elapsed() >= Duration::from_secs(1) {
            write_metrics(name, &metrics)?;
            metrics_written = std::time::Instant::now();
        }
        let state = LabState::load(name)?;
        // BGP sessions and routes are inputs too: a change is another convergence.
        let bgp = observe_bgp(&state, &bgp_on);
        let bgp_moved = bgp_on.iter().any(|on| *on) && bgp != last_bgp;
        if report.converged_generation != Some(state.generation) || bgp_moved {
            match converge(&state, &planes, &keys, &mut report, &mut bgp_on) {
                Ok(()) => {
                    report.converged_generation = Some(state.generation);
                    report.error = None;
                }
                Err(e) => report.error = Some(format!("{e:#}")),
            }
            report.save(name)?;
            last_bgp = observe_bgp(&state, &bgp_on);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // All at once, as each node's agent would stop on its own.
    std::thread::scope(|s| {
        for plane in planes {
            s.spawn(move || plane.stop());
        }
    });
    Ok(())
}

/// Every node's agent metrics (one registry, summed over the nodes) in
/// `metrics.prom` of the lab's directory, for `cat` or promtool.
fn write_metrics(name: &str, metrics: &Metrics) -> anyhow::Result<()> {
    let path = crate::state::dir(name).join("metrics.prom");
    let partial = path.with_extension("prom.partial");
    std::fs::write(&partial, metrics.render())
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Rounds of plan → apply → publish status until no status changes (and,
/// switching to bgp, until BGP has delivered every peer's route or
/// [`BGP_WAIT`] passed: the old paths carry traffic meanwhile).
fn converge(
    state: &LabState,
    planes: &[Dataplane],
    keys: &[NodeKey],
    report: &mut AgentsReport,
    bgp_on: &mut [bool],
) -> anyhow::Result<()> {
    let network = state.network.validate().context("the lab's network")?;
    let generation = Some(state.generation as i64);
    let started = std::time::Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut changed = false;
        let mut waiting_for_bgp = false;
        let bgp = observe_bgp(state, bgp_on);
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
            let mut facts = facts(
                node,
                bgp[i].clone(),
                if state.udp == UdpDatapath::Authenticated {
                    tartan_agent::udp::auth::TAG_LEN as u32
                } else {
                    0
                },
            );
            facts.wireguard_public_key = Some(keys[i].public());
            let desired = plan(&network, &local, &peers, &facts);
            bgp_on[i] = desired.bgp.is_some();
            waiting_for_bgp |= network.backend.type_ == BackendType::Bgp
                && (desired.backend != BackendType::Bgp
                    || desired
                        .local_problems
                        .iter()
                        .any(|p| matches!(p, LocalProblem::BgpSessionsDown { .. })));
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
        if !changed && !waiting_for_bgp {
            return Ok(());
        }
        if waiting_for_bgp && started.elapsed() > BGP_WAIT {
            // Reported in the statuses (BGPSessionsDown, PeersPending); traffic keeps the old paths.
            return Ok(());
        }
        if !waiting_for_bgp && rounds >= MAX_ROUNDS {
            anyhow::bail!("did not converge within {MAX_ROUNDS} rounds");
        }
        // A rollout on a cluster spreads over time; let traffic flow between rounds.
        std::thread::sleep(Duration::from_millis(if waiting_for_bgp {
            250
        } else {
            100
        }));
    }
}
