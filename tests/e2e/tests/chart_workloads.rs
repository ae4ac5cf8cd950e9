//! The Helm chart's workloads as rendered: the agent's capabilities and
//! probes, the operator's hardening, and what is mounted where (the pod
//! source check's socket, the udp key, the WireGuard key directory, BGP
//! passwords granted by name).

mod render;

use std::collections::BTreeSet;

use render::{chart, find, render, rendered_rules};
use serde_yaml::Value;
use tartan_harness::require_binaries;

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn the_pod_source_check_installs_its_plugin_and_shares_its_socket() {
    require_binaries();
    for (sets, on) in [
        (&[][..], true),
        (&["podSourceCheck.enabled=false"][..], false),
    ] {
        let docs = render(sets);
        let spec = &find(&docs, "DaemonSet", "t-agent")["spec"]["template"]["spec"];
        let text = serde_yaml::to_string(spec).expect("yaml");
        assert_eq!(text.contains("/host/cni/bin/tartan"), on, "{text}");
        assert_eq!(text.contains("path: /run/tartan/cni"), on, "{text}");
        let env = serde_yaml::to_string(&spec["containers"][0]["env"]).expect("yaml");
        let expected = if on { "'true'" } else { "'false'" };
        assert!(
            env.contains(&format!(
                "name: TARTAN_POD_SOURCE_CHECK\n  value: {expected}"
            )),
            "{env}"
        );
    }
}

