//! Tartan as users run it: two real nodes (kubelet, containerd, kube-proxy
//! in node namespaces), the image built from the project's Dockerfile,
//! `helm install` from charts/tartan, and pods that kubelet and containerd
//! created with the conflist the agent wrote.

mod daemonsets;
mod policies;
mod real_tokens;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use daemonsets::{agents_rolled, keeper_pods, replace_pod, restart_agent, restart_agent_container};
use tartan_harness::kubelet_cluster::{KubeletCluster, build_images};
use tartan_harness::prometheus::Prometheus;
use tartan_harness::require_binaries;
use workload::{Echo, Flow};

const CIDR: &str = "10.244.0.0/16";
const NAMESPACE: &str = "tartan-system";

/// The images the nodes run, built from the binaries this test run built.
fn images() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    build_images(&root, &root.join("target/debug")).expect("the node images")
}

fn chart() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../charts/tartan")
        .display()
        .to_string()
}

fn nodes_ready(cluster: &KubeletCluster) -> anyhow::Result<Option<String>> {
    let text = cluster.kubectl(&[
        "get",
        "nodes",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
    ])?;
    let all =
        text.lines().count() == cluster.nodes.len() && text.lines().all(|l| l.ends_with(" True"));
    Ok(all.then_some(text))
}

fn backend_everywhere(cluster: &KubeletCluster, backend: &str) -> anyhow::Result<Option<()>> {
    let text = cluster.kubectl(&["get", "nodesubnets", "--no-headers"])?;
    let done = text.lines().count() == cluster.nodes.len()
        && text
            .lines()
            .all(|l| l.split_whitespace().nth(4) == Some(backend) && l.contains("True"));
    Ok(done.then_some(()))
}

fn switch(cluster: &KubeletCluster, backend: &str) {
    cluster
        .kubectl(&[
            "patch",
            "overlaynetwork",
            "default",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"spec":{{"backend":{{"type":"{backend}"}}}}}}"#),
        ])
        .expect("patch the OverlayNetwork");
    cluster
        .wait(
            &format!("every node on {backend}"),
            Duration::from_secs(90),
            || backend_everywhere(cluster, backend),
        )
        .expect("rollout");
}

fn ready_condition(cluster: &KubeletCluster, node: &str) -> anyhow::Result<(String, String)> {
    let path = "{.status.conditions[?(@.type==\"Ready\")].reason}|{.status.conditions[?(@.type==\"Ready\")].message}";
    let text = cluster.kubectl(&["get", "nodesubnet", node, "-o", &format!("jsonpath={path}")])?;
    let (reason, message) = text.split_once('|').unwrap_or((&text, ""));
    Ok((reason.to_string(), message.to_string()))
}

/// UDP datagrams the echo pods' kernels dropped on receive (a socket
/// buffer full, mostly), summed over the pods.
fn udp_receive_errors(cluster: &KubeletCluster, echo: &Echo) -> u64 {
    echo.pods
        .iter()
        .map(|pod| {
            let snmp = cluster
                .kubectl(&["exec", &pod.name, "--", "cat", "/proc/net/snmp"])
                .expect("the pod's /proc/net/snmp");
            let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
            let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(name, _)| *name == "InErrors")
                .and_then(|(_, value)| value.parse::<u64>().ok())
                .expect("Udp InErrors")
        })
        .sum()
}

/// A node whose agent cannot open the TUN device (/dev/null bound over
/// /dev/net/tun in n2's mount namespace) when the network moves to udp: n2
/// says why in its log and its NodeSubnet, never advertises udp, and pods on
/// both nodes keep talking (over vxlan to n2). Then the device comes back.
fn tun_missing_on_one_node(cluster: &KubeletCluster, echo: &Echo) {
    let n2 = cluster.node("n2").expect("n2");
    let out = n2
        .exec(&["mount", "--bind", "/dev/null", "/dev/net/tun"])
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    restart_agent(cluster, "n2");
    cluster
        .kubectl(&[
            "patch",
            "overlaynetwork",
            "default",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"backend":{"type":"udp"}}}"#,
        ])
        .expect("patch");
    let (reason, message) = cluster
        .wait("n2 reports its TUN", Duration::from_secs(60), || {
            let (reason, message) = ready_condition(cluster, "n2")?;
            Ok((reason == "ApplyFailed").then_some((reason, message)))
        })
        .expect("n2's NodeSubnet says why");
    eprintln!("n2 Ready=False {reason}: {message}");
    assert!(message.contains("udp"), "{message}");
    let receive = cluster
        .kubectl(&[
            "get",
            "nodesubnet",
            "n2",
            "-o",
            "jsonpath={.status.receiveBackends}",
        ])
        .expect("n2");
    assert!(
        !receive.contains("udp"),
        "n2 advertises a path it could not make: {receive}"
    );
    assert!(
        n2.pod_logs(NAMESPACE).contains("udp datapath"),
        "n2's agent log names the failure:\n{}",
        n2.pod_logs(NAMESPACE)
    );
    echo.check_paths(cluster)
        .expect("pods keep talking with n2 on its old backend");
    let out = n2.exec(&["umount", "/dev/net/tun"]).expect("nsenter");
    assert!(out.status.success());
    restart_agent(cluster, "n2");
    cluster
        .wait("every node on udp again", Duration::from_secs(90), || {
            backend_everywhere(cluster, "udp")
        })
        .expect("n2 recovers");
    echo.check_paths(cluster).expect("udp everywhere");
}

