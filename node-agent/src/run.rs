//! Wiring: the probes server, the data plane, the watches (`watch/`), the
//! debounced reconcile loop, SIGTERM (stop without touching the kernel) and
//! `--cleanup`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::agent::{Agent, Health, Programmer};
use crate::cli::{Args, Command};
use crate::cni::CniConfig;
use crate::dataplane::{Dataplane, DataplaneConfig, cleanup};
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::sysctl::Sysctls;
use crate::udp::auth::DatagramKey;
use crate::underlay::Choice;
use crate::watch;
use crate::watch::secrets::BgpSecrets;
use crate::wireguard::keys::NodeKey;
use tables::{start_network_policy, start_pod_source_check};

mod tables;

/// A burst of events within this window is one apply.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// ...but a steady stream of events never delays an apply longer than this.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

pub async fn main(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Command::Rbac { name }) => {
            println!("{}", crate::rbac::render(name)?);
            return Ok(());
        }
        Some(Command::AdmissionPolicy {
            namespace,
            service_account,
        }) => {
            println!("{}", crate::admission::render(namespace, service_account)?);
            return Ok(());
        }
        Some(Command::Keep { socket }) => {
            tartan_runtime::init_logging(args.log_format);
            return run_keeper(socket.clone()).await;
        }
        None => {}
    }
    tartan_runtime::init_logging(args.log_format);
    let netns = args
        .netns
        .as_deref()
        .map(NetNs::named)
        .unwrap_or(NetNs::Current);
    let cni = CniConfig {
        dir: args.cni_conf_dir.clone(),
        ipam_data_dir: args.cni_ipam_data_dir.clone(),
        source_check: args.pod_source_check.then(|| args.cni_socket.clone()),
    };
    if args.cleanup {
        return run_cleanup(&args, &netns, &cni).await;
    }
    run_agent(&args, netns, cni).await
}

/// `--cleanup`: remove everything Tartan owns here, once or (`--cleanup-hold`) until SIGTERM.
async fn run_cleanup(args: &Args, netns: &NetNs, cni: &CniConfig) -> anyhow::Result<()> {
    let report = cleanup(netns, Some(cni)).context("cleaning up")?;
    tracing::info!(
        removed = report.total(),
        "removed everything Tartan owned on this node"
    );
    if args.cleanup_hold {
        return hold_clean(args, netns, cni, report.total() == 0).await;
    }
    Ok(())
}

async fn run_agent(args: &Args, netns: NetNs, cni: CniConfig) -> anyhow::Result<()> {
    let node_name = args
        .node_name
        .clone()
        .context("--node-name (or NODE_NAME) is required")?;
    let client = tartan_runtime::client_with(args.kubeconfig.as_deref(), args.kube_api).await?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::default());
    let shutdown = tartan_runtime::Shutdown::on_signals();
    let probes = {
        let (metrics, health) = (metrics.clone(), health.clone());
        tartan_runtime::Probes::new(move || metrics.render(), move || health.ready())
    };
    let server = tokio::spawn(tartan_runtime::serve_probes(
        args.metrics_addr,
        probes,
        shutdown.wait(),
    ));
    let udp_key = read_udp_key(args)?;
    let mut config = dataplane_config(args, &netns, cni, udp_key);
    // Without a key the node still runs every other backend; a network that
    // asks for wireguard then says why on the node's Ready condition.
    config.wireguard_key = NodeKey::load_or_create(&args.wireguard_key_file)
        .inspect_err(|e| tracing::error!(error = %e, "the wireguard backend is unavailable"))
        .ok();
    let wireguard_public_key = config.wireguard_key.as_ref().map(NodeKey::public);
    let bird_socket = config.bird.socket();
    let dataplane =
        Arc::new(Dataplane::start(config, metrics.clone()).context("opening netlink sockets")?);
    let policy_netns = netns.clone();
    let mut agent = Agent::new(
        client.clone(),
        netns,
        underlay_choice(args),
        crate::host::kernel_version(),
        dataplane.clone(),
        metrics.clone(),
        health.clone(),
    );
    agent.bird_socket = Some(bird_socket);
    agent.wireguard_public_key = wireguard_public_key;
    if udp_key.is_some() {
        agent.udp_tag_len = crate::udp::auth::TAG_LEN as u32;
    }

    start_pod_source_check(args, &policy_netns, &metrics).await?;
    start_network_policy(
        args,
        &client,
        &node_name,
        &policy_netns,
        &metrics,
        &health,
        &shutdown,
    )
    .await?;
    let (sink, changes) = watch::Sink::new(&node_name, &args.network, metrics, health);
    watch::spawn(&client, &node_name, &args.network, &sink);
    agent.secrets = Some(BgpSecrets::new(
        client.clone(),
        args.namespace.clone(),
        sink.clone(),
    ));
    tracing::info!(node = %node_name, network = %args.network, "tartan-agent started");
    reconcile_loop(&mut agent, &sink, changes, shutdown.wait()).await;
    tracing::info!("stopping; the kernel state stays as programmed");
    drop(agent);
    if let Ok(dataplane) = Arc::try_unwrap(dataplane) {
        dataplane.stop();
    }
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    Ok(())
}

