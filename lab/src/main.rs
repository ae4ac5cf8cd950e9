//! `tartan-lab`: a whole cluster's data plane on one machine, in network namespaces.

use clap::{Parser, Subcommand};

/// Tartan lab: nodes and pods as network namespaces, driven by Tartan's own code.
#[derive(Parser, Debug)]
#[command(name = "tartan-lab", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the lab: node and pod namespaces, subnets, data plane.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value_t = 2)]
        pods_per_node: u32,
        #[arg(long, default_value = "vxlan")]
        backend: String,
    },
}

fn main() -> anyhow::Result<()> {
    let Args {
        command:
            Command::Up {
                nodes,
                pods_per_node,
                backend,
            },
    } = Args::parse();
    println!("tartan-lab plan: {nodes} node namespaces on one underlay switch,");
    println!("  {pods_per_node} pod namespaces per node, backend {backend};");
    println!("  subnets from the operator's IPAM, kernel state from the agent's planner.");
    println!("The lab is not built yet: this prints the plan only.");
    Ok(())
}
