//! Wiring: watches feeding the index, the debounced reconcile loop, the probes
//! server, SIGTERM (stop without touching the kernel) and `--cleanup`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tokio::sync::watch;

use crate::agent::{Agent, Health, UnderlayChoice};
use crate::cli::{Args, Command};
use crate::cni::CniConfig;
use crate::dataplane::{Dataplane, DataplaneConfig, cleanup};
use crate::index::{AgentIndex, Inputs};
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::sysctl::Sysctls;

/// A burst of events within this window is one apply.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// ...but a steady stream of events never delays an apply longer than this.
const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

pub async fn main(args: Args) -> anyhow::Result<()> {
    if let Some(Command::Rbac { name }) = &args.command {
        println!("{}", crate::rbac::render(name)?);
        return Ok(());
    }
    tartan_runtime::init_logging(args.log_format);
    let netns = args
        .netns
        .as_deref()
        .map(NetNs::named)
        .unwrap_or(NetNs::Current);
    let cni = CniConfig {
        dir: args.cni_conf_dir.clone(),
        ipam_data_dir: None,
    };
    if args.cleanup {
        let report = cleanup(&netns, Some(&cni)).context("cleaning up")?;
        tracing::info!(
            removed = report.total(),
            "removed everything Tartan owned on this node"
        );
        if args.cleanup_hold {
            return hold_clean(&args, &netns, &cni, report.total() == 0).await;
        }
        return Ok(());
    }
    let node_name = args
        .node_name
        .clone()
        .context("--node-name (or NODE_NAME) is required")?;
    let client = tartan_runtime::client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::default());
    let shutdown = tartan_runtime::Shutdown::on_signals();
    let stopped = || shutdown.wait();
    let probes = {
        let (metrics, health) = (metrics.clone(), health.clone());
        tartan_runtime::Probes::new(move || metrics.render(), move || health.ready())
    };
    let server = tokio::spawn(tartan_runtime::serve_probes(
        args.metrics_addr,
        probes,
        stopped(),
    ));

    let udp_key = match &args.udp_key_file {
        Some(path) => {
            let secret = std::fs::read(path)
                .with_context(|| format!("--udp-key-file {}", path.display()))?;
            Some(
                crate::udp::auth::DatagramKey::from_secret(&secret)
                    .with_context(|| format!("--udp-key-file {}", path.display()))?,
            )
        }
        None => None,
    };
    let config = DataplaneConfig {
        netns: netns.clone(),
        cni: Some(cni),
        sysctls: Sysctls {
            root: args.sysctl_root.clone(),
        },
        resync: Duration::from_secs(args.resync_seconds.max(10)),
        udp: crate::udp::EngineOptions {
            queues: match args.udp_queues {
                0 => crate::udp::default_queues(),
                n => n,
            },
            batched: true,
            key: udp_key,
        },
        bird: match &args.bird_socket {
            Some(socket) => crate::bgp::BirdMode::External {
                socket: socket.clone(),
                config: args.bird_config.clone(),
            },
            None => crate::bgp::BirdMode::Managed {
                dir: args.bird_dir.clone(),
            },
        },
    };
    let bird_socket = config.bird.socket();
    let dataplane =
        Arc::new(Dataplane::start(config, metrics.clone()).context("opening netlink sockets")?);
    let underlay = match (&args.iface, &args.iface_regex) {
        (Some(name), _) => UnderlayChoice::Name(name.clone()),
        (None, Some(pattern)) => UnderlayChoice::Pattern(pattern.clone()),
        (None, None) => UnderlayChoice::NodeInternalIp,
    };
    let mut agent = Agent::new(
        client.clone(),
        netns,
        underlay,
        dataplane.clone(),
        metrics.clone(),
        health.clone(),
    );
    agent.bird_socket = Some(bird_socket);
    agent.udp_auth = udp_key.is_some();

    let index = Arc::new(Mutex::new(AgentIndex::new(
        node_name.clone(),
        args.network.clone(),
    )));
    let (inputs_tx, mut inputs_rx) = watch::channel((Inputs::WaitingForNetwork, None::<String>));
    let inputs_tx = Arc::new(inputs_tx);
    spawn_watches(
        &client,
        &node_name,
        &args.network,
        index.clone(),
        inputs_tx,
        metrics.clone(),
        health.clone(),
    );

    tracing::info!(node = %node_name, network = %args.network, "tartan-agent started");
    let mut stop = std::pin::pin!(stopped());
    // While BGP runs, its sessions and routes are inputs too: polled each second.
    let mut bgp_poll = tokio::time::interval(Duration::from_secs(1));
    bgp_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            changed = inputs_rx.changed() => if changed.is_err() { break },
            _ = bgp_poll.tick() => if !agent.bgp_changed().await { continue },
        }
        // Coalesce a burst of events into one apply.
        let first = tokio::time::Instant::now();
        while first.elapsed() < DEBOUNCE_MAX {
            match tokio::time::timeout(DEBOUNCE, inputs_rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        let (inputs, own) = inputs_rx.borrow_and_update().clone();
        if let Err(e) = agent.reconcile(&inputs, own.as_deref()).await {
            tracing::warn!(error = %e, "reconcile failed; retrying");
            // Try again soon even if nothing changes (API back, interface up).
            tokio::time::sleep(Duration::from_secs(2)).await;
            inputs_rx.mark_changed();
        }
    }
    tracing::info!("stopping; the kernel state stays as programmed");
    if let Ok(dataplane) = Arc::try_unwrap(dataplane) {
        dataplane.stop();
    }
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    Ok(())
}