/// The udp datagram key from `--udp-key-file`, when given.
fn read_udp_key(args: &Args) -> anyhow::Result<Option<DatagramKey>> {
    let Some(path) = &args.udp_key_file else {
        return Ok(None);
    };
    let context = || format!("--udp-key-file {}", path.display());
    let secret = std::fs::read(path).with_context(context)?;
    Ok(Some(
        DatagramKey::from_secret(&secret).with_context(context)?,
    ))
}

fn underlay_choice(args: &Args) -> Choice {
    match (&args.iface, &args.iface_regex) {
        (Some(name), _) => Choice::Name(name.clone()),
        (None, Some(pattern)) => Choice::Pattern(pattern.clone()),
        (None, None) => Choice::NodeInternalIp,
    }
}

/// The datapath keeper until SIGTERM; what it holds closes when it exits.
async fn run_keeper(socket: std::path::PathBuf) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let listener = crate::keeper::Listener::bind(&socket)
        .with_context(|| format!("the datapath keeper on {}", socket.display()))?;
    let mut serving = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || listener.serve(&stop))
    };
    tracing::info!(socket = %socket.display(), "datapath keeper listening");
    let shutdown = tartan_runtime::Shutdown::on_signals();
    let served = tokio::select! {
        _ = shutdown.wait() => {
            stop.store(true, Ordering::Relaxed);
            serving.await
        }
        done = &mut serving => done,
    };
    let store = served
        .context("the datapath keeper's thread")?
        .with_context(|| format!("the datapath keeper on {}", socket.display()))?;
    anyhow::ensure!(
        stop.load(Ordering::Relaxed),
        "the datapath keeper stopped on its own"
    );
    tracing::info!(
        devices = store.devices().count(),
        "datapath keeper stopping; what it held closes"
    );
    Ok(())
}

fn dataplane_config(
    args: &Args,
    netns: &NetNs,
    cni: CniConfig,
    udp_key: Option<DatagramKey>,
) -> DataplaneConfig {
    DataplaneConfig {
        netns: netns.clone(),
        cni: Some(cni),
        sysctls: Sysctls {
            root: args.sysctl_root.clone(),
        },
        resync: Duration::from_secs(args.resync_seconds),
        udp: crate::udp::EngineOptions {
            queues: match args.udp_queues {
                0 => crate::udp::default_queues(),
                n => usize::from(n),
            },
            batched: true,
            key: udp_key,
            busy_poll: Duration::from_micros(u64::from(args.tun_busy_poll_us)),
        },
        wireguard_key: None,
        keeper: args.datapath_keeper.clone().map(crate::keeper::Keeper::at),
        bird: match &args.bird_socket {
            Some(socket) => crate::bgp::BirdMode::External {
                socket: socket.clone(),
                config: args.bird_config.clone(),
            },
            None => crate::bgp::BirdMode::Managed {
                dir: args.bird_dir.clone(),
            },
        },
    }
}

