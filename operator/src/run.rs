//! Wiring: client, metrics server, leader election, the controllers, and
//! shutdown on SIGTERM.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tartan_runtime::backoff::{Backoff, Retries};
use tokio::task::JoinHandle;

use crate::cli::{Args, Command};
use crate::controller::network_status::{self, StatusSignal};
use crate::controller::throttle::Throttle;
use crate::controller::{self, Context, IndexFeeder, NodeMeta, error_policy};
use crate::index::SubnetIndex;
use crate::lease::{Leadership, LeaseConfig, LeaseError, LeaseManager};
use crate::metrics::Metrics;

pub async fn main(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Some(command) => run_command(&args, command).await,
        None => run_operator(&args).await,
    }
}

/// The one-shot subcommands: print the CRDs or the RBAC rules, or uninstall.
async fn run_command(args: &Args, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Crds => {
            for file in tartan_crds::generate::crds() {
                print!("---\n{}", tartan_crds::generate::render(&file.crd)?);
            }
            Ok(())
        }
        Command::Rbac { name, namespace } => {
            print!("{}", crate::rbac::render(name, namespace)?);
            Ok(())
        }
        Command::Uninstall {
            namespace,
            agent_daemonset,
            cleanup_daemonset,
            timeout_seconds,
        } => {
            tartan_runtime::init_logging(args.log_format);
            let client =
                tartan_runtime::client_with(args.kubeconfig.as_deref(), args.kube_api).await?;
            let timeout = Duration::from_secs(*timeout_seconds);
            crate::uninstall::run(
                client,
                namespace,
                agent_daemonset,
                cleanup_daemonset,
                timeout,
            )
            .await
        }
    }
}

/// The lease's own client limit: a renewal every third of the lease duration.
const LEASE_RATE: tartan_runtime::RateLimit = tartan_runtime::RateLimit {
    qps: 5.0,
    burst: 10,
};

/// The operator proper: probes server, leader election when asked for, the
/// controllers until SIGTERM (or until the lease is lost).
async fn run_operator(args: &Args) -> anyhow::Result<()> {
    tartan_runtime::init_logging(args.log_format);
    let client = tartan_runtime::client_with(args.kubeconfig.as_deref(), args.kube_api).await?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::default());
    let shutdown = tartan_runtime::Shutdown::on_signals();
    let server = spawn_probes(args, &metrics, &health, &shutdown);

    let identity = args.identity.clone().unwrap_or_else(hostname);
    let (leader, lease_task) = if args.leader_election {
        // Its own client and bucket: behind thousands of queued allocation
        // requests a renewal would come too late and fence every write.
        let lease_client =
            tartan_runtime::client_with(args.kubeconfig.as_deref(), LEASE_RATE).await?;
        match campaign(args, &lease_client, &identity, &metrics, &health, &shutdown).await {
            Some((leader, lease_task)) => (leader, Some(lease_task)),
            // Shut down while standing by.
            None => return finish(server).await,
        }
    } else {
        (Leadership::always(), None)
    };
    let controllers = run_controllers(
        client,
        args,
        &identity,
        metrics,
        health.clone(),
        leader,
        shutdown.wait(),
    );
    match lease_task {
        Some(lease_task) => run_while_leading(controllers, lease_task).await?,
        None => controllers.await,
    }
    finish(server).await
}

/// Serves `/metrics`, `/healthz` and `/readyz` until shutdown.
fn spawn_probes(
    args: &Args,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &tartan_runtime::Shutdown,
) -> JoinHandle<std::io::Result<()>> {
    let probes = {
        let (metrics, health) = (metrics.clone(), health.clone());
        tartan_runtime::Probes::new(
            move || metrics.render(),
            move || health.ready.load(Ordering::Relaxed),
        )
    };
    tokio::spawn(tartan_runtime::serve_probes(
        args.metrics_addr,
        probes,
        shutdown.wait(),
    ))
}

/// The Lease this replica campaigns for, from the flags.
fn lease_config(args: &Args, identity: &str) -> LeaseConfig {
    let namespace = args
        .leader_election_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "kube-system".into());
    let duration = Duration::from_secs(args.lease_duration_seconds);
    LeaseConfig {
        name: args.leader_election_id.clone(),
        namespace,
        identity: identity.to_string(),
        duration,
        renew_every: duration / 3,
        retry_every: Duration::from_secs(2).min(duration / 3),
        field_manager: controller::FIELD_MANAGER,
    }
}

/// Starts the lease task and waits, ready, until this replica leads; `None`
/// when shutdown came first.
async fn campaign(
    args: &Args,
    client: &Client,
    identity: &str,
    metrics: &Arc<Metrics>,
    health: &Health,
    shutdown: &tartan_runtime::Shutdown,
) -> Option<(Leadership, JoinHandle<Result<(), LeaseError>>)> {
    let config = lease_config(args, identity);
    let namespace = config.namespace.clone();
    let (manager, mut leadership) = LeaseManager::new(
        Api::<Lease>::namespaced(client.clone(), &namespace),
        config,
        metrics.clone(),
    );
    let lease_task = tokio::spawn(manager.run(shutdown.wait()));
    // A standby is healthy and ready; it just does not write.
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!(%identity, lease = %args.leader_election_id, %namespace, "waiting for leadership");
    tokio::select! {
        _ = leadership.acquired() => {}
        _ = shutdown.wait() => return None,
    }
    health.ready.store(false, Ordering::Relaxed);
    Some((leadership, lease_task))
}

