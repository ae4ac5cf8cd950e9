//! Test builders that read like sentences, and a scripted mock API server.
//!
//! `NodeSubnet::test().for_node("n1").with_cidr("10.244.3.0/24")`

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use serde_json::Value;
use tartan_crds::{
    Condition, NodeSubnet, NodeSubnetSpec, NodeSubnetStatus, OverlayNetwork, OverlayNetworkSpec,
};
use tower_test::mock::Handle;

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).expect("valid test time"))
}

pub trait NodeSubnetFixture: Sized {
    fn test() -> Self;
    fn for_node(self, node: impl ToString) -> Self;
    fn with_cidr(self, cidr: impl ToString) -> Self;
    fn with_ipv6_cidr(self, cidr: impl ToString) -> Self;
    fn created_at(self, seconds: i64) -> Self;
    fn ready(self, backend: tartan_crds::BackendType) -> Self;
}

impl NodeSubnetFixture for NodeSubnet {
    fn test() -> Self {
        let mut s = NodeSubnet::new(
            "n1",
            NodeSubnetSpec {
                node_name: "n1".into(),
                network: "default".into(),
                cidr: "10.244.0.0/24".into(),
                ipv6_cidr: None,
            },
        );
        s.metadata.uid = Some("uid-n1".into());
        s.metadata.creation_timestamp = Some(at(1_000));
        s.metadata.resource_version = Some("1".into());
        s
    }
    fn for_node(mut self, node: impl ToString) -> Self {
        self.metadata.name = Some(node.to_string());
        self.metadata.uid = Some(format!("uid-{}", node.to_string()));
        self.spec.node_name = node.to_string();
        self
    }
    fn with_cidr(mut self, cidr: impl ToString) -> Self {
        self.spec.cidr = cidr.to_string();
        self
    }
    fn with_ipv6_cidr(mut self, cidr: impl ToString) -> Self {
        self.spec.ipv6_cidr = Some(cidr.to_string());
        self
    }
    fn created_at(mut self, seconds: i64) -> Self {
        self.metadata.creation_timestamp = Some(at(seconds));
        self
    }
    fn ready(mut self, backend: tartan_crds::BackendType) -> Self {
        self.status = Some(NodeSubnetStatus {
            node_ip: Some("192.168.0.10".into()),
            backend: Some(backend),
            receive_backends: vec![backend],
            conditions: vec![Condition::truthy("Ready", "Programmed").at(at(1_000))],
            ..Default::default()
        });
        self
    }
}

pub trait NodeFixture: Sized {
    fn test(name: impl ToString) -> Self;
    fn with_pod_cidrs(self, cidrs: &[&str]) -> Self;
    /// The Node as the operator's metadata watch holds it.
    fn metadata(&self) -> PartialObjectMeta<Node>;
}

impl NodeFixture for Node {
    fn test(name: impl ToString) -> Self {
        Node {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                uid: Some(format!("node-uid-{}", name.to_string())),
                resource_version: Some("1".into()),
                creation_timestamp: Some(at(500)),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: None,
        }
    }
    fn with_pod_cidrs(mut self, cidrs: &[&str]) -> Self {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = cidrs.first().map(|c| c.to_string());
        spec.pod_cidrs = Some(cidrs.iter().map(|c| c.to_string()).collect());
        self
    }
    fn metadata(&self) -> PartialObjectMeta<Node> {
        self.metadata.clone().into_response_partial()
    }
}

pub trait NetworkFixture: Sized {
    fn test() -> Self;
    fn with_cidr(self, cidr: impl ToString, node_prefix: u8) -> Self;
}

impl NetworkFixture for OverlayNetwork {
    fn test() -> Self {
        let mut n = OverlayNetwork::new("default", OverlayNetworkSpec::with_cidr("10.244.0.0/16"));
        n.metadata.generation = Some(1);
        n.metadata.uid = Some("net-uid".into());
        n.metadata.resource_version = Some("1".into());
        n
    }
    fn with_cidr(mut self, cidr: impl ToString, node_prefix: u8) -> Self {
        self.spec.cidr = cidr.to_string();
        self.spec.node_prefix_length = node_prefix;
        self
    }
}

/// One request the mocked API server expects, and what it answers.
pub struct Expect {
    pub method: Method,
    /// Path and query, exactly.
    pub uri: String,
    /// Headers the request must carry (e.g. a metadata-only Accept).
    pub headers: Vec<(&'static str, String)>,
    /// Checks the JSON body; panics with a message on mismatch.
    pub body: Box<dyn Fn(&Value) + Send>,
    pub status: u16,
    pub reply: Value,
    /// Answer with this object carrying the request's `status` (a status patch).
    pub status_onto: Option<Value>,
}

impl Expect {
    pub fn new(method: Method, uri: impl ToString) -> Self {
        Self {
            method,
            uri: uri.to_string(),
            headers: Vec::new(),
            body: Box::new(|_| {}),
            status: 200,
            reply: Value::Object(Default::default()),
            status_onto: None,
        }
    }
    pub fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
    pub fn body(mut self, check: impl Fn(&Value) + Send + 'static) -> Self {
        self.body = Box::new(check);
        self
    }
    pub fn reply(mut self, status: u16, reply: Value) -> Self {
        self.status = status;
        self.reply = reply;
        self
    }
    /// The reply is `object` with the status the request applied.
    pub fn status_onto(mut self, object: impl serde::Serialize) -> Self {
        self.status_onto = Some(serde_json::to_value(object).expect("object JSON"));
        self
    }
    /// The reply echoes the request body (what the API server does for an apply).
    pub fn echo(mut self) -> Self {
        self.reply = Value::Null;
        self
    }
}

/// Answers `script` in order; a missing, extra or different call fails the test.
pub async fn serve(mut handle: Handle<Request<Body>, Response<Body>>, script: Vec<Expect>) {
    for (step, expect) in script.into_iter().enumerate() {
        let next = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
        let (request, send) = next
            .unwrap_or_else(|_| {
                panic!(
                    "step {step}: no request for {} {}",
                    expect.method, expect.uri
                )
            })
            .unwrap_or_else(|| {
                panic!(
                    "step {step}: client dropped before {} {}",
                    expect.method, expect.uri
                )
            });
        assert_eq!(
            request.method(),
            expect.method,
            "step {step}: method of {}",
            request.uri()
        );
        assert_eq!(request.uri().to_string(), expect.uri, "step {step}: uri");
        for (name, value) in &expect.headers {
            let got = request.headers().get(*name).and_then(|v| v.to_str().ok());
            assert_eq!(got, Some(value.as_str()), "step {step}: header {name}");
        }
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("request body");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        (expect.body)(&body);
        let reply = match (expect.status_onto, expect.reply.is_null()) {
            (Some(mut object), _) => {
                object["status"] = body["status"].clone();
                object
            }
            (None, true) => body,
            (None, false) => expect.reply,
        };
        let response = Response::builder()
            .status(expect.status)
            .body(Body::from(serde_json::to_vec(&reply).expect("reply JSON")))
            .expect("response");
        send.send_response(response);
    }
    let extra = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    if let Ok(Some((request, _))) = extra {
        panic!(
            "unexpected extra request {} {}",
            request.method(),
            request.uri()
        );
    }
}

/// The body of an Event the recorder posts, for assertions.
pub fn event_reason(body: &Value) -> String {
    body["reason"].as_str().unwrap_or_default().to_string()
}

/// A Kubernetes Status error body.
pub fn status_error(code: u16, reason: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": reason, "reason": reason, "code": code,
        "metadata": BTreeMap::<String, String>::new(),
    })
}