/// Every PromQL expression of the chart's Grafana dashboard.
fn dashboard_queries() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../charts/tartan/dashboards/tartan.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// Prometheus finds every agent and the operator through the API server,
/// scrapes them (`up == 1`), and every dashboard query returns data.
fn check_prometheus(cluster: &KubeletCluster) {
    let mut prometheus = Prometheus::start(&cluster.cp, NAMESPACE, &cluster.dir.join("prometheus"))
        .expect("prometheus");
    let targets = cluster
        .wait(
            "every agent and operator scraped",
            Duration::from_secs(60),
            || {
                let targets = prometheus.targets_up()?;
                let up = |component: &str| {
                    targets
                        .iter()
                        .filter(|(c, _, v)| c == component && *v == 1.0)
                        .count()
                };
                // The Service lists Ready pods: every agent, and the leading
                // operator at least (a standby may not be listed).
                if up("agent") == cluster.nodes.len() && up("operator") >= 1 {
                    Ok(Some(targets))
                } else {
                    anyhow::bail!("targets so far (component, node, up): {targets:?}")
                }
            },
        )
        .expect("targets up");
    eprintln!("Prometheus targets (component, node, up): {targets:?}");
    for expr in dashboard_queries() {
        let series = cluster
            .wait(&format!("data for {expr}"), Duration::from_secs(60), || {
                let result = prometheus.query(&expr)?;
                Ok((!result.is_empty()).then_some(result.len()))
            })
            .expect("every dashboard query returns data");
        eprintln!("{series} series: {expr}");
    }
}

/// The chart's pod source check: each echo pod's port was bound to its
/// address by the `tartan` CNI plugin through its node's agent.
fn every_pod_is_bound_to_its_address(cluster: &KubeletCluster, echo: &Echo) {
    for pod in &echo.pods {
        let node = (cluster.nodes.iter())
            .find(|n| n.spec.name == pod.node)
            .expect("the pod's node");
        let netns = tartan_agent::netns::NetNs::named(&node.spec.netns);
        let bindings = tartan_agent::guard::table::bindings(&netns).expect("the guard table");
        let ip: std::net::IpAddr = pod.ip.parse().expect("pod IP");
        assert!(
            bindings.iter().any(|b| b.ips.contains(&ip)),
            "{} ({ip}) is bound on {}: {bindings:?}",
            pod.name,
            pod.node
        );
    }
}

