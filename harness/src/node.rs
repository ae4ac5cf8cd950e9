//! A real Kubernetes node on a shared host: containerd, kubelet and
//! kube-proxy in one network namespace (a testbed node on the lab's switch)
//! and one private mount namespace, so nothing of it is shared with another
//! node or with the host.
//!
//! ```text
//!   host ns: control plane on the switch's host port ─────────┐
//!   node ns (net + mount, propagation slave) ───────────────── │ ──┐
//!     /etc/cni/net.d  /opt/cni/bin  /var/lib/cni  /var/lib/kubelet  /var/log/pods
//!     /run/tartan/cni  /run/tartan/keeper
//!        └── bind mounts of <dir>/… (the agent's conflist lands here)
//!     containerd (own root, state, socket, runc root; native snapshotter)
//!     kubelet (cgroupfs under /<cgroup root>, cgroup v1 allowed, image GC off)
//!     kube-proxy (nftables mode)
//! ```
//!
//! Everything a node made goes on drop: its processes, the containers and
//! shims they started, its cgroups; the mount namespace dies with its last
//! process, taking every mount made inside it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::cluster::{ControlPlane, binaries_dir};
use crate::node_config;
use crate::process::Process;

/// The pause image every pod sandbox runs (`tests/images/build.sh`).
pub const SANDBOX_IMAGE: &str = "localhost/tartan/pause:3.10.2";

/// Where a node's standard paths really live, under its own directory.
const BIND_MOUNTS: [(&str, &str); 8] = [
    // The pods' network namespaces (containerd's cni-* files) stay the node's own.
    ("netns", "/run/netns"),
    ("cni/net.d", "/etc/cni/net.d"),
    ("cni/bin", "/opt/cni/bin"),
    ("cni/state", "/var/lib/cni"),
    ("kubelet", "/var/lib/kubelet"),
    ("pod-logs", "/var/log/pods"),
    // The agent's socket for the tartan CNI plugin (a hostPath of the chart).
    ("tartan-cni", "/run/tartan/cni"),
    // The datapath keeper's socket (a hostPath of the chart).
    ("tartan-keeper", "/run/tartan/keeper"),
];

/// What a node is.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// The network namespace (`ip netns` name) it runs in.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Its files: config, state, logs.
    pub dir: PathBuf,
    /// The pod network's CIDR (kube-proxy's cluster CIDR).
    pub cluster_cidr: String,
}

/// A running node.
pub struct KubeletNode {
    pub spec: NodeSpec,
    /// The cgroup every pod of this node lives under (each v1 hierarchy).
    pub cgroup_root: String,
    // Stopped in this order on drop.
    kube_proxy: Process,
    kubelet: Process,
    containerd: Process,
    namespace: Process,
}

