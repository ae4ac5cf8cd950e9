//! The agent's admission policy on the real API server: tokens of the agent's
//! ServiceAccount bound to a Pod on node n1 write n1's NodeSubnet status and
//! nothing else, even with RBAC widened to everything; a token bound to no
//! node writes nothing; the operator and the admin are not affected.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tartan_crds::{NodeSubnet, NodeSubnetSpec, OverlayNetwork};
use tartan_harness::setup::{
    NAMESPACE, create_network, create_node, eventually, install_crds, install_rbac, start_operator,
};
use tartan_harness::token::{AGENT_SERVICE_ACCOUNT, agent_pod, service_account_token};
use tartan_harness::{ControlPlane, require_binaries};

const POLICY: &str = "ValidatingAdmissionPolicy 'tartan-agent-own-node'";

fn dry_run() -> PatchParams {
    PatchParams {
        dry_run: true,
        ..Default::default()
    }
}

fn status_patch(mtu: u32) -> Patch<serde_json::Value> {
    Patch::Merge(json!({"status": {"mtu": mtu}}))
}

/// What the API server said when it refused, or `None` when it admitted.
fn refusal<T>(result: kube::Result<T>) -> Option<String> {
    result.err().map(|e| format!("{e}"))
}

/// Every write but its own status, as `subnets`' user: each refusal's text.
async fn write_attempts(subnets: &Api<NodeSubnet>) -> Vec<(&'static str, Option<String>)> {
    let spec = Patch::Merge(json!({"spec": {"cidr": "10.244.200.0/24"}}));
    // Through the main resource, as a spec change would be (the spec itself
    // is immutable, which the API server checks before admission policies).
    let label = Patch::Merge(json!({"metadata": {"labels": {"tartan.dev/network": "other"}}}));
    let new = NodeSubnet::new(
        "n9",
        NodeSubnetSpec {
            node_name: "n9".into(),
            network: "default".into(),
            cidr: "10.244.9.0/24".into(),
            ipv6_cidr: None,
        },
    );
    vec![
        (
            "spec",
            refusal(subnets.patch("n1", &PatchParams::default(), &spec).await),
        ),
        (
            "labels",
            refusal(subnets.patch("n1", &PatchParams::default(), &label).await),
        ),
        (
            "create",
            refusal(subnets.create(&PostParams::default(), &new).await),
        ),
        (
            "delete",
            refusal(subnets.delete("n1", &DeleteParams::default()).await),
        ),
        (
            "n2 status",
            refusal(
                subnets
                    .patch_status("n2", &PatchParams::default(), &status_patch(1400))
                    .await,
            ),
        ),
    ]
}

