//! `tartan-lab cluster up|status|down`: a small real cluster on this
//! machine. Nodes run kubelet, containerd and kube-proxy in their own
//! namespaces, Tartan is installed with `helm install` from charts/tartan
//! using the image built from the Dockerfile, and an echo Deployment with a
//! ClusterIP Service runs over the nodes.
//!
//! ```text
//!   up ─ builds the images ─ spawns `cluster serve` (a daemon holding the cluster)
//!        └ waits for <state>/ready, prints the KUBECONFIG
//!   status ─ kubectl get nodes,nodesubnets,pods -o wide
//!   down ─ SIGTERM to the daemon, which removes every process, mount,
//!          cgroup and namespace it made; then leftovers by prefix
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tartan_harness::kubelet_cluster::{KubeletCluster, build_images, image_archives};

const CIDR: &str = "10.244.0.0/16";

/// Where a cluster's daemon keeps its pid, log, kubeconfig path and ready mark.
fn state_dir(name: &str) -> PathBuf {
    PathBuf::from(crate::state::ROOT).join(format!("cluster-{name}"))
}

/// The namespaces' prefix: short, as the host's port is `<prefix>-h` (15 characters at most).
fn prefix(name: &str) -> String {
    format!("tlc-{name}")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds the images from the binaries beside this one and starts the daemon.
pub fn up(name: &str, nodes: usize) -> anyhow::Result<String> {
    crate::lifecycle::require_root()?;
    if prefix(name).len() > 13 {
        bail!("--name {name}: at most 9 characters (interface names are short)");
    }
    let dir = state_dir(name);
    if dir.join("pid").exists() {
        bail!("cluster {name} is already up (tartan-lab cluster down --name {name})");
    }
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().context("the binary's directory")?;
    build_images(&repo(), bin_dir).context(
        "building the node images (needs tartan-agent, tartan-operator and tartan-echo beside tartan-lab: make lab-cluster)",
    )?;
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let child = std::process::Command::new(&exe)
        .args([
            "cluster",
            "serve",
            "--name",
            name,
            "--nodes",
            &nodes.to_string(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the cluster daemon")?;
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    let started = Instant::now();
    while !dir.join("ready").exists() {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        if log.contains("cluster failed") || started.elapsed() > Duration::from_secs(600) {
            let _ = down(name);
            bail!("the cluster did not come up:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let kubeconfig = std::fs::read_to_string(dir.join("kubeconfig"))?;
    Ok(format!(
        "cluster {name}: {nodes} nodes up with Tartan in {:.0?}\n{}\nexport KUBECONFIG={kubeconfig}\n",
        started.elapsed(),
        status(name)?
    ))
}

/// The daemon: holds the cluster until SIGTERM, then drops it (clean up).
pub fn serve(name: &str, nodes: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let dir = state_dir(name);
        let images = image_archives(&repo());
        let built = async {
            let cluster = KubeletCluster::start(&prefix(name), nodes, CIDR, &images).await?;
            cluster.install_tartan(&repo().join("charts/tartan"), "dev", CIDR)?;
            tartan_harness::echo::deploy(&cluster)?;
            anyhow::Ok(cluster)
        }
        .await;
        let cluster = match built {
            Ok(cluster) => cluster,
            Err(e) => {
                eprintln!("cluster failed: {e:#}");
                return Err(e);
            }
        };
        std::fs::write(
            dir.join("kubeconfig"),
            cluster.cp.kubeconfig.display().to_string(),
        )?;
        std::fs::write(dir.join("ready"), "")?;
        eprintln!("cluster {name} ready");
        tartan_runtime::Shutdown::on_signals().wait().await;
        eprintln!("cluster {name}: stopping");
        drop(cluster);
        Ok(())
    })
}

/// `kubectl get nodes,nodesubnets,pods -A -o wide`.
pub fn status(name: &str) -> anyhow::Result<String> {
    let kubeconfig = std::fs::read_to_string(state_dir(name).join("kubeconfig"))
        .with_context(|| format!("cluster {name} is not up"))?;
    let out = std::process::Command::new(tartan_harness::binaries_dir().join("kubectl"))
        .arg(format!("--kubeconfig={kubeconfig}"))
        .args(["get", "nodes,nodesubnets,pods", "-A", "-o", "wide"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stops the daemon (it removes what it made), then whatever a crash left.
pub fn down(name: &str) -> anyhow::Result<String> {
    crate::lifecycle::require_root()?;
    let dir = state_dir(name);
    if let Some(pid) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while nix::sys::signal::kill(pid, None).is_ok()
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let removed = tartan_testbed::remove_by_prefix(&prefix(name)).unwrap_or(0);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "cluster {name} down ({removed} leftover namespaces removed)"
    ))
}
