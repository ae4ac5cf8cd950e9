//! Node → NodeSubnet: every Node gets exactly one NodeSubnet, named after it and
//! owned by it, its spec written by server-side apply.
//!
//! Nodes are watched as metadata only (a full Node is ~20 KB of images and
//! managedFields; 5,000 of them would not fit the operator's memory). The one
//! field of the spec that matters, `podCIDRs`, is read by a single GET when a
//! node is first allocated, and not kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tartan_crds::cidr::parse_cidr;
use tartan_crds::{NodeSubnet, NodeSubnetSpec};
use tracing::{info, instrument};

use super::{Context, FIELD_MANAGER, NETWORK_LABEL, NodeMeta, reference};
use crate::error::{Error, Result};
use crate::index::{AllocateError, SubnetIndex};
use crate::ipam::{Allocation, IpamError, Preference};

/// What to do for one Node, decided from the index alone.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// The NodeSubnets are not listed yet: allocating now could hand one out twice.
    NotSynced,
    /// No valid OverlayNetwork yet.
    NoNetwork,
    /// The NodeSubnet exists and is as it should be (or is reported as a conflict).
    InSync,
    /// A new node: read its `podCIDRs`, then allocate ([`allocate`]).
    Allocate,
    /// Write the NodeSubnet (`fresh`: a new allocation, undone if the write fails).
    Write { allocation: Allocation, fresh: bool },
    /// No room: the node waits until a subnet is freed.
    Exhausted(IpamError),
}

/// Decides from the index and the existing NodeSubnet, if any. Pure.
pub fn decide(index: &mut SubnetIndex, node: &NodeMeta, existing: Option<&NodeSubnet>) -> Decision {
    let name = node.name_any();
    if !index.is_synced() {
        return Decision::NotSynced;
    }
    if index.network().is_none() {
        return Decision::NoNetwork;
    }
    if index.has_subnet(&name) {
        return match (index.allocation(&name), existing) {
            (Some(allocation), Some(existing)) if !owned_by(existing, node) => Decision::Write {
                allocation,
                fresh: false,
            },
            _ => Decision::InSync,
        };
    }
    match index.waiting_preference(&name) {
        // Waiting for room: it asked before, no need to read the Node again.
        Some(preference) => allocate(index, &name, preference),
        None => Decision::Allocate,
    }
}

/// Allocates for a node with what it asked for. Pure.
pub fn allocate(index: &mut SubnetIndex, name: &str, preference: Preference) -> Decision {
    match index.allocate(name, preference) {
        Ok(allocation) => Decision::Write {
            allocation,
            fresh: true,
        },
        Err(AllocateError::Ipam(e)) => Decision::Exhausted(e),
        Err(AllocateError::NotSynced) => Decision::NotSynced,
        Err(AllocateError::NoNetwork) => Decision::NoNetwork,
    }
}

/// The Node's `spec.podCIDRs`, so clusters that already allocate keep their addresses.
pub fn preference(node: &Node) -> Preference {
    let mut preference = Preference::default();
    let spec = node.spec.as_ref();
    let cidrs = spec
        .and_then(|s| s.pod_cidrs.clone())
        .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
        .unwrap_or_default();
    for cidr in cidrs.iter().filter_map(|c| parse_cidr(c)) {
        match cidr {
            IpNet::V4(v4) => preference.ipv4 = preference.ipv4.or(Some(v4)),
            IpNet::V6(v6) => preference.ipv6 = preference.ipv6.or(Some(v6)),
        }
    }
    preference
}

fn owned_by(subnet: &NodeSubnet, node: &NodeMeta) -> bool {
    subnet
        .owner_references()
        .iter()
        .any(|o| o.kind == "Node" && Some(&o.uid) == node.metadata.uid.as_ref())
}

