use super::*;
use crate::fixtures::{Expect, serve, status_error};
use http::Method;
use serde_json::json;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

type ApiHandle =
    tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

fn manager(identity: &str) -> (LeaseManager, Leadership, ApiHandle) {
    let (service, handle) = tower_test::mock::pair();
    let client = kube::Client::new(service, "default");
    let config = LeaseConfig {
        name: "tartan-operator".into(),
        namespace: "kube-system".into(),
        identity: identity.into(),
        duration: Duration::from_secs(10),
        renew_every: Duration::from_secs(3),
        retry_every: Duration::from_secs(2),
        field_manager: "tartan-operator",
    };
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (m, l) = LeaseManager::new(Api::namespaced(client, "kube-system"), config, metrics);
    (m, l, handle)
}

/// One attempt against the API `script` plays, all of which it must take:
/// whether the attempt leads.
async fn attempt(
    m: &LeaseManager,
    handle: ApiHandle,
    script: Vec<Expect>,
    seen: &mut Option<Seen>,
) -> bool {
    let server = tokio::spawn(serve(handle, script));
    let leads = m.try_acquire_or_renew(seen).await.expect("no API error");
    server.await.expect("script played out");
    leads
}

/// The manager reading the Lease.
fn get_lease() -> Expect {
    Expect::new(Method::GET, format!("{LEASE}/tartan-operator"))
}

/// The manager writing the Lease (server-side apply).
fn apply_lease() -> Expect {
    Expect::new(
        Method::PATCH,
        format!("{LEASE}/tartan-operator?&force=true&fieldManager=tartan-operator"),
    )
}

fn lease(holder: &str, rv: &str) -> serde_json::Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "tartan-operator", "namespace": "kube-system", "resourceVersion": rv},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 10, "leaseTransitions": 3,
                 "renewTime": "2026-11-25T08:00:00.000000Z"}
    })
}

#[tokio::test]
async fn creates_the_lease_when_there_is_none() {
    let (m, leadership, handle) = manager("a");
    let script = vec![
        get_lease().reply(404, status_error(404, "NotFound")),
        Expect::new(Method::POST, format!("{LEASE}?"))
            .body(|b| assert_eq!(b["spec"]["holderIdentity"], "a"))
            .echo(),
    ];
    assert!(attempt(&m, handle, script, &mut None).await);
    assert!(
        !leadership.is_leader(),
        "the claim is set by run(), not by one attempt"
    );
}

#[tokio::test]
async fn takes_over_with_the_seen_resource_version_as_a_precondition() {
    let (m, _, handle) = manager("b");
    let script = vec![
        get_lease().reply(200, lease("", "41")),
        apply_lease()
            .body(|b| {
                assert_eq!(
                    b["metadata"]["resourceVersion"], "41",
                    "fencing precondition"
                );
                assert_eq!(b["spec"]["holderIdentity"], "b");
                assert_eq!(b["spec"]["leaseTransitions"], 4);
            })
            .echo(),
    ];
    assert!(attempt(&m, handle, script, &mut None).await);
}

#[tokio::test]
async fn a_lost_race_is_a_409_not_an_overwrite() {
    let (m, _, handle) = manager("b");
    let script = vec![
        get_lease().reply(200, lease("", "41")),
        apply_lease().reply(409, status_error(409, "Conflict")),
    ];
    assert!(!attempt(&m, handle, script, &mut None).await);
}

#[tokio::test]
async fn a_live_holder_is_left_alone() {
    let (m, _, handle) = manager("b");
    let script = vec![get_lease().reply(200, lease("a", "41"))];
    let mut seen = None;
    assert!(!attempt(&m, handle, script, &mut seen).await);
    assert_eq!(seen.map(|s| s.holder), Some(Some("a".to_string())));
}

#[tokio::test]
async fn an_unchanged_record_expires_after_its_duration_by_our_clock() {
    let (m, _, handle) = manager("b");
    let script = vec![
        get_lease().reply(200, lease("a", "41")),
        get_lease().reply(200, lease("a", "41")),
        apply_lease()
            .body(|b| assert_eq!(b["spec"]["holderIdentity"], "b"))
            .echo(),
    ];
    let server = tokio::spawn(serve(handle, script));
    let mut seen = None;
    assert!(!m.try_acquire_or_renew(&mut seen).await.expect("first look"));
    // Eleven seconds pass without the record changing.
    if let Some(s) = seen.as_mut() {
        s.at =
            s.at.checked_sub(Duration::from_secs(11))
                .expect("uptime over 11 s");
    }
    assert!(
        m.try_acquire_or_renew(&mut seen)
            .await
            .expect("expired: take over")
    );
    server.await.expect("script");
}

#[test]
fn always_leads() {
    assert!(Leadership::always().is_leader());
}
