//! Runs a CNI conflist the way a container runtime does: each plugin in turn,
//! with `CNI_*` environment, the network config on stdin and the previous
//! plugin's result as `prevResult`. Plugins run inside
//! the node's namespace (where `cni0` lives); the pod is `CNI_NETNS`.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

/// Where the reference plugins are: `/opt/cni/bin` (what the DaemonSet installs) or Debian's `/usr/lib/cni`.
pub fn plugin_dir() -> Option<PathBuf> {
    ["/opt/cni/bin", "/usr/lib/cni"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("bridge").exists())
}

#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub conflist: &'a Value,
    /// The node's namespace name (where the plugins run).
    pub node: &'a str,
    /// The pod's namespace path (`CNI_NETNS`).
    pub pod_netns: &'a Path,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub plugin_dir: &'a Path,
}

fn run_plugin(
    inv: &Invocation<'_>,
    command: &str,
    plugin: &Value,
    prev: Option<&Value>,
) -> io::Result<Value> {
    let kind = plugin["type"]
        .as_str()
        .ok_or_else(|| io::Error::other("plugin without type"))?;
    let mut config = plugin.clone();
    config["cniVersion"] = inv.conflist["cniVersion"].clone();
    config["name"] = inv.conflist["name"].clone();
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    let mut child = crate::command_in(inv.node, inv.plugin_dir.join(kind))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.pod_netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(config.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "CNI {command} {kind}: {}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    if output.stdout.is_empty() {
        return Ok(prev.cloned().unwrap_or(Value::Null));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// CNI ADD through every plugin; returns the final result.
pub fn add(inv: &Invocation<'_>) -> io::Result<Value> {
    let mut result: Option<Value> = None;
    for plugin in inv.conflist["plugins"].as_array().into_iter().flatten() {
        result = Some(run_plugin(inv, "ADD", plugin, result.as_ref())?);
    }
    result.ok_or_else(|| io::Error::other("conflist has no plugins"))
}

/// CNI DEL through every plugin, last first (no prevResult: every plugin
/// must cope without one).
pub fn del(inv: &Invocation<'_>) -> io::Result<()> {
    let plugins: Vec<&Value> = inv.conflist["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for plugin in plugins.into_iter().rev() {
        run_plugin(inv, "DEL", plugin, None)?;
    }
    Ok(())
}

/// The pod's addresses from a CNI result.
pub fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next())
        .filter_map(|a| a.parse().ok())
        .collect()
}
