//! The policy's CEL, evaluated with the `cel` crate the way the API server
//! evaluates a ValidatingAdmissionPolicy: match conditions, then variables,
//! then each validation in order, the first failure (false or an error,
//! failurePolicy Fail) refusing with its message.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::Key;
use cel::{Context, Program, Value};
use serde_json::{Value as Json, json};

use super::*;

const AGENT: &str = "system:serviceaccount:tartan-system:tartan-agent";
const OPERATOR: &str = "system:serviceaccount:tartan-system:tartan-operator";

fn to_cel(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Int(n.as_i64().expect("integers only")),
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(map) => {
            let map: HashMap<Key, Value> = map
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::from(map)
        }
    }
}

fn run(expression: &str, request: &Json, variables: &Json) -> Result<Value, String> {
    let program = Program::compile(expression).map_err(|e| format!("{expression}: {e}"))?;
    let mut ctx = Context::default();
    ctx.add_variable_from_value("request", to_cel(request));
    ctx.add_variable_from_value("variables", to_cel(variables));
    program.execute(&ctx).map_err(|e| e.to_string())
}

/// What the API server decides for `request` under the rendered policy:
/// `Ok` when admitted (or not matched), else the refusal's message.
fn admit(request: &Json) -> Result<(), String> {
    let spec = policy("tartan-system", "tartan-agent")
        .spec
        .expect("the policy has a spec");
    for condition in spec.match_conditions.unwrap_or_default() {
        match run(&condition.expression, request, &json!({})) {
            Ok(Value::Bool(true)) => {}
            Ok(Value::Bool(false)) => return Ok(()),
            other => panic!("{}: {other:?}", condition.expression),
        }
    }
    let mut variables = serde_json::Map::new();
    for variable in spec.variables.unwrap_or_default() {
        let value = match run(
            &variable.expression,
            request,
            &Json::Object(variables.clone()),
        ) {
            Ok(Value::String(s)) => Json::String(s.to_string()),
            other => panic!("{}: {other:?}", variable.expression),
        };
        variables.insert(variable.name, value);
    }
    let variables = Json::Object(variables);
    for validation in spec.validations.unwrap_or_default() {
        if let Ok(Value::Bool(true)) = run(&validation.expression, request, &variables) {
            continue;
        }
        let message = validation.message_expression.expect("every rule has one");
        return match run(&message, request, &variables) {
            Ok(Value::String(s)) => Err(s.to_string()),
            other => panic!("{message}: {other:?}"),
        };
    }
    Ok(())
}

/// An admission request as the API server builds it; `node` is the user
/// extra a bound token carries.
fn request(user: &str, node: Option<&str>, operation: &str, name: &str, sub: &str) -> Json {
    let mut user_info = json!({"username": user, "groups": ["system:serviceaccounts"]});
    if let Some(node) = node {
        user_info["extra"] = json!({
            NODE_NAME_EXTRA: [node],
            "authentication.kubernetes.io/pod-name": ["tartan-agent-x"],
        });
    }
    // Like the API server, leave out the empty fields (omitempty): reading
    // one that is absent is an error in CEL.
    let mut request = json!({"operation": operation, "userInfo": user_info});
    for (field, value) in [("name", name), ("subResource", sub)] {
        if !value.is_empty() {
            request[field] = value.into();
        }
    }
    request
}

#[test]
fn an_agent_updates_its_own_nodes_status() {
    assert_eq!(
        admit(&request(AGENT, Some("n1"), "UPDATE", "n1", "status")),
        Ok(())
    );
}

#[test]
fn an_agent_may_not_write_another_nodes_status_and_is_told_which_rule() {
    let refusal =
        admit(&request(AGENT, Some("n1"), "UPDATE", "n2", "status")).expect_err("refused");
    assert_eq!(
        refusal,
        "system:serviceaccount:tartan-system:tartan-agent on node n1 may not write \
NodeSubnet n2: an agent writes only the NodeSubnet of its own node (rule own-node-only)"
    );
}

