//! The real tartan-operator binary against the real control plane, running as
//! its ServiceAccount with exactly the RBAC it declares.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::DeleteParams;
use kube::{Api, Client, ResourceExt};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tartan_harness::process::Process;
use tartan_harness::setup::{
    NAMESPACE, create_network, create_node, eventually, install_crds, install_rbac, start_operator,
};
use tartan_harness::{ControlPlane, require_binaries};

async fn subnets(client: &Client) -> BTreeMap<String, (String, String)> {
    let api: Api<NodeSubnet> = Api::all(client.clone());
    api.list(&Default::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .map(|s| {
                    (
                        s.name_any(),
                        (
                            s.spec.cidr.clone(),
                            s.resource_version().unwrap_or_default(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every object the operator writes (NodeSubnets, OverlayNetworks, its
/// Events), by name, with its resourceVersion.
async fn operator_objects(client: &Client) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let subnets: Api<NodeSubnet> = Api::all(client.clone());
    let networks: Api<OverlayNetwork> = Api::all(client.clone());
    let events: Api<Event> = Api::all(client.clone());
    let params = Default::default();
    for s in subnets.list(&params).await.expect("list NodeSubnets") {
        all.insert(
            format!("nodesubnet/{}", s.name_any()),
            s.resource_version().unwrap_or_default(),
        );
    }
    for n in networks.list(&params).await.expect("list OverlayNetworks") {
        all.insert(
            format!("overlaynetwork/{}", n.name_any()),
            n.resource_version().unwrap_or_default(),
        );
    }
    for e in events.list(&params).await.expect("list Events") {
        if e.reporting_controller
            .as_deref()
            .is_some_and(|c| c.contains("tartan"))
        {
            all.insert(
                format!("event/{}", e.name_any()),
                e.resource_version().unwrap_or_default(),
            );
        }
    }
    all
}

/// With the leader frozen (SIGSTOP, well inside its 10 s lease) a new Node
/// needs a subnet; for the next 4 s nothing the operator writes may change,
/// so any write would be the standby's. Then the leader resumes.
async fn standby_writes_nothing(client: &Client, leader: &Process) {
    let pid = Pid::from_raw(i32::try_from(leader.pid().expect("leader runs")).expect("pid"));
    signal::kill(pid, Signal::SIGSTOP).expect("freeze the leader");
    // A write the leader sent just before it froze still lands: let it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = operator_objects(client).await;
    create_node(client, "frozen", "192.168.0.20")
        .await
        .expect("node");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = operator_objects(client).await;
    signal::kill(pid, Signal::SIGCONT).expect("resume the leader");
    assert_eq!(
        during, before,
        "the standby wrote while the leader held the lease"
    );
    eventually(
        "the resumed leader allocates the new node",
        Duration::from_secs(20),
        || async { subnets(client).await.get("frozen").cloned() },
    )
    .await
    .expect("allocated after resuming");
}

async fn setup(name: &str) -> (ControlPlane, Client) {
    let cp = ControlPlane::start(name).await.expect("control plane");
    let client = cp.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    install_rbac(&client).await.expect("RBAC");
    create_network(&client, "10.244.0.0/16")
        .await
        .expect("network");
    (cp, client)
}

#[tokio::test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
async fn nodes_get_subnets_deleted_nodes_free_them_and_a_restart_allocates_nothing() {
    require_binaries();
    let (cp, client) = setup("op").await;
    let mut operator = start_operator(&cp, "op-a").expect("operator");
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        create_node(&client, name, &format!("192.168.0.{}", 11 + i))
            .await
            .expect("node");
    }
    let three = eventually("three NodeSubnets", Duration::from_secs(30), || async {
        let s = subnets(&client).await;
        (s.len() == 3).then_some(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("op-a.log")));
    let cidrs: std::collections::BTreeSet<_> = three.values().map(|(c, _)| c.clone()).collect();
    assert_eq!(cidrs.len(), 3, "distinct subnets: {three:?}");
    let api: Api<NodeSubnet> = Api::all(client.clone());
    let n1 = api.get("n1").await.expect("n1");
    let owner = &n1.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", "n1"));
    assert_eq!(
        n1.managed_fields()
            .iter()
            .filter(|f| f.manager.as_deref() == Some("tartan-operator"))
            .count(),
        1
    );

    // The real kubectl shows the promised columns.
    let out = cp.kubectl(&["get", "nodesubnets"]).expect("kubectl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        vec!["NAME", "NODE", "CIDR", "NODE-IP", "BACKEND", "READY", "AGE"],
        "{text}"
    );
    assert!(text.contains(&n1.spec.cidr), "{text}");
    let short = cp.kubectl(&["get", "nsub", "-o", "name"]).expect("kubectl");
    assert_eq!(String::from_utf8_lossy(&short.stdout).lines().count(), 3);

    // Deleting a Node frees its subnet for the next Node.
    let freed = three["n2"].0.clone();
    Api::<Node>::all(client.clone())
        .delete("n2", &DeleteParams::default())
        .await
        .expect("delete node");
    eventually(
        "n2's NodeSubnet garbage-collected",
        Duration::from_secs(30),
        || async { (!subnets(&client).await.contains_key("n2")).then_some(()) },
    )
    .await
    .expect("gone");
    create_node(&client, "n4", "192.168.0.14")
        .await
        .expect("node");
    let n4 = eventually("n4 gets a subnet", Duration::from_secs(30), || async {
        subnets(&client).await.get("n4").cloned()
    })
    .await
    .expect("n4");
    assert_eq!(n4.0, freed, "the freed subnet is reused (lowest free)");

    // A restart re-reads the NodeSubnets and changes none of them.
    let before = subnets(&client).await;
    operator.stop(Duration::from_secs(5));
    let _restarted = start_operator(&cp, "op-b").expect("operator again");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        subnets(&client).await,
        before,
        "nothing re-allocated or rewritten after a restart"
    );
}

#[tokio::test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
async fn two_replicas_elect_one_leader_and_the_standby_takes_over_within_15_seconds() {
    require_binaries();
    let (cp, client) = setup("le").await;
    let mut a = start_operator(&cp, "op-a").expect("a");
    let mut b = start_operator(&cp, "op-b").expect("b");
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let holder = || async {
        leases
            .get_opt("tartan-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
            .filter(|h| !h.is_empty())
    };
    let leader = eventually("a leader", Duration::from_secs(20), holder)
        .await
        .expect("leader");
    create_node(&client, "n1", "192.168.0.11")
        .await
        .expect("node");
    eventually(
        "n1 allocated by the leader",
        Duration::from_secs(20),
        || async { subnets(&client).await.get("n1").cloned() },
    )
    .await
    .expect("allocated");
    standby_writes_nothing(&client, if leader == "op-a" { &a } else { &b }).await;
    // Kill the leader without a chance to hand over.
    let (dead, alive) = if leader == "op-a" {
        (&mut a, "op-b")
    } else {
        (&mut b, "op-a")
    };
    dead.kill();
    let killed = std::time::Instant::now();
    eventually(
        "the standby takes over",
        Duration::from_secs(15),
        || async { (holder().await.as_deref() == Some(alive)).then_some(()) },
    )
    .await
    .expect("handover within 15 s");
    eprintln!("handover took {:?}", killed.elapsed());
    create_node(&client, "n2", "192.168.0.12")
        .await
        .expect("node");
    eventually(
        "the new leader allocates",
        Duration::from_secs(20),
        || async { subnets(&client).await.get("n2").cloned() },
    )
    .await
    .expect("allocated by the new leader");
}