/// The NodeSubnet the operator applies for `node`: spec, owner reference, label.
pub fn desired_subnet(network: &str, node: &NodeMeta, allocation: &Allocation) -> NodeSubnet {
    let name = node.name_any();
    NodeSubnet {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([(
                NETWORK_LABEL.to_string(),
                network.to_string(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        spec: NodeSubnetSpec {
            node_name: name,
            network: network.to_string(),
            cidr: allocation.ipv4.to_string(),
            ipv6_cidr: allocation.ipv6.map(|n| n.to_string()),
        },
        status: None,
    }
}

#[instrument(skip_all, fields(node = %node.name_any()))]
pub async fn reconcile(node: Arc<NodeMeta>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.time("node");
    if node.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the NodeSubnet with its owner.
        return Ok(Action::await_change());
    }
    let existing = ctx.subnets.get(&ObjectRef::new(&node.name_any()));
    let mut decision = decide(&mut ctx.index(), &node, existing.as_deref());
    let mut node = node;
    if decision == Decision::Allocate {
        let Some((meta, preference)) = read_node(&ctx, &node.name_any()).await? else {
            // Deleted since the watch saw it.
            return Ok(Action::await_change());
        };
        decision = allocate(&mut ctx.index(), &meta.name_any(), preference);
        node = Arc::new(meta);
    }
    act(&ctx, &node, decision).await
}

/// Does what [`decide`] (or [`allocate`]) said.
async fn act(ctx: &Context, node: &NodeMeta, decision: Decision) -> Result<Action> {
    match decision {
        Decision::NotSynced => Err(Error::NotSynced),
        Decision::NoNetwork => Ok(Action::requeue(Duration::from_secs(10))),
        Decision::InSync | Decision::Allocate => Ok(Action::await_change()),
        Decision::Write { allocation, fresh } => {
            let written = write(ctx, node, &allocation).await;
            if written.is_err() && fresh {
                ctx.index().forget_allocation(&node.name_any());
            }
            written?;
            if fresh {
                allocated(ctx, node, &allocation).await;
            }
            Ok(Action::await_change())
        }
        Decision::Exhausted(e) => {
            exhausted(ctx, node, &e).await;
            // Also woken at once when a NodeSubnet is deleted.
            Ok(Action::requeue(Duration::from_secs(60)))
        }
    }
}

/// The one read of a whole Node: its metadata (fresh) and its `podCIDRs`.
/// `None` when it is gone.
async fn read_node(ctx: &Context, name: &str) -> Result<Option<(NodeMeta, Preference)>> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let Some(node) = nodes.get_opt(name).await? else {
        return Ok(None);
    };
    let preference = preference(&node);
    let Node { metadata, .. } = node;
    let meta = NodeMeta {
        types: None,
        metadata,
        _phantom: Default::default(),
    };
    Ok(Some((meta, preference)))
}

async fn allocated(ctx: &Context, node: &NodeMeta, allocation: &Allocation) {
    ctx.metrics
        .allocations
        .with_label_values(&["allocated"])
        .inc();
    let v6 = allocation
        .ipv6
        .map(|n| format!(" and {n}"))
        .unwrap_or_default();
    // No Normal Event: at 5,000 nodes joining that is 5,000 more writes
    // against the client's rate limit, for what the NodeSubnet already says.
    info!(node = %node.name_any(), cidr = %allocation.ipv4, "allocated{v6}");
}

async fn exhausted(ctx: &Context, node: &NodeMeta, e: &IpamError) {
    ctx.metrics
        .allocations
        .with_label_values(&["exhausted"])
        .inc();
    ctx.status.mark();
    let name = node.name_any();
    let note = format!("node {name} gets no pod subnet: {e}");
    if !ctx.pool_events.allow(&format!("node/{name}")) {
        // Told within the last 10 minutes; the condition and metric still say it.
        tracing::debug!("{note}");
        return;
    }
    tracing::warn!("{note}");
    ctx.event(
        &reference(node),
        EventType::Warning,
        "PoolExhausted",
        note.clone(),
    )
    .await;
    if ctx.pool_events.allow("network") {
        let waiting = ctx.index().waiting().len();
        let note = format!("{waiting} node(s) wait for a pod subnet, {name} among them: {e}");
        ctx.event(
            &ctx.network_ref(),
            EventType::Warning,
            "PoolExhausted",
            note,
        )
        .await;
    }
}

async fn write(ctx: &Context, node: &NodeMeta, allocation: &Allocation) -> Result<()> {
    ctx.ensure_leader()?;
    let subnet = desired_subnet(&ctx.network, node, allocation);
    let api: Api<NodeSubnet> = Api::all(ctx.client.clone());
    // Not forced: a field owned by someone else is a conflict to report, and the
    // schema makes the spec immutable, so a different CIDR is refused, not overwritten.
    api.patch(
        &node.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&subnet),
    )
    .await?;
    Ok(())
}
