//! NetworkPolicy on real nodes: policies applied with kubectl, the probe
//! matrix checked from inside the echo pods (`kubectl exec … tartan-echo
//! probe`), TCP 8080 and UDP 8081 both ways.

use std::time::Duration;

use tartan_harness::kubelet_cluster::KubeletCluster;

use crate::workload::Echo;

const DENY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
";

const ALLOW_TCP: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: echo-tcp, namespace: default}
spec:
  podSelector: {matchLabels: {app: echo}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: echo}}}]
      ports: [{protocol: TCP, port: 8080}]
";

/// Every (from, to, protocol) between the echo pods: whether it answered.
fn matrix(cluster: &KubeletCluster, echo: &Echo) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for from in &echo.pods {
        for to in echo.pods.iter().filter(|p| p.name != from.name) {
            for (proto, port) in [("tcp", 8080), ("udp", 8081)] {
                let target = format!("{}:{port}", to.ip);
                let answered = cluster
                    .kubectl(&[
                        "exec",
                        &from.name,
                        "--",
                        "tartan-echo",
                        "probe",
                        proto,
                        &target,
                        "--timeout-ms",
                        "700",
                    ])
                    .is_ok_and(|a| a.contains(&to.name));
                out.push((format!("{} -> {} {proto}", from.node, to.node), answered));
            }
        }
    }
    out
}

fn until_matrix(cluster: &KubeletCluster, echo: &Echo, what: &str, want: impl Fn(&str) -> bool) {
    let seen = cluster.wait(what, Duration::from_secs(30), || {
        let m = matrix(cluster, echo);
        Ok(m.iter().all(|(case, ok)| *ok == want(case)).then_some(m))
    });
    let seen = seen.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{what}: {seen:?}");
}

fn apply(cluster: &KubeletCluster, name: &str, manifest: &str) {
    let file = cluster.dir.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest).expect("policy file");
    cluster
        .kubectl(&["apply", "-f", &file.display().to_string()])
        .expect("kubectl apply");
}

pub fn enforced_on_real_pods(cluster: &KubeletCluster, echo: &Echo) {
    until_matrix(cluster, echo, "no policy: all open", |_| true);
    apply(cluster, "deny", DENY);
    until_matrix(cluster, echo, "default deny: nothing answers", |_| false);
    apply(cluster, "echo-tcp", ALLOW_TCP);
    until_matrix(
        cluster,
        echo,
        "echo may reach echo on TCP 8080 only",
        |case| case.ends_with("tcp"),
    );
    cluster
        .kubectl(&["delete", "networkpolicy", "deny", "echo-tcp"])
        .expect("kubectl delete");
    until_matrix(cluster, echo, "policies deleted: all open again", |_| true);
}
