//! What the policy watches keep: each NetworkPolicy read strictly, each Pod
//! and Namespace reduced to what enforcement reads, converted on arrival. A
//! watch event is a change only when one of those values changed (a pod's
//! status heartbeat, a new resourceVersion, an annotation: nothing).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;

use super::compile::{Compiled, Inputs, compile};
use super::model::{Key, Labels, Pod, Policy, PolicyError};

/// A NetworkPolicy as it arrived: enforceable, or why not (and then the
/// fail-closed stand-in that isolates what it selects).
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    pub key: Key,
    pub policy: Policy,
    pub error: Option<PolicyError>,
}

impl From<NetworkPolicy> for PolicyEntry {
    fn from(object: NetworkPolicy) -> Self {
        match Policy::from_kube(&object) {
            Ok(policy) => PolicyEntry {
                key: policy.key.clone(),
                policy,
                error: None,
            },
            Err(error) => {
                let policy = Policy::fail_closed(&object);
                PolicyEntry {
                    key: policy.key.clone(),
                    policy,
                    error: Some(error),
                }
            }
        }
    }
}

/// A Pod as it arrived: `None` when policy does not see it (no address yet,
/// host network, finished).
#[derive(Debug, Clone)]
pub struct PodEntry {
    pub key: Key,
    pub pod: Option<Pod>,
}

impl From<KubePod> for PodEntry {
    fn from(object: KubePod) -> Self {
        PodEntry {
            key: Key {
                namespace: object.metadata.namespace.clone().unwrap_or_default(),
                name: object.metadata.name.clone().unwrap_or_default(),
            },
            pod: Pod::from_kube(&object),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NamespaceEntry {
    pub name: String,
    pub labels: Labels,
}

impl From<PartialObjectMeta<Namespace>> for NamespaceEntry {
    fn from(object: PartialObjectMeta<Namespace>) -> Self {
        NamespaceEntry {
            name: object.metadata.name.unwrap_or_default(),
            labels: object.metadata.labels.unwrap_or_default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct PolicyIndex {
    pub node: String,
    pub policies: BTreeMap<Key, Policy>,
    pub errors: BTreeMap<Key, PolicyError>,
    pub pods: BTreeMap<Key, Pod>,
    pub namespaces: BTreeMap<String, Labels>,
    /// Which of the three watches (policies, pods, namespaces) have listed.
    listed: [bool; 3],
}

/// Inserts `value` under `key`, or removes it for `None`: whether that changed anything.
fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: Option<V>) -> bool {
    match value {
        Some(value) if map.get(&key) == Some(&value) => false,
        Some(value) => {
            map.insert(key, value);
            true
        }
        None => map.remove(&key).is_some(),
    }
}

impl PolicyIndex {
    pub fn new(node: &str) -> Self {
        PolicyIndex {
            node: node.to_string(),
            ..Default::default()
        }
    }

    pub fn apply_policy(&mut self, entry: PolicyEntry) -> bool {
        let error_changed = put(&mut self.errors, entry.key.clone(), entry.error);
        put(&mut self.policies, entry.key, Some(entry.policy)) | error_changed
    }

    pub fn delete_policy(&mut self, key: &Key) -> bool {
        let error = self.errors.remove(key).is_some();
        self.policies.remove(key).is_some() | error
    }

    /// Whether every watch has listed once: before that, the index is not
    /// the cluster's policy and must not be enforced.
    pub fn synced(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }

    pub fn reset_policies(&mut self, all: Vec<PolicyEntry>) -> bool {
        let first = !std::mem::replace(&mut self.listed[0], true);
        let (policies, errors) = (
            std::mem::take(&mut self.policies),
            std::mem::take(&mut self.errors),
        );
        for entry in all {
            self.apply_policy(entry);
        }
        first || policies != self.policies || errors != self.errors
    }

    pub fn apply_pod(&mut self, entry: PodEntry) -> bool {
        put(&mut self.pods, entry.key, entry.pod)
    }

    pub fn delete_pod(&mut self, key: &Key) -> bool {
        self.pods.remove(key).is_some()
    }

    pub fn reset_pods(&mut self, all: Vec<PodEntry>) -> bool {
        let first = !std::mem::replace(&mut self.listed[1], true);
        let fresh: BTreeMap<Key, Pod> = all
            .into_iter()
            .filter_map(|e| e.pod.map(|p| (e.key, p)))
            .collect();
        let changed = first || fresh != self.pods;
        self.pods = fresh;
        changed
    }

    pub fn apply_namespace(&mut self, entry: NamespaceEntry) -> bool {
        put(&mut self.namespaces, entry.name, Some(entry.labels))
    }

    pub fn delete_namespace(&mut self, name: &str) -> bool {
        self.namespaces.remove(name).is_some()
    }

    pub fn reset_namespaces(&mut self, all: Vec<NamespaceEntry>) -> bool {
        let first = !std::mem::replace(&mut self.listed[2], true);
        let fresh: BTreeMap<String, Labels> = all.into_iter().map(|e| (e.name, e.labels)).collect();
        let changed = first || fresh != self.namespaces;
        self.namespaces = fresh;
        changed
    }

    /// This node's desired policy state.
    pub fn compile(&self) -> Compiled {
        compile(&Inputs {
            node: &self.node,
            policies: &self.policies,
            pods: &self.pods,
            namespaces: &self.namespaces,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kube_pod(ip: &str, phase: &str, resource_version: &str) -> KubePod {
        serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "web", "labels": {"app": "web"}, "resourceVersion": resource_version},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("a pod")
    }

    #[test]
    fn a_pod_update_that_changes_nothing_policy_reads_is_no_change() {
        let mut index = PolicyIndex::new("n1");
        assert!(index.apply_pod(kube_pod("10.244.1.2", "Running", "1").into()));
        assert!(!index.apply_pod(kube_pod("10.244.1.2", "Running", "2").into()));
        assert!(index.apply_pod(kube_pod("10.244.1.3", "Running", "3").into()));
        assert!(
            index.apply_pod(kube_pod("10.244.1.3", "Succeeded", "4").into()),
            "a finished pod leaves"
        );
        assert!(index.pods.is_empty());
    }

    #[test]
    fn an_unenforceable_policy_isolates_what_it_selects_and_is_reported() {
        let object: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"namespace": "a", "name": "bad"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"ports": [{"protocol": "ICMP"}]}],
            },
        }))
        .expect("a policy");
        let mut index = PolicyIndex::new("n1");
        index.apply_pod(kube_pod("10.244.1.2", "Running", "1").into());
        assert!(index.apply_policy(object.into()));
        let error = index.errors.values().next().expect("reported");
        assert_eq!(error.field, "spec.ingress[0].ports[0].protocol");
        let compiled = index.compile();
        let web = "10.244.1.2".parse().expect("ip");
        assert!(
            compiled.ingress.contains_key(&web),
            "isolated, not left open"
        );
        assert!(!compiled.admits(
            "10.244.2.2".parse().expect("ip"),
            web,
            crate::netpol::model::Protocol::Tcp,
            8080
        ));
    }
}
