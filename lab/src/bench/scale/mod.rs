//! `bench --scale N`: Tartan at N nodes on the real API server. N fake Nodes
//! (no machine behind them; a simulated agent writes their NodeSubnet
//! status) next to two real agents in node namespaces, the real operator,
//! and kube-apiserver's own request counters as the referee.
//!
//! ```text
//!   create N fake Nodes (bounded concurrency) ──▶ operator: N NodeSubnets
//!       ──▶ simulated agent: N statuses ──▶ real agents: N routes each
//!   settled? ──▶ J joins, one at a time: writes per join, time to route, CPU
//! ```
//!
//! Every wait is capped by `--timeout`; a figure not reached is reported as
//! how far it got. The agent and operator binaries are flags, so one build
//! of the bench measures another build of Tartan ("before" and "after").

pub mod cluster;
pub mod fake;
pub mod join;
pub mod kernel;
pub mod procfs;
pub mod promtext;
pub mod report;
pub mod scrape;
pub mod sim_agent;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use cluster::{Cluster, Sources};
use report::{Named, Progress, Report};
use sim_agent::SimAgent;

/// The cluster CIDR: /24s for 65,536 nodes.
const CIDR: &str = "10.0.0.0/8";
const CAPACITY: usize = 1 << 16;
/// The two real nodes hold a subnet each.
const REAL_NODES: usize = 2;

#[derive(Debug, Clone)]
pub struct ScaleOptions {
    pub nodes: usize,
    pub joins: usize,
    pub timeout: Duration,
    /// Tartan's write counters still this long count as settled.
    pub quiet: Duration,
    /// Creates and simulated status writes in flight at once.
    pub in_flight: usize,
    /// How long a joining fake node's simulated agent waits before its status write.
    pub status_delay: Duration,
    pub sources: Sources,
    /// Directory of `scale-N.json` and `scale-N.md`.
    pub out: PathBuf,
}

/// A sibling of the running executable (`target/release/tartan-agent` next to
/// `target/release/tartan-lab`).
pub fn beside_exe(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating tartan-lab")?;
    let dir = exe.parent().context("tartan-lab has no directory")?;
    Ok(dir.join(name))
}

/// Runs the benchmark, writes its files, returns the Markdown.
pub fn run(options: ScaleOptions) -> anyhow::Result<String> {
    crate::lifecycle::require_root()?;
    let missing = tartan_testbed::missing(&["ip", "nft"]);
    if !missing.is_empty() {
        bail!("bench --scale needs {}", missing.join(", "));
    }
    check(&options)?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(async {
        tokio::select! {
            report = measure(&options) => report,
            // Dropping `measure` drops the cluster: processes, namespaces, files.
            signal = interrupted() => bail!("{} received: stopped and cleaned up", signal?),
        }
    })?;
    let md = report.markdown();
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let base = options.out.join(format!("scale-{}", options.nodes));
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(base.with_extension("json"), json + "\n")?;
    std::fs::write(base.with_extension("md"), &md)?;
    Ok(md)
}

fn check(options: &ScaleOptions) -> anyhow::Result<()> {
    if options.joins == 0 {
        bail!("--joins must be at least 1: the writes per join are measured on the first");
    }
    let wanted = options.nodes + options.joins + REAL_NODES;
    if wanted > CAPACITY || options.nodes + options.joins > fake::CAPACITY {
        bail!("--scale {}: {CIDR} holds {CAPACITY} /24s", options.nodes);
    }
    for (flag, path) in [
        ("--agent-bin", &options.sources.agent),
        ("--operator-bin", &options.sources.operator),
    ] {
        if !path.is_file() {
            bail!(
                "{flag} {}: no such file (build it, or point the flag at one)",
                path.display()
            );
        }
    }
    Ok(())
}

async fn interrupted() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.map(|()| "SIGINT").map_err(Into::into),
        _ = term.recv() => Ok("SIGTERM"),
    }
}

async fn measure(options: &ScaleOptions) -> anyhow::Result<Report> {
    // Other work on a shared machine moves every figure: say how busy it was.
    let load_before = load_average();
    let mut cluster = Cluster::start(&options.sources, CIDR).await?;
    // A CRD's watch cache answers 429 until it is initialised: only the
    // 429s after the start are load the API server shed.
    let shed_at_start = shed(&cluster).await?;
    let sim = SimAgent::start(&cluster.client, options.in_flight);
    let n = options.nodes;
    let client = cluster.client.clone();
    let in_flight = options.in_flight;
    let started = Instant::now();
    let creator = tokio::spawn(async move { fake::create(&client, 0..n, in_flight).await });
    let (subnets, programmed) = converge(&mut cluster, &sim, creator, started, options).await?;
    let mut notes = Vec::new();
    let settled = subnets.seconds.is_some() && programmed.iter().all(|p| p.value.seconds.is_some());
    if !settled {
        notes.push(
            "the cluster had not converged within the timeout: the join figures below were taken on a cluster still catching up".into(),
        );
    }
    let (agent_rss_kib, operator_rss_kib, apiserver_rss_kib) = memory(&cluster)?;
    // The N were written at once, to time the operator and agents; a
    // joining node's agent starts late, as a real one does.
    sim.delay_writes(options.status_delay);
    let joins = join::measure(
        &mut cluster,
        &sim,
        join::JoinOptions {
            first: n,
            joins: options.joins,
            quiet: options.quiet,
            cap: options.timeout.min(Duration::from_secs(60)),
        },
    )
    .await?;
    notes.extend(health_notes(&cluster, &sim, &shed_at_start, &load_before).await?);
    Ok(Report {
        nodes: n,
        joins: options.joins,
        status_delay_seconds: options.status_delay.as_secs_f64(),
        timeout_seconds: options.timeout.as_secs(),
        agent_binary: describe(&options.sources.agent),
        operator_binary: describe(&options.sources.operator),
        machine: super::machine(),
        subnets,
        programmed,
        join: Some(joins.writes),
        join_latency: joins.latency,
        join_latency_from_create: joins.latency_from_create,
        agent_rss_kib,
        operator_rss_kib,
        apiserver_rss_kib,
        agent_cpu_seconds_per_join: joins.cpu_seconds_per_join,
        notes,
    })
}

