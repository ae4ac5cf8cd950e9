//! Installing Tartan's pieces into a control plane: CRDs, the RBAC the chart
//! renders (bound to ServiceAccounts the binaries impersonate), the default
//! OverlayNetwork, Nodes; and starting the real binaries as processes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Node, NodeAddress, NodeStatus, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use tartan_crds::{OverlayNetwork, OverlayNetworkSpec};

use tartan_agent::cni::CniConfig;

use crate::cluster::ControlPlane;
use crate::process::Process;
use crate::token;

pub const NAMESPACE: &str = "tartan-system";
pub const OPERATOR_SA: &str = "system:serviceaccount:tartan-system:tartan-operator";

/// A workspace binary: beside the running executable (the lab), else where
/// `cargo build` put it (the tests).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)));
    if let Some(path) = beside.filter(|p| p.exists()) {
        return Ok(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug")
        .join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace` (cargo test --workspace does)",
            path.display()
        );
    }
    Ok(path)
}

/// Applies the CRDs and waits until they are served.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds = tartan_crds::generate::crds().into_iter().map(|f| f.crd);
    install_crd_objects(client, crds.collect()).await
}

/// Applies `objects` (CRDs read from another build's `crds/*.yaml`, say) and
/// waits until the OverlayNetwork kind is served.
pub async fn install_crd_objects(
    client: &Client,
    objects: Vec<CustomResourceDefinition>,
) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in objects {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("tartan-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {}", crd.name_any()))?;
    }
    let start = Instant::now();
    loop {
        let networks: Api<OverlayNetwork> = Api::all(client.clone());
        if networks.list(&Default::default()).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("CRDs not served within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn subject(name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(NAMESPACE.into()),
        ..Default::default()
    }
}

/// The namespace, ServiceAccounts, exactly the roles the binaries declare,
/// and the agent's admission policy: what the chart installs.
pub async fn install_rbac(client: &Client) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces.create(&pp, &ns).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for (name, rules) in [
        ("tartan-operator", tartan_operator::rbac::cluster_rules()),
        ("tartan-agent", tartan_agent::rbac::cluster_rules()),
    ] {
        let meta = ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        };
        sas.create(
            &pp,
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    namespace: Some(NAMESPACE.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
        roles
            .create(
                &pp,
                &ClusterRole {
                    metadata: meta.clone(),
                    rules: Some(rules),
                    ..Default::default()
                },
            )
            .await?;
        let role_ref = RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.into(),
        };
        bindings
            .create(
                &pp,
                &ClusterRoleBinding {
                    metadata: meta,
                    role_ref,
                    subjects: Some(vec![subject(name)]),
                },
            )
            .await?;
    }
    let lease_rules = tartan_operator::rbac::lease_rules();
    install_role(client, "tartan-operator", "tartan-operator", lease_rules).await?;
    install_agent_policy(client).await
}

/// A Role named `name` in [`NAMESPACE`] with `rules`, bound to the
/// ServiceAccount `account`.
pub async fn install_role(
    client: &Client,
    name: &str,
    account: &str,
    rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let meta = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        ..Default::default()
    };
    let role = Role {
        metadata: meta.clone(),
        rules: Some(rules),
    };
    Api::<Role>::namespaced(client.clone(), NAMESPACE)
        .create(&pp, &role)
        .await?;
    let role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "Role".into(),
        name: name.into(),
    };
    let binding = RoleBinding {
        metadata: meta,
        role_ref,
        subjects: Some(vec![subject(account)]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), NAMESPACE)
        .create(&pp, &binding)
        .await?;
    Ok(())
}

/// The ValidatingAdmissionPolicy (and binding) that holds each agent to its
/// own node's NodeSubnet, as `tartan-agent admission-policy` renders it.
pub async fn install_agent_policy(client: &Client) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let policy = tartan_agent::admission::policy(NAMESPACE, token::AGENT_SERVICE_ACCOUNT);
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&pp, &policy)
        .await
        .context("creating the agent's admission policy")?;
    let binding = tartan_agent::admission::binding(token::AGENT_SERVICE_ACCOUNT);
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&pp, &binding)
        .await
        .context("binding the agent's admission policy")?;
    Ok(())
}

pub async fn create_network(client: &Client, cidr: &str) -> anyhow::Result<()> {
    create_network_with(client, OverlayNetworkSpec::with_cidr(cidr)).await
}

pub async fn create_network_with(client: &Client, spec: OverlayNetworkSpec) -> anyhow::Result<()> {
    let api: Api<OverlayNetwork> = Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &OverlayNetwork::new("default", spec),
    )
    .await?;
    Ok(())
}

/// Starts `tartan-agent` for `node`, programming namespace `netns`, as its
/// ServiceAccount with a token bound to its Pod on `node` ([`crate::token`]).
pub async fn start_agent(
    cp: &ControlPlane,
    node: &str,
    netns: &str,
    cni: &CniConfig,
    metrics_port: u16,
) -> anyhow::Result<Process> {
    start_agent_from(&binary("tartan-agent")?, cp, node, netns, cni, metrics_port).await
}

/// [`start_agent`] with the binary at `program` (a benchmark driving another build).
pub async fn start_agent_from(
    program: &Path,
    cp: &ControlPlane,
    node: &str,
    netns: &str,
    cni: &CniConfig,
    metrics_port: u16,
) -> anyhow::Result<Process> {
    let token = token::agent_token_path(cp, node);
    token::write_agent_token(&cp.client().await?, node, &token).await?;
    let kubeconfig = cp.kubeconfig_with_token_file(&token, &format!("agent-{node}.kubeconfig"))?;
    let mut args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--node-name={node}"),
        format!("--netns={netns}"),
        format!("--cni-conf-dir={}", cni.dir.display()),
        format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        format!("--bird-dir={}", cni.dir.join("bird").display()),
        // One key per node, not the host's default path shared by every agent here.
        format!(
            "--wireguard-key-file={}",
            cni.dir.join("wireguard/private.key").display()
        ),
    ];
    // host-local's allocations stay under the caller's directory, so
    // removing it leaves nothing behind (a lab's `down`).
    if let Some(ipam) = &cni.ipam_data_dir {
        args.push(format!("--cni-ipam-data-dir={}", ipam.display()));
    }
    Process::spawn(
        node,
        program,
        &args,
        &cp.dir.join(format!("agent-{node}.log")),
        &[("RUST_LOG", "info,kube=warn")],
    )
    .context("starting tartan-agent")
}

/// Where the agent of `node` keeps its CNI config and host-local state:
/// under the control plane's directory.
pub fn agent_cni(cp: &ControlPlane, node: &str) -> CniConfig {
    CniConfig {
        dir: cp.dir.join(node),
        ipam_data_dir: Some(cp.dir.join(node).join("ipam")),
        source_check: None,
    }
}

/// A Node object for each of `topo`'s nodes and a real agent programming
/// its namespace; the agents and their probes ports.
pub async fn agents_on(
    cp: &ControlPlane,
    client: &Client,
    topo: &tartan_testbed::Topology,
) -> anyhow::Result<(Vec<Process>, Vec<u16>)> {
    let mut agents = Vec::new();
    let mut ports = Vec::new();
    for node in &topo.nodes {
        create_node(client, &node.name, &node.ip.to_string()).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cni = agent_cni(cp, &node.name);
        agents.push(start_agent(cp, &node.name, &node.netns, &cni, port).await?);
        ports.push(port);
    }
    Ok((agents, ports))
}

/// A Node object with an InternalIP.
pub async fn create_node(client: &Client, name: &str, internal_ip: &str) -> anyhow::Result<Node> {
    let api: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = api.create(&PostParams::default(), &node).await?;
    let status = serde_json::json!({
        "status": NodeStatus {
            addresses: Some(vec![NodeAddress { type_: "InternalIP".into(), address: internal_ip.into() }]),
            ..Default::default()
        }
    });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(created)
}

/// Starts `tartan-operator` as `identity`, impersonating its ServiceAccount.
pub fn start_operator(cp: &ControlPlane, identity: &str) -> anyhow::Result<Process> {
    start_operator_from(&binary("tartan-operator")?, cp, identity)
}

/// [`start_operator`] with the binary at `program` (a benchmark driving another build).
pub fn start_operator_from(
    program: &Path,
    cp: &ControlPlane,
    identity: &str,
) -> anyhow::Result<Process> {
    let kubeconfig = cp.kubeconfig_as(OPERATOR_SA, &format!("operator-{identity}.kubeconfig"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Process::spawn(
        identity,
        program,
        &[
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--leader-election-namespace={NAMESPACE}"),
            format!("--identity={identity}"),
            format!("--metrics-addr=127.0.0.1:{port}"),
        ],
        &cp.dir.join(format!("{identity}.log")),
        &[("RUST_LOG", "info,kube=warn")],
    )
    .context("starting tartan-operator")
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() > timeout {
            bail!("{what}: not within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /metrics` on the agent's probes port.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// `GET /readyz` on the agent's probes port: the status code.
pub fn readyz(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
