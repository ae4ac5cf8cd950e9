//! One BIRD 2 configuration per node, rendered from the plan's [`BgpSpec`].
//! Pure. Every value that reaches the text is typed (addresses, numbers) or
//! checked here again (passwords), so peer input can never add configuration.
//!
//! ```text
//!   static tartan_own4        this node's subnet (blackhole; the bridge holds it)
//!   filter tartan_import      node subnets inside the cluster CIDR, never our own
//!   filter tartan_export      our own subnet only
//!   kernel tartan_kernel4     BGP routes → main table, proto bird, metric 4096
//!                             (below every Tartan route: make-before-break)
//!   bgp mesh_<ip>, peer_<ip>  one session per neighbour, graceful restart on
//! ```

use std::fmt::Write as _;

use ipnet::IpNet;
use tartan_crds::validate::valid_bgp_password;

use crate::plan::{BgpNeighbor, BgpSpec};

/// The metric of BIRD's kernel routes: above every Tartan route (1..=1024),
/// so a peer's old path wins until Tartan removes it.
pub const KERNEL_METRIC: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "BGP peer {address}: password must be 1 to 80 printable ASCII characters without spaces, quotes or backslashes"
    )]
    Password { address: String },
    #[error("BGP protocol name {0:?} is not a BIRD symbol")]
    Name(String),
}

fn symbol(name: &str) -> Result<&str, ConfigError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if ok {
        Ok(name)
    } else {
        Err(ConfigError::Name(name.into()))
    }
}

/// Interface names go between quotes: only what Linux allows and no quote.
fn symbol_device(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' && c != '/')
}

fn prefix_set(nets: impl Iterator<Item = String>) -> String {
    format!("[ {} ]", nets.collect::<Vec<_>>().join(", "))
}

fn neighbor(out: &mut String, n: &BgpNeighbor) -> Result<(), ConfigError> {
    let name = symbol(&n.name)?;
    let _ = writeln!(out, "protocol bgp {name} from tartan_peer {{");
    let _ = writeln!(
        out,
        "  description \"{} {}\";",
        n.label.escape_default(),
        n.address
    );
    let _ = writeln!(out, "  neighbor {} as {};", n.address, n.asn);
    // Single-hop sessions resolve next hops on the segment; the others through the kernel.
    let _ = writeln!(out, "  {};", if n.direct { "direct" } else { "multihop" });
    if let Some(password) = &n.password {
        if !valid_bgp_password(password) {
            return Err(ConfigError::Password {
                address: n.address.to_string(),
            });
        }
        let _ = writeln!(out, "  password \"{password}\";");
    }
    if n.external {
        // The router sends back routes whose AS path holds our AS (all nodes share it).
        let _ = writeln!(out, "  allow local as;");
    }
    let next_hop = if n.keep_next_hop {
        "next hop keep"
    } else {
        "next hop self"
    };
    let gateway = if n.direct {
        "gateway direct"
    } else {
        "gateway recursive"
    };
    let _ = writeln!(out, "  ipv4 {{ {next_hop}; {gateway}; }};");
    let _ = writeln!(out, "}}");
    Ok(())
}

/// The whole configuration file.
pub fn render(spec: &BgpSpec) -> Result<String, ConfigError> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Written by tartan-agent from the OverlayNetwork and NodeSubnets; rewritten on change."
    );
    let _ = writeln!(out, "router id {};", spec.router_id);
    let _ = writeln!(
        out,
        "log stderr {{ info, remote, warning, error, auth, fatal, bug }};"
    );
    let _ = writeln!(out, "protocol device {{ scan time 10; }}");
    let announce = prefix_set(
        spec.announce
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)))
            .map(|n| n.to_string()),
    );
    let accept = prefix_set(
        spec.accept
            .iter()
            .filter(|(n, _)| matches!(n, IpNet::V4(_)))
            .map(|(n, len)| format!("{n}{{{len},{len}}}")),
    );
    let _ = writeln!(
        out,
        "filter tartan_import {{\n  if net ~ {accept} && !(net ~ {announce}) then accept;\n  reject;\n}}"
    );
    let _ = writeln!(
        out,
        "filter tartan_export {{\n  if net ~ {announce} then accept;\n  reject;\n}}"
    );
    let _ = writeln!(out, "protocol static tartan_own4 {{\n  ipv4;");
    for net in spec.announce.iter().filter(|n| matches!(n, IpNet::V4(_))) {
        let _ = writeln!(out, "  route {net} blackhole;");
    }
    let _ = writeln!(out, "}}");
    // The kernel's other routes (default route, the underlay's subnet) are
    // learned only to resolve multihop next hops; never announced, never exported back.
    let cluster = prefix_set(
        spec.accept
            .iter()
            .filter(|(n, _)| matches!(n, IpNet::V4(_)))
            .map(|(n, _)| format!("{n}+")),
    );
    let _ = writeln!(
        out,
        "protocol kernel tartan_kernel4 {{\n  ipv4 {{ import where !(net ~ {cluster}); export where source = RTS_BGP; }};\n  learn;\n  metric {KERNEL_METRIC};\n  merge paths on;\n  graceful restart on;\n}}"
    );
    if symbol_device(&spec.underlay) {
        let _ = writeln!(
            out,
            "protocol direct tartan_underlay4 {{\n  ipv4 {{ import where !(net ~ {cluster}); }};\n  interface \"{}\";\n}}",
            spec.underlay
        );
    }
    let _ = writeln!(
        out,
        "template bgp tartan_peer {{\n  local {} as {};\n  graceful restart on;\n  connect delay time 1;\n  connect retry time 5;\n  error wait time 1, 30;\n  hold time 9;\n  keepalive time 3;\n  ipv4 {{ import filter tartan_import; export filter tartan_export; }};\n}}",
        spec.router_id, spec.asn
    );
    for n in &spec.neighbors {
        neighbor(&mut out, n)?;
    }
    Ok(out)
}
