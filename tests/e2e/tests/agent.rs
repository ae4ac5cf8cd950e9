//! The real tartan-agent binary against the real control plane, as its
//! ServiceAccount with exactly its RBAC, programming a node namespace: it
//! writes its NodeSubnet status and follows a backend switch.

use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tartan_crds::{BackendType, NodeSubnet, OverlayNetwork};
use tartan_harness::setup::{
    agent_cni, agents_on, create_network, eventually, install_crds, install_rbac, readyz, scrape,
    start_agent, start_operator,
};
use tartan_harness::{ControlPlane, require_binaries};
use tartan_testbed::Topology;

/// A control plane with the CRDs, RBAC, the network and the operator, and two
/// node namespaces each programmed by a real agent. Returns the probes ports.
async fn two_agents(
    name: &str,
    tag: &str,
) -> (
    ControlPlane,
    kube::Client,
    Topology,
    Vec<tartan_harness::process::Process>,
    Vec<u16>,
) {
    let cp = ControlPlane::start(name).await.expect("control plane");
    let client = cp.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    install_rbac(&client).await.expect("RBAC");
    create_network(&client, "10.244.0.0/16")
        .await
        .expect("network");
    let operator = start_operator(&cp, "op").expect("operator");
    let topo =
        Topology::l2(&format!("{tag}{}", std::process::id() % 10_000), 2).expect("namespaces");
    let mut processes = vec![operator];
    let (agents, ports) = agents_on(&cp, &client, &topo).await.expect("agents");
    processes.extend(agents);
    (cp, client, topo, processes, ports)
}

