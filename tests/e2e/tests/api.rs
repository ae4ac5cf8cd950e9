//! The CRDs against the real API server: they apply cleanly, the schema and
//! CEL rules refuse bad objects naming the field, transition rules hold.

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tartan_crds::{OverlayNetwork, OverlayNetworkSpec};
use tartan_harness::setup::install_crds;
use tartan_harness::{ControlPlane, require_binaries};

async fn refused(api: &Api<OverlayNetwork>, spec: OverlayNetworkSpec) -> String {
    match api
        .create(&PostParams::default(), &OverlayNetwork::new("bad", spec))
        .await
    {
        Ok(_) => panic!("the API server accepted an invalid OverlayNetwork"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
async fn crds_apply_and_the_api_server_enforces_their_rules() {
    require_binaries();
    let cp = ControlPlane::start("api").await.expect("control plane");
    // The committed YAML, through the real kubectl.
    let crds_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../crds");
    let out = cp
        .kubectl(&["apply", "--server-side", "-f", crds_dir])
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client = cp.client().await.expect("client");
    install_crds(&client).await.expect("served");
    let api: Api<OverlayNetwork> = Api::all(client);

    let err = refused(&api, OverlayNetworkSpec::with_cidr("10.244.1.0/16")).await;
    assert!(err.contains("spec.cidr"), "{err}");
    let err = refused(&api, OverlayNetworkSpec::with_cidr("10.244.0.0/33")).await;
    assert!(err.contains("spec.cidr"), "{err}");
    let mut spec = OverlayNetworkSpec::with_cidr("10.244.0.0/16");
    spec.backend.vxlan.vni = 16_777_216;
    let err = refused(&api, spec).await;
    assert!(err.contains("spec.backend.vxlan.vni"), "{err}");
    let mut spec = OverlayNetworkSpec::with_cidr("10.0.0.0/8");
    spec.node_prefix_length = 25;
    let err = refused(&api, spec).await;
    assert!(err.contains("nodePrefixLength"), "{err}");

    // Defaults are filled in by the API server.
    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "tartan.dev/v1alpha1", "kind": "OverlayNetwork",
                "metadata": {"name": "default"}, "spec": {"cidr": "10.244.0.0/16"}
            }))
            .expect("object"),
        )
        .await
        .expect("a valid network is accepted");
    assert_eq!(created.spec.node_prefix_length, 24);
    assert_eq!(created.spec.backend.vxlan.port, 8472);
    assert_eq!(created.spec.backend.udp.port, 8285);

    let change = |patch: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch("default", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    let err = change(json!({"spec": {"cidr": "10.245.0.0/16"}}))
        .await
        .expect_err("cidr is immutable");
    assert!(err.to_string().contains("cidr is immutable"), "{err}");
    let err = change(json!({"spec": {"nodePrefixLength": 25}}))
        .await
        .expect_err("prefix is immutable");
    assert!(
        err.to_string().contains("nodePrefixLength is immutable"),
        "{err}"
    );
    let switched = change(json!({"spec": {"backend": {"type": "host-gw"}}}))
        .await
        .expect("backend.type is mutable");
    assert_eq!(
        switched.spec.backend.type_,
        tartan_crds::BackendType::HostGw
    );
}
