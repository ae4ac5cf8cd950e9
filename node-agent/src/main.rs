//! `tartan-agent`: see the crate documentation of `tartan_agent`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tartan_agent::run::main(tartan_agent::cli::Args::parse()).await
}
