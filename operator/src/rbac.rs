//! The exact permissions the operator uses, as data the Helm chart renders
//! (`tartan-operator rbac` prints them) and the end-to-end tests impersonate.

use k8s_openapi::api::rbac::v1::PolicyRule;
use tartan_runtime::rule;

/// Cluster-wide rules (a ClusterRole).
pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        // Watch Nodes; read one directly before removing an orphaned NodeSubnet.
        rule("", &["nodes"], &["get", "list", "watch"]),
        // Allocate (server-side apply = patch, creating when absent), remove orphans.
        rule(
            "tartan.dev",
            &["nodesubnets"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        // The Conflict condition on a NodeSubnet.
        rule("tartan.dev", &["nodesubnets/status"], &["patch"]),
        rule(
            "tartan.dev",
            &["overlaynetworks"],
            &["get", "list", "watch"],
        ),
        rule("tartan.dev", &["overlaynetworks/status"], &["patch"]),
        // Events on Nodes, NodeSubnets, the OverlayNetwork and NetworkPolicies (recorder creates, then patches series).
        rule("events.k8s.io", &["events"], &["create", "patch"]),
    ]
    .into_iter()
    .chain(network_policy_rules())
    .collect()
}

/// Reading NetworkPolicies to report the ones the agents cannot enforce
/// (granted only with the chart's `networkPolicy.enabled`).
pub fn network_policy_rules() -> Vec<PolicyRule> {
    vec![rule(
        "networking.k8s.io",
        &["networkpolicies"],
        &["list", "watch"],
    )]
}

/// Rules in the leader-election namespace (a Role).
pub fn lease_rules() -> Vec<PolicyRule> {
    vec![rule(
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "patch"],
    )]
}

/// The ClusterRole and Role as YAML documents.
pub fn render(name: &str, namespace: &str) -> Result<String, serde_yaml::Error> {
    use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let cluster_role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        rules: Some(cluster_rules()),
        ..Default::default()
    };
    let role = Role {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        rules: Some(lease_rules()),
    };
    Ok(format!(
        "{}---\n{}",
        serde_yaml::to_string(&cluster_role)?,
        serde_yaml::to_string(&role)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_wildcards_and_no_secrets() {
        for rule in cluster_rules().iter().chain(lease_rules().iter()) {
            assert!(!rule.verbs.iter().any(|v| v == "*"), "{rule:?}");
            let resources = rule.resources.clone().unwrap_or_default();
            assert!(
                !resources.iter().any(|r| r == "*" || r == "secrets"),
                "{rule:?}"
            );
        }
    }

    #[test]
    fn renders_a_cluster_role_and_a_namespaced_role() {
        let yaml = render("tartan-operator", "tartan-system").expect("renders");
        let docs: Vec<serde_yaml::Value> = yaml
            .split("---\n")
            .map(|d| serde_yaml::from_str(d).expect("YAML"))
            .collect();
        assert_eq!(docs[0]["kind"], "ClusterRole");
        assert_eq!(docs[1]["kind"], "Role");
        assert_eq!(docs[1]["metadata"]["namespace"], "tartan-system");
    }
}
