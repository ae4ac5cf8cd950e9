//! OverlayNetwork: feeds the pool to the index, and asks the status writer
//! ([`super::network_status`]) to bring the status up to date.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use tartan_crds::OverlayNetwork;
use tracing::instrument;

use super::Context;
use crate::error::Result;

#[instrument(skip_all, fields(network = %network.name_any()))]
pub async fn reconcile(network: Arc<OverlayNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.time("network");
    if network.name_any() != ctx.network {
        return Ok(Action::await_change());
    }
    let first_network = {
        let mut index = ctx.index();
        let had_network = index.network().is_some();
        index.set_network(Some(&network.spec));
        if let Some(err) = index.network_error() {
            tracing::warn!(error = %err, "OverlayNetwork is invalid; allocating nothing");
        }
        !had_network && index.network().is_some()
    };
    if first_network {
        let _ = ctx.wake_nodes.unbounded_send(());
    }
    // A new generation, or a status someone else changed: the writer compares.
    ctx.status.mark();
    Ok(Action::requeue(Duration::from_secs(300)))
}