/// Waits, up to the timeout, until the simulated agent has seen N fake
/// NodeSubnets and each real agent has N + 1 routes (the fake nodes and the
/// other real node), timing each from the first create.
async fn converge(
    cluster: &mut Cluster,
    sim: &SimAgent,
    mut creator: tokio::task::JoinHandle<anyhow::Result<()>>,
    started: Instant,
    options: &ScaleOptions,
) -> anyhow::Result<(Progress, Vec<Named<Progress>>)> {
    let (n, peers) = (options.nodes, options.nodes + REAL_NODES - 1);
    let mut subnets = Progress::new(n);
    let mut programmed: Vec<Named<Progress>> = cluster
        .agents
        .iter()
        .map(|a| Named {
            name: a.name.clone(),
            value: Progress::new(peers),
        })
        .collect();
    let mut created = false;
    let mut last_log = Instant::now();
    loop {
        if !created && creator.is_finished() {
            (&mut creator).await.context("the Node creator")??;
            created = true;
        }
        cluster.check_alive()?;
        let elapsed = started.elapsed().as_secs_f64();
        subnets.update(sim.state().fake_seen, elapsed);
        for (p, routes) in programmed.iter_mut().zip(cluster.routes()?) {
            p.value.update(routes, elapsed);
        }
        let done =
            subnets.seconds.is_some() && programmed.iter().all(|p| p.value.seconds.is_some());
        if done || started.elapsed() > options.timeout {
            if !created {
                creator.abort();
            }
            return Ok((subnets, programmed));
        }
        if last_log.elapsed() > Duration::from_secs(10) {
            let routes: Vec<String> = programmed
                .iter()
                .map(|p| p.value.reached.to_string())
                .collect();
            eprintln!(
                "{elapsed:.0} s: {} of {n} NodeSubnets, routes {} of {peers}",
                subnets.reached,
                routes.join(" / ")
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Progress {
    fn new(target: usize) -> Self {
        Self {
            reached: 0,
            target,
            seconds: None,
            waited_seconds: 0.0,
        }
    }

    /// The first time `reached` meets the target is the figure.
    fn update(&mut self, reached: usize, elapsed: f64) {
        self.reached = reached;
        self.waited_seconds = elapsed;
        if self.seconds.is_none() && reached >= self.target {
            self.seconds = Some(elapsed);
        }
    }
}

/// RSS in KiB: each real agent's, the operator's, kube-apiserver's.
type Memory = (Vec<Named<u64>>, Option<u64>, Option<u64>);

fn memory(cluster: &Cluster) -> anyhow::Result<Memory> {
    let agents = cluster
        .agents
        .iter()
        .map(|a| -> anyhow::Result<Named<u64>> {
            let pid = a.process.pid().context("agent without a process")?;
            Ok(Named {
                name: a.name.clone(),
                value: procfs::rss_kib(pid)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rss = |pid: Option<u32>| pid.and_then(|p| procfs::rss_kib(p).ok());
    Ok((
        agents,
        rss(cluster.operator.pid()),
        rss(cluster.cp.apiserver_pid()),
    ))
}

/// What a reader of the figures should know: load shed by the API server,
/// failed simulated writes, how busy the machine was.
async fn health_notes(
    cluster: &Cluster,
    sim: &SimAgent,
    shed_at_start: &BTreeMap<String, u64>,
    load_before: &str,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    let shed: Vec<(String, u64)> = shed(cluster)
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            let since_start = v.saturating_sub(shed_at_start.get(&k).copied().unwrap_or(0));
            (since_start > 0).then_some((k, since_start))
        })
        .collect();
    if !shed.is_empty() {
        let list: Vec<String> = shed.iter().map(|(k, v)| format!("{k} {v}")).collect();
        notes.push(format!(
            "kube-apiserver shed {} requests with 429 Too Many Requests (the clients retried): {}",
            shed.iter().map(|(_, v)| v).sum::<u64>(),
            list.join(", ")
        ));
    }
    let state = sim.state();
    if state.write_errors > 0 {
        notes.push(format!(
            "the simulated agent failed {} status writes (last: {})",
            state.write_errors,
            state.last_error.clone().unwrap_or_default()
        ));
    }
    notes.push(format!(
        "load average (1 min) before / after: {load_before} / {}",
        load_average()
    ));
    Ok(notes)
}

/// kube-apiserver's 429 answers so far, by verb and resource.
async fn shed(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, u64>> {
    let metrics = scrape::apiserver(&cluster.client).await?;
    Ok(promtext::answered_with(&metrics, "429"))
}

/// The 1-minute load average, as /proc/loadavg says.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A binary's path and the cargo profile it was built with, as far as its
/// directory tells.
fn describe(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let profile = path
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|d| d.to_str())
        .filter(|d| ["release", "debug"].contains(d))
        .map_or(String::new(), |d| format!(" ({d} build)"));
    format!("{}{profile}", path.display())
}
