//! The chart's DaemonSets on the real nodes: a node's pod of one, replacing
//! it, restarting its container in place, waiting for a rollout.

use std::time::Duration;

use tartan_harness::kubelet_cluster::KubeletCluster;

use super::NAMESPACE;

pub fn restart_agent(cluster: &KubeletCluster, node: &str) {
    replace_pod(cluster, "agent", node);
}

/// Deletes `node`'s pod of the `component` DaemonSet (agent, keeper) and
/// waits until that DaemonSet runs Ready on every node again.
pub fn replace_pod(cluster: &KubeletCluster, component: &str, node: &str) {
    cluster
        .kubectl(&[
            "delete",
            "pod",
            "-n",
            NAMESPACE,
            "-l",
            &format!("app.kubernetes.io/component={component}"),
            "--field-selector",
            &format!("spec.nodeName={node}"),
        ])
        .expect("delete the pod");
    rolled(cluster, component);
}

/// `kubectl get pods` of the `component` DaemonSet (agent, keeper), with `more`.
fn get_pods(cluster: &KubeletCluster, component: &str, more: &[&str]) -> anyhow::Result<String> {
    let selector = format!("app.kubernetes.io/component={component}");
    let args = [&["get", "pods", "-n", NAMESPACE, "-l", &selector][..], more].concat();
    cluster.kubectl(&args)
}

/// The name of `node`'s pod of the `component` DaemonSet (agent, keeper).
pub fn pod_on(cluster: &KubeletCluster, component: &str, node: &str) -> String {
    let on_node = format!("spec.nodeName={node}");
    let name = "jsonpath={.items[0].metadata.name}";
    get_pods(
        cluster,
        component,
        &["--field-selector", &on_node, "-o", name],
    )
    .unwrap_or_else(|e| panic!("{node}'s {component} pod: {e:#}"))
}

/// Restarts `node`'s agent container in its pod (SIGTERM to its PID 1; the
/// kubelet starts the container again, the pod stays), and waits until it
/// is Ready again.
pub fn restart_agent_container(cluster: &KubeletCluster, node: &str) {
    let pod = pod_on(cluster, "agent", node);
    let restarts = || {
        let path = r#"jsonpath={.status.containerStatuses[?(@.name=="agent")].restartCount}"#;
        cluster.kubectl(&["get", "pod", "-n", NAMESPACE, &pod, "-o", path])
    };
    let before = restarts().expect("the restart count");
    let kill = ["exec", "-n", NAMESPACE, &pod, "-c", "agent", "--"];
    (cluster.kubectl(&[&kill[..], &["/bin/sh", "-c", "kill -TERM 1"]].concat()))
        .expect("SIGTERM to the agent");
    cluster
        .wait(
            "the agent container restarted",
            Duration::from_secs(60),
            || Ok((restarts()? != before).then_some(())),
        )
        .expect("the kubelet restarts the container");
    let ready = format!("pod/{pod}");
    (cluster.kubectl(&[
        "wait",
        "-n",
        NAMESPACE,
        "--for=condition=Ready",
        &ready,
        "--timeout=120s",
    ]))
    .expect("the agent Ready again");
}

/// The names of the datapath keepers' pods.
pub fn keeper_pods(cluster: &KubeletCluster) -> String {
    let names = "jsonpath={.items[*].metadata.name}";
    get_pods(cluster, "keeper", &["-o", names]).expect("keeper pods")
}

/// Waits until every node runs a Ready agent of the current DaemonSet.
pub fn agents_rolled(cluster: &KubeletCluster) {
    rolled(cluster, "agent");
}

fn rolled(cluster: &KubeletCluster, component: &str) {
    cluster
        .kubectl(&[
            "rollout",
            "status",
            "-n",
            NAMESPACE,
            &format!("daemonset/tartan-{component}"),
            "--timeout=120s",
        ])
        .expect("the DaemonSet rolled");
}