/// The agents may read the BGP password Secrets the values name, by name,
/// and no Secret at all when none is named.

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn bgp_password_secrets_are_granted_by_name_only() {
    require_binaries();
    let none = render(&[]);
    assert!(
        !none
            .iter()
            .any(|d| d["kind"] == "Role" && d["metadata"]["name"] == "t-agent-bgp-passwords"),
        "no Secret named, no Role"
    );
    let docs = render(&[
        "network.backend.bgp.peers[0].address=192.0.2.1",
        "network.backend.bgp.peers[0].asNumber=65000",
        "network.backend.bgp.peers[0].passwordSecretRef.name=bgp-tor",
        "network.backend.bgp.peers[0].passwordSecretRef.key=password",
        "agent.bgpPasswordSecrets={bgp-rack2,bgp-tor}",
    ]);
    let role = find(&docs, "Role", "t-agent-bgp-passwords");
    assert_eq!(
        rendered_rules(role),
        tartan_agent::rbac::bgp_password_rules(&["bgp-tor", "bgp-rack2"])
    );
    let network = find(&docs, "OverlayNetwork", "default");
    let reference = &network["spec"]["backend"]["bgp"]["peers"][0]["passwordSecretRef"];
    assert_eq!(
        (&reference["name"], &reference["key"]),
        (&"bgp-tor".into(), &"password".into())
    );
    let binding = find(&docs, "RoleBinding", "t-agent-bgp-passwords");
    assert_eq!(binding["subjects"][0]["name"], "t-agent");
}

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn the_agent_has_only_the_capabilities_it_needs_and_probes_hit_real_endpoints() {
    require_binaries();
    let docs = render(&[]);
    // The agent's BIRD (bgp backend) binds port 179; the cleanup hook runs none.
    for (kind, name, container, caps) in [
        (
            "DaemonSet",
            "t-agent",
            "agent",
            "[NET_ADMIN, NET_RAW, NET_BIND_SERVICE]",
        ),
        ("DaemonSet", "t-cleanup", "cleanup", "[NET_ADMIN, NET_RAW]"),
    ] {
        let spec = &find(&docs, kind, name)["spec"]["template"]["spec"];
        let c = spec["containers"]
            .as_sequence()
            .expect("containers")
            .iter()
            .find(|c| c["name"] == container)
            .expect("container");
        let security = &c["securityContext"];
        assert_eq!(
            security["capabilities"]["add"],
            serde_yaml::from_str::<Value>(caps).expect("yaml"),
            "{name}"
        );
        assert_eq!(
            security["capabilities"]["drop"],
            serde_yaml::from_str::<Value>("[ALL]").expect("yaml")
        );
        assert_eq!(security["privileged"], Value::Bool(false));
        assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
        assert_eq!(spec["hostNetwork"], Value::Bool(true));
    }
    let agent = &find(&docs, "DaemonSet", "t-agent")["spec"]["template"]["spec"];
    assert_eq!(agent["priorityClassName"], "system-node-critical");
    assert_eq!(agent["tolerations"][0]["operator"], "Exists");
    let env = agent["containers"][0]["env"].as_sequence().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")
    );
    // Probes: on the named metrics port, which is the port the binary serves on.
    for (kind, name) in [("DaemonSet", "t-agent"), ("Deployment", "t-operator")] {
        let c = &find(&docs, kind, name)["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
        let port = c["ports"][0]["containerPort"].as_u64().expect("port");
        let addr = c["env"]
            .as_sequence()
            .expect("env")
            .iter()
            .find(|e| e["name"] == "TARTAN_METRICS_ADDR")
            .expect("addr");
        assert_eq!(
            addr["value"].as_str(),
            Some(format!("0.0.0.0:{port}").as_str()),
            "{name}"
        );
    }
    // The binaries really serve those paths.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let probes = tartan_runtime::Probes::new(|| "m 1\n".into(), || true);
        tokio::spawn(async move { axum::serve(listener, tartan_runtime::router(probes)).await });
        for path in ["/healthz", "/readyz", "/metrics"] {
            let status = tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                write!(
                    stream,
                    "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .expect("write");
                let mut response = String::new();
                stream.read_to_string(&mut response).expect("read");
                response
            })
            .await
            .expect("request");
            assert!(status.starts_with("HTTP/1.1 200"), "{path}: {status}");
        }
    });
}

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn operator_is_hardened_and_images_follow_app_version() {
    require_binaries();
    let chart_yaml: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("yaml");
    let app_version = chart_yaml["appVersion"].as_str().expect("appVersion");
    let docs = render(&[]);
    let operator = &find(&docs, "Deployment", "t-operator")["spec"];
    assert_eq!(operator["replicas"], 2);
    let pod = &operator["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert!(pod["affinity"]["podAntiAffinity"].is_mapping());
    let c = &pod["containers"][0];
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true)
    );
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_yaml::from_str::<Value>("[ALL]").expect("yaml")
    );
    assert!(c["resources"]["requests"].is_mapping());
    let images: BTreeSet<String> = docs
        .iter()
        .flat_map(|d| {
            let spec = &d["spec"]["template"]["spec"];
            let mut all: Vec<&Value> = spec["containers"]
                .as_sequence()
                .map(|c| c.iter().collect())
                .unwrap_or_default();
            all.extend(spec["initContainers"].as_sequence().into_iter().flatten());
            all.into_iter()
                .filter_map(|c| c["image"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        images,
        BTreeSet::from([format!("ghcr.io/tartan-net/tartan:{app_version}")])
    );
    let pinned = render(&["image.tag=9.9.9"]);
    assert_eq!(
        find(&pinned, "Deployment", "t-operator")["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/tartan-net/tartan:9.9.9"
    );
    // Optional pieces are off by default and render when asked.
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ServiceMonitor" || d["kind"] == "ConfigMap")
    );
    let on = render(&[
        "metrics.serviceMonitor.enabled=true",
        "grafana.dashboard.enabled=true",
    ]);
    assert_eq!(
        on.iter().filter(|d| d["kind"] == "ServiceMonitor").count(),
        2
    );
    let dashboard = find(&on, "ConfigMap", "t-dashboard")["data"]["tartan.json"]
        .as_str()
        .expect("dashboard")
        .to_string();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let exprs: String = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| p["targets"][0]["expr"].as_str().unwrap_or("").to_string())
        .collect();
    for metric in [
        "tartan_agent_backend_info",
        "tartan_agent_peers",
        "tartan_operator_subnets_allocated",
        "tartan_agent_drift_repairs_total",
        "tartan_agent_udp_bytes_total",
        "tartan_agent_udp_drops_total",
        "tartan_agent_bgp_sessions",
        "tartan_agent_status_writes_total",
        "tartan_agent_pod_source_drops_total",
        "tartan_agent_wireguard_handshakes_total",
        "tartan_agent_wireguard_peers",
        "tartan_agent_wireguard_drops_total",
        "tartan_agent_datapath_keeper_total",
    ] {
        assert!(exprs.contains(metric), "dashboard uses {metric}");
    }
}

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn a_udp_key_secret_is_mounted_and_passed_to_the_agent() {
    require_binaries();
    let spec_of =
        |docs: &[Value]| find(docs, "DaemonSet", "t-agent")["spec"]["template"]["spec"].clone();
    let plain = spec_of(&render(&[]));
    assert!(
        !serde_yaml::to_string(&plain).expect("yaml").contains("udp"),
        "off by default"
    );
    let keyed = spec_of(&render(&["agent.udpKeySecret=tartan-udp"]));
    let text = serde_yaml::to_string(&keyed).expect("yaml");
    assert!(
        text.contains("TARTAN_UDP_KEY_FILE")
            && text.contains("/etc/tartan/udp/key")
            && text.contains("secretName: tartan-udp"),
        "{text}"
    );
}

/// The wireguard backend's private key lives in a directory on the node
/// (it outlives the pod, so peers keep the public key they know), and no
/// key material is in the chart: each agent makes its own.

#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn the_wireguard_key_stays_on_the_node_and_out_of_the_chart() {
    require_binaries();
    let docs = render(&[
        "network.backend.type=wireguard",
        "network.backend.wireguard.port=51000",
    ]);
    let spec = &find(&docs, "DaemonSet", "t-agent")["spec"]["template"]["spec"];
    let text = serde_yaml::to_string(spec).expect("yaml");
    assert!(
        text.contains("path: /var/lib/tartan/wireguard")
            && text.contains("type: DirectoryOrCreate")
            && text.contains("TARTAN_WIREGUARD_KEY_FILE")
            && text.contains("/var/lib/tartan/wireguard/private.key"),
        "{text}"
    );
    let network = find(&docs, "OverlayNetwork", "default");
    assert_eq!(network["spec"]["backend"]["wireguard"]["port"], 51000);
    let all = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).expect("yaml"))
        .collect::<String>();
    assert!(
        !all.to_lowercase().contains("privatekey"),
        "no key in any manifest"
    );
}

