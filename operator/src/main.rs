//! `tartan-operator`: allocates one pod subnet per Node into `NodeSubnet` objects.

use clap::Parser;

/// Tartan operator: per-node pod subnet allocation into NodeSubnet objects.
#[derive(Parser, Debug)]
#[command(name = "tartan-operator", version, about)]
struct Args {
    /// Name of the OverlayNetwork this operator manages.
    #[arg(long, env = "TARTAN_NETWORK", default_value = "default")]
    network: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::bail!(
        "tartan-operator for network {:?}: the controller is not built yet",
        args.network
    )
}
