//! Joins on a settled cluster, one at a time: what one more node costs in
//! API writes (kube-apiserver's counters before and after, once they have
//! been still for a while), how long each real agent takes to put the new
//! peer's route in its kernel, and the agents' CPU time per join.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::cluster::Cluster;
use super::kernel::TARTAN_PROTOCOL;
use super::promtext::{self, Writes};
use super::report::{JoinWrites, Latency, Named};
use super::sim_agent::SimAgent;
use super::{fake, procfs, scrape};

const GROUP: &str = "tartan.dev";
/// The agent's counter of its own NodeSubnet status writes.
const AGENT_WRITES: &str = "tartan_agent_status_writes_total";

#[derive(Debug, Clone, Copy)]
pub struct JoinOptions {
    /// Fake node index of the first join (the N already there come first).
    pub first: usize,
    pub joins: usize,
    /// Counters still this long count as settled.
    pub quiet: Duration,
    /// The longest wait for one join's route, and for counters to go still.
    pub cap: Duration,
}

pub struct JoinFigures {
    pub writes: JoinWrites,
    /// From the joined node's status write to the route, per agent.
    pub latency: Vec<Named<Latency>>,
    /// From the joined Node's create to the route, per agent.
    pub latency_from_create: Vec<Named<Latency>>,
    pub cpu_seconds_per_join: Vec<Named<f64>>,
}

pub async fn measure(
    cluster: &mut Cluster,
    sim: &SimAgent,
    options: JoinOptions,
) -> anyhow::Result<JoinFigures> {
    if options.joins == 0 {
        bail!("--joins must be at least 1");
    }
    let (before, _) = settle(cluster, Instant::now(), options.quiet, options.cap).await?;
    let agent_writes_before = agent_writes(cluster).await;
    let cpu_before = agent_cpu(cluster)?;
    let mut samples = Samples::new(cluster.agents.len());
    let joined = Instant::now();
    let first = join_one(cluster, sim, options.first, options.cap).await?;
    samples.push(first);
    let (after, settled) = settle(cluster, joined, options.quiet, options.cap).await?;
    let agent_writes_after = agent_writes(cluster).await;
    let real_agents = cluster
        .agents
        .iter()
        .zip(agent_writes_before.iter().zip(&agent_writes_after))
        .map(|(a, (b, c))| Named {
            name: a.name.clone(),
            value: b.zip(*c).map(|(b, c)| (c - b).max(0.0) as u64),
        })
        .collect();
    let writes = join_writes(&before, &after, settled, real_agents);
    for j in 1..options.joins {
        let measured = join_one(cluster, sim, options.first + j, options.cap).await?;
        samples.push(measured);
        // One at a time: the next join starts once this one's writes are over.
        let short = options.quiet.min(Duration::from_secs(1));
        settle(cluster, Instant::now(), short, options.cap).await?;
    }
    let cpu_after = agent_cpu(cluster)?;
    let cpu_seconds_per_join = cluster
        .agents
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .map(|(a, (b, c))| Named {
            name: a.name.clone(),
            value: (c - b) / options.joins as f64,
        })
        .collect();
    let names: Vec<String> = cluster.agents.iter().map(|a| a.name.clone()).collect();
    Ok(JoinFigures {
        writes,
        latency: samples.latency(&names, |s| s.from_status),
        latency_from_create: samples.latency(&names, |s| s.from_create),
        cpu_seconds_per_join,
    })
}

/// How long one agent took for one join, in milliseconds (None: not within the cap).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    from_status: Option<f64>,
    from_create: Option<f64>,
}

/// Samples per agent, per join.
struct Samples(Vec<Vec<Sample>>);

impl Samples {
    fn new(agents: usize) -> Self {
        Self(vec![Vec::new(); agents])
    }

    fn push(&mut self, per_agent: Vec<Sample>) {
        for (all, sample) in self.0.iter_mut().zip(per_agent) {
            all.push(sample);
        }
    }

    fn latency(
        &self,
        names: &[String],
        pick: impl Fn(&Sample) -> Option<f64>,
    ) -> Vec<Named<Latency>> {
        names
            .iter()
            .zip(&self.0)
            .map(|(name, samples)| {
                let got: Vec<f64> = samples.iter().filter_map(&pick).collect();
                Named {
                    name: name.clone(),
                    value: Latency::of(got.clone(), samples.len() - got.len()),
                }
            })
            .collect()
    }
}

