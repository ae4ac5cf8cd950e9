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
        let password = password.expose();
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
    // A restart (-R) waits for the sessions before touching the kernel, but
    // not for 4 minutes when a peer is gone.
    let _ = writeln!(out, "graceful restart wait 20;");
    let _ = writeln!(out, "log stderr {{ warning, error, auth, fatal, bug }};");
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
        "protocol kernel tartan_kernel4 {{\n  ipv4 {{ import where !(net ~ {cluster}); export where source = RTS_BGP; }};\n  learn;\n  scan time 10;\n  metric {KERNEL_METRIC};\n  merge paths on;\n  graceful restart on;\n}}"
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::bgp::daemon::{Bird, BirdError, BirdMode, check};
    use crate::netns::NetNs;

    fn neighbor(name: &str, ip: [u8; 4], external: bool) -> BgpNeighbor {
        BgpNeighbor {
            name: name.into(),
            label: if external {
                "router".into()
            } else {
                "n2".into()
            },
            address: IpAddr::V4(Ipv4Addr::from(ip)),
            asn: if external { 65000 } else { 64512 },
            direct: !external || ip[2] == 0,
            external,
            password: external.then(|| crate::plan::Password::new("s3cret!".into())),
            keep_next_hop: external && ip[3] == 253,
        }
    }

    fn spec(neighbors: Vec<BgpNeighbor>) -> BgpSpec {
        BgpSpec {
            router_id: Ipv4Addr::new(192, 168, 0, 1),
            asn: 64512,
            underlay: "eth0".into(),
            announce: vec!["10.244.1.0/24".parse().expect("cidr")],
            accept: vec![("10.244.0.0/16".parse().expect("cidr"), 24)],
            neighbors,
        }
    }

    /// A scratch directory for `bird -p`, removed when the test is done.
    struct Scratch(std::path::PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch() -> Scratch {
        let dir = std::env::temp_dir().join(format!("tartan-bird-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    #[test]
    #[ignore = "needs BIRD's `bird -p` (Debian package bird2; make test installs it)"]
    fn bird_parses_mesh_external_peers_and_both() {
        tartan_testbed::require_tools(&["bird"]);
        let mesh = vec![
            neighbor("mesh_192_168_0_2", [192, 168, 0, 2], false),
            neighbor("mesh_192_168_0_3", [192, 168, 0, 3], false),
        ];
        let external = vec![
            neighbor("peer_192_168_0_254", [192, 168, 0, 254], true),
            // Off the segment, keeping next hops (a route reflector).
            neighbor("peer_10_9_9_253", [10, 9, 9, 253], true),
        ];
        let both: Vec<BgpNeighbor> = mesh.iter().chain(&external).cloned().collect();
        for (what, neighbors) in [("mesh", mesh), ("external", external), ("both", both)] {
            let text = render(&spec(neighbors)).expect("renders");
            check(&text, &scratch()).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
        }
        let text = render(&spec(Vec::new())).expect("renders");
        assert!(text.contains("metric 4096;") && text.contains("10.244.0.0/16{24,24}"));
        check(&text, &scratch()).expect("no sessions (a single node) parses too");
    }

    #[test]
    fn a_password_that_could_escape_its_quotes_is_refused_before_any_file_is_written() {
        let mut bad = neighbor("peer_192_168_0_254", [192, 168, 0, 254], true);
        bad.password = Some(crate::plan::Password::new(
            "x\"; protocol bgp evil { neighbor 1.2.3.4 as 1; }; #".into(),
        ));
        assert_eq!(
            render(&spec(vec![bad.clone()])).unwrap_err(),
            ConfigError::Password {
                address: "192.168.0.254".into()
            }
        );
        let scratch = scratch();
        let dir = scratch.join("refused");
        let mut bird = Bird::new(BirdMode::Managed { dir: dir.clone() }, NetNs::Current);
        let error = bird.ensure(&spec(vec![bad])).unwrap_err();
        assert!(matches!(error, BirdError::Config(_)), "{error}");
        assert!(!dir.join("bird.conf").exists(), "nothing written");
        let mut name = neighbor("mesh_x", [192, 168, 0, 2], false);
        name.name = "x; }".into();
        assert!(matches!(
            render(&spec(vec![name])),
            Err(ConfigError::Name(_))
        ));
    }
}
