//! A NetworkPolicy the agents cannot enforce: one Warning Event on it, in
//! its namespace, naming the field and the value; nothing for the rest.

use std::sync::Arc;

use http::Method;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use tartan_crds::OverlayNetwork;

use super::super::policy_check::{REASON, reconcile};
use super::Harness;
use crate::fixtures::{Expect, NetworkFixture};

/// The API server refuses an unknown protocol, but an agent older or newer
/// than the API server, or a policy written before validation tightened,
/// can still meet a field it cannot read.
fn with_protocol(name: &str, protocol: &str) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "shop", "uid": "u-1"},
        "spec": {"podSelector": {}, "ingress": [{"ports": [{"protocol": protocol, "port": 80}]}]},
    }))
    .expect("policy")
}

#[tokio::test]
async fn an_unenforceable_policy_gets_one_warning_event_naming_the_field() {
    let mut h = Harness::new(&OverlayNetwork::test(), &[], &[]);
    let ctx = h.ctx.clone();
    let event = Expect::new(
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/shop/events?",
    )
    .body(|body| {
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], REASON);
        assert_eq!(body["regarding"]["kind"], "NetworkPolicy");
        assert_eq!(body["regarding"]["name"], "icmp");
        let note = body["note"].as_str().unwrap_or_default();
        assert!(
            note.contains(r#"spec.ingress[0].ports[0].protocol: "ICMP" is not TCP, UDP or SCTP"#),
            "{note}"
        );
        assert!(note.contains("fail closed"), "{note}");
    })
    .echo();
    let action = h
        .expect(
            vec![event],
            reconcile(Arc::new(with_protocol("icmp", "ICMP")), ctx),
        )
        .await;
    assert_eq!(action.expect("reconciled"), Action::await_change());
}

#[tokio::test]
async fn an_enforceable_policy_costs_no_request() {
    let mut h = Harness::new(&OverlayNetwork::test(), &[], &[]);
    let ctx = h.ctx.clone();
    let action = h
        .expect(
            vec![],
            reconcile(Arc::new(with_protocol("web", "TCP")), ctx),
        )
        .await;
    assert_eq!(action.expect("reconciled"), Action::await_change());
}
