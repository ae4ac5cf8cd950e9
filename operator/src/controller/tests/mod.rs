//! The controllers against kube's mocked API service: each test scripts the
//! exact requests (method, URI with field manager, body) and the answers.

use std::sync::{Arc, Mutex};

use http::Method;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tartan_crds::{BackendType, NodeSubnet, OverlayNetwork};

use super::network_status::write_if_changed;
use super::{Context, NodeMeta, network, node, subnet};
use crate::fixtures::{
    Expect, NetworkFixture, NodeFixture, NodeSubnetFixture, event_reason, serve, status_error,
};
use crate::index::SubnetIndex;

mod bounds;
mod policy_check;

const SUBNETS: &str = "/apis/tartan.dev/v1alpha1/nodesubnets";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events?";
/// What a metadata-only request asks for.
const METADATA: &str = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";

struct Harness {
    ctx: Arc<Context>,
    handle: Option<
        tower_test::mock::Handle<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >,
    >,
    /// Held, never read: the Node store stays live while its writer does.
    _nodes: Writer<NodeMeta>,
    subnets: Writer<NodeSubnet>,
    networks: Writer<OverlayNetwork>,
}

impl Harness {
    /// A context over a mocked API, an index synced with `existing` NodeSubnets.
    fn new(network: &OverlayNetwork, nodes: &[Node], existing: &[NodeSubnet]) -> Self {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let (node_store, mut node_writer) = reflector::store();
        let (subnet_store, mut subnet_writer) = reflector::store();
        let (network_store, mut network_writer) = reflector::store();
        network_writer.apply_watcher_event(&watcher::Event::Apply(network.clone()));
        for n in nodes {
            node_writer.apply_watcher_event(&watcher::Event::Apply(n.metadata()));
        }
        for s in existing {
            subnet_writer.apply_watcher_event(&watcher::Event::Apply(s.clone()));
        }
        let mut index = SubnetIndex::new("default");
        index.set_network(Some(&network.spec));
        index.reset(existing);
        let ctx = Context::test(client, index, node_store, subnet_store, network_store);
        Self {
            ctx: Arc::new(ctx),
            handle: Some(handle),
            _nodes: node_writer,
            subnets: subnet_writer,
            networks: network_writer,
        }
    }

    /// Runs `script` on the mocked API while `f` runs against the context.
    async fn expect<F, T>(&mut self, script: Vec<Expect>, f: F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let handle = self.handle.take().expect("one script per harness");
        let server = tokio::spawn(serve(handle, script));
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("reconcile finished");
        server
            .await
            .expect("every scripted request was made, in order");
        out
    }
}

/// The one read of a whole Node, when it is first allocated.
fn get_node(node: &Node) -> Expect {
    let name = node.metadata.name.clone().unwrap_or_default();
    Expect::new(Method::GET, format!("/api/v1/nodes/{name}"))
        .reply(200, serde_json::to_value(node).expect("node JSON"))
}

fn event(reason: &'static str) -> Expect {
    Expect::new(Method::POST, EVENTS)
        .body(move |body| assert_eq!(event_reason(body), reason, "event: {body}"))
        .echo()
}

#[tokio::test]
async fn a_new_node_is_read_once_and_gets_a_nodesubnet_by_server_side_apply_with_owner_reference() {
    let node = Node::test("n1");
    let mut h = Harness::new(&OverlayNetwork::test(), std::slice::from_ref(&node), &[]);
    let apply = Expect::new(Method::PATCH, format!("{SUBNETS}/n1?&fieldManager=tartan-operator"))
        .body(|body| {
            assert_eq!(body["apiVersion"], "tartan.dev/v1alpha1");
            assert_eq!(body["kind"], "NodeSubnet");
            assert_eq!(body["spec"], json!({"nodeName": "n1", "network": "default", "cidr": "10.244.0.0/24"}));
            assert_eq!(
                body["metadata"]["ownerReferences"],
                json!([{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "node-uid-n1", "controller": true}])
            );
            assert_eq!(body["metadata"]["labels"]["tartan.dev/network"], "default");
        })
        .echo();
    let ctx = h.ctx.clone();
    let action = h
        .expect(
            vec![get_node(&node), apply],
            node::reconcile(Arc::new(node.metadata()), ctx),
        )
        .await;
    assert_eq!(action.expect("reconciled"), Action::await_change());
    assert_eq!(
        h.ctx.index().allocation("n1").map(|a| a.ipv4.to_string()),
        Some("10.244.0.0/24".into())
    );
}

