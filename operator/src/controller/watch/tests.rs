//! The Node watch against a mocked API: it lists metadata only and stores
//! no managedFields or annotations.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use http::Response;
use kube::Client;
use kube::client::Body;
use kube::runtime::reflector::{self, ObjectRef};
use serde_json::json;

use super::*;
use crate::index::SubnetIndex;

const METADATA_LIST: &str = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";

fn listed_node() -> serde_json::Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "10"},
        "items": [{
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": {
                "name": "n1", "uid": "node-uid-n1", "resourceVersion": "9",
                "labels": {"kubernetes.io/hostname": "n1"},
                "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                                   "apiVersion": "v1", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:status": {}}}]
            }
        }]
    })
}

#[tokio::test]
async fn nodes_are_listed_as_metadata_and_stored_without_managed_fields() {
    let (service, mut handle) = tower_test::mock::pair();
    let client = Client::new(service, "default");
    let (nodes, writer) = reflector::store();
    let ctx = Arc::new(Context::test(
        client,
        SubnetIndex::new("default"),
        nodes.clone(),
        reflector::store().0,
        reflector::store().0,
    ));
    let server = tokio::spawn(async move {
        let (request, send) = handle.next_request().await.expect("the list");
        assert!(request.uri().path() == "/api/v1/nodes", "{}", request.uri());
        let accept = request
            .headers()
            .get("accept")
            .and_then(|v| v.to_str().ok());
        assert_eq!(accept, Some(METADATA_LIST));
        let body = serde_json::to_vec(&listed_node()).expect("json");
        send.send_response(Response::new(Body::from(body)));
        // Then the watch, held open until the test ends.
        handle.next_request().await
    });
    let mut events = Box::pin(node_events(ctx, writer));
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event")
        .expect("stream open")
        .expect("no error");
    assert_eq!(first.name_any(), "n1");
    // The store takes the list whole once it is done: poll on until the watch waits.
    let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    let stored = nodes.get(&ObjectRef::new("n1")).expect("stored");
    assert!(
        stored
            .metadata
            .managed_fields
            .as_ref()
            .is_none_or(|m| m.is_empty())
    );
    assert_eq!(stored.metadata.annotations, None);
    assert_eq!(stored.metadata.uid.as_deref(), Some("node-uid-n1"));
    assert!(stored.metadata.labels.is_some(), "labels are kept");
    drop(events);
    server.abort();
}

#[test]
fn only_a_new_uid_or_a_deletion_calls_for_a_reconcile() {
    use crate::fixtures::NodeFixture;
    use k8s_openapi::api::core::v1::Node;
    let node = Node::test("n1").metadata();
    let mut heartbeat = node.clone();
    heartbeat.metadata.resource_version = Some("2".into());
    heartbeat.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
    assert_eq!(node_identity(&node), node_identity(&heartbeat));
    let mut recreated = node.clone();
    recreated.metadata.uid = Some("another".into());
    assert_ne!(node_identity(&node), node_identity(&recreated));
    let mut going = node.clone();
    going.metadata.deletion_timestamp = node.metadata.creation_timestamp.clone();
    assert_ne!(node_identity(&node), node_identity(&going));
}
