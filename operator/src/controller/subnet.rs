//! NodeSubnet housekeeping: remove NodeSubnets whose Node is gone, and mark the
//! ones that are not valid allocations (duplicate CIDR, outside the pool,
//! unparsable) with a `Conflict` condition and an Event — never renumber them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde_json::json;
use tartan_crds::NodeSubnet;
use tartan_crds::condition::{self, Condition};
use tracing::{info, instrument};

use super::{Context, FIELD_MANAGER, reference};
use crate::error::{Error, Result};
use crate::index::Problem;

pub const CONDITION_CONFLICT: &str = "Conflict";

#[instrument(skip_all, fields(subnet = %subnet.name_any()))]
pub async fn reconcile(subnet: Arc<NodeSubnet>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.time("subnet");
    if subnet.spec.network != ctx.network || subnet.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if ctx
        .nodes
        .get(&ObjectRef::new(&subnet.spec.node_name))
        .is_none()
        && node_is_gone(&ctx, &subnet).await?
    {
        remove_orphan(&ctx, &subnet).await?;
        return Ok(Action::await_change());
    }
    let problem = ctx.index().problem(&subnet.name_any()).cloned();
    let current = subnet
        .status
        .as_ref()
        .and_then(|s| condition::find(&s.conditions, CONDITION_CONFLICT))
        .cloned();
    match (problem, current) {
        (Some(problem), current) => {
            let wanted = conflict_condition(&problem, subnet.metadata.generation);
            if current.is_some_and(|c| c.same_as(&wanted)) {
                return Ok(Action::await_change());
            }
            apply_conflict(&ctx, &subnet, Some(wanted)).await?;
            tracing::warn!(reason = problem.reason(), "{}", problem.message());
            ctx.event(
                &reference(subnet.as_ref()),
                EventType::Warning,
                problem.reason(),
                problem.message().to_string(),
            )
            .await;
        }
        (None, Some(_)) => {
            apply_conflict(&ctx, &subnet, None).await?;
            info!("conflict resolved");
        }
        (None, None) => {}
    }
    Ok(Action::await_change())
}

pub fn conflict_condition(problem: &Problem, generation: Option<i64>) -> Condition {
    Condition::truthy(CONDITION_CONFLICT, problem.reason())
        .message(problem.message())
        .generation(generation)
}

/// The watch cache can lag behind a Node that was just created: ask the API
/// server (for the metadata only: existence is all this needs).
async fn node_is_gone(ctx: &Context, subnet: &NodeSubnet) -> Result<bool> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    Ok(nodes
        .get_metadata_opt(&subnet.spec.node_name)
        .await?
        .is_none())
}

async fn remove_orphan(ctx: &Context, subnet: &NodeSubnet) -> Result<()> {
    ctx.ensure_leader()?;
    let api: Api<NodeSubnet> = Api::all(ctx.client.clone());
    let params = DeleteParams {
        // Only the object we judged: not a NodeSubnet recreated under the same name since.
        preconditions: Some(Preconditions {
            uid: subnet.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&subnet.name_any(), &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(()),
        Err(e) => return Err(Error::Kube(e)),
    }
    let note = format!(
        "removed NodeSubnet {} ({}): node {} no longer exists",
        subnet.name_any(),
        subnet.spec.cidr,
        subnet.spec.node_name
    );
    info!("{note}");
    ctx.event(&ctx.network_ref(), EventType::Normal, "OrphanRemoved", note)
        .await;
    Ok(())
}

/// Applies (or, with `None`, withdraws) the operator's own `Conflict` condition.
/// Server-side apply merges conditions by type, so the agent's `Ready` is untouched.
async fn apply_conflict(
    ctx: &Context,
    subnet: &NodeSubnet,
    condition: Option<Condition>,
) -> Result<()> {
    ctx.ensure_leader()?;
    let api: Api<NodeSubnet> = Api::all(ctx.client.clone());
    let conditions: Vec<Condition> = condition.into_iter().collect();
    let patch = json!({
        "apiVersion": format!("{}/{}", tartan_crds::GROUP, tartan_crds::VERSION),
        "kind": "NodeSubnet",
        "metadata": { "name": subnet.name_any() },
        "status": { "conditions": conditions },
    });
    api.patch_status(
        &subnet.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
