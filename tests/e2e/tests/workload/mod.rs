//! The test workload on a real cluster: a Deployment of `tartan-echo` spread
//! over the nodes, a ClusterIP Service, an echo server on the lab's outside
//! host, probes between them through `kubectl exec`, and UDP flows that
//! measure loss.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tartan_harness::kubelet_cluster::KubeletCluster;
use tartan_harness::node::KubeletNode;

/// One echo pod.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: String,
}

pub struct Echo {
    pub pods: Vec<Pod>,
    pub service_ip: String,
    outside: tartan_harness::process::Process,
}

impl Echo {
    /// The Deployment and Service, Running, plus the outside host's server.
    pub fn deploy(cluster: &KubeletCluster) -> anyhow::Result<Self> {
        tartan_harness::echo::deploy(cluster)?;
        let pods = cluster.wait("echo pods with addresses", Duration::from_secs(60), || {
            let pods = pods(cluster)?;
            Ok((pods.len() == 2 && pods.iter().all(|p| !p.ip.is_empty())).then_some(pods))
        })?;
        let service_ip =
            cluster.kubectl(&["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"])?;
        let outside = &cluster.topo.outside;
        let binary =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/tartan-echo");
        let outside = tartan_harness::process::Process::spawn(
            "outside-echo",
            std::path::Path::new("nsenter"),
            &[
                format!("--net=/var/run/netns/{}", outside.netns),
                "--".into(),
                binary.display().to_string(),
                "serve".into(),
            ],
            &cluster.dir.join("outside-echo.log"),
            &[],
        )?;
        Ok(Self {
            pods,
            service_ip,
            outside,
        })
    }

    /// Every pod reaches the other over TCP and UDP, the Service reaches a
    /// pod on the other node, and egress to the outside host is masqueraded.
    pub fn check_paths(&self, cluster: &KubeletCluster) -> anyhow::Result<()> {
        for from in &self.pods {
            for to in self.pods.iter().filter(|p| p.name != from.name) {
                for proto in ["tcp", "udp"] {
                    let port = if proto == "tcp" { 8080 } else { 8081 };
                    let answer = probe(cluster, from, proto, &format!("{}:{port}", to.ip))?;
                    if !answer.contains(&to.name) {
                        bail!(
                            "{} -> {} over {proto}: answered {answer:?}",
                            from.name,
                            to.name
                        );
                    }
                }
            }
            let other = self
                .pods
                .iter()
                .find(|p| p.node != from.node)
                .context("a pod on another node")?;
            let via_service = (0..12)
                .filter_map(|_| {
                    probe(cluster, from, "tcp", &format!("{}:80", self.service_ip)).ok()
                })
                .any(|a| a.contains(&other.name));
            if !via_service {
                bail!(
                    "{} never reached {} through the Service {}",
                    from.name,
                    other.name,
                    self.service_ip
                );
            }
            let node_ip = cluster.node(&from.node)?.spec.ip.to_string();
            let outside = format!("{}:8080", cluster.topo.outside.ip);
            let answer = probe(cluster, from, "tcp", &outside)?;
            if !answer.contains(&format!("{node_ip}:")) {
                bail!(
                    "{}'s egress is not masqueraded to {node_ip}: {answer:?}",
                    from.name
                );
            }
        }
        Ok(())
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.outside.stop(Duration::from_secs(1));
    }
}

fn pods(cluster: &KubeletCluster) -> anyhow::Result<Vec<Pod>> {
    let text = cluster.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=echo",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{\"\\n\"}{end}",
    ])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(Pod {
                name: parts.next()?.to_string(),
                node: parts.next()?.to_string(),
                ip: parts.next().unwrap_or_default().to_string(),
            })
        })
        .collect())
}

fn probe(
    cluster: &KubeletCluster,
    from: &Pod,
    proto: &str,
    target: &str,
) -> anyhow::Result<String> {
    cluster.kubectl(&[
        "exec",
        &from.name,
        "--",
        "tartan-echo",
        "probe",
        proto,
        target,
    ])
}

/// What a flow counted.
#[derive(Debug, Clone, Copy)]
pub struct FlowReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

impl std::fmt::Display for FlowReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} received {} lost {}",
            self.sent, self.received, self.lost
        )
    }
}

/// A 100/s UDP flow from the first echo pod to the other, for `seconds`.
pub struct Flow(std::thread::JoinHandle<anyhow::Result<String>>);

impl Flow {
    pub fn start(cluster: &KubeletCluster, echo: &Echo, seconds: u32) -> Self {
        let kubectl = tartan_harness::cluster::binaries_dir().join("kubectl");
        let kubeconfig = cluster.cp.kubeconfig.clone();
        let from = echo.pods[0].name.clone();
        let to = format!("{}:8081", echo.pods[1].ip);
        Flow(std::thread::spawn(move || {
            let out = std::process::Command::new(kubectl)
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .args([
                    "exec",
                    &from,
                    "--",
                    "tartan-echo",
                    "flow",
                    "udp",
                    &to,
                    "--rate",
                    "100",
                ])
                .args(["--seconds", &seconds.to_string()])
                .output()?;
            if !out.status.success() {
                bail!("flow: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }))
    }

    pub fn finish(self) -> FlowReport {
        let text = self.0.join().expect("flow thread").expect("the flow ran");
        parse_flow(&text).unwrap_or_else(|| panic!("no flow report in {text:?}"))
    }
}

fn parse_flow(text: &str) -> Option<FlowReport> {
    let line = text.lines().rev().find(|l| l.starts_with("sent "))?;
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match n[..] {
        [sent, received, lost] => Some(FlowReport {
            sent,
            received,
            lost,
        }),
        _ => None,
    }
}

/// No Tartan device, route, neighbour, FDB entry, nftables table or conflist left.
pub fn assert_clean(node: &KubeletNode) {
    let run = |args: &[&str]| {
        let out = node.exec(args).expect("nsenter");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let links = run(&["ip", "-o", "link"]);
    assert!(
        !links.contains("cni0") && !links.contains("tartan"),
        "{}: Tartan devices left: {links}",
        node.spec.name
    );
    assert_eq!(
        run(&["ip", "route", "show", "proto", "84"]).trim(),
        "",
        "{}: routes left",
        node.spec.name
    );
    assert_eq!(
        run(&["ip", "-6", "route", "show", "proto", "84"]).trim(),
        ""
    );
    let tables = run(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("tartan"),
        "{}: nft table left: {tables}",
        node.spec.name
    );
    assert!(
        !node.spec.dir.join("cni/net.d/10-tartan.conflist").exists(),
        "{}: conflist left",
        node.spec.name
    );
}
