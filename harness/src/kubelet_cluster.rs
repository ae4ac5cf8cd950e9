//! A small real cluster on one machine: the lab's switch with the control
//! plane on a host port, and N nodes each running containerd, kubelet and
//! kube-proxy (see [`crate::node`]). Driven with the real kubectl and helm.
//!
//! ```text
//!   host: etcd, kube-apiserver (192.168.100.1), controller-manager, scheduler
//!     │ <prefix>-h
//!   [switch br0] ── n1 192.168.100.11 ── n2 192.168.100.12 ── outside .254
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tartan_testbed::Topology;

use crate::cluster::{ControlPlane, Options, binaries_dir};
use crate::node::{KubeletNode, NodeSpec};

/// The host's address on the lab switch: where the nodes find the API server.
pub const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

pub struct KubeletCluster {
    // Dropped in this order: nodes, the control plane, the namespaces, the files.
    pub nodes: Vec<KubeletNode>,
    pub cp: ControlPlane,
    pub topo: Topology,
    pub dir: PathBuf,
    _files: RemoveOnDrop,
}

/// Removes the cluster's directory last, unless a test failed (its logs are
/// for a person to read then) or `TARTAN_E2E_KEEP` is set.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TARTAN_E2E_KEEP").is_some() {
            eprintln!("cluster files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl KubeletCluster {
    /// `nodes` nodes named n1.., with `images` (docker archives) imported into each.
    pub async fn start(
        prefix: &str,
        nodes: usize,
        cluster_cidr: &str,
        images: &[PathBuf],
    ) -> anyhow::Result<Self> {
        let topo = Topology::l2(prefix, nodes).context("the nodes' namespaces")?;
        topo.attach_host(HOST_ADDRESS).context("the host's port")?;
        // A node has a default route: Service addresses (kube-proxy's DNAT
        // happens after the routing decision) need one to be sent at all.
        for n in &topo.nodes {
            tartan_testbed::ip(&[
                "-n",
                &n.netns,
                "route",
                "add",
                "default",
                "via",
                &HOST_ADDRESS.to_string(),
            ])
            .context("the nodes' default route")?;
        }
        let dir = std::env::temp_dir().join(format!("tartan-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        let cp = ControlPlane::start_with(
            dir.join("control-plane"),
            Options {
                address: Some(HOST_ADDRESS),
                workloads: true,
                ..Default::default()
            },
        )
        .await?;
        let mut started = Vec::new();
        for n in &topo.nodes {
            let spec = NodeSpec {
                name: n.name.clone(),
                netns: n.netns.clone(),
                ip: n.ip,
                dir: dir.join(&n.name),
                cluster_cidr: cluster_cidr.to_string(),
            };
            started.push(KubeletNode::start(&cp, spec, images)?);
        }
        Ok(Self {
            nodes: started,
            cp,
            topo,
            _files: RemoveOnDrop(dir.clone()),
            dir,
        })
    }

    /// kubectl with the admin kubeconfig; fails with its stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        run(&binaries_dir().join("kubectl"), &self.cp.kubeconfig, args)
    }

    /// kubectl with another `kubeconfig` (another user's); fails with its stderr.
    pub fn kubectl_with(&self, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
        run(&binaries_dir().join("kubectl"), kubeconfig, args)
    }

    /// The ServiceAccount token kubelet projected into `pod` (in
    /// `namespace`), read where kubelet keeps it: a tmpfs in its node's mounts.
    pub fn projected_token(&self, namespace: &str, pod: &str) -> anyhow::Result<String> {
        let fields = self.kubectl(&[
            "get",
            "pod",
            "-n",
            namespace,
            pod,
            "-o",
            "jsonpath={.spec.nodeName} {.metadata.uid}",
        ])?;
        let (node, uid) = fields
            .split_once(' ')
            .with_context(|| format!("pod {pod}: no node and uid in {fields:?}"))?;
        let tokens = format!("/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~projected/*/token");
        let output = self
            .node(node)?
            .exec(&["sh", "-c", &format!("cat {tokens}")])?;
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() || token.is_empty() {
            bail!(
                "no projected token at {tokens} on {node}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(token)
    }

    /// helm with the admin kubeconfig; fails with its stderr.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        run(&binaries_dir().join("helm"), &self.cp.kubeconfig, args)
    }

    /// Polls `check` every 500 ms until it returns `Some`, or fails after
    /// `timeout` with what it last said and `diagnose`'s output.
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let started = Instant::now();
        let mut last;
        loop {
            match check() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => last = "not yet".to_string(),
                Err(e) => last = format!("{e:#}"),
            }
            if started.elapsed() > timeout {
                bail!(
                    "{what}: not within {timeout:?} ({last})\n{}",
                    self.diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Nodes, pods and NodeSubnets, and each kubelet's last lines: what a
    /// person wants to see when something did not come up.
    pub fn diagnose(&self) -> String {
        let mut out = String::new();
        for args in [
            &[
                "get",
                "nodes,pods,nodesubnets,overlaynetworks",
                "-A",
                "-o",
                "wide",
            ][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
            &[
                "logs",
                "-n",
                "tartan-system",
                "-l",
                "app.kubernetes.io/name=tartan",
                "--all-containers",
                "--prefix",
                "--tail=15",
            ][..],
        ] {
            out.push_str(&self.kubectl(args).unwrap_or_else(|e| format!("{e:#}\n")));
        }
        for node in &self.nodes {
            out.push_str(&format!(
                "--- {} kubelet ---\n{}\n",
                node.spec.name,
                node.log_tail("kubelet.log")
            ));
            out.push_str(&node.pod_logs("tartan-system"));
        }
        out
    }

    /// `helm install tartan` from `chart` with the locally built image
    /// `localhost/tartan/tartan:<tag>`, waiting until it is ready.
    pub fn install_tartan(&self, chart: &Path, tag: &str, cidr: &str) -> anyhow::Result<()> {
        let chart = chart.display().to_string();
        self.helm(&[
            "install",
            "tartan",
            &chart,
            "--namespace",
            "tartan-system",
            "--create-namespace",
            "--set",
            "image.repository=localhost/tartan/tartan",
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            &format!("network.cidr={cidr}"),
            "--wait",
            "--timeout",
            "180s",
        ])
        .with_context(|| self.diagnose())?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&KubeletNode> {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .with_context(|| format!("no node {name}"))
    }
}

fn run(program: &Path, kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = std::process::Command::new(program)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The node images (`tests/images/build.sh` under `repo`) from the binaries
/// in `prebuilt` (tartan-agent, tartan-operator, tartan-echo): the Tartan
/// image, the pause image, the echo image, as docker archives.
pub fn build_images(repo: &Path, prebuilt: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let status = std::process::Command::new("bash")
        .arg(repo.join("tests/images/build.sh"))
        .env("TARTAN_PREBUILT_DIR", prebuilt)
        .status()
        .context("running tests/images/build.sh")?;
    if !status.success() {
        bail!("tests/images/build.sh failed ({status})");
    }
    Ok(image_archives(repo))
}

/// The archives `build_images` makes, in import order.
pub fn image_archives(repo: &Path) -> Vec<PathBuf> {
    ["tartan-dev.tar", "pause.tar", "echo.tar"]
        .iter()
        .map(|f| repo.join("target/images").join(f))
        .collect()
}
