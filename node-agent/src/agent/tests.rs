//! The agent's reconcile against kube's mocked API service, with a recording
//! stand-in for the data plane.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tartan_crds::{BackendType, NodeSubnet, NodeSubnetSpec, OverlayNetwork, OverlayNetworkSpec};
use tower_test::mock::{self, Handle};

use crate::agent::{Agent, Health, Programmer};
use crate::dataplane::{DataplaneError, Target};
use crate::metrics::Metrics;
use crate::netlink::{ApplyError, ApplyReport};
use crate::netns::NetNs;
use crate::underlay::Choice;
use crate::watch::{AgentIndex, Inputs};

#[derive(Default)]
struct Recorder(Mutex<Vec<Target>>);

impl Programmer for Recorder {
    fn program(&self, target: Target) -> Result<ApplyReport, DataplaneError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target);
        Ok(ApplyReport::default())
    }
}

const STATUS: &str =
    "/apis/tartan.dev/v1alpha1/nodesubnets/a/status?&force=true&fieldManager=tartan-agent";

/// Answers each PATCH with the object carrying the applied status; returns the bodies.
async fn answer(mut handle: Handle<Request<Body>, Response<Body>>, expected: usize) -> Vec<Value> {
    let mut bodies = Vec::new();
    for _ in 0..expected {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("a status write")
            .expect("client alive");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().to_string(), STATUS);
        let body: Value =
            serde_json::from_slice(&request.into_body().collect_bytes().await.expect("body"))
                .expect("JSON");
        let mut object = serde_json::to_value(subnet()).expect("JSON");
        object["status"] = body["status"].clone();
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&object).expect("JSON")))
                .expect("response"),
        );
        bodies.push(body);
    }
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    bodies
}

fn subnet() -> NodeSubnet {
    let mut s = NodeSubnet::new(
        "a",
        NodeSubnetSpec {
            node_name: "a".into(),
            network: "default".into(),
            cidr: "10.244.1.0/24".into(),
            ipv6_cidr: None,
        },
    );
    s.metadata.generation = Some(1);
    s
}

fn index(backend: BackendType) -> AgentIndex {
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.type_ = backend;
    let mut index = AgentIndex::new("a", "default");
    index.apply_network(OverlayNetwork::new("default", spec));
    index.apply_subnet(subnet());
    index
}

/// A data plane whose kernel refuses a route, as netlink reports it.
struct RefusingKernel;

impl Programmer for RefusingKernel {
    fn program(&self, _: Target) -> Result<ApplyReport, DataplaneError> {
        Err(DataplaneError::Apply(ApplyError::Kernel {
            failed: 1,
            total: 3,
            first: "add route 10.244.2.0/24: ENETUNREACH".into(),
        }))
    }
}

fn agent<P: Programmer>(recorder: Arc<P>) -> (Agent<P>, Handle<Request<Body>, Response<Body>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    // `lo` always exists and has an address: the planner needs an underlay.
    let agent = Agent::new(
        client,
        NetNs::Current,
        Choice::Name("lo".into()),
        (6, 1),
        recorder,
        metrics,
        Arc::new(Health::default()),
    );
    (agent, handle)
}

#[tokio::test]
async fn status_is_written_by_server_side_apply_on_the_status_subresource_only_on_change() {
    let recorder = Arc::new(Recorder::default());
    let (mut agent, handle) = agent(recorder.clone());
    let server = tokio::spawn(answer(handle, 1));
    let inputs = index(BackendType::Vxlan).inputs();
    agent
        .reconcile(&inputs, Some("a"))
        .await
        .expect("first pass");
    agent
        .reconcile(&inputs, Some("a"))
        .await
        .expect("second pass, nothing new");
    let bodies = server.await.expect("exactly one write");
    let status = &bodies[0]["status"];
    assert_eq!(bodies[0]["kind"], "NodeSubnet");
    assert_eq!(status["nodeIP"], "127.0.0.1");
    assert_eq!(status["vtepMAC"], "0e:2a:7f:00:00:01");
    assert_eq!(status["backend"], "vxlan");
    assert_eq!(status["receiveBackends"], serde_json::json!(["vxlan"]));
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["reason"], "Programmed");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        recorder.0.lock().expect("lock").len(),
        2,
        "the kernel is reconciled every pass"
    );
}

#[tokio::test]
async fn a_backend_change_leads_to_a_new_plan_and_a_status_with_the_new_backend() {
    let recorder = Arc::new(Recorder::default());
    let (mut agent, handle) = agent(recorder.clone());
    let server = tokio::spawn(answer(handle, 2));
    agent
        .reconcile(&index(BackendType::Vxlan).inputs(), Some("a"))
        .await
        .expect("vxlan");
    agent
        .reconcile(&index(BackendType::HostGw).inputs(), Some("a"))
        .await
        .expect("host-gw");
    let bodies = server.await.expect("two writes");
    assert_eq!(bodies[1]["status"]["backend"], "host-gw");
    let targets = recorder.0.lock().expect("lock");
    assert_eq!(targets[0].state.backend, BackendType::Vxlan);
    assert_eq!(targets[1].state.backend, BackendType::HostGw);
    assert!(
        targets[1].state.vxlan.is_none(),
        "no peer sends vxlan: the device goes"
    );
}

#[tokio::test]
async fn waiting_and_invalid_inputs_are_reported_not_programmed() {
    let recorder = Arc::new(Recorder::default());
    let (mut agent, handle) = agent(recorder.clone());
    let server = tokio::spawn(answer(handle, 1));
    agent
        .reconcile(
            &Inputs::InvalidNetwork("spec.cidr: invalid value".into()),
            Some("a"),
        )
        .await
        .expect("reported");
    agent
        .reconcile(&Inputs::WaitingForSubnet, None)
        .await
        .expect("nothing to write to");
    let bodies = server.await.expect("one write");
    assert_eq!(
        bodies[0]["status"]["conditions"][0]["reason"],
        "InvalidNetwork"
    );
    assert!(
        recorder.0.lock().expect("lock").is_empty(),
        "nothing programmed from a bad object"
    );
}

#[tokio::test]
async fn a_netlink_failure_is_reported_as_one() {
    let (mut agent, handle) = agent(Arc::new(RefusingKernel));
    let server = tokio::spawn(answer(handle, 1));
    agent
        .reconcile(&index(BackendType::Vxlan).inputs(), Some("a"))
        .await
        .expect("the failure is reported, not returned");
    let bodies = server.await.expect("one write");
    let ready = &bodies[0]["status"]["conditions"][0];
    assert_eq!(ready["reason"], "ApplyFailed");
    assert_eq!(
        ready["message"],
        "netlink: 1 of 3 kernel changes failed; first: add route 10.244.2.0/24: ENETUNREACH"
    );
    assert_eq!(agent.metrics.applies.with_label_values(&["error"]).get(), 1);
}
