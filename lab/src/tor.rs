//! The routed lab's top-of-rack router: a second BIRD in the router
//! namespace, AS 65000, an eBGP session with every node; it installs every
//! node's pod subnet in its own table and passes each to the other rack.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Stdio};

use anyhow::Context as _;
use tartan_agent::netns::NetNs;
use tartan_crds::BgpPeer;
use tartan_testbed::{RACK_LABEL, RACKS, rack_gateway};

use crate::state::{LabState, dir};

/// The router's AS.
pub const ASN: u32 = 65000;

/// The router as an external BGP peer of each rack's nodes.
pub fn peers() -> Vec<BgpPeer> {
    (0..RACKS)
        .map(|rack| {
            let mut peer = BgpPeer::new(&rack_gateway(rack).to_string(), ASN);
            peer.node_selector = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: Some([(RACK_LABEL.to_string(), format!("r{}", rack + 1))].into()),
                    ..Default::default()
                },
            );
            peer
        })
        .collect()
}

pub fn router_netns(state: &LabState) -> String {
    format!("{}-rt", state.prefix)
}

fn files(state: &LabState) -> (PathBuf, PathBuf) {
    let tor = dir(&state.name).join("tor");
    (tor.join("bird.conf"), tor.join("bird.ctl"))
}

/// The router's BIRD configuration: one session per node, on its rack's address.
pub fn config(state: &LabState) -> String {
    let nodes_as = state.network.backend.bgp.as_number;
    let mut out = String::new();
    let _ = writeln!(out, "router id {};", rack_gateway(0));
    let _ = writeln!(out, "log stderr {{ warning, error, fatal, bug }};");
    let _ = writeln!(out, "protocol device {{ scan time 10; }}");
    let _ = writeln!(
        out,
        "protocol kernel {{ ipv4 {{ import none; export all; }}; }}"
    );
    let _ = writeln!(
        out,
        "template bgp node {{\n  local as {ASN};\n  direct;\n  graceful restart on;\n  connect delay time 1;\n  connect retry time 5;\n  error wait time 1, 30;\n  hold time 9;\n  keepalive time 3;\n  ipv4 {{ import all; export all; next hop self; }};\n}}"
    );
    for node in &state.nodes {
        let _ = writeln!(
            out,
            "protocol bgp {} from node {{ neighbor {} as {nodes_as}; }}",
            node.name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            node.ip
        );
    }
    out
}

/// Starts the router's BIRD; it dies with the calling process.
pub fn start(state: &LabState) -> anyhow::Result<Child> {
    let (conf, socket) = files(state);
    std::fs::create_dir_all(conf.parent().context("tor dir")?)?;
    std::fs::write(&conf, config(state))?;
    let mut command = NetNs::named(&router_netns(state)).command("bird")?;
    command
        .args(["-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(&socket)
        .stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    command.spawn().context("starting the router's BIRD")
}

/// The router's routing table: what it learned by BGP.
pub fn routes(state: &LabState) -> String {
    tartan_testbed::ip(&["-n", &router_netns(state), "route", "show", "proto", "bird"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
