//! The OverlayNetwork status, written once things settle, coalesced.
//!
//! ```text
//!   NodeSubnet event ─┐
//!   pool exhausted   ─┼─ mark() ─▶ StatusSignal ─▶ until 5 s quiet (≤ 30 s) ─▶ write_if_changed
//!   network changed  ─┘                                   (a failed write backs off)
//! ```
//!
//! Every agent watches this object (for its spec), so each write is N watch
//! events. A node joining changes the counts twice (allocated, then ready
//! once its agent writes its status, a few seconds later): waiting for 5 s
//! of quiet makes that one write, a burst of 5,000 changes (a cluster coming
//! up, a backend switch) is one write per 30 s at most, and nothing is
//! written when the counts did not move.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use tartan_crds::OverlayNetwork;
use tartan_runtime::backoff::{Backoff, random_unit};
use tokio::sync::watch;

use super::{Context, FIELD_MANAGER};
use crate::error::Result;
use crate::index::SubnetIndex;
use crate::status::{differs, network_status};

/// When a round of changes is written: once no change came for `quiet`,
/// but never later than `max` after the round's first change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    pub quiet: Duration,
    pub max: Duration,
}

/// A join's two changes are one write; the status is never more than 30 s behind.
pub const PACING: Pacing = Pacing {
    quiet: Duration::from_secs(5),
    max: Duration::from_secs(30),
};

/// "The status may have changed": cheap to mark, any number of times.
#[derive(Clone, Debug)]
pub struct StatusSignal(Arc<watch::Sender<()>>);

impl StatusSignal {
    pub fn new() -> (Self, watch::Receiver<()>) {
        let (tx, rx) = watch::channel(());
        (Self(Arc::new(tx)), rx)
    }

    pub fn mark(&self) {
        self.0.send_replace(());
    }
}

/// Calls `write` once per round: a round starts at the first change after the
/// last one and gathers changes as `pacing` says. A failed write (`false`) is
/// tried again after `backoff`, without waiting for a change. Returns when
/// every [`StatusSignal`] is gone.
pub async fn coalesce<F, Fut>(
    mut changes: watch::Receiver<()>,
    pacing: Pacing,
    backoff: Backoff,
    mut write: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut failures = 0u32;
    loop {
        if failures == 0 && changes.changed().await.is_err() {
            return;
        }
        gather(&mut changes, pacing).await;
        // Changes from here on start the next round.
        changes.borrow_and_update();
        if write().await {
            failures = 0;
        } else {
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff.delay(failures, random_unit())).await;
        }
    }
}

/// Waits until no change came for `pacing.quiet`, at most `pacing.max`.
async fn gather(changes: &mut watch::Receiver<()>, pacing: Pacing) {
    let last_call = tokio::time::Instant::now() + pacing.max;
    loop {
        let deadline = (tokio::time::Instant::now() + pacing.quiet).min(last_call);
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) if tokio::time::Instant::now() < last_call => continue,
            _ => return,
        }
    }
}

/// The status writer of the running operator: [`coalesce`] over
/// [`write_if_changed`], failures counted and logged.
pub async fn run(ctx: Arc<Context>, changes: watch::Receiver<()>) {
    let write = || {
        let ctx = ctx.clone();
        async move {
            match write_if_changed(&ctx).await {
                Ok(_) => true,
                Err(e) => {
                    ctx.metrics.error("status", &e);
                    tracing::warn!(error = %e, "writing the OverlayNetwork status");
                    false
                }
            }
        }
    };
    coalesce(changes, PACING, Backoff::DEFAULT, write).await;
}

/// Writes the status the index implies, if it differs from the one the watch
/// last showed. Returns whether it wrote.
pub async fn write_if_changed(ctx: &Context) -> Result<bool> {
    let Some(network) = ctx.networks.get(&ObjectRef::new(&ctx.network)) else {
        return Ok(false);
    };
    let status = {
        let index = ctx.index();
        record_metrics(ctx, &index);
        // Before the first list the counts are partial, and before the network
        // reconcile the pool is unknown: a status then would be a wrong one.
        let known = index.network().is_some() || index.network_error().is_some();
        if !index.is_synced() || !known {
            return Ok(false);
        }
        network_status(&network, &index)
    };
    if !differs(network.status.as_ref(), &status) {
        return Ok(false);
    }
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
    Ok(true)
}

fn record_metrics(ctx: &Context, index: &SubnetIndex) {
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

#[cfg(test)]
mod tests;