/// Reconciles on every change of the index (a burst debounced into one
/// pass: peer changes as deltas, anything else as a full plan), on BGP
/// changes while BGP runs, and again in full after a failure (an API error or
/// a data plane that could not be programmed) with backoff; until `stop`.
async fn reconcile_loop<P: Programmer>(
    agent: &mut Agent<P>,
    sink: &watch::Sink,
    mut changes: tokio::sync::watch::Receiver<u64>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    // While BGP runs, its sessions and routes are inputs too: polled each second.
    let mut bgp_poll = tokio::time::interval(Duration::from_secs(1));
    bgp_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let retry = tokio::time::sleep(Duration::ZERO);
    let mut retry = std::pin::pin!(retry);
    loop {
        let full = tokio::select! {
            _ = &mut stop => break,
            changed = changes.changed() => if changed.is_err() { break } else { false },
            _ = bgp_poll.tick() => if agent.bgp_changed().await { true } else { continue },
            _ = &mut retry, if failures > 0 => true,
        };
        debounce(&mut changes).await;
        changes.borrow_and_update();
        let (update, own) = sink.take();
        let update = match update {
            Some(update) if !full => update,
            // A retry or BGP: everything again, from the index as it stands.
            _ if full => watch::Update::Full(current_inputs(sink)),
            _ => continue,
        };
        let ready = match &update {
            watch::Update::Full(inputs) => matches!(inputs, watch::Inputs::Ready(_)),
            watch::Update::Peers(_) => true,
        };
        let result = match update {
            watch::Update::Full(inputs) => agent.reconcile(inputs, own.as_ref()).await,
            watch::Update::Peers(peers) => agent.reconcile_peers(peers, own.as_ref()).await,
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "reconcile failed; retrying");
        }
        let unprogrammed = ready
            && !agent
                .health
                .programmed
                .load(std::sync::atomic::Ordering::Relaxed);
        if result.is_err() || unprogrammed {
            failures = failures.saturating_add(1);
            let delay = retry_delay(failures, jitter());
            retry.as_mut().reset(tokio::time::Instant::now() + delay);
        } else {
            failures = 0;
        }
    }
}

/// The index's whole inputs as they stand (a retry plans everything).
fn current_inputs(sink: &watch::Sink) -> watch::Inputs {
    sink.index
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .inputs()
}

/// 2 s, doubling per consecutive failure up to 60 s, stretched by `jitter`
/// (0..1, up to +25%) so agents that failed together do not retry together.
fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let base = 2.0 * 2f64.powi(failures.saturating_sub(1).min(5) as i32);
    Duration::from_secs_f64(base.min(60.0) * (1.0 + 0.25 * jitter.clamp(0.0, 1.0)))
}

/// A number in 0..1 from the clock: enough to spread retries.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

/// Waits out a burst of changes: until none came for [`DEBOUNCE`], at most [`DEBOUNCE_MAX`].
async fn debounce(inputs: &mut tokio::sync::watch::Receiver<u64>) {
    let first = tokio::time::Instant::now();
    while first.elapsed() < DEBOUNCE_MAX {
        match tokio::time::timeout(DEBOUNCE, inputs.changed()).await {
            Ok(Ok(())) => continue,
            _ => break,
        }
    }
}

/// The uninstall hook's loop: clean until two rounds in a row find nothing
/// (the agent is gone and nothing came back), then report ready; until SIGTERM.
async fn hold_clean(
    args: &Args,
    netns: &NetNs,
    cni: &CniConfig,
    mut clean: bool,
) -> anyhow::Result<()> {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shutdown = tartan_runtime::Shutdown::on_signals();
    let probes = {
        let ready = ready.clone();
        tartan_runtime::Probes::new(String::new, move || {
            ready.load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    let server = tokio::spawn(tartan_runtime::serve_probes(
        args.metrics_addr,
        probes,
        shutdown.wait(),
    ));
    let mut stop = std::pin::pin!(shutdown.wait());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let removed = cleanup(netns, Some(cni)).context("cleaning up")?.total();
        if removed > 0 {
            tracing::info!(
                removed,
                "Tartan objects came back (an agent still runs); removed again"
            );
        }
        if clean && removed == 0 && !ready.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("node clean");
        }
        clean = removed == 0;
    }
    server
        .await
        .context("probes server task")?
        .context("probes server")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::retry_delay;
    use std::time::Duration;

    #[test]
    fn retries_back_off_to_a_minute_with_bounded_jitter() {
        assert_eq!(retry_delay(1, 0.0), Duration::from_secs(2));
        assert_eq!(retry_delay(2, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(5, 0.0), Duration::from_secs(32));
        assert_eq!(retry_delay(6, 0.0), Duration::from_secs(60));
        assert_eq!(retry_delay(60, 0.0), Duration::from_secs(60));
        assert_eq!(retry_delay(1, 1.0), Duration::from_millis(2500));
        assert_eq!(retry_delay(60, 7.0), Duration::from_secs(75));
    }
}
