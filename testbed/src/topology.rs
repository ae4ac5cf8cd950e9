//! A cluster's underlay in network namespaces: one L2 switch (a bridge in its
//! own namespace), nodes attached to it by veth, an "outside" host; or two
//! racks behind a router namespace.
//!
//! ```text
//!   [node n1: eth0 192.168.100.11] ─┐
//!   [node n2: eth0 192.168.100.12] ─┼─ br0 in [switch] ─ [outside: eth0 192.168.100.254]
//!   [node n3: eth0 192.168.100.13] ─┘
//! ```
//!
//! Every name starts with a per-run prefix; [`Topology`] removes what it made
//! on drop, and [`remove_by_prefix`] finds leftovers after a crash.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;

use crate::{exec, ip};

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub iface: String,
    /// Labels the node would carry on a cluster (its rack in a routed topology).
    pub labels: BTreeMap<String, String>,
}

/// A switch with nodes and an outside host; namespaces removed on drop.
pub struct Topology {
    pub prefix: String,
    pub switch: String,
    pub nodes: Vec<Node>,
    pub outside: Node,
    keep: bool,
}

/// Racks of a routed topology.
pub const RACKS: usize = 2;
/// The label naming a node's rack in a routed topology.
pub const RACK_LABEL: &str = "tartan.dev/rack";

/// The router's address on rack `rack` (0-based): the nodes' default gateway.
pub fn rack_gateway(rack: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 10 + rack as u8, 1)
}

/// The address of node `i` (0-based) on the underlay.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 100, 11 + i as u8)
}