impl KubeletNode {
    /// Starts the node's containerd (with `images` imported), kubelet and
    /// kube-proxy against `cp`, whose address must be reachable from the node.
    pub fn start(cp: &ControlPlane, spec: NodeSpec, images: &[PathBuf]) -> anyhow::Result<Self> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir)?;
        for (source, _) in BIND_MOUNTS {
            std::fs::create_dir_all(dir.join(source))?;
        }
        let cgroup_root = format!("tartan-{}", spec.netns);
        // What a crashed run of the same node left: its pods, shims, cgroups.
        kill_cgroup(&cgroup_root);
        kill_matching(&node_config::socket(&spec.dir).display().to_string());
        remove_cgroup(&cgroup_root);
        create_cgroup_root(&cgroup_root)?;
        let mut node = Self {
            namespace: hold_namespaces(&spec)?,
            spec,
            cgroup_root,
            kube_proxy: Process::placeholder(),
            kubelet: Process::placeholder(),
            containerd: Process::placeholder(),
        };
        node.containerd = node.start_containerd()?;
        for image in images {
            node.import(image)?;
        }
        node.kubelet = node.start_kubelet(cp)?;
        node.kube_proxy = node.start_kube_proxy(cp)?;
        Ok(node)
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.namespace
            .pid()
            .context("the node's namespace holder is not running")
    }

    /// Runs `program args` inside the node's namespaces, logging to `<dir>/<name>.log`.
    fn spawn_inside(&self, name: &str, program: &Path, args: &[String]) -> anyhow::Result<Process> {
        let mut all = vec![
            format!("--target={}", self.pid()?),
            "--mount".to_string(),
            "--net".to_string(),
            "--".to_string(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        let path = format!(
            "{}:{}",
            binaries_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Process::spawn(
            &format!("{name}-{}", self.spec.name),
            Path::new("nsenter"),
            &all,
            &self.spec.dir.join(format!("{name}.log")),
            &[("PATH", &path)],
        )
        .with_context(|| format!("starting {name} on {}", self.spec.name))
    }

    fn start_containerd(&self) -> anyhow::Result<Process> {
        let config = self.spec.dir.join("containerd.toml");
        std::fs::write(
            &config,
            node_config::containerd(&self.spec.dir, &binaries_dir().join("runc")),
        )?;
        let mut process = self.spawn_inside(
            "containerd",
            &binaries_dir().join("containerd"),
            &[format!("--config={}", config.display())],
        )?;
        let started = Instant::now();
        while self.ctr(&["version"]).is_err() {
            if !process.alive() || started.elapsed() > Duration::from_secs(30) {
                bail!(
                    "containerd on {} did not come up:\n{}",
                    self.spec.name,
                    self.log_tail("containerd.log")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(process)
    }

    fn start_kubelet(&self, cp: &ControlPlane) -> anyhow::Result<Process> {
        let config = self.spec.dir.join("kubelet.yaml");
        std::fs::write(
            &config,
            node_config::kubelet(&self.spec, &self.cgroup_root, &cp.ca),
        )?;
        self.spawn_inside(
            "kubelet",
            &binaries_dir().join("kubelet"),
            &[
                format!("--config={}", config.display()),
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                format!("--hostname-override={}", self.spec.name),
                format!("--node-ip={}", self.spec.ip),
                "--v=1".to_string(),
            ],
        )
    }

    fn start_kube_proxy(&self, cp: &ControlPlane) -> anyhow::Result<Process> {
        let config = self.spec.dir.join("kube-proxy.yaml");
        std::fs::write(&config, node_config::kube_proxy(&self.spec, &cp.kubeconfig))?;
        self.spawn_inside(
            "kube-proxy",
            &binaries_dir().join("kube-proxy"),
            &[
                format!("--config={}", config.display()),
                "--v=1".to_string(),
            ],
        )
    }

    /// `ctr` against this node's containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = std::process::Command::new(binaries_dir().join("ctr"))
            .arg(format!(
                "--address={}",
                node_config::socket(&self.spec.dir).display()
            ))
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .context("running ctr")?;
        if !output.status.success() {
            bail!(
                "ctr {args:?} on {}: {}",
                self.spec.name,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Imports an image archive (`docker-archive`) into this node's containerd.
    pub fn import(&self, archive: &Path) -> anyhow::Result<()> {
        let path = archive.display().to_string();
        self.ctr(&["images", "import", "--snapshotter", "native", &path])
            .with_context(|| format!("importing {path}"))?;
        Ok(())
    }

    pub fn log_tail(&self, file: &str) -> String {
        let text = std::fs::read_to_string(self.spec.dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The last lines of every container log of `namespace`'s pods on this
    /// node, read from the kubelet's log directory (no API server needed).
    pub fn pod_logs(&self, namespace: &str) -> String {
        let mut out = String::new();
        let pods = self.spec.dir.join("pod-logs");
        for pod in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            let name = pod.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{namespace}_")) {
                continue;
            }
            for container in std::fs::read_dir(pod.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_dir(container.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|f| std::fs::read_to_string(f.path()).ok())
                    .collect::<String>();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!(
                    "--- {} {name}/{} ---\n{}\n",
                    self.spec.name,
                    container.file_name().to_string_lossy(),
                    lines[lines.len().saturating_sub(15)..].join("\n")
                ));
            }
        }
        out
    }

    /// Runs a command inside the node's namespaces (as a hostNetwork pod sees them).
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        std::process::Command::new("nsenter")
            .arg(format!("--target={}", self.pid()?))
            .args(["--mount", "--net", "--"])
            .args(args)
            .output()
            .context("nsenter into the node")
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        self.kube_proxy.stop(Duration::from_secs(2));
        self.kubelet.stop(Duration::from_secs(5));
        kill_cgroup(&self.cgroup_root);
        self.containerd.stop(Duration::from_secs(5));
        kill_matching(&node_config::socket(&self.spec.dir).display().to_string());
        self.namespace.stop(Duration::from_secs(1));
        remove_cgroup(&self.cgroup_root);
        // Container snapshots are full copies of their images (gigabytes):
        // they go even when the logs are kept for a failed test.
        let _ = std::fs::remove_dir_all(self.spec.dir.join("containerd"));
        let _ = std::fs::remove_dir_all(self.spec.dir.join("kubelet"));
    }
}

/// A process that holds the node's network namespace and a new mount
/// namespace (propagation slave: the host's mounts show, the node's stay
/// inside) with the node's bind mounts made; every daemon joins it.
fn hold_namespaces(spec: &NodeSpec) -> anyhow::Result<Process> {
    let ready = spec.dir.join("mounts.ready");
    let _ = std::fs::remove_file(&ready);
    let mut script = String::from("set -e\n");
    for (source, target) in BIND_MOUNTS {
        script.push_str(&format!(
            "mkdir -p {target}\nmount --bind {} {target}\n",
            spec.dir.join(source).display()
        ));
    }
    script.push_str(&format!("touch {}\nexec sleep infinity\n", ready.display()));
    let netns = format!("--net=/var/run/netns/{}", spec.netns);
    let args: Vec<String> = [
        netns.as_str(),
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "slave",
        "--",
        "sh",
        "-c",
        &script,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut holder = Process::spawn(
        &format!("namespaces-{}", spec.name),
        Path::new("nsenter"),
        &args,
        &spec.dir.join("namespaces.log"),
        &[],
    )?;
    let started = Instant::now();
    while !ready.exists() {
        if !holder.alive() || started.elapsed() > Duration::from_secs(10) {
            let log = std::fs::read_to_string(spec.dir.join("namespaces.log")).unwrap_or_default();
            bail!("setting up {}'s mount namespace failed: {log}", spec.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(holder)
}

/// The cgroup v1 hierarchies (controllers) mounted under /sys/fs/cgroup.
fn hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.join("cgroup.procs").exists() && !p.ends_with("unified"))
                .collect()
        })
        .unwrap_or_default()
}

/// `/<root>` in every hierarchy, as the kubelet's `cgroupRoot` needs it;
/// cpuset's `cpus` and `mems` copied from the parent (an empty cpuset takes no task).
fn create_cgroup_root(root: &str) -> anyhow::Result<()> {
    for hierarchy in hierarchies() {
        let dir = hierarchy.join(root);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if hierarchy.ends_with("cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let value = std::fs::read_to_string(hierarchy.join(file))?;
                std::fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Every process under `/<root>` (the node's pods), killed.
fn kill_cgroup(root: &str) {
    let pids_root = Path::new("/sys/fs/cgroup/pids").join(root);
    for _ in 0..50 {
        let pids = tasks_below(&pids_root);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tasks_below(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            pids.extend(tasks_below(&entry.path()));
        }
    }
    pids
}

/// Removes `/<root>` and everything below it from every hierarchy, deepest first.
fn remove_cgroup(root: &str) {
    fn remove(dir: &Path) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                remove(&entry.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    for hierarchy in hierarchies() {
        remove(&hierarchy.join(root));
    }
}

/// Kills every process whose command line mentions `needle` (the shims of
/// a node's containerd, which outlive it by design).
fn kill_matching(needle: &str) {
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
