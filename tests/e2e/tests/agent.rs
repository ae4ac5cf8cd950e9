//! The real tartan-agent binary against the real control plane, as its
//! ServiceAccount with exactly its RBAC, programming a node namespace: it
//! writes its NodeSubnet status and follows a backend switch.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tartan_agent::testbed::{self, Topology};
use tartan_crds::{BackendType, NodeSubnet, OverlayNetwork};
use tartan_e2e::setup::{
    create_network, create_node, eventually, install_crds, install_rbac, start_agent,
    start_operator,
};
use tartan_e2e::{ControlPlane, require_binaries};

#[tokio::test]
async fn agent_publishes_status_and_follows_a_backend_switch() {
    if !require_binaries() || !testbed::kernel_tests_allowed(&["ip", "nft", "nsenter"]) {
        return;
    }
    let cp = ControlPlane::start("agent").await.expect("control plane");
    let client = cp.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    install_rbac(&client).await.expect("RBAC");
    create_network(&client, "10.244.0.0/16")
        .await
        .expect("network");
    let _operator = start_operator(&cp, "op").expect("operator");
    let topo = Topology::l2(&format!("te{}", std::process::id() % 10_000), 2).expect("namespaces");
    let mut agents = Vec::new();
    for node in &topo.nodes {
        create_node(&client, &node.name, &node.ip.to_string())
            .await
            .expect("node");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("port")
            .local_addr()
            .expect("addr")
            .port();
        agents.push(
            start_agent(&cp, &node.name, &node.netns, &cp.dir.join(&node.name), port)
                .expect("agent"),
        );
    }
    let subnets: Api<NodeSubnet> = Api::all(client.clone());
    let ready = |backend: BackendType| {
        let subnets = subnets.clone();
        async move {
            let list = subnets.list(&Default::default()).await.ok()?;
            let all = list.items.len() == 2
                && list.items.iter().all(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    status.backend == Some(backend)
                        && status.peers == 1
                        && tartan_crds::condition::is_true(&status.conditions, "Ready")
                });
            all.then_some(list)
        }
    };
    let list = eventually(
        "both agents Ready over vxlan",
        Duration::from_secs(60),
        || ready(BackendType::Vxlan),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}\n{}",
            cp.log_tail("agent-n1.log"),
            cp.log_tail("op.log")
        )
    });
    let n1 = list
        .items
        .iter()
        .find(|s| s.spec.node_name == "n1")
        .expect("n1");
    let status = n1.status.clone().expect("status");
    assert_eq!(
        status.node_ip.as_deref(),
        Some(topo.nodes[0].ip.to_string().as_str())
    );
    assert_eq!(status.vtep_mac.as_deref(), Some("0e:2a:c0:a8:64:0b"));
    assert!(
        n1.managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("tartan-agent")
                && f.subresource.as_deref() == Some("status"))
    );
    let out = cp.kubectl(&["get", "nodesubnets"]).expect("kubectl");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    // The backend switch: one field of the OverlayNetwork.
    let networks: Api<OverlayNetwork> = Api::all(client.clone());
    networks
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"backend": {"type": "host-gw"}}})),
        )
        .await
        .expect("switch");
    eventually("both agents on host-gw", Duration::from_secs(60), || {
        ready(BackendType::HostGw)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    // The operator counts the rollout.
    let rolled = eventually(
        "the OverlayNetwork counts both nodes on host-gw",
        Duration::from_secs(30),
        || {
            let networks = networks.clone();
            async move {
                let status = networks.get("default").await.ok()?.status?;
                (status.nodes_by_backend.get(&BackendType::HostGw) == Some(&2)
                    && status.nodes_ready == 2)
                    .then_some(status)
            }
        },
    )
    .await
    .expect("rollout counted");
    assert_eq!(rolled.allocated, 2);
    let routes =
        testbed::ip(&["-n", &topo.nodes[0].netns, "route", "show", "proto", "84"]).expect("routes");
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        routes.contains(&format!("via {} dev eth0", topo.nodes[1].ip)),
        "{routes}"
    );
    let out = cp.kubectl(&["get", "nodesubnets"]).expect("kubectl");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    drop(agents);
}
