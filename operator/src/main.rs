//! `tartan-operator`: see the crate documentation of `tartan_operator`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tartan_operator::run::main(tartan_operator::cli::Args::parse()).await
}
