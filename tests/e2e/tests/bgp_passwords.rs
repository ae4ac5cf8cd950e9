//! BGP passwords come from a Secret, never from the OverlayNetwork: the real
//! agent (as its ServiceAccount, allowed to read that one Secret by name)
//! renders BIRD's configuration with the password, nothing that can be read
//! through the OverlayNetwork shows it, and a deleted Secret turns the
//! node's Ready condition False naming the Secret and the key.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tartan_crds::{NodeSubnet, OverlayNetwork};
use tartan_harness::setup::{
    NAMESPACE, agent_cni, agents_on, create_network, eventually, install_crds, install_rbac,
    install_role, scrape, start_operator,
};
use tartan_harness::{ControlPlane, require_binaries};
use tartan_testbed::Topology;

const PASSWORD: &str = "Tr4ns-e2e!pw";

/// Switches the network to bgp with one external router whose password is
/// the key `password` of the Secret `bgp-tor`.
async fn bgp_with_router(client: &Client) {
    let patch = json!({"spec": {"backend": {"type": "bgp", "bgp": {"peers": [{
        "address": "192.0.2.254", "asNumber": 65000,
        "passwordSecretRef": {"name": "bgp-tor", "key": "password"},
    }]}}}});
    Api::<OverlayNetwork>::all(client.clone())
        .patch("default", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("bgp with a router");
}

/// `bgp-tor` with the password under `password`, newline-terminated as
/// `--from-file` makes it.
fn password_secret() -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("bgp-tor".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(format!("{PASSWORD}\n").into_bytes()),
        )])),
        ..Default::default()
    }
}

/// The rendered file holds the password, is root's only, and BIRD parses it.
fn check_rendered(config_path: &std::path::Path, config: &str) {
    assert!(
        config.contains("neighbor 192.0.2.254 as 65000;"),
        "{config}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(config_path).expect("stat").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "root only: it holds a password");
    let parsed = std::process::Command::new("bird")
        .args(["-p", "-c"])
        .arg(config_path)
        .output()
        .expect("bird -p");
    assert!(
        parsed.status.success(),
        "bird -p: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}

/// Neither the OverlayNetwork nor the NodeSubnets (through kubectl) nor the
/// agent's metrics show the password.
fn nothing_readable_shows_the_password(cp: &ControlPlane, metrics_port: u16) {
    let yaml = cp
        .kubectl(&["get", "overlaynetwork", "default", "-o", "yaml"])
        .expect("kubectl");
    let yaml = String::from_utf8_lossy(&yaml.stdout);
    assert!(yaml.contains("passwordSecretRef"), "{yaml}");
    assert!(!yaml.contains(PASSWORD), "{yaml}");
    let subnets = cp
        .kubectl(&["get", "nodesubnets", "-o", "yaml"])
        .expect("kubectl");
    assert!(!String::from_utf8_lossy(&subnets.stdout).contains(PASSWORD));
    let metrics = scrape(metrics_port);
    assert!(!metrics.contains(PASSWORD));
}

/// n1's Ready condition: (status, reason, message).
async fn ready_of_n1(client: &Client) -> Option<(String, String, String)> {
    let subnet = Api::<NodeSubnet>::all(client.clone())
        .get("n1")
        .await
        .ok()?;
    let conditions = subnet.status?.conditions;
    let ready = conditions.into_iter().find(|c| c.type_ == "Ready")?;
    Some((format!("{:?}", ready.status), ready.reason, ready.message))
}

#[tokio::test]
#[ignore = "e2e: needs root, network namespaces, BIRD and the control plane that make deps builds (make test runs it)"]
async fn a_bgp_password_comes_from_its_secret_and_a_missing_secret_is_named() {
    require_binaries();
    tartan_testbed::require(&["ip", "nft", "nsenter", "bird"]);
    let cp = ControlPlane::start("bgppw").await.expect("control plane");
    let client = cp.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    install_rbac(&client).await.expect("RBAC");
    let rules = tartan_agent::rbac::bgp_password_rules(&["bgp-tor"]);
    install_role(&client, "tartan-agent-bgp-passwords", "tartan-agent", rules)
        .await
        .expect("the Secret's Role");
    create_network(&client, "10.244.0.0/16")
        .await
        .expect("network");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    secrets
        .create(&PostParams::default(), &password_secret())
        .await
        .expect("Secret");
    let _operator = start_operator(&cp, "op").expect("operator");
    let topo = Topology::l2(&format!("pw{}", std::process::id() % 10_000), 2).expect("namespaces");
    let (_agents, ports) = agents_on(&cp, &client, &topo).await.expect("agents");
    bgp_with_router(&client).await;

    let config_path = agent_cni(&cp, "n1").dir.join("bird").join("bird.conf");
    let config = eventually(
        "BIRD's configuration has the password",
        Duration::from_secs(60),
        || async {
            let text = std::fs::read_to_string(&config_path).ok()?;
            text.contains(&format!("password \"{PASSWORD}\";"))
                .then_some(text)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    check_rendered(&config_path, &config);

    nothing_readable_shows_the_password(&cp, ports[0]);

    // The Secret goes: the router is left out, and n1 says which Secret and key.
    secrets
        .delete("bgp-tor", &DeleteParams::default())
        .await
        .expect("delete the Secret");
    let (status, _, message) = eventually(
        "n1's Ready names the missing Secret",
        Duration::from_secs(30),
        || async {
            ready_of_n1(&client)
                .await
                .filter(|(_, reason, _)| reason == "BGPPasswordUnavailable")
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cp.log_tail("agent-n1.log")));
    assert_eq!(status, "False", "{message}");
    assert!(
        message.contains(
            "BGP peer 192.0.2.254: Secret tartan-system/bgp-tor not found (key password)"
        ),
        "{message}"
    );
    let config = std::fs::read_to_string(&config_path).expect("config");
    assert!(!config.contains(PASSWORD), "{config}");
    assert!(
        !config.contains("192.0.2.254"),
        "the router is left out: {config}"
    );
    for node in ["n1", "n2"] {
        let log =
            std::fs::read_to_string(cp.dir.join(format!("agent-{node}.log"))).unwrap_or_default();
        assert!(
            !log.contains(PASSWORD),
            "agent-{node}.log shows the password"
        );
    }
}