#[tokio::test]
#[ignore = "e2e: needs root, network namespaces, buildah and the node components make deps builds (make test runs it)"]
async fn helm_installs_tartan_on_real_nodes_and_pods_talk_across_them() {
    require_binaries();
    tartan_testbed::require(&[
        "ip",
        "nft",
        "nsenter",
        "unshare",
        "buildah",
        "mmdebstrap",
        "prometheus",
        "curl",
    ]);
    let started = std::time::Instant::now();
    let images = images();
    eprintln!("images built in {:?}", started.elapsed());
    let prefix = format!("tk{}", std::process::id() % 10_000);
    let cluster = KubeletCluster::start(&prefix, 2, CIDR, &images)
        .await
        .expect("cluster");
    eprintln!(
        "control plane and 2 kubelet nodes up in {:?}",
        started.elapsed()
    );

    // Before Tartan: the kubelets wait for a network plugin.
    let waiting = cluster.wait(
        "kubelets report the missing network",
        Duration::from_secs(60),
        || {
            let text = cluster.kubectl(&["get", "nodes", "-o", "yaml"])?;
            Ok((text.matches("NetworkPluginNotReady").count() >= 2).then_some(()))
        },
    );
    waiting.expect("NetworkPluginNotReady on both nodes");

    cluster
        .install_tartan(std::path::Path::new(&chart()), "dev", CIDR)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ready = cluster
        .wait("nodes Ready", Duration::from_secs(90), || {
            nodes_ready(&cluster)
        })
        .expect("Ready once the conflist is written");
    eprintln!(
        "Tartan installed and nodes Ready {:?} after the start:\n{ready}",
        started.elapsed()
    );
    eprintln!(
        "{}",
        cluster
            .kubectl(&["get", "nodes,nodesubnets,pods", "-A", "-o", "wide"])
            .unwrap_or_default()
    );
    for node in &cluster.nodes {
        for plugin in ["bridge", "host-local", "portmap", "loopback"] {
            assert!(
                node.spec.dir.join("cni/bin").join(plugin).exists(),
                "the init container installed {plugin} on {}",
                node.spec.name
            );
        }
        assert!(node.spec.dir.join("cni/net.d/10-tartan.conflist").exists());
    }

    real_tokens::an_agent_pod_token_writes_only_its_own_node(&cluster);

    let echo = Echo::deploy(&cluster).expect("echo workload");
    every_pod_is_bound_to_its_address(&cluster, &echo);
    for backend in ["vxlan", "host-gw", "udp"] {
        if backend != "vxlan" {
            switch(&cluster, backend);
        }
        echo.check_paths(&cluster)
            .unwrap_or_else(|e| panic!("{backend}: {e:#}\n{}", cluster.diagnose()));
    }

    policies::enforced_on_real_pods(&cluster, &echo);
    check_prometheus(&cluster);

    // A switch with traffic running: the loss is measured and named.
    let flow = Flow::start(&cluster, &echo, 20);
    switch(&cluster, "vxlan");
    let report = flow.finish();
    eprintln!("udp -> vxlan under a 100/s flow: {report}");
    assert!(report.lost <= 5, "switch loss: {report}");

    // helm upgrade to a new tag (the same image re-tagged) rolls the agents.
    for node in &cluster.nodes {
        node.ctr(&[
            "images",
            "tag",
            "--force",
            "localhost/tartan/tartan:dev",
            "localhost/tartan/tartan:dev2",
        ])
        .expect("re-tag");
    }
    let keepers = keeper_pods(&cluster);
    assert!(!keepers.is_empty(), "keeper pods run");
    let flow = Flow::start(&cluster, &echo, 30);
    cluster
        .helm(&[
            "upgrade",
            "tartan",
            &chart(),
            "--namespace",
            NAMESPACE,
            "--reuse-values",
            "--set",
            "image.tag=dev2",
            "--wait",
            "--timeout",
            "180s",
        ])
        .expect("helm upgrade");
    agents_rolled(&cluster);
    assert_eq!(
        keeper_pods(&cluster),
        keepers,
        "the upgrade left the datapath keepers running"
    );
    let report = flow.finish();
    eprintln!("helm upgrade under a 100/s flow: {report}");
    assert!(report.lost <= 5, "upgrade loss: {report}");

    // An agent pod deleted: the DaemonSet brings it back, pods keep talking.
    let flow = Flow::start(&cluster, &echo, 15);
    restart_agent(&cluster, "n1");
    let report = flow.finish();
    eprintln!("agent pod deleted under a 100/s flow: {report}");
    assert!(report.lost <= 5, "agent restart loss: {report}");

    tun_missing_on_one_node(&cluster, &echo);

    // On udp the datapath is the agent itself: while its pod is replaced, the
    // keeper (a DaemonSet of its own) holds the TUN queue and the socket, and
    // the new agent takes them back and sends on what waited, at once. Late
    // answers are answers; a burst that overflows the echo pods' own socket
    // buffers is counted there (UDP InErrors), not lost by the network.
    // n1's keeper was replaced first (its pod deleted): the running agent
    // hands the new one its queues within 2 s, not at its next resync.
    replace_pod(&cluster, "keeper", "n1");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let overflowed_before = udp_receive_errors(&cluster, &echo);
    let flow = Flow::start(&cluster, &echo, 15);
    let started = std::time::Instant::now();
    restart_agent(&cluster, "n1");
    let replaced_in = started.elapsed();
    let report = flow.finish();
    let overflowed = udp_receive_errors(&cluster, &echo) - overflowed_before;
    eprintln!(
        "udp: agent pod deleted under a 100/s flow (replaced in {replaced_in:?}): {report}; \
         {overflowed} overflowed the echo pods' socket buffers"
    );
    assert!(
        report.lost <= overflowed,
        "udp agent restart: the network lost datagrams: {report}, {overflowed} overflowed"
    );
    // The same for a container restart (the pod stays: no new IP, no
    // rescheduling), which is what a crash or an OOM kill is.
    let overflowed_before = udp_receive_errors(&cluster, &echo);
    let flow = Flow::start(&cluster, &echo, 15);
    restart_agent_container(&cluster, "n1");
    let report = flow.finish();
    let overflowed = udp_receive_errors(&cluster, &echo) - overflowed_before;
    eprintln!(
        "udp: agent container restarted under a 100/s flow: {report}; \
         {overflowed} overflowed the echo pods' socket buffers"
    );
    assert!(
        report.lost <= overflowed,
        "udp agent container restart: the network lost datagrams: {report}, {overflowed} overflowed"
    );
    drop(echo);
    cluster
        .helm(&[
            "uninstall",
            "tartan",
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "180s",
        ])
        .expect("helm uninstall");
    for node in &cluster.nodes {
        workload::assert_clean(node);
    }
}
