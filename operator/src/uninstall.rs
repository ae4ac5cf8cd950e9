//! The uninstall hook: stop the agents (so nothing restores what is removed),
//! then wait until the cleanup DaemonSet reports every node clean.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::DeleteParams;
use kube::{Api, Client};

pub async fn run(
    client: Client,
    namespace: &str,
    agent: &str,
    cleanup: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client, namespace);
    match daemonsets.delete(agent, &DeleteParams::foreground()).await {
        Ok(_) => tracing::info!(daemonset = agent, "deleting the agents"),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::info!(daemonset = agent, "no agents left")
        }
        Err(e) => return Err(e).context("deleting the agent DaemonSet"),
    }
    let start = Instant::now();
    loop {
        let ds = daemonsets
            .get(cleanup)
            .await
            .with_context(|| format!("reading DaemonSet {cleanup}"))?;
        let status = ds.status.unwrap_or_default();
        let clean = status.desired_number_scheduled > 0
            && status.number_ready == status.desired_number_scheduled;
        tracing::info!(
            ready = status.number_ready,
            desired = status.desired_number_scheduled,
            "nodes clean"
        );
        if clean {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{} of {} nodes reported clean within {timeout:?}; see the logs of DaemonSet {cleanup}",
                status.number_ready,
                status.desired_number_scheduled
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