#[tokio::test]
#[ignore = "e2e: needs root, network namespaces and the control plane that make deps builds (make test runs it)"]
async fn agent_publishes_status_and_follows_a_backend_switch() {
    require_binaries();
    tartan_testbed::require(&["ip", "nft", "nsenter", "bird"]);
    let (cp, client, topo, agents, ports) = two_agents("agent", "te").await;
    let subnets: Api<NodeSubnet> = Api::all(client.clone());
    let ready = |backend: BackendType| {
        let subnets = subnets.clone();
        async move {
            let list = subnets.list(&Default::default()).await.ok()?;
            let all = list.items.len() == 2
                && list.items.iter().all(|s| {
                    let status = s.status.clone().unwrap_or_default();
                    status.backend == Some(backend)
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
    switch_backend(&client, BackendType::HostGw).await;
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
    let routes = tartan_testbed::ip(&["-n", &topo.nodes[0].netns, "route", "show", "proto", "84"])
        .expect("routes");
    let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
    assert!(
        routes.contains(&format!("via {} dev eth0", topo.nodes[1].ip)),
        "{routes}"
    );
    let out = cp.kubectl(&["get", "nodesubnets"]).expect("kubectl");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    // On to bgp: each agent runs BIRD, the two peer, and routes come from BGP.
    {
        switch_backend(&client, BackendType::Bgp).await;
        eventually("both agents on bgp", Duration::from_secs(60), || {
            ready(BackendType::Bgp)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
        // Sessions and routes are metrics: a join must not rewrite every status.
        let metrics = scrape(ports[0]);
        assert!(
            metrics.contains("tartan_agent_bgp_sessions{state=\"established\"} 1")
                && metrics.contains("tartan_agent_bgp_routes_learned 1"),
            "{metrics}"
        );
        let routes =
            tartan_testbed::ip(&["-n", &topo.nodes[0].netns, "route", "show", "proto", "bird"])
                .expect("routes");
        assert!(
            String::from_utf8_lossy(&routes.stdout)
                .contains(&format!("via {} dev eth0", topo.nodes[1].ip)),
            "BIRD installed the peer's route"
        );
    }

    // On to wireguard: each agent made its key on the node, publishes only the public half.
    switch_backend(&client, BackendType::Wireguard).await;
    let list = eventually("both agents on wireguard", Duration::from_secs(60), || {
        ready(BackendType::Wireguard)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    for subnet in &list.items {
        let node = &subnet.spec.node_name;
        let published = subnet
            .status
            .clone()
            .unwrap_or_default()
            .wireguard_public_key;
        let file = agent_cni(&cp, node).dir.join("wireguard/private.key");
        let private = std::fs::read_to_string(&file).expect("the agent kept its key on the node");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).expect("key").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        let secret = tartan_crds::validate::parse_wireguard_key(private.trim()).expect("a key");
        let public = tartan_agent::wireguard::keys::NodeKey::from_secret(secret).public_base64();
        assert_eq!(
            published.as_deref(),
            Some(public.as_str()),
            "{node} publishes its public key"
        );
        let yaml = cp
            .kubectl(&["get", "nodesubnet", node, "-o", "yaml"])
            .expect("kubectl");
        assert!(
            !String::from_utf8_lossy(&yaml.stdout).contains(private.trim()),
            "no private key in the API"
        );
    }
    let handshakes = eventually(
        "n1 has a session with n2",
        Duration::from_secs(20),
        || async {
            let metrics = scrape(ports[0]);
            metrics
                .contains("tartan_agent_wireguard_peers{handshake_age=\"under_2m\"} 1")
                .then_some(metrics)
        },
    )
    .await;
    assert!(handshakes.is_ok(), "{}", scrape(ports[0]));
    let routes = tartan_testbed::ip(&[
        "-n",
        &topo.nodes[0].netns,
        "route",
        "show",
        "dev",
        "tartan-wg",
    ])
    .expect("routes");
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("10.244."),
        "routes into tartan-wg"
    );
    drop(agents);
}

/// The backend switch, as a person does it: one field of the OverlayNetwork.
async fn switch_backend(client: &kube::Client, backend: BackendType) {
    Api::<OverlayNetwork>::all(client.clone())
        .patch(
            "default",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"backend": {"type": backend}}})),
        )
        .await
        .expect("switch");
}

#[tokio::test]
#[ignore = "e2e: needs root, network namespaces and the control plane that make deps builds (make test runs it)"]
async fn the_data_plane_outlives_an_unreachable_api_server_and_catches_up() {
    require_binaries();
    tartan_testbed::require(&["ip", "nft", "nsenter"]);
    let (mut cp, client, topo, agents, ports) = two_agents("apidown", "ta").await;
    let ready_count = |client: kube::Client, backend: BackendType| async move {
        let list = Api::<NodeSubnet>::all(client)
            .list(&Default::default())
            .await
            .ok()?;
        let n = list.items.iter().filter(|s| {
            let st = s.status.clone().unwrap_or_default();
            st.backend == Some(backend) && tartan_crds::condition::is_true(&st.conditions, "Ready")
        });
        (n.count() == 2).then_some(())
    };
    eventually("Ready", Duration::from_secs(60), || {
        ready_count(client.clone(), BackendType::Vxlan)
    })
    .await
    .expect("ready");
    eventually("/readyz 200", Duration::from_secs(20), || async {
        (readyz(ports[0]) == Some(200)).then_some(())
    })
    .await
    .expect("agent ready");
    let routes = |netns: &str| {
        String::from_utf8_lossy(
            &tartan_testbed::ip(&["-n", netns, "route", "show", "proto", "84"])
                .expect("routes")
                .stdout,
        )
        .into_owned()
    };
    // Ready says this node is programmed, not that every peer has published
    // its address yet: wait for the peer's route.
    let before = eventually("n1 routes to n2", Duration::from_secs(30), || async {
        let now = routes(&topo.nodes[0].netns);
        now.contains("10.244.").then_some(now)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));

    cp.stop_apiserver();
    eventually(
        "/readyz fails while the API is unreachable",
        Duration::from_secs(30),
        || async { (readyz(ports[0]) == Some(503)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        routes(&topo.nodes[0].netns),
        before,
        "the data plane stays as last programmed"
    );

    cp.start_apiserver().await.expect("API server back");
    eventually("/readyz recovers", Duration::from_secs(60), || async {
        (readyz(ports[0]) == Some(200)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    // Caught up: a change made after the outage is followed.
    let client = cp.client().await.expect("client");
    switch_backend(&client, BackendType::HostGw).await;
    eventually("host-gw after the outage", Duration::from_secs(60), || {
        ready_count(client.clone(), BackendType::HostGw)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    drop(agents);
}

/// A restarted agent starts from its NodeSubnet's status as the watch shows
/// it: it writes nothing, and peers never see its nodeIP or vtepMAC go, even
/// when its OverlayNetwork watch comes up long after its NodeSubnet watch
/// (here: the agent may not read OverlayNetworks until we allow it again).
#[tokio::test]
#[ignore = "e2e: needs root, network namespaces and the control plane that make deps builds (make test runs it)"]
async fn a_restarted_agent_writes_nothing_even_when_its_network_arrives_late() {
    use futures::StreamExt;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use kube::runtime::watcher;
    require_binaries();
    tartan_testbed::require(&["ip", "nft", "nsenter"]);
    let (cp, client, topo, mut agents, ports) = two_agents("restart", "tr").await;
    let subnets: Api<NodeSubnet> = Api::all(client.clone());
    let settled = eventually("n1 Ready", Duration::from_secs(60), || async {
        let n1 = subnets.get("n1").await.ok()?;
        let ready = n1.status.as_ref().map(|s| &s.conditions)?;
        tartan_crds::condition::is_true(ready, "Ready").then_some(n1)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    // Every version of n1 from here on, as any peer's watch would see it.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = {
        let (seen, subnets) = (seen.clone(), subnets.clone());
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=n1");
            let mut events = std::pin::pin!(watcher(subnets, config));
            while let Some(Ok(event)) = events.next().await {
                if let watcher::Event::Apply(s) | watcher::Event::InitApply(s) = event {
                    seen.lock()
                        .expect("lock")
                        .push(s.status.unwrap_or_default());
                }
            }
        })
    };
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = roles.get("tartan-agent").await.expect("agent role");
    let without_networks = ClusterRole {
        rules: role.rules.clone().map(|rules| {
            (rules.into_iter())
                .filter(|r| !r.resources.iter().flatten().any(|x| x == "overlaynetworks"))
                .collect()
        }),
        ..role.clone()
    };
    roles
        .replace("tartan-agent", &Default::default(), &without_networks)
        .await
        .expect("revoke");
    drop(agents.remove(1));
    let node = &topo.nodes[0];
    agents.push(
        start_agent(
            &cp,
            &node.name,
            &node.netns,
            &agent_cni(&cp, &node.name),
            ports[0],
        )
        .await
        .expect("restart"),
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let current = roles.get("tartan-agent").await.expect("role");
    let role = ClusterRole {
        metadata: current.metadata,
        ..role
    };
    roles
        .replace("tartan-agent", &Default::default(), &role)
        .await
        .expect("allow again");
    eventually(
        "the restarted agent programmed",
        Duration::from_secs(60),
        || async { (readyz(ports[0]) == Some(200)).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = subnets.get("n1").await.expect("n1");
    recorder.abort();
    assert_eq!(
        after.resource_version(),
        settled.resource_version(),
        "the restart wrote nothing: {:?} -> {:?}",
        settled.status,
        after.status
    );
    let seen = seen.lock().expect("lock");
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.node_ip.is_some() && s.vtep_mac.is_some()),
        "nodeIP and vtepMAC were never cleared: {seen:?}"
    );
    let metrics = scrape(ports[0]);
    assert!(
        metrics.contains("tartan_agent_status_writes_total{result=\"ok\"} 0"),
        "{metrics}"
    );
}
