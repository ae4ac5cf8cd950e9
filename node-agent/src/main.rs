//! `tartan-agent`: programs this node's kernel from the NodeSubnet objects.

use clap::Parser;

/// Tartan node agent: bridge, VXLAN, routes and masquerade from NodeSubnets.
#[derive(Parser, Debug)]
#[command(name = "tartan-agent", version, about)]
struct Args {
    /// Name of this node (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "tartan-agent for node {:?}: the data plane is not built yet",
        args.node_name
    )
}
