//! NetworkPolicy end to end: the real tartan-agent on two node namespaces,
//! the real API server, Pod objects for pods attached by the real CNI
//! plugins, and NetworkPolicies created through the API. Real TCP between
//! the pods shows each policy take effect, and the agents' metrics count it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tartan_agent::netns::NetNs;
use tartan_harness::setup::{
    agent_cni, agents_on, create_network, eventually, install_crds, install_rbac, scrape,
    start_agent, start_operator,
};
use tartan_harness::{ControlPlane, require_binaries};
use tartan_testbed::{Topology, cni};

/// A pod on `node` through the CNI plugins with the agent's conflist, serving
/// TCP 8080, and its Pod object as kubelet would report it.
async fn add_pod(
    client: &Client,
    cp: &ControlPlane,
    topo: &Topology,
    node: usize,
    (namespace, name, app): (&str, &str, &str),
) -> (String, Ipv4Addr) {
    let node_ns = &topo.nodes[node];
    let netns = format!("{}-{name}", topo.prefix);
    tartan_testbed::add_netns(&netns).expect("pod netns");
    let conflist_path = agent_cni(cp, &node_ns.name).path();
    let conflist = eventually(
        "the agent writes its conflist",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&conflist_path).ok()?;
            serde_json::from_str::<serde_json::Value>(&text).ok()
        },
    )
    .await
    .expect("conflist");
    let result = cni::add(&cni::Invocation {
        conflist: &conflist,
        node: &node_ns.netns,
        pod_netns: &tartan_testbed::netns_path(&netns),
        container_id: &netns,
        ifname: "eth0",
        plugin_dir: &cni::plugin_dir().expect("CNI plugins"),
    })
    .expect("CNI ADD");
    let ip = cni::addresses(&result)
        .into_iter()
        .find_map(|a| match a {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
        .expect("an IPv4 address");
    let listener = NetNs::named(&netns)
        .run(|| TcpListener::bind((ip, 8080)))
        .expect("netns")
        .expect("bind");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            drop(stream);
        }
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node_ns.name, "containers": [{"name": "c", "image": "x",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .expect("pod");
    // The namespace's default ServiceAccount may not exist yet.
    eventually("the Pod is created", Duration::from_secs(30), || async {
        pods.create(&PostParams::default(), &pod).await.ok()
    })
    .await
    .expect("create pod");
    let status = json!({"status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("pod status");
    (netns, ip)
}

fn connects(netns: &str, ip: Ipv4Addr) -> bool {
    let addr = SocketAddr::from((ip, 8080));
    NetNs::named(netns)
        .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(300)))
        .is_ok_and(|r| r.is_ok())
}

async fn until_connects(what: &str, netns: &str, ip: Ipv4Addr, expected: bool) {
    eventually(what, Duration::from_secs(20), || async {
        (connects(netns, ip) == expected).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The control plane, namespaces a and b, the operator, and two nodes each
/// with a real agent; returns the agents' probes ports.
async fn two_agents() -> (
    ControlPlane,
    Client,
    Topology,
    Vec<tartan_harness::process::Process>,
    Vec<u16>,
) {
    let cp = ControlPlane::start("netpol").await.expect("control plane");
    let client = cp.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    install_rbac(&client).await.expect("RBAC");
    create_network(&client, "10.244.0.0/16")
        .await
        .expect("network");
    for ns in ["a", "b"] {
        let object: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await
            .expect("namespace");
    }
    let operator = start_operator(&cp, "op").expect("operator");
    let topo = Topology::l2(&format!("tp{}", std::process::id() % 10_000), 2).expect("namespaces");
    let (mut agents, ports) = agents_on(&cp, &client, &topo).await.expect("agents");
    agents.push(operator);
    (cp, client, topo, agents, ports)
}

/// n1's agent counts the drops of the deny policy and what it isolates.
async fn drops_are_counted_by_policy(port: u16) {
    let metrics = eventually("n1 counts the drops by policy", Duration::from_secs(30), || async {
        let text = scrape(port);
        let dropped = metric(&text, "tartan_agent_netpol_drops_total{direction=\"ingress\",namespace=\"a\",policy=\"deny\"}")?;
        (dropped > 0.0).then_some(text)
    })
    .await
    .expect("drops counted");
    assert_eq!(
        metric(
            &metrics,
            "tartan_agent_netpol_isolated_pod_addresses{direction=\"ingress\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&metrics, "tartan_agent_netpol_policies{state=\"enforced\"}"),
        Some(2.0)
    );
    eprintln!(
        "n1: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("tartan_agent_netpol"))
            .collect::<Vec<_>>()
            .join("\n    ")
    );
}

/// n1's agent restarts: the policies hold all along (the kernel keeps the
/// table until the new agent has listed everything, then replaces it whole).
async fn restart_holds_the_policies(
    cp: &ControlPlane,
    topo: &Topology,
    agents: &mut Vec<tartan_harness::process::Process>,
    port: u16,
    (allowed, denied): (&str, &str),
    web: Ipv4Addr,
) {
    drop(agents.remove(0));
    let cni = agent_cni(cp, &topo.nodes[0].name);
    agents.push(
        start_agent(cp, &topo.nodes[0].name, &topo.nodes[0].netns, &cni, port)
            .await
            .expect("restart"),
    );
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert!(!connects(denied, web), "denied through the restart");
        assert!(connects(allowed, web), "allowed through the restart");
    }
}

#[tokio::test]
#[ignore = "e2e: needs root, network namespaces, the CNI plugins and the control plane that make deps builds (make test runs it)"]
async fn policies_created_through_the_api_are_enforced_by_the_agents() {
    require_binaries();
    tartan_testbed::require(&["ip", "nft"]);
    let (cp, client, topo, mut agents, ports) = two_agents().await;
    let (_, web) = add_pod(&client, &cp, &topo, 0, ("a", "web", "web")).await;
    let (client_ns, _) = add_pod(&client, &cp, &topo, 1, ("b", "client", "client")).await;
    let (neighbour_ns, _) = add_pod(&client, &cp, &topo, 0, ("a", "neighbour", "other")).await;
    until_connects(
        "pods talk across nodes before any policy",
        &client_ns,
        web,
        true,
    )
    .await;

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "a");
    let deny: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &deny)
        .await
        .expect("deny");
    until_connects("default deny cuts b off", &client_ns, web, false).await;
    until_connects("and the same node's pods too", &neighbour_ns, web, false).await;

    let allow: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "web-from-b"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}}}],
                "ports": [{"port": "http"}],
            }],
        },
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &allow)
        .await
        .expect("allow");
    until_connects("b may reach web's http port", &client_ns, web, true).await;
    assert!(!connects(&neighbour_ns, web), "namespace a is still denied");

    drops_are_counted_by_policy(ports[0]).await;

    restart_holds_the_policies(
        &cp,
        &topo,
        &mut agents,
        ports[0],
        (&client_ns, &neighbour_ns),
        web,
    )
    .await;

    for name in ["deny", "web-from-b"] {
        policies
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete");
    }
    until_connects("policies deleted: open again", &neighbour_ns, web, true).await;
    drop(agents);
}