#[tokio::test]
async fn node_pod_cidr_is_kept_when_it_is_in_the_pool() {
    let node = Node::test("n1").with_pod_cidrs(&["10.244.77.0/24"]);
    let mut h = Harness::new(&OverlayNetwork::test(), std::slice::from_ref(&node), &[]);
    let apply = Expect::new(
        Method::PATCH,
        format!("{SUBNETS}/n1?&fieldManager=tartan-operator"),
    )
    .body(|body| assert_eq!(body["spec"]["cidr"], "10.244.77.0/24"))
    .echo();
    let ctx = h.ctx.clone();
    h.expect(
        vec![get_node(&node), apply],
        node::reconcile(Arc::new(node.metadata()), ctx),
    )
    .await
    .expect("ok");
}

#[tokio::test]
async fn restart_with_existing_nodesubnets_allocates_and_writes_nothing() {
    let node = Node::test("n1");
    let mut existing = NodeSubnet::test().for_node("n1").with_cidr("10.244.9.0/24");
    existing.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: "n1".into(),
            uid: "node-uid-n1".into(),
            ..Default::default()
        },
    ]);
    let mut h = Harness::new(
        &OverlayNetwork::test(),
        std::slice::from_ref(&node),
        &[existing],
    );
    let ctx = h.ctx.clone();
    let action = h
        .expect(vec![], node::reconcile(Arc::new(node.metadata()), ctx))
        .await;
    assert_eq!(action.expect("ok"), Action::await_change());
    assert_eq!(
        h.ctx.index().allocation("n1").map(|a| a.ipv4.to_string()),
        Some("10.244.9.0/24".into())
    );
    assert_eq!(h.ctx.index().ipv4_usage().map(|u| u.allocated), Some(1));
}

#[tokio::test]
async fn a_failed_write_returns_the_subnet_to_the_pool() {
    let node = Node::test("n1");
    let mut h = Harness::new(&OverlayNetwork::test(), std::slice::from_ref(&node), &[]);
    let refused = Expect::new(
        Method::PATCH,
        format!("{SUBNETS}/n1?&fieldManager=tartan-operator"),
    )
    .reply(500, status_error(500, "InternalError"));
    let ctx = h.ctx.clone();
    let result = h
        .expect(
            vec![get_node(&node), refused],
            node::reconcile(Arc::new(node.metadata()), ctx),
        )
        .await;
    assert!(result.is_err());
    assert_eq!(h.ctx.index().ipv4_usage().map(|u| u.allocated), Some(0));
}

#[tokio::test]
async fn deleted_node_means_its_nodesubnet_is_deleted() {
    let orphan = NodeSubnet::test()
        .for_node("gone")
        .with_cidr("10.244.4.0/24");
    let mut h = Harness::new(&OverlayNetwork::test(), &[], std::slice::from_ref(&orphan));
    let get_node = Expect::new(Method::GET, "/api/v1/nodes/gone")
        .header("accept", METADATA)
        .reply(404, status_error(404, "NotFound"));
    let delete = Expect::new(Method::DELETE, format!("{SUBNETS}/gone?"))
        .body(|body| assert_eq!(body["preconditions"], json!({"uid": "uid-gone"})))
        .reply(200, serde_json::to_value(&orphan).expect("json"));
    let ctx = h.ctx.clone();
    let action = h
        .expect(
            vec![get_node, delete, event("OrphanRemoved")],
            subnet::reconcile(Arc::new(orphan), ctx),
        )
        .await;
    assert_eq!(action.expect("ok"), Action::await_change());
}

#[tokio::test]
async fn a_node_missing_only_from_the_cache_keeps_its_nodesubnet() {
    let subnet = NodeSubnet::test()
        .for_node("new")
        .with_cidr("10.244.4.0/24");
    let mut h = Harness::new(&OverlayNetwork::test(), &[], std::slice::from_ref(&subnet));
    let get_node = Expect::new(Method::GET, "/api/v1/nodes/new")
        .header("accept", METADATA)
        .reply(200, serde_json::to_value(Node::test("new")).expect("json"));
    let ctx = h.ctx.clone();
    h.expect(vec![get_node], subnet::reconcile(Arc::new(subnet), ctx))
        .await
        .expect("ok");
}