type InputsTx = Arc<watch::Sender<(Inputs, Option<String>)>>;

/// Publishes the index's inputs, only when they changed.
fn publish(index: &Mutex<AgentIndex>, tx: &InputsTx) {
    let index = index.lock().unwrap_or_else(|e| e.into_inner());
    let next = (index.inputs(), index.own().map(|s| s.name_any()));
    tx.send_if_modified(|current| {
        if *current == next {
            false
        } else {
            *current = next;
            true
        }
    });
}

fn spawn_watches(
    client: &Client,
    node_name: &str,
    network: &str,
    index: Arc<Mutex<AgentIndex>>,
    tx: InputsTx,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) {
    let nodes: Api<Node> = Api::all(client.clone());
    let subnets: Api<NodeSubnet> = Api::all(client.clone());
    let networks: Api<OverlayNetwork> = Api::all(client.clone());
    let by_name = |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
    watch_into(
        nodes,
        by_name(node_name),
        "nodes",
        index.clone(),
        tx.clone(),
        metrics.clone(),
        health.clone(),
        |i, o| i.apply_node(o),
        |_, _| {},
        |i, all| {
            for node in all {
                i.apply_node(node);
            }
        },
    );
    watch_into(
        subnets,
        watcher::Config::default(),
        "nodesubnets",
        index.clone(),
        tx.clone(),
        metrics.clone(),
        health.clone(),
        |i, o| i.apply_subnet(o),
        |i, o| i.delete_subnet(&o.name_any()),
        |i, all| i.reset_subnets(all),
    );
    watch_into(
        networks,
        by_name(network),
        "overlaynetworks",
        index,
        tx,
        metrics,
        health,
        |i, o| i.apply_network(o),
        |i, o| i.delete_network(&o.name_any()),
        |i, all| {
            for network in all {
                i.apply_network(network);
            }
        },
    );
}

#[allow(clippy::too_many_arguments)]
fn watch_into<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    index: Arc<Mutex<AgentIndex>>,
    tx: InputsTx,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    apply: fn(&mut AgentIndex, K),
    delete: fn(&mut AgentIndex, K),
    reset: fn(&mut AgentIndex, Vec<K>),
) where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let mut relist: Vec<K> = Vec::new();
        // Backoff keeps retrying while the API is unreachable; the data plane
        // meanwhile stays as last programmed.
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => {
                    health
                        .api_ok
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    event
                }
                Err(e) => {
                    tracing::warn!(resource, error = %e, "watch failed; retrying with backoff");
                    metrics.watch_errors.with_label_values(&[resource]).inc();
                    health
                        .api_ok
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
            };
            {
                let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    watcher::Event::Apply(o) => apply(&mut index, o),
                    watcher::Event::Delete(o) => delete(&mut index, o),
                    watcher::Event::Init => relist.clear(),
                    watcher::Event::InitApply(o) => relist.push(o),
                    watcher::Event::InitDone => reset(&mut index, std::mem::take(&mut relist)),
                }
            }
            publish(&index, &tx);
        }
    });
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
