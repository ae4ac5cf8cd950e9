//! The uninstall hook's Job, `tartan-operator uninstall`, against the real API
//! server: it deletes the agent DaemonSet and returns once the cleanup
//! DaemonSet reports every node clean (its status is set by hand here: there
//! is no kubelet to run pods).

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tartan_harness::process::Process;
use tartan_harness::setup::binary;
use tartan_harness::{ControlPlane, require_binaries};

fn daemonset(name: &str) -> DaemonSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
        }
    }))
    .expect("DaemonSet")
}

#[tokio::test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
async fn uninstall_deletes_the_agents_and_waits_for_every_node_to_be_clean() {
    require_binaries();
    let cp = ControlPlane::start("uninstall")
        .await
        .expect("control plane");
    let api: Api<DaemonSet> = Api::namespaced(cp.client().await.expect("client"), "default");
    api.create(&PostParams::default(), &daemonset("t-agent"))
        .await
        .expect("agent DaemonSet");
    api.create(&PostParams::default(), &daemonset("t-cleanup"))
        .await
        .expect("cleanup DaemonSet");
    let mut job = Process::spawn(
        "uninstall",
        &binary("tartan-operator").expect("built"),
        &[
            format!("--kubeconfig={}", cp.kubeconfig.display()),
            "uninstall".into(),
            "--namespace=default".into(),
            "--agent-daemonset=t-agent".into(),
            "--cleanup-daemonset=t-cleanup".into(),
            "--timeout-seconds=30".into(),
        ],
        &cp.dir.join("uninstall.log"),
        &[],
    )
    .expect("uninstall job");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        job.alive(),
        "waits while nodes are not clean:\n{}",
        cp.log_tail("uninstall.log")
    );
    let status = json!({"status": {"desiredNumberScheduled": 2, "numberReady": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0}});
    api.patch_status("t-cleanup", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    let start = std::time::Instant::now();
    while job.alive() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !job.alive(),
        "returns once every node is clean:\n{}",
        cp.log_tail("uninstall.log")
    );
    let agent = api.get_opt("t-agent").await.expect("get");
    assert!(
        agent.is_none() || agent.is_some_and(|a| a.metadata.deletion_timestamp.is_some()),
        "agent DaemonSet deleted"
    );
}
