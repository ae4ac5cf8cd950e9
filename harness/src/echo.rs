//! The test workload of a real cluster: `tartan-echo` (testbed's binary, in
//! the image `localhost/tartan/echo:dev`) as a Deployment spread over the
//! nodes, and a ClusterIP Service in front of it.

use anyhow::Context as _;

use crate::kubelet_cluster::KubeletCluster;

pub const MANIFEST: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            - labelSelector: {matchLabels: {app: echo}}
              topologyKey: kubernetes.io/hostname
      terminationGracePeriodSeconds: 1
      containers:
        - name: echo
          image: localhost/tartan/echo:dev
          imagePullPolicy: Never
          ports:
            - {containerPort: 8080}
            - {containerPort: 8081, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports:
    - {name: tcp, port: 80, targetPort: 8080}
    - {name: udp, port: 81, targetPort: 8081, protocol: UDP}
"#;

/// Applies the Deployment and Service and waits until the rollout is done.
pub fn deploy(cluster: &KubeletCluster) -> anyhow::Result<()> {
    let file = cluster.dir.join("echo.yaml");
    std::fs::write(&file, MANIFEST)?;
    cluster.kubectl(&["apply", "-f", &file.display().to_string()])?;
    cluster
        .kubectl(&["rollout", "status", "deployment/echo", "--timeout=120s"])
        .with_context(|| cluster.diagnose())?;
    Ok(())
}