/// Runs the controllers until they stop or the lease task ends.
async fn run_while_leading(
    controllers: impl std::future::Future<Output = ()>,
    lease_task: JoinHandle<Result<(), LeaseError>>,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = controllers => Ok(()),
        lease = lease_task => {
            // Lost the lease: stop at once so a restart campaigns afresh.
            match lease {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e).context("leader election"),
                Err(e) => Err(e).context("leader election task"),
            }
        }
    }
}

async fn finish(server: JoinHandle<std::io::Result<()>>) -> anyhow::Result<()> {
    match server.await {
        Ok(result) => result.context("metrics server"),
        Err(e) => Err(e).context("metrics server task"),
    }
}

/// The controllers over one [`Context`], and readiness once the
/// NodeSubnets are listed; returns when all have shut down.
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
    let (nodes_reader, nodes_writer) = reflector::store();
    let (subnets_reader, subnets_writer) = reflector::store();
    let (wake_nodes, wake_nodes_rx) = mpsc::unbounded();
    let (status, status_changes) = StatusSignal::new();
    let network_controller = network_controller(&client, &args.network);
    let ctx = Arc::new(Context {
        client: client.clone(),
        network: args.network.clone(),
        index: Arc::new(Mutex::new(SubnetIndex::new(args.network.clone()))),
        nodes: nodes_reader.clone(),
        subnets: subnets_reader.clone(),
        networks: network_controller.store(),
        recorder: Recorder::new(client, Context::reporter(identity)),
        metrics,
        leader,
        retries: Retries::new(Backoff::DEFAULT),
        pool_events: Throttle::default(),
        wake_nodes,
        status,
    });
    let policy_check = {
        let (ctx, shutdown, enabled) = (ctx.clone(), shutdown.clone(), args.network_policy);
        async move {
            if enabled {
                controller::policy_check::run(ctx, shutdown).await
            }
        }
    };
    tokio::join!(
        run_subnet_controller(
            ctx.clone(),
            subnets_reader,
            subnets_writer,
            shutdown.clone()
        ),
        run_network_controller(ctx.clone(), network_controller, shutdown.clone()),
        run_status_writer(ctx.clone(), status_changes, shutdown.clone()),
        policy_check,
        run_node_controller(
            ctx.clone(),
            nodes_reader,
            nodes_writer,
            wake_nodes_rx,
            shutdown
        ),
        ready_once_listed(ctx, health),
    );
}

/// Watches NodeSubnets into the index (through [`IndexFeeder`]) and the store,
/// and reconciles each one that changed.
async fn run_subnet_controller(
    ctx: Arc<Context>,
    reader: Store<NodeSubnet>,
    writer: Writer<NodeSubnet>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let subnets_api: Api<NodeSubnet> = Api::all(ctx.client.clone());
    let mut feeder = IndexFeeder::new(&ctx);
    let subnet_events = watcher(subnets_api, watcher::Config::default())
        .default_backoff()
        .modify(|subnet| subnet.managed_fields_mut().clear())
        .inspect_ok(move |event| feeder.feed(event))
        .reflect(writer)
        .touched_objects();
    Controller::for_stream(subnet_events, reader)
        .with_config(reconcile_config())
        .graceful_shutdown_on(shutdown)
        .run(
            |o, c| controller::tracked("subnet", o, c, controller::subnet::reconcile),
            |o, e, c| error_policy("subnet", &o.name_any(), e, &c),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// Reconciles in flight at once, per controller. The client's token bucket
/// sets the pace anyway; without a bound, 5,000 joining Nodes are 5,000
/// reconciles waiting on it at once, each holding its request (memory, and
/// the lease renewal used to queue behind them).
const RECONCILE_CONCURRENCY: u16 = 32;

fn reconcile_config() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY)
}

/// Writes the OverlayNetwork status, coalesced, until shutdown.
async fn run_status_writer(
    ctx: Arc<Context>,
    changes: tokio::sync::watch::Receiver<()>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::select! {
        _ = shutdown => {}
        _ = network_status::run(ctx, changes) => {}
    }
}

/// A controller of this operator's OverlayNetwork alone.
fn network_controller(client: &Client, network: &str) -> Controller<OverlayNetwork> {
    let networks_api: Api<OverlayNetwork> = Api::all(client.clone());
    Controller::new(
        networks_api,
        watcher::Config::default().fields(&format!("metadata.name={network}")),
    )
}

/// Reconciles this operator's OverlayNetwork on its changes.
async fn run_network_controller(
    ctx: Arc<Context>,
    controller: Controller<OverlayNetwork>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(
            |o, c| controller::tracked("network", o, c, controller::network::reconcile),
            |o, e, c| error_policy("network", &o.name_any(), e, &c),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// Reconciles each Node when it appears or starts going, and every Node when
/// woken. The watch is metadata only, and what is stored of each Node is its
/// name, uid, labels and timestamps: managedFields and annotations are dropped.
async fn run_node_controller(
    ctx: Arc<Context>,
    reader: Store<NodeMeta>,
    writer: Writer<NodeMeta>,
    wake: mpsc::UnboundedReceiver<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let node_events = controller::watch::node_events(ctx.clone(), writer);
    Controller::for_stream(node_events, reader)
        .with_config(reconcile_config())
        .reconcile_all_on(wake)
        .graceful_shutdown_on(shutdown)
        .run(
            |o, c| controller::tracked("node", o, c, controller::node::reconcile),
            |o, e, c| error_policy("node", &o.name_any(), e, &c),
            ctx,
        )
        .for_each(|_| async {})
        .await;
}

/// Flips `/readyz` once the NodeSubnets are listed: only then can allocation start.
async fn ready_once_listed(ctx: Arc<Context>, health: Arc<Health>) {
    while !ctx.index().is_synced() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    health.ready.store(true, Ordering::Relaxed);
    tracing::info!("NodeSubnets listed; allocating");
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