#[tokio::test]
async fn duplicate_cidr_gets_a_conflict_condition_on_the_newer_nodesubnet() {
    let old = NodeSubnet::test()
        .for_node("old")
        .with_cidr("10.244.5.0/24")
        .created_at(100)
        .ready(BackendType::Vxlan);
    let new = NodeSubnet::test()
        .for_node("new")
        .with_cidr("10.244.5.0/24")
        .created_at(200);
    let mut h = Harness::new(
        &OverlayNetwork::test(),
        &[Node::test("old"), Node::test("new")],
        &[old.clone(), new.clone()],
    );
    let patch = Expect::new(
        Method::PATCH,
        format!("{SUBNETS}/new/status?&force=true&fieldManager=tartan-operator"),
    )
    .body(|body| {
        assert_eq!(body["kind"], "NodeSubnet");
        let conditions = body["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(
            conditions.len(),
            1,
            "only the operator's own condition: {body}"
        );
        assert_eq!(conditions[0]["type"], "Conflict");
        assert_eq!(conditions[0]["status"], "True");
        assert_eq!(conditions[0]["reason"], "DuplicateCIDR");
        assert_eq!(
            conditions[0]["message"],
            "10.244.5.0/24 of node new is already allocated to node old"
        );
        assert!(
            body["status"].get("peers").is_none(),
            "the agent's fields are not claimed"
        );
    })
    .status_onto(&new);
    let ctx = h.ctx.clone();
    let run = async {
        subnet::reconcile(Arc::new(old), ctx.clone())
            .await
            .expect("older one is fine");
        subnet::reconcile(Arc::new(new), ctx)
            .await
            .expect("conflict reported")
    };
    h.expect(vec![patch, event("DuplicateCIDR")], run).await;
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("tartan_operator_subnet_conflicts")
    );
    let _ = &mut h.subnets;
}

#[tokio::test]
async fn network_status_aggregates_nodesubnets_and_is_written_only_on_change() {
    use kube::runtime::watcher::Event;
    let subnets = vec![
        NodeSubnet::test()
            .for_node("a")
            .with_cidr("10.244.0.0/24")
            .ready(BackendType::Vxlan),
        NodeSubnet::test()
            .for_node("b")
            .with_cidr("10.244.1.0/24")
            .ready(BackendType::HostGw),
        NodeSubnet::test().for_node("c").with_cidr("10.244.2.0/24"),
    ];
    let network = OverlayNetwork::test();
    let mut h = Harness::new(&network, &[], &subnets);
    let written = Arc::new(Mutex::new(Value::Null));
    let keep = written.clone();
    let patch = Expect::new(Method::PATCH, "/apis/tartan.dev/v1alpha1/overlaynetworks/default/status?&force=true&fieldManager=tartan-operator")
        .body(move |body| {
            let status = &body["status"];
            assert_eq!(status["capacity"], 256);
            assert_eq!(status["allocated"], 3);
            assert_eq!(status["nodesReady"], 2);
            assert_eq!(status["nodesByBackend"], json!({"vxlan": 1, "host-gw": 1}));
            assert_eq!(status["observedGeneration"], 1);
            *keep.lock().expect("lock") = status.clone();
        })
        .status_onto(&network);
    let ctx = h.ctx.clone();
    let first = Arc::new(network.clone());
    let run = async {
        let action = network::reconcile(first, ctx.clone()).await;
        (action, write_if_changed(&ctx).await)
    };
    let (action, wrote) = h.expect(vec![patch], run).await;
    assert_eq!(
        action.expect("reconciled"),
        Action::requeue(std::time::Duration::from_secs(300))
    );
    assert!(wrote.expect("written"));
    // The watch shows the status as written: nothing to write.
    let mut again = network;
    again.status =
        Some(serde_json::from_value(written.lock().expect("lock").clone()).expect("status"));
    h.networks.apply_watcher_event(&Event::Apply(again));
    // The mocked API is gone now: any request would fail this write.
    assert!(!write_if_changed(&h.ctx).await.expect("no write needed"));
    let metrics = h.ctx.metrics.render();
    assert!(
        metrics.contains("tartan_operator_subnets_allocated{family=\"ipv4\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("tartan_operator_subnets_capacity{family=\"ipv4\"} 256"));
}
