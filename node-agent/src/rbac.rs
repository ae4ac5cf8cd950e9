//! The exact permissions the agent uses, as data the Helm chart renders
//! (`tartan-agent rbac` prints them).

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tartan_runtime::rule;

pub fn cluster_rules() -> Vec<PolicyRule> {
    vec![
        // This node's InternalIP (the default underlay).
        rule("", &["nodes"], &["get", "list", "watch"]),
        // Every node's subnet and status: the peers.
        rule("tartan.dev", &["nodesubnets"], &["get", "list", "watch"]),
        // Its own NodeSubnet's status, by server-side apply (the admission
        // policy holds it to its own; admission.rs). `get` reads nothing
        // `nodesubnets` does not, and lets `kubectl patch --subresource=status`
        // (which reads first) show what the policy refuses.
        rule("tartan.dev", &["nodesubnets/status"], &["get", "patch"]),
        rule(
            "tartan.dev",
            &["overlaynetworks"],
            &["get", "list", "watch"],
        ),
    ]
    .into_iter()
    .chain(network_policy_rules())
    .collect()
}

/// What enforcing NetworkPolicy reads (the chart grants these only with
/// `networkPolicy.enabled`): the policies, the pods they select and name as
/// peers (addresses, labels, named ports), and the namespaces' labels.
pub fn network_policy_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            "networking.k8s.io",
            &["networkpolicies"],
            &["list", "watch"],
        ),
        rule("", &["pods"], &["list", "watch"]),
        rule("", &["namespaces"], &["list", "watch"]),
    ]
}

/// Reading the BGP password Secrets `names` (in Tartan's namespace: a Role),
/// and no other Secret. No names, no rule: a rule without `resourceNames`
/// would grant every Secret.
pub fn bgp_password_rules(names: &[&str]) -> Vec<PolicyRule> {
    if names.is_empty() {
        return Vec::new();
    }
    vec![PolicyRule {
        resource_names: Some(names.iter().map(|n| n.to_string()).collect()),
        ..rule("", &["secrets"], &["get", "list", "watch"])
    }]
}

pub fn render(name: &str) -> Result<String, serde_json::Error> {
    let role = ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        rules: Some(cluster_rules()),
        ..Default::default()
    };
    // YAML is a superset of JSON; pretty JSON keeps this crate free of a YAML dependency.
    serde_json::to_string_pretty(&role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_everything_it_plans_from_and_writes_only_status() {
        let rules = cluster_rules();
        let writes: Vec<_> = rules
            .iter()
            .filter(|r| {
                r.verbs
                    .iter()
                    .any(|v| !["get", "list", "watch"].contains(&v.as_str()))
            })
            .flat_map(|r| r.resources.clone().unwrap_or_default())
            .collect();
        assert_eq!(writes, vec!["nodesubnets/status".to_string()]);
        assert!(
            render("tartan-agent")
                .expect("renders")
                .contains("\"nodesubnets/status\"")
        );
    }

    #[test]
    fn bgp_passwords_are_read_by_name_only() {
        assert!(bgp_password_rules(&[]).is_empty(), "never every Secret");
        let rules = bgp_password_rules(&["bgp-tor", "bgp-rack2"]);
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resource_names,
            Some(vec!["bgp-tor".to_string(), "bgp-rack2".to_string()])
        );
        assert_eq!(rules[0].resources, Some(vec!["secrets".to_string()]));
        assert!(
            cluster_rules()
                .iter()
                .all(|r| !r.resources.iter().flatten().any(|x| x == "secrets"))
        );
    }
}
