//! The agents' real tokens on real nodes: what kubelet projected into an
//! agent pod, held to that pod's node by the chart's admission policy.

use tartan_harness::kubelet_cluster::KubeletCluster;

const NAMESPACE: &str = "tartan-system";

/// The token kubelet projected into n1's agent pod passed the admission
/// policy (n1 is Ready); with it, n1's status is writable and n2's is not.
pub fn an_agent_pod_token_writes_only_its_own_node(cluster: &KubeletCluster) {
    let pod = super::daemonsets::pod_on(cluster, "agent", "n1");
    let token = cluster.projected_token(NAMESPACE, &pod).expect("its token");
    let file = cluster.dir.join("agent-n1-pod.token");
    std::fs::write(&file, token).expect("a copy of the token");
    let kubeconfig = cluster
        .cp
        .kubeconfig_with_token_file(&file, "agent-n1-pod.kubeconfig")
        .expect("kubeconfig");
    let patch = |node: &str, dry_run: bool| {
        let mut args = vec![
            "patch",
            "nodesubnet",
            node,
            "--subresource=status",
            "--type=merge",
        ];
        args.extend(["-p", r#"{"status":{"mtu":1280}}"#]);
        if dry_run {
            args.push("--dry-run=server");
        }
        cluster.kubectl_with(&kubeconfig, &args)
    };
    patch("n1", true).expect("n1's agent token writes n1's status (a server-side dry run)");
    let refused = patch("n2", false).expect_err("n1's agent token may not write n2's status");
    let said = format!("{refused:#}");
    eprintln!("n1's agent pod token, writing n2's status: {said}");
    assert!(said.contains("(rule own-node-only)"), "{said}");
}