/// The datapath keeper: a DaemonSet of its own (an upgrade keeps its image:
/// `nodes.rs` checks its pods outlive one), root without a single capability or a token,
/// sharing only its socket's host directory with the agent, which is told
/// where it listens. Off: none of it.
#[test]
#[ignore = "e2e: needs the control plane that make deps builds (make test runs it)"]
fn the_datapath_keeper_outlives_agent_pods_and_has_no_capability() {
    require_binaries();
    let socket = "/run/tartan/keeper/keeper.sock";
    for (sets, on) in [
        (&[][..], true),
        (&["datapathKeeper.enabled=false"][..], false),
    ] {
        let docs = render(sets);
        let agent = &find(&docs, "DaemonSet", "t-agent")["spec"]["template"]["spec"];
        let told = serde_yaml::to_string(&agent["containers"][0]["env"]).expect("yaml");
        assert_eq!(told.contains(socket), on, "{told}");
        let keeper = docs
            .iter()
            .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == "t-keeper");
        let Some(keeper) = keeper else {
            assert!(!on, "the keeper is on by default");
            continue;
        };
        assert_eq!(
            keeper["spec"]["template"]["spec"]["containers"][0]["image"],
            "ghcr.io/tartan-net/tartan:0.1.0",
            "at install: the chart's image"
        );
        let spec = &keeper["spec"]["template"]["spec"];
        assert_eq!(spec["automountServiceAccountToken"], Value::Bool(false));
        let container = &spec["containers"][0];
        assert_eq!(container["command"][1], "keep");
        let security = &container["securityContext"];
        assert_eq!(
            security["capabilities"]["drop"],
            serde_yaml::from_str::<Value>("[ALL]").expect("yaml")
        );
        assert!(security["capabilities"]["add"].is_null(), "{security:?}");
        assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
        assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
        let host_paths = |spec: &Value| -> BTreeSet<String> {
            (spec["volumes"].as_sequence().expect("volumes"))
                .iter()
                .filter_map(|v| v["hostPath"]["path"].as_str().map(str::to_string))
                .collect()
        };
        assert_eq!(
            host_paths(spec),
            BTreeSet::from(["/run/tartan/keeper".to_string()])
        );
        assert!(host_paths(agent).contains("/run/tartan/keeper"));
    }
}
