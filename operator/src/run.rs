//! Wiring: client, metrics server, leader election, the three controllers, and
//! shutdown on SIGTERM.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client};
use tartan_crds::{NodeSubnet, OverlayNetwork};

use crate::cli::{Args, Command};
use crate::controller::{self, Context, IndexFeeder, error_policy};

use crate::index::SubnetIndex;
use crate::lease::{Leadership, LeaseConfig, LeaseManager};
use crate::metrics::Metrics;

pub async fn main(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Command::Crds) => {
            for file in tartan_crds::generate::crds() {
                print!("---\n{}", tartan_crds::generate::render(&file.crd)?);
            }
            return Ok(());
        }
        Some(Command::Rbac { name, namespace }) => {
            print!("{}", crate::rbac::render(name, namespace)?);
            return Ok(());
        }
        Some(Command::Uninstall {
            namespace,
            agent_daemonset,
            cleanup_daemonset,
            timeout_seconds,
        }) => {
            tartan_runtime::init_logging(args.log_format);
            let client = tartan_runtime::client(args.kubeconfig.as_deref()).await?;
            let timeout = Duration::from_secs(*timeout_seconds);
            return crate::uninstall::run(
                client,
                namespace,
                agent_daemonset,
                cleanup_daemonset,
                timeout,
            )
            .await;
        }
        None => {}
    }
    tartan_runtime::init_logging(args.log_format);
    let client = tartan_runtime::client(args.kubeconfig.as_deref()).await?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::default());
    let shutdown = tartan_runtime::Shutdown::on_signals();
    let stopped = || shutdown.wait();
    let probes = {
        let (metrics, health) = (metrics.clone(), health.clone());
        tartan_runtime::Probes::new(
            move || metrics.render(),
            move || health.ready.load(Ordering::Relaxed),
        )
    };
    let server = tokio::spawn(tartan_runtime::serve_probes(
        args.metrics_addr,
        probes,
        stopped(),
    ));

    let identity = args.identity.clone().unwrap_or_else(hostname);
    let leadership = if args.leader_election {
        let namespace = args
            .leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "kube-system".into());
        let duration = Duration::from_secs(args.lease_duration_seconds.max(3));
        let config = LeaseConfig {
            name: args.leader_election_id.clone(),
            namespace: namespace.clone(),
            identity: identity.clone(),
            duration,
            renew_every: duration / 3,
            retry_every: Duration::from_secs(2).min(duration / 3),
            field_manager: controller::FIELD_MANAGER,
        };
        let (manager, mut leadership) = LeaseManager::new(
            Api::<Lease>::namespaced(client.clone(), &namespace),
            config,
            metrics.clone(),
        );
        let lease_task = tokio::spawn(manager.run(stopped()));
        // A standby is healthy and ready; it just does not write.
        health.ready.store(true, Ordering::Relaxed);
        tracing::info!(%identity, lease = %args.leader_election_id, %namespace, "waiting for leadership");
        tokio::select! {
            _ = leadership.acquired() => {}
            _ = stopped() => return finish(server).await,
        }
        health.ready.store(false, Ordering::Relaxed);
        Some((leadership, lease_task))
    } else {
        None
    };
    let (leader, lease_task) = match leadership {
        Some((l, t)) => (l, Some(t)),
        None => (Leadership::always(), None),
    };
    let controllers = run_controllers(
        client,
        &args,
        &identity,
        metrics,
        health.clone(),
        leader,
        stopped(),
    );
    match lease_task {
        Some(lease_task) => {
            tokio::select! {
                _ = controllers => {}
                lease = lease_task => {
                    // Lost the lease: stop at once so a restart campaigns afresh.
                    match lease {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(e).context("leader election"),
                        Err(e) => return Err(e).context("leader election task"),
                    }
                }
            }
        }
        None => controllers.await,
    }
    finish(server).await
}

async fn finish(server: tokio::task::JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    match server.await {
        Ok(result) => result.context("metrics server"),
        Err(e) => Err(e).context("metrics server task"),
    }
}

async fn run_controllers(
    client: Client,
    args: &Args,
    identity: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    leader: Leadership,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let nodes_api: Api<Node> = Api::all(client.clone());
    let subnets_api: Api<NodeSubnet> = Api::all(client.clone());
    let networks_api: Api<OverlayNetwork> = Api::all(client.clone());

    let node_controller = Controller::new(nodes_api, watcher::Config::default());
    let (subnets_reader, subnets_writer) = reflector::store();
    let (wake_nodes, wake_nodes_rx) = mpsc::unbounded();
    let (wake_network, wake_network_rx) = mpsc::unbounded();
    let ctx = Arc::new(Context {
        client: client.clone(),
        network: args.network.clone(),
        index: Arc::new(Mutex::new(SubnetIndex::new(args.network.clone()))),
        nodes: node_controller.store(),
        subnets: subnets_reader.clone(),
        recorder: Recorder::new(client.clone(), Context::reporter(identity)),
        metrics,
        leader,
        wake_nodes,
        wake_network,
    });

    let mut feeder = IndexFeeder::new(&ctx);
    let subnet_events = watcher(subnets_api, watcher::Config::default())
        .default_backoff()
        .inspect_ok(move |event| feeder.feed(event))
        .reflect(subnets_writer)
        .touched_objects();
    let subnet_controller = Controller::for_stream(subnet_events, subnets_reader)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            controller::subnet::reconcile,
            |_, e, c| error_policy("subnet", e, &c),
            ctx.clone(),
        )
        .for_each(|_| async {});

    let network_name = args.network.clone();
    let network_controller = Controller::new(
        networks_api,
        watcher::Config::default().fields(&format!("metadata.name={network_name}")),
    )
    .reconcile_on(wake_network_rx.map(move |()| ObjectRef::new(&network_name)))
    .graceful_shutdown_on(shutdown.clone())
    .run(
        controller::network::reconcile,
        |_, e, c| error_policy("network", e, &c),
        ctx.clone(),
    )
    .for_each(|_| async {});

    let node_controller = node_controller
        .reconcile_all_on(wake_nodes_rx)
        .graceful_shutdown_on(shutdown.clone())
        .run(
            controller::node::reconcile,
            |_, e, c| error_policy("node", e, &c),
            ctx.clone(),
        )
        .for_each(|_| async {});

    let ready_ctx = ctx.clone();
    let readiness = async move {
        // Ready once the NodeSubnets are listed: only then can allocation start.
        while !ready_ctx.index().is_synced() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        health.ready.store(true, Ordering::Relaxed);
        tracing::info!("NodeSubnets listed; allocating");
    };
    tokio::join!(
        subnet_controller,
        network_controller,
        node_controller,
        readiness
    );
}

/// What `/readyz` reports; flipped as the controllers start.
#[derive(Default)]
pub struct Health {
    /// Caches synced and (when leading) controllers running, or standing by.
    pub ready: std::sync::atomic::AtomicBool,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "tartan-operator".into())
}
