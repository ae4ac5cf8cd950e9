//! `tartan-lab`: see the crate documentation of `tartan_lab`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    tartan_lab::cli::run(tartan_lab::cli::Args::parse())
}