async fn grant_everything_on_nodesubnets(admin: &Client) {
    let name = "tartan-agent-too-broad";
    let meta = ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let role = ClusterRole {
        metadata: meta.clone(),
        rules: Some(vec![tartan_runtime::rule(
            "tartan.dev",
            &["nodesubnets", "nodesubnets/status"],
            &["*"],
        )]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("role");
    let binding = ClusterRoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: AGENT_SERVICE_ACCOUNT.into(),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
}

/// A control plane with the policy, 3 Nodes and the operator, which has
/// allocated their NodeSubnets.
async fn cluster() -> (ControlPlane, Client, tartan_harness::process::Process) {
    let cp = ControlPlane::start("admission")
        .await
        .expect("control plane");
    let admin = cp.client().await.expect("client");
    install_crds(&admin).await.expect("crds");
    install_rbac(&admin).await.expect("rbac and policy");
    create_network(&admin, "10.244.0.0/16")
        .await
        .expect("network");
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        create_node(&admin, node, &format!("192.168.100.{}", 11 + i))
            .await
            .expect("node");
    }
    let operator = start_operator(&cp, "tartan-operator").expect("operator");
    let all: Api<NodeSubnet> = Api::all(admin.clone());
    eventually(
        "the operator allocates 3 NodeSubnets",
        Duration::from_secs(30),
        || async {
            let list = all.list(&Default::default()).await.ok()?;
            (list.items.len() == 3).then_some(())
        },
    )
    .await
    .expect("allocated: the operator's creates pass the policy");

    (cp, admin, operator)
}

/// A client with a token of the agent's ServiceAccount bound to its Pod on
/// n1, once the policy is in force.
async fn agent_on_n1(cp: &ControlPlane, admin: &Client) -> Api<NodeSubnet> {
    let pod = agent_pod(admin, "n1").await.expect("agent pod on n1");
    let token = service_account_token(admin, AGENT_SERVICE_ACCOUNT, Some(&pod))
        .await
        .expect("bound token");
    let agent: Api<NodeSubnet> = Api::all(
        cp.client_with_token(&token, "agent-n1")
            .await
            .expect("client"),
    );
    // A new policy takes a moment to be in force: wait on a dry run.
    eventually(
        "the policy is in force",
        Duration::from_secs(30),
        || async {
            let said = refusal(
                agent
                    .patch_status("n2", &dry_run(), &status_patch(1400))
                    .await,
            )?;
            said.contains("own-node-only").then_some(())
        },
    )
    .await
    .expect("in force");

    agent
}

/// With the chart's RBAC: n1's status is written; RBAC refuses the spec,
/// labels, create and delete, the policy n2's status.
async fn with_chart_rbac(agent: &Api<NodeSubnet>) {
    let own = agent
        .patch_status("n1", &PatchParams::default(), &status_patch(1400))
        .await
        .expect("n1's agent writes n1's status");
    assert_eq!(own.status.and_then(|s| s.mtu), Some(1400));

    for (what, said) in write_attempts(agent).await {
        let said = said.unwrap_or_else(|| panic!("{what}: admitted"));
        eprintln!("RBAC as the chart grants it, {what}: {said}");
        if what == "n2 status" {
            assert!(
                said.contains(POLICY)
                    && said.contains("tartan-agent on node n1 may not write NodeSubnet n2")
                    && said.contains("(rule own-node-only)"),
                "{said}"
            );
        } else {
            assert!(
                said.contains("forbidden"),
                "RBAC refuses {what} first: {said}"
            );
        }
    }
}

/// RBAC widened by mistake: the policy alone still holds the agent.
async fn with_rbac_widened(admin: &Client, agent: &Api<NodeSubnet>) {
    grant_everything_on_nodesubnets(admin).await;
    eventually(
        "RBAC allows the agent everything",
        Duration::from_secs(30),
        || async {
            let label = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
            let said = refusal(agent.patch("n1", &dry_run(), &label).await)?;
            said.contains("status-only").then_some(())
        },
    )
    .await
    .expect("widened");
    for (what, said) in write_attempts(agent).await {
        let said = said.unwrap_or_else(|| panic!("{what}: admitted with RBAC widened"));
        eprintln!("RBAC widened, {what}: {said}");
        let rule = match what {
            // Immutable: refused by the CRD's own rule first, whoever asks.
            "spec" => "NodeSubnet spec is immutable",
            "n2 status" => "(rule own-node-only)",
            _ => "(rule status-only)",
        };
        assert!(said.contains(rule), "{what}: {said}");
    }
}

/// A token of the same ServiceAccount bound to no Pod: no node, no write.
async fn with_an_unbound_token(cp: &ControlPlane, admin: &Client) {
    let unbound = service_account_token(admin, AGENT_SERVICE_ACCOUNT, None)
        .await
        .expect("unbound token");
    let anywhere: Api<NodeSubnet> = Api::all(
        cp.client_with_token(&unbound, "agent-unbound")
            .await
            .expect("client"),
    );
    let said = refusal(
        anywhere
            .patch_status("n1", &PatchParams::default(), &status_patch(1300))
            .await,
    )
    .expect("refused without a node");
    eprintln!("a token bound to no node: {said}");
    assert!(
        said.contains(POLICY)
            && said.contains("has no node")
            && said.contains("(rule node-bound-token)"),
        "{said}"
    );
}

/// The admin and the operator are not matched.
async fn admin_and_operator_unaffected(admin: &Client) {
    let all: Api<NodeSubnet> = Api::all(admin.clone());
    all.patch_status("n2", &PatchParams::default(), &status_patch(1450))
        .await
        .expect("the admin writes n2's status");
    Api::<Node>::all(admin.clone())
        .delete("n3", &DeleteParams::default())
        .await
        .expect("delete n3");
    eventually(
        "the operator deletes n3's NodeSubnet",
        Duration::from_secs(30),
        || async { all.get_opt("n3").await.ok()?.is_none().then_some(()) },
    )
    .await
    .expect("the operator's deletes pass the policy");
    let networks: Api<OverlayNetwork> = Api::all(admin.clone());
    eventually(
        "the operator counts 2 nodes",
        Duration::from_secs(60),
        || async {
            let status = networks.get("default").await.ok()?.status?;
            (status.allocated == 2).then_some(())
        },
    )
    .await
    .expect("the operator's status writes pass the policy");
}

/// The API server type-checks the policy against the NodeSubnet schema.
async fn type_checked(admin: &Client) {
    let policies = Api::<ValidatingAdmissionPolicy>::all(admin.clone());
    let checked = eventually(
        "the policy is type-checked",
        Duration::from_secs(30),
        || async {
            policies
                .get("tartan-agent-own-node")
                .await
                .ok()?
                .status?
                .type_checking
        },
    )
    .await
    .expect("type checking");
    let warnings = checked.expression_warnings.unwrap_or_default();
    assert!(warnings.is_empty(), "type checking: {warnings:?}");
}

#[tokio::test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
async fn an_agent_writes_only_its_own_nodes_status_and_fails_closed_without_a_node() {
    require_binaries();
    let (cp, admin, _operator) = cluster().await;
    let agent = agent_on_n1(&cp, &admin).await;
    with_chart_rbac(&agent).await;
    with_rbac_widened(&admin, &agent).await;
    with_an_unbound_token(&cp, &admin).await;
    admin_and_operator_unaffected(&admin).await;
    type_checked(&admin).await;
}
