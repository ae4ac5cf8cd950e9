//! The Node watch: metadata only, and only what the operator uses is kept.
//!
//! A full Node is ~20 KB (images, status, managedFields); at 5,000 nodes that
//! was 100-250 MB. The operator needs a Node's name, uid and whether it is
//! going, and its `podCIDRs` once (read by `node::reconcile` with one GET).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};

use super::{Context, NodeMeta};

/// Nodes into `writer` (managedFields and annotations dropped), yielding those
/// a reconcile should look at.
pub fn node_events(
    ctx: Arc<Context>,
    writer: Writer<NodeMeta>,
) -> impl Stream<Item = Result<NodeMeta, watcher::Error>> + Send + 'static {
    let nodes: Api<NodeMeta> = Api::all(ctx.client.clone());
    watcher(nodes, watcher::Config::default())
        .default_backoff()
        .modify(|node| {
            node.managed_fields_mut().clear();
            node.metadata.annotations = None;
        })
        .inspect_ok(move |event| {
            if let watcher::Event::Delete(node) = event {
                // A node that was waiting for room no longer is.
                ctx.index().node_gone(&node.name_any());
                ctx.status.mark();
            }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(node_identity, Default::default())
}

/// What a Node reconcile depends on: which Node (uid), and whether it is
/// going. Kubelet's status updates change neither and reconcile nothing.
pub fn node_identity(node: &NodeMeta) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let meta = &node.metadata;
    (meta.uid.as_deref(), meta.deletion_timestamp.is_some()).hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests;
