//! `cargo xtask demo`: the seed's procedures in the namespace lab.

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub(crate) struct Args {}

pub(crate) fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("demo is not written yet")
}