/// The kube-apiserver writes between two settled snapshots, split into
/// Tartan's group and the rest.
fn join_writes(
    before: &Writes,
    after: &Writes,
    settled: Settled,
    real_agents: Vec<Named<Option<u64>>>,
) -> JoinWrites {
    let delta = promtext::diff(before, after);
    let named = |writes: Vec<(String, u64)>| {
        writes
            .into_iter()
            .map(|(name, value)| Named { name, value })
            .collect::<Vec<_>>()
    };
    let tartan = promtext::in_group(&delta, GROUP);
    let other = delta
        .iter()
        .filter(|(k, _)| k.group != GROUP)
        .map(|(k, v)| (k.to_string(), *v));
    JoinWrites {
        tartan_total: promtext::total(&tartan),
        tartan: named(tartan.iter().map(|(k, v)| (k.to_string(), *v)).collect()),
        other: named(other.collect()),
        real_agents,
        settle_seconds: settled.last_write_after.as_secs_f64(),
        quiet: settled.quiet,
    }
}

/// Creates fake node `index` and waits, polling every 5 ms, until each
/// real agent routes its subnet.
async fn join_one(
    cluster: &mut Cluster,
    sim: &SimAgent,
    index: usize,
    cap: Duration,
) -> anyhow::Result<Vec<Sample>> {
    let created = Instant::now();
    fake::create(&cluster.client, index..index + 1, 1).await?;
    let name = fake::name(index);
    let (cidr, written) = loop {
        {
            let state = sim.state();
            if let Some(seen) = state.subnets.get(&name)
                && let (Some(cidr), Some(at)) = (seen.cidr, seen.written_at)
            {
                break (cidr, at);
            }
        }
        if created.elapsed() > cap {
            bail!("{name}: no NodeSubnet with a status within {cap:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut samples = vec![Sample::default(); cluster.agents.len()];
    while created.elapsed() < cap {
        let mut pending = false;
        for (agent, sample) in cluster.agents.iter_mut().zip(samples.iter_mut()) {
            if sample.from_create.is_some() {
                continue;
            }
            let routed = agent
                .probe
                .has(cidr, TARTAN_PROTOCOL)
                .with_context(|| format!("looking up {cidr} in {}", agent.netns))?;
            if routed {
                let now = Instant::now();
                let ms = |since: Instant| now.saturating_duration_since(since).as_secs_f64() * 1e3;
                *sample = Sample {
                    from_status: Some(ms(written)),
                    from_create: Some(ms(created)),
                };
            } else {
                pending = true;
            }
        }
        if !pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.check_alive()?;
    Ok(samples)
}

#[derive(Debug, Clone, Copy)]
struct Settled {
    /// From `since` to the last change of Tartan's write counters seen (the
    /// start of the wait when none moved during it).
    last_write_after: Duration,
    /// False: they never stayed still for the quiet period before the cap.
    quiet: bool,
}

/// Waits until Tartan's write counters have not moved for `quiet` (at most
/// `cap`), and returns the last snapshot. Other groups are not watched:
/// the operator's Lease renewals never stop.
async fn settle(
    cluster: &mut Cluster,
    since: Instant,
    quiet: Duration,
    cap: Duration,
) -> anyhow::Result<(Writes, Settled)> {
    let start = Instant::now();
    let mut snapshot = promtext::apiserver_writes(&scrape::apiserver(&cluster.client).await?);
    let mut last_change = start;
    loop {
        // A /metrics page of a loaded API server is large: twice a second is enough.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = promtext::apiserver_writes(&scrape::apiserver(&cluster.client).await?);
        let moved = promtext::in_group(&now, GROUP) != promtext::in_group(&snapshot, GROUP);
        snapshot = now;
        if moved {
            last_change = Instant::now();
        }
        let settled = Settled {
            last_write_after: last_change.saturating_duration_since(since),
            quiet: last_change.elapsed() >= quiet,
        };
        if settled.quiet || start.elapsed() > cap {
            cluster.check_alive()?;
            return Ok((snapshot, settled));
        }
    }
}

/// Each real agent's status writes so far (None: its build has no such metric).
async fn agent_writes(cluster: &Cluster) -> Vec<Option<f64>> {
    let mut out = Vec::new();
    for agent in &cluster.agents {
        let text = scrape::metrics(agent.metrics).await.ok();
        out.push(text.and_then(|t| promtext::sum(&t, AGENT_WRITES)));
    }
    out
}

fn agent_cpu(cluster: &Cluster) -> anyhow::Result<Vec<f64>> {
    cluster
        .agents
        .iter()
        .map(|a| {
            let pid = a.process.pid().context("agent without a process")?;
            procfs::cpu_seconds(pid)
        })
        .collect()
}
