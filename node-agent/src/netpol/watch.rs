//! The three watches NetworkPolicy needs, into one [`PolicyIndex`]: every
//! NetworkPolicy, every Namespace as metadata only (labels), and every Pod
//! that policy can see (not host-network, not finished: field selectors, so
//! the API server sends nothing else).

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Api, Client};

use super::index::{NamespaceEntry, PodEntry, PolicyEntry, PolicyIndex};
use crate::watch::{Handlers, Sink, spawn_one};

/// Pods that are not in the host's network and have not finished.
pub const POD_FIELDS: &str = "spec.hostNetwork=false,status.phase!=Succeeded,status.phase!=Failed";

pub fn spawn(client: &Client, sink: &Sink<PolicyIndex>) {
    spawn_one(
        Api::<NetworkPolicy>::all(client.clone()),
        watcher::Config::default(),
        "networkpolicies",
        sink.clone(),
        PolicyEntry::from,
        Handlers {
            apply: |i: &mut PolicyIndex, e| i.apply_policy(e),
            delete: |i: &mut PolicyIndex, e: PolicyEntry| i.delete_policy(&e.key),
            reset: |i: &mut PolicyIndex, all| i.reset_policies(all),
        },
    );
    spawn_one(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(POD_FIELDS),
        "pods",
        sink.clone(),
        PodEntry::from,
        Handlers {
            apply: |i: &mut PolicyIndex, e| i.apply_pod(e),
            delete: |i: &mut PolicyIndex, e: PodEntry| i.delete_pod(&e.key),
            reset: |i: &mut PolicyIndex, all| i.reset_pods(all),
        },
    );
    spawn_one(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
        "namespaces",
        sink.clone(),
        NamespaceEntry::from,
        Handlers {
            apply: |i: &mut PolicyIndex, e| i.apply_namespace(e),
            delete: |i: &mut PolicyIndex, e: NamespaceEntry| i.delete_namespace(&e.name),
            reset: |i: &mut PolicyIndex, all| i.reset_namespaces(all),
        },
    );
}
