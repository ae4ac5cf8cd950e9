//! Bounds on what a full pool and failures cost: Events, reads, retries.

use std::sync::Arc;

use http::Method;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::controller::Action;
use tartan_crds::{BackendType, NodeSubnet, OverlayNetwork};

use super::super::{Context, NodeMeta, network, node};
use super::{EVENTS, Harness, event, get_node, write_if_changed};
use crate::fixtures::{Expect, NetworkFixture, NodeFixture, NodeSubnetFixture, event_reason};

#[tokio::test]
async fn pool_exhausted_is_an_event_on_node_and_network_and_a_condition() {
    let network = OverlayNetwork::test().with_cidr("10.244.0.0/24", 24);
    let holder = NodeSubnet::test()
        .for_node("a")
        .with_cidr("10.244.0.0/24")
        .ready(BackendType::Vxlan);
    let node = Node::test("b");
    let mut h = Harness::new(&network, &[Node::test("a"), node.clone()], &[holder]);
    let ctx = h.ctx.clone();
    let network_arc = Arc::new(network.clone());
    let status_patch = Expect::new(Method::PATCH, "/apis/tartan.dev/v1alpha1/overlaynetworks/default/status?&force=true&fieldManager=tartan-operator")
        .body(|body| {
            let conditions = body["status"]["conditions"].as_array().expect("conditions");
            let exhausted = conditions.iter().find(|c| c["type"] == "PoolExhausted").expect("PoolExhausted");
            assert_eq!(exhausted["status"], "True");
            assert_eq!(exhausted["reason"], "NodesWaiting");
            let ready = conditions.iter().find(|c| c["type"] == "Ready").expect("Ready");
            assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("PoolExhausted")));
            assert_eq!((body["status"]["capacity"].as_u64(), body["status"]["allocated"].as_u64()), (Some(1), Some(1)));
        })
        .status_onto(&network);
    let run = async {
        let action = node::reconcile(Arc::new(node.metadata()), ctx.clone())
            .await
            .expect("reconciled");
        assert_eq!(action, Action::requeue(std::time::Duration::from_secs(60)));
        network::reconcile(network_arc, ctx.clone())
            .await
            .expect("reconciled");
        assert!(write_if_changed(&ctx).await.expect("status written"));
    };
    h.expect(
        vec![
            get_node(&node),
            event("PoolExhausted"),
            event("PoolExhausted"),
            status_patch,
        ],
        run,
    )
    .await;
    assert!(h.ctx.index().waiting().contains_key("b"));
}

#[tokio::test]
async fn a_waiting_node_is_told_once_and_its_retries_read_and_post_nothing() {
    let network = OverlayNetwork::test().with_cidr("10.244.0.0/24", 24);
    let holder = NodeSubnet::test().for_node("a").with_cidr("10.244.0.0/24");
    let node = Node::test("b");
    let mut h = Harness::new(&network, &[Node::test("a"), node.clone()], &[holder]);
    let ctx = h.ctx.clone();
    let meta = Arc::new(node.metadata());
    let run = async {
        for _ in 0..5 {
            let action = node::reconcile(meta.clone(), ctx.clone())
                .await
                .expect("reconciled");
            assert_eq!(action, Action::requeue(std::time::Duration::from_secs(60)));
        }
    };
    // One read of the Node, one Event on it and one on the network, however
    // often it retries within ten minutes.
    let network_event = Expect::new(Method::POST, EVENTS)
        .body(|body| {
            assert_eq!(event_reason(body), "PoolExhausted");
            assert_eq!(body["regarding"]["kind"], "OverlayNetwork");
            assert!(
                    body["note"].as_str().is_some_and(
                        |n| n.starts_with("1 node(s) wait for a pod subnet, b among them")
                    ),
                    "{body}"
                );
        })
        .echo();
    let node_event = Expect::new(Method::POST, EVENTS)
        .body(|body| {
            assert_eq!(body["regarding"]["kind"], "Node");
            assert_eq!(body["regarding"]["uid"], "node-uid-b");
        })
        .echo();
    h.expect(vec![get_node(&node), node_event, network_event], run)
        .await;
    assert_eq!(h.ctx.pool_events.len(), 2);
}

#[tokio::test]
async fn failures_back_off_per_object_and_a_success_resets() {
    let h = Harness::new(&OverlayNetwork::test(), &[], &[]);
    let ctx = h.ctx.clone();
    for _ in 0..2 {
        crate::controller::error_policy("node", "n1", &crate::Error::NotSynced, &ctx);
    }
    crate::controller::error_policy("node", "n2", &crate::Error::NotSynced, &ctx);
    // The third failure of n1 waits 4 s (+ jitter): the first two were counted.
    let third = ctx.retries.failed_with(("node", "n1".into()), 0.0);
    assert_eq!(third, std::time::Duration::from_secs(4));
    let ok = |_: Arc<NodeMeta>, _: Arc<Context>| async { Ok(Action::await_change()) };
    crate::controller::tracked(
        "node",
        Arc::new(Node::test("n1").metadata()),
        ctx.clone(),
        ok,
    )
    .await
    .expect("ok");
    assert_eq!(
        ctx.retries.failed_with(("node", "n1".into()), 0.0),
        std::time::Duration::from_secs(1),
        "n1 starts over"
    );
    assert_eq!(
        ctx.retries.failed_with(("node", "n2".into()), 0.0),
        std::time::Duration::from_secs(2),
        "n2 is still backing off"
    );
}
