//! The Helm chart: lint, render with the defaults and each backend, and check
//! what the rendered manifests promise (RBAC, the admission policy, the
//! values schema, the CRDs); then let the real API server validate them
//! (server-side dry run). The workloads' own promises: `chart_workloads.rs`.

mod render;

use std::collections::BTreeSet;

use render::{BACKENDS, chart, find, helm, render, rendered_rules, triples};
use serde_yaml::Value;
use tartan_harness::{ControlPlane, require_binaries};

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn lint_strict_passes_with_the_defaults_and_every_backend() {
    require_binaries();
    for sets in BACKENDS {
        let chart = chart();
        let mut args = vec!["lint", "--strict", chart.to_str().expect("path")];
        for set in *sets {
            args.extend_from_slice(&["--set", set]);
        }
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint --strict {sets:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let docs = render(sets);
        let network = find(&docs, "OverlayNetwork", "default");
        let expected = sets
            .iter()
            .find_map(|s| s.strip_prefix("network.backend.type="))
            .unwrap_or("vxlan");
        assert_eq!(network["spec"]["backend"]["type"], expected);
    }
}

/// The pod source check: the init container installs this release's agent
/// as the `tartan` CNI plugin, the agent is told to bind pods, and the
/// plugin's socket directory is the same path on the host and in the pod.
/// Off: none of the three.

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn rbac_is_exactly_what_the_binaries_declare() {
    require_binaries();
    let docs = render(&[]);
    assert_eq!(
        triples(&rendered_rules(find(&docs, "ClusterRole", "t-operator"))),
        triples(&tartan_operator::rbac::cluster_rules())
    );
    assert_eq!(
        triples(&rendered_rules(find(&docs, "Role", "t-operator"))),
        triples(&tartan_operator::rbac::lease_rules())
    );
    assert_eq!(
        triples(&rendered_rules(find(&docs, "ClusterRole", "t-agent"))),
        triples(&tartan_agent::rbac::cluster_rules())
    );
    // NetworkPolicy off: nothing to read pods, policies or namespaces with.
    let off = render(&["networkPolicy.enabled=false"]);
    let expected: BTreeSet<_> = triples(&tartan_agent::rbac::cluster_rules())
        .difference(&triples(&tartan_agent::rbac::network_policy_rules()))
        .cloned()
        .collect();
    assert_eq!(
        triples(&rendered_rules(find(&off, "ClusterRole", "t-agent"))),
        expected
    );
    let expected: BTreeSet<_> = triples(&tartan_operator::rbac::cluster_rules())
        .difference(&triples(&tartan_operator::rbac::network_policy_rules()))
        .cloned()
        .collect();
    assert_eq!(
        triples(&rendered_rules(find(&off, "ClusterRole", "t-operator"))),
        expected
    );
    for (kind, name) in [("DaemonSet", "t-agent"), ("Deployment", "t-operator")] {
        let env = serde_yaml::to_string(
            &find(&off, kind, name)["spec"]["template"]["spec"]["containers"],
        )
        .expect("yaml");
        assert!(
            env.contains("TARTAN_NETWORK_POLICY") && env.contains("'false'"),
            "{kind} {name}: {env}"
        );
    }
}

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn the_admission_policy_is_exactly_what_the_agent_declares() {
    require_binaries();
    let docs = render(&[]);
    let json = |v: &Value| serde_json::to_value(v).expect("YAML is JSON here");
    let declared = tartan_agent::admission::policy("tartan-system", "t-agent");
    let rendered = find(&docs, "ValidatingAdmissionPolicy", "t-agent-own-node");
    assert_eq!(
        json(&rendered["spec"]),
        serde_json::to_value(declared.spec).expect("spec")
    );
    let binding = find(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "t-agent-own-node",
    );
    assert_eq!(
        json(&binding["spec"]),
        serde_json::to_value(tartan_agent::admission::binding("t-agent").spec).expect("spec")
    );
}

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn values_schema_refuses_a_malformed_cidr_and_an_unknown_backend() {
    require_binaries();
    let chart = chart();
    for (set, field) in [
        ("network.cidr=10.0.0/8", "/network/cidr"),
        ("network.backend.type=geneve", "/network/backend/type"),
        ("network.backend.vxlan.vni=0", "/network/backend/vxlan/vni"),
    ] {
        let out = helm(&["template", "t", chart.to_str().expect("path"), "--set", set]);
        assert!(!out.status.success(), "{set} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(field), "{set}: {err}");
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for file in [
        "overlaynetworks.tartan.dev.yaml",
        "nodesubnets.tartan.dev.yaml",
    ] {
        let chart_copy =
            std::fs::read_to_string(chart().join("crds").join(file)).expect("chart CRD");
        let generated =
            std::fs::read_to_string(chart().join("../../crds").join(file)).expect("crds/");
        assert!(
            chart_copy == generated,
            "charts/tartan/crds/{file} differs from crds/{file}: cp crds/*.yaml charts/tartan/crds/"
        );
    }
}

#[tokio::test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
async fn rendered_manifests_validate_against_the_api_server() {
    require_binaries();
    let cp = ControlPlane::start("chart").await.expect("control plane");
    let out = cp
        .kubectl(&[
            "apply",
            "--server-side",
            "-f",
            chart().join("crds").to_str().expect("path"),
        ])
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp
        .kubectl(&["create", "namespace", "tartan-system"])
        .expect("kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tartan_harness::setup::install_crds(&cp.client().await.expect("client"))
        .await
        .expect("served");
    for sets in BACKENDS {
        let mut args: Vec<String> = vec![
            "template".into(),
            "t".into(),
            chart().display().to_string(),
            "--namespace".into(),
            "tartan-system".into(),
        ];
        for set in *sets {
            args.extend(["--set".to_string(), set.to_string()]);
        }
        let rendered = helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let file = cp.dir.join("rendered.yaml");
        std::fs::write(&file, &rendered.stdout).expect("write");
        let out = cp
            .kubectl(&[
                "apply",
                "--dry-run=server",
                "-f",
                file.to_str().expect("path"),
            ])
            .expect("kubectl");
        assert!(
            out.status.success(),
            "{sets:?}: the API server refused the chart:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
