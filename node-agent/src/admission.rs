//! The admission policy that holds an agent to its own node. RBAC can say
//! "patch nodesubnets/status" but not "only yours": every agent shares one
//! ServiceAccount. A bound token of a Pod on a Node carries that node's name
//! (user extra `authentication.kubernetes.io/node-name`), and this
//! ValidatingAdmissionPolicy compares it with the NodeSubnet's name, which is
//! its node's. The chart renders exactly this (tested).
//!
//! It fails closed: a request from the agent's ServiceAccount without the
//! claim (a token not bound to a Pod, say) is refused, even if RBAC were
//! widened. Nobody else (the operator, an admin) is matched.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The user extra a Pod-bound (or Node-bound) ServiceAccount token carries.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The policy's variables, by name. The API server leaves out a request's
/// empty fields (`subResource` of a main-resource write, `name` of a create
/// with generateName), and reading an absent one is an error: these read them
/// once, with `has()`, so the rules and their messages never fail.
pub const VARIABLES: [(&str, &str); 3] = [
    // The request's node, or '' when it has none (or, which a token never
    // has, more than one).
    (
        "nodeName",
        "has(request.userInfo.extra) \
&& 'authentication.kubernetes.io/node-name' in request.userInfo.extra \
&& size(request.userInfo.extra['authentication.kubernetes.io/node-name']) == 1 \
? request.userInfo.extra['authentication.kubernetes.io/node-name'][0] : ''",
    ),
    // No Node is named that (names are DNS subdomains): it never matches.
    (
        "subnet",
        "has(request.name) ? request.name : '(generated name)'",
    ),
    (
        "subResource",
        "has(request.subResource) ? request.subResource : ''",
    ),
];

/// One rule of the policy: what must hold, and what a refusal says. Every
/// message names the user, the node, the NodeSubnet and the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub expression: &'static str,
    pub message_expression: &'static str,
}

/// In the order the API server checks them; the first that fails is reported.
pub const RULES: [Rule; 3] = [
    Rule {
        name: "node-bound-token",
        expression: "variables.nodeName != ''",
        message_expression: "request.userInfo.username + ' has no node (no \
authentication.kubernetes.io/node-name: the token is not bound to a Pod on a Node), so it may not \
write NodeSubnet ' + variables.subnet + ' (rule node-bound-token)'",
    },
    Rule {
        name: "status-only",
        expression: "request.operation == 'UPDATE' && variables.subResource == 'status'",
        message_expression: "request.userInfo.username + ' on node ' + variables.nodeName + \
' may only update the status of NodeSubnet ' + variables.subnet + ', not ' + request.operation + \
(variables.subResource == '' ? ' it' : ' its ' + variables.subResource) + ' (rule status-only)'",
    },
    Rule {
        name: "own-node-only",
        expression: "variables.subnet == variables.nodeName",
        message_expression: "request.userInfo.username + ' on node ' + variables.nodeName + \
' may not write NodeSubnet ' + variables.subnet + \
': an agent writes only the NodeSubnet of its own node (rule own-node-only)'",
    },
];

/// The policy's (and its binding's) name, from the agent's ServiceAccount name.
pub fn policy_name(agent: &str) -> String {
    format!("{agent}-own-node")
}

/// `system:serviceaccount:<namespace>:<name>`: who the policy holds.
pub fn agent_username(namespace: &str, service_account: &str) -> String {
    format!("system:serviceaccount:{namespace}:{service_account}")
}

pub fn policy(namespace: &str, service_account: &str) -> ValidatingAdmissionPolicy {
    let rule = NamedRuleWithOperations {
        api_groups: Some(vec!["tartan.dev".into()]),
        api_versions: Some(vec!["*".into()]),
        operations: Some(vec!["CREATE".into(), "UPDATE".into(), "DELETE".into()]),
        resources: Some(vec!["nodesubnets".into(), "nodesubnets/status".into()]),
        ..Default::default()
    };
    let username = agent_username(namespace, service_account);
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(policy_name(service_account)),
            ..Default::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![rule]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "tartan-agent".into(),
                expression: format!("request.userInfo.username == '{username}'"),
            }]),
            variables: Some(
                VARIABLES
                    .iter()
                    .map(|(name, expression)| Variable {
                        name: (*name).into(),
                        expression: (*expression).into(),
                    })
                    .collect(),
            ),
            validations: Some(
                RULES
                    .iter()
                    .map(|r| Validation {
                        expression: r.expression.into(),
                        message_expression: Some(r.message_expression.into()),
                        reason: Some("Forbidden".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn binding(service_account: &str) -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(policy_name(service_account)),
            ..Default::default()
        },
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: policy_name(service_account),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    }
}

/// The policy and its binding as one JSON list (`tartan-agent admission-policy`).
pub fn render(namespace: &str, service_account: &str) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [policy(namespace, service_account), binding(service_account)],
    }))
}

#[cfg(test)]
mod tests;
