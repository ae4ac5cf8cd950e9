//! `tartan-agent`: see the crate documentation of `tartan_agent`. Run under
//! the name `tartan` by a container runtime, it is the CNI plugin of the pod
//! source check instead ([`tartan_agent::guard::plugin`]).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

fn main() -> anyhow::Result<ExitCode> {
    if tartan_agent::guard::plugin::invoked_as_plugin() {
        return Ok(tartan_agent::guard::plugin::main());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(tartan_agent::run::main(tartan_agent::cli::Args::parse()))?;
    Ok(ExitCode::SUCCESS)
}
