//! The pod source check on a bench lab: each pod's bridge port bound to its
//! address in its node's `bridge tartan-guard` table, the same table and
//! rules the `tartan` CNI plugin fills through the agent.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use tartan_agent::guard::{Binding, table};
use tartan_agent::netns::NetNs;

use crate::state::LabState;

/// The host side of `pod_netns`'s eth0: the link in `node_netns` whose
/// index is eth0's peer.
fn host_port(node_netns: &str, pod_netns: &str) -> anyhow::Result<String> {
    let json = |netns: &str, args: &[&str]| -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["-n", netns, "-j", "link", "show"];
        all.extend_from_slice(args);
        let out = tartan_testbed::ip(&all)?;
        serde_json::from_slice(&out.stdout).context("ip -j link")
    };
    let eth0 = json(pod_netns, &["eth0"])?;
    let peer = eth0[0]["link_index"]
        .as_u64()
        .context("eth0 has no peer index")?;
    let links = json(node_netns, &[])?;
    (links.as_array().into_iter().flatten())
        .find(|l| l["ifindex"].as_u64() == Some(peer))
        .and_then(|l| l["ifname"].as_str().map(str::to_string))
        .with_context(|| format!("no link {peer} in {node_netns}"))
}

/// Removes the table from every node of `lab`.
pub fn unbind_all(lab: &LabState) -> anyhow::Result<()> {
    for node in &lab.nodes {
        table::remove(&NetNs::named(&node.netns)).context("removing the table")?;
    }
    Ok(())
}

/// Binds every pod of `lab` on its node.
pub fn bind_all(lab: &LabState) -> anyhow::Result<()> {
    let mut by_node: BTreeMap<&str, Vec<Binding>> = BTreeMap::new();
    for pod in &lab.pods {
        let node = (lab.nodes.iter())
            .find(|n| n.name == pod.node)
            .with_context(|| format!("no node {}", pod.node))?;
        by_node
            .entry(node.netns.as_str())
            .or_default()
            .push(Binding {
                container: format!("bench-{}", pod.name),
                port: host_port(&node.netns, &pod.netns)?,
                ips: BTreeSet::from([std::net::IpAddr::V4(pod.ip)]),
            });
    }
    for (netns, bindings) in by_node {
        table::replace(&NetNs::named(netns), &bindings).context("binding the pods")?;
    }
    Ok(())
}