impl Topology {
    /// `n` nodes on one L2 segment 192.168.100.0/24.
    pub fn l2(prefix: &str, n: usize) -> io::Result<Self> {
        remove_by_prefix(prefix)?;
        let switch = format!("{prefix}-sw");
        add_netns(&switch)?;
        let mut topology = Topology {
            prefix: prefix.to_string(),
            switch: switch.clone(),
            nodes: Vec::new(),
            outside: Node {
                name: "outside".into(),
                netns: format!("{prefix}-out"),
                ip: Ipv4Addr::new(192, 168, 100, 254),
                prefix: 24,
                iface: "eth0".into(),
                labels: BTreeMap::new(),
            },
            keep: false,
        };
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let node = Node {
                name: format!("n{}", i + 1),
                netns: format!("{prefix}-n{}", i + 1),
                ip: node_ip(i),
                prefix: 24,
                iface: "eth0".into(),
                labels: BTreeMap::new(),
            };
            topology.attach(&node, &format!("p{}", i + 1))?;
            topology.nodes.push(node);
        }
        let outside = topology.outside.clone();
        topology.attach(&outside, "pout")?;
        Ok(topology)
    }

    /// `n` nodes in two racks (two /24s, node `i` in rack `i % 2`) behind a
    /// router namespace, with the outside host behind the router too. Nodes
    /// carry the label `tartan.dev/rack` (`r1`, `r2`).
    pub fn routed(prefix: &str, n: usize) -> io::Result<Self> {
        remove_by_prefix(prefix)?;
        let router = format!("{prefix}-rt");
        add_netns(&router)?;
        ip(&["-n", &router, "link", "set", "lo", "up"])?;
        exec(&router, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let mut topology = Topology {
            prefix: prefix.to_string(),
            switch: router.clone(),
            nodes: Vec::new(),
            outside: Node {
                name: "outside".into(),
                netns: format!("{prefix}-out"),
                ip: Ipv4Addr::new(192, 168, 200, 2),
                prefix: 24,
                iface: "eth0".into(),
                labels: BTreeMap::new(),
            },
            keep: false,
        };
        let racks = n.clamp(1, RACKS);
        for rack in 0..racks {
            topology.add_segment(&format!("rk{}", rack + 1), Some(rack_gateway(rack)))?;
        }
        topology.add_segment("rkout", Some(Ipv4Addr::new(192, 168, 200, 1)))?;
        for i in 0..n {
            let rack = i % racks;
            let node = Node {
                name: format!("n{}", i + 1),
                netns: format!("{prefix}-n{}", i + 1),
                ip: Ipv4Addr::new(192, 168, 10 + rack as u8, 2 + (i / racks) as u8),
                prefix: 24,
                iface: "eth0".into(),
                labels: BTreeMap::from([(RACK_LABEL.to_string(), format!("r{}", rack + 1))]),
            };
            topology.attach_with(
                &node,
                &format!("p{}", i + 1),
                &format!("rk{}", rack + 1),
                Some(rack_gateway(rack)),
            )?;
            topology.nodes.push(node);
        }
        let outside = topology.outside.clone();
        topology.attach_with(
            &outside,
            "pout",
            "rkout",
            Some(Ipv4Addr::new(192, 168, 200, 1)),
        )?;
        Ok(topology)
    }

    /// A bridge in the switch (router) namespace, with the segment's gateway on it.
    fn add_segment(&self, bridge: &str, gateway: Option<Ipv4Addr>) -> io::Result<()> {
        let sw = self.switch.as_str();
        ip(&["-n", sw, "link", "add", bridge, "type", "bridge"])?;
        if let Some(gateway) = gateway {
            ip(&[
                "-n",
                sw,
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                bridge,
            ])?;
        }
        ip(&["-n", sw, "link", "set", bridge, "up"])?;
        Ok(())
    }

    /// A port on the switch's bridge.
    fn attach(&self, node: &Node, port: &str) -> io::Result<()> {
        self.attach_with(node, port, "br0", None)
    }

    /// `node` on `bridge`; with `gateway`, its default route goes through it.
    fn attach_with(
        &self,
        node: &Node,
        port: &str,
        bridge: &str,
        gateway: Option<Ipv4Addr>,
    ) -> io::Result<()> {
        add_netns(&node.netns)?;
        let (sw, ns) = (self.switch.as_str(), node.netns.as_str());
        ip(&[
            "-n",
            sw,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            &node.iface,
            "netns",
            ns,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", bridge, "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/{}", node.ip, node.prefix),
            "dev",
            &node.iface,
        ])?;
        ip(&["-n", ns, "link", "set", &node.iface, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        if let Some(gateway) = gateway {
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &gateway.to_string(),
            ])?;
        }
        Ok(())
    }

    /// A port on the L2 switch for the host itself, with `address`/24: how
    /// processes in the host's namespace (a control plane) and the nodes
    /// reach each other. The host side is named `<prefix>-h` (at most 15
    /// characters) and goes with the switch namespace.
    pub fn attach_host(&self, address: Ipv4Addr) -> io::Result<String> {
        let host_side = format!("{}-h", self.prefix);
        if host_side.len() > 15 {
            return Err(io::Error::other(format!(
                "{host_side}: interface names hold at most 15 characters"
            )));
        }
        let sw = self.switch.as_str();
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", "host", "netns", sw,
        ])?;
        ip(&["-n", sw, "link", "set", "host", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{address}/24"), "dev", &host_side])?;
        ip(&["link", "set", &host_side, "up"])?;
        Ok(host_side)
    }

    /// Leaves the namespaces in place after drop (the lab's `up`).
    pub fn keep(mut self) -> Self {
        self.keep = true;
        self
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_by_prefix(&self.prefix);
        }
    }
}

pub fn add_netns(name: &str) -> io::Result<()> {
    ip(&["netns", "add", name])?;
    Ok(())
}

/// Every namespace whose name starts with `prefix-`.
pub fn list_by_prefix(prefix: &str) -> io::Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    let wanted = format!("{prefix}-");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&wanted))
        .map(str::to_string)
        .collect())
}

/// Deletes every namespace whose name starts with `prefix-` (veths go with them).
pub fn remove_by_prefix(prefix: &str) -> io::Result<usize> {
    let names = list_by_prefix(prefix)?;
    for name in &names {
        ip(&["netns", "del", name])?;
    }
    Ok(names.len())
}
