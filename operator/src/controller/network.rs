//! OverlayNetwork: feeds the pool to the index, and keeps the status (capacity,
//! allocation, readiness, backend rollout, conditions) current.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;
use tartan_crds::OverlayNetwork;
use tracing::instrument;

use super::{Context, FIELD_MANAGER};
use crate::error::Result;
use crate::status::{differs, network_status};

#[instrument(skip_all, fields(network = %network.name_any()))]
pub async fn reconcile(network: Arc<OverlayNetwork>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.time("network");
    if network.name_any() != ctx.network {
        return Ok(Action::await_change());
    }
    let (status, first_network) = {
        let mut index = ctx.index();
        let had_network = index.network().is_some();
        index.set_network(Some(&network.spec));
        if let Some(err) = index.network_error() {
            tracing::warn!(error = %err, "OverlayNetwork is invalid; allocating nothing");
        }
        let status = network_status(&network, &index);
        record_metrics(&ctx, &index);
        (status, !had_network && index.network().is_some())
    };
    if first_network {
        let _ = ctx.wake_nodes.unbounded_send(());
    }
    if differs(network.status.as_ref(), &status) {
        ctx.ensure_leader()?;
        let api: Api<OverlayNetwork> = Api::all(ctx.client.clone());
        let patch = json!({
            "apiVersion": format!("{}/{}", tartan_crds::GROUP, tartan_crds::VERSION),
            "kind": "OverlayNetwork",
            "metadata": { "name": ctx.network },
        "status": status,
        });
        api.patch_status(
            &ctx.network,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn record_metrics(ctx: &Context, index: &crate::index::SubnetIndex) {
    let m = &ctx.metrics;
    for (family, usage) in [("ipv4", index.ipv4_usage()), ("ipv6", index.ipv6_usage())] {
        let usage = usage.unwrap_or(crate::ipam::Usage {
            capacity: 0,
            allocated: 0,
        });
        m.subnets_capacity
            .with_label_values(&[family])
            .set(f64::from(usage.capacity));
        m.subnets_allocated
            .with_label_values(&[family])
            .set(f64::from(usage.allocated));
    }
    m.nodes_waiting.set(index.waiting().len() as f64);
    for reason in ["DuplicateCIDR", "OutsidePool", "InvalidSpec"] {
        let count = index
            .problems()
            .values()
            .filter(|p| p.reason() == reason)
            .count();
        m.subnet_conflicts
            .with_label_values(&[reason])
            .set(count as f64);
    }
}
