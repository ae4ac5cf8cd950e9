//! Agents authenticate as a real agent pod does: with a ServiceAccount token
//! bound to a Pod on their Node (a TokenRequest with a bound object). The API
//! server then sees the node-name claim, so the admission policy that holds an
//! agent to its own NodeSubnet is in force in the tests and the lab too.
//!
//! Without kubelets the Pod is never run: it only anchors the token, as the
//! agent's DaemonSet pod does on a cluster. It tolerates every taint, like a
//! DaemonSet pod, so no controller evicts it from a Node that has no kubelet.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ServiceAccount, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::cluster::ControlPlane;
use crate::setup::NAMESPACE;

/// The agent's ServiceAccount in [`NAMESPACE`].
pub const AGENT_SERVICE_ACCOUNT: &str = "tartan-agent";
/// How long a token lasts: a lab outlives a test, so the lab renews it
/// ([`write_agent_token`] again) well before this.
pub const TOKEN_SECONDS: i64 = 4 * 3600;

fn agent_pod_name(node: &str) -> String {
    format!("tartan-agent-{node}")
}

/// The agent's Pod on `node`: created once, the same one on every later call.
pub async fn agent_pod(client: &Client, node: &str) -> anyhow::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let name = agent_pod_name(node);
    if let Some(pod) = pods.get_opt(&name).await? {
        return Ok(pod);
    }
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [
                    ("app.kubernetes.io/name", "tartan"),
                    ("app.kubernetes.io/component", "agent"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_string()),
            service_account_name: Some(AGENT_SERVICE_ACCOUNT.into()),
            automount_service_account_token: Some(false),
            tolerations: Some(vec![Toleration {
                operator: Some("Exists".into()),
                ..Default::default()
            }]),
            containers: vec![Container {
                name: "agent".into(),
                image: Some("localhost/tartan/tartan:lab".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating the agent Pod {name} on {node}"))
}

/// A token of `service_account` bound to `pod` (the API server adds the pod's
/// node), or bound to nothing when `pod` is `None`.
pub async fn service_account_token(
    client: &Client,
    service_account: &str,
    pod: Option<&Pod>,
) -> anyhow::Result<String> {
    let bound = pod.map(|p| BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
    });
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            bound_object_ref: bound,
            expiration_seconds: Some(TOKEN_SECONDS),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token of {service_account}"))?;
    issued
        .status
        .and_then(|s| s.token)
        .context("the TokenRequest came back without a token")
}

/// Writes a fresh agent token for `node` to `path` (whole, then renamed: the
/// agent's client re-reads the file every minute and never sees half of it).
pub async fn write_agent_token(client: &Client, node: &str, path: &Path) -> anyhow::Result<()> {
    let pod = agent_pod(client, node).await?;
    let token = service_account_token(client, AGENT_SERVICE_ACCOUNT, Some(&pod)).await?;
    tartan_runtime::atomic_file::write_atomic(path, token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The token file of `node`'s agent under `cp`'s directory.
pub fn agent_token_path(cp: &ControlPlane, node: &str) -> PathBuf {
    cp.dir.join(format!("agent-{node}.token"))
}
