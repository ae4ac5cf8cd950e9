//! The agent's optional nftables tables, each with what feeds it:
//! NetworkPolicy (watches and an enforcement loop) and the pod source check
//! (the CNI plugin's socket). Turned off, each table is removed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::agent::Health;
use crate::cli::Args;
use crate::metrics::Metrics;
use crate::netns::NetNs;
use crate::sysctl::Sysctls;
use crate::watch;

/// NetworkPolicy: its watches and its enforcement loop, or (turned off) no
/// table at all.
pub(super) async fn start_network_policy(
    args: &Args,
    client: &kube::Client,
    node_name: &str,
    netns: &NetNs,
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    shutdown: &tartan_runtime::Shutdown,
) -> anyhow::Result<()> {
    use crate::netpol::{index::PolicyIndex, worker};
    if !args.network_policy {
        let netns = netns.clone();
        tokio::task::spawn_blocking(move || crate::netpol::apply::remove(&netns))
            .await
            .context("removing the NetworkPolicy table")?
            .context("removing the NetworkPolicy table")?;
        return Ok(());
    }
    let index = PolicyIndex::new(node_name);
    let (sink, changes) = watch::Sink::around(index, metrics.clone(), health.clone());
    crate::netpol::watch::spawn(client, &sink);
    let config = worker::EnforcerConfig {
        netns: netns.clone(),
        sysctls: Sysctls {
            root: args.sysctl_root.clone(),
        },
        resync: Duration::from_secs(args.resync_seconds),
    };
    tokio::spawn(worker::run(
        sink,
        changes,
        config,
        metrics.netpol.clone(),
        shutdown.wait(),
    ));
    Ok(())
}

/// The pod source check's table and the CNI plugin's socket, before the
/// conflist that names the plugin is written; off: the table is removed.
pub(super) async fn start_pod_source_check(
    args: &Args,
    netns: &NetNs,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<()> {
    if !args.pod_source_check {
        let netns = netns.clone();
        tokio::task::spawn_blocking(move || crate::guard::table::remove(&netns))
            .await
            .context("removing the pod source check table")?
            .context("removing the pod source check table")?;
        return Ok(());
    }
    let config = crate::guard::server::GuardConfig {
        netns: netns.clone(),
        socket: args.cni_socket.clone(),
        sweep: Duration::from_secs(args.resync_seconds),
    };
    crate::guard::server::start(config, metrics.clone())
        .await
        .context("starting the pod source check")
}
