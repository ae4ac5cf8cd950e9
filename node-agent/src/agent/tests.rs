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
use crate::plan::PeerDelta;
use crate::underlay::Choice;
use crate::watch::{AgentIndex, Inputs, Own, PeerChange};

/// Records every full target and every batch of peer changes.
#[derive(Default)]
struct Recorder(Mutex<Vec<Target>>, Mutex<Vec<Vec<PeerDelta>>>);

impl Programmer for Recorder {
    fn program(&self, target: Target) -> Result<ApplyReport, DataplaneError> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target);
        Ok(ApplyReport::default())
    }

    fn program_peers(&self, deltas: Vec<PeerDelta>) -> Result<ApplyReport, DataplaneError> {
        self.1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(deltas);
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

/// Our NodeSubnet as the watch shows it, before any status.
fn own() -> Own {
    Own {
        name: "a".into(),
        uid: Some("uid-a".into()),
        status: None,
    }
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

fn refusal() -> DataplaneError {
    DataplaneError::Apply(ApplyError::Kernel {
        failed: 1,
        total: 3,
        first: "add route 10.244.2.0/24: ENETUNREACH".into(),
    })
}

impl Programmer for RefusingKernel {
    fn program(&self, _: Target) -> Result<ApplyReport, DataplaneError> {
        Err(refusal())
    }

    fn program_peers(&self, _: Vec<PeerDelta>) -> Result<ApplyReport, DataplaneError> {
        Err(refusal())
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
        .reconcile(inputs.clone(), Some(&own()))
        .await
        .expect("first pass");
    agent
        .reconcile(inputs, Some(&own()))
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
        .reconcile(index(BackendType::Vxlan).inputs(), Some(&own()))
        .await
        .expect("vxlan");
    agent
        .reconcile(index(BackendType::HostGw).inputs(), Some(&own()))
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
            Inputs::InvalidNetwork("spec.cidr: invalid value".into()),
            Some(&own()),
        )
        .await
        .expect("reported");
    agent
        .reconcile(Inputs::WaitingForSubnet, None)
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
        .reconcile(index(BackendType::Vxlan).inputs(), Some(&own()))
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

/// A peer joined: `b` at 127.0.0.2 with a VTEP MAC, or without an address yet.
fn joined(addressed: bool) -> PeerChange {
    let mut b = NodeSubnet::new(
        "b",
        NodeSubnetSpec {
            node_name: "b".into(),
            network: "default".into(),
            cidr: "10.244.2.0/24".into(),
            ipv6_cidr: None,
        },
    );
    if addressed {
        b.status = Some(tartan_crds::NodeSubnetStatus {
            node_ip: Some("127.0.0.2".into()),
            vtep_mac: Some("0e:2a:7f:00:00:02".into()),
            backend: Some(BackendType::Vxlan),
            receive_backends: vec![BackendType::Vxlan],
            ..Default::default()
        });
    }
    PeerChange {
        name: "b".into(),
        peer: crate::plan::Peer::from_node_subnet(&b).ok(),
        created: None,
    }
}

#[tokio::test]
async fn a_join_is_programmed_as_a_delta_and_writes_no_status_here() {
    let recorder = Arc::new(Recorder::default());
    let (mut agent, handle) = agent(recorder.clone());
    let server = tokio::spawn(answer(handle, 1));
    agent
        .reconcile(index(BackendType::Vxlan).inputs(), Some(&own()))
        .await
        .expect("first pass");
    for addressed in [false, true] {
        agent
            .reconcile_peers(vec![joined(addressed)], Some(&own()))
            .await
            .expect("the join");
    }
    let bodies = server
        .await
        .expect("one write, the first pass's: none for the joins");
    assert_eq!(bodies.len(), 1);
    assert_eq!(recorder.0.lock().expect("lock").len(), 1, "one full plan");
    let deltas = recorder.1.lock().expect("lock");
    let sizes: Vec<(usize, usize)> = deltas
        .iter()
        .flatten()
        .map(|d| (d.add.len(), d.remove.len()))
        .collect();
    assert_eq!(
        sizes,
        vec![(0, 0), (3, 0)],
        "pending: nothing to program and no Ready flip; addressed: route, neighbour, FDB entry"
    );
}

#[tokio::test]
async fn a_restarted_agent_starts_from_the_watched_status_and_writes_nothing() {
    let (mut before, handle) = agent(Arc::new(Recorder::default()));
    let server = tokio::spawn(answer(handle, 1));
    before
        .reconcile(index(BackendType::Vxlan).inputs(), Some(&own()))
        .await
        .expect("before the restart");
    let written: tartan_crds::NodeSubnetStatus =
        serde_json::from_value(server.await.expect("one write")[0]["status"].clone())
            .expect("a status");
    let watched = Own {
        status: Some(written.clone()),
        ..own()
    };
    let (mut after, handle) = agent(Arc::new(Recorder::default()));
    let server = tokio::spawn(answer(handle, 0));
    // The OverlayNetwork watch is late: the NodeSubnets came first.
    after
        .reconcile(Inputs::WaitingForNetwork, Some(&watched))
        .await
        .expect("waiting writes nothing over a programmed status");
    after
        .reconcile(index(BackendType::Vxlan).inputs(), Some(&watched))
        .await
        .expect("the same status: nothing to write");
    assert!(server.await.expect("no request").is_empty());
    assert!(written.node_ip.is_some() && written.vtep_mac.is_some());
}
