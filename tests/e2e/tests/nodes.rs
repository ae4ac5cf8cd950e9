//! Real nodes: kubelet, containerd and kube-proxy in node namespaces, Tartan
//! installed with helm, pods that kubelet and containerd created.

use std::net::Ipv4Addr;
use std::time::Duration;

use tartan_harness::cluster::Options;
use tartan_harness::node::{KubeletNode, NodeSpec};
use tartan_harness::{ControlPlane, require_binaries};
use tartan_testbed::Topology;

#[tokio::test]
#[ignore = "e2e: needs root, network namespaces and the node components make deps builds (make test runs it)"]
async fn kubelets_register_their_nodes() {
    require_binaries();
    tartan_testbed::require(&["ip", "nft", "nsenter", "unshare"]);
    let prefix = format!("tk{}", std::process::id() % 10_000);
    let topo = Topology::l2(&prefix, 2).expect("topology");
    topo.attach_host(Ipv4Addr::new(192, 168, 100, 1))
        .expect("host port");
    let dir = std::env::temp_dir().join(&prefix);
    let cp = ControlPlane::start_with(
        dir.join("cp"),
        Options {
            address: Some(Ipv4Addr::new(192, 168, 100, 1)),
            workloads: true,
        },
    )
    .await
    .expect("control plane");
    let mut nodes = Vec::new();
    for n in &topo.nodes {
        let spec = NodeSpec {
            name: n.name.clone(),
            netns: n.netns.clone(),
            ip: n.ip,
            dir: dir.join(&n.name),
            cluster_cidr: "10.244.0.0/16".into(),
        };
        nodes.push(KubeletNode::start(&cp, spec, &[]).expect("node"));
    }
    for _ in 0..60 {
        let out = cp
            .kubectl(&["get", "nodes", "-o", "wide"])
            .expect("kubectl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{text}");
        if text.lines().count() >= 3 {
            let out = cp.kubectl(&["describe", "nodes"]).expect("kubectl");
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!(
        "nodes did not register:\n{}",
        nodes[0].log_tail("kubelet.log")
    );
}