#[test]
fn an_agent_may_not_change_the_spec_create_or_delete() {
    for (operation, sub, said) in [
        ("UPDATE", "", "not UPDATE it"),
        ("CREATE", "", "not CREATE it"),
        ("DELETE", "", "not DELETE it"),
        ("CREATE", "status", "not CREATE its status"),
    ] {
        let refusal =
            admit(&request(AGENT, Some("n1"), operation, "n1", sub)).expect_err("refused");
        assert!(
            refusal.contains("on node n1 may only update the status of NodeSubnet n1")
                && refusal.contains(said)
                && refusal.ends_with("(rule status-only)"),
            "{operation} {sub}: {refusal}"
        );
    }
}

#[test]
fn a_create_with_a_generated_name_is_refused_and_said_so() {
    let refusal = admit(&request(AGENT, Some("n1"), "CREATE", "", "")).expect_err("refused");
    assert_eq!(
        refusal,
        "system:serviceaccount:tartan-system:tartan-agent on node n1 may only update the status \
of NodeSubnet (generated name), not CREATE it (rule status-only)"
    );
}

#[test]
fn a_token_without_a_node_is_refused_whatever_it_asks() {
    let mut without_key = request(AGENT, None, "UPDATE", "n1", "status");
    without_key["userInfo"]["extra"] = json!({"authentication.kubernetes.io/pod-name": ["p"]});
    let mut empty = request(AGENT, None, "UPDATE", "n1", "status");
    empty["userInfo"]["extra"] = json!({ NODE_NAME_EXTRA: [] });
    let mut two = request(AGENT, None, "UPDATE", "n1", "status");
    two["userInfo"]["extra"] = json!({ NODE_NAME_EXTRA: ["n1", "n2"] });
    let mut blank = request(AGENT, None, "UPDATE", "n1", "status");
    blank["userInfo"]["extra"] = json!({ NODE_NAME_EXTRA: [""] });
    for (case, req) in [
        (
            "no extra at all",
            request(AGENT, None, "UPDATE", "n1", "status"),
        ),
        ("extra without the key", without_key),
        ("no value", empty),
        ("two values", two),
        ("an empty name", blank),
        ("a delete", request(AGENT, None, "DELETE", "n1", "")),
    ] {
        let refusal = admit(&req).expect_err(case);
        assert!(
            refusal.starts_with(AGENT)
                && refusal.contains("has no node")
                && refusal.contains("NodeSubnet n1")
                && refusal.ends_with("(rule node-bound-token)"),
            "{case}: {refusal}"
        );
    }
}

#[test]
fn the_operator_and_admins_are_not_matched() {
    for user in [
        OPERATOR,
        "kubernetes-admin",
        "system:serviceaccount:other:tartan-agent",
    ] {
        for (operation, name, sub) in [
            ("CREATE", "n2", ""),
            ("UPDATE", "n2", ""),
            ("UPDATE", "n2", "status"),
            ("DELETE", "n2", ""),
        ] {
            assert_eq!(
                admit(&request(user, None, operation, name, sub)),
                Ok(()),
                "{user} {operation} {sub}"
            );
        }
    }
    // A name that only starts like the agent's is another ServiceAccount.
    let longer = format!("{AGENT}-debug");
    assert_eq!(admit(&request(&longer, None, "DELETE", "n2", "")), Ok(()));
}

#[test]
fn the_policy_is_the_rules_on_nodesubnets_and_fails_closed() {
    let policy = policy("tartan-system", "tartan-agent");
    assert_eq!(
        policy.metadata.name.as_deref(),
        Some("tartan-agent-own-node")
    );
    let spec = policy.spec.expect("spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    let rules = spec
        .match_constraints
        .and_then(|m| m.resource_rules)
        .expect("resource rules");
    assert_eq!(
        rules[0].resources.clone().unwrap_or_default(),
        ["nodesubnets", "nodesubnets/status"]
    );
    let validations = spec.validations.expect("validations");
    assert_eq!(validations.len(), RULES.len());
    let bound = binding("tartan-agent").spec;
    assert_eq!(bound.policy_name, "tartan-agent-own-node");
    assert_eq!(bound.validation_actions, ["Deny"]);
    let text = render("tartan-system", "tartan-agent").expect("renders");
    assert!(
        text.contains("\"ValidatingAdmissionPolicyBinding\""),
        "{text}"
    );
}
